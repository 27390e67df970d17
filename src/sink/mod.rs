//! Rows → Parquet. The pipeline sends [`RowBatch`]es over a bounded channel
//! to one writer thread (polars has its own thread pool; it is never called
//! from our rayon workers), which appends them to one Parquet file per table
//! in row groups. A live run's writer also takes rotations: it completes
//! every file of the interval that ends and opens the next interval's.

pub mod columns;
pub mod community_id;
pub mod dict;
pub mod layout;
mod pages;
pub mod tables;
pub mod typed;
pub mod writer;

use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Mutex;
use std::thread::JoinHandle;

use polars::prelude::PolarsResult;

pub use columns::Ts;
pub use tables::*;
pub use typed::{CidText, CommunityId, ConnTransport, Hex, Ip, IpText, ShortBytes};
use writer::{DirSink, Interval, RotatingSink, TableSink};

/// Extra prose at the end of docs/SCHEMA.md.
pub const SCHEMA_APPENDIX: &str = include_str!("schema_appendix.md");

/// Batches in flight between the pipeline and the writer: enough to keep
/// both busy, few enough to bound memory (each batch is one input batch's rows).
const CHANNEL_DEPTH: usize = 4;

/// How a run writes its dataset.
#[derive(Debug, Clone)]
pub struct OutputOptions {
    /// Row buffer budget over all tables (see `Limits::sink_buffer_bytes`).
    pub budget: usize,
    /// The `sensor` column of every row.
    pub sensor: String,
    /// Replace a target folder that holds something else than a dataset
    /// of the run's layout.
    pub force: bool,
}

impl Default for OutputOptions {
    fn default() -> Self {
        OutputOptions {
            budget: crate::config::Limits::default().sink_buffer_bytes,
            sensor: writer::host_name(),
            force: false,
        }
    }
}

/// What the writer thread is sent.
enum SinkMsg {
    Rows(Box<RowBatch>),
    /// Complete the current interval's files; later rows go to `Interval`.
    Rotate(Interval),
    /// The run succeeded: complete the files and put the dataset in place.
    Commit,
}

/// Completes every file of `writers`: the rows still buffered, then one
/// `anomalies` row (layer `sink`) per table, column and kind of value that
/// could not be written as it was (see [`columns::ValueNote`]).
fn complete<W: TableSink>(mut writers: TableWriters, sink: &mut W) -> PolarsResult<()> {
    writers.flush_all(sink)?;
    let rows: Vec<AnomalyRow> = columns::take_notes()
        .into_iter()
        .map(|n| AnomalyRow {
            layer: "sink",
            kind: n.kind.to_string(),
            detail: Some(match n.kind {
                "value_saturated" => format!(
                    "{}.{}: {} value(s) above the column's signed range written as its maximum",
                    n.table, n.column, n.n
                ),
                _ => format!(
                    "{}.{}: {} timestamp(s) outside 1970-01-01..2200-01-01 not written (null, or the nearest bound where the column cannot be null)",
                    n.table, n.column, n.n
                ),
            }),
            ..Default::default()
        })
        .collect();
    sink.push(&mut writers.anomalies, rows.iter())?;
    writers.finish(sink)
}

/// Fills `community_id` of flows and connections (every row producer
/// leaves it empty: the writer thread computes it from the row's 5-tuple).
pub fn fill_community_ids(batch: &mut RowBatch) {
    // Rows carry typed ends: the digest here, its text at the column (a
    // mixed-family pair has none and is recomputed, as rare).
    fn of(proto: u8, a: Ip, ap: u32, b: Ip, bp: u32) -> CommunityId {
        match (u16::try_from(ap), u16::try_from(bp)) {
            (Ok(ap), Ok(bp)) => CommunityId(community_id::digest(0, proto, a.0, ap, b.0, bp)),
            _ => CommunityId(None),
        }
    }
    for f in batch.flows.iter_mut().filter(|f| f.community_id.0.is_none()) {
        // `proto` is one of the two names the flow layer gives.
        let proto = if f.proto == "tcp" {
            community_id::PROTO_TCP
        } else {
            community_id::PROTO_UDP
        };
        f.community_id = of(proto, f.orig_ip, f.orig_port, f.resp_ip, f.resp_port);
    }
    for c in batch.connections.iter_mut().filter(|c| c.community_id.0.is_none()) {
        c.community_id = of(c.transport.ip_proto(), c.orig_ip, c.orig_port, c.resp_ip, c.resp_port);
    }
}

