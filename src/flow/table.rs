//! A shard of the flow table: every flow whose key hashes to this shard, with
//! its TCP reassembly and the state its application side keeps (opaque
//! here: [`FlowApps`]). A shard is processed by one worker at a time and
//! owns all its state (no locks). Flows end on FIN/RST (after a linger), on
//! idle expiry in packet time, on eviction when the shard is full, or at
//! the end of input; each end is handed to the application side with the
//! flow's transport facts ([`FlowSummary`]).

use std::net::SocketAddr;

use super::reassembly::StreamReassembler;
pub use super::FlowInfo;
use super::{alloc_bytes, AppRef, Chunk, FlowApps, FlowSummary, FrameCtx, ORIG, RESP};
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
    /// True when the originator is the key's `a` endpoint (the ends are
    /// the key's: not kept twice).
    orig_is_a: bool,
    /// Bytes this flow is accounted for (`Limits::max_memory`): see
    /// [`Shard::flow_bytes`]. Updated after each of its packets.
    mem: u32,
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

/// What [`Shard::packet`] read from a packet's header and the limits,
/// handed to its long way (`open_or_end`) rather than read again.
#[derive(Debug, Clone, Copy)]
struct Seen {
    is_tcp: bool,
    syn: bool,
    ack: bool,
    /// The idle timeout of the packet's protocol.
    idle: i64,
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

/// What [`Shard::make_room`] found and did before a batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Room {
    /// The flows' accounted bytes before it: what the previous batch left.
    pub mem_before: usize,
    /// Flows it evicted.
    pub n_evicted: u64,
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

/// A shard's flows by key: hashbrown's `HashTable` over (key, flow) under
/// the shard's [`FlowHasher`]. The table is std's map without its
/// `Hash` plumbing: [`Shard::packet`] hashes a packet's key once and
/// looks it up with that hash (std's `get_mut` was not inlined into the
/// packet path and cost ~123 instructions a lookup on mixed-250m).
struct FlowMap<T, U> {
    table: hashbrown::HashTable<(FlowKey, Box<Flow<T, U>>)>,
    hasher: FlowHasher,
}

impl<T, U> FlowMap<T, U> {
    fn new() -> Self {
        FlowMap {
            table: hashbrown::HashTable::new(),
            hasher: FlowHasher::default(),
        }
    }

    #[inline]
    fn hash(&self, key: &FlowKey) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn get(&self, key: &FlowKey) -> Option<&Flow<T, U>> {
        self.table.find(self.hash(key), |(k, _)| k == key).map(|(_, f)| &**f)
    }

    /// The flow of `key`, whose hash is `h` ([`FlowMap::hash`]).
    #[inline]
    fn get_mut_hashed(&mut self, h: u64, key: &FlowKey) -> Option<&mut Flow<T, U>> {
        self.table.find_mut(h, |(k, _)| k == key).map(|(_, f)| &mut **f)
    }

    fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Flow<T, U>> {
        self.get_mut_hashed(self.hash(key), key)
    }

    fn contains_key(&self, key: &FlowKey) -> bool {
        self.table.find(self.hash(key), |(k, _)| k == key).is_some()
    }

    fn remove(&mut self, key: &FlowKey) -> Option<Box<Flow<T, U>>> {
        let h = self.hash(key);
        let e = self.table.find_entry(h, |(k, _)| k == key).ok()?;
        Some(e.remove().0 .1)
    }

    /// Inserts or replaces the flow of `key`.
    fn insert(&mut self, key: FlowKey, flow: Box<Flow<T, U>>) {
        let h = self.hash(&key);
        let hasher = &self.hasher;
        match self.table.entry(
            h,
            |(k, _)| *k == key,
            |(k, _)| std::hash::BuildHasher::hash_one(hasher, k),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => e.get_mut().1 = flow,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((key, flow));
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&FlowKey, &Flow<T, U>)> {
        self.table.iter().map(|(k, f)| (k, &**f))
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Flow<T, U>> {
        self.table.iter_mut().map(|(_, f)| &mut **f)
    }
}

/// One shard: its flows, and the application side `A` they are handed to.
pub struct Shard<A: FlowApps> {
    /// Boxed: a table sized for a flood holds mostly empty buckets, which
    /// then cost a pointer each instead of a whole `Flow`.
    flows: FlowMap<A::Tcp, A::Udp>,
    /// Flows this shard may hold during the current batch: its own plus its
    /// share of the whole table's free room (see [`Shard::share_room`]).
    cap: usize,
    limits: Limits,
    last_sweep: i64,
    /// The held SYN of a connection being replaced (see `PendingSyn`).
    reused_syn: Option<Box<PendingSyn>>,
    /// Sum of the flows' `mem`: what they are accounted for.
    mem: usize,
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
            flows: FlowMap::new(),
            cap: limits.max_flows.max(1),
            limits,
            last_sweep: i64::MIN,
            reused_syn: None,
            mem: 0,
            apps,
            stats: ShardStats::default(),
        }
    }

