//! The analysis pipeline, and the only place with parallelism.
//!
//! A reader thread turns inputs into frame batches (bounded channel). For
//! each batch: frames are decoded in parallel; packets are partitioned by a
//! stable flow hash into a fixed number of shards; shards run in parallel,
//! each owning its flows; their rows and swarm events are merged in shard
//! order and sorted by frame, the swarm state is updated sequentially, and
//! the rows go to the Parquet writer thread. Batch boundaries depend only on
//! the input, and the shard count is fixed, so the output is the same for
//! any number of threads.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use crate::analyze::audit::Audit;
use crate::analyze::dht::DhtAggregate;
use crate::analyze::metadata::MetadataAssembler;
use crate::analyze::pieces::KnownTorrents;
use crate::analyze::swarm::Swarm;
use crate::analyze::swarm::UnattributedEvent;
use crate::analyze::tracker::AnnounceMark;
use crate::analyze::SwarmEvent;
use crate::analyze::{FrameCtx, ShardOut};
use crate::capture::{CaptureReader, FrameBatch, InputSpec, ReaderStats};
use crate::config::Settings;
use crate::decode::{decode, Decoded, FlowKey};
use crate::flow::table::{Shard, ShardContext};
use crate::proto::metainfo::hex;
use crate::proto::metainfo::Metainfo;
use crate::proto::peer_wire::TorrentShape;
use crate::sink::{CaptureStatsRow, ConnectionRow, RowBatch, SinkThread, Ts};

/// Frame data per batch: large enough to amortise the per-batch merge and
/// thread hand-offs, small enough to keep a few batches in memory.
const BATCH_BYTES: usize = 8 << 20;
const BATCH_FRAMES: usize = 32 * 1024;

/// What a run did, for the summary line.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub n_inputs: usize,
    pub n_packets: u64,
    pub n_bytes: u64,
    pub n_flows: u64,
    pub n_flows_evicted: u64,
    pub n_connections: u64,
    pub n_torrents: u64,
    pub n_peers: u64,
    pub n_messages: u64,
    pub n_anomalies: u64,
    pub elapsed_s: f64,
}

impl RunSummary {
    pub fn render(&self) -> String {
        let mb = self.n_bytes as f64 / 1e6;
        let rate = if self.elapsed_s > 0.0 { mb / self.elapsed_s } else { 0.0 };
        format!(
            "{} input(s), {} packets, {:.1} MB, {} flows, {} BitTorrent connections, {} torrents, {} peers, {} messages, {} anomalies; {:.2} s ({:.0} MB/s, {:.0} packets/s)",
            self.n_inputs,
            self.n_packets,
            mb,
            self.n_flows,
            self.n_connections,
            self.n_torrents,
            self.n_peers,
            self.n_messages,
            self.n_anomalies,
            self.elapsed_s,
            rate,
            if self.elapsed_s > 0.0 { self.n_packets as f64 / self.elapsed_s } else { 0.0 },
        )
    }
}

/// Messages from the reader thread.
enum ReaderMsg {
    Batch(FrameBatch),
    /// An input is done: its stats.
    Done(u32, Box<ReaderStats>),
    /// An input could not be read: the one-line reason.
    Failed(String),
}

/// Per-capture counters kept by the pipeline (decode outcomes, anomalies).
#[derive(Debug, Clone, Default)]
struct DecodeCounts {
    errors: u64,
    not_ip: u64,
    other_ip: u64,
    fragments: u64,
    tcp: u64,
    udp: u64,
    anomalies: u64,
}

