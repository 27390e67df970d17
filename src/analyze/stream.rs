//! The application side of one byte stream: a TCP flow, or a uTP connection
//! inside a UDP flow. The first bytes go to the dissector registry
//! (`dissect::probe_stream`), whose verdict picks the parser: a peer-wire
//! session, an HTTP tracker session, an MSE scan, or nothing. Both
//! transports share this, so MSE over uTP is reported like MSE over TCP.
//!
//! A stream picked up mid-connection is hunted for peer-wire framing, but
//! what the session writes (messages, swarm events, anomalies) is staged
//! apart and reaches the output only once both directions framed a run of
//! [`MIDSTREAM_MIN_MSGS`] messages: hunting finds a "plausible" header in
//! most binary protocols (SMB's zero bytes frame as keep-alives and
//! chokes), a run both ways it does not. Nothing confirmed means no
//! connection row.

use std::net::SocketAddr;

use super::session::{PeerSession, SessionInit, ORIG, RESP};
use super::tracker::HttpTracker;
use super::{FrameCtx, ShardOut};
use crate::config::Limits;
use crate::dissect::{self, Confidence, Identified, StreamFacts, StreamProto, Verdict};
use crate::flow::Chunk;
use crate::flow::FlowInfo;
use crate::proto::peer_wire::{TorrentShape, HANDSHAKE_LEN, HANDSHAKE_PREFIX};
use crate::sink::{ConnTransport, ConnectionRow, Ip, Ts};

/// Known (non keep-alive) messages each direction of a mid-stream stream
/// must frame before it is believed to be peer wire.
pub const MIDSTREAM_MIN_MSGS: u64 = 3;

/// Bytes of each direction searched for a plaintext handshake after an MSE
/// key exchange: the exchange is at most 608 bytes (96-byte key + 512 of
/// padding) each way, then the responder's VC, crypto_select and up to 512
/// bytes of padD (BEP 8 / MSE spec); 2 KiB covers it with room to spare.
const MSE_SCAN_BYTES: usize = 2048;

/// Who the stream is and what it may do: fixed when it opens.
#[derive(Debug, Clone, Copy)]
pub struct StreamInit {
    pub conn_id: u64,
    pub flow_id: u64,
    pub capture: u32,
    /// `connections.transport`.
    pub transport: ConnTransport,
    /// [originator, responder]
    pub ends: [SocketAddr; 2],
    pub first_ts: i64,
    pub midstream: bool,
}

/// Settings shared by every stream of a shard.
#[derive(Debug, Clone, Copy)]
pub struct StreamEnv<'a> {
    pub limits: &'a Limits,
    pub messages: bool,
    /// Write rows of weak identifications too (`--keep-weak`).
    pub keep_weak: bool,
    pub shapes: &'a std::collections::HashMap<[u8; 20], TorrentShape>,
}

/// What a stream carries, once its first bytes were probed.
#[derive(Debug, Default)]
pub enum StreamApp {
    /// No payload yet.
    #[default]
    Undecided,
    /// The first bytes of a BitTorrent handshake from `side`, fewer than its
    /// 68: kept (no session yet) until the handshake is whole or anything
    /// else arrives, so that a connection that never completes its
    /// handshake (a SYN flood with a partial one, issue 16) costs 0.1 KiB
    /// instead of a session.
    Handshake {
        side: u8,
        bytes: Vec<u8>,
    },
    PeerWire(Box<PeerSession>, Identified),
    /// Mid-stream, hunting for peer-wire framing; output staged.
    Candidate(Box<Candidate>),
    /// MSE/PE key exchange (its shape): decoded from the plaintext
    /// handshake on when the exchange selected plaintext.
    Mse(Box<MseScan>),
    /// HTTP that opened with a tracker request (or with a response: picked
    /// up mid-connection): announces and scrapes.
    TrackerHttp(Box<HttpTracker>),
    /// Not ours (or no longer followed).
    Other(Identified),
}

/// A mid-stream session whose output waits for confirmation.
#[derive(Debug)]
pub struct Candidate {
    session: PeerSession,
    staged: ShardOut,
    /// The hold registered in the real output while staged swarm events
    /// wait, so that the swarm state applies none later than them.
    hold: Option<(u32, u64)>,
    hold_ts: i64,
    fed_bytes: u64,
}

/// Accounted bytes of one row or event a mid-stream candidate stages (the
/// row, its strings and the vector slot): what `StreamApp::heap_bytes`
/// counts for them.
const STAGED_ROW_BYTES: usize = 256;

