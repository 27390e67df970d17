//! A shard of the flow table: every flow whose key hashes to this shard, with
//! its TCP reassembly and application state. A shard is processed by one
//! worker at a time and owns all its state (no locks). Flows end on FIN/RST
//! (after a linger), on idle expiry in packet time, on eviction when the
//! shard is full, or at the end of input; each end writes a `flows` row and,
//! for peer-wire connections, a `connections` row.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::reassembly::StreamReassembler;
use super::udp::UdpApp;
use crate::analyze::dht::DhtShard;
use crate::analyze::session::{ORIG, RESP};
use crate::analyze::stream::{StreamApp, StreamEnd, StreamEnv, StreamInit};
use crate::analyze::tracker::UdpTrackers;
use crate::analyze::{FrameCtx, ShardOut};
use crate::config::Limits;
use crate::decode::{tcp_flags, FlowKey, Packet, Proto, Transport};
use crate::dissect::Identified;
use crate::proto::peer_wire::TorrentShape;
use crate::sink::{FlowRow, Ts};

#[derive(Debug)]
struct TcpState {
    reasm: [StreamReassembler; 2],
    app: StreamApp,
}

#[derive(Debug)]
enum FlowApp {
    Tcp(Box<TcpState>),
    Udp(Box<UdpApp>),
}

#[derive(Debug)]
struct Flow {
    conn_id: u64,
    capture: u32,
    /// True when the originator is the key's `a` endpoint.
    orig_is_a: bool,
    ends: [SocketAddr; 2],
    first_ts: i64,
    last_ts: i64,
    n_packets: [u64; 2],
    payload: [u64; 2],
    midstream: bool,
    syn_seen: bool,
    fin: [bool; 2],
    rst: bool,
    closed_at: Option<i64>,
    app: FlowApp,
}

/// Counters a shard keeps for `capture_stats` and the summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardStats {
    pub n_flows: u64,
    pub n_flows_evicted: u64,
    pub n_peer_connections: u64,
}

/// Shared, read-only context for all shards.
#[derive(Debug, Default)]
pub struct ShardContext {
    /// Torrent shapes known from --torrents, by v1 info hash.
    pub shapes: HashMap<[u8; 20], TorrentShape>,
    /// Write connection rows of weak identifications too (`--keep-weak`).
    pub keep_weak: bool,
}

/// The flow table's hasher: foldhash with a per-process random seed. Keys
/// are chosen by whoever sends the packets, so the seed must not be known
/// in advance (a fixed-key hash would let crafted 5-tuples collide); a
/// passive analyzer gives an attacker no view of the hashes to learn it
/// from. SipHash (std's default) resists more but cost ~5 % of a run.
type FlowHasher = foldhash::fast::RandomState;

/// One shard.
pub struct Shard {
    flows: HashMap<FlowKey, Flow, FlowHasher>,
    max_flows: usize,
    limits: Limits,
    messages: bool,
    last_sweep: i64,
    ctx: Arc<ShardContext>,
    /// Outstanding DHT queries of this shard's UDP flows.
    dht: DhtShard,
    /// UDP tracker transactions of this shard's flows.
    udp_trackers: UdpTrackers,
    pub out: ShardOut,
    pub stats: ShardStats,
}

/// How a flow ended (`flows.end_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Fin,
    Rst,
    Idle,
    Evicted,
    End,
}

impl EndReason {
    fn name(self) -> &'static str {
        match self {
            EndReason::Fin => "fin",
            EndReason::Rst => "rst",
            EndReason::Idle => "idle",
            EndReason::Evicted => "evicted",
            EndReason::End => "end",
        }
    }
}

impl Shard {
    pub fn new(limits: Limits, n_shards: usize, messages: bool, ctx: Arc<ShardContext>, out: ShardOut) -> Self {
        Shard {
            flows: HashMap::default(),
            max_flows: (limits.max_flows / n_shards.max(1)).max(16),
            limits,
            messages,
            last_sweep: i64::MIN,
            ctx,
            dht: DhtShard::new(&limits, n_shards),
            udp_trackers: UdpTrackers::new(limits.tracker_udp, limits.tracker_udp_pending),
            out: ShardOut {
                piece_budget: crate::analyze::pieces::PieceBudget {
                    used: 0,
                    max: limits.max_piece_buffer_total / n_shards.max(1),
                },
                held_since: Default::default(),
                ..out
            },
            stats: ShardStats::default(),
        }
    }