/// Caps anomaly rows per (layer, kind) and counts all of them per capture.
struct AnomalyGate {
    max_rows: u64,
    seen: HashMap<(&'static str, String), u64>,
}

impl AnomalyGate {
    fn filter(&mut self, rows: &mut RowBatch, counts: &mut HashMap<String, DecodeCounts>) {
        let max = self.max_rows;
        let seen = &mut self.seen;
        rows.anomalies.retain(|a| {
            counts.entry(a.capture.clone()).or_default().anomalies += 1;
            let n = seen.entry((a.layer, a.kind.clone())).or_insert(0);
            *n += 1;
            *n <= max
        });
    }
}

/// Runs `analyze` over `inputs`, writing every table into `out_dir`.
pub fn analyze(
    inputs: Vec<InputSpec>,
    filter: Option<String>,
    out_dir: &Path,
    settings: &Settings,
    torrents: Vec<Metainfo>,
) -> Result<RunSummary, String> {
    let started = Instant::now();
    let progress = std::io::stderr().is_terminal();
    let names = capture_names(&inputs);
    let names = Arc::new(names);
    let sink = SinkThread::to_dir(out_dir)?;

    let mut ctx = ShardContext::default();
    let mut swarm = Swarm::new(settings.limits, settings.threshold, settings.rate_window_s);
    let torrents: Vec<Arc<Metainfo>> = torrents.into_iter().map(Arc::new).collect();
    let mut audit = Audit::new(settings.limits, settings.audit_max_link_bps, &names, &torrents);
    let mut dht = DhtAggregate::new(&settings.limits);
    let mut known = KnownTorrents::default();
    let mut assembler = MetadataAssembler::new(&settings.limits);
    for m in torrents {
        known.insert(m.clone());
        for h in m.wire_hashes() {
            assembler.known(h);
        }
        for h in m.wire_hashes() {
            ctx.shapes.insert(
                h,
                TorrentShape {
                    n_pieces: Some(m.n_pieces),
                    piece_length: u32::try_from(m.piece_length).ok(),
                },
            );
        }
        swarm.add_metainfo(m, "torrent_file");
    }
    let ctx = Arc::new(ctx);
    let known = Arc::new(known);
    let mut meta = MetaState {
        assembler,
        known,
        names: names.clone(),
    };
    let n_shards = settings.n_shards.max(1);
    let mut shards: Vec<Shard> = (0..n_shards)
        .map(|_| {
            Shard::new(
                settings.limits,
                n_shards,
                settings.messages,
                ctx.clone(),
                ShardOut {
                    capture_names: names.clone(),
                    known: meta.known.clone(),
                    ..Default::default()
                },
            )
        })
        .collect();

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(settings.threads)
        .thread_name(|i| format!("swarmtap-worker-{i}"))
        .build()
        .map_err(|e| format!("cannot start worker threads: {e}"))?;

    // Reader thread: inputs in order, two batches ahead at most. Used
    // batches come back over `recycle_tx` so their blocks are reused.
    let (tx, rx) = sync_channel::<ReaderMsg>(2);
    let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<FrameBatch>();
    let reader_inputs = inputs.clone();
    let reader = std::thread::Builder::new()
        .name("swarmtap-reader".into())
        .spawn(move || {
            for (idx, input) in reader_inputs.iter().enumerate() {
                let mut r = match CaptureReader::open(input, filter.as_deref()) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(ReaderMsg::Failed(e.to_string()));
                        return;
                    }
                };
                r.set_capture_idx(idx as u32);
                loop {
                    let mut b = recycle_rx.try_recv().unwrap_or_default();
                    match r.read_batch(&mut b, BATCH_BYTES, BATCH_FRAMES) {
                        Ok(true) => {
                            if tx.send(ReaderMsg::Batch(b)).is_err() {
                                return;
                            }
                        }
                        Ok(false) => break,
                        Err(e) => {
                            let _ = tx.send(ReaderMsg::Failed(e.to_string()));
                            return;
                        }
                    }
                }
                let _ = tx.send(ReaderMsg::Done(idx as u32, Box::new(r.stats().clone())));
            }
        })
        .map_err(|e| format!("cannot start reader thread: {e}"))?;

    let mut summary = RunSummary {
        n_inputs: inputs.len(),
        ..Default::default()
    };
    let mut counts: HashMap<String, DecodeCounts> = HashMap::new();
    let mut gate = AnomalyGate {
        max_rows: settings.limits.max_anomaly_rows_per_kind,
        seen: HashMap::new(),
    };
    let mut reader_stats: Vec<(u32, Box<ReaderStats>)> = Vec::new();
    let mut watermark = i64::MIN;
    let mut last_progress = Instant::now();
    let mut failure: Option<String> = None;
    let mut held_conns: Vec<ConnectionRow> = Vec::new();
    let mut current_capture = 0u32;

    for msg in rx {
        let batch = match msg {
            ReaderMsg::Batch(b) => b,
            ReaderMsg::Done(idx, st) => {
                reader_stats.push((idx, st));
                continue;
            }
            ReaderMsg::Failed(e) => {
                failure = Some(e);
                break;
            }
        };
        // A new input that does not continue the previous one in time (it
        // starts before the previous ended, or after every flow would have
        // expired) is a separate capture: its packets must not join flows of
        // the last one. Rotated files of one tap continue each other.
        if batch.capture_idx != current_capture {
            let first = batch.frames.first().map(|f| f.ts_us);
            if let (Some(t0), true) = (first, watermark != i64::MIN) {
                let idle = settings.limits.tcp_idle_us.max(settings.limits.udp_idle_us);
                if t0 < watermark || t0 - watermark > idle {
                    let mut rows = pool.install(|| {
                        shards.par_iter_mut().for_each(|s| s.finish(watermark));
                        RowBatch::default()
                    });
                    let (events, unattributed, dht_obs) = collect_events(&mut shards, &mut rows);
                    meta.absorb(&mut shards, &mut swarm, &mut rows);
                    let marks = take_marks(&mut shards);
                    finish_rows(&mut rows);
                    audit.observe(&events, &marks);
                    audit.observe_rows(&rows);
                    swarm.apply(events, unattributed, &mut rows);
                    attribute_encrypted(&mut swarm, &mut rows.connections, &names);
                    attribute_encrypted(&mut swarm, &mut held_conns, &names);
                    swarm.end_segment(&mut rows);
                    dht.apply(dht_obs);
                    hold_unattributed(&mut rows, &mut held_conns);
                    rows.peer_progress.sort_by_key(|r| r.frame);
                    gate.filter(&mut rows, &mut counts);
                    summary.n_connections += rows.connections.len() as u64;
                    sink.send(rows)?;
                    watermark = i64::MIN;
                }
            }
            current_capture = batch.capture_idx;
        }
        let mut rows =
            pool.install(|| process_batch(&batch, &mut shards, n_shards, &names, &mut counts, &mut watermark));
        let (events, unattributed, dht_obs) = collect_events(&mut shards, &mut rows);
        meta.absorb(&mut shards, &mut swarm, &mut rows);
        let marks = take_marks(&mut shards);
        finish_rows(&mut rows);
        audit.observe(&events, &marks);
        audit.observe_rows(&rows);
        swarm.apply(events, unattributed, &mut rows);
        hold_unattributed(&mut rows, &mut held_conns);
        dht.apply(dht_obs);
        rows.peer_progress.sort_by_key(|r| r.frame);
        gate.filter(&mut rows, &mut counts);
        summary.n_packets += batch.frames.len() as u64;
        summary.n_bytes += batch.frames.iter().map(|f| u64::from(f.orig_len)).sum::<u64>();
        summary.n_messages += rows.peer_messages.len() as u64;
        summary.n_connections += rows.connections.len() as u64;
        sink.send(rows)?;
        // The reader may be gone (last batch); then the block is dropped.
        let _ = recycle_tx.send(batch);
        if progress && last_progress.elapsed().as_millis() >= 250 {
            last_progress = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            eprint!(
                "\r  {:>10} packets  {:>9.1} MB  {:>7.0} MB/s  {:>8} flows   ",
                summary.n_packets,
                summary.n_bytes as f64 / 1e6,
                summary.n_bytes as f64 / 1e6 / secs.max(1e-9),
                shards.iter().map(|s| s.n_flows()).sum::<usize>()
            );
        }
    }
    let _ = reader.join();
    if let Some(e) = failure {
        // Finish what was written so far so the directory stays readable,
        // then report the input error.
        let _ = sink.finish();
        return Err(e);
    }
    if progress {
        eprint!("\r{:80}\r", "");
    }

    // End of input: close every flow, then the swarm.
    let end_ts = watermark.max(0);
    let mut rows = pool.install(|| {
        shards.par_iter_mut().for_each(|s| s.finish(end_ts));
        RowBatch::default()
    });
    let (events, unattributed, dht_obs) = collect_events(&mut shards, &mut rows);
    meta.absorb(&mut shards, &mut swarm, &mut rows);
    let marks = take_marks(&mut shards);
    dht.apply(dht_obs);
    for s in &shards {
        summary.n_flows += s.stats.n_flows;
        summary.n_flows_evicted += s.stats.n_flows_evicted;
    }
    finish_rows(&mut rows);
    audit.observe(&events, &marks);
    audit.observe_rows(&rows);
    swarm.apply(events, unattributed, &mut rows);
    rows.peer_progress.sort_by_key(|r| r.frame);
    let n_dropped_peers = swarm.n_peers_dropped;
    // Mid-stream connections held back get the torrent they were attributed
    // to (now or at the swarm's last retry).
    rows.connections.append(&mut held_conns);
    swarm.retry_all(&mut rows);
    for c in rows.connections.iter_mut().filter(|c| c.info_hash.is_none()) {
        if let Some(h) = swarm.attribution(c.conn_id) {
            c.info_hash = Some(hex(&h));
            c.info_hash_source = Some("endpoint");
            c.attribution_confidence = "likely";
        }
    }
    attribute_encrypted(&mut swarm, &mut rows.connections, &names);
    rows.connections.sort_by_key(|r| r.conn_id);
    summary.n_connections += rows.connections.len() as u64;
    swarm.finish(&mut rows);
    audit.finish(&mut rows);
    dht.finish(&mut rows);
    if n_dropped_peers > 0 {
        rows.anomalies.push(crate::sink::AnomalyRow {
            layer: "analyze",
            kind: "peer_table_full".into(),
            detail: Some(format!("{n_dropped_peers} peer events not tracked (max_peers)")),
            ..Default::default()
        });
    }
    gate.filter(&mut rows, &mut counts);
    summary.n_messages += rows.peer_messages.len() as u64;
    summary.n_torrents = rows.torrents.len() as u64;
    summary.n_peers = rows.peers.len() as u64;

    reader_stats.sort_by_key(|(i, _)| *i);
    for (idx, st) in &reader_stats {
        let name = names.get(*idx as usize).cloned().unwrap_or_default();
        let c = counts.get(&name).cloned().unwrap_or_default();
        rows.capture_stats.push(CaptureStatsRow {
            capture: name,
            first_ts: st.first_ts_us.map(Ts),
            last_ts: st.last_ts_us.map(Ts),
            n_packets: st.n_records,
            n_bytes: st.n_bytes,
            n_decode_errors: c.errors,
            n_truncated: st.n_snaplen_cut,
            truncated_tail: st.truncated_tail,
            n_anomalies: c.anomalies + st.n_bad_blocks + u64::from(st.truncated_tail),
            n_dropped: 0,
            n_filtered_out: st.n_filtered_out,
            n_not_ip: c.not_ip,
            n_other_ip: c.other_ip,
            n_fragments: c.fragments,
            n_tcp: c.tcp,
            n_udp: c.udp,
        });
    }
    summary.n_anomalies = rows.capture_stats.iter().map(|c| c.n_anomalies).sum();
    sink.send(rows)?;
    sink.finish()?;
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The `capture` column: each input's file name, or its path as given when
/// two inputs share a file name (so rows stay attributable).
pub fn capture_names(inputs: &[InputSpec]) -> Vec<String> {
    let base = |i: &InputSpec| match i {
        InputSpec::Path(p) => p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| i.display_name()),
        InputSpec::Stdin => "-".to_string(),
    };
    let bases: Vec<String> = inputs.iter().map(base).collect();
    inputs
        .iter()
        .zip(&bases)
        .map(|(i, b)| {
            if bases.iter().filter(|x| *x == b).count() > 1 {
                i.display_name()
            } else {
                b.clone()
            }
        })
        .collect()
}