impl StreamApp {
    /// Heap bytes this stream's state holds beyond the enum itself (the
    /// flow's memory account, `Limits::max_memory`; see
    /// `flow::alloc_bytes`).
    pub fn heap_bytes(&self) -> usize {
        use crate::flow::alloc_bytes;
        use std::mem::size_of;
        match self {
            StreamApp::Undecided | StreamApp::Other(_) => 0,
            StreamApp::Handshake { bytes, .. } => alloc_bytes(bytes.capacity()),
            StreamApp::PeerWire(s, _) => alloc_bytes(size_of::<PeerSession>()) + s.heap_bytes(),
            StreamApp::Candidate(c) => {
                let staged = c.staged.rows.len() + c.staged.events.len() + c.staged.unattributed.len();
                alloc_bytes(size_of::<Candidate>()) + c.session.heap_bytes() + staged * STAGED_ROW_BYTES
            }
            StreamApp::Mse(m) => {
                alloc_bytes(size_of::<MseScan>()) + m.head.iter().map(|h| alloc_bytes(h.capacity())).sum::<usize>()
            }
            StreamApp::TrackerHttp(t) => alloc_bytes(size_of::<HttpTracker>()) + t.buffered_bytes(),
        }
    }
}

/// Whether `d` after the `kept` bytes still follows the protocol string.
fn continues_handshake(kept: &[u8], d: &[u8]) -> bool {
    let n = kept.len();
    !d.is_empty()
        && d.iter()
            .enumerate()
            .all(|(i, b)| HANDSHAKE_PREFIX.get(n + i).is_none_or(|p| p == b))
}

/// The first bytes of both directions of an MSE stream, kept until a
/// plaintext handshake shows up or the scan window is passed.
#[derive(Debug, Default)]
pub struct MseScan {
    head: [Vec<u8>; 2],
    /// Captured bytes after the window, not kept: stream bytes of the
    /// connection all the same (`payload_bytes`).
    unkept: [u64; 2],
    /// Bytes lost in capture gaps while scanning (`gap_bytes`).
    lost: [u64; 2],
    done: bool,
    /// The responder's first flight had MSE's shape too (None: undecided).
    reply: Option<bool>,
    /// Payload bytes fed per direction, and the last chunk's time.
    payload: [u64; 2],
    gap_bytes: u64,
    last_ts: i64,
}

impl MseScan {
    /// Takes a chunk; returns the side and offset of a plaintext handshake
    /// when one is found.
    fn take(&mut self, side: usize, chunk: Chunk<'_>) -> Option<(usize, usize)> {
        let side = side.min(1);
        match chunk {
            Chunk::Data(d) => self.payload[side] += d.len() as u64,
            Chunk::Gap(n) => self.gap_bytes += n,
        }
        if self.done {
            return None;
        }
        match chunk {
            Chunk::Data(d) if self.head[side].len() < MSE_SCAN_BYTES && !self.passed(side) => {
                self.head[side].extend_from_slice(d);
            }
            Chunk::Data(d) => self.unkept[side] += d.len() as u64,
            Chunk::Gap(n) => self.lost[side] += n,
        }
        if self.reply.is_none() && (self.head[RESP].len() >= *dissect::stream::MSE_FLIGHT.start() || self.passed(RESP))
        {
            self.reply = Some(dissect::stream::is_mse_reply(&self.head[RESP]));
        }
        for s in [side, 1 - side] {
            if let Some(pos) = memchr::memmem::find(&self.head[s], HANDSHAKE_PREFIX) {
                return Some((s, pos));
            }
        }
        let full = |s: usize| self.head[s].len() >= MSE_SCAN_BYTES || self.passed(s);
        if full(0) && full(1) {
            // Encrypted for good: stop looking, free the buffers.
            self.done = true;
            self.head = [Vec::new(), Vec::new()];
        }
        None
    }

    /// The scan of `side` stopped keeping bytes: its head is full, or a gap
    /// broke it.
    fn passed(&self, side: usize) -> bool {
        self.unkept[side] > 0 || self.lost[side] > 0
    }

    fn both_ways(&self) -> bool {
        self.reply == Some(true)
    }

    fn identified(&self) -> Identified {
        if self.both_ways() {
            Identified::bt("mse", Confidence::Weak, EV_MSE_BOTH)
        } else {
            Identified::bt("mse", Confidence::Weak, EV_MSE_ONE_WAY)
        }
    }
}

/// `app_evidence` of an MSE exchange seen both ways: the pipeline upgrades
/// it to strong when an endpoint is named as a peer elsewhere.
pub const EV_MSE_BOTH: &str = "MSE key exchange shape both ways";
/// `app_evidence` of an MSE opening from the originator only.
pub const EV_MSE_ONE_WAY: &str = "MSE key exchange shape from the originator only";
/// `app_evidence` of MSE flows upgraded by the pipeline: an end of the flow
/// is a listen endpoint the capture names as a peer (tracker answer, DHT
/// values, PEX, LSD, a plaintext connection).
pub const EV_MSE_NAMED: &str = "MSE key exchange both ways, endpoint named as a peer in the capture";
pub const EV_MSE_ONE_WAY_NAMED: &str =
    "MSE key exchange from the originator to an endpoint named as a peer in the capture";

