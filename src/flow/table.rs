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
    /// `last_ts` on the flow clock (see [`PacketNote::clock`]): what idle
    /// expiry and the close linger are measured on.
    last_clock: i64,
    /// Frame of the packet that set `last_ts` (rows a flow's end emits
    /// carry it: frames are 1-based, never 0).
    last_frame: u64,
    n_packets: [u64; 2],
    payload: [u64; 2],
    /// Packets with a wrong TCP/UDP checksum (see `PacketNote`).
    n_bad_checksums: u32,
    midstream: bool,
    syn_seen: bool,
    fin: [bool; 2],
    rst: bool,
    /// The side whose RST was accepted.
    rst_side: u8,
    /// Flow clock of the close (FIN both ways, or an accepted RST).
    closed_at: Option<i64>,
    /// A SYN seen on this open connection, ignored unless the other side
    /// answers it with a SYN-ACK (then a new connection replaces this one).
    pending_syn: Option<Box<PendingSyn>>,
    app: FlowApp<T, U>,
}

/// A SYN held back on an open connection (see `Flow::pending_syn`).
#[derive(Debug, Clone, Copy)]
struct PendingSyn {
    seq: u32,
    from_a: bool,
    ts: i64,
    frame: u64,
    capture: u32,
}

/// What the pipeline knows of a packet besides its headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketNote {
    /// The flow clock: packet time with clock steps taken out. It follows
    /// the capture's timestamps, except that a step back adds nothing and
    /// a step forward of more than `Limits::max_clock_jump_us` between two
    /// consecutive frames adds nothing either (counted in `capture_stats`):
    /// idle expiry measured on it survives a capture host whose clock was
    /// set mid-transfer. Rows keep the capture's own timestamps.
    pub clock: i64,
    /// The TCP/UDP checksum is wrong (see `decode::Checksum`).
    pub bad_checksum: bool,
    /// `--verify-checksums` and a wrong checksum: only counted on its flow
    /// (if that exists), as a receiver drops it.
    pub drop: bool,
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

/// A shard's flows by key.
type FlowMap<A> = HashMap<FlowKey, Box<Flow<<A as FlowApps>::Tcp, <A as FlowApps>::Udp>>, FlowHasher>;

/// One shard: its flows, and the application side `A` they are handed to.
pub struct Shard<A: FlowApps> {
    /// Boxed: a table sized for a flood holds mostly empty buckets, which
    /// then cost a pointer each instead of a whole `Flow`.
    flows: FlowMap<A>,
    /// Flows this shard may hold during the current batch: its own plus its
    /// share of the whole table's free room (see [`Shard::share_room`]).
    cap: usize,
    limits: Limits,
    last_sweep: i64,
    /// The held SYN of a connection being replaced (see `PendingSyn`).
    reused_syn: Option<Box<PendingSyn>>,
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
    /// A SYN, answered by a SYN-ACK, started a new connection on the
    /// 4-tuple before this one was seen to close.
    Reused,
}

impl EndReason {
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Fin => "fin",
            EndReason::Rst => "rst",
            EndReason::Idle => "idle",
            EndReason::Evicted => "evicted",
            EndReason::End => "end",
            EndReason::Reused => "reused",
        }
    }
}

impl<A: FlowApps> Shard<A> {
    pub fn new(limits: Limits, _n_shards: usize, apps: A) -> Self {
        Shard {
            flows: HashMap::default(),
            cap: limits.max_flows.max(1),
            limits,
            last_sweep: i64::MIN,
            reused_syn: None,
            apps,
            stats: ShardStats::default(),
        }
    }

    pub fn n_flows(&self) -> usize {
        self.flows.len()
    }