/// Takes every shard's rows, swarm events and DHT observations, events in
/// frame order.
fn collect_events(
    shards: &mut [Shard],
    rows: &mut RowBatch,
) -> (
    Vec<SwarmEvent>,
    Vec<UnattributedEvent>,
    Vec<crate::analyze::dht::DhtObservation>,
) {
    let mut events = Vec::new();
    let mut unattributed = Vec::new();
    let mut dht_obs = Vec::new();
    for s in shards.iter_mut() {
        rows.append(&mut s.out.rows);
        events.append(&mut s.out.events);
        unattributed.append(&mut s.out.unattributed);
        dht_obs.append(&mut s.out.dht);
    }
    events.sort_by_key(|e| (e.ctx.capture, e.ctx.frame));
    unattributed.sort_by_key(|e| (e.event.ctx.capture, e.event.ctx.frame));
    dht_obs.sort_by_key(|o| (o.ctx.capture, o.ctx.frame));
    (events, unattributed, dht_obs)
}

/// ut_metadata assembly and the piece hashes the shards verify with.
struct MetaState {
    assembler: MetadataAssembler,
    known: Arc<KnownTorrents>,
    names: Arc<Vec<String>>,
}

impl MetaState {
    /// Takes the shards' metadata pieces (in frame order) to the assembler;
    /// a rebuilt dictionary joins the swarm state now and the shards' piece
    /// verification from the next batch on. Counts this step's `pieces`
    /// rows for the torrents' totals.
    fn absorb(&mut self, shards: &mut [Shard], swarm: &mut Swarm, rows: &mut RowBatch) {
        let mut pieces = Vec::new();
        for s in shards.iter_mut() {
            pieces.append(&mut s.out.metadata);
        }
        pieces.sort_by_key(|p| (p.ctx.capture, p.ctx.frame));
        let mut changed = false;
        for p in pieces {
            if let Some(r) = self.assembler.add(p, &self.names, rows) {
                let m = Arc::new(r.meta);
                if m.wire_hashes().iter().any(|h| swarm.has_metainfo(h)) {
                    continue;
                }
                Arc::make_mut(&mut self.known).insert(m.clone());
                swarm.add_metainfo(m, "ut_metadata");
                changed = true;
            }
        }
        if changed {
            for s in shards.iter_mut() {
                s.out.known = self.known.clone();
            }
        }
        rows.pieces.sort_by_key(|r| r.frame);
        for r in &rows.pieces {
            swarm.note_piece(&r.info_hash, r.verified);
        }
    }
}