    pub fn n_flows(&self) -> usize {
        self.flows.len()
    }

    /// Processes one decoded packet whose payload is `payload`.
    pub fn packet(&mut self, ctx: FrameCtx, p: &Packet, payload: &[u8]) {
        let (key, from_a) = FlowKey::of(p);
        let is_tcp = key.proto == Proto::Tcp;
        let flags = match p.transport {
            Transport::Tcp { flags, .. } => flags,
            Transport::Udp => 0,
        };
        let syn = flags & tcp_flags::SYN != 0;
        let ack = flags & tcp_flags::ACK != 0;
        // A new SYN on a closed 4-tuple starts a new connection; a flow idle
        // for longer than its timeout ends before this packet, even if no
        // sweep has run in between (sweeps follow batch ends).
        let idle = if is_tcp {
            self.limits.tcp_idle_us
        } else {
            self.limits.udp_idle_us
        };
        let (exists, end) = match self.flows.get(&key) {
            None => (false, None),
            Some(f) if is_tcp && syn && !ack && (f.closed_at.is_some() || f.payload.iter().sum::<u64>() > 0) => {
                (true, Some(if f.rst { EndReason::Rst } else { EndReason::Fin }))
            }
            // Closed for longer than the linger: a sweep would have ended it,
            // so this packet starts a new flow whether or not one ran.
            Some(f)
                if f.closed_at
                    .is_some_and(|c| ctx.ts - c > self.limits.tcp_closed_linger_us) =>
            {
                (true, Some(if f.rst { EndReason::Rst } else { EndReason::Fin }))
            }
            Some(f) if ctx.ts - f.last_ts > idle => (true, Some(EndReason::Idle)),
            Some(_) => (true, None),
        };
        if let Some(reason) = end {
            if let Some(f) = self.flows.remove(&key) {
                self.end_flow(key, f, reason, ctx);
            }
        }
        if !exists || end.is_some() {
            if self.flows.len() >= self.max_flows {
                self.evict(ctx);
            }
            let flow = self.new_flow(ctx, p, is_tcp, syn, ack);
            self.stats.n_flows += 1;
            self.flows.insert(key, flow);
        }
        let env = StreamEnv {
            limits: &self.limits,
            messages: self.messages,
            keep_weak: self.ctx.keep_weak,
            shapes: &self.ctx.shapes,
        };
        let Some(f) = self.flows.get_mut(&key) else { return };
        let side = if from_a == f.orig_is_a { ORIG } else { RESP };
        f.last_ts = f.last_ts.max(ctx.ts);
        f.n_packets[side] += 1;
        f.payload[side] += u64::from(p.payload_len);
        match (&mut f.app, p.transport) {
            (FlowApp::Tcp(t), Transport::Tcp { seq, ack: ackno, flags }) => {
                let init = stream_init(f.conn_id, f.capture, f.ends, f.first_ts, f.midstream);
                let t = &mut **t;
                if syn {
                    f.syn_seen = true;
                    if !t.reasm[side].is_started() {
                        t.reasm[side].start_at(seq.wrapping_add(1));
                    }
                    if ack && !t.reasm[1 - side].is_started() {
                        t.reasm[1 - side].start_at(ackno);
                    }
                }
                let (reasm, app) = (&mut t.reasm, &mut t.app);
                let out = &mut self.out;
                if !payload.is_empty() {
                    if !reasm[side].is_started() {
                        reasm[side].start_at(seq);
                    }
                    let s = if syn { seq.wrapping_add(1) } else { seq };
                    reasm[side].segment(s, payload, &mut |c| app.feed(&init, side, c, ctx, &env, out));
                }
                if ack && flags & tcp_flags::RST == 0 && reasm[1 - side].is_started() {
                    reasm[1 - side].acked(ackno, &mut |c| app.feed(&init, 1 - side, c, ctx, &env, out));
                }
                if flags & tcp_flags::FIN != 0 {
                    // The FIN takes the sequence number after the payload.
                    let base = if syn { seq.wrapping_add(1) } else { seq };
                    let fin_seq = base.wrapping_add(payload.len() as u32 + p.payload_missing);
                    if reasm[side].is_started() {
                        reasm[side].fin(fin_seq, &mut |c| app.feed(&init, side, c, ctx, &env, out));
                    }
                    f.fin[side] = true;
                    if f.fin[0] && f.fin[1] && f.closed_at.is_none() {
                        f.closed_at = Some(ctx.ts);
                    }
                }
                if flags & tcp_flags::RST != 0 {
                    f.rst = true;
                    f.closed_at.get_or_insert(ctx.ts);
                }
            }
            (FlowApp::Udp(u), Transport::Udp) => {
                let info = FlowInfo {
                    conn_id: f.conn_id,
                    capture: f.capture,
                    ends: f.ends,
                    first_ts: f.first_ts,
                };
                u.datagram(
                    ctx,
                    &info,
                    side,
                    payload,
                    &env,
                    &mut self.dht,
                    &mut self.udp_trackers,
                    &mut self.out,
                );
            }
            _ => {}
        }
    }