    pub fn n_flows(&self) -> usize {
        self.flows.len()
    }

    /// The bounds this shard was made with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes the shard's flows are accounted for (`Limits::max_memory`).
    pub fn mem_bytes(&self) -> usize {
        self.mem
    }

    /// Removes a flow from the table and from the account.
    fn take(&mut self, key: &FlowKey) -> Option<Box<Flow<A::Tcp, A::Udp>>> {
        let f = self.flows.remove(key)?;
        self.mem = self.mem.saturating_sub(f.mem as usize);
        Some(f)
    }

    /// What a flow is accounted for: its share of the table (a bucket
    /// holds the key and a pointer; hashbrown keeps 7/16 to 7/8 of its
    /// buckets full, taken as half), its own allocation, and for TCP the
    /// reassembly state and stream application, for UDP the datagram
    /// application, each with the heap they hold. Fixed sizes and
    /// buffer lengths and capacities only: the same packets give the same
    /// account in every run, whatever the hash key or the thread count.
    fn flow_bytes(f: &Flow<A::Tcp, A::Udp>) -> usize {
        let bucket = 2 * (std::mem::size_of::<(FlowKey, Box<Flow<A::Tcp, A::Udp>>)>() + 1);
        let own = alloc_bytes(std::mem::size_of::<Flow<A::Tcp, A::Udp>>());
        let syn = if f.pending_syn.is_some() {
            alloc_bytes(std::mem::size_of::<PendingSyn>())
        } else {
            0
        };
        let app = match &f.app {
            FlowApp::Tcp(t) => {
                alloc_bytes(std::mem::size_of::<TcpState<A::Tcp>>())
                    + t.reasm[0].heap_bytes()
                    + t.reasm[1].heap_bytes()
                    + A::tcp_heap_bytes(&t.app)
            }
            FlowApp::Udp(u) => alloc_bytes(std::mem::size_of::<A::Udp>()) + A::udp_heap_bytes(u),
        };
        bucket + own + syn + app
    }

    /// Brings flow `key`'s account up to date (after a packet).
    fn account(&mut self, key: &FlowKey) {
        if let Some(f) = self.flows.get_mut(key) {
            let m = u32::try_from(Self::flow_bytes(f)).unwrap_or(u32::MAX);
            self.mem = self.mem.saturating_sub(f.mem as usize) + m as usize;
            f.mem = m;
        }
    }

    /// Whether the packet's flow is in the table.
    pub fn has_flow(&self, p: &Packet) -> bool {
        self.flows.contains_key(&FlowKey::of(p).0)
    }