/// MSE-encrypted connections carry no readable info hash: each is
/// attributed to the torrent whose listen endpoint one of its ends is
/// (known from plaintext sightings: trackers, DHT, PEX, LSD, other
/// connections), with confidence `likely`, and what the choice of
/// encryption says about its peers goes to the swarm state.
fn attribute_encrypted(swarm: &mut Swarm, conns: &mut [ConnectionRow], names: &[String]) {
    if !conns.iter().any(|c| c.encrypted && c.info_hash.is_none()) {
        return;
    }
    let by_ip = swarm.torrents_by_ip();
    let mut noted = Vec::new();
    for c in conns.iter_mut().filter(|c| c.encrypted && c.info_hash.is_none()) {
        let (Ok(oi), Ok(ri)) = (c.orig_ip.parse::<IpAddr>(), c.resp_ip.parse::<IpAddr>()) else {
            continue;
        };
        let (Ok(op), Ok(rp)) = (u16::try_from(c.orig_port), u16::try_from(c.resp_port)) else {
            continue;
        };
        let (o, r) = (SocketAddr::new(oi, op), SocketAddr::new(ri, rp));
        let capture = names.iter().position(|n| *n == c.capture).unwrap_or(0) as u32;
        let by_endpoint = swarm.attribute_endpoints(capture, o, r);
        // By address: one end's address takes part in exactly one torrent,
        // and the other's in no other.
        let by_address = match (by_ip.get(&oi), by_ip.get(&ri)) {
            (Some(x), Some(y)) if x != y => None,
            (Some(x), _) | (_, Some(x)) => Some(*x),
            _ => None,
        };
        let (h, source, confidence) = match (by_endpoint, by_address) {
            (Some(h), _) => (h, "endpoint", "likely"),
            (None, Some(h)) => (h, "address", "weak"),
            (None, None) => continue,
        };
        c.info_hash = Some(hex(&h));
        c.info_hash_source = Some(source);
        c.attribution_confidence = confidence;
        noted.push((h, o, r, c.transport == "utp"));
    }
    swarm.note_encrypted(&noted);
}

