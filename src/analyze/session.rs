//! One peer-wire connection: two framers (orig→resp and resp→orig), the
//! handshake and BEP 10 state of each side, per-connection counters, rows
//! for `peer_messages` and `connections`, and events for the swarm state.
//!
//! Peer identity: a peer is (info_hash, ip, listen port). The responder's
//! port is its listen port; the originator's is its BEP 10 `p` when it sends
//! one. Swarm events are therefore held (bounded by
//! `Limits::max_held_events`) until the originator's identity is settled: its
//! BEP 10 handshake arrived, or it does not support BEP 10, or the hold is
//! full, or the connection ends.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use sha1::{Digest, Sha1};

use super::metadata::MetadataPiece;
use super::pieces::{CheckLimits, PieceChecker};
use super::swarm::UnattributedEvent;
use super::{Claim, FrameCtx, PeerSource, ShardOut, SwarmEvent, SwarmEventKind};
use crate::config::Limits;
use crate::flow::Chunk;
use crate::proto::bencode::{self, BencodeLimits};
use crate::proto::client_id::{client_from_ltep_v, client_from_peer_id};
use crate::proto::metainfo::{hex, parse_info, Metainfo};
use crate::proto::peer_wire::{ExtensionMap, Message, PeerWireFramer, TorrentShape, WireEvent};
use crate::proto::ut_metadata::{self, MetadataMsg};
use crate::proto::ut_pex;
use crate::sink::{ConnTransport, ConnectionRow, Ip, PeerMessageRow, PexPeerRow, PieceRow, Ts};

/// Extension names clients put in their BEP 10 `m`: kept as these
/// (every connection row lists them, and rows are held to the end of the
/// run) instead of a copy per side and connection.
const COMMON_EXTENSIONS: &[&str] = &[
    "ut_metadata",
    "ut_pex",
    "upload_only",
    "lt_donthave",
    "ut_holepunch",
    "ut_comment",
    "ut_recommend",
    "LT_metadata",
    "lt_tex",
    "i2p_pex",
    "share_mode",
];

/// `name` as a common extension name, else its own copy.
fn ext_name(name: Cow<'_, str>) -> Cow<'static, str> {
    match COMMON_EXTENSIONS.iter().find(|n| **n == name) {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(name.into_owned()),
    }
}

/// Direction indices (0 = from the originator), as the flow layer numbers them.
pub use crate::flow::{ORIG, RESP};

#[derive(Debug, Clone)]
struct Held {
    ctx: FrameCtx,
    side: usize,
    kind: SwarmEventKind,
}

/// Per-side protocol state.
#[derive(Debug, Clone, Default)]
struct Side {
    peer_id: Option<[u8; 20]>,
    reserved: Option<[u8; 8]>,
    ltep_seen: bool,
    ltep_v: Option<String>,
    listen_port: Option<u16>,
    /// Extension ids this side asked to receive (its `m`).
    ext_map: ExtensionMap,
    /// Names of its `m`, the common ones without a copy ([`ext_name`]).
    ext_names: Vec<Cow<'static, str>>,
    piece_bytes: u64,
    /// Bytes of the current piece block still to come, and seen so far.
    block_left: u64,
    block_bytes: u64,
    payload_bytes: u64,
    n_msgs: u64,
    /// Messages of a known kind other than keep-alive: what confirms a
    /// stream picked up mid-connection (`analyze::stream`).
    n_busy: u64,
    seen_sent: bool,
    /// Verification of the pieces this side sends (when hashes are known).
    check: Option<Box<PieceChecker>>,
}

/// State of a connection apart from its framers (so both can be borrowed).
#[derive(Debug, Clone)]
struct State {
    conn_id: u64,
    flow_id: u64,
    capture: u32,
    transport: ConnTransport,
    ends: [SocketAddr; 2],
    first_ts: i64,
    last_ts: i64,
    info_hash: Option<[u8; 20]>,
    info_hash_hex: Option<Arc<str>>,
    sides: [Side; 2],
    midstream: bool,
    encrypted: bool,
    mse_handshake: bool,
    gap_bytes: u64,
    held: Vec<Held>,
    /// Key of the oldest held event, as registered in `ShardOut::held_since`.
    held_key: Option<(u32, u64)>,
    /// Packet time of the oldest held event.
    held_since_ts: i64,
    /// Longest a held event waits (`Limits::max_hold_us`).
    max_hold_us: i64,
    settled: bool,
    messages: bool,
    max_held: usize,
    max_ltep: usize,
    max_pieces: u32,
    check_limits: CheckLimits,
    max_metadata: u32,
    max_pex: usize,
    /// An info dictionary of one metadata piece that passed on this very
    /// connection and hashes to its info_hash: its pieces are verified
    /// from then on, without waiting for the run-wide assembler (whose
    /// result reaches the shards only from the next batch). Its bytes are
    /// charged to the shard's piece budget while the connection lives
    /// (`local_meta_charge`): a peer can send every connection a made-up
    /// 16 KiB dictionary, and there are `max_flows` connections.
    local_meta: Option<Arc<Metainfo>>,
    local_meta_charge: usize,
}

/// One peer-wire connection.
#[derive(Debug, Clone)]
pub struct PeerSession {
    framers: [PeerWireFramer; 2],
    st: State,
}

/// Parameters to open a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionInit {
    pub conn_id: u64,
    pub flow_id: u64,
    pub capture: u32,
    pub transport: ConnTransport,
    pub orig: SocketAddr,
    pub resp: SocketAddr,
    pub first_ts: i64,
    /// The stream starts were not captured: hunt for framing.
    pub midstream: bool,
}

const LTEP_LIMITS: BencodeLimits = BencodeLimits {
    max_depth: 16,
    max_items: 4096,
};

impl PeerSession {
    pub fn new(init: SessionInit, limits: &Limits, messages: bool) -> Self {
        let mk = || PeerWireFramer::new_auto(limits.peer_wire, init.midstream);
        PeerSession {
            framers: [mk(), mk()],
            st: State {
                conn_id: init.conn_id,
                flow_id: init.flow_id,
                capture: init.capture,
                transport: init.transport,
                ends: [init.orig, init.resp],
                first_ts: init.first_ts,
                last_ts: init.first_ts,
                info_hash: None,
                info_hash_hex: None,
                sides: [Side::default(), Side::default()],
                midstream: init.midstream,
                encrypted: false,
                mse_handshake: false,
                gap_bytes: 0,
                held: Vec::new(),
                held_key: None,
                held_since_ts: 0,
                max_hold_us: limits.max_hold_us,
                settled: false,
                messages,
                max_held: limits.max_held_events,
                max_ltep: limits.max_ltep_handshake,
                max_pieces: limits.max_pieces,
                check_limits: CheckLimits {
                    max_in_progress: limits.max_pieces_in_progress,
                    max_buffered: limits.max_piece_buffer_per_direction,
                },
                max_metadata: limits.max_metadata_bytes,
                max_pex: limits.max_pex_entries,
                local_meta: None,
                local_meta_charge: 0,
            },
        }
    }

    /// The stream began with an MSE key exchange that selected plaintext;
    /// `side` sent `exchange_bytes` of it before its plaintext handshake
    /// (stream bytes of the connection, though not peer wire).
    pub fn set_mse_handshake(&mut self, side: usize, exchange_bytes: u64) {
        self.st.mse_handshake = true;
        self.st.sides[side.min(1)].payload_bytes += exchange_bytes;
    }

    /// Sharper framing checks once the torrent's shape is known.
    pub fn set_shape(&mut self, shape: TorrentShape) {
        for f in &mut self.framers {
            f.set_shape(shape);
        }
    }

    pub fn info_hash(&self) -> Option<[u8; 20]> {
        self.st.info_hash
    }

    /// True once either direction framed at least one message or handshake.
    pub fn is_peer_wire(&self) -> bool {
        self.framers
            .iter()
            .any(|f| f.stats().n_msgs > 0 || f.stats().framed_bytes > 0)
    }

    /// Messages of a known kind other than keep-alive, per direction.
    pub fn n_busy_msgs(&self) -> [u64; 2] {
        [self.st.sides[ORIG].n_busy, self.st.sides[RESP].n_busy]
    }

    /// True when both directions gave up hunting without framing anything.
    pub fn gave_up(&self) -> bool {
        !self.is_peer_wire() && self.framers.iter().all(|f| f.is_dead())
    }

    pub fn buffered_bytes(&self) -> usize {
        self.framers.iter().map(|f| f.buffered_bytes()).sum::<usize>() + self.st.held.len() * 64
    }

    /// Heap bytes the session holds beyond its own size (the flow's memory
    /// account, `Limits::max_memory`): framing buffers, held events, the
    /// piece checkers and the blocks they hold aside.
    pub fn heap_bytes(&self) -> usize {
        let checks: usize = self
            .st
            .sides
            .iter()
            .filter_map(|s| s.check.as_deref())
            .map(|c| crate::flow::alloc_bytes(std::mem::size_of::<PieceChecker>()) + c.heap_bytes())
            .sum();
        self.buffered_bytes() + checks
    }

    /// Settles the connection when its oldest held event is older than
    /// `max_hold_us` at packet time `now` (a sweep: the connection has sent
    /// nothing since that could settle it).
    pub fn release_stale(&mut self, now: i64, out: &mut ShardOut) {
        let st = &mut self.st;
        if !st.settled && st.held_key.is_some() && now - st.held_since_ts > st.max_hold_us {
            st.settled = true;
            st.release(out);
        }
    }