    /// Before a batch, over the whole table at once: the one place flows
    /// are evicted (but see below). `new_flows[i]` bounds the flows shard
    /// `i`'s part of the batch may open (its packets whose key has no flow
    /// yet: [`Shard::has_flow`]). When the flows plus those would pass
    /// `max_flows`, or the flows' accounted bytes passed `max_memory`,
    /// the least recently active flows of the whole table are evicted, in
    /// order of their last packet (flow clock), then `conn_id`, until both
    /// fit with an eighth to spare (eviction looks at every flow, so it
    /// runs once per eighth of the table, not per batch). That order
    /// depends neither on the hash key nor on the shard a flow is in: the
    /// same capture evicts the same flows in every run, with any number of
    /// threads. Each round is counted (`flows.end_reason` `evicted`, one
    /// anomaly `flow_table_full` or `flow_memory_full`).
    ///
    /// Then shares the free room (`max_flows` less the flows of all shards)
    /// among the shards in proportion to their bound: each can take all its
    /// new flows. Only a `max_flows` below what one batch opens leaves
    /// less (eviction here stops at half the table), and then a shard that
    /// runs out evicts its own oldest eighth during the batch (which flows,
    /// then, depends on the hash key).
    pub fn make_room(shards: &mut [Shard<A>], new_flows: &[usize], ctx: FrameCtx) -> Room
    where
        A: Send,
        A::Tcp: Send,
        A::Udp: Send,
    {
        let Some(l) = shards.first().map(|s| s.limits) else {
            return Room::default();
        };
        let n: usize = shards.iter().map(|s| s.flows.len()).sum();
        let mem: usize = shards.iter().map(|s| s.mem).sum();
        let all: usize = new_flows.iter().sum();
        let mut room = Room {
            mem_before: mem,
            ..Room::default()
        };
        let flows_over = n.saturating_add(all) > l.max_flows;
        let mem_over = mem > l.max_memory;
        if flows_over || mem_over {
            // Never below half the table: a batch that may open more than
            // that (a `max_flows` below a batch's frames) is left to the
            // shards' own eviction rather than emptying the table first.
            let flow_goal = if flows_over {
                (l.max_flows - l.max_flows / 8)
                    .min(l.max_flows.saturating_sub(all))
                    .max(l.max_flows / 2)
            } else {
                usize::MAX
            };
            let mem_goal = if mem_over {
                l.max_memory - l.max_memory / 8
            } else {
                usize::MAX
            };
            // (flow clock, conn_id, bytes): 24 bytes a flow, for this
            // moment only. conn_id is unique among live flows (the frame
            // that opened it), so the order is total.
            let mut order: Vec<(i64, u64, u32)> = Vec::with_capacity(n);
            for s in shards.iter() {
                order.extend(s.flows.iter().map(|(_, f)| (f.last_clock, f.conn_id, f.mem)));
            }
            order.sort_unstable();
            let (mut n_left, mut mem_left) = (n, mem);
            let mut cut = None;
            for &(c, id, m) in &order {
                if n_left <= flow_goal && mem_left <= mem_goal {
                    break;
                }
                n_left -= 1;
                mem_left = mem_left.saturating_sub(m as usize);
                cut = Some((c, id));
            }
            drop(order);
            if let Some(cut) = cut {
                use rayon::prelude::*;
                room.n_evicted = shards.par_iter_mut().map(|s| s.evict_upto(cut, ctx)).sum();
                let (kind, why) = if flows_over {
                    ("flow_table_full", format!("max_flows {}", l.max_flows))
                } else {
                    (
                        "flow_memory_full",
                        format!("max_memory {} bytes, accounted {mem}", l.max_memory),
                    )
                };
                if let Some(s0) = shards.first_mut() {
                    s0.apps.anomaly(
                        Some(ctx),
                        None,
                        "flow",
                        kind,
                        Some(format!(
                            "{} least recently active flows evicted ({why})",
                            room.n_evicted
                        )),
                    );
                }
            }
        }
        let total: usize = shards.iter().map(|s| s.flows.len()).sum();
        for (i, s) in shards.iter_mut().enumerate() {
            let free = s.limits.max_flows.saturating_sub(total) as u128;
            let mine = new_flows.get(i).copied().unwrap_or(0) as u128;
            let share = if all == 0 { 0 } else { free * mine / all as u128 };
            s.cap = s.flows.len() + usize::try_from(share).unwrap_or(usize::MAX);
        }
        room
    }

    /// Evicts this shard's flows whose (flow clock, conn_id) is at most
    /// `cut`, oldest first (see [`Shard::make_room`]).
    fn evict_upto(&mut self, cut: (i64, u64), ctx: FrameCtx) -> u64 {
        let mut gone: Vec<(i64, u64, FlowKey)> = self
            .flows
            .iter()
            .filter(|(_, f)| (f.last_clock, f.conn_id) <= cut)
            .map(|(k, f)| (f.last_clock, f.conn_id, *k))
            .collect();
        gone.sort_unstable_by_key(|&(c, id, _)| (c, id));
        let n = gone.len() as u64;
        for (_, _, k) in gone {
            if let Some(f) = self.take(&k) {
                self.stats.n_flows_evicted += 1;
                self.end_flow(k, *f, EndReason::Evicted, ctx);
            }
        }
        n
    }

    /// Processes one decoded packet whose payload is `payload`.
    /// The flow's account is brought up to date after it (see
    /// [`Shard::flow_bytes`]), on the flow it already holds rather than by a
    /// second lookup.
    pub fn packet(&mut self, ctx: FrameCtx, note: PacketNote, p: &Packet, payload: &[u8]) {
        self.packet_with(ctx, note, p, payload, || false);
    }