/// The writer thread and the channel to it.
pub struct SinkThread {
    tx: Option<SyncSender<SinkMsg>>,
    /// Behind a lock so that a failed `send` can collect the thread's error.
    handle: Mutex<Option<JoinHandle<Result<(), String>>>>,
}

impl SinkThread {
    /// Starts a writer of `DIR/<table>.parquet` for every table, with the
    /// default options.
    pub fn to_dir(dir: &Path) -> Result<SinkThread, String> {
        Self::to_dir_with(dir, &OutputOptions::default())
    }

    /// Starts a writer of `DIR/<table>.parquet` for every table. The files
    /// are written into a new folder beside DIR, which replaces DIR at
    /// [`SinkThread::finish`]; a run that ends otherwise (an error, a
    /// panic, [`SinkThread::abort`]) leaves DIR as it was.
    pub fn to_dir_with(dir: &Path, opts: &OutputOptions) -> Result<SinkThread, String> {
        let sink = DirSink::new(dir, &opts.sensor, opts.force).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                e.to_string()
            } else {
                format!("cannot create output directory {}: {e}", dir.display())
            }
        })?;
        let shown = dir.display().to_string();
        let target = shown.clone();
        Self::start_single(sink, &target, opts.budget, move |sink| {
            sink.commit()
                .map_err(|e| format!("cannot put the new dataset in place of {shown}: {e}"))
        })
    }

    /// Starts a writer that encodes every table as [`SinkThread::to_dir_with`]
    /// does (the same builders, pages, compression and footers) and writes
    /// no file ([`writer::DiscardSink`]): the pipeline fuzz target's sink.
    pub fn discarding(opts: &OutputOptions) -> Result<SinkThread, String> {
        let sink = writer::DiscardSink::new(&opts.sensor);
        Self::start_single(sink, "no output", opts.budget, |_| Ok(()))
    }

    /// The writer thread of one dataset written once (analyze): `commit`
    /// runs when the run succeeded and every table is complete.
    fn start_single<W: TableSink + Send + 'static>(
        mut sink: W,
        shown: &str,
        budget: usize,
        commit: impl FnOnce(W) -> Result<(), String> + Send + 'static,
    ) -> Result<SinkThread, String>
    where
        TableWriters: Send,
    {
        let mut writers = TableWriters::open(&mut sink).map_err(|e| format!("cannot write to {shown}: {e}"))?;
        let (tx, rx) = sync_channel::<SinkMsg>(CHANNEL_DEPTH);
        let handle = std::thread::Builder::new()
            .name("swarmtap-sink".into())
            .spawn(move || -> Result<(), String> {
                let mut commit_now = false;
                for msg in rx {
                    match msg {
                        SinkMsg::Rows(mut batch) => {
                            fill_community_ids(&mut batch);
                            writers
                                .push(&mut sink, *batch, budget)
                                .map_err(|e| format!("writing Parquet: {e}"))?
                        }
                        SinkMsg::Rotate(_) => {}
                        SinkMsg::Commit => commit_now = true,
                    }
                }
                if !commit_now {
                    // Dropping the sink removes the unfinished folder.
                    return Ok(());
                }
                complete(writers, &mut sink).map_err(|e| format!("finishing Parquet: {e}"))?;
                commit(sink)
            })
            .map_err(|e| format!("cannot start writer thread: {e}"))?;
        Ok(SinkThread {
            tx: Some(tx),
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Starts a live writer: every table of each interval as one file in
    /// `DIR/<table>/date=…/hour=…/` (see [`RotatingSink`]), starting with
    /// `first`. Every table gets a file per interval, empty ones included,
    /// so each interval is complete on its own. Files already there stay.
    pub fn rotating(dir: &Path, first: Interval, opts: &OutputOptions) -> Result<SinkThread, String> {
        let mut sink = RotatingSink::new(dir, first, &opts.sensor, opts.force).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                e.to_string()
            } else {
                format!("cannot create output directory {}: {e}", dir.display())
            }
        })?;
        let writers = TableWriters::open(&mut sink).map_err(|e| format!("cannot write to {}: {e}", dir.display()))?;
        let budget = opts.budget;
        let (tx, rx) = sync_channel::<SinkMsg>(CHANNEL_DEPTH);
        let handle = std::thread::Builder::new()
            .name("swarmtap-sink".into())
            .spawn(move || -> Result<(), String> {
                let mut writers = writers;
                for msg in rx {
                    match msg {
                        SinkMsg::Rows(mut batch) => {
                            fill_community_ids(&mut batch);
                            writers
                                .push(&mut sink, *batch, budget)
                                .map_err(|e| format!("writing Parquet: {e}"))?
                        }
                        SinkMsg::Rotate(next) => {
                            complete(writers, &mut sink).map_err(|e| format!("finishing Parquet: {e}"))?;
                            sink.set_interval(next);
                            writers = TableWriters::open(&mut sink).map_err(|e| format!("opening Parquet: {e}"))?;
                        }
                        SinkMsg::Commit => {}
                    }
                }
                // Live output is kept whatever ended the run.
                complete(writers, &mut sink).map_err(|e| format!("finishing Parquet: {e}"))
            })
            .map_err(|e| format!("cannot start writer thread: {e}"))?;
        Ok(SinkThread {
            tx: Some(tx),
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Sends rows; an error means the writer thread failed (see `finish`).
    pub fn send(&self, batch: RowBatch) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        self.send_msg(SinkMsg::Rows(Box::new(batch)))
    }

    /// Live: completes the current interval's files (renamed into place
    /// once synced); rows sent afterwards belong to `next`.
    pub fn rotate(&self, next: Interval) -> Result<(), String> {
        self.send_msg(SinkMsg::Rotate(next))
    }

    fn send_msg(&self, msg: SinkMsg) -> Result<(), String> {
        match &self.tx {
            Some(tx) => tx.send(msg).map_err(|_| self.writer_error()),
            None => Err("the Parquet writer is closed".into()),
        }
    }

    /// The writer thread stopped: its own error (a full disk, …) says why.
    fn writer_error(&self) -> String {
        let h = self.handle.lock().ok().and_then(|mut h| h.take());
        match h.map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => "the Parquet writer panicked".into(),
            _ => "the Parquet writer stopped".into(),
        }
    }

    /// The run succeeded: closes the channel, waits for every file to be
    /// complete and (analyze) puts the new dataset in place of the target.
    pub fn finish(mut self) -> Result<(), String> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(SinkMsg::Commit);
        }
        self.join()
    }

    /// The run failed: the new files are discarded (analyze) and the target
    /// stays as it was; a live run's completed files are kept.
    pub fn abort(mut self) -> Result<(), String> {
        self.tx.take();
        self.join()
    }

    fn join(&mut self) -> Result<(), String> {
        self.tx.take();
        let h = self.handle.lock().ok().and_then(|mut h| h.take());
        match h {
            Some(h) => h.join().map_err(|_| "the Parquet writer panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for SinkThread {
    /// A run that returns early (an error) waits for the writer to remove
    /// its unfinished folder.
    fn drop(&mut self) {
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    #[test]
    fn the_buffer_budget_bounds_memory_and_keeps_every_row() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("ds");
        let mut sink = DirSink::new(&out, "test", false).unwrap();
        let mut w = TableWriters::open(&mut sink).unwrap();
        let budget = 64 * 1024;
        let (mut n_msgs, mut n_anoms) = (0u64, 0u64);
        for step in 0..200u64 {
            let mut b = RowBatch::default();
            for i in 0..50 {
                b.peer_messages.push(PeerMessageRow {
                    frame: step * 100 + i,
                    msg: "have",
                    ..Default::default()
                });
            }
            b.anomalies.push(AnomalyRow {
                frame: Some(step),
                layer: "test",
                kind: format!("k{}", step % 3),
                ..Default::default()
            });
            n_msgs += 50;
            n_anoms += 1;
            w.push(&mut sink, b, budget).unwrap();
            assert!(
                w.buffered_bytes(&sink) <= budget,
                "step {step}: {}",
                w.buffered_bytes(&sink)
            );
        }
        w.finish(&mut sink).unwrap();
        sink.commit().unwrap();
        let read = |t: &str| {
            let f = std::fs::File::open(out.join(format!("{t}.parquet"))).unwrap();
            ParquetReader::new(f).finish().unwrap()
        };
        let m = read("peer_messages");
        assert_eq!(m.height() as u64, n_msgs);
        // Rows keep their order across the early row groups.
        let frames: Vec<i64> = m.column("frame").unwrap().i64().unwrap().into_no_null_iter().collect();
        assert!(frames.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(read("anomalies").height() as u64, n_anoms);
    }

    /// The discarding sink does all of the directory sink's encoding: the
    /// bytes it drops are as many as the files hold.
    #[test]
    fn the_discarding_sink_encodes_every_byte_the_files_hold() {
        let batch = || {
            let mut b = RowBatch::default();
            for i in 0..1000u64 {
                b.peer_messages.push(PeerMessageRow {
                    frame: i,
                    msg: if i % 3 == 0 { "have" } else { "request" },
                    piece: Some(i as u32 / 7),
                    ..Default::default()
                });
            }
            b.anomalies.push(AnomalyRow {
                layer: "test",
                kind: "k".into(),
                ..Default::default()
            });
            b
        };
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("ds");
        let mut dir = DirSink::new(&out, "test", false).unwrap();
        let mut w = TableWriters::open(&mut dir).unwrap();
        w.push(&mut dir, batch(), usize::MAX).unwrap();
        w.finish(&mut dir).unwrap();
        dir.commit().unwrap();
        let on_disk: u64 = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        let mut none = writer::DiscardSink::new("test");
        let mut w = TableWriters::open(&mut none).unwrap();
        w.push(&mut none, batch(), usize::MAX).unwrap();
        w.finish(&mut none).unwrap();
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), TABLE_NAMES.len());
        assert!(on_disk > 20_000, "{on_disk} bytes");
        assert_eq!(none.bytes_encoded(), on_disk);
    }

    /// A written file read back twice: its table (polars) and its
    /// metadata (row groups, column chunks), for tests of how it was
    /// encoded.
    fn read_back(
        path: &std::path::Path,
    ) -> (
        polars::prelude::DataFrame,
        polars_parquet::parquet::metadata::FileMetadata,
    ) {
        let df = ParquetReader::new(std::fs::File::open(path).unwrap()).finish().unwrap();
        let meta = polars_parquet::read::read_metadata(&mut std::fs::File::open(path).unwrap()).unwrap();
        (df, meta)
    }

    /// Column `c`'s chunk in row group `g`.
    fn chunk<'a>(
        meta: &'a polars_parquet::parquet::metadata::FileMetadata,
        g: usize,
        c: &str,
    ) -> &'a polars_parquet::parquet::metadata::ColumnChunkMetadata {
        meta.row_groups[g].columns_under_root_iter(c).unwrap().next().unwrap()
    }

    #[test]
    fn text_columns_are_written_as_their_builders_chose() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("ds");
        let mut sink = DirSink::new(&out, "test", false).unwrap();
        let mut w = TableWriters::open(&mut sink).unwrap();
        // Row group 0: 300 distinct kinds (plain); row group 1: 3 kinds
        // (a dictionary). `detail`: null or one text (a dictionary).
        let row = |i: u64, kinds: u64| AnomalyRow {
            frame: Some(i),
            layer: "test",
            kind: format!("k{}", i % kinds),
            detail: i.is_multiple_of(2).then(|| "d".to_string()),
            ..Default::default()
        };
        let mut want = Vec::new();
        for (start, kinds) in [(0u64, 1000u64), (300, 3)] {
            let b = RowBatch {
                anomalies: (start..start + 300).map(|i| row(i, kinds)).collect(),
                ..Default::default()
            };
            want.extend(b.anomalies.iter().map(|r| (r.kind.clone(), r.detail.clone())));
            w.push(&mut sink, b, usize::MAX).unwrap();
            w.flush_all(&mut sink).unwrap();
        }
        w.finish(&mut sink).unwrap();
        sink.commit().unwrap();
        let (df, meta) = read_back(&out.join("anomalies.parquet"));
        let kinds = df.column("kind").unwrap().str().unwrap();
        let details = df.column("detail").unwrap().str().unwrap();
        let got: Vec<(String, Option<String>)> = kinds
            .iter()
            .zip(details.iter())
            .map(|(k, d)| (k.unwrap().to_string(), d.map(str::to_string)))
            .collect();
        assert_eq!(got, want);
        let dict = |g: usize, c: &str| chunk(&meta, g, c).dictionary_page_offset().is_some();
        assert_eq!(meta.row_groups.len(), 2);
        assert!(!dict(0, "kind") && dict(1, "kind"));
        assert!(dict(0, "detail") && dict(1, "detail") && dict(0, "capture"));
        // Integers and times of nulls only: an empty dictionary, as
        // polars-parquet makes of them; read back as nulls.
        for c in ["conn_id", "ts"] {
            assert_eq!(df.column(c).unwrap().null_count(), 600, "{c}");
            assert!(dict(0, c) && dict(1, c), "{c}");
        }
    }
    #[test]
    fn small_chunks_are_stored_and_distinct_text_keeps_its_literals_coded() {
        use polars_parquet::parquet::compression::Compression;
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("ds");
        let mut sink = DirSink::new(&out, "test", false).unwrap();
        let mut w = TableWriters::open(&mut sink).unwrap();
        // 300 rows: `kind` 40 hex digits of noise, distinct (written
        // plain), `layer` one name (a dictionary of a few bytes).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let b = RowBatch {
            anomalies: (0..300u64)
                .map(|i| AnomalyRow {
                    frame: Some(i),
                    layer: "test",
                    kind: format!("{:016x}{:016x}{:08x}", noise(), noise(), noise() as u32),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let want: Vec<String> = b.anomalies.iter().map(|r| r.kind.clone()).collect();
        w.push(&mut sink, b, usize::MAX).unwrap();
        w.finish(&mut sink).unwrap();
        sink.commit().unwrap();
        let (df, meta) = read_back(&out.join("anomalies.parquet"));
        let got: Vec<String> = df
            .column("kind")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|k| k.unwrap().to_string())
            .collect();
        assert_eq!(got, want);
        assert!(df
            .column("layer")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .all(|l| l == Some("test")));
        let kind = chunk(&meta, 0, "kind");
        let layer = chunk(&meta, 0, "layer");
        // Hex digits take 4 bits of 8 once Huffman-coded: the text
        // (12,000 bytes and 1,200 of lengths) to about 0.55 of its size.
        assert_eq!(kind.compression(), Compression::Zstd);
        assert!(
            kind.compressed_size() * 10 < kind.uncompressed_size() * 7,
            "{} of {}",
            kind.compressed_size(),
            kind.uncompressed_size()
        );
        assert_eq!(layer.compression(), Compression::Uncompressed);
        assert_eq!(layer.compressed_size(), layer.uncompressed_size());
    }

    #[test]
    fn growing_integers_are_written_as_deltas_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("ds");
        let mut sink = DirSink::new(&out, "test", false).unwrap();
        let mut w = TableWriters::open(&mut sink).unwrap();
        // 3,000 distinct frames (too many for a dictionary): row group 0
        // ascending with a few nulls, row group 1 the same values in no
        // order. Times: ascending in both groups by 1 to 1,000 us.
        let n = 3000u64;
        let frame = |g: u64, i: u64| match g {
            0 => (i % 97 != 5).then_some(1000 + 3 * i),
            _ => Some(1000 + 3 * (i * 1999 % n)),
        };
        let mut want = Vec::new();
        for g in 0..2u64 {
            let b = RowBatch {
                anomalies: (0..n)
                    .map(|i| AnomalyRow {
                        ts: Some(Ts(1_700_000_000_000_000 + ((i * i) % 1000 + 1000 * i) as i64)),
                        frame: frame(g, i),
                        layer: "test",
                        kind: "k".into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            want.extend(
                b.anomalies
                    .iter()
                    .map(|r| (r.ts.map(|t| t.0), r.frame.map(|f| f as i64))),
            );
            w.push(&mut sink, b, usize::MAX).unwrap();
            w.flush_all(&mut sink).unwrap();
        }
        w.finish(&mut sink).unwrap();
        sink.commit().unwrap();
        let (df, meta) = read_back(&out.join("anomalies.parquet"));
        let ts = df.column("ts").unwrap().datetime().unwrap().physical().clone();
        let frames = df.column("frame").unwrap().i64().unwrap().clone();
        let got: Vec<(Option<i64>, Option<i64>)> = ts.iter().zip(frames.iter()).collect();
        assert_eq!(got, want);
        let size = |g: usize, c: &str| chunk(&meta, g, c).uncompressed_size();
        // Deltas of 3 or 6 (frames) and of 1 to 1,999 (times): a few bits
        // a value, against 8 bytes a value plain.
        assert!(size(0, "frame") < 2_000, "{}", size(0, "frame"));
        assert!(
            size(0, "ts") < 6_000 && size(1, "ts") < 6_000,
            "{} {}",
            size(0, "ts"),
            size(1, "ts")
        );
        // Frames in no order: their differences are as wide as they are.
        assert!(size(1, "frame") > 8 * 3000, "{}", size(1, "frame"));
    }
}