    /// Feeds one chunk of direction `side` (0 = from the originator).
    pub fn feed(&mut self, side: usize, chunk: Chunk<'_>, ctx: FrameCtx, out: &mut ShardOut) {
        let side = side.min(1);
        match chunk {
            Chunk::Data(d) => self.st.sides[side].payload_bytes += d.len() as u64,
            Chunk::Gap(n) => self.st.gap_bytes += n,
        }
        self.frame(side, chunk, ctx, out);
    }

    /// Feeds `unkept` bytes of `side` that were captured but not kept (an
    /// MSE scan passed over them) and `lost` bytes a capture gap took among
    /// them: stream bytes (`payload_bytes`) and lost bytes (`gap_bytes`),
    /// after which the framer resumes as after one gap.
    pub fn feed_unkept(&mut self, side: usize, unkept: u64, lost: u64, ctx: FrameCtx, out: &mut ShardOut) {
        let side = side.min(1);
        self.st.sides[side].payload_bytes += unkept;
        self.st.gap_bytes += lost;
        self.frame(side, Chunk::Gap(unkept + lost), ctx, out);
    }

    fn frame(&mut self, side: usize, chunk: Chunk<'_>, ctx: FrameCtx, out: &mut ShardOut) {
        self.st.last_ts = self.st.last_ts.max(ctx.ts);
        let st = &mut self.st;
        self.framers[side].feed(chunk, &mut |ev| st.on_event(side, ev, ctx, out));
        if !self.st.settled {
            self.st.try_settle(ctx, out);
        }
    }

    /// Ends the connection: flushes framers and held events, returns its row.
    pub fn finish(&mut self, ctx: FrameCtx, out: &mut ShardOut) -> ConnectionRow {
        for side in [ORIG, RESP] {
            let st = &mut self.st;
            self.framers[side].finish(&mut |ev| st.on_event(side, ev, ctx, out));
        }
        // A block cut off by the end of the connection counts for what was
        // sent of it (clients count payload as written to the socket).
        for side in [ORIG, RESP] {
            self.st.end_block(side, ctx, true, out);
            if let Some(c) = self.st.sides[side].check.as_mut() {
                c.clear(&mut out.piece_budget);
            }
        }
        let charge = std::mem::take(&mut self.st.local_meta_charge);
        out.piece_budget.used = out.piece_budget.used.saturating_sub(charge);
        self.st.settled = true;
        self.st.release(out);
        self.row(out)
    }

    /// The connection's row as of now, for a live snapshot: nothing is
    /// flushed, so a message still being framed is not counted yet.
    pub fn snapshot_row(&self, out: &ShardOut) -> ConnectionRow {
        self.row(out)
    }

    fn row(&self, out: &ShardOut) -> ConnectionRow {
        let st = &self.st;
        let fs = [self.framers[ORIG].stats(), self.framers[RESP].stats()];
        let client = |s: &Side| {
            s.peer_id
                .and_then(|p| client_from_peer_id(&p))
                .or_else(|| s.ltep_v.clone())
        };
        ConnectionRow {
            conn_id: st.conn_id,
            flow_id: st.flow_id,
            capture: out.capture_arc(st.capture),
            transport: st.transport,
            orig_ip: Ip(st.ends[ORIG].ip()),
            orig_port: u32::from(st.ends[ORIG].port()),
            resp_ip: Ip(st.ends[RESP].ip()),
            resp_port: u32::from(st.ends[RESP].port()),
            first_ts: Ts(st.first_ts),
            last_ts: Ts(st.last_ts),
            info_hash: st.info_hash,
            info_hash_source: st.info_hash.map(|_| "handshake"),
            attribution_confidence: if st.info_hash.is_some() { "exact" } else { "none" },
            orig_peer_id: st.sides[ORIG].peer_id,
            resp_peer_id: st.sides[RESP].peer_id,
            orig_client: client(&st.sides[ORIG]),
            resp_client: client(&st.sides[RESP]),
            orig_ltep_v: st.sides[ORIG].ltep_v.clone(),
            resp_ltep_v: st.sides[RESP].ltep_v.clone(),
            orig_listen_port: st.sides[ORIG].listen_port.map(u32::from),
            resp_listen_port: st.sides[RESP].listen_port.map(u32::from),
            orig_extensions: st.sides[ORIG].ext_names.clone(),
            resp_extensions: st.sides[RESP].ext_names.clone(),
            encrypted: st.encrypted,
            mse_handshake: st.mse_handshake,
            midstream: st.midstream,
            piece_bytes_orig: st.sides[ORIG].piece_bytes,
            piece_bytes_resp: st.sides[RESP].piece_bytes,
            payload_bytes_orig: st.sides[ORIG].payload_bytes,
            payload_bytes_resp: st.sides[RESP].payload_bytes,
            n_msgs_orig: fs[ORIG].n_msgs,
            n_msgs_resp: fs[RESP].n_msgs,
            gap_bytes: st.gap_bytes,
            unframed_bytes: fs[ORIG].unframed_bytes + fs[RESP].unframed_bytes,
            n_resyncs: fs[ORIG].n_resyncs + fs[RESP].n_resyncs,
            ..Default::default()
        }
    }
}

impl State {
    /// The endpoint that identifies `side` as a peer: its listen endpoint
    /// as far as the connection shows it. The originator's transport port
    /// is ephemeral, so its BEP 10 `p` names it. The responder's transport
    /// port is the port it accepted on, unless the connection was picked
    /// up mid-stream: then who connected to whom is a guess (the receiver
    /// of the first packet seen is called the responder) and either
    /// transport port may be ephemeral, so a `p` it sent names it too.
    fn peer_addr(&self, side: usize) -> SocketAddr {
        let e = self.ends[side];
        match self.sides[side].listen_port {
            Some(p) if p != 0 && (side == ORIG || self.midstream) => SocketAddr::new(e.ip(), p),
            _ => e,
        }
    }

    fn try_settle(&mut self, ctx: FrameCtx, out: &mut ShardOut) {
        let o = &self.sides[ORIG];
        let supports_ltep = o.reserved.map(|r| r[5] & 0x10 != 0);
        let settled = o.ltep_seen
            || supports_ltep == Some(false)
            || self.held.len() >= self.max_held
            || (self.held_key.is_some() && ctx.ts - self.held_since_ts > self.max_hold_us)
            || (self.midstream && o.reserved.is_none());
        if settled {
            self.settled = true;
            self.release(out);
        }
    }

    fn release(&mut self, out: &mut ShardOut) {
        if let Some(k) = self.held_key.take() {
            out.unhold(k);
        }
        let mut held = std::mem::take(&mut self.held);
        for h in held.drain(..) {
            self.emit(h, out);
        }
        // A settled connection releases each event as it comes: a small
        // vector is kept for the next one rather than allocated per event
        // (the memory account counts held events, not this capacity).
        if held.capacity() <= 4 {
            self.held = held;
        }
    }

    /// Writes one event that is no longer held back.
    fn emit(&self, h: Held, out: &mut ShardOut) {
        let peer = self.peer_addr(h.side);
        let kind = match h.kind {
            SwarmEventKind::Transfer { bytes, cut_off, .. } => SwarmEventKind::Transfer {
                to: self.peer_addr(1 - h.side),
                bytes,
                cut_off,
            },
            SwarmEventKind::Seen { peer_id, client, .. } => SwarmEventKind::Seen {
                peer_id,
                client,
                // Which side listens is known only when the connection's
                // start was captured (the responder), or from BEP 10 `p`.
                listen: (h.side == RESP && !self.midstream) || self.sides[h.side].listen_port.is_some(),
            },
            k => k,
        };
        let event = SwarmEvent {
            ctx: h.ctx,
            conn_id: self.conn_id,
            info_hash: self.info_hash.unwrap_or([0; 20]),
            peer,
            kind,
        };
        if self.info_hash.is_some() {
            out.events.push(event);
        } else {
            // Mid-stream: the swarm state attributes it by endpoint.
            out.unattributed.push(UnattributedEvent {
                event,
                other: self.peer_addr(1 - h.side),
            });
        }
    }

    /// Closes the current piece block of `side` (complete, or cut off).
    fn end_block(&mut self, side: usize, ctx: FrameCtx, cut_off: bool, out: &mut ShardOut) {
        let s = &mut self.sides[side];
        let bytes = std::mem::take(&mut s.block_bytes);
        s.block_left = 0;
        if bytes > 0 {
            let to = self.ends[1 - side];
            self.push_event(side, ctx, SwarmEventKind::Transfer { to, bytes, cut_off }, out);
        }
    }

    fn block_progress(&mut self, side: usize, n: u64, ctx: FrameCtx, out: &mut ShardOut) {
        let s = &mut self.sides[side];
        let n = n.min(s.block_left);
        s.block_left -= n;
        s.block_bytes += n;
        s.piece_bytes += n;
        if s.block_left == 0 {
            self.end_block(side, ctx, false, out);
        }
    }

