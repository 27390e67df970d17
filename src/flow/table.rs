//! A shard of the flow table: every flow whose key hashes to this shard, with
//! its TCP reassembly and the state its application side keeps (opaque
//! here: [`FlowApps`]). A shard is processed by one worker at a time and
//! owns all its state (no locks). Flows end on FIN/RST (after a linger), on
//! idle expiry in packet time, on eviction when the shard is full, or at
//! the end of input; each end is handed to the application side with the
//! flow's transport facts ([`FlowSummary`]).

use std::collections::HashMap;
use std::net::SocketAddr;

use super::reassembly::StreamReassembler;
pub use super::FlowInfo;
use super::{AppRef, FlowApps, FlowSummary, FrameCtx, ORIG, RESP};
use crate::config::Limits;
use crate::decode::{tcp_flags, FlowKey, Packet, Proto, Transport};

#[derive(Debug)]
struct TcpState<T> {
    reasm: [StreamReassembler; 2],
    app: T,
}

#[derive(Debug)]
enum FlowApp<T, U> {
    Tcp(Box<TcpState<T>>),
    Udp(Box<U>),
}

#[derive(Debug)]
struct Flow<T, U> {
    conn_id: u64,
    capture: u32,
    /// True when the originator is the key's `a` endpoint.
    orig_is_a: bool,
    ends: [SocketAddr; 2],
    first_ts: i64,
    last_ts: i64,
    /// Frame of the packet that set `last_ts` (rows a flow's end emits
    /// carry it: frames are 1-based, never 0).
    last_frame: u64,
    n_packets: [u64; 2],
    payload: [u64; 2],
    midstream: bool,
    syn_seen: bool,
    fin: [bool; 2],
    rst: bool,
    closed_at: Option<i64>,
    app: FlowApp<T, U>,
}

/// Counters a shard keeps for `capture_stats` and the summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardStats {
    pub n_flows: u64,
    pub n_flows_evicted: u64,
}

/// The flow table's hasher: foldhash with a per-process random seed. Keys
/// are chosen by whoever sends the packets, so the seed must not be known
/// in advance (a fixed-key hash would let crafted 5-tuples collide); a
/// passive analyzer gives an attacker no view of the hashes to learn it
/// from. SipHash (std's default) resists more but cost ~5 % of a run.
type FlowHasher = foldhash::fast::RandomState;

/// What [`Shard::snapshot`] calls for every open flow.
pub type SnapshotFn<'a, A> = dyn FnMut(&A, &FlowSummary, AppRef<'_, <A as FlowApps>::Tcp, <A as FlowApps>::Udp>) + 'a;

/// One shard: its flows, and the application side `A` they are handed to.
pub struct Shard<A: FlowApps> {
    flows: HashMap<FlowKey, Flow<A::Tcp, A::Udp>, FlowHasher>,
    max_flows: usize,
    limits: Limits,
    last_sweep: i64,
    pub apps: A,
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
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Fin => "fin",
            EndReason::Rst => "rst",
            EndReason::Idle => "idle",
            EndReason::Evicted => "evicted",
            EndReason::End => "end",
        }
    }
}