/// Connection rows without an info_hash (picked up mid-stream) are held
/// until the end of the run, when the swarm state may have attributed them;
/// past this many they are written as they are.
const MAX_HELD_CONNECTIONS: usize = 65_536;

/// The shards' announce marks for the audit, in frame order.
fn take_marks(shards: &mut [Shard]) -> Vec<AnnounceMark> {
    let mut marks = Vec::new();
    for s in shards.iter_mut() {
        marks.append(&mut s.out.marks);
    }
    marks.sort_by_key(|m| (m.ctx.capture, m.ctx.frame));
    marks
}

fn hold_unattributed(rows: &mut RowBatch, held: &mut Vec<ConnectionRow>) {
    let mut i = 0;
    while i < rows.connections.len() {
        if rows.connections[i].info_hash.is_none() && held.len() < MAX_HELD_CONNECTIONS {
            held.push(rows.connections.swap_remove(i));
        } else {
            i += 1;
        }
    }
    rows.connections.sort_by_key(|r| r.conn_id);
}

/// Orders the rows of one step: per-message tables by frame (stable: rows of
/// one frame keep their order), per-flow tables by id.
fn finish_rows(rows: &mut RowBatch) {
    rows.peer_messages.sort_by_key(|r| r.frame);
    rows.dht_messages.sort_by_key(|r| r.frame);
    rows.dht_peers.sort_by_key(|r| r.frame);
    rows.lsd_announces.sort_by_key(|r| r.frame);
    rows.anomalies.sort_by_key(|r| r.frame);
    rows.tracker_announces.sort_by_key(|r| (r.ts, r.frame));
    rows.tracker_peers.sort_by_key(|r| (r.ts, r.frame));
    rows.tracker_scrapes.sort_by_key(|r| (r.ts, r.frame));
    rows.flows.sort_by_key(|r| r.conn_id);
    rows.connections.sort_by_key(|r| r.conn_id);
}