    fn push_event(&mut self, side: usize, ctx: FrameCtx, kind: SwarmEventKind, out: &mut ShardOut) {
        if !self.settled && self.held_key.is_none() {
            let k = (ctx.capture, ctx.frame);
            self.held_key = Some(k);
            self.held_since_ts = ctx.ts;
            out.hold(k);
        }
        if !self.sides[side].seen_sent && !matches!(kind, SwarmEventKind::Seen { .. }) {
            self.sides[side].seen_sent = true;
            let seen = self.seen(side, false);
            self.hold_or_emit(Held { ctx, side, kind: seen }, out);
        }
        self.hold_or_emit(Held { ctx, side, kind }, out);
    }

    /// The sighting of `side` as far as the connection knows it: its peer
    /// id, the client that id (or else its BEP 10 `v`) names, and whether
    /// the endpoint it names is a listen endpoint.
    fn seen(&self, side: usize, listen: bool) -> SwarmEventKind {
        let s = &self.sides[side];
        let client = s
            .peer_id
            .and_then(|p| client_from_peer_id(&p))
            .or_else(|| s.ltep_v.clone());
        SwarmEventKind::Seen {
            peer_id: s.peer_id,
            client,
            listen,
        }
    }

    /// Holds `h` until the connection settles, or writes it at once when
    /// it has (nothing held before it: the order stays that of `held`).
    fn hold_or_emit(&mut self, h: Held, out: &mut ShardOut) {
        if self.settled && self.held.is_empty() && self.held_key.is_none() {
            self.emit(h, out);
            return;
        }
        self.held.push(h);
        if self.settled {
            self.release(out);
        }
    }

    fn message_row(
        &self,
        side: usize,
        ctx: FrameCtx,
        out: &mut ShardOut,
        msg: &'static str,
        f: impl FnOnce(&mut PeerMessageRow),
    ) {
        if !self.messages {
            return;
        }
        // Addresses and the info hash as values: their text is made at the
        // sink, once per distinct value of a row group.
        let (src, dst) = (self.ends[side], self.ends[1 - side]);
        let mut r = PeerMessageRow {
            ts: Ts(ctx.ts),
            frame: ctx.frame,
            capture: out.capture_text(ctx.capture),
            conn_id: self.conn_id,
            src_ip: Ip(src.ip()),
            src_port: u32::from(src.port()),
            dst_ip: Ip(dst.ip()),
            dst_port: u32::from(dst.port()),
            info_hash: self.info_hash,
            msg,
            ..Default::default()
        };
        f(&mut r);
        out.rows.peer_messages.push(r);
    }

    fn on_event(&mut self, side: usize, ev: WireEvent<'_>, ctx: FrameCtx, out: &mut ShardOut) {
        match ev {
            WireEvent::Handshake {
                reserved,
                info_hash,
                peer_id,
            } => {
                match self.info_hash {
                    None => {
                        self.info_hash = Some(info_hash);
                        self.info_hash_hex = Some(hex(&info_hash).into());
                    }
                    Some(h) if h != info_hash => {
                        out.anomaly(
                            Some(ctx),
                            Some(self.conn_id),
                            "peer_wire",
                            "info_hash_mismatch",
                            Some(format!("{} vs {}", hex(&h), hex(&info_hash))),
                        );
                    }
                    Some(_) => {}
                }
                let s = &mut self.sides[side];
                let first = s.reserved.is_none();
                s.reserved = Some(reserved);
                s.peer_id = peer_id;
                self.message_row(side, ctx, out, "handshake", |r| r.wire_len = 68);
                self.push_event(
                    side,
                    ctx,
                    SwarmEventKind::Seen {
                        peer_id,
                        client: peer_id.and_then(|p| client_from_peer_id(&p)),
                        listen: false,
                    },
                    out,
                );
                self.sides[side].seen_sent = true;
                if first {
                    // The transport this peer was seen using (peers.utp).
                    self.push_event(
                        side,
                        ctx,
                        SwarmEventKind::Traits {
                            prefers_encryption: None,
                            utp: Some(self.transport == ConnTransport::Utp),
                            from_self: true,
                        },
                        out,
                    );
                }
            }
            WireEvent::NoHandshake => {}
            WireEvent::Message { msg, wire_len } => self.on_message(side, msg, wire_len, ctx, out),
            WireEvent::PieceData(d) => {
                if self.sides[side].check.is_some() {
                    self.check_data(side, d, ctx, out);
                }
                self.block_progress(side, d.len() as u64, ctx, out);
            }
            WireEvent::PieceGap(n) => {
                if let Some(c) = self.sides[side].check.as_mut() {
                    c.gap(&mut out.piece_budget);
                }
                self.block_progress(side, n, ctx, out);
            }
            WireEvent::Resync { skipped_bytes } => {
                if !self.midstream || self.sides[side].n_msgs > 0 {
                    out.anomaly(
                        Some(ctx),
                        Some(self.conn_id),
                        "peer_wire",
                        "resync",
                        Some(format!("{skipped_bytes} bytes skipped")),
                    );
                }
            }
            WireEvent::LostSync { reason } => {
                out.anomaly(Some(ctx), Some(self.conn_id), "peer_wire", reason, None);
            }
            WireEvent::GaveUp => {
                out.anomaly(Some(ctx), Some(self.conn_id), "peer_wire", "no_framing_found", None);
            }
            WireEvent::Anomaly { kind, len } => {
                out.anomaly(
                    Some(ctx),
                    Some(self.conn_id),
                    "peer_wire",
                    kind,
                    Some(format!("length {len}")),
                );
            }
        }
    }