    fn new_flow(&self, ctx: FrameCtx, p: &Packet, is_tcp: bool, syn: bool, ack: bool) -> Flow {
        let (key, from_a) = FlowKey::of(p);
        let src = SocketAddr::new(p.src, p.sport);
        let dst = SocketAddr::new(p.dst, p.dport);
        // The originator sent the SYN; a SYN-ACK names its receiver.
        let src_is_orig = !(is_tcp && syn && ack);
        let orig_is_a = from_a == src_is_orig;
        let ends = if src_is_orig { [src, dst] } else { [dst, src] };
        let _ = key;
        let app = if is_tcp {
            FlowApp::Tcp(Box::new(TcpState {
                reasm: [
                    StreamReassembler::new(self.limits.reassembly),
                    StreamReassembler::new(self.limits.reassembly),
                ],
                app: StreamApp::Undecided,
            }))
        } else {
            FlowApp::Udp(Box::default())
        };
        Flow {
            conn_id: (u64::from(ctx.capture) << 40) | ctx.frame,
            capture: ctx.capture,
            orig_is_a,
            ends,
            first_ts: ctx.ts,
            last_ts: ctx.ts,
            n_packets: [0, 0],
            payload: [0, 0],
            midstream: is_tcp && !syn,
            syn_seen: false,
            fin: [false, false],
            rst: false,
            closed_at: None,
            app,
        }
    }

    /// Evicts the least recently active eighth of the shard.
    fn evict(&mut self, ctx: FrameCtx) {
        let mut by_age: Vec<(i64, u64, FlowKey)> = self.flows.iter().map(|(k, f)| (f.last_ts, f.conn_id, *k)).collect();
        by_age.sort_unstable_by_key(|&(ts, id, _)| (ts, id));
        let n = (self.flows.len() / 8).max(1);
        for (_, _, k) in by_age.into_iter().take(n) {
            if let Some(f) = self.flows.remove(&k) {
                self.stats.n_flows_evicted += 1;
                self.end_flow(k, f, EndReason::Evicted, ctx);
            }
        }
        self.out.anomaly(
            Some(ctx),
            None,
            "flow",
            "flow_table_full",
            Some(format!("{n} flows evicted (max {} per shard)", self.max_flows)),
        );
    }