/// Decodes a batch in parallel and runs the shards over it.
fn process_batch(
    batch: &FrameBatch,
    shards: &mut [Shard],
    n_shards: usize,
    names: &[String],
    counts: &mut HashMap<String, DecodeCounts>,
    watermark: &mut i64,
) -> RowBatch {
    const CHUNK: usize = 2048;
    // Decoding and the flow hash (which picks the shard) run in parallel;
    // the sequential partition below only counts and pushes indices.
    let decoded: Vec<(Decoded, u32)> = batch
        .frames
        .par_chunks(CHUNK)
        .enumerate()
        .flat_map_iter(|(ci, chunk)| {
            chunk.iter().enumerate().map(move |(j, fm)| {
                let i = ci * CHUNK + j;
                let d = decode(fm.link_type, batch.frame_data(i));
                let shard = match &d {
                    Decoded::Packet(p) => (FlowKey::of(p).0.stable_hash() % n_shards as u64) as u32,
                    _ => 0,
                };
                (d, shard)
            })
        })
        .collect();
    let name = names.get(batch.capture_idx as usize).cloned().unwrap_or_default();
    let c = counts.entry(name.clone()).or_default();
    let mut rows = RowBatch::default();
    // Partition packets by shard, in frame order.
    let mut parts: Vec<Vec<u32>> = vec![Vec::new(); n_shards];
    let mut batch_max = *watermark;
    for (i, (d, shard)) in decoded.iter().enumerate() {
        let Some(fm) = batch.frames.get(i) else { continue };
        batch_max = batch_max.max(fm.ts_us);
        match d {
            Decoded::Packet(p) => {
                match p.transport {
                    crate::decode::Transport::Tcp { .. } => c.tcp += 1,
                    crate::decode::Transport::Udp => c.udp += 1,
                }
                if let Some(part) = parts.get_mut(*shard as usize) {
                    part.push(i as u32);
                }
            }
            Decoded::NotIp => c.not_ip += 1,
            Decoded::OtherIp => c.other_ip += 1,
            Decoded::Fragment => c.fragments += 1,
            Decoded::UnknownLink => {
                c.errors += 1;
                rows.anomalies.push(crate::sink::AnomalyRow {
                    ts: Some(Ts(fm.ts_us)),
                    frame: Some(fm.frame_no),
                    capture: name.clone(),
                    layer: "decode",
                    kind: "unknown_link_type".into(),
                    detail: Some(format!("link type {}", fm.link_type)),
                    ..Default::default()
                });
            }
            Decoded::Error(kind) => {
                c.errors += 1;
                rows.anomalies.push(crate::sink::AnomalyRow {
                    ts: Some(Ts(fm.ts_us)),
                    frame: Some(fm.frame_no),
                    capture: name.clone(),
                    layer: "decode",
                    kind: (*kind).to_string(),
                    ..Default::default()
                });
            }
        }
    }
    *watermark = batch_max;
    let now = batch_max;
    shards.par_iter_mut().zip(parts.par_iter()).for_each(|(shard, part)| {
        for &i in part {
            let (Some(fm), Some((Decoded::Packet(p), _))) = (batch.frames.get(i as usize), decoded.get(i as usize))
            else {
                continue;
            };
            let data = batch.frame_data(i as usize);
            let off = p.payload_off as usize;
            let payload = data.get(off..off + p.payload_len as usize).unwrap_or_default();
            let ctx = FrameCtx {
                ts: fm.ts_us,
                frame: fm.frame_no,
                capture: batch.capture_idx,
            };
            shard.packet(ctx, p, payload);
        }
        shard.sweep(now);
    });
    rows
}