    fn on_message(&mut self, side: usize, msg: Message<'_>, wire_len: u64, ctx: FrameCtx, out: &mut ShardOut) {
        self.sides[side].n_msgs += 1;
        if !matches!(
            msg,
            Message::KeepAlive | Message::Unknown { .. } | Message::Skipped { .. }
        ) {
            self.sides[side].n_busy += 1;
        }
        let wl = wire_len;
        let name = msg.name();
        match msg {
            Message::Have { piece } => {
                self.message_row(side, ctx, out, name, |r| {
                    r.piece = Some(piece);
                    r.wire_len = wl;
                });
                self.push_event(side, ctx, SwarmEventKind::Have(piece), out);
            }
            Message::Bitfield(bits) => {
                self.message_row(side, ctx, out, name, |r| {
                    r.length = Some(bits.len() as u32);
                    r.wire_len = wl;
                });
                let max_bytes = self.max_pieces.div_ceil(8) as usize;
                if bits.len() > max_bytes {
                    out.anomaly(Some(ctx), Some(self.conn_id), "peer_wire", "bitfield_too_long", None);
                }
                let mut keep = bits[..bits.len().min(max_bytes)].to_vec();
                // BEP 3: with the torrent known, a bitfield has exactly
                // ceil(n / 8) bytes and no spare bit set. Anything else is
                // counted, and only the torrent's n pieces are kept.
                let n = self.info_hash.and_then(|h| {
                    out.known
                        .get(&h, (ctx.capture, ctx.frame))
                        .or(self.local_meta.as_ref())
                        .map(|m| m.n_pieces)
                });
                if let Some(n) = n.filter(|&n| n > 0) {
                    let want = n.div_ceil(8) as usize;
                    let spare = 0xFFu8.checked_shr(n % 8).filter(|_| n % 8 != 0).unwrap_or(0);
                    let spare_set = keep.get(want - 1).is_some_and(|b| b & spare != 0);
                    if bits.len() != want || spare_set {
                        out.anomaly(
                            Some(ctx),
                            Some(self.conn_id),
                            "peer_wire",
                            "bitfield_wrong_size",
                            Some(format!("{} bytes for {n} pieces", bits.len())),
                        );
                        keep.truncate(want);
                        if let Some(b) = keep.get_mut(want - 1) {
                            *b &= !spare;
                        }
                    }
                }
                self.push_event(side, ctx, SwarmEventKind::Bitfield(keep), out);
            }
            Message::HaveAll => {
                self.message_row(side, ctx, out, name, |r| r.wire_len = wl);
                self.push_event(side, ctx, SwarmEventKind::HaveAll, out);
            }
            Message::HaveNone => {
                self.message_row(side, ctx, out, name, |r| r.wire_len = wl);
                self.push_event(side, ctx, SwarmEventKind::HaveNone, out);
            }
            Message::Piece { piece, begin, length } => {
                // The block's bytes are counted as they pass (PieceData /
                // PieceGap), so a block cut off by a close counts what was
                // sent of it.
                self.end_block(side, ctx, false, out);
                self.sides[side].block_left = u64::from(length);
                self.start_check(side, piece, begin, length, ctx, out);
                self.message_row(side, ctx, out, name, |r| {
                    r.piece = Some(piece);
                    r.begin = Some(begin);
                    r.length = Some(length);
                    r.wire_len = wl;
                });
            }
            Message::Request { piece, begin, length }
            | Message::Cancel { piece, begin, length }
            | Message::Reject { piece, begin, length } => {
                self.message_row(side, ctx, out, name, |r| {
                    r.piece = Some(piece);
                    r.begin = Some(begin);
                    r.length = Some(length);
                    r.wire_len = wl;
                });
            }
            Message::Suggest { piece } | Message::AllowedFast { piece } => {
                self.message_row(side, ctx, out, name, |r| {
                    r.piece = Some(piece);
                    r.wire_len = wl;
                });
            }
            Message::HashRequest { index, length }
            | Message::HashReject { index, length }
            | Message::Hashes { index, length, .. } => {
                self.message_row(side, ctx, out, name, |r| {
                    r.piece = Some(index);
                    r.length = Some(length);
                    r.wire_len = wl;
                });
            }
            Message::Extended { ext_id, payload } => {
                let ext: Cow<'static, str> = if ext_id == 0 {
                    self.on_ltep_handshake(side, payload, ctx, out);
                    Cow::Borrowed("handshake")
                } else {
                    // Messages *to* the other side use the ids it asked for.
                    match self.sides[1 - side].ext_map.name(ext_id) {
                        Some(n) => ext_name(Cow::Borrowed(n)),
                        None => Cow::Owned(format!("id:{ext_id}")),
                    }
                };
                let mut meta_piece = None;
                match &*ext {
                    "ut_metadata" => meta_piece = self.on_ut_metadata(side, payload, ctx, out),
                    "ut_pex" => self.on_ut_pex(side, payload, ctx, out),
                    _ => {}
                }
                // libtorrent's `upload_only` message: one byte, 1 = it
                // wants nothing more.
                if ext == "upload_only" && payload.first().is_some_and(|b| *b == 1) {
                    self.push_event(side, ctx, SwarmEventKind::Claim(Claim::UploadOnly), out);
                }
                if ext == "lt_donthave" {
                    if let Some(p) = payload.get(..4) {
                        let piece = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                        self.push_event(side, ctx, SwarmEventKind::DontHave(piece), out);
                    }
                }
                self.message_row(side, ctx, out, name, |r| {
                    r.ext = Some(ext);
                    r.wire_len = wl;
                    r.piece = meta_piece;
                });
            }
            Message::Port(_)
            | Message::KeepAlive
            | Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::Unknown { .. }
            | Message::Skipped { .. } => {
                self.message_row(side, ctx, out, name, |r| r.wire_len = wl);
            }
        }
    }

    /// BEP 10 handshake: `m`, `v`, `p`, and the rest for the record.
    fn on_ltep_handshake(&mut self, side: usize, payload: &[u8], ctx: FrameCtx, out: &mut ShardOut) {
        self.sides[side].ltep_seen = true;
        if payload.len() > self.max_ltep {
            out.anomaly(
                Some(ctx),
                Some(self.conn_id),
                "peer_wire",
                "ltep_handshake_too_large",
                None,
            );
            return;
        }
        let d = match bencode::parse_dict(payload, &LTEP_LIMITS) {
            Ok((d, _)) => d,
            Err(e) => {
                out.anomaly(
                    Some(ctx),
                    Some(self.conn_id),
                    "peer_wire",
                    e.kind(),
                    Some("BEP 10 handshake".into()),
                );
                return;
            }
        };
        // The first value of each key read below, found in one walk of the
        // dict (a `get` per key walked it once per key: ~19 k instructions
        // a handshake).
        let [mut m, mut v, mut p, mut e, mut metadata_size, mut upload_only] = [None; 6];
        for (k, val) in d.iter() {
            let slot = match k {
                b"m" => &mut m,
                b"v" => &mut v,
                b"p" => &mut p,
                b"e" => &mut e,
                b"metadata_size" => &mut metadata_size,
                b"upload_only" => &mut upload_only,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(val);
            }
        }
        let int = |x: Option<bencode::Value<'_>>| x.and_then(|x| x.as_int());
        let s = &mut self.sides[side];
        if let Some(m) = m.and_then(|m| m.as_dict()) {
            for (k, v) in m.iter() {
                let name = String::from_utf8_lossy(k);
                if let Some(id) = v.as_int() {
                    if (0..=255).contains(&id) {
                        s.ext_map.insert(id as u8, &name);
                        if id != 0 && s.ext_names.len() < crate::proto::peer_wire::MAX_EXTENSIONS {
                            s.ext_names.push(ext_name(name));
                        }
                    }
                }
            }
        }
        if let Some(v) = v.and_then(|v| v.as_bytes()) {
            s.ltep_v = client_from_ltep_v(v);
        }
        if let Some(p) = int(p) {
            if (1..=65535).contains(&p) {
                let before = self.peer_addr(side);
                self.sides[side].listen_port = Some(p as u16);
                // Events this side sent before its `p` that already went
                // out went out at its transport endpoint: a sighting at the
                // listen endpoint lets the swarm state join them (same peer
                // id, or at the end the address's one listen endpoint).
                // That is a mid-stream responder whose BEP 10 handshake came
                // after its messages, and an originator whose `p` came after
                // the connection settled (picked up mid-stream, or its
                // events released by the hold bounds). An originator's `p`
                // before that names every held event itself (`emit`).
                let went_out = side == RESP || self.settled;
                if went_out && self.sides[side].seen_sent && self.peer_addr(side) != before {
                    let seen = self.seen(side, true);
                    self.hold_or_emit(Held { ctx, side, kind: seen }, out);
                }
            }
        }
        // BEP 10 `e`: 1 when the sender prefers MSE encryption.
        let e = int(e).filter(|e| (0..=1).contains(e));
        if let Some(size) = int(metadata_size) {
            if size < 0 || size > i64::from(self.max_metadata) {
                out.anomaly(
                    Some(ctx),
                    Some(self.conn_id),
                    "peer_wire",
                    "metadata_size_too_large",
                    Some(format!("BEP 10 metadata_size {size}")),
                );
            }
        }
        // BEP 21 / libtorrent: `upload_only` 1 in the handshake says the
        // sender wants nothing more.
        if int(upload_only).is_some_and(|u| u == 1) {
            self.push_event(side, ctx, SwarmEventKind::Claim(Claim::UploadOnly), out);
        }
        if let Some(e) = e {
            self.push_event(
                side,
                ctx,
                SwarmEventKind::Traits {
                    prefers_encryption: Some(e == 1),
                    utp: None,
                    from_self: true,
                },
                out,
            );
        }
    }

    /// A piece message header from `side`: follow the piece for
    /// verification when the torrent's hashes are known.
    fn start_check(&mut self, side: usize, piece: u32, begin: u32, length: u32, ctx: FrameCtx, out: &mut ShardOut) {
        let Some(h) = self.info_hash else { return };
        if self.sides[side].check.is_none() {
            let Some(m) = out.known.get(&h, (ctx.capture, ctx.frame)).or(self.local_meta.as_ref()) else {
                return;
            };
            if m.piece_hashes.is_empty() {
                return;
            }
            self.sides[side].check = Some(Box::new(PieceChecker::new(m.clone(), self.check_limits)));
        }
        let Some(c) = self.sides[side].check.as_mut() else {
            return;
        };
        if let Some(kind) = c.start_block(piece, begin, length, &mut out.piece_budget) {
            out.anomaly(
                Some(ctx),
                Some(self.conn_id),
                "peer_wire",
                kind,
                Some(format!("piece {piece} begin {begin} length {length}")),
            );
        }
    }

    fn check_data(&mut self, side: usize, d: &[u8], ctx: FrameCtx, out: &mut ShardOut) {
        let Some(c) = self.sides[side].check.as_mut() else {
            return;
        };
        let (result, anomaly) = c.data(d, &mut out.piece_budget);
        if let Some(kind) = anomaly {
            out.anomaly(Some(ctx), Some(self.conn_id), "peer_wire", kind, None);
        }
        let Some(r) = result else { return };
        let capture = out.capture_text(ctx.capture);
        out.rows.pieces.push(PieceRow {
            ts: Ts(ctx.ts),
            frame: ctx.frame,
            capture,
            conn_id: self.conn_id,
            info_hash: self.info_hash_hex.as_deref().unwrap_or_default().to_string(),
            piece: r.piece,
            sender_ip: self.ends[side].ip().to_string(),
            sender_port: u32::from(self.ends[side].port()),
            receiver_ip: self.ends[1 - side].ip().to_string(),
            receiver_port: u32::from(self.ends[1 - side].port()),
            bytes: r.bytes,
            verified: r.verified,
        });
    }

    /// BEP 9: a data message's piece goes to the run-wide assembler (unless
    /// the torrent's metadata is known already). Returns the metadata piece
    /// index for the message row.
    fn on_ut_metadata(&mut self, _side: usize, payload: &[u8], ctx: FrameCtx, out: &mut ShardOut) -> Option<u32> {
        let msg = match ut_metadata::parse(payload) {
            Ok(m) => m,
            Err(e) => {
                out.anomaly(Some(ctx), Some(self.conn_id), "peer_wire", e.kind(), None);
                return None;
            }
        };
        match msg {
            MetadataMsg::Request { piece } | MetadataMsg::Reject { piece } => Some(piece),
            MetadataMsg::Other { .. } => None,
            MetadataMsg::Data {
                piece,
                total_size,
                data,
            } => {
                if total_size > self.max_metadata {
                    out.anomaly(
                        Some(ctx),
                        Some(self.conn_id),
                        "peer_wire",
                        "metadata_size_too_large",
                        Some(format!("total_size {total_size}")),
                    );
                    return Some(piece);
                }
                if let Some(h) = self.info_hash {
                    if !out.known.contains(&h, (ctx.capture, ctx.frame)) {
                        let room = out.piece_budget.max.saturating_sub(out.piece_budget.used);
                        if total_size as usize == data.len() && self.local_meta.is_none() && data.len() <= room {
                            self.local_meta = local_metadata(h, data);
                            if self.local_meta.is_some() {
                                self.local_meta_charge = data.len();
                                out.piece_budget.used += data.len();
                            }
                        }
                        out.metadata.push(MetadataPiece {
                            ctx,
                            conn_id: self.conn_id,
                            info_hash: h,
                            piece,
                            total_size,
                            data: data.to_vec(),
                        });
                    }
                }
                Some(piece)
            }
        }
    }

    /// BEP 11: `pex_peers` rows, and the added peers as PEX-learned peers
    /// of the torrent with what their flags say.
    fn on_ut_pex(&mut self, side: usize, payload: &[u8], ctx: FrameCtx, out: &mut ShardOut) {
        let msg = match ut_pex::parse(payload) {
            Ok(m) => m,
            Err(kind) => {
                out.anomaly(Some(ctx), Some(self.conn_id), "peer_wire", kind, None);
                return;
            }
        };
        for kind in msg.anomalies() {
            out.anomaly(Some(ctx), Some(self.conn_id), "peer_wire", kind, None);
        }
        let mut entries = Vec::new();
        let left_out = msg.entries(self.max_pex, |e| entries.push(e));
        if left_out > 0 {
            out.anomaly(
                Some(ctx),
                Some(self.conn_id),
                "peer_wire",
                "pex_too_many_entries",
                Some(format!("{left_out} entries left out")),
            );
        }
        for e in entries {
            out.rows.pex_peers.push(PexPeerRow {
                ts: Ts(ctx.ts),
                conn_id: self.conn_id,
                info_hash: self.info_hash_hex.as_deref().map(str::to_string),
                reporter_ip: self.ends[side].ip().to_string(),
                peer_ip: e.addr.ip().to_string(),
                peer_port: u32::from(e.addr.port()),
                action: if e.added { "added" } else { "dropped" },
                flags: e.flags.map(ut_pex::flag_names).unwrap_or_default(),
            });
            let Some(h) = self.info_hash else { continue };
            if !e.added || e.addr.port() == 0 {
                continue;
            }
            let ev = |kind| SwarmEvent {
                ctx,
                conn_id: self.conn_id,
                info_hash: h,
                peer: e.addr,
                kind,
            };
            out.events.push(ev(SwarmEventKind::Learned {
                source: PeerSource::Pex,
            }));
            if let Some(f) = e.flags {
                out.events.push(ev(SwarmEventKind::Traits {
                    prefers_encryption: Some(f & ut_pex::FLAG_ENCRYPTION != 0),
                    utp: Some(f & ut_pex::FLAG_UTP != 0),
                    from_self: false,
                }));
                if f & ut_pex::FLAG_SEED != 0 {
                    out.events.push(ev(SwarmEventKind::Claim(Claim::PexSeed)));
                }
            }
        }
    }
}