    /// [`Shard::packet`], with `tail_superseded` answering whether the
    /// payload's copy into the compare tail is superseded by in-order data
    /// of its direction later in the batch
    /// ([`superseded_tail_pushes`](super::reassembly::superseded_tail_pushes)).
    /// It is asked only when the answer matters (an in-order segment of a
    /// flow that is not ruled out, whose tail is full): the caller's scan
    /// of its part of the batch then runs only for parts that hold such a
    /// segment (a part of ruled-out flows never scans).
    pub fn packet_with(
        &mut self,
        ctx: FrameCtx,
        note: PacketNote,
        p: &Packet,
        payload: &[u8],
        tail_superseded: impl FnOnce() -> bool,
    ) {
        let clock = note.clock;
        let (key, from_a) = FlowKey::of(p);
        let h = self.flows.hash(&key);
        if note.drop {
            if let Some(f) = self.flows.get_mut_hashed(h, &key) {
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
        let idle = if is_tcp {
            self.limits.tcp_idle_us
        } else {
            self.limits.udp_idle_us
        };
        // The common packet: of an open flow, no SYN, not closed, not idle.
        // It takes one lookup; every other packet goes the long way
        // (`open_or_end`, which lets this one through unchanged too).
        let f = match self.flows.get_mut_hashed(h, &key) {
            Some(f) if !syn && f.closed_at.is_none() && clock - f.last_clock <= idle => f,
            _ => {
                if !self.open_or_end(ctx, clock, p, key, from_a, Seen { is_tcp, syn, ack, idle }) {
                    return;
                }
                match self.flows.get_mut_hashed(h, &key) {
                    Some(f) => f,
                    None => return,
                }
            }
        };
        let side = if from_a == f.orig_is_a { ORIG } else { RESP };
        if ctx.ts >= f.last_ts {
            f.last_ts = ctx.ts;
            f.last_frame = ctx.frame;
        }
        f.last_clock = f.last_clock.max(clock);
        f.n_bad_checksums = f.n_bad_checksums.saturating_add(u32::from(note.bad_checksum));
        f.n_packets[side] += 1;
        f.payload[side] += u64::from(p.payload_len);
        // A ruled-out TCP flow's plain segment (no SYN, FIN or RST, no RST
        // pending on the flow): its sequence ranges and its account, what
        // the long match below does for it, without the application's
        // side of it (nothing is delivered).
        if let (FlowApp::Tcp(t), Transport::Tcp { seq, ack: ackno, flags }) = (&mut f.app, p.transport) {
            use tcp_flags::{FIN, RST, SYN};
            if flags & (SYN | FIN | RST) == 0 && !f.rst && t.reasm[ORIG].is_ranges_only() {
                ranges_only_segment(&mut t.reasm, side, seq, (ack, ackno), payload);
                let m = u32::try_from(Self::flow_bytes(f)).unwrap_or(u32::MAX);
                self.mem = self.mem.saturating_sub(f.mem as usize) + m as usize;
                f.mem = m;
                return;
            }
        }
        // What the application side is told of the flow, made only for a
        // packet it is handed (not for one of a ruled-out TCP flow).
        let (conn_id, capture, orig_is_a, first_ts, midstream) =
            (f.conn_id, f.capture, f.orig_is_a, f.first_ts, f.midstream);
        let info = || FlowInfo {
            conn_id,
            capture,
            ends: flow_ends(&key, orig_is_a),
            first_ts,
            midstream,
        };
        let apps = &mut self.apps;
        match (&mut f.app, p.transport) {
            (FlowApp::Tcp(t), Transport::Tcp { seq, ack: ackno, flags }) => {
                let t = &mut **t;
                // Ruled out (issue 15): sequence ranges only from here on,
                // and nothing for the application.
                if !t.reasm[ORIG].is_ranges_only() && A::tcp_ruled_out(&t.app) {
                    t.reasm[ORIG].set_ranges_only();
                    t.reasm[RESP].set_ranges_only();
                }
                let blind = t.reasm[ORIG].is_ranges_only();
                let info = (!blind).then(info);
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
                let mut deliver = |side: usize, c: Chunk<'_>| {
                    if let Some(info) = &info {
                        apps.stream(info, app, side, c, ctx);
                    }
                };
                if !payload.is_empty() {
                    if !reasm[side].is_started() {
                        reasm[side].start_at(seq);
                    }
                    let s = if syn { seq.wrapping_add(1) } else { seq };
                    reasm[side].segment_with(s, payload, tail_superseded, &mut |c| deliver(side, c));
                }
                if ack && flags & tcp_flags::RST == 0 && reasm[1 - side].is_started() {
                    reasm[1 - side].acked(ackno, &mut |c| deliver(1 - side, c));
                }
                if flags & tcp_flags::FIN != 0 {
                    // The FIN takes the sequence number after the payload.
                    let base = if syn { seq.wrapping_add(1) } else { seq };
                    let fin_seq = base.wrapping_add(payload.len() as u32 + p.payload_missing);
                    if reasm[side].is_started() {
                        reasm[side].fin(fin_seq, &mut |c| deliver(side, c));
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
            (FlowApp::Udp(u), Transport::Udp) => apps.datagram(&info(), u, side, payload, ctx),
            _ => {}
        }
        let m = u32::try_from(Self::flow_bytes(f)).unwrap_or(u32::MAX);
        self.mem = self.mem.saturating_sub(f.mem as usize) + m as usize;
        f.mem = m;
    }

    /// [`Shard::packet`]'s long way, for a packet that is not of an open,
    /// active flow or that carries a SYN: ends the flow it finds when the
    /// packet closes a chapter (a new SYN on a closed 4-tuple, a linger or
    /// idle time passed, a held SYN answered) and opens a new one when
    /// there is none; false when the packet was dealt with here (a SYN on
    /// an open connection).
    fn open_or_end(&mut self, ctx: FrameCtx, clock: i64, p: &Packet, key: FlowKey, from_a: bool, seen: Seen) -> bool {
        let Seen { is_tcp, syn, ack, idle } = seen;
        // A new SYN on a closed 4-tuple starts a new connection; a flow idle
        // for longer than its timeout ends before this packet, even if no
        // sweep has run in between (sweeps follow batch ends).
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
                self.account(&key);
                return false;
            }
            Some(_) => (true, None),
        };
        if let Some(reason) = end {
            if let Some(mut f) = self.take(&key) {
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
        true
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
        let _ = (key, src, dst);
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
            mem: 0,
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

    /// The shard used up its share of the table's room during a batch (only
    /// when `max_flows` is below a batch's frames, see
    /// [`Shard::make_room`]): evicts its own least recently active eighth.
    fn evict(&mut self, ctx: FrameCtx) {
        let mut by_age: Vec<(i64, u64, FlowKey)> =
            self.flows.iter().map(|(k, f)| (f.last_clock, f.conn_id, *k)).collect();
        by_age.sort_unstable_by_key(|&(ts, id, _)| (ts, id));
        let n = (self.flows.len() / 8).max(1);
        for (_, _, k) in by_age.into_iter().take(n) {
            if let Some(f) = self.take(&k) {
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
                    let m = u32::try_from(Self::flow_bytes(f)).unwrap_or(u32::MAX);
                    self.mem = self.mem.saturating_sub(f.mem as usize) + m as usize;
                    f.mem = m;
                }
            }
        }
        let l = &self.limits;
        let mut done: Vec<(u64, FlowKey, EndReason)> = Vec::new();
        for (k, f) in self.flows.iter() {
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
            if let Some(f) = self.take(&k) {
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
            if let Some(f) = self.take(&k) {
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
            if let Some(f) = self.take(&k) {
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
        let info = flow_info(&f, &key);
        match f.app {
            FlowApp::Tcp(t) => {
                let mut t = *t;
                let (reasm, app) = (&mut t.reasm, &mut t.app);
                let apps = &mut self.apps;
                let (mut gap_bytes, mut retrans_bytes) = (0, 0);
                let blind = reasm[ORIG].is_ranges_only();
                for side in [ORIG, RESP] {
                    reasm[side].flush(&mut |c| {
                        if !blind {
                            apps.stream(&info, app, side, c, ctx);
                        }
                    });
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
        let mut flows: Vec<_> = self.flows.iter().collect();
        flows.sort_unstable_by_key(|(_, f)| f.conn_id);
        for (k, f) in flows {
            let info = flow_info(f, k);
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

/// A segment (no SYN, FIN or RST) of a flow followed as sequence ranges
/// only: placed on its side, its ACK on the other, as [`Shard::packet_with`]'s
/// general path places them. Nothing is delivered (gaps included: no one
/// reads them); the compare tail is never asked about (ranges only have
/// none).
#[inline]
fn ranges_only_segment(reasm: &mut [StreamReassembler; 2], side: usize, seq: u32, ack: (bool, u32), payload: &[u8]) {
    let mut nothing = |_: Chunk<'_>| {};
    if let Some(r) = reasm.get_mut(side) {
        if !payload.is_empty() {
            if !r.is_started() {
                r.start_at(seq);
            }
            r.segment_with(seq, payload, || false, &mut nothing);
        }
    }
    if let (true, Some(r)) = (ack.0, reasm.get_mut(1 - side)) {
        if r.is_started() {
            r.acked(ack.1, &mut nothing);
        }
    }
}

fn flow_info<T, U>(f: &Flow<T, U>, key: &FlowKey) -> FlowInfo {
    FlowInfo {
        conn_id: f.conn_id,
        capture: f.capture,
        ends: flow_ends(key, f.orig_is_a),
        first_ts: f.first_ts,
        midstream: f.midstream,
    }
}

/// [originator, responder] of a flow keyed `key`.
#[inline]
fn flow_ends(key: &FlowKey, orig_is_a: bool) -> [SocketAddr; 2] {
    let a = SocketAddr::new(key.a.0, key.a.1);
    let b = SocketAddr::new(key.b.0, key.b.1);
    if orig_is_a {
        [a, b]
    } else {
        [b, a]
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
    /// fills the table with these, so they stay small.
    #[test]
    fn per_flow_state_is_small() {
        let bucket = std::mem::size_of::<(FlowKey, Box<Flow<StreamApp, UdpApp>>)>();
        let flow = std::mem::size_of::<Flow<StreamApp, UdpApp>>();
        let tcp = std::mem::size_of::<TcpState<StreamApp>>();
        let udp = std::mem::size_of::<UdpApp>();
        // Measured: 56, 136, 288, 80 (session 4: 56, 192, 336, 80; the
        // ends are the key's, the out-of-order queue is allocated at need).
        assert!(bucket <= 56, "{bucket}");
        assert!(flow <= 136, "{flow}");
        assert!(tcp <= 288, "{tcp}");
        assert!(udp <= 80, "{udp}");
    }

    fn packet(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, t: Transport, len: usize) -> Packet {
        Packet {
            src: std::net::IpAddr::from(src),
            dst: std::net::IpAddr::from(dst),
            sport,
            dport,
            transport: t,
            payload_off: 0,
            payload_len: len as u32,
            payload_missing: 0,
            checksum: crate::decode::Checksum::Good,
        }
    }

    fn shard(limits: Limits) -> Shard<crate::analyze::apps::ShardApps> {
        let apps = crate::analyze::apps::ShardApps::new(
            limits,
            1,
            true,
            std::sync::Arc::default(),
            crate::analyze::ShardOut::default(),
        );
        Shard::new(limits, 1, apps)
    }

    /// An application side that rules every TCP flow out (`OUT`) or none,
    /// keeping the ends it is given and the data bytes delivered.
    #[derive(Default)]
    struct Rec<const OUT: bool> {
        ends: Vec<FlowSummary>,
        delivered: u64,
    }

    impl<const OUT: bool> FlowApps for Rec<OUT> {
        type Tcp = ();
        type Udp = ();
        fn stream(&mut self, _: &FlowInfo, _: &mut (), _: usize, c: Chunk<'_>, _: FrameCtx) {
            if let Chunk::Data(d) = c {
                self.delivered += d.len() as u64;
            }
        }
        fn datagram(&mut self, _: &FlowInfo, _: &mut (), _: usize, _: &[u8], _: FrameCtx) {}
        fn tcp_end(&mut self, f: &FlowSummary, _: (), _: FrameCtx) {
            self.ends.push(*f);
        }
        fn udp_end(&mut self, f: &FlowSummary, _: (), _: FrameCtx) {
            self.ends.push(*f);
        }
        fn anomaly(&mut self, _: Option<FrameCtx>, _: Option<u64>, _: &'static str, _: &str, _: Option<String>) {}
        fn sweep(&mut self, _: i64) -> bool {
            false
        }
        fn release_stale(&mut self, _: &mut (), _: i64) {}
        fn tcp_ruled_out(_: &()) -> bool {
            OUT
        }
        fn tcp_heap_bytes(_: &()) -> usize {
            0
        }
        fn udp_heap_bytes(_: &()) -> usize {
            0
        }
        fn finish(&mut self) {}
    }

    /// Issue 15: a ruled-out flow's plain segments take `packet_with`'s
    /// short path (`ranges_only_segment`); its row's figures are those of
    /// the same packets through the general path: a hole the other side
    /// acknowledges past (a gap), a retransmission, an old copy, data and
    /// ACKs both ways, an out-of-window ACK, a tail acknowledged but never
    /// captured (a gap at the end).
    #[test]
    fn ruled_out_flows_count_what_followed_flows_count() {
        use tcp_flags::{ACK, SYN};
        fn run<const OUT: bool>() -> (Vec<FlowSummary>, u64, usize) {
            let limits = Limits::default();
            let mut s = Shard::new(limits, 1, Rec::<OUT>::default());
            let (c, sv) = ([10, 0, 0, 1], [10, 0, 0, 2]);
            let data = [7u8; 1000];
            // (from client, seq, ack, flags, payload length)
            let script: &[(bool, u32, u32, u8, usize)] = &[
                (true, 100, 0, SYN, 0),
                (false, 500, 101, SYN | ACK, 0),
                (true, 101, 501, ACK, 0),
                (true, 101, 501, ACK, 300),
                (false, 501, 401, ACK, 200),
                // 401..501 never captured; the server acknowledges past it.
                (true, 501, 701, ACK, 400),
                (false, 701, 901, ACK, 0),
                // A retransmission of delivered bytes, and one half old.
                (true, 501, 701, ACK, 400),
                (true, 851, 701, ACK, 100),
                (false, 701, 951, ACK, 50),
                // An ACK far beyond the window; then the server acknowledges
                // 100 bytes the capture never shows (a gap once the flow
                // ends without a FIN).
                (true, 951, 2_000_000_000, ACK, 0),
                (false, 751, 1051, ACK, 0),
                (true, 951, 751, ACK, 0),
            ];
            for (i, &(from_c, seq, ack, flags, len)) in script.iter().enumerate() {
                let (a, ap, b, bp) = if from_c { (c, 40000, sv, 80) } else { (sv, 80, c, 40000) };
                let p = packet(a, ap, b, bp, Transport::Tcp { seq, ack, flags }, len);
                let ctx = FrameCtx {
                    ts: 1_000 + i as i64,
                    frame: i as u64 + 1,
                    capture: 0,
                };
                let note = PacketNote {
                    clock: ctx.ts,
                    ..PacketNote::default()
                };
                s.packet(ctx, note, &p, &data[..len]);
            }
            let mem = s.mem_bytes();
            s.finish(1_000_000_000_000, 1_000_000_000_000);
            (std::mem::take(&mut s.apps.ends), s.apps.delivered, mem)
        }
        let (out, out_delivered, out_mem) = run::<true>();
        let (seen, seen_delivered, seen_mem) = run::<false>();
        assert_eq!((out.len(), seen.len()), (1, 1));
        let (o, f) = (&out[0], &seen[0]);
        assert_eq!(o.n_packets, [8, 5]);
        assert_eq!(o.payload, [1200, 250]);
        assert_eq!((o.gap_bytes, o.retrans_bytes), (200, 450));
        assert_eq!(o.end_reason, "idle");
        assert_eq!(
            (o.n_packets, o.payload, o.gap_bytes, o.retrans_bytes, o.end_reason),
            (f.n_packets, f.payload, f.gap_bytes, f.retrans_bytes, f.end_reason)
        );
        // Only the followed flow's bytes are delivered, and only it keeps
        // a compare tail (its account is the larger).
        assert_eq!((out_delivered, seen_delivered), (0, 1000));
        assert!(out_mem < seen_mem, "{out_mem} vs {seen_mem}");
    }

    /// Issue 15: an idle or half-open flow is accounted at most 1 KiB with
    /// its reassembly state, the account follows the flows in and out, and
    /// `make_room` evicts the least recently active whatever shard they are
    /// in.
    #[test]
    fn flows_are_accounted_and_evicted_oldest_first_across_shards() {
        let limits = Limits::default();
        let mut s = shard(limits);
        let tcp = |seq, ack, flags| Transport::Tcp { seq, ack, flags };
        let (c, srv) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let ctx = |frame: u64| FrameCtx {
            ts: 1_000_000 + frame as i64,
            frame,
            capture: 0,
        };
        let note = |frame: u64| PacketNote {
            clock: 1_000_000 + frame as i64,
            ..PacketNote::default()
        };
        // Half-open: a SYN and 67 of the 68 handshake bytes.
        let mut hs = b"\x13BitTorrent protocol".to_vec();
        hs.extend([0u8; 8]);
        hs.extend([0x42; 20]);
        hs.extend(b"-XX0000-aaaaaaaaaaa");
        s.packet(ctx(1), note(1), &packet(c, 4000, srv, 6881, tcp(100, 0, 0x02), 0), &[]);
        s.packet(
            ctx(2),
            note(2),
            &packet(c, 4000, srv, 6881, tcp(101, 0, 0x18), hs.len()),
            &hs,
        );
        let half_open = s.mem_bytes();
        // Idle: a three-way handshake and nothing else.
        s.packet(ctx(3), note(3), &packet(c, 4001, srv, 6881, tcp(500, 0, 0x02), 0), &[]);
        s.packet(
            ctx(4),
            note(4),
            &packet(srv, 6881, c, 4001, tcp(900, 501, 0x12), 0),
            &[],
        );
        s.packet(
            ctx(5),
            note(5),
            &packet(c, 4001, srv, 6881, tcp(501, 901, 0x10), 0),
            &[],
        );
        let idle = s.mem_bytes() - half_open;
        // A UDP datagram that is none of ours.
        s.packet(ctx(6), note(6), &packet(c, 5000, srv, 53, Transport::Udp, 12), &[7; 12]);
        let udp = s.mem_bytes() - half_open - idle;
        assert!((400..=1024).contains(&half_open), "{half_open}");
        assert!((300..=1024).contains(&idle), "{idle}");
        assert!((150..=1024).contains(&udp), "{udp}");
        assert!(half_open > idle, "{half_open} {idle}");
        // A second shard with one flow more recent than all of these: a
        // budget that holds one flow evicts the three oldest of the first
        // shard, the newest stays, wherever it is (eviction goes down to
        // 7/8 of the budget: the budget is the newest flow and a seventh).
        let mut t = shard(limits);
        t.packet(ctx(7), note(7), &packet(c, 4002, srv, 6881, tcp(1, 0, 0x02), 0), &[]);
        let newest = t.mem_bytes();
        let mut shards = vec![s, t];
        for s in &mut shards {
            s.limits.max_memory = newest + newest / 7 + 16;
        }
        let room = Shard::make_room(&mut shards, &[0, 0], ctx(8));
        assert_eq!(room.mem_before, half_open + idle + udp + newest);
        assert_eq!(room.n_evicted, 3);
        assert_eq!(shards[0].n_flows(), 0);
        assert_eq!(shards[0].mem_bytes(), 0);
        assert_eq!(shards[1].n_flows(), 1);
        assert_eq!(shards[0].stats.n_flows_evicted, 3);
        // Under the budget: nothing more.
        let room = Shard::make_room(&mut shards, &[0, 0], ctx(9));
        assert_eq!(room.n_evicted, 0);
        assert_eq!(shards[1].mem_bytes(), newest);
    }

    /// A sweep ends a flow exactly when its clock passes the flow's idle
    /// timeout after its last packet, or the close linger after its close
    /// (the edge itself keeps it), whichever comes first: a closed TCP
    /// flow ends on its linger before an older UDP flow's idle timeout.
    #[test]
    fn sweeps_end_flows_exactly_past_their_deadline() {
        let limits = Limits {
            sweep_interval_us: 0,
            ..Limits::default()
        };
        let (udp_idle, tcp_idle, linger) = (limits.udp_idle_us, limits.tcp_idle_us, limits.tcp_closed_linger_us);
        let mut s = shard(limits);
        let tcp = |seq, ack, flags| Transport::Tcp { seq, ack, flags };
        let (c, srv) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let t0 = 1_000_000_000i64;
        let at = |clock: i64| {
            (
                FrameCtx {
                    ts: clock,
                    frame: (clock - t0 + 1) as u64,
                    capture: 0,
                },
                PacketNote {
                    clock,
                    ..PacketNote::default()
                },
            )
        };
        // A UDP flow at t0, a TCP flow at t0 + 5 s that closes (FIN both
        // ways) at t0 + 20 s.
        let (x, n) = at(t0);
        s.packet(x, n, &packet(c, 5000, srv, 53, Transport::Udp, 4), &[1; 4]);
        let mut clk = t0 + 5_000_000;
        for (src, sp, dst, dp, seq, ack, fl) in [
            (c, 4000, srv, 80, 100, 0, 0x02),
            (srv, 80, c, 4000, 900, 101, 0x12),
            (c, 4000, srv, 80, 101, 901, 0x10),
        ] {
            let (x, n) = at(clk);
            s.packet(x, n, &packet(src, sp, dst, dp, tcp(seq, ack, fl), 0), &[]);
            clk += 1;
        }
        s.sweep(clk, clk);
        assert_eq!(s.n_flows(), 2);
        let close = t0 + 20_000_000;
        let (x, n) = at(close);
        s.packet(x, n, &packet(c, 4000, srv, 80, tcp(101, 901, 0x11), 0), &[]);
        let (x, n) = at(close);
        s.packet(x, n, &packet(srv, 80, c, 4000, tcp(901, 102, 0x11), 0), &[]);
        // The close's linger passes first (30 s < 3 min): at its edge the
        // TCP flow stays, one microsecond later it ends.
        assert!(linger + 20_000_000 < udp_idle && udp_idle < tcp_idle);
        s.sweep(close + linger, close + linger);
        assert_eq!(s.n_flows(), 2);
        s.sweep(close + linger + 1, close + linger + 1);
        assert_eq!(s.n_flows(), 1);
        // Then the UDP flow's idle timeout, to the microsecond.
        s.sweep(t0 + udp_idle, t0 + udp_idle);
        assert_eq!(s.n_flows(), 1);
        s.sweep(t0 + udp_idle + 1, t0 + udp_idle + 1);
        assert_eq!(s.n_flows(), 0);
        // A flow opened after the table emptied ends the same way.
        let late = t0 + udp_idle + 10;
        let (x, n) = at(late);
        s.packet(x, n, &packet(c, 5001, srv, 53, Transport::Udp, 4), &[1; 4]);
        s.sweep(late + udp_idle, late + udp_idle);
        assert_eq!(s.n_flows(), 1);
        s.sweep(late + udp_idle + 1, late + udp_idle + 1);
        assert_eq!(s.n_flows(), 0);
    }
}