/// How a stream ended, as the transport saw it.
#[derive(Debug, Clone, Copy)]
pub struct StreamEnd {
    /// The transport's last packet and lost bytes (TCP); `None` keeps what
    /// the stream counted itself (uTP).
    pub last_ts: Option<i64>,
    pub gap_bytes: Option<u64>,
    /// Payload bytes per direction as captured (TCP: retransmissions
    /// included), for rows that count the flow rather than the parse.
    pub payload: Option<[u64; 2]>,
}

impl StreamEnd {
    fn apply(&self, row: &mut ConnectionRow) {
        if let Some(ts) = self.last_ts {
            row.last_ts = Ts(ts);
        }
        if let Some(g) = self.gap_bytes {
            row.gap_bytes = g;
        }
    }
}

fn session(init: &StreamInit, midstream: bool, env: &StreamEnv<'_>) -> PeerSession {
    PeerSession::new(
        SessionInit {
            conn_id: init.conn_id,
            flow_id: init.flow_id,
            capture: init.capture,
            transport: init.transport,
            orig: init.ends[ORIG],
            resp: init.ends[RESP],
            first_ts: init.first_ts,
            midstream,
        },
        env.limits,
        env.messages,
    )
}

fn flow_info(init: &StreamInit) -> FlowInfo {
    FlowInfo {
        conn_id: init.conn_id,
        capture: init.capture,
        ends: init.ends,
        first_ts: init.first_ts,
        midstream: init.midstream,
    }
}

impl ShardOut {
    /// An empty output that stages what a candidate writes: same capture
    /// names and known torrents, and what is left of the piece budget.
    fn staging(&self) -> ShardOut {
        ShardOut {
            capture_names: self.capture_names.clone(),
            known: self.known.clone(),
            piece_budget: super::pieces::PieceBudget {
                used: 0,
                max: self.piece_budget.max.saturating_sub(self.piece_budget.used),
            },
            ..Default::default()
        }
    }

    /// Takes what a confirmed candidate staged.
    fn absorb(&mut self, mut staged: ShardOut) {
        self.rows.append(&mut staged.rows);
        self.events.append(&mut staged.events);
        self.unattributed.append(&mut staged.unattributed);
        self.marks.append(&mut staged.marks);
        self.dht.append(&mut staged.dht);
        self.metadata.append(&mut staged.metadata);
        self.piece_budget.used += staged.piece_budget.used;
        for (k, n) in staged.held_since {
            *self.held_since.entry(k).or_default() += n;
        }
    }
}

impl Candidate {
    fn earliest_staged(&self) -> Option<(u32, u64)> {
        let e = self.staged.events.iter().map(|e| (e.ctx.capture, e.ctx.frame));
        let u = self
            .staged
            .unattributed
            .iter()
            .map(|e| (e.event.ctx.capture, e.event.ctx.frame));
        e.chain(u).min()
    }
}

impl StreamApp {
    /// The flow's identification as of now.
    pub fn identified(&self) -> Identified {
        match self {
            StreamApp::Undecided => Identified::OTHER,
            StreamApp::Handshake { .. } => Identified::other("other", Some("handshake start, nothing framed")),
            StreamApp::PeerWire(_, id) => *id,
            StreamApp::Candidate(c) if c.session.is_peer_wire() => {
                Identified::bt("peer_wire", Confidence::Weak, EV_MID_WEAK)
            }
            StreamApp::Candidate(_) => Identified::other("other", Some("mid-stream, no peer-wire framing")),
            StreamApp::Mse(m) => m.identified(),
            StreamApp::TrackerHttp(t) if t.is_tracker() => Identified::bt(
                "tracker_http",
                Confidence::Certain,
                "HTTP tracker request or tracker document",
            ),
            StreamApp::TrackerHttp(_) => Identified::other("http", Some("http")),
            StreamApp::Other(id) => *id,
        }
    }

    /// Releases swarm events held longer than `max_hold_us` at packet time
    /// `now` (a sweep: the stream sent nothing since that could settle it).
    pub fn release_stale(&mut self, now: i64, max_hold_us: i64, out: &mut ShardOut) {
        match self {
            StreamApp::PeerWire(s, _) => s.release_stale(now, out),
            StreamApp::Candidate(c) => {
                if let Some(k) = c.hold {
                    if now - c.hold_ts > max_hold_us {
                        out.unhold(k);
                        c.hold = None;
                    }
                }
            }
            _ => {}
        }
    }