/// The info dictionary in `data` when it hashes to `h` (v1) and parses.
fn local_metadata(h: [u8; 20], data: &[u8]) -> Option<Arc<Metainfo>> {
    let digest: [u8; 20] = Sha1::digest(data).into();
    if digest != h {
        return None;
    }
    parse_info(data).ok().map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::pieces::KnownTorrents;
    use crate::proto::peer_wire::HANDSHAKE_PREFIX;

    const IH: [u8; 20] = [0x11; 20];

    fn msg(id: u8, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(id);
        v.extend_from_slice(body);
        v
    }

    fn ext(id: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![id];
        b.extend_from_slice(payload);
        msg(20, &b)
    }

    fn handshake(pid: u8) -> Vec<u8> {
        handshake_for(IH, pid)
    }

    fn handshake_for(ih: [u8; 20], pid: u8) -> Vec<u8> {
        let mut v = HANDSHAKE_PREFIX.to_vec();
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0]);
        v.extend_from_slice(&ih);
        v.extend_from_slice(&[pid; 20]);
        v
    }

    /// The responder's side: handshake and BEP 10 ids (ut_metadata 3, ut_pex 4).
    fn resp_stream() -> Vec<u8> {
        let mut s = handshake(b'R');
        s.extend(ext(0, b"d1:md11:ut_metadatai3e6:ut_pexi4eee"));
        s
    }

    fn meta_data(piece: u32, total: u64, data: &[u8]) -> Vec<u8> {
        let mut p = format!("d8:msg_typei1e5:piecei{piece}e10:total_sizei{total}ee").into_bytes();
        p.extend_from_slice(data);
        ext(3, &p)
    }

    /// The torrent IH of `n` pieces of 16 bytes (piece hashes zero).
    fn known_16b_pieces(n: u32) -> KnownTorrents {
        let mut k = KnownTorrents::default();
        k.insert(Arc::new(Metainfo {
            info_hash_v1: Some(IH),
            info_hash_v2: None,
            name: "t".into(),
            piece_length: 16,
            n_pieces: n,
            total_bytes: 16 * u64::from(n),
            files: Vec::new(),
            private: false,
            trackers: Vec::new(),
            piece_hashes: vec![[0; 20]; n as usize],
        }));
        k
    }

    /// The torrent whose piece 0 is `data` (one piece).
    fn known(data: &[u8]) -> Arc<KnownTorrents> {
        let mut k = KnownTorrents::default();
        k.insert(Arc::new(Metainfo {
            info_hash_v1: Some(IH),
            info_hash_v2: None,
            name: "t".into(),
            piece_length: data.len() as u64,
            n_pieces: 1,
            total_bytes: data.len() as u64,
            files: Vec::new(),
            private: false,
            trackers: Vec::new(),
            piece_hashes: vec![Sha1::digest(data).into()],
        }));
        Arc::new(k)
    }

    /// The originator's side: BEP 10 handshake with a hostile metadata_size
    /// and `e`, a ut_metadata piece, a hostile PEX message, a whole piece.
    fn orig_stream(block: &[u8]) -> Vec<u8> {
        let mut s = handshake(b'O');
        s.extend(ext(
            0,
            b"d1:ei1e1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei2147483648ee",
        ));
        s.extend(meta_data(0, 5, b"hello"));
        let mut pex = b"d5:added13:".to_vec();
        pex.extend([10, 0, 0, 1, 0x1A, 0xE1, 10, 0, 0, 2, 0x1A, 0xE2, 9]);
        pex.extend(b"7:added.f2:");
        pex.extend([0x05, 0x00]);
        pex.push(b'e');
        s.extend(ext(4, &pex));
        let mut p = 0u32.to_be_bytes().to_vec();
        p.extend(0u32.to_be_bytes());
        p.extend_from_slice(block);
        s.extend(msg(7, &p));
        s
    }

    type Outcome = (
        Vec<String>,
        Vec<(u32, Vec<u8>)>,
        Vec<(String, u32, Vec<String>)>,
        Vec<(u32, bool)>,
        usize,
    );

    /// A plain TCP connection 10.0.0.1:40000 -> 10.0.0.2:6881 with its start captured.
    fn test_init(conn_id: u64) -> SessionInit {
        SessionInit {
            conn_id,
            flow_id: conn_id,
            capture: 0,
            transport: ConnTransport::Tcp,
            orig: SocketAddr::from(([10, 0, 0, 1], 40000)),
            resp: SocketAddr::from(([10, 0, 0, 2], 6881)),
            first_ts: 0,
            midstream: false,
        }
    }

    /// Runs a session over the responder's stream and `chunks` of the
    /// originator's; `block` is the torrent's only piece when its hashes
    /// are to be known.
    fn run(chunks: &[&[u8]], block: Option<&[u8]>) -> Outcome {
        let init = test_init(7);
        let mut out = ShardOut {
            known: block.map(known).unwrap_or_default(),
            ..Default::default()
        };
        out.piece_budget.max = 1 << 20;
        let mut s = PeerSession::new(init, &Limits::default(), true);
        let ctx = FrameCtx::default();
        s.feed(RESP, Chunk::Data(&resp_stream()), ctx, &mut out);
        for c in chunks {
            s.feed(ORIG, Chunk::Data(c), ctx, &mut out);
        }
        let _ = s.finish(ctx, &mut out);
        let mut kinds: Vec<String> = out.rows.anomalies.iter().map(|a| a.kind.clone()).collect();
        kinds.sort();
        let meta = out.metadata.iter().map(|m| (m.total_size, m.data.clone())).collect();
        let pex = out
            .rows
            .pex_peers
            .iter()
            .map(|r| (r.peer_ip.clone(), r.peer_port, r.flags.clone()))
            .collect();
        let pieces = out.rows.pieces.iter().map(|r| (r.piece, r.verified)).collect();
        let traits = out
            .events
            .iter()
            .filter(|e| matches!(e.kind, SwarmEventKind::Traits { .. }))
            .count();
        assert_eq!(out.piece_budget.used, 0);
        (kinds, meta, pex, pieces, traits)
    }

    /// A connection built byte by byte, its row and transfers known by
    /// construction. The originator: handshake, `interested`, a piece
    /// message of 300 bytes of which 50 are lost in a capture gap
    /// mid-block. The responder: handshake, a piece message of 100 bytes,
    /// then one of 200 bytes cut off after 120 by the end of the
    /// connection.
    #[test]
    fn a_connections_bytes_and_transfers_by_construction() {
        let piece = |len: usize, fill: u8| {
            let mut p = 3u32.to_be_bytes().to_vec();
            p.extend(16384u32.to_be_bytes());
            p.extend(vec![fill; len]);
            msg(7, &p)
        };
        let mut orig = handshake(b'O');
        orig.extend(msg(2, &[]));
        let o_piece = piece(300, 0xAA);
        // Header (13) and 100 block bytes, 50 lost, 150 more.
        let (o_head, o_rest) = o_piece.split_at(13 + 100);
        let o_tail = &o_rest[50..];
        let mut resp = handshake(b'R');
        resp.extend(piece(100, 0xBB));
        let r_cut = piece(200, 0xCC);
        resp.extend_from_slice(&r_cut[..13 + 120]);

        let mut out = ShardOut::default();
        let mut s = PeerSession::new(test_init(9), &Limits::default(), true);
        let ctx = FrameCtx::default();
        s.feed(RESP, Chunk::Data(&resp), ctx, &mut out);
        let mut o_first = orig.clone();
        o_first.extend_from_slice(o_head);
        s.feed(ORIG, Chunk::Data(&o_first), ctx, &mut out);
        s.feed(ORIG, Chunk::Gap(50), ctx, &mut out);
        s.feed(ORIG, Chunk::Data(o_tail), ctx, &mut out);
        let row = s.finish(ctx, &mut out);
        let want_orig = (68 + 5 + 13 + 300 - 50) as u64;
        let want_resp = (68 + 13 + 100 + 13 + 120) as u64;
        assert_eq!(
            (row.payload_bytes_orig, row.payload_bytes_resp, row.gap_bytes),
            (want_orig, want_resp, 50)
        );
        assert_eq!((row.piece_bytes_orig, row.piece_bytes_resp), (300, 220));
        assert_eq!((row.n_msgs_orig, row.n_msgs_resp), (2, 2));
        assert_eq!((row.unframed_bytes, row.n_resyncs), (0, 0));
        let mut transfers: Vec<_> = out
            .events
            .iter()
            .filter_map(|e| match e.kind {
                SwarmEventKind::Transfer { bytes, cut_off, .. } => Some((e.peer.port(), bytes, cut_off)),
                _ => None,
            })
            .collect();
        transfers.sort_unstable();
        assert_eq!(transfers, [(6881, 100, false), (6881, 120, true), (40000, 300, false)]);
    }

    /// A capture gap of 3 bytes inside the originator's first message
    /// after its handshake (2 bytes of a `have` before it, 4 after): the
    /// framer loses sync and resyncs at the piece message that follows,
    /// having passed over 9 bytes; that resync is counted although the side
    /// framed no message before it (the connection's start was captured).
    #[test]
    fn a_gap_in_the_first_message_costs_one_resync_counted() {
        let have1 = msg(4, &1u32.to_be_bytes());
        let mut p = 3u32.to_be_bytes().to_vec();
        p.extend(0u32.to_be_bytes());
        p.extend(vec![0x5A; 1000]);
        let mut a = handshake(b'O');
        a.extend_from_slice(&have1[..2]);
        let mut b = have1[5..].to_vec();
        b.extend(msg(7, &p));
        b.extend(msg(4, &3u32.to_be_bytes()));
        let mut out = ShardOut::default();
        let mut s = PeerSession::new(test_init(11), &Limits::default(), true);
        let ctx = FrameCtx::default();
        s.feed(RESP, Chunk::Data(&handshake(b'R')), ctx, &mut out);
        s.feed(ORIG, Chunk::Data(&a), ctx, &mut out);
        s.feed(ORIG, Chunk::Gap(3), ctx, &mut out);
        s.feed(ORIG, Chunk::Data(&b), ctx, &mut out);
        let row = s.finish(ctx, &mut out);
        let kinds: Vec<&str> = out.rows.anomalies.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, ["gap_in_message", "resync"]);
        assert_eq!((row.unframed_bytes, row.n_resyncs, row.gap_bytes), (9, 1, 3));
        assert_eq!((row.n_msgs_orig, row.piece_bytes_orig), (2, 1000));
        assert_eq!(row.payload_bytes_orig, (68 + 2 + 4 + 13 + 1000 + 9) as u64);
    }

    /// Bitfields against a known torrent of 10 pieces, `max_pieces` 16 (2
    /// bytes at most): the right size with no spare bit raises nothing and
    /// is kept as sent; a spare bit set (0x20 of 0x60) or a third byte is
    /// `bitfield_wrong_size` and keeps only the torrent's 10 bits; the
    /// third byte is past `max_pieces` too (`bitfield_too_long`).
    #[test]
    fn bitfields_are_checked_against_the_torrent_and_max_pieces() {
        let k = known_16b_pieces(10);
        let limits = Limits {
            max_pieces: 16,
            ..Limits::default()
        };
        let bitfields = |o: &[u8], r: &[u8]| {
            let mut out = ShardOut {
                known: Arc::new(k.clone()),
                ..Default::default()
            };
            let mut s = PeerSession::new(test_init(12), &limits, true);
            let ctx = FrameCtx::default();
            let mut orig = handshake(b'O');
            orig.extend(msg(5, o));
            let mut resp = handshake(b'R');
            resp.extend(msg(5, r));
            s.feed(ORIG, Chunk::Data(&orig), ctx, &mut out);
            s.feed(RESP, Chunk::Data(&resp), ctx, &mut out);
            let _ = s.finish(ctx, &mut out);
            let kinds: Vec<String> = out.rows.anomalies.iter().map(|a| a.kind.clone()).collect();
            let kept: Vec<(u16, Vec<u8>)> = out
                .events
                .iter()
                .filter_map(|e| match &e.kind {
                    SwarmEventKind::Bitfield(b) => Some((e.peer.port(), b.clone())),
                    _ => None,
                })
                .collect();
            (kinds, kept)
        };
        let (kinds, kept) = bitfields(&[0xFF, 0xC0], &[0x80, 0x40]);
        assert!(kinds.is_empty(), "{kinds:?}");
        assert_eq!(kept, [(40000, vec![0xFF, 0xC0]), (6881, vec![0x80, 0x40])]);
        let (kinds, kept) = bitfields(&[0x80, 0x60], &[0xFF, 0xC0, 0x01]);
        assert_eq!(
            kinds,
            ["bitfield_wrong_size", "bitfield_too_long", "bitfield_wrong_size"]
        );
        assert_eq!(kept, [(40000, vec![0x80, 0x40]), (6881, vec![0xFF, 0xC0])]);
    }

    /// A torrent of 16 pieces: its bitfield is two whole bytes with no
    /// spare bit, so every bit may be set and nothing is raised.
    #[test]
    fn a_bitfield_of_whole_bytes_has_no_spare_bits() {
        let k = known_16b_pieces(16);
        let mut out = ShardOut {
            known: Arc::new(k),
            ..Default::default()
        };
        let mut s = PeerSession::new(test_init(16), &Limits::default(), true);
        let ctx = FrameCtx::default();
        let mut orig = handshake(b'O');
        orig.extend(msg(5, &[0xFF, 0xFF]));
        let mut resp = handshake(b'R');
        resp.extend(msg(5, &[0x00, 0x01]));
        s.feed(ORIG, Chunk::Data(&orig), ctx, &mut out);
        s.feed(RESP, Chunk::Data(&resp), ctx, &mut out);
        let _ = s.finish(ctx, &mut out);
        assert!(out.rows.anomalies.is_empty(), "{:?}", out.rows.anomalies);
        let kept: Vec<(u16, Vec<u8>)> = out
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                SwarmEventKind::Bitfield(b) => Some((e.peer.port(), b.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(kept, [(40000, vec![0xFF, 0xFF]), (6881, vec![0x00, 0x01])]);
    }

    /// A handshake naming another torrent than the connection's first one
    /// is counted; the same torrent both ways is not.
    #[test]
    fn a_handshake_for_another_torrent_is_an_info_hash_mismatch() {
        for (other, want) in [([0x22; 20], vec!["info_hash_mismatch"]), (IH, vec![])] {
            let mut out = ShardOut::default();
            let mut s = PeerSession::new(test_init(13), &Limits::default(), true);
            let ctx = FrameCtx::default();
            s.feed(ORIG, Chunk::Data(&handshake(b'O')), ctx, &mut out);
            s.feed(RESP, Chunk::Data(&handshake_for(other, b'R')), ctx, &mut out);
            let row = s.finish(ctx, &mut out);
            let kinds: Vec<&str> = out.rows.anomalies.iter().map(|a| a.kind.as_str()).collect();
            assert_eq!(kinds, want);
            assert_eq!(row.info_hash, Some(IH), "the first handshake's torrent");
            // Each side's first handshake says its transport (TCP: no uTP).
            let utp: Vec<_> = out
                .events
                .iter()
                .filter_map(|e| match e.kind {
                    SwarmEventKind::Traits { utp, .. } => Some(utp),
                    _ => None,
                })
                .collect();
            assert_eq!(utp, [Some(false), Some(false)]);
        }
    }

    /// A connection picked up mid-stream: the resync that finds its first
    /// message boundary is not an anomaly (nothing was lost), a later one
    /// after a capture gap is.
    #[test]
    fn midstream_resyncs_count_only_after_a_framed_message() {
        let init = SessionInit {
            midstream: true,
            ..test_init(14)
        };
        let mut a = vec![0x77; 7];
        for i in 1..=4u32 {
            a.extend(msg(4, &i.to_be_bytes()));
        }
        let have5 = msg(4, &5u32.to_be_bytes());
        a.extend_from_slice(&have5[..2]);
        let mut b = have5[5..].to_vec();
        for i in 6..=9u32 {
            b.extend(msg(4, &i.to_be_bytes()));
        }
        let mut out = ShardOut::default();
        let mut s = PeerSession::new(init, &Limits::default(), true);
        let ctx = FrameCtx::default();
        s.feed(ORIG, Chunk::Data(&a), ctx, &mut out);
        s.feed(ORIG, Chunk::Gap(3), ctx, &mut out);
        s.feed(ORIG, Chunk::Data(&b), ctx, &mut out);
        let row = s.finish(ctx, &mut out);
        let kinds: Vec<&str> = out.rows.anomalies.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, ["gap_in_message", "resync"]);
        assert_eq!((row.n_resyncs, row.gap_bytes), (2, 3));
    }

    /// A connection picked up mid-stream: who connected is a guess, so the
    /// responder's transport port (here 52907) may be ephemeral, and the
    /// BEP 10 `p` it sends (40959) names it as a peer from then on; its
    /// earlier events, at 52907, are followed by a sighting at 40959 that
    /// lets the swarm state join them. With the start captured, the
    /// responder stays at the port it accepted on.
    #[test]
    fn a_midstream_responders_p_names_it_from_then_on() {
        let resp_at = |midstream: bool| {
            let init = SessionInit {
                midstream,
                resp: SocketAddr::from(([10, 0, 0, 2], 52907)),
                ..test_init(16)
            };
            let mut out = ShardOut::default();
            let mut s = PeerSession::new(init, &Limits::default(), true);
            let ctx = FrameCtx::default();
            let piece = |n: usize| {
                let mut p = 0u32.to_be_bytes().to_vec();
                p.extend(0u32.to_be_bytes());
                p.extend(vec![0x5a; n]);
                msg(7, &p)
            };
            let haves =
                |r: std::ops::RangeInclusive<u32>| -> Vec<u8> { r.flat_map(|i| msg(4, &i.to_be_bytes())).collect() };
            // With the start captured, each side opens with its handshake.
            let open = |pid: u8| if midstream { Vec::new() } else { handshake(pid) };
            let mut before = open(b'R');
            before.extend(haves(1..=4));
            before.extend(piece(100));
            s.feed(RESP, Chunk::Data(&before), ctx, &mut out);
            let mut o = open(b'O');
            o.extend(haves(11..=14));
            s.feed(ORIG, Chunk::Data(&o), ctx, &mut out);
            let mut after = ext(0, b"d1:pi40959ee");
            after.extend(haves(5..=5));
            s.feed(RESP, Chunk::Data(&after), ctx, &mut out);
            s.feed(ORIG, Chunk::Data(&piece(300)), ctx, &mut out);
            let row = s.finish(ctx, &mut out);
            assert_eq!((row.resp_port, row.resp_listen_port), (52907, Some(40959)));
            let resp = SocketAddr::from(([10, 0, 0, 2], 52907)).ip();
            let mut seen = Vec::new();
            let mut kinds = Vec::new();
            // Mid-stream: no handshake, no torrent yet (unattributed).
            for e in out.events.iter().chain(out.unattributed.iter().map(|u| &u.event)) {
                match e.kind {
                    SwarmEventKind::Seen { listen, .. } => seen.push((e.peer.ip() == resp, e.peer.port(), listen)),
                    SwarmEventKind::Have(i) if e.peer.ip() == resp => {
                        kinds.push(format!("have {i} at {}", e.peer.port()))
                    }
                    SwarmEventKind::Transfer { to, bytes, .. } => {
                        kinds.push(format!("{bytes} B from {} to {}", e.peer.port(), to.port()))
                    }
                    _ => {}
                }
            }
            (seen, kinds)
        };
        let (seen, kinds) = resp_at(true);
        // (responder?, port, listen): the responder first at its transport
        // port, then at its `p`, as a listen endpoint.
        assert_eq!(seen, [(true, 52907, false), (false, 40000, false), (true, 40959, true)]);
        assert_eq!(
            kinds,
            [
                "have 1 at 52907",
                "have 2 at 52907",
                "have 3 at 52907",
                "have 4 at 52907",
                "100 B from 52907 to 40000",
                "have 5 at 40959",
                "300 B from 40000 to 40959",
            ]
        );
        let (seen, kinds) = resp_at(false);
        assert_eq!(seen, [(true, 52907, true), (false, 40000, false)]);
        assert_eq!(
            kinds,
            [
                "have 1 at 52907",
                "have 2 at 52907",
                "have 3 at 52907",
                "have 4 at 52907",
                "100 B from 52907 to 40000",
                "have 5 at 52907",
                "300 B from 40000 to 52907",
            ]
        );
    }

    /// The originator's `p` (6882; transport port 40000). Picked up
    /// mid-stream, the connection settles at once and the originator's
    /// haves go out at 40000 before its BEP 10 handshake: then a listen
    /// sighting at 6882 follows, and its later events are at 6882. With
    /// the start captured, its `p` comes while its events are still held:
    /// they all go out at 6882, and no second sighting is written.
    #[test]
    fn an_originators_late_p_adds_a_listen_sighting_only_after_its_events_went_out() {
        let orig_at = |midstream: bool| {
            let init = SessionInit {
                midstream,
                ..test_init(17)
            };
            let mut out = ShardOut::default();
            let mut s = PeerSession::new(init, &Limits::default(), true);
            let ctx = FrameCtx::default();
            let haves =
                |r: std::ops::RangeInclusive<u32>| -> Vec<u8> { r.flat_map(|i| msg(4, &i.to_be_bytes())).collect() };
            let open = |pid: u8| if midstream { Vec::new() } else { handshake(pid) };
            let mut o = open(b'O');
            o.extend(haves(1..=3));
            s.feed(ORIG, Chunk::Data(&o), ctx, &mut out);
            let mut r = open(b'R');
            r.extend(haves(11..=11));
            s.feed(RESP, Chunk::Data(&r), ctx, &mut out);
            let mut after = ext(0, b"d1:pi6882ee");
            after.extend(haves(4..=4));
            s.feed(ORIG, Chunk::Data(&after), ctx, &mut out);
            let row = s.finish(ctx, &mut out);
            assert_eq!((row.orig_port, row.orig_listen_port), (40000, Some(6882)));
            let orig = SocketAddr::from(([10, 0, 0, 1], 40000)).ip();
            let mut seen = Vec::new();
            let mut haves_at = Vec::new();
            for e in out.events.iter().chain(out.unattributed.iter().map(|u| &u.event)) {
                match e.kind {
                    SwarmEventKind::Seen { listen, .. } => seen.push((e.peer.ip() == orig, e.peer.port(), listen)),
                    SwarmEventKind::Have(i) if e.peer.ip() == orig => haves_at.push((i, e.peer.port())),
                    _ => {}
                }
            }
            (seen, haves_at)
        };
        let (seen, haves_at) = orig_at(true);
        // (originator?, port, listen)
        assert_eq!(seen, [(true, 40000, false), (false, 6881, false), (true, 6882, true)]);
        assert_eq!(haves_at, [(1, 40000), (2, 40000), (3, 40000), (4, 6882)]);
        let (seen, haves_at) = orig_at(false);
        assert_eq!(seen, [(true, 6882, true), (false, 6881, true)]);
        assert_eq!(haves_at, [(1, 6882), (2, 6882), (3, 6882), (4, 6882)]);
    }

    /// A piece the responder sends and the torrent's hash verifies: its
    /// `pieces` row names the responder as sender, the originator as
    /// receiver.
    #[test]
    fn a_responders_piece_row_names_both_ends() {
        let block: Vec<u8> = (0..500u32).map(|i| (i * 11) as u8).collect();
        let mut out = ShardOut {
            known: known(&block),
            ..Default::default()
        };
        out.piece_budget.max = 1 << 20;
        let mut s = PeerSession::new(test_init(15), &Limits::default(), true);
        let ctx = FrameCtx::default();
        let mut resp = handshake(b'R');
        let mut p = 0u32.to_be_bytes().to_vec();
        p.extend(0u32.to_be_bytes());
        p.extend_from_slice(&block);
        resp.extend(msg(7, &p));
        s.feed(ORIG, Chunk::Data(&handshake(b'O')), ctx, &mut out);
        s.feed(RESP, Chunk::Data(&resp), ctx, &mut out);
        let row = s.finish(ctx, &mut out);
        let got: Vec<_> = out
            .rows
            .pieces
            .iter()
            .map(|r| {
                (
                    r.sender_ip.as_str(),
                    r.sender_port,
                    r.receiver_ip.as_str(),
                    r.receiver_port,
                    r.bytes,
                    r.verified,
                )
            })
            .collect();
        assert_eq!(got, [("10.0.0.2", 6881, "10.0.0.1", 40000, 500, true)]);
        assert_eq!((row.piece_bytes_orig, row.piece_bytes_resp), (0, 500));
    }

    /// An MSE exchange that selected plaintext, as the stream hands it
    /// over: the originator's 96 bytes of key exchange before its
    /// handshake, and 1,000 bytes of the responder that the scan passed
    /// over (800 captured, 200 lost) after its handshake. Stream bytes and
    /// lost bytes by construction.
    #[test]
    fn mse_exchange_and_unkept_bytes_are_stream_bytes() {
        let mut out = ShardOut::default();
        let mut s = PeerSession::new(test_init(10), &Limits::default(), true);
        let ctx = FrameCtx::default();
        s.set_mse_handshake(ORIG, 96);
        s.feed(ORIG, Chunk::Data(&handshake(b'O')), ctx, &mut out);
        s.feed(RESP, Chunk::Data(&handshake(b'R')), ctx, &mut out);
        s.feed_unkept(RESP, 800, 200, ctx, &mut out);
        let row = s.finish(ctx, &mut out);
        assert!(row.mse_handshake);
        assert_eq!(
            (row.payload_bytes_orig, row.payload_bytes_resp, row.gap_bytes),
            (96 + 68, 68 + 800, 200)
        );
        // The framer resumes after all 1,000 bytes, as after one gap: they
        // are bytes it did not frame.
        assert_eq!(row.unframed_bytes, 1000);
    }

    #[test]
    fn upload_only_and_pex_seed_flags_are_claims() {
        // The responder offers libtorrent's upload_only message (id 3); the
        // originator says upload_only in its BEP 10 handshake, then in a
        // message, and its ut_pex flags 10.0.0.9 a seed (0x02), 10.0.0.8
        // not.
        let mut out = ShardOut::default();
        let mut s = PeerSession::new(test_init(7), &Limits::default(), true);
        let ctx = FrameCtx::default();
        let mut r = handshake(b'R');
        r.extend(ext(0, b"d1:md11:upload_onlyi3e6:ut_pexi4eee"));
        s.feed(RESP, Chunk::Data(&r), ctx, &mut out);
        let mut o = handshake(b'O');
        o.extend(ext(0, b"d1:md6:ut_pexi2ee11:upload_onlyi1ee"));
        o.extend(ext(3, &[1]));
        // 0: it wants pieces again; said twice, it is no claim either time.
        o.extend(ext(3, &[0]));
        o.extend(ext(3, &[0]));
        let mut pex = b"d5:added12:".to_vec();
        pex.extend([10, 0, 0, 9, 0x1A, 0xE1, 10, 0, 0, 8, 0x1A, 0xE1]);
        pex.extend(b"7:added.f2:");
        pex.extend([0x02, 0x00]);
        pex.push(b'e');
        o.extend(ext(4, &pex));
        s.feed(ORIG, Chunk::Data(&o), ctx, &mut out);
        let _ = s.finish(ctx, &mut out);
        let mut claims: Vec<(SocketAddr, String)> = out
            .events
            .iter()
            .filter_map(|e| match e.kind {
                SwarmEventKind::Claim(c) => Some((e.peer, format!("{c:?}"))),
                _ => None,
            })
            .collect();
        claims.sort();
        let orig = SocketAddr::from(([10, 0, 0, 1], 40000));
        let seed = SocketAddr::from(([10, 0, 0, 9], 6881));
        assert_eq!(
            claims,
            [
                (orig, "UploadOnly".to_string()),
                (orig, "UploadOnly".to_string()),
                (seed, "PexSeed".to_string())
            ]
        );
    }

    #[test]
    fn held_events_are_registered_and_released_after_max_hold() {
        // The originator announces BEP 10 and never sends its handshake: its
        // events are held, registered by frame in `held_since`, and released
        // by a sweep once older than `max_hold_us`, or by a later packet.
        let limits = Limits::default();
        let at = |ts: i64, frame: u64| FrameCtx { ts, frame, capture: 0 };
        for by_packet in [false, true] {
            let mut out = ShardOut::default();
            let mut s = PeerSession::new(test_init(7), &limits, true);
            s.feed(RESP, Chunk::Data(&resp_stream()), at(0, 1), &mut out);
            let mut o = handshake(b'O');
            o.extend(msg(5, &[0xff]));
            s.feed(ORIG, Chunk::Data(&o), at(1_000, 2), &mut out);
            // The responder's handshake (frame 1, at 0 µs) is the oldest.
            assert_eq!(out.oldest_held(), Some((0, 1)), "by_packet {by_packet}");
            assert!(out.events.is_empty());
            s.release_stale(limits.max_hold_us, &mut out);
            assert_eq!(out.oldest_held(), Some((0, 1)), "not older than max_hold_us yet");
            let later = 1 + limits.max_hold_us;
            if by_packet {
                s.feed(ORIG, Chunk::Data(&msg(0, &[])), at(later, 3), &mut out);
            // choke
            } else {
                s.release_stale(later, &mut out);
            }
            assert_eq!(out.oldest_held(), None);
            let frames: Vec<u64> = out.events.iter().map(|e| e.ctx.frame).collect();
            assert_eq!(frames.first(), Some(&1), "{frames:?}");
            assert!(frames.windows(2).all(|w| w[0] <= w[1]), "{frames:?}");
            assert!(out
                .events
                .iter()
                .any(|e| matches!(e.kind, SwarmEventKind::Bitfield(_)) && e.ctx.frame == 2));
        }
    }

    #[test]
    fn hostile_extension_messages_are_counted_and_every_split_agrees() {
        let block: Vec<u8> = (0..700u32).map(|i| (i * 13) as u8).collect();
        let s = orig_stream(&block);
        let whole = run(&[&s], Some(&block));
        let (kinds, meta, pex, pieces, traits) = whole.clone();
        assert_eq!(
            kinds,
            ["metadata_size_too_large", "pex_ipv4_list_not_multiple_of_6"],
            "2^31 metadata_size and a 13-byte added list are counted"
        );
        // The torrent's metadata is known: its ut_metadata pieces are not
        // collected again.
        assert!(meta.is_empty());
        assert_eq!(
            pex,
            [
                (
                    "10.0.0.1".to_string(),
                    6881,
                    vec!["encryption".to_string(), "utp".to_string()]
                ),
                ("10.0.0.2".to_string(), 6882, Vec::new()),
            ]
        );
        assert_eq!(pieces, [(0, true)]);
        // BEP 10 `e` (1), each side's transport (2), two PEX flag bytes (2).
        assert_eq!(traits, 5);
        for cut in 0..=s.len() {
            let (x, y) = s.split_at(cut);
            assert_eq!(run(&[x, y], Some(&block)), whole, "cut at {cut}");
        }
        // A flipped block byte fails the piece, and nothing else changes.
        let mut bad = s.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let (_, _, _, pieces, _) = run(&[&bad], Some(&block));
        assert_eq!(pieces, [(0, false)]);
    }

    #[test]
    fn a_2_pow_31_metadata_piece_is_refused_not_collected() {
        let mut s = handshake(b'O');
        s.extend(meta_data(0, 1 << 31, &[0u8; 16384]));
        s.extend(meta_data(0, 5, b"hell"));
        s.extend(meta_data(0, 5, b"hello"));
        let (kinds, meta, _, pieces, _) = run(&[&s], None);
        assert_eq!(kinds, ["metadata_size_too_large", "ut_metadata_bad_piece"]);
        // Only the well-formed piece goes to the assembler; no hashes, no
        // verification.
        assert_eq!(meta, [(5, b"hello".to_vec())]);
        assert!(pieces.is_empty());
    }

    #[test]
    fn metadata_carried_on_the_connection_verifies_its_pieces_at_once() {
        let block: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let digest: [u8; 20] = Sha1::digest(&block).into();
        let mut info = b"d6:lengthi1000e4:name1:t12:piece lengthi1000e6:pieces20:".to_vec();
        info.extend_from_slice(&digest);
        info.push(b'e');
        let ih: [u8; 20] = Sha1::digest(&info).into();
        let mut resp = handshake_for(ih, b'R');
        resp.extend(ext(0, b"d1:md11:ut_metadatai3eee"));
        let mut orig = handshake_for(ih, b'O');
        orig.extend(meta_data(0, info.len() as u64, &info));
        let mut p = 0u32.to_be_bytes().to_vec();
        p.extend(0u32.to_be_bytes());
        p.extend_from_slice(&block);
        orig.extend(msg(7, &p));
        let init = test_init(1);
        let run = |budget: usize| {
            let mut out = ShardOut::default();
            out.piece_budget.max = budget;
            let mut s = PeerSession::new(init, &Limits::default(), true);
            let ctx = FrameCtx::default();
            s.feed(RESP, Chunk::Data(&resp), ctx, &mut out);
            s.feed(ORIG, Chunk::Data(&orig), ctx, &mut out);
            let held = out.piece_budget.used;
            let _ = s.finish(ctx, &mut out);
            assert_eq!(out.metadata.len(), 1, "the piece still goes to the assembler");
            assert_eq!(out.piece_budget.used, 0, "returned at the end");
            let got: Vec<_> = out.rows.pieces.iter().map(|r| (r.piece, r.bytes, r.verified)).collect();
            (held, got)
        };
        // The dictionary is charged to the shard's budget while the
        // connection lives...
        assert_eq!(run(1 << 20), (info.len(), vec![(0, 1000, true)]));
        // ...and without room for it, the connection waits for the
        // run-wide assembler like any other.
        assert_eq!(run(info.len() - 1), (0, vec![]));
    }
}
