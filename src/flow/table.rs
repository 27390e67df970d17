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
use super::Chunk;
use crate::analyze::dht::DhtShard;
use crate::analyze::session::{PeerSession, SessionInit, ORIG, RESP};
use crate::analyze::tracker::{looks_like_tracker_request, HttpTracker, UdpTrackers};
use crate::analyze::{FrameCtx, ShardOut};
use crate::config::Limits;
use crate::decode::{tcp_flags, FlowKey, Packet, Proto, Transport};
use crate::proto::peer_wire::{TorrentShape, HANDSHAKE_LEN, HANDSHAKE_PREFIX};
use crate::sink::{ConnectionRow, FlowRow, Ts};

/// What a TCP flow carries.
#[derive(Debug)]
enum TcpApp {
    /// No payload yet.
    Undecided,
    /// The first bytes of a BitTorrent handshake from `side`, fewer than its
    /// 68: kept (no session yet) until the handshake is whole or anything
    /// else arrives, so that a connection that never completes its
    /// handshake (a SYN flood with a partial one) costs no session and
    /// writes no `connections` row (its `flows` row has app peer_wire).
    Handshake {
        side: u8,
        bytes: Vec<u8>,
    },
    PeerWire(Box<PeerSession>),
    /// MSE/PE key exchange (its shape): counted; decoded from the
    /// plaintext handshake on when the exchange selected plaintext.
    Mse(Box<MseScan>),
    /// HTTP that opened with a tracker request (or with a response: picked
    /// up mid-connection): announces and scrapes.
    TrackerHttp(Box<HttpTracker>),
    /// Something else: `app` value.
    Other(&'static str),
}

#[derive(Debug)]
struct TcpState {
    reasm: [StreamReassembler; 2],
    app: TcpApp,
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
    /// `last_ts` on the flow clock (see [`PacketNote::clock`]): what idle
    /// expiry and the close linger are measured on.
    last_clock: i64,
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
    app: FlowApp,
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
    pub n_peer_connections: u64,
}

/// Shared, read-only context for all shards.
#[derive(Debug, Default)]
pub struct ShardContext {
    /// Torrent shapes known from --torrents, by v1 info hash.
    pub shapes: HashMap<[u8; 20], TorrentShape>,
}

/// The flow table's hasher: foldhash with a per-process random seed. Keys
/// are chosen by whoever sends the packets, so the seed must not be known
/// in advance (a fixed-key hash would let crafted 5-tuples collide); a
/// passive analyzer gives an attacker no view of the hashes to learn it
/// from. SipHash (std's default) resists more but cost ~5 % of a run.
type FlowHasher = foldhash::fast::RandomState;

/// One shard.
pub struct Shard {
    /// Boxed: a table sized for a flood holds mostly empty buckets, which
    /// then cost a pointer each instead of a whole `Flow`.
    flows: HashMap<FlowKey, Box<Flow>, FlowHasher>,
    /// Flows this shard may hold during the current batch: its own plus its
    /// share of the whole table's free room (see [`Shard::share_room`]).
    cap: usize,
    limits: Limits,
    messages: bool,
    last_sweep: i64,
    ctx: Arc<ShardContext>,
    /// Outstanding DHT queries of this shard's UDP flows.
    dht: DhtShard,
    /// UDP tracker transactions of this shard's flows.
    udp_trackers: UdpTrackers,
    /// The held SYN of a connection being replaced (see `PendingSyn`).
    reused_syn: Option<Box<PendingSyn>>,
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
    /// A SYN, answered by a SYN-ACK, started a new connection on the
    /// 4-tuple before this one was seen to close.
    Reused,
}

impl EndReason {
    fn name(self) -> &'static str {
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

/// Shannon entropy (bits per byte) of a sample.
fn entropy(d: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in d {
        counts[usize::from(b)] += 1;
    }
    let n = d.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// The MSE/PE key exchange opens with a 96-byte Diffie-Hellman public key
/// followed by 0–512 bytes of random padding: a first payload of 96–608
/// bytes that looks random. Random 96-byte samples have an empirical entropy
/// near 6.0 bits; text and binary protocol headers stay far below 5.
fn looks_like_mse(first: &[u8]) -> bool {
    (96..=608).contains(&first.len()) && entropy(first) > 5.5
}

/// A TLS record header (handshake, application data, alert, change cipher
/// spec) on a flow picked up mid-stream: not worth hunting for peer wire.
fn looks_like_tls(d: &[u8]) -> bool {
    matches!(d, [0x14..=0x17, 0x03, 0x00..=0x04, ..])
}

fn looks_like_http(d: &[u8]) -> bool {
    const STARTS: [&[u8]; 6] = [b"GET ", b"POST ", b"HEAD ", b"HTTP/1.", b"PUT ", b"OPTIONS "];
    STARTS.iter().any(|s| d.starts_with(s))
}

impl Shard {
    pub fn new(limits: Limits, n_shards: usize, messages: bool, ctx: Arc<ShardContext>, out: ShardOut) -> Self {
        Shard {
            flows: HashMap::default(),
            cap: limits.max_flows.max(1),
            limits,
            messages,
            last_sweep: i64::MIN,
            ctx,
            dht: DhtShard::new(&limits, n_shards),
            udp_trackers: UdpTrackers::new(limits.tracker_udp, limits.tracker_udp_pending),
            reused_syn: None,
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

    /// Before a batch: shares the whole table's free room (`max_flows` less
    /// the flows of all shards) among the shards in proportion to the
    /// packets the batch brings each (`packets[i]` for shard `i`). A packet
    /// opens at most one flow, so while the free room is at least the
    /// batch's packets every shard can take all its new flows: no shard
    /// evicts while the table has room, wherever the hash put the flows,
    /// and the table never holds more than `max_flows`. Deterministic: it
    /// depends on the counts between batches and on the batch only.
    pub fn share_room(shards: &mut [Shard], packets: &[usize]) {
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
        let limits = self.limits;
        let messages = self.messages;
        let shapes = &self.ctx.shapes;
        let Some(f) = self.flows.get_mut(&key) else { return };
        let side = if from_a == f.orig_is_a { ORIG } else { RESP };
        f.last_ts = f.last_ts.max(ctx.ts);
        f.last_clock = f.last_clock.max(clock);
        f.n_bad_checksums = f.n_bad_checksums.saturating_add(u32::from(note.bad_checksum));
        f.n_packets[side] += 1;
        f.payload[side] += u64::from(p.payload_len);
        match (&mut f.app, p.transport) {
            (FlowApp::Tcp(t), Transport::Tcp { seq, ack: ackno, flags }) => {
                let info = FlowInfo {
                    conn_id: f.conn_id,
                    capture: f.capture,
                    ends: f.ends,
                    first_ts: f.first_ts,
                };
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
                let midstream = f.midstream;
                let before = [reasm[0].stream_offset(), reasm[1].stream_offset()];
                if !payload.is_empty() {
                    if !reasm[side].is_started() {
                        reasm[side].start_at(seq);
                    }
                    let s = if syn { seq.wrapping_add(1) } else { seq };
                    reasm[side].segment(s, payload, &mut |c| {
                        app_feed(
                            app,
                            &info,
                            midstream,
                            side,
                            c,
                            ctx,
                            &limits,
                            messages,
                            shapes,
                            &mut self.out,
                        )
                    });
                }
                if ack && flags & tcp_flags::RST == 0 && reasm[1 - side].is_started() {
                    reasm[1 - side].acked(ackno, &mut |c| {
                        app_feed(
                            app,
                            &info,
                            midstream,
                            1 - side,
                            c,
                            ctx,
                            &limits,
                            messages,
                            shapes,
                            &mut self.out,
                        )
                    });
                }
                if flags & tcp_flags::FIN != 0 {
                    // The FIN takes the sequence number after the payload.
                    let base = if syn { seq.wrapping_add(1) } else { seq };
                    let fin_seq = base.wrapping_add(payload.len() as u32 + p.payload_missing);
                    if reasm[side].is_started() {
                        reasm[side].fin(fin_seq, &mut |c| {
                            app_feed(
                                app,
                                &info,
                                midstream,
                                side,
                                c,
                                ctx,
                                &limits,
                                messages,
                                shapes,
                                &mut self.out,
                            )
                        });
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
                    let in_window = reasm[side].next_seq().is_none_or(|next| {
                        let rel = rst_seq.wrapping_sub(next) as i32;
                        (-i64::from(limits.tcp_rst_window)..=i64::from(limits.tcp_rst_window)).contains(&i64::from(rel))
                    });
                    if in_window {
                        f.rst = true;
                        f.rst_side = side as u8;
                        f.closed_at.get_or_insert(clock);
                    } else {
                        self.out.anomaly(
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
                    self.out.anomaly(
                        Some(ctx),
                        Some(f.conn_id),
                        "tcp",
                        "tcp_rst_not_honoured",
                        Some("data continued after a RST".to_string()),
                    );
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
                    &limits,
                    messages,
                    &mut self.dht,
                    &mut self.udp_trackers,
                    &mut self.out,
                );
            }
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
        self.out.anomaly(
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

    fn new_flow(&self, ctx: FrameCtx, clock: i64, p: &Packet, is_tcp: bool, syn: bool, ack: bool) -> Flow {
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
                app: TcpApp::Undecided,
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
        self.out.anomaly(
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
        self.udp_trackers.sweep(now, &mut self.out);
        // Connections holding swarm events for too long release them, so the
        // swarm state's frame order is not held up (see Limits::max_hold_us).
        if self.out.oldest_held().is_some() {
            for f in self.flows.values_mut() {
                if let FlowApp::Tcp(t) = &mut f.app {
                    if let TcpApp::PeerWire(s) = &mut t.app {
                        s.release_stale(now, &mut self.out);
                    }
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
        let app_name = match &mut f.app {
            FlowApp::Tcp(t) => {
                let t = &mut **t;
                let (reasm, app) = (&mut t.reasm, &mut t.app);
                for side in [ORIG, RESP] {
                    reasm[side].flush(&mut |c| {
                        app_feed(
                            app,
                            &info,
                            f.midstream,
                            side,
                            c,
                            ctx,
                            &self.limits,
                            self.messages,
                            &self.ctx.shapes,
                            &mut self.out,
                        )
                    });
                    gap_bytes += reasm[side].stats().gap_bytes;
                    retrans_bytes += reasm[side].stats().retrans_bytes;
                    let conflicts = reasm[side].stats().overlap_conflict_bytes;
                    if conflicts > 0 {
                        self.out.anomaly(
                            Some(ctx),
                            Some(f.conn_id),
                            "tcp",
                            "conflicting_overlap",
                            Some(format!("{conflicts} bytes differ from the first copy")),
                        );
                    }
                }
                match std::mem::replace(app, TcpApp::Other("other")) {
                    TcpApp::PeerWire(mut s) => {
                        let mut row = s.finish(ctx, &mut self.out);
                        row.last_ts = Ts(f.last_ts);
                        row.gap_bytes = gap_bytes;
                        self.out.rows.connections.push(row);
                        self.stats.n_peer_connections += 1;
                        "peer_wire"
                    }
                    TcpApp::Mse(_) => {
                        let delivered = [reasm[ORIG].stats().bytes_delivered, reasm[RESP].stats().bytes_delivered];
                        self.out.rows.connections.push(self.mse_row(&f, gap_bytes, delivered));
                        "mse"
                    }
                    TcpApp::TrackerHttp(mut t) => {
                        // A close-delimited answer completes with the
                        // flow's last packet, not when the flow is swept.
                        let end = FrameCtx { ts: f.last_ts, ..ctx };
                        t.finish(end, &mut self.out);
                        if t.is_tracker() {
                            "tracker_http"
                        } else {
                            "http"
                        }
                    }
                    TcpApp::Undecided => "other",
                    // A handshake begun and never completed: the flow says
                    // so (app peer_wire, its payload bytes); there was no
                    // connection to report (a SYN flood with partial
                    // handshakes leaves no sessions and no rows behind).
                    TcpApp::Handshake { .. } => "peer_wire",
                    TcpApp::Other(a) => a,
                }
            }
            FlowApp::Udp(u) => u.finish(ctx, &info, &self.limits, self.messages, &mut self.out),
        };
        let _ = key;
        let row = self.flow_row(&f, app_name, gap_bytes, retrans_bytes, reason.name());
        self.out.rows.flows.push(row);
    }

    fn flow_row(
        &self,
        f: &Flow,
        app: &'static str,
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
            app,
            midstream: f.midstream,
            gap_bytes,
            retrans_bytes,
            end_reason,
            n_bad_checksums: u64::from(f.n_bad_checksums),
        }
    }

    /// Live capture: `flows` rows (end_reason `open`) and `connections`
    /// rows of every flow still open, as of now. Nothing is flushed or
    /// closed: bytes waiting in reassembly, and a message still being
    /// framed, count once they are delivered (in a later snapshot or the
    /// final row).
    pub fn snapshot(&self, rows: &mut crate::sink::RowBatch) {
        let mut flows: Vec<&Flow> = self.flows.values().map(|f| &**f).collect();
        flows.sort_unstable_by_key(|f| f.conn_id);
        for f in flows {
            let (app, gap_bytes, retrans_bytes) = match &f.app {
                FlowApp::Tcp(t) => {
                    let gap: u64 = t.reasm.iter().map(|r| r.stats().gap_bytes).sum();
                    let retrans: u64 = t.reasm.iter().map(|r| r.stats().retrans_bytes).sum();
                    let app = match &t.app {
                        TcpApp::PeerWire(s) => {
                            // A mid-stream session still hunting for framing
                            // may yet give up (then no connection row is
                            // ever written): no snapshot row before it frames.
                            if s.is_peer_wire() {
                                let mut row = s.snapshot_row(&self.out);
                                row.last_ts = Ts(f.last_ts);
                                row.gap_bytes = gap;
                                rows.connections.push(row);
                            }
                            "peer_wire"
                        }
                        TcpApp::Mse(_) => {
                            let delivered = [
                                t.reasm[ORIG].stats().bytes_delivered,
                                t.reasm[RESP].stats().bytes_delivered,
                            ];
                            rows.connections.push(self.mse_row(f, gap, delivered));
                            "mse"
                        }
                        TcpApp::TrackerHttp(h) if h.is_tracker() => "tracker_http",
                        TcpApp::TrackerHttp(_) => "http",
                        TcpApp::Undecided => "other",
                        // Not framed yet: no connection row before it is.
                        TcpApp::Handshake { .. } => "peer_wire",
                        TcpApp::Other(a) => a,
                    };
                    (app, gap, retrans)
                }
                FlowApp::Udp(u) => {
                    u.snapshot(&self.out, &mut rows.connections);
                    (u.app_name(), 0, 0)
                }
            };
            rows.flows.push(self.flow_row(f, app, gap_bytes, retrans_bytes, "open"));
        }
    }

    /// `delivered`: stream bytes of each side, reassembled (retransmitted
    /// and injected copies not counted twice).
    fn mse_row(&self, f: &Flow, gap_bytes: u64, delivered: [u64; 2]) -> ConnectionRow {
        ConnectionRow {
            conn_id: f.conn_id,
            flow_id: f.conn_id,
            capture: self.out.capture_name(f.capture),
            transport: "tcp",
            orig_ip: f.ends[ORIG].ip().to_string(),
            orig_port: u32::from(f.ends[ORIG].port()),
            resp_ip: f.ends[RESP].ip().to_string(),
            resp_port: u32::from(f.ends[RESP].port()),
            first_ts: Ts(f.first_ts),
            last_ts: Ts(f.last_ts),
            encrypted: true,
            mse_handshake: true,
            attribution_confidence: "none",
            midstream: f.midstream,
            payload_bytes_orig: delivered[ORIG],
            payload_bytes_resp: delivered[RESP],
            gap_bytes,
            ..Default::default()
        }
    }
}

/// Bytes of each direction searched for a plaintext handshake after an MSE
/// key exchange: the exchange is at most 608 bytes (96-byte key + 512 of
/// padding) each way, then the responder's VC, crypto_select and up to 512
/// bytes of padD (BEP 8 / MSE spec); 2 KiB covers it with room to spare.
const MSE_SCAN_BYTES: usize = 2048;

/// The first bytes of both directions of an MSE stream, kept until a
/// plaintext handshake shows up or the scan window is passed.
#[derive(Debug, Default)]
struct MseScan {
    head: [Vec<u8>; 2],
    /// Bytes after the window (or lost in gaps) not kept.
    skipped: [u64; 2],
    done: bool,
}

impl MseScan {
    /// Takes a chunk; returns the side and offset of a plaintext handshake
    /// when one is found.
    fn take(&mut self, side: usize, chunk: Chunk<'_>) -> Option<(usize, usize)> {
        if self.done {
            return None;
        }
        let side = side.min(1);
        match chunk {
            Chunk::Data(d) if self.head[side].len() < MSE_SCAN_BYTES && self.skipped[side] == 0 => {
                self.head[side].extend_from_slice(d);
            }
            Chunk::Data(d) => self.skipped[side] += d.len() as u64,
            Chunk::Gap(n) => self.skipped[side] += n,
        }
        for s in [side, 1 - side] {
            if let Some(pos) = memchr::memmem::find(&self.head[s], HANDSHAKE_PREFIX) {
                return Some((s, pos));
            }
        }
        let full = |s: usize| self.head[s].len() >= MSE_SCAN_BYTES || self.skipped[s] > 0;
        if full(0) && full(1) {
            // Encrypted for good: stop looking, free the buffers.
            self.done = true;
            self.head = [Vec::new(), Vec::new()];
        }
        None
    }
}

/// A proper prefix of a BitTorrent handshake: the protocol string as far
/// as it goes, shorter than the 68-byte handshake.
fn is_handshake_start(d: &[u8]) -> bool {
    !d.is_empty() && d.len() < HANDSHAKE_LEN && continues_handshake(&[], d)
}

/// Whether `d` after the `kept` bytes still follows the protocol string.
fn continues_handshake(kept: &[u8], d: &[u8]) -> bool {
    let n = kept.len();
    d.iter()
        .enumerate()
        .all(|(i, b)| HANDSHAKE_PREFIX.get(n + i).is_none_or(|p| p == b))
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

/// A peer-wire session for a TCP flow.
fn tcp_session(info: &FlowInfo, midstream: bool, limits: &Limits, messages: bool) -> Box<PeerSession> {
    Box::new(PeerSession::new(
        SessionInit {
            conn_id: info.conn_id,
            flow_id: info.conn_id,
            capture: info.capture,
            transport: "tcp",
            orig: info.ends[ORIG],
            resp: info.ends[RESP],
            first_ts: info.first_ts,
            midstream,
        },
        limits,
        messages,
    ))
}

/// Hands a reassembled chunk to the flow's application, deciding what the
/// application is on the first payload.
#[allow(clippy::too_many_arguments)]
fn app_feed(
    app: &mut TcpApp,
    info: &FlowInfo,
    midstream: bool,
    side: usize,
    chunk: Chunk<'_>,
    ctx: FrameCtx,
    limits: &Limits,
    messages: bool,
    shapes: &HashMap<[u8; 20], TorrentShape>,
    out: &mut ShardOut,
) {
    if let TcpApp::Undecided = app {
        if let Chunk::Data(d) = chunk {
            if !midstream && is_handshake_start(d) {
                *app = TcpApp::Handshake {
                    side: side as u8,
                    bytes: d.to_vec(),
                };
                return;
            }
        }
    }
    if let TcpApp::Handshake { side: from, bytes } = app {
        let from = usize::from(*from);
        let extends = matches!(chunk, Chunk::Data(d)
            if from == side && bytes.len() + d.len() < HANDSHAKE_LEN && continues_handshake(bytes, d));
        if extends {
            if let Chunk::Data(d) = chunk {
                bytes.extend_from_slice(d);
            }
            return;
        }
        // Whole, broken, or something else came: the session takes over,
        // the kept bytes first.
        let kept = std::mem::take(bytes);
        *app = TcpApp::PeerWire(tcp_session(info, midstream, limits, messages));
        app_feed(
            app,
            info,
            midstream,
            from,
            Chunk::Data(&kept),
            ctx,
            limits,
            messages,
            shapes,
            out,
        );
    }
    if let TcpApp::Undecided = app {
        let Chunk::Data(d) = chunk else { return };
        let n = d.len().min(HANDSHAKE_PREFIX.len());
        *app = if d.get(..n) == HANDSHAKE_PREFIX.get(..n) && !d.is_empty()
            || midstream && !looks_like_tls(d) && !looks_like_http(d)
        {
            TcpApp::PeerWire(tcp_session(info, midstream, limits, messages))
        } else if looks_like_tracker_request(d) {
            TcpApp::TrackerHttp(Box::new(HttpTracker::new(info, side, true, limits.tracker_http)))
        } else if crate::proto::tracker_http::looks_like_http_response(d) {
            // The request was not captured (mid-connection): the answer may
            // still be a tracker's; confirmed by its body.
            TcpApp::TrackerHttp(Box::new(HttpTracker::new(info, 1 - side, false, limits.tracker_http)))
        } else if looks_like_http(d) {
            TcpApp::Other("http")
        } else if side == ORIG && looks_like_mse(d) {
            TcpApp::Mse(Box::default())
        } else {
            TcpApp::Other("other")
        };
    }
    if let TcpApp::TrackerHttp(t) = app {
        t.feed(side, chunk, ctx, out);
        return;
    }
    if let TcpApp::Mse(scan) = app {
        if let Some((found, pos)) = scan.take(side, chunk) {
            // The exchange selected plaintext: decode from the handshake on.
            // The other direction's handshake went inside the encrypted
            // initial payload, so that side is hunted for boundaries.
            let mut s = tcp_session(info, true, limits, messages);
            s.set_mse_handshake();
            let other = 1 - found;
            let heads = std::mem::take(&mut scan.head);
            if let Some(h) = heads[found].get(pos..) {
                s.feed(found, Chunk::Data(h), ctx, out);
            }
            if scan.skipped[found] > 0 {
                s.feed(found, Chunk::Gap(scan.skipped[found]), ctx, out);
            }
            if !heads[other].is_empty() {
                s.feed(other, Chunk::Data(&heads[other]), ctx, out);
            }
            if scan.skipped[other] > 0 {
                s.feed(other, Chunk::Gap(scan.skipped[other]), ctx, out);
            }
            *app = TcpApp::PeerWire(s);
        }
        return;
    }
    if let TcpApp::PeerWire(s) = app {
        let had_hash = s.info_hash().is_some();
        s.feed(side, chunk, ctx, out);
        if !had_hash {
            if let Some(h) = s.info_hash() {
                if let Some(shape) = shapes.get(&h) {
                    s.set_shape(*shape);
                }
            }
        }
        if s.gave_up() {
            *app = TcpApp::Other("other");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a flow costs before any payload: the table's bucket, the flow,
    /// and for TCP its two reassemblers. A SYN flood fills the table with
    /// these, so they stay small (issue 16: ≤ 1 KiB per half-open flow).
    #[test]
    fn per_flow_state_is_small() {
        let bucket = std::mem::size_of::<(FlowKey, Box<Flow>)>();
        let flow = std::mem::size_of::<Flow>();
        let tcp = std::mem::size_of::<TcpState>();
        let udp = std::mem::size_of::<UdpApp>();
        // Measured: 56, 184, 320, 48. With the payload of a partial
        // handshake (67 bytes kept for it and 67 for the reassembler's
        // compare tail) and the map's empty buckets that is ~0.8 KiB.
        assert!(bucket <= 56, "{bucket}");
        assert!(flow <= 192, "{flow}");
        assert!(tcp <= 320, "{tcp}");
        assert!(udp <= 64, "{udp}");
    }
}