    /// Hands a reassembled chunk of direction `side` to the stream's
    /// application, deciding what the application is on the first payload.
    pub fn feed(
        &mut self,
        init: &StreamInit,
        side: usize,
        chunk: Chunk<'_>,
        ctx: FrameCtx,
        env: &StreamEnv<'_>,
        out: &mut ShardOut,
    ) {
        if let (StreamApp::Undecided, Chunk::Data(d)) = (&*self, chunk) {
            if !init.midstream && d.len() < HANDSHAKE_LEN && continues_handshake(&[], d) {
                *self = StreamApp::Handshake {
                    side: side as u8,
                    bytes: d.to_vec(),
                };
                return;
            }
        }
        if let StreamApp::Handshake { side: from, bytes } = self {
            let from = usize::from(*from);
            let extends = matches!(chunk, Chunk::Data(d)
                if from == side && bytes.len() + d.len() < HANDSHAKE_LEN && continues_handshake(bytes, d));
            if extends {
                if let Chunk::Data(d) = chunk {
                    bytes.extend_from_slice(d);
                }
                return;
            }
            // Whole, broken, or something else came: the session takes
            // over, the kept bytes first.
            let kept = std::mem::take(bytes);
            *self = StreamApp::PeerWire(
                Box::new(session(init, init.midstream, env)),
                Identified::bt("peer_wire", Confidence::Certain, "plaintext handshake"),
            );
            self.feed(init, from, Chunk::Data(&kept), ctx, env, out);
        }
        if let StreamApp::Undecided = self {
            let Chunk::Data(d) = chunk else { return };
            let facts = StreamFacts {
                midstream: init.midstream,
                from_orig: side == ORIG,
            };
            *self =
                match dissect::probe_stream(d, facts) {
                    Verdict::NotYet => return,
                    Verdict::Certain(StreamProto::PeerWire, ev) => StreamApp::PeerWire(
                        Box::new(session(init, init.midstream, env)),
                        Identified::bt("peer_wire", Confidence::Certain, ev),
                    ),
                    Verdict::Certain(StreamProto::TrackerRequest, _) => StreamApp::TrackerHttp(Box::new(
                        HttpTracker::new(&flow_info(init), side, true, env.limits.tracker_http),
                    )),
                    // The request was not captured (mid-connection): the answer
                    // may still be a tracker's; confirmed by its body.
                    Verdict::Certain(StreamProto::HttpResponse, _) => StreamApp::TrackerHttp(Box::new(
                        HttpTracker::new(&flow_info(init), 1 - side, false, env.limits.tracker_http),
                    )),
                    Verdict::Certain(StreamProto::Mse, _) => StreamApp::Mse(Box::default()),
                    Verdict::Certain(StreamProto::MidstreamPeerWire, _) => StreamApp::Candidate(Box::new(Candidate {
                        session: session(init, true, env),
                        staged: out.staging(),
                        hold: None,
                        hold_ts: 0,
                        fed_bytes: 0,
                    })),
                    Verdict::NotMine("http") => StreamApp::Other(Identified::other("http", Some("http"))),
                    Verdict::NotMine(why) => StreamApp::Other(Identified::other("other", Some(why))),
                };
        }
        match self {
            StreamApp::TrackerHttp(t) => t.feed(side, chunk, ctx, out),
            StreamApp::Mse(scan) => {
                scan.last_ts = ctx.ts;
                if let Some((found, pos)) = scan.take(side, chunk) {
                    *self = StreamApp::PeerWire(Box::new(mse_plaintext(init, scan, found, pos, ctx, env, out)), {
                        Identified::bt(
                            "peer_wire",
                            Confidence::Certain,
                            "plaintext handshake after MSE exchange",
                        )
                    });
                }
            }
            StreamApp::PeerWire(s, _) => {
                let had_hash = s.info_hash().is_some();
                s.feed(side, chunk, ctx, out);
                if !had_hash {
                    if let Some(h) = s.info_hash() {
                        if let Some(shape) = env.shapes.get(&h) {
                            s.set_shape(*shape);
                        }
                    }
                }
                if s.gave_up() {
                    *self = StreamApp::Other(Identified::other("other", Some("peer-wire framing lost")));
                }
            }
            StreamApp::Candidate(c) => {
                if let Chunk::Data(d) = chunk {
                    c.fed_bytes += d.len() as u64;
                }
                // The torrents known now, not when the candidate began: a
                // packet sees rebuilt metadata from a fixed frame on
                // (`KnownTorrents::get`), whichever step it falls in.
                c.staged.known.clone_from(&out.known);
                c.session.feed(side, chunk, ctx, &mut c.staged);
                let [o, r] = c.session.n_busy_msgs();
                if o >= MIDSTREAM_MIN_MSGS && r >= MIDSTREAM_MIN_MSGS {
                    let StreamApp::Candidate(c) = std::mem::take(self) else {
                        return;
                    };
                    let Candidate {
                        session, staged, hold, ..
                    } = *c;
                    if let Some(k) = hold {
                        out.unhold(k);
                    }
                    out.absorb(staged);
                    *self = StreamApp::PeerWire(
                        Box::new(session),
                        Identified::bt("peer_wire", Confidence::Strong, EV_MID_STRONG),
                    );
                    return;
                }
                let one_way = o.max(r) > env.limits.max_midstream_staged_msgs;
                if c.session.gave_up() || one_way || c.fed_bytes > env.limits.max_midstream_probe_bytes {
                    let id = self.identified();
                    if let StreamApp::Candidate(c) = self {
                        if let Some(k) = c.hold.take() {
                            out.unhold(k);
                        }
                    }
                    *self = StreamApp::Other(id);
                    return;
                }
                match c.hold {
                    None if c.hold_ts == 0 => {
                        if let Some(k) = c.earliest_staged() {
                            out.hold(k);
                            c.hold = Some(k);
                            c.hold_ts = ctx.ts.max(1);
                        }
                    }
                    // Staged events hold the swarm state back at most
                    // `max_hold_us`, like a connection's own held events.
                    Some(k) if ctx.ts - c.hold_ts > env.limits.max_hold_us => {
                        out.unhold(k);
                        c.hold = None;
                    }
                    _ => {}
                }
            }
            StreamApp::Undecided | StreamApp::Handshake { .. } | StreamApp::Other(_) => {}
        }
    }