    /// Ends flows that are idle or closed as of packet time `now`.
    pub fn sweep(&mut self, now: i64) {
        if self.last_sweep != i64::MIN && now - self.last_sweep < self.limits.sweep_interval_us {
            return;
        }
        self.last_sweep = now;
        self.udp_trackers.sweep(now, &mut self.out);
        // Connections holding swarm events for too long release them, so the
        // swarm state's frame order is not held up (see Limits::max_hold_us).
        if self.out.oldest_held().is_some() {
            for f in self.flows.values_mut() {
                if let FlowApp::Tcp(t) = &mut f.app {
                    t.app.release_stale(now, self.limits.max_hold_us, &mut self.out);
                }
            }
        }
        let l = &self.limits;
        let mut done: Vec<(u64, FlowKey, EndReason)> = Vec::new();
        for (k, f) in &self.flows {
            let idle = match f.app {
                FlowApp::Tcp(_) => l.tcp_idle_us,
                FlowApp::Udp(_) => l.udp_idle_us,
            };
            if let Some(c) = f.closed_at {
                if now - c > l.tcp_closed_linger_us {
                    done.push((f.conn_id, *k, if f.rst { EndReason::Rst } else { EndReason::Fin }));
                    continue;
                }
            }
            if now - f.last_ts > idle {
                done.push((f.conn_id, *k, EndReason::Idle));
            }
        }
        done.sort_unstable_by_key(|d| d.0);
        let ctx = FrameCtx {
            ts: now,
            frame: 0,
            capture: 0,
        };
        for (_, k, r) in done {
            if let Some(f) = self.flows.remove(&k) {
                self.end_flow(k, f, r, ctx);
            }
        }
    }

    /// Ends every flow (end of input). Flows that a sweep at `now` would
    /// end keep their reason (fin, rst, idle), whatever the sweep interval
    /// left undone; the rest end with `end`.
    pub fn finish(&mut self, now: i64) {
        self.last_sweep = i64::MIN;
        self.sweep(now);
        let mut keys: Vec<(u64, FlowKey)> = self.flows.iter().map(|(k, f)| (f.conn_id, *k)).collect();
        keys.sort_unstable_by_key(|k| k.0);
        let ctx = FrameCtx {
            ts: now,
            frame: 0,
            capture: 0,
        };
        for (_, k) in keys {
            if let Some(f) = self.flows.remove(&k) {
                self.end_flow(k, f, EndReason::End, ctx);
            }
        }
        self.udp_trackers.finish(&mut self.out);
    }

    fn end_flow(&mut self, key: FlowKey, mut f: Flow, reason: EndReason, ctx: FrameCtx) {
        // Whatever ends the flow (a sweep at a batch end, the next packet of
        // the 4-tuple, eviction, end of input), what it emits is timed by the
        // flow's own last packet, so that batch boundaries never show.
        let ctx = FrameCtx {
            ts: f.last_ts,
            frame: ctx.frame,
            capture: f.capture,
        };
        let info = FlowInfo {
            conn_id: f.conn_id,
            capture: f.capture,
            ends: f.ends,
            first_ts: f.first_ts,
        };
        let mut gap_bytes = 0;
        let mut retrans_bytes = 0;
        let env = StreamEnv {
            limits: &self.limits,
            messages: self.messages,
            keep_weak: self.ctx.keep_weak,
            shapes: &self.ctx.shapes,
        };
        let app = match &mut f.app {
            FlowApp::Tcp(t) => {
                let init = stream_init(f.conn_id, f.capture, f.ends, f.first_ts, f.midstream);
                let t = &mut **t;
                let (reasm, app) = (&mut t.reasm, &mut t.app);
                let out = &mut self.out;
                for side in [ORIG, RESP] {
                    reasm[side].flush(&mut |c| app.feed(&init, side, c, ctx, &env, out));
                    gap_bytes += reasm[side].stats().gap_bytes;
                    retrans_bytes += reasm[side].stats().retrans_bytes;
                    let conflicts = reasm[side].stats().overlap_conflict_bytes;
                    if conflicts > 0 {
                        out.anomaly(
                            Some(ctx),
                            Some(f.conn_id),
                            "tcp",
                            "conflicting_overlap",
                            Some(format!("{conflicts} bytes differ from the first copy")),
                        );
                    }
                }
                let end = StreamEnd {
                    last_ts: Some(f.last_ts),
                    gap_bytes: Some(gap_bytes),
                    payload: Some(f.payload),
                };
                let (id, row) = std::mem::take(app).finish(&init, end, ctx, &env, out);
                if let Some(row) = row {
                    if !row.encrypted {
                        self.stats.n_peer_connections += 1;
                    }
                    out.rows.connections.push(row);
                }
                id
            }
            FlowApp::Udp(u) => u.finish(ctx, &info, &env, &mut self.out),
        };
        let _ = key;
        let row = self.flow_row(&f, app, gap_bytes, retrans_bytes, reason.name());
        self.out.rows.flows.push(row);
    }