impl<A: FlowApps> Shard<A> {
    pub fn new(limits: Limits, n_shards: usize, apps: A) -> Self {
        Shard {
            flows: HashMap::default(),
            max_flows: (limits.max_flows / n_shards.max(1)).max(16),
            limits,
            last_sweep: i64::MIN,
            apps,
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
        let Some(f) = self.flows.get_mut(&key) else { return };
        let side = if from_a == f.orig_is_a { ORIG } else { RESP };
        if ctx.ts >= f.last_ts {
            f.last_ts = ctx.ts;
            f.last_frame = ctx.frame;
        }
        f.n_packets[side] += 1;
        f.payload[side] += u64::from(p.payload_len);
        let info = FlowInfo {
            conn_id: f.conn_id,
            capture: f.capture,
            ends: f.ends,
            first_ts: f.first_ts,
            midstream: f.midstream,
        };
        let apps = &mut self.apps;
        match (&mut f.app, p.transport) {
            (FlowApp::Tcp(t), Transport::Tcp { seq, ack: ackno, flags }) => {
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
                if !payload.is_empty() {
                    if !reasm[side].is_started() {
                        reasm[side].start_at(seq);
                    }
                    let s = if syn { seq.wrapping_add(1) } else { seq };
                    reasm[side].segment(s, payload, &mut |c| apps.stream(&info, app, side, c, ctx));
                }
                if ack && flags & tcp_flags::RST == 0 && reasm[1 - side].is_started() {
                    reasm[1 - side].acked(ackno, &mut |c| apps.stream(&info, app, 1 - side, c, ctx));
                }
                if flags & tcp_flags::FIN != 0 {
                    // The FIN takes the sequence number after the payload.
                    let base = if syn { seq.wrapping_add(1) } else { seq };
                    let fin_seq = base.wrapping_add(payload.len() as u32 + p.payload_missing);
                    if reasm[side].is_started() {
                        reasm[side].fin(fin_seq, &mut |c| apps.stream(&info, app, side, c, ctx));
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
            (FlowApp::Udp(u), Transport::Udp) => apps.datagram(&info, u, side, payload, ctx),
            _ => {}
        }
    }

    fn new_flow(&self, ctx: FrameCtx, p: &Packet, is_tcp: bool, syn: bool, ack: bool) -> Flow<A::Tcp, A::Udp> {
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
                app: A::Tcp::default(),
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
            last_frame: ctx.frame,
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
        self.apps.anomaly(
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
        // The applications' own timers; streams holding something back for
        // too long let go of it.
        if self.apps.sweep(now) {
            for f in self.flows.values_mut() {
                if let FlowApp::Tcp(t) = &mut f.app {
                    self.apps.release_stale(&mut t.app, now);
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
        self.apps.finish();
    }

    fn end_flow(&mut self, key: FlowKey, f: Flow<A::Tcp, A::Udp>, reason: EndReason, _ended_at: FrameCtx) {
        // Whatever ends the flow (a sweep at a batch end, the next packet of
        // the 4-tuple, eviction, end of input), what it emits is timed by the
        // flow's own last packet, so that batch boundaries never show.
        let ctx = FrameCtx {
            ts: f.last_ts,
            frame: f.last_frame,
            capture: f.capture,
        };
        let info = flow_info(&f);
        let _ = key;
        match f.app {
            FlowApp::Tcp(t) => {
                let mut t = *t;
                let (reasm, app) = (&mut t.reasm, &mut t.app);
                let apps = &mut self.apps;
                let (mut gap_bytes, mut retrans_bytes) = (0, 0);
                for side in [ORIG, RESP] {
                    reasm[side].flush(&mut |c| apps.stream(&info, app, side, c, ctx));
                    gap_bytes += reasm[side].stats().gap_bytes;
                    retrans_bytes += reasm[side].stats().retrans_bytes;
                    let conflicts = reasm[side].stats().overlap_conflict_bytes;
                    if conflicts > 0 {
                        apps.anomaly(
                            Some(ctx),
                            Some(f.conn_id),
                            "tcp",
                            "conflicting_overlap",
                            Some(format!("{conflicts} bytes differ from the first copy")),
                        );
                    }
                }
                let sum = summary(
                    &info,
                    &f.n_packets,
                    &f.payload,
                    f.last_ts,
                    true,
                    gap_bytes,
                    retrans_bytes,
                    reason.name(),
                );
                apps.tcp_end(&sum, t.app, ctx);
            }
            FlowApp::Udp(u) => {
                let sum = summary(&info, &f.n_packets, &f.payload, f.last_ts, false, 0, 0, reason.name());
                self.apps.udp_end(&sum, *u, ctx);
            }
        }
    }

    /// Live capture: every flow still open, as of now, with its
    /// application state (`end_reason` `open`). Nothing is flushed or
    /// closed: bytes waiting in reassembly count once they are delivered.
    pub fn snapshot(&self, each: &mut SnapshotFn<'_, A>) {
        let mut flows: Vec<&Flow<A::Tcp, A::Udp>> = self.flows.values().collect();
        flows.sort_unstable_by_key(|f| f.conn_id);
        for f in flows {
            let info = flow_info(f);
            match &f.app {
                FlowApp::Tcp(t) => {
                    let gap: u64 = t.reasm.iter().map(|r| r.stats().gap_bytes).sum();
                    let retrans: u64 = t.reasm.iter().map(|r| r.stats().retrans_bytes).sum();
                    let sum = summary(&info, &f.n_packets, &f.payload, f.last_ts, true, gap, retrans, "open");
                    each(&self.apps, &sum, AppRef::Tcp(&t.app));
                }
                FlowApp::Udp(u) => {
                    let sum = summary(&info, &f.n_packets, &f.payload, f.last_ts, false, 0, 0, "open");
                    each(&self.apps, &sum, AppRef::Udp(u));
                }
            }
        }
    }
}

fn flow_info<T, U>(f: &Flow<T, U>) -> FlowInfo {
    FlowInfo {
        conn_id: f.conn_id,
        capture: f.capture,
        ends: f.ends,
        first_ts: f.first_ts,
        midstream: f.midstream,
    }
}

#[allow(clippy::too_many_arguments)]
fn summary(
    info: &FlowInfo,
    n_packets: &[u64; 2],
    payload: &[u64; 2],
    last_ts: i64,
    tcp: bool,
    gap_bytes: u64,
    retrans_bytes: u64,
    end_reason: &'static str,
) -> FlowSummary {
    FlowSummary {
        info: *info,
        tcp,
        last_ts,
        n_packets: *n_packets,
        payload: *payload,
        gap_bytes,
        retrans_bytes,
        end_reason,
    }
}