    /// Ends the stream: its identification and, for a peer-wire or
    /// encrypted connection, its `connections` row.
    pub fn finish(
        self,
        init: &StreamInit,
        end: StreamEnd,
        ctx: FrameCtx,
        env: &StreamEnv<'_>,
        out: &mut ShardOut,
    ) -> (Identified, Option<ConnectionRow>) {
        let id = self.identified();
        match self {
            StreamApp::PeerWire(mut s, id) => {
                let mut row = s.finish(ctx, out);
                end.apply(&mut row);
                if s.is_peer_wire() {
                    (id, Some(row))
                } else {
                    (
                        Identified::other("other", Some("handshake start, nothing framed")),
                        None,
                    )
                }
            }
            StreamApp::Candidate(c) => {
                let Candidate {
                    mut session,
                    mut staged,
                    hold,
                    ..
                } = *c;
                if let Some(k) = hold {
                    out.unhold(k);
                }
                if env.keep_weak && session.is_peer_wire() {
                    staged.known.clone_from(&out.known);
                    let mut row = session.finish(ctx, &mut staged);
                    out.absorb(staged);
                    end.apply(&mut row);
                    (id, Some(row))
                } else {
                    (id, None)
                }
            }
            StreamApp::Mse(scan) => {
                // uTP already is corroboration; over TCP the row waits for
                // the pipeline's endpoint check (and is dropped without it).
                (id, Some(mse_row(init, &scan, end, out)))
            }
            StreamApp::TrackerHttp(mut t) => {
                // A close-delimited answer completes with the flow's last
                // packet, not when the flow is swept.
                t.finish(
                    FrameCtx {
                        ts: end.last_ts.unwrap_or(ctx.ts),
                        ..ctx
                    },
                    out,
                );
                (self_id_tracker(&t), None)
            }
            // A handshake begun and never completed: no connection.
            StreamApp::Undecided | StreamApp::Handshake { .. } | StreamApp::Other(_) => (id, None),
        }
    }

    /// Live snapshot: the stream's row as of now (nothing flushed).
    pub fn snapshot_row(&self, init: &StreamInit, end: StreamEnd, out: &ShardOut) -> Option<ConnectionRow> {
        match self {
            // A mid-stream session still hunting may yet give up (then no
            // connection row is ever written): no row before it frames.
            StreamApp::PeerWire(s, _) if s.is_peer_wire() => {
                let mut row = s.snapshot_row(out);
                end.apply(&mut row);
                Some(row)
            }
            StreamApp::Mse(scan) => Some(mse_row(init, scan, end, out)),
            _ => None,
        }
    }
}

const EV_MID_STRONG: &str = "mid-stream: peer-wire messages framed in a run both ways";
const EV_MID_WEAK: &str = "mid-stream: some peer-wire framing, no run both ways";

fn self_id_tracker(t: &HttpTracker) -> Identified {
    if t.is_tracker() {
        Identified::bt(
            "tracker_http",
            Confidence::Certain,
            "HTTP tracker request or tracker document",
        )
    } else {
        Identified::other("http", Some("http"))
    }
}

/// The exchange selected plaintext: decode from the handshake on. The
/// other direction's handshake went inside the encrypted initial payload,
/// so that side is hunted for boundaries.
fn mse_plaintext(
    init: &StreamInit,
    scan: &mut MseScan,
    found: usize,
    pos: usize,
    ctx: FrameCtx,
    env: &StreamEnv<'_>,
    out: &mut ShardOut,
) -> PeerSession {
    let mut s = session(init, true, env);
    let other = 1 - found;
    let heads = std::mem::take(&mut scan.head);
    // The key exchange before the handshake is not decoded, but it is
    // stream bytes of that side (payload_bytes; the other side's exchange
    // is fed to the session and counted there).
    s.set_mse_handshake(found, pos.min(heads[found].len()) as u64);
    if let Some(h) = heads[found].get(pos..) {
        s.feed(found, Chunk::Data(h), ctx, out);
    }
    if !heads[other].is_empty() {
        s.feed(other, Chunk::Data(&heads[other]), ctx, out);
    }
    // What the scan passed over past its window: stream bytes that the
    // session does not see, and bytes lost in gaps; the framers resume after
    // them as after one gap. (The found side has none: its handshake was
    // found in its head, and a side's head stops growing once it passed.)
    for side in [found, other] {
        if scan.passed(side) {
            s.feed_unkept(side, scan.unkept[side], scan.lost[side], ctx, out);
        }
    }
    s
}