    fn flow_row(
        &self,
        f: &Flow,
        app: Identified,
        gap_bytes: u64,
        retrans_bytes: u64,
        end_reason: &'static str,
    ) -> FlowRow {
        FlowRow {
            conn_id: f.conn_id,
            capture: self.out.capture_name(f.capture),
            proto: match f.app {
                FlowApp::Tcp(_) => "tcp",
                FlowApp::Udp(_) => "udp",
            },
            orig_ip: f.ends[ORIG].ip().to_string(),
            orig_port: u32::from(f.ends[ORIG].port()),
            resp_ip: f.ends[RESP].ip().to_string(),
            resp_port: u32::from(f.ends[RESP].port()),
            first_ts: Ts(f.first_ts),
            last_ts: Ts(f.last_ts),
            n_packets: f.n_packets[0] + f.n_packets[1],
            n_packets_orig: f.n_packets[ORIG],
            n_packets_resp: f.n_packets[RESP],
            payload_bytes_orig: f.payload[ORIG],
            payload_bytes_resp: f.payload[RESP],
            app: app.app,
            app_confidence: app.confidence.map(|c| c.name()),
            app_evidence: app.evidence,
            midstream: f.midstream,
            gap_bytes,
            retrans_bytes,
            end_reason,
        }
    }

    /// Live capture: `flows` rows (end_reason `open`) and `connections`
    /// rows of every flow still open, as of now. Nothing is flushed or
    /// closed: bytes waiting in reassembly, and a message still being
    /// framed, count once they are delivered (in a later snapshot or the
    /// final row).
    pub fn snapshot(&self, rows: &mut crate::sink::RowBatch) {
        let mut flows: Vec<&Flow> = self.flows.values().collect();
        flows.sort_unstable_by_key(|f| f.conn_id);
        for f in flows {
            let (app, gap_bytes, retrans_bytes) = match &f.app {
                FlowApp::Tcp(t) => {
                    let gap: u64 = t.reasm.iter().map(|r| r.stats().gap_bytes).sum();
                    let retrans: u64 = t.reasm.iter().map(|r| r.stats().retrans_bytes).sum();
                    let init = stream_init(f.conn_id, f.capture, f.ends, f.first_ts, f.midstream);
                    let end = StreamEnd {
                        last_ts: Some(f.last_ts),
                        gap_bytes: Some(gap),
                        payload: Some(f.payload),
                    };
                    if let Some(row) = t.app.snapshot_row(&init, end, &self.out) {
                        rows.connections.push(row);
                    }
                    (t.app.identified(), gap, retrans)
                }
                FlowApp::Udp(u) => {
                    u.snapshot(&self.out, &mut rows.connections);
                    (u.identified(), 0, 0)
                }
            };
            rows.flows.push(self.flow_row(f, app, gap_bytes, retrans_bytes, "open"));
        }
    }
}

/// A TCP flow as a stream for the application layer.
fn stream_init(conn_id: u64, capture: u32, ends: [SocketAddr; 2], first_ts: i64, midstream: bool) -> StreamInit {
    StreamInit {
        conn_id,
        flow_id: conn_id,
        capture,
        transport: "tcp",
        ends,
        first_ts,
        midstream,
    }
}

/// What the application layer needs to know about its flow.
#[derive(Debug, Clone, Copy)]
pub struct FlowInfo {
    pub conn_id: u64,
    pub capture: u32,
    /// [originator, responder]
    pub ends: [SocketAddr; 2],
    pub first_ts: i64,
}
