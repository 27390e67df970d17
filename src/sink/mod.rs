//! Rows → Parquet. The pipeline sends [`RowBatch`]es over a bounded channel
//! to one writer thread (polars has its own thread pool; it is never called
//! from our rayon workers), which appends them to one Parquet file per table
//! in row groups. A live run's writer also takes rotations: it completes
//! every file of the interval that ends and opens the next interval's.

pub mod columns;
pub mod tables;
pub mod writer;

use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

pub use columns::Ts;
pub use tables::*;
use writer::{DirSink, Interval, RotatingSink};

/// Extra prose at the end of docs/SCHEMA.md.
pub const SCHEMA_APPENDIX: &str = include_str!("schema_appendix.md");

/// Batches in flight between the pipeline and the writer: enough to keep
/// both busy, few enough to bound memory (each batch is one input batch's rows).
const CHANNEL_DEPTH: usize = 4;

/// What the writer thread is sent.
enum SinkMsg {
    Rows(Box<RowBatch>),
    /// Complete the current interval's files; later rows go to `Interval`.
    Rotate(Interval),
}

/// The writer thread and the channel to it.
pub struct SinkThread {
    tx: Option<SyncSender<SinkMsg>>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl SinkThread {
    /// Starts a writer of `DIR/<table>.parquet` for every table, with the
    /// default row buffer budget.
    pub fn to_dir(dir: &Path) -> Result<SinkThread, String> {
        Self::to_dir_with_budget(dir, crate::config::Limits::default().sink_buffer_bytes)
    }

    /// As [`SinkThread::to_dir`], buffering at most about `budget` bytes of
    /// rows over all tables (see `Limits::sink_buffer_bytes`).
    pub fn to_dir_with_budget(dir: &Path, budget: usize) -> Result<SinkThread, String> {
        let mut sink =
            DirSink::new(dir).map_err(|e| format!("cannot create output directory {}: {e}", dir.display()))?;
        let mut writers =
            TableWriters::open(&mut sink).map_err(|e| format!("cannot write to {}: {e}", dir.display()))?;
        let (tx, rx) = sync_channel::<SinkMsg>(CHANNEL_DEPTH);
        let handle = std::thread::Builder::new()
            .name("swarmtap-sink".into())
            .spawn(move || -> Result<(), String> {
                for msg in rx {
                    if let SinkMsg::Rows(batch) = msg {
                        writers
                            .push(&mut sink, *batch)
                            .and_then(|()| writers.enforce_budget(&mut sink, budget))
                            .map_err(|e| format!("writing Parquet: {e}"))?;
                    }
                }
                writers.finish(&mut sink).map_err(|e| format!("finishing Parquet: {e}"))
            })
            .map_err(|e| format!("cannot start writer thread: {e}"))?;
        Ok(SinkThread {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Starts a live writer: every table of each interval as one file in
    /// `DIR/<table>/date=…/hour=…/` (see [`RotatingSink`]), starting with
    /// `first`, buffering at most about `budget` bytes of rows. Every table
    /// gets a file per interval, empty ones included, so each interval is
    /// complete on its own.
    pub fn rotating(dir: &Path, first: Interval, budget: usize) -> Result<SinkThread, String> {
        let mut sink = RotatingSink::new(dir, first)
            .map_err(|e| format!("cannot create output directory {}: {e}", dir.display()))?;
        let writers = TableWriters::open(&mut sink).map_err(|e| format!("cannot write to {}: {e}", dir.display()))?;
        let (tx, rx) = sync_channel::<SinkMsg>(CHANNEL_DEPTH);
        let handle = std::thread::Builder::new()
            .name("swarmtap-sink".into())
            .spawn(move || -> Result<(), String> {
                let mut writers = writers;
                for msg in rx {
                    match msg {
                        SinkMsg::Rows(batch) => writers
                            .push(&mut sink, *batch)
                            .and_then(|()| writers.enforce_budget(&mut sink, budget))
                            .map_err(|e| format!("writing Parquet: {e}"))?,
                        SinkMsg::Rotate(next) => {
                            writers
                                .finish(&mut sink)
                                .map_err(|e| format!("finishing Parquet: {e}"))?;
                            sink.set_interval(next);
                            writers = TableWriters::open(&mut sink).map_err(|e| format!("opening Parquet: {e}"))?;
                        }
                    }
                }
                writers.finish(&mut sink).map_err(|e| format!("finishing Parquet: {e}"))
            })
            .map_err(|e| format!("cannot start writer thread: {e}"))?;
        Ok(SinkThread {
            tx: Some(tx),
            handle: Some(handle),
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
            Some(tx) => tx.send(msg).map_err(|_| "the Parquet writer stopped".to_string()),
            None => Err("the Parquet writer is closed".into()),
        }
    }

    /// Closes the channel and waits for every file to be complete.
    pub fn finish(mut self) -> Result<(), String> {
        self.tx.take();
        match self.handle.take() {
            Some(h) => h.join().map_err(|_| "the Parquet writer panicked".to_string())?,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    #[test]
    fn the_buffer_budget_bounds_memory_and_keeps_every_row() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = DirSink::new(tmp.path()).unwrap();
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
            w.push(&mut sink, b).unwrap();
            w.enforce_budget(&mut sink, budget).unwrap();
            assert!(
                w.buffered_bytes(&sink) <= budget,
                "step {step}: {}",
                w.buffered_bytes(&sink)
            );
        }
        w.finish(&mut sink).unwrap();
        let read = |t: &str| {
            let f = std::fs::File::open(tmp.path().join(format!("{t}.parquet"))).unwrap();
            ParquetReader::new(f).finish().unwrap()
        };
        let m = read("peer_messages");
        assert_eq!(m.height() as u64, n_msgs);
        // Rows keep their order across the early row groups.
        let frames: Vec<u64> = m.column("frame").unwrap().u64().unwrap().into_no_null_iter().collect();
        assert!(frames.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(read("anomalies").height() as u64, n_anoms);
    }
}