    /// Before a batch: shares the whole table's free room (`max_flows` less
    /// the flows of all shards) among the shards in proportion to the
    /// packets the batch brings each (`packets[i]` for shard `i`). A packet
    /// opens at most one flow, so while the free room is at least the
    /// batch's packets every shard can take all its new flows: no shard
    /// evicts while the table has room, wherever the hash put the flows,
    /// and the table never holds more than `max_flows`. Deterministic: it
    /// depends on the counts between batches and on the batch only.
    pub fn share_room(shards: &mut [Shard<A>], packets: &[usize]) {
        let total: usize = shards.iter().map(|s| s.flows.len()).sum();
        let all: usize = packets.iter().sum();
        for (i, s) in shards.iter_mut().enumerate() {
            let free = s.limits.max_flows.saturating_sub(total) as u128;
            let mine = packets.get(i).copied().unwrap_or(0) as u128;
            let share = if all == 0 { 0 } else { free * mine / all as u128 };
            s.cap = s.flows.len() + usize::try_from(share).unwrap_or(usize::MAX);
        }
    }

    /// Processes one decoded packet whose payload is `payload`.
    pub fn packet(&mut self, ctx: FrameCtx, note: PacketNote, p: &Packet, payload: &[u8]) {
        let clock = note.clock;
        let (key, from_a) = FlowKey::of(p);
        if note.drop {
            if let Some(f) = self.flows.get_mut(&key) {
                f.n_bad_checksums = f.n_bad_checksums.saturating_add(1);
            }
            return;
        }
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
            Some(f) if is_tcp && syn && !ack && f.closed_at.is_some() => {
                (true, Some(if f.rst { EndReason::Rst } else { EndReason::Fin }))
            }
            // Closed for longer than the linger: a sweep would have ended it,
            // so this packet starts a new flow whether or not one ran.
            Some(f)
                if f.closed_at
                    .is_some_and(|c| clock - c > self.limits.tcp_closed_linger_us) =>
            {
                (true, Some(if f.rst { EndReason::Rst } else { EndReason::Fin }))
            }
            Some(f) if clock - f.last_clock > idle => (true, Some(EndReason::Idle)),
            // The other side answered a held SYN (see below): the old
            // connection was gone there, the SYN starts a new one.
            Some(f)
                if is_tcp
                    && syn
                    && ack
                    && f.pending_syn.as_ref().is_some_and(|ps| {
                        ps.from_a != from_a
                            && matches!(p.transport, Transport::Tcp { ack: a, .. } if a == ps.seq.wrapping_add(1))
                    }) =>
            {
                (true, Some(EndReason::Reused))
            }
            // A SYN on a connection that carried data and was not seen to
            // close: a receiver in a synchronized state ignores it, payload
            // and all (RFC 9293 §3.10.7.4, RFC 5961 §4: challenge ACK), so a
            // spoofed SYN must not end or feed it. A SYN without ACK is held:
            // it starts a new connection once the other side answers it with
            // a SYN-ACK.
            Some(f) if is_tcp && syn && f.payload.iter().sum::<u64>() > 0 => {
                self.syn_on_open_flow(ctx, key, from_a, p, !ack);
                return;
            }
            Some(_) => (true, None),
        };
        if let Some(reason) = end {
            if let Some(mut f) = self.flows.remove(&key) {
                if reason == EndReason::Reused {
                    // The held SYN was counted here; it opens the new flow.
                    if let Some(ps) = f.pending_syn.take() {
                        let side = if ps.from_a == f.orig_is_a { ORIG } else { RESP };
                        f.n_packets[side] = f.n_packets[side].saturating_sub(1);
                        self.reused_syn = Some(ps);
                    }
                }
                self.end_flow(key, *f, reason, ctx);
            }
        }
        if !exists || end.is_some() {
            if self.flows.len() >= self.cap {
                self.evict(ctx);
            }
            let mut flow = self.new_flow(ctx, clock, p, is_tcp, syn, ack);
            if end == Some(EndReason::Reused) {
                // The new connection began with the SYN that was held back.
                if let Some(ps) = self.reused_syn.take() {
                    flow.conn_id = (u64::from(ps.capture) << 40) | ps.frame;
                    flow.first_ts = ps.ts;
                    flow.n_packets[ORIG] += 1;
                    if let FlowApp::Tcp(t) = &mut flow.app {
                        t.reasm[ORIG].start_at(ps.seq.wrapping_add(1));
                    }
                }
            }
            self.stats.n_flows += 1;
            self.flows.insert(key, Box::new(flow));
        }
        let Some(f) = self.flows.get_mut(&key) else { return };
        let side = if from_a == f.orig_is_a { ORIG } else { RESP };
        if ctx.ts >= f.last_ts {
            f.last_ts = ctx.ts;
            f.last_frame = ctx.frame;
        }
        f.last_clock = f.last_clock.max(clock);
        f.n_bad_checksums = f.n_bad_checksums.saturating_add(u32::from(note.bad_checksum));
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
                let before = [reasm[0].stream_offset(), reasm[1].stream_offset()];
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
                        f.closed_at = Some(clock);
                    }
                }
                if flags & tcp_flags::RST != 0 {
                    // RFC 5961 §3 / RFC 9293 §3.10.7.4: a receiver accepts a
                    // RST only inside its window; one outside it is spoofed
                    // or stale and ignored (counted). The window is not on
                    // the wire we keep, so it is `Limits.tcp_rst_window`.
                    let rst_seq = if syn { seq.wrapping_add(1) } else { seq };
                    let window = i64::from(self.limits.tcp_rst_window);
                    let in_window = reasm[side].next_seq().is_none_or(|next| {
                        let rel = i64::from(rst_seq.wrapping_sub(next) as i32);
                        (-window..=window).contains(&rel)
                    });
                    if in_window {
                        f.rst = true;
                        f.rst_side = side as u8;
                        f.closed_at.get_or_insert(clock);
                    } else {
                        apps.anomaly(
                            Some(ctx),
                            Some(f.conn_id),
                            "tcp",
                            "tcp_rst_out_of_window",
                            Some(format!(
                                "seq {rst_seq} vs next {}; ignored",
                                reasm[side].next_seq().unwrap_or_default()
                            )),
                        );
                    }
                } else if f.rst
                    && usize::from(f.rst_side) == side
                    && !payload.is_empty()
                    && reasm[side].stream_offset() > before[side]
                {
                    // New data from the side that sent a RST: the RST was not
                    // its own (a RST in the window but not at its edge only
                    // draws a challenge ACK, RFC 5961 §3.2, and the real
                    // sender goes on), so it did not end the connection.
                    f.rst = false;
                    if !(f.fin[0] && f.fin[1]) {
                        f.closed_at = None;
                    }
                    apps.anomaly(
                        Some(ctx),
                        Some(f.conn_id),
                        "tcp",
                        "tcp_rst_not_honoured",
                        Some("data continued after a RST".to_string()),
                    );
                }
            }
            (FlowApp::Udp(u), Transport::Udp) => apps.datagram(&info, u, side, payload, ctx),
            _ => {}
        }
    }

    /// A SYN on an open connection that carried data: counted, not acted on;
    /// one without ACK is held (see the caller).
    fn syn_on_open_flow(&mut self, ctx: FrameCtx, key: FlowKey, from_a: bool, p: &Packet, hold: bool) {
        let Transport::Tcp { seq, .. } = p.transport else {
            return;
        };
        let Some(f) = self.flows.get_mut(&key) else { return };
        let side = if from_a == f.orig_is_a { ORIG } else { RESP };
        f.n_packets[side] += 1;
        f.payload[side] += u64::from(p.payload_len);
        if hold {
            f.pending_syn = Some(Box::new(PendingSyn {
                seq,
                from_a,
                ts: ctx.ts,
                frame: ctx.frame,
                capture: ctx.capture,
            }));
        }
        let conn_id = f.conn_id;
        self.apps.anomaly(
            Some(ctx),
            Some(conn_id),
            "tcp",
            "tcp_syn_on_open_connection",
            Some(if hold {
                format!("seq {seq}; ignored unless answered by a SYN-ACK")
            } else {
                format!("SYN-ACK seq {seq}; ignored")
            }),
        );
    }

    fn new_flow(
        &self,
        ctx: FrameCtx,
        clock: i64,
        p: &Packet,
        is_tcp: bool,
        syn: bool,
        ack: bool,
    ) -> Flow<A::Tcp, A::Udp> {
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
            last_clock: clock,
            last_frame: ctx.frame,
            n_packets: [0, 0],
            payload: [0, 0],
            n_bad_checksums: 0,
            midstream: is_tcp && !syn,
            syn_seen: false,
            fin: [false, false],
            rst: false,
            rst_side: 0,
            closed_at: None,
            pending_syn: None,
            app,
        }
    }

    /// The whole table is full: evicts the least recently active eighth of
    /// the shard (the shard of a flow is unpredictable, see
    /// `FlowKey::shard_hash`).
    fn evict(&mut self, ctx: FrameCtx) {
        let mut by_age: Vec<(i64, u64, FlowKey)> =
            self.flows.iter().map(|(k, f)| (f.last_clock, f.conn_id, *k)).collect();
        by_age.sort_unstable_by_key(|&(ts, id, _)| (ts, id));
        let n = (self.flows.len() / 8).max(1);
        for (_, _, k) in by_age.into_iter().take(n) {
            if let Some(f) = self.flows.remove(&k) {
                self.stats.n_flows_evicted += 1;
                self.end_flow(k, *f, EndReason::Evicted, ctx);
            }
        }
        self.apps.anomaly(
            Some(ctx),
            None,
            "flow",
            "flow_table_full",
            Some(format!(
                "{n} flows evicted (table full: max_flows {})",
                self.limits.max_flows
            )),
        );
    }

    /// Ends flows that are idle or closed as of packet time `now`, flow
    /// clock `clock` (see [`PacketNote::clock`]).
    pub fn sweep(&mut self, now: i64, clock: i64) {
        if self.last_sweep != i64::MIN && clock - self.last_sweep < self.limits.sweep_interval_us {
            return;
        }
        self.last_sweep = clock;
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
                if clock - c > l.tcp_closed_linger_us {
                    done.push((f.conn_id, *k, if f.rst { EndReason::Rst } else { EndReason::Fin }));
                    continue;
                }
            }
            if clock - f.last_clock > idle {
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
                self.end_flow(k, *f, r, ctx);
            }
        }
    }

    /// End of input, a step at a time (so that the rows of a table full of
    /// flows are not all built at once): ends up to `max` flows, in conn_id
    /// order, each with the reason a sweep at `clock` would give it (fin,
    /// rst, idle), else `end`, as [`finish`](Self::finish) does. Returns
    /// how many flows are left.
    pub fn finish_some(&mut self, clock: i64, max: usize) -> usize {
        let mut keys: Vec<(u64, FlowKey)> = self.flows.iter().map(|(k, f)| (f.conn_id, *k)).collect();
        if keys.len() > max {
            keys.select_nth_unstable_by_key(max, |k| k.0);
            keys.truncate(max);
        }
        keys.sort_unstable_by_key(|k| k.0);
        let ctx = FrameCtx {
            ts: clock,
            frame: 0,
            capture: 0,
        };
        let l = self.limits;
        for (_, k) in keys {
            if let Some(f) = self.flows.remove(&k) {
                let idle = match f.app {
                    FlowApp::Tcp(_) => l.tcp_idle_us,
                    FlowApp::Udp(_) => l.udp_idle_us,
                };
                let reason = match f.closed_at {
                    Some(c) if clock - c > l.tcp_closed_linger_us => {
                        if f.rst {
                            EndReason::Rst
                        } else {
                            EndReason::Fin
                        }
                    }
                    _ if clock - f.last_clock > idle => EndReason::Idle,
                    _ => EndReason::End,
                };
                self.end_flow(k, *f, reason, ctx);
            }
        }
        self.flows.len()
    }

    /// Ends every flow (end of input). Flows that a sweep at `now` would
    /// end keep their reason (fin, rst, idle), whatever the sweep interval
    /// left undone; the rest end with `end`.
    pub fn finish(&mut self, now: i64, clock: i64) {
        self.last_sweep = i64::MIN;
        self.sweep(now, clock);
        let mut keys: Vec<(u64, FlowKey)> = self.flows.iter().map(|(k, f)| (f.conn_id, *k)).collect();
        keys.sort_unstable_by_key(|k| k.0);
        let ctx = FrameCtx {
            ts: now,
            frame: 0,
            capture: 0,
        };
        for (_, k) in keys {
            if let Some(f) = self.flows.remove(&k) {
                self.end_flow(k, *f, EndReason::End, ctx);
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
                let sum = FlowSummary {
                    n_bad_checksums: u64::from(f.n_bad_checksums),
                    ..sum
                };
                apps.tcp_end(&sum, t.app, ctx);
            }
            FlowApp::Udp(u) => {
                let sum = FlowSummary {
                    n_bad_checksums: u64::from(f.n_bad_checksums),
                    ..summary(&info, &f.n_packets, &f.payload, f.last_ts, false, 0, 0, reason.name())
                };
                self.apps.udp_end(&sum, *u, ctx);
            }
        }
    }

    /// Live capture: every flow still open, as of now, with its
    /// application state (`end_reason` `open`). Nothing is flushed or
    /// closed: bytes waiting in reassembly count once they are delivered.
    pub fn snapshot(&self, each: &mut SnapshotFn<'_, A>) {
        let mut flows: Vec<&Flow<A::Tcp, A::Udp>> = self.flows.values().map(|f| &**f).collect();
        flows.sort_unstable_by_key(|f| f.conn_id);
        for f in flows {
            let info = flow_info(f);
            match &f.app {
                FlowApp::Tcp(t) => {
                    let gap: u64 = t.reasm.iter().map(|r| r.stats().gap_bytes).sum();
                    let retrans: u64 = t.reasm.iter().map(|r| r.stats().retrans_bytes).sum();
                    let sum = FlowSummary {
                        n_bad_checksums: u64::from(f.n_bad_checksums),
                        ..summary(&info, &f.n_packets, &f.payload, f.last_ts, true, gap, retrans, "open")
                    };
                    each(&self.apps, &sum, AppRef::Tcp(&t.app));
                }
                FlowApp::Udp(u) => {
                    let sum = FlowSummary {
                        n_bad_checksums: u64::from(f.n_bad_checksums),
                        ..summary(&info, &f.n_packets, &f.payload, f.last_ts, false, 0, 0, "open")
                    };
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
        n_bad_checksums: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::stream::StreamApp;
    use crate::analyze::udp::UdpApp;

    /// What a flow costs before any payload: the table's bucket, the flow,
    /// and for TCP its two reassemblers and the stream's state. A SYN flood
    /// fills the table with these, so they stay small (issue 16: ≤ 1 KiB
    /// per half-open flow).
    #[test]
    fn per_flow_state_is_small() {
        let bucket = std::mem::size_of::<(FlowKey, Box<Flow<StreamApp, UdpApp>>)>();
        let flow = std::mem::size_of::<Flow<StreamApp, UdpApp>>();
        let tcp = std::mem::size_of::<TcpState<StreamApp>>();
        let udp = std::mem::size_of::<UdpApp>();
        // Measured: 56, 184, 320, 80. With the payload of a partial
        // handshake (67 bytes kept for it and 67 for the reassembler's
        // compare tail) and the map's empty buckets that is ~0.8 KiB.
        assert!(bucket <= 56, "{bucket}");
        assert!(flow <= 192, "{flow}");
        assert!(tcp <= 352, "{tcp}");
        assert!(udp <= 80, "{udp}");
    }
}