/// The row of an encrypted connection: its ends, times and byte counts.
fn mse_row(init: &StreamInit, scan: &MseScan, end: StreamEnd, out: &ShardOut) -> ConnectionRow {
    let payload = end.payload.unwrap_or(scan.payload);
    ConnectionRow {
        conn_id: init.conn_id,
        flow_id: init.flow_id,
        capture: out.capture_arc(init.capture),
        transport: init.transport,
        orig_ip: Ip(init.ends[ORIG].ip()),
        orig_port: u32::from(init.ends[ORIG].port()),
        resp_ip: Ip(init.ends[RESP].ip()),
        resp_port: u32::from(init.ends[RESP].port()),
        first_ts: Ts(init.first_ts),
        last_ts: Ts(end.last_ts.unwrap_or(scan.last_ts)),
        encrypted: true,
        mse_handshake: true,
        attribution_confidence: "none",
        midstream: init.midstream,
        payload_bytes_orig: payload[ORIG],
        payload_bytes_resp: payload[RESP],
        gap_bytes: end.gap_bytes.unwrap_or(scan.gap_bytes),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(midstream: bool) -> StreamInit {
        StreamInit {
            conn_id: 7,
            flow_id: 7,
            capture: 0,
            transport: ConnTransport::Tcp,
            ends: [
                "10.0.0.1:50000".parse().expect("addr"),
                "10.0.0.2:6881".parse().expect("addr"),
            ],
            first_ts: 1_000_000,
            midstream,
        }
    }

    fn msg(id: u8, body: &[u8]) -> Vec<u8> {
        let mut m = (body.len() as u32 + 1).to_be_bytes().to_vec();
        m.push(id);
        m.extend_from_slice(body);
        m
    }

    /// Feeds `chunks` (side, bytes) one frame each, then ends the stream.
    fn run(midstream: bool, chunks: &[(usize, Vec<u8>)]) -> (Identified, Option<ConnectionRow>, ShardOut) {
        let limits = Limits::default();
        let shapes = std::collections::HashMap::new();
        let env = StreamEnv {
            limits: &limits,
            messages: true,
            keep_weak: false,
            shapes: &shapes,
        };
        let mut out = ShardOut::default();
        let mut app = StreamApp::default();
        let i = init(midstream);
        for (n, (side, d)) in chunks.iter().enumerate() {
            let ctx = FrameCtx {
                ts: 1_000_000 + n as i64,
                frame: n as u64 + 1,
                capture: 0,
            };
            app.feed(&i, *side, Chunk::Data(d), ctx, &env, &mut out);
        }
        let end = StreamEnd {
            last_ts: Some(2_000_000),
            gap_bytes: Some(0),
            payload: None,
        };
        let ctx = FrameCtx {
            ts: 2_000_000,
            frame: 99,
            capture: 0,
        };
        let (id, row) = app.finish(&i, end, ctx, &env, &mut out);
        (id, row, out)
    }

    fn have(piece: u32) -> Vec<u8> {
        msg(4, &piece.to_be_bytes())
    }

    fn request(piece: u32) -> Vec<u8> {
        let mut b = piece.to_be_bytes().to_vec();
        b.extend(0u32.to_be_bytes());
        b.extend(16384u32.to_be_bytes());
        msg(6, &b)
    }

    #[test]
    fn a_midstream_run_both_ways_becomes_a_connection_with_its_staged_messages() {
        let mut chunks = Vec::new();
        for p in 0..4 {
            chunks.push((ORIG, request(p)));
            chunks.push((RESP, have(p)));
        }
        let (id, row, out) = run(true, &chunks);
        assert_eq!((id.app, id.confidence), ("peer_wire", Some(Confidence::Strong)));
        let row = row.expect("connection row");
        assert!(row.midstream);
        assert!(row.n_msgs_orig >= MIDSTREAM_MIN_MSGS && row.n_msgs_resp >= MIDSTREAM_MIN_MSGS);
        // The messages framed before the run was confirmed are written too.
        assert_eq!(out.rows.peer_messages.len() as u64, row.n_msgs_orig + row.n_msgs_resp);
        // Each row names its sender and receiver as the connection does
        // (the typed addresses the sink writes as text): requests from the
        // originator, haves from the responder.
        let orig = (row.orig_ip, row.orig_port);
        let resp = (row.resp_ip, row.resp_port);
        assert_ne!(orig, resp);
        for m in &out.rows.peer_messages {
            let (src, dst) = match m.msg {
                "request" => (orig, resp),
                "have" => (resp, orig),
                other => panic!("unexpected message {other}"),
            };
            assert_eq!(((m.src_ip, m.src_port), (m.dst_ip, m.dst_port)), (src, dst));
            assert_eq!(m.conn_id, row.conn_id);
            assert_eq!(m.info_hash, None, "no handshake seen");
        }
        let n = |name: &str| out.rows.peer_messages.iter().filter(|m| m.msg == name).count();
        assert_eq!(
            (n("request") as u64, n("have") as u64),
            (row.n_msgs_orig, row.n_msgs_resp)
        );
    }

    #[test]
    fn a_midstream_run_one_way_writes_nothing() {
        let chunks: Vec<(usize, Vec<u8>)> = (0..8).map(|p| (ORIG, request(p))).collect();
        let (id, row, out) = run(true, &chunks);
        assert_eq!((id.app, id.confidence), ("peer_wire", Some(Confidence::Weak)));
        assert!(row.is_none());
        assert!(out.rows.peer_messages.is_empty() && out.events.is_empty() && out.rows.anomalies.is_empty());
    }

    #[test]
    fn a_one_way_flood_of_tiny_messages_is_given_up_at_the_staging_bound() {
        let chunks: Vec<(usize, Vec<u8>)> = (0..1000).map(|p| (ORIG, have(p))).collect();
        let (id, row, out) = run(true, &chunks);
        assert_eq!(id.app, "peer_wire");
        assert!(row.is_none() && out.rows.peer_messages.is_empty());
        assert!(out.held_since.is_empty());
    }

    #[test]
    fn smb_and_zero_bytes_picked_up_mid_stream_write_nothing() {
        // SMB over NetBIOS: ruled out by name at its first bytes.
        let mut smb = vec![0, 0, 0, 0x45, 0xff, b'S', b'M', b'B', 0x72];
        smb.resize(0x49, 0);
        let (id, row, out) = run(true, &[(ORIG, smb.clone()), (RESP, smb)]);
        assert_eq!((id.app, id.evidence), ("other", Some("smb")));
        assert!(row.is_none() && out.rows.peer_messages.is_empty());
        // Zero bytes both ways frame only as keep-alives.
        let zeros = vec![0u8; 64];
        let (id, row, out) = run(true, &[(ORIG, zeros.clone()), (RESP, zeros.clone()), (ORIG, zeros)]);
        assert!(!id.is_sure());
        assert!(row.is_none() && out.rows.peer_messages.is_empty());
    }

    fn xorshift(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    /// The scan of an MSE stream by construction: a side's head keeps
    /// whole chunks while it holds under 2 KiB (1,500 + 548 = 2,048 kept,
    /// then none); what comes after is counted, not kept (300), as are the
    /// bytes lost in gaps;
    /// the responder's 60 bytes leave its reply undecided, 120 decide it;
    /// a gap ends the responder's window, and with both windows passed
    /// the scan stops and frees its heads, counting payload still.
    #[test]
    fn mse_scan_keeps_2_kib_a_side_and_counts_everything() {
        let mut m = MseScan::default();
        assert_eq!(m.take(ORIG, Chunk::Data(&xorshift(1, 1500))), None);
        assert_eq!(m.take(ORIG, Chunk::Data(&xorshift(2, 548))), None);
        assert!(!m.passed(ORIG));
        assert_eq!(m.take(ORIG, Chunk::Data(&xorshift(3, 300))), None);
        assert!(m.passed(ORIG));
        assert_eq!(m.take(ORIG, Chunk::Gap(40)), None);
        assert_eq!((m.head[ORIG].len(), m.unkept, m.lost), (2048, [300, 0], [40, 0]));
        assert_eq!(m.take(RESP, Chunk::Data(&xorshift(4, 60))), None);
        assert_eq!((m.reply, m.passed(RESP)), (None, false));
        assert_eq!(m.take(RESP, Chunk::Data(&xorshift(5, 60))), None);
        assert_eq!((m.reply, m.done), (Some(true), false));
        assert_eq!(m.take(RESP, Chunk::Gap(10)), None);
        assert!(m.passed(RESP) && m.done);
        assert!(m.head.iter().all(Vec::is_empty));
        assert_eq!(m.take(ORIG, Chunk::Data(&[0; 50])), None);
        assert_eq!(m.take(RESP, Chunk::Gap(5)), None);
        assert_eq!((m.payload, m.gap_bytes), ([1500 + 548 + 300 + 50, 120], 55));
        assert_eq!((m.unkept, m.lost), ([300, 0], [40, 10]), "nothing scanned once done");
    }

    /// A plaintext handshake in the responder's head, its prefix split
    /// over two chunks, is found at its offset whichever side's chunk
    /// completes it; a gap before any byte ends a side's window at once
    /// (nothing kept), and an undecided reply is decided (no) by it.
    #[test]
    fn mse_scan_finds_a_split_handshake_and_a_gap_ends_the_window() {
        let mut m = MseScan::default();
        let mut r = xorshift(6, 150);
        r.extend_from_slice(&HANDSHAKE_PREFIX[..10]);
        assert_eq!(m.take(RESP, Chunk::Data(&r)), None);
        assert_eq!(m.take(ORIG, Chunk::Data(&xorshift(7, 200))), None);
        assert_eq!(m.take(RESP, Chunk::Data(&HANDSHAKE_PREFIX[10..])), Some((RESP, 150)));
        let mut m = MseScan::default();
        assert_eq!(m.take(RESP, Chunk::Gap(5)), None);
        assert_eq!(m.reply, Some(false));
        assert_eq!(m.take(RESP, Chunk::Data(HANDSHAKE_PREFIX)), None);
        assert_eq!((m.head[RESP].len(), m.unkept[RESP], m.lost[RESP]), (0, 20, 5));
        assert!(!m.done, "the originator's window is still open");
        let mut o = xorshift(8, 64);
        o.extend_from_slice(HANDSHAKE_PREFIX);
        assert_eq!(m.take(ORIG, Chunk::Data(&o)), Some((ORIG, 64)));
    }

    /// An MSE exchange that selects plaintext: the responder's handshake
    /// follows 150 bytes of its key exchange, the originator's 200 bytes
    /// are all exchange. Both are stream bytes of the connection row; the
    /// transport's end sets the row's last time and lost bytes.
    #[test]
    fn mse_plaintext_rows_count_both_exchanges() {
        let mut r = xorshift(9, 150);
        r.extend_from_slice(HANDSHAKE_PREFIX);
        r.extend_from_slice(&[0; 8]);
        r.extend_from_slice(&[0x11; 20]);
        r.extend_from_slice(&[b'R'; 20]);
        r.extend(have(1));
        let (id, row, _) = run(false, &[(ORIG, xorshift(10, 200)), (RESP, r)]);
        assert_eq!(id.app, "peer_wire");
        let row = row.expect("connection row");
        assert!(row.mse_handshake && !row.encrypted);
        assert_eq!((row.payload_bytes_orig, row.payload_bytes_resp), (200, 150 + 68 + 9));
        assert_eq!((row.n_msgs_resp, row.last_ts, row.gap_bytes), (1, Ts(2_000_000), 0));
    }

    /// The row of an encrypted stream: the scan's counts unless the
    /// transport's end says otherwise (TCP), the transport's when it does.
    #[test]
    fn mse_row_counts_the_scan_or_the_transport() {
        let mut m = MseScan::default();
        m.take(ORIG, Chunk::Data(&xorshift(11, 200)));
        m.take(RESP, Chunk::Gap(7));
        m.take(RESP, Chunk::Data(&xorshift(12, 300)));
        let out = ShardOut::default();
        let own = StreamEnd {
            last_ts: None,
            gap_bytes: None,
            payload: None,
        };
        let row = mse_row(&init(false), &m, own, &out);
        assert!(row.encrypted && row.mse_handshake);
        assert_eq!(
            (row.payload_bytes_orig, row.payload_bytes_resp, row.gap_bytes),
            (200, 300, 7)
        );
        let tcp = StreamEnd {
            last_ts: Some(5_000_000),
            gap_bytes: Some(9),
            payload: Some([205, 310]),
        };
        let row = mse_row(&init(false), &m, tcp, &out);
        assert_eq!(
            (
                row.payload_bytes_orig,
                row.payload_bytes_resp,
                row.gap_bytes,
                row.last_ts
            ),
            (205, 310, 9, Ts(5_000_000))
        );
        let mut row = ConnectionRow::default();
        tcp.apply(&mut row);
        assert_eq!((row.last_ts, row.gap_bytes), (Ts(5_000_000), 9));
    }

    #[test]
    fn mse_rows_are_written_for_the_pipeline_to_judge() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut random = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 32) as u8
                })
                .collect()
        };
        let (id, row, _) = run(false, &[(ORIG, random(200)), (RESP, random(300))]);
        assert_eq!((id.app, id.evidence), ("mse", Some(EV_MSE_BOTH)));
        assert!(row.is_some_and(|r| r.encrypted));
        let (id, _, _) = run(false, &[(ORIG, random(200))]);
        assert_eq!(id.evidence, Some(EV_MSE_ONE_WAY));
        // A TLS ClientHello of the same size is not MSE.
        let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0xc3];
        hello.extend(random(195));
        let (id, row, _) = run(false, &[(ORIG, hello)]);
        assert_eq!((id.app, id.evidence), ("other", Some("tls")));
        assert!(row.is_none());
    }
}
