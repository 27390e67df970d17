//! BitTorrent peer-wire framing (BEP 3, with BEP 6 fast, BEP 10 extension
//! protocol, BEP 52 v2 hash messages) for one direction of a reassembled stream.
//!
//! The framer is fed the stream in order as [`Chunk`]s and reports what it sees
//! through a callback, synchronously, so the caller can tag each event with the
//! packet that completed it. It never copies piece payload: a piece message's
//! 13-byte header is decoded and its block is only counted.
//!
//! Invariants:
//! - Output depends only on the byte stream and the positions of gaps, never on
//!   how the stream was cut into chunks (tests feed every split).
//! - Memory per direction is bounded by [`PeerWireLimits`]: a message body is
//!   buffered only when it is not contiguous in one chunk, and only up to
//!   `max_buffered_body`; longer bodies are skipped and counted.
//! - A gap inside a piece block keeps the framing (the length prefix says where
//!   the next message starts). A gap anywhere else, an implausible length, or a
//!   stream picked up mid-connection puts the framer in *hunt* mode: it scans
//!   for a message header that is plausible and is followed by another
//!   plausible header, and resumes framing there. Hunting is bounded in bytes.

use crate::stream::Chunk;

/// `\x13BitTorrent protocol`, the first 20 bytes of a plaintext handshake.
pub const HANDSHAKE_PREFIX: &[u8; 20] = b"\x13BitTorrent protocol";
/// Length of the full handshake: prefix, 8 reserved bytes, info_hash, peer_id.
pub const HANDSHAKE_LEN: usize = 68;

/// Bounds on what one direction of a peer-wire stream may make us hold.
#[derive(Debug, Clone, Copy)]
pub struct PeerWireLimits {
    /// Longest message accepted as framed. libtorrent accepts messages up to
    /// 1 MiB (its receive buffer cap); full ut_metadata pieces (16 KiB of
    /// metadata plus the bencoded header) and bitfields of torrents with up to
    /// 8 M pieces fit. A longer length prefix is treated as lost framing.
    pub max_message_len: u32,
    /// Largest body copied aside when a message is split across packets. Bodies
    /// are needed for bitfield, extended and hash messages only; a larger one
    /// is skipped (counted) rather than buffered.
    pub max_buffered_body: u32,
    /// How many bytes hunt mode may scan for a message boundary before the
    /// direction is given up as not peer wire. A mid-stream pickup finds a
    /// boundary within one block (16 KiB); 4 MiB allows for large blocks and
    /// several false candidates while bounding CPU on encrypted or foreign data.
    pub max_hunt_bytes: u64,
    /// Longest look-ahead a hunt candidate may need to be confirmed by the next
    /// header. Real clients send 16 KiB blocks; the window must hold one block,
    /// its header and the next header (16 KiB + 18 bytes), and it is all we
    /// buffer per hunting direction.
    pub max_hunt_window: u32,
    /// Largest block a piece/request message may carry to count as plausible
    /// while hunting (BEP 3 clients use 16 KiB; some accept up to 128 KiB).
    pub max_block_len: u32,
}

impl Default for PeerWireLimits {
    fn default() -> Self {
        PeerWireLimits {
            max_message_len: 1 << 20,
            max_buffered_body: 1 << 20,
            max_hunt_bytes: 4 << 20,
            max_hunt_window: 16384 + 64,
            max_block_len: 128 * 1024,
        }
    }
}

/// One decoded peer-wire message. Payload slices borrow from the stream chunk
/// (or from the framer's body buffer) and live only for the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have {
        piece: u32,
    },
    Bitfield(&'a [u8]),
    Request {
        piece: u32,
        begin: u32,
        length: u32,
    },
    /// Header of a piece message; `length` is the block length. The block
    /// itself is reported as [`WireEvent::PieceData`] / [`WireEvent::PieceGap`].
    Piece {
        piece: u32,
        begin: u32,
        length: u32,
    },
    Cancel {
        piece: u32,
        begin: u32,
        length: u32,
    },
    Port(u16),
    Suggest {
        piece: u32,
    },
    HaveAll,
    HaveNone,
    Reject {
        piece: u32,
        begin: u32,
        length: u32,
    },
    AllowedFast {
        piece: u32,
    },
    /// BEP 10: extension message id (0 = handshake) and its payload.
    Extended {
        ext_id: u8,
        payload: &'a [u8],
    },
    /// BEP 52 hash request / reject: pieces root, base layer, index, length,
    /// proof layers.
    HashRequest {
        index: u32,
        length: u32,
    },
    Hashes {
        index: u32,
        length: u32,
        n_hashes: u32,
    },
    HashReject {
        index: u32,
        length: u32,
    },
    /// A framed message with an id this module does not know, or whose length
    /// does not fit its id (kept, counted, skipped).
    Unknown {
        id: u8,
        len: u32,
    },
    /// A message whose body was too large to buffer: framed and skipped.
    Skipped {
        id: u8,
        len: u32,
    },
}

impl Message<'_> {
    /// The `msg` column value (CONTRACT.md).
    pub fn name(&self) -> &'static str {
        match self {
            Message::KeepAlive => "keepalive",
            Message::Choke => "choke",
            Message::Unchoke => "unchoke",
            Message::Interested => "interested",
            Message::NotInterested => "not_interested",
            Message::Have { .. } => "have",
            Message::Bitfield(_) => "bitfield",
            Message::Request { .. } => "request",
            Message::Piece { .. } => "piece",
            Message::Cancel { .. } => "cancel",
            Message::Port(_) => "port",
            Message::Suggest { .. } => "suggest",
            Message::HaveAll => "have_all",
            Message::HaveNone => "have_none",
            Message::Reject { .. } => "reject",
            Message::AllowedFast { .. } => "allowed_fast",
            Message::Extended { .. } => "extended",
            Message::HashRequest { .. } => "hash_request",
            Message::Hashes { .. } => "hashes",
            Message::HashReject { .. } => "hash_reject",
            Message::Unknown { .. } | Message::Skipped { .. } => "unknown",
        }
    }
}

/// What the framer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireEvent<'a> {
    /// The plaintext handshake. `peer_id` is `None` when the stream ended or
    /// lost bytes before the last 20 bytes arrived.
    Handshake {
        reserved: [u8; 8],
        info_hash: [u8; 20],
        peer_id: Option<[u8; 20]>,
    },
    /// The stream does not start with a plaintext handshake; the framer is
    /// now hunting. `first` holds up to the first 20 bytes for classification.
    NoHandshake,
    /// A message; `wire_len` is its length on the wire (prefix included).
    Message { msg: Message<'a>, wire_len: u64 },
    /// Bytes of a piece block seen (borrowed from the chunk; for counting,
    /// and hashing when piece hashes are known).
    PieceData(&'a [u8]),
    /// Bytes of a piece block lost in a gap (framing kept).
    PieceGap(u64),
    /// Framing found again after `skipped_bytes` of unframed data (mid-stream
    /// pickup or after a gap). Always precedes the first message it found.
    Resync { skipped_bytes: u64 },
    /// Framing lost; `reason` names why (anomaly kind).
    LostSync { reason: &'static str },
    /// Hunt gave up after `max_hunt_bytes`: the rest is not parsed.
    GaveUp,
    /// A skipped message, an unknown id, a length that does not fit its id.
    Anomaly { kind: &'static str, len: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing seen yet: the first byte decides (0x13 starts a handshake;
    /// otherwise hunt when the stream start was not captured).
    Start { midstream: bool },
    /// Expecting the 68-byte handshake (stream start).
    Handshake,
    /// Reading a message header into `acc` (4-byte length, id, up to 8 bytes).
    Header,
    /// Accumulating a body of `len - 1` bytes for message `id`.
    Body { id: u8, len: u32 },
    /// Discarding `remaining` bytes of a framed message.
    Skip { remaining: u64 },
    /// Counting `remaining` bytes of a piece block.
    PieceBlock { remaining: u64 },
    /// Looking for a message boundary.
    Hunt,
    /// Hunt gave up; everything else is ignored.
    Dead,
}

/// Per-direction counters kept by the framer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FramerStats {
    pub n_msgs: u64,
    /// Payload bytes of framed messages (prefix included), handshake included.
    pub framed_bytes: u64,
    pub piece_bytes: u64,
    pub piece_gap_bytes: u64,
    /// Bytes passed over while hunting or after giving up.
    pub unframed_bytes: u64,
    pub n_resyncs: u64,
    pub n_lost_sync: u64,
}

/// Context that makes plausibility checks sharper when it is known.
#[derive(Debug, Clone, Copy, Default)]
pub struct TorrentShape {
    pub n_pieces: Option<u32>,
    pub piece_length: Option<u32>,
}

/// Framer for one direction of a peer-wire stream.
#[derive(Debug, Clone)]
pub struct PeerWireFramer {
    limits: PeerWireLimits,
    state: State,
    /// Header bytes, message body, handshake, or hunt window, by state.
    acc: Vec<u8>,
    /// Hunt: bytes passed over since hunting began (for Resync and the limit).
    hunt_skipped: u64,
    /// Hunt: index in `acc` of the next candidate position.
    hunt_pos: usize,
    shape: TorrentShape,
    stats: FramerStats,
    /// Hunting may jump over offsets that cannot start a header (see `hunt`).
    fast_skip: bool,
}

/// Verdict on a candidate message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plausible {
    Yes,
    No,
    /// More bytes are needed to decide.
    NeedMore,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

impl PeerWireFramer {
    /// A framer for a stream whose start was captured: it expects a handshake.
    pub fn new(limits: PeerWireLimits) -> Self {
        Self::with_state(limits, State::Handshake)
    }

    /// A framer for a stream picked up mid-connection: it hunts from the start.
    pub fn new_midstream(limits: PeerWireLimits) -> Self {
        Self::with_state(limits, State::Hunt)
    }

    /// A framer that looks at the first byte: a handshake when it is 0x13
    /// (clients write the handshake in one segment, so a captured stream
    /// start shows it even when the SYN was missed); otherwise a handshake is
    /// still expected when the start was captured (`midstream` false), and
    /// boundaries are hunted for when it was not.
    pub fn new_auto(limits: PeerWireLimits, midstream: bool) -> Self {
        Self::with_state(limits, State::Start { midstream })
    }

    /// A framer that starts directly at a message boundary (after a handshake
    /// seen elsewhere, e.g. behind an MSE exchange that chose plaintext).
    pub fn new_after_handshake(limits: PeerWireLimits) -> Self {
        Self::with_state(limits, State::Header)
    }

    fn with_state(limits: PeerWireLimits, state: State) -> Self {
        PeerWireFramer {
            limits,
            state,
            acc: Vec::new(),
            hunt_skipped: 0,
            hunt_pos: 0,
            shape: TorrentShape::default(),
            stats: FramerStats::default(),
            fast_skip: limits.max_message_len < 1 << 24,
        }
    }

    pub fn set_shape(&mut self, shape: TorrentShape) {
        self.shape = shape;
    }

    pub fn stats(&self) -> &FramerStats {
        &self.stats
    }

    /// True while the framer is in sync with message boundaries.
    pub fn in_sync(&self) -> bool {
        !matches!(
            self.state,
            State::Hunt | State::Dead | State::Handshake | State::Start { .. }
        )
    }

    pub fn is_dead(&self) -> bool {
        self.state == State::Dead
    }

    /// Bytes currently held (for memory accounting).
    pub fn buffered_bytes(&self) -> usize {
        self.acc.capacity()
    }

    /// Feeds one chunk of the stream.
    pub fn feed(&mut self, chunk: Chunk<'_>, out: &mut impl FnMut(WireEvent<'_>)) {
        match chunk {
            Chunk::Data(d) => self.feed_data(d, out),
            Chunk::Gap(n) => self.gap(n, out),
        }
    }

    /// End of stream: a partial handshake is still reported.
    pub fn finish(&mut self, out: &mut impl FnMut(WireEvent<'_>)) {
        if self.state == State::Hunt {
            self.hunt_at_boundary(out);
        }
        if self.state == State::Handshake && self.acc.len() >= 48 {
            self.emit_partial_handshake(out);
        }
        self.acc = Vec::new();
        self.state = State::Dead;
    }

    fn emit_partial_handshake(&mut self, out: &mut impl FnMut(WireEvent<'_>)) {
        let mut reserved = [0u8; 8];
        let mut info_hash = [0u8; 20];
        if let (Some(r), Some(h)) = (self.acc.get(20..28), self.acc.get(28..48)) {
            reserved.copy_from_slice(r);
            info_hash.copy_from_slice(h);
            self.stats.framed_bytes += 48;
            out(WireEvent::Handshake {
                reserved,
                info_hash,
                peer_id: None,
            });
        }
    }

    fn gap(&mut self, n: u64, out: &mut impl FnMut(WireEvent<'_>)) {
        if n == 0 {
            return;
        }
        if self.state == State::Hunt {
            // The stream breaks here: a candidate that ends exactly at the
            // break is as good as one confirmed by a following header.
            self.hunt_at_boundary(out);
        }
        match self.state {
            State::Start { .. } => {
                self.stats.unframed_bytes += n;
                self.hunt_skipped = n;
                self.state = State::Hunt;
            }
            State::PieceBlock { remaining } if n <= remaining => {
                self.stats.piece_gap_bytes += n;
                out(WireEvent::PieceGap(n));
                let left = remaining - n;
                self.state = if left == 0 {
                    State::Header
                } else {
                    State::PieceBlock { remaining: left }
                };
            }
            State::Skip { remaining } if n <= remaining => {
                let left = remaining - n;
                self.state = if left == 0 {
                    State::Header
                } else {
                    State::Skip { remaining: left }
                };
            }
            State::Dead => self.stats.unframed_bytes += n,
            State::Hunt => {
                // Candidates spanning the gap are impossible now: restart the
                // window after it.
                self.stats.unframed_bytes += n;
                self.hunt_skipped += self.acc.len() as u64 + n;
                self.acc.clear();
                self.hunt_pos = 0;
                self.check_hunt_budget(out);
            }
            State::Handshake => {
                if self.acc.len() >= 48 {
                    self.emit_partial_handshake(out);
                }
                self.lose_sync("gap_in_handshake", n, out);
            }
            State::PieceBlock { remaining } => {
                self.stats.piece_gap_bytes += remaining;
                out(WireEvent::PieceGap(remaining));
                self.lose_sync("gap_past_message", n - remaining, out);
            }
            State::Header | State::Body { .. } | State::Skip { .. } => {
                self.lose_sync("gap_in_message", n, out);
            }
        }
    }

    /// Enters hunt mode; `skipped` bytes are already known to be lost.
    fn lose_sync(&mut self, reason: &'static str, skipped: u64, out: &mut impl FnMut(WireEvent<'_>)) {
        self.stats.n_lost_sync += 1;
        self.stats.unframed_bytes += skipped + self.acc.len() as u64;
        self.hunt_skipped = skipped + self.acc.len() as u64;
        self.acc.clear();
        self.hunt_pos = 0;
        self.state = State::Hunt;
        out(WireEvent::LostSync { reason });
    }

    fn check_hunt_budget(&mut self, out: &mut impl FnMut(WireEvent<'_>)) {
        if self.hunt_skipped > self.limits.max_hunt_bytes {
            self.state = State::Dead;
            self.acc = Vec::new();
            out(WireEvent::GaveUp);
        }
    }

    fn feed_data(&mut self, mut d: &[u8], out: &mut impl FnMut(WireEvent<'_>)) {
        while !d.is_empty() {
            match self.state {
                State::Dead => {
                    self.stats.unframed_bytes += d.len() as u64;
                    return;
                }
                State::Start { midstream } => {
                    self.state = if d.first() == Some(&HANDSHAKE_PREFIX[0]) || !midstream {
                        State::Handshake
                    } else {
                        State::Hunt
                    };
                }
                State::Handshake => d = self.handshake(d, out),
                State::PieceBlock { remaining } => {
                    let take = remaining.min(d.len() as u64);
                    self.stats.piece_bytes += take;
                    self.stats.framed_bytes += take;
                    out(WireEvent::PieceData(d.get(..take as usize).unwrap_or_default()));
                    let left = remaining - take;
                    self.state = if left == 0 {
                        State::Header
                    } else {
                        State::PieceBlock { remaining: left }
                    };
                    d = d.get(take as usize..).unwrap_or_default();
                }
                State::Skip { remaining } => {
                    let take = remaining.min(d.len() as u64);
                    self.stats.framed_bytes += take;
                    let left = remaining - take;
                    self.state = if left == 0 {
                        State::Header
                    } else {
                        State::Skip { remaining: left }
                    };
                    d = d.get(take as usize..).unwrap_or_default();
                }
                State::Header => d = self.header(d, out),
                State::Body { id, len } => d = self.body(id, len, d, out),
                State::Hunt => d = self.hunt(d, out),
            }
        }
    }

    fn handshake<'d>(&mut self, d: &'d [u8], out: &mut impl FnMut(WireEvent<'_>)) -> &'d [u8] {
        let want = HANDSHAKE_LEN - self.acc.len();
        let take = want.min(d.len());
        let (head, rest) = d.split_at(take);
        self.acc.extend_from_slice(head);
        // Check the prefix as soon as its bytes are there, so a foreign stream
        // is recognised on its first byte.
        let n = self.acc.len().min(HANDSHAKE_PREFIX.len());
        if self.acc.get(..n) != HANDSHAKE_PREFIX.get(..n) {
            out(WireEvent::NoHandshake);
            // The bytes may still hold peer-wire messages (a stream whose
            // handshake was not captured): hunt from the first byte.
            let held = std::mem::take(&mut self.acc);
            self.state = State::Hunt;
            self.hunt_skipped = 0;
            self.hunt_pos = 0;
            self.feed_data(&held, out);
            return rest;
        }
        if self.acc.len() == HANDSHAKE_LEN {
            let a = &self.acc;
            let mut reserved = [0u8; 8];
            let mut info_hash = [0u8; 20];
            let mut peer_id = [0u8; 20];
            reserved.copy_from_slice(&a[20..28]);
            info_hash.copy_from_slice(&a[28..48]);
            peer_id.copy_from_slice(&a[48..68]);
            self.acc.clear();
            self.stats.framed_bytes += HANDSHAKE_LEN as u64;
            out(WireEvent::Handshake {
                reserved,
                info_hash,
                peer_id: Some(peer_id),
            });
            self.state = State::Header;
        }
        rest
    }

    /// How many header bytes message `id` needs before it can be decided on.
    fn header_need(len: u32, id: Option<u8>) -> usize {
        if len == 0 {
            return 4;
        }
        match id {
            None => 5,
            Some(7) => 13,
            Some(_) => 5,
        }
    }

    fn header<'d>(&mut self, d: &'d [u8], out: &mut impl FnMut(WireEvent<'_>)) -> &'d [u8] {
        // Fast path: the whole header is in this chunk and nothing is held.
        if self.acc.is_empty() {
            if let Some(len) = be32(d, 0) {
                let need = Self::header_need(len, d.get(4).copied());
                if d.len() >= need {
                    let consumed = self.on_header(d, out);
                    return d.get(consumed..).unwrap_or_default();
                }
            }
        }
        // Slow path: gather the header in `acc` (at most 13 bytes).
        let mut rest = d;
        loop {
            let len = be32(&self.acc, 0);
            let need = match len {
                None => 4,
                Some(l) => Self::header_need(l, self.acc.get(4).copied()),
            };
            if self.acc.len() >= need {
                let hdr = std::mem::take(&mut self.acc);
                let consumed = self.on_header(&hdr, out);
                // Bytes gathered but not part of the header's decision (the
                // body of a malformed piece, the id after an oversized
                // length) go through the new state exactly as the fast path
                // would have sent them.
                if let Some(left) = hdr.get(consumed..) {
                    if !left.is_empty() {
                        let left = left.to_vec();
                        self.feed_data(&left, out);
                    }
                }
                return rest;
            }
            let Some((&b, r)) = rest.split_first() else {
                return rest;
            };
            self.acc.push(b);
            rest = r;
        }
    }

    /// Decides on a complete header at the start of `h`; returns bytes used
    /// from `h` (the header; a body contained in `h` too when whole).
    fn on_header(&mut self, h: &[u8], out: &mut impl FnMut(WireEvent<'_>)) -> usize {
        let Some(len) = be32(h, 0) else { return 0 };
        if len == 0 {
            self.emit_msg(Message::KeepAlive, 4, out);
            return 4;
        }
        if len > self.limits.max_message_len {
            self.lose_sync("oversized_length", 0, out);
            // The 4 prefix bytes themselves are passed over.
            self.stats.unframed_bytes += 4;
            self.hunt_skipped += 4;
            return 4;
        }
        let Some(&id) = h.get(4) else { return 0 };
        let wire_len = u64::from(len) + 4;
        if id == 7 {
            let (Some(piece), Some(begin)) = (be32(h, 5), be32(h, 9)) else {
                return 0;
            };
            if len < 9 {
                // Too short to be a piece: skip what the prefix says.
                out(WireEvent::Anomaly {
                    kind: "bad_piece_length",
                    len,
                });
                self.emit_msg(Message::Unknown { id, len }, wire_len, out);
                self.stats.framed_bytes -= wire_len;
                self.stats.framed_bytes += 5;
                self.state = State::Skip {
                    remaining: u64::from(len) - 1,
                };
                return 5;
            }
            let block = len - 9;
            self.stats.n_msgs += 1;
            self.stats.framed_bytes += 13;
            out(WireEvent::Message {
                msg: Message::Piece {
                    piece,
                    begin,
                    length: block,
                },
                wire_len,
            });
            self.state = if block == 0 {
                State::Header
            } else {
                State::PieceBlock {
                    remaining: u64::from(block),
                }
            };
            return 13;
        }
        let body_len = len - 1;
        if let Some(body) = h.get(5..5 + body_len as usize) {
            // Whole message contiguous: decode in place, no copy.
            self.decode(id, len, body, out);
            self.state = State::Header;
            return 5 + body_len as usize;
        }
        if body_len > self.limits.max_buffered_body {
            out(WireEvent::Anomaly {
                kind: "message_too_large_to_buffer",
                len,
            });
            self.emit_msg(Message::Skipped { id, len }, 0, out);
            self.stats.framed_bytes += 5;
            self.state = State::Skip {
                remaining: u64::from(body_len),
            };
            return 5;
        }
        self.stats.framed_bytes += 5;
        self.state = State::Body { id, len };
        5
    }

    fn body<'d>(&mut self, id: u8, len: u32, d: &'d [u8], out: &mut impl FnMut(WireEvent<'_>)) -> &'d [u8] {
        let body_len = (len - 1) as usize;
        let want = body_len - self.acc.len();
        let take = want.min(d.len());
        let (head, rest) = d.split_at(take);
        self.acc.extend_from_slice(head);
        if self.acc.len() == body_len {
            let body = std::mem::take(&mut self.acc);
            // framed_bytes already holds the 5 header bytes.
            self.stats.framed_bytes -= 5;
            self.decode(id, len, &body, out);
            let mut body = body;
            body.clear();
            if body.capacity() <= 64 * 1024 {
                self.acc = body;
            }
            self.state = State::Header;
        }
        rest
    }

    fn emit_msg(&mut self, msg: Message<'_>, wire_len: u64, out: &mut impl FnMut(WireEvent<'_>)) {
        self.stats.n_msgs += 1;
        self.stats.framed_bytes += wire_len;
        out(WireEvent::Message { msg, wire_len });
    }

    /// Decodes a whole non-piece message from its body.
    fn decode(&mut self, id: u8, len: u32, body: &[u8], out: &mut impl FnMut(WireEvent<'_>)) {
        let wire_len = u64::from(len) + 4;
        let n = body.len();
        let msg = match (id, n) {
            (0, 0) => Message::Choke,
            (1, 0) => Message::Unchoke,
            (2, 0) => Message::Interested,
            (3, 0) => Message::NotInterested,
            (4, 4) => Message::Have {
                piece: be32(body, 0).unwrap_or(0),
            },
            (5, _) => Message::Bitfield(body),
            (6, 12) | (8, 12) | (16, 12) => {
                let piece = be32(body, 0).unwrap_or(0);
                let begin = be32(body, 4).unwrap_or(0);
                let length = be32(body, 8).unwrap_or(0);
                match id {
                    6 => Message::Request { piece, begin, length },
                    8 => Message::Cancel { piece, begin, length },
                    _ => Message::Reject { piece, begin, length },
                }
            }
            (9, 2) => Message::Port(u16::from_be_bytes([body[0], body[1]])),
            (13, 4) => Message::Suggest {
                piece: be32(body, 0).unwrap_or(0),
            },
            (14, 0) => Message::HaveAll,
            (15, 0) => Message::HaveNone,
            (17, 4) => Message::AllowedFast {
                piece: be32(body, 0).unwrap_or(0),
            },
            (20, 1..) => Message::Extended {
                ext_id: body[0],
                payload: &body[1..],
            },
            // BEP 52: pieces root (32), base layer, index, length, proof layers.
            (21, 48) | (23, 48) => {
                let index = be32(body, 36).unwrap_or(0);
                let length = be32(body, 40).unwrap_or(0);
                if id == 21 {
                    Message::HashRequest { index, length }
                } else {
                    Message::HashReject { index, length }
                }
            }
            (22, 48..) if (n - 48).is_multiple_of(32) => Message::Hashes {
                index: be32(body, 36).unwrap_or(0),
                length: be32(body, 40).unwrap_or(0),
                n_hashes: ((n - 48) / 32) as u32,
            },
            _ => {
                let known = matches!(id, 0..=9 | 13..=17 | 20..=23);
                out(WireEvent::Anomaly {
                    kind: if known {
                        "bad_message_length"
                    } else {
                        "unknown_message_id"
                    },
                    len,
                });
                Message::Unknown { id, len }
            }
        };
        self.emit_msg(msg, wire_len, out);
    }

    /// Plausibility of a message header at the start of `h`, strict enough to
    /// be trusted when hunting. `candidate` is true for the first header of a
    /// resync (keep-alives are too weak to start on: four zero bytes are
    /// common in payload), false for the header that confirms it.
    fn plausible(&self, h: &[u8], candidate: bool) -> Plausible {
        let Some(len) = be32(h, 0) else {
            return Plausible::NeedMore;
        };
        if len == 0 {
            return if candidate { Plausible::No } else { Plausible::Yes };
        }
        if len > self.limits.max_message_len {
            return Plausible::No;
        }
        let Some(&id) = h.get(4) else {
            return Plausible::NeedMore;
        };
        let max_piece = self.shape.n_pieces.unwrap_or(1 << 22);
        let max_begin = self.shape.piece_length.unwrap_or(1 << 26);
        let blk = self.limits.max_block_len;
        let idx_ok = |at: usize| -> Plausible {
            match be32(h, at) {
                None => Plausible::NeedMore,
                Some(p) if p < max_piece => Plausible::Yes,
                Some(_) => Plausible::No,
            }
        };
        match id {
            0..=3 | 14 | 15 => bool_p(len == 1),
            4 | 13 | 17 => {
                if len != 5 {
                    return Plausible::No;
                }
                idx_ok(5)
            }
            5 => match self.shape.n_pieces {
                Some(n) => bool_p(u64::from(len - 1) == u64::from(n).div_ceil(8)),
                None => bool_p(len >= 2 && len - 1 <= (1 << 20)),
            },
            6 | 8 | 16 => {
                if len != 13 {
                    return Plausible::No;
                }
                let (Some(p), Some(b), Some(l)) = (be32(h, 5), be32(h, 9), be32(h, 13)) else {
                    return Plausible::NeedMore;
                };
                bool_p(p < max_piece && b < max_begin && l > 0 && l <= blk)
            }
            7 => {
                if len <= 9 || len - 9 > blk {
                    return Plausible::No;
                }
                let (Some(p), Some(b)) = (be32(h, 5), be32(h, 9)) else {
                    return Plausible::NeedMore;
                };
                bool_p(p < max_piece && b < max_begin)
            }
            9 => bool_p(len == 3),
            20 => {
                if len < 2 {
                    return Plausible::No;
                }
                if !candidate {
                    return Plausible::Yes;
                }
                // Every BEP 10 message body is a bencoded dictionary (the
                // ut_metadata data message appends raw bytes after it).
                match h.get(6) {
                    None => Plausible::NeedMore,
                    Some(b'd') => Plausible::Yes,
                    Some(_) => Plausible::No,
                }
            }
            21 | 23 => bool_p(len == 49),
            22 => bool_p(len >= 49 && (len - 49) % 32 == 0),
            _ => Plausible::No,
        }
    }

    /// `plausible(h, true)`'s first two verdicts, without its call: a
    /// zero length (too weak to start on) or one over the limit. They rule
    /// out nearly every offset hunting's fast skip stops at in bytes that
    /// are not framing (a zero byte followed by one above 0x10 when
    /// messages are at most 1 MiB).
    #[inline]
    fn ruled_out_by_length(&self, h: &[u8]) -> bool {
        be32(h, 0).is_some_and(|len| len == 0 || len > self.limits.max_message_len)
    }

    /// Resumes framing at `pos` of the hunt window, in `state`.
    fn resync_at(&mut self, pos: usize, state: State, out: &mut impl FnMut(WireEvent<'_>)) {
        let skipped = self.hunt_skipped + pos as u64;
        self.stats.unframed_bytes += pos as u64;
        self.stats.n_resyncs += 1;
        out(WireEvent::Resync { skipped_bytes: skipped });
        let window = std::mem::take(&mut self.acc);
        self.hunt_pos = 0;
        self.hunt_skipped = 0;
        self.state = state;
        self.feed_data(window.get(pos..).unwrap_or_default(), out);
    }

    /// A header whose fixed bytes alone make it trustworthy: a `have`
    /// (`00 00 00 05 04`), a request/cancel/reject (`00 00 00 0d 06|08|10`)
    /// with a sane block, or a piece of one standard 16 KiB block at a block
    /// boundary. Five fixed bytes occur by chance once in 2^40 positions, so
    /// these need no second header to confirm them — which matters for short
    /// mid-stream captures and lossy streams where gaps keep cutting the
    /// window before a 16 KiB block and the header after it are whole.
    fn strong(&self, h: &[u8]) -> bool {
        let (Some(len), Some(&id)) = (be32(h, 0), h.get(4)) else {
            return false;
        };
        match (id, len) {
            (4, 5) => true,
            (6 | 8 | 16, 13) => {
                matches!(be32(h, 13), Some(l) if l > 0 && l <= self.limits.max_block_len)
                    && matches!(be32(h, 9), Some(b) if b % 1024 == 0)
            }
            (7, 16393) => matches!(be32(h, 9), Some(b) if b % 16384 == 0),
            _ => false,
        }
    }

    /// At a break in the stream (a gap or its end) while hunting: accepts
    /// the first candidate whose message ends exactly at the break, or is
    /// followed by a plausible header cut by the break.
    fn hunt_at_boundary(&mut self, out: &mut impl FnMut(WireEvent<'_>)) {
        let end = self.acc.len();
        let mut pos = self.hunt_pos;
        while pos < end {
            let Some(window) = self.acc.get(pos..) else { break };
            if self.plausible(window, true) == Plausible::Yes {
                let next_at = 4 + be32(window, 0).unwrap_or(0) as usize;
                let ok = match window.get(next_at..) {
                    Some([]) => true,
                    Some(next) => self.plausible(next, false) != Plausible::No,
                    None => false,
                };
                if ok {
                    self.resync_at(pos, State::Header, out);
                    return;
                }
            }
            pos += 1;
        }
    }

    /// Hunt mode: appends `d` to the window and looks for a header that is
    /// plausible and followed by a plausible header.
    fn hunt<'d>(&mut self, d: &'d [u8], out: &mut impl FnMut(WireEvent<'_>)) -> &'d [u8] {
        let cap = self.limits.max_hunt_window as usize;
        // Take only as much as the window may hold; the rest waits for the
        // next loop round (after the window has been trimmed).
        let room = cap.saturating_sub(self.acc.len()).max(1);
        let take = room.min(d.len());
        let (head, rest) = d.split_at(take);
        self.acc.extend_from_slice(head);
        loop {
            let mut pos = self.hunt_pos;
            let Some(mut window) = self.acc.get(pos..) else {
                break;
            };
            if window.is_empty() {
                break;
            }
            // Fast skip: while message lengths stay below 2^24, a header
            // starts with a zero byte and a handshake with 0x13, so every
            // other offset (with its four length bytes present) is ruled out
            // without looking further, exactly as `plausible` would rule it
            // out. Encrypted or foreign streams are mostly such offsets.
            if self.fast_skip {
                let full = window.len().saturating_sub(3);
                let skip =
                    memchr::memchr2(0, HANDSHAKE_PREFIX[0], window.get(..full).unwrap_or_default()).unwrap_or(full);
                if skip > 0 {
                    // Examined right here: a new round would search again
                    // from this offset only to find it at once (a second
                    // search per candidate, ~50 instructions each).
                    self.hunt_pos += skip;
                    pos = self.hunt_pos;
                    window = window.get(skip..).unwrap_or_default();
                }
            }
            // A handshake inside the stream (after a gap, or a stream whose
            // first bytes were lost) is the strongest boundary there is.
            if window.first() == Some(&HANDSHAKE_PREFIX[0]) {
                let n = window.len().min(HANDSHAKE_PREFIX.len());
                if window.get(..n) == HANDSHAKE_PREFIX.get(..n) {
                    if n < HANDSHAKE_PREFIX.len() {
                        break;
                    }
                    self.resync_at(pos, State::Handshake, out);
                    return rest;
                }
            }
            if self.ruled_out_by_length(window) {
                self.hunt_pos += 1;
                continue;
            }
            match self.plausible(window, true) {
                Plausible::No => {
                    self.hunt_pos += 1;
                    continue;
                }
                Plausible::NeedMore => {
                    if self.acc.len() - pos >= cap {
                        self.hunt_pos += 1;
                        continue;
                    }
                    break;
                }
                Plausible::Yes => {}
            }
            if self.strong(window) {
                self.resync_at(pos, State::Header, out);
                return rest;
            }
            let len = be32(window, 0).unwrap_or(0) as usize;
            let next_at = 4 + len;
            if next_at + 17 > cap {
                // Cannot be confirmed within the window: not a candidate.
                self.hunt_pos += 1;
                continue;
            }
            let next = window.get(next_at..).unwrap_or_default();
            match self.plausible(next, false) {
                Plausible::No => {
                    self.hunt_pos += 1;
                    continue;
                }
                Plausible::NeedMore => {
                    if self.acc.len() - pos >= cap {
                        self.hunt_pos += 1;
                        continue;
                    }
                    break;
                }
                Plausible::Yes => {
                    self.resync_at(pos, State::Header, out);
                    return rest;
                }
            }
        }
        // Trim what has been ruled out so the window stays bounded.
        if self.hunt_pos > 0 {
            let n = self.hunt_pos.min(self.acc.len());
            self.acc.drain(..n);
            self.hunt_skipped += n as u64;
            self.stats.unframed_bytes += n as u64;
            self.hunt_pos -= n;
            self.check_hunt_budget(out);
        }
        rest
    }
}

fn bool_p(b: bool) -> Plausible {
    if b {
        Plausible::Yes
    } else {
        Plausible::No
    }
}

/// Names of the BEP 10 handshake's `m` dictionary, per direction: the ids a
/// side asks the other to use when sending to it.
#[derive(Debug, Clone, Default)]
pub struct ExtensionMap {
    /// (id, name) pairs; small (real clients advertise fewer than 20).
    entries: Vec<(u8, Box<str>)>,
}

/// Largest number of extension names remembered per side (hostile handshakes
/// can list thousands).
pub const MAX_EXTENSIONS: usize = 64;

impl ExtensionMap {
    pub fn insert(&mut self, id: u8, name: &str) {
        if id == 0 {
            // id 0 in `m` disables the extension (BEP 10).
            self.entries.retain(|(_, n)| &**n != name);
            return;
        }
        if let Some(e) = self.entries.iter_mut().find(|(_, n)| &**n == name) {
            e.0 = id;
        } else if self.entries.len() < MAX_EXTENSIONS {
            self.entries.push((id, name.into()));
        }
    }

    pub fn name(&self, id: u8) -> Option<&str> {
        if id == 0 {
            return Some("handshake");
        }
        self.entries.iter().find(|(i, _)| *i == id).map(|(_, n)| &**n)
    }

    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.entries.iter().find(|(_, n)| &**n == name).map(|(i, _)| *i)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Owned copy of an event, for comparing runs.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Hs([u8; 20], Option<[u8; 20]>),
        NoHs,
        Msg(String, u64),
        Data(u64),
        Gap(u64),
        Resync(u64),
        Lost(&'static str),
        GaveUp,
        Anom(&'static str),
    }

    fn own(e: WireEvent<'_>) -> Ev {
        match e {
            WireEvent::Handshake { info_hash, peer_id, .. } => Ev::Hs(info_hash, peer_id),
            WireEvent::NoHandshake => Ev::NoHs,
            WireEvent::Message { msg, wire_len } => Ev::Msg(format!("{msg:?}"), wire_len),
            WireEvent::PieceData(d) => Ev::Data(d.len() as u64),
            WireEvent::PieceGap(n) => Ev::Gap(n),
            WireEvent::Resync { skipped_bytes } => Ev::Resync(skipped_bytes),
            WireEvent::LostSync { reason } => Ev::Lost(reason),
            WireEvent::GaveUp => Ev::GaveUp,
            WireEvent::Anomaly { kind, .. } => Ev::Anom(kind),
        }
    }

    /// Merges consecutive PieceData / PieceGap events: their cut points
    /// follow the chunking by design; their sums must not.
    fn normalize(evs: Vec<Ev>) -> Vec<Ev> {
        let mut outv: Vec<Ev> = Vec::new();
        for e in evs {
            match (outv.last_mut(), &e) {
                (Some(Ev::Data(a)), Ev::Data(b)) => *a += b,
                (Some(Ev::Gap(a)), Ev::Gap(b)) => *a += b,
                _ => outv.push(e),
            }
        }
        outv
    }

    fn run(mut f: PeerWireFramer, chunks: &[Chunk<'_>]) -> Vec<Ev> {
        let mut evs = Vec::new();
        for c in chunks {
            f.feed(*c, &mut |e| evs.push(own(e)));
        }
        f.finish(&mut |e| evs.push(own(e)));
        normalize(evs)
    }

    fn msg(id: u8, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(id);
        v.extend_from_slice(body);
        v
    }

    fn piece(idx: u32, begin: u32, block: usize) -> Vec<u8> {
        let mut b = idx.to_be_bytes().to_vec();
        b.extend_from_slice(&begin.to_be_bytes());
        b.extend(std::iter::repeat_n(0xAB, block));
        msg(7, &b)
    }

    fn handshake() -> Vec<u8> {
        let mut v = HANDSHAKE_PREFIX.to_vec();
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 5]);
        v.extend_from_slice(&[0x11; 20]);
        v.extend_from_slice(b"-TR3000-abcdefghijkl");
        v
    }

    fn sample_stream() -> Vec<u8> {
        let mut s = handshake();
        s.extend(msg(20, b"d1:md6:ut_pexi1eee"));
        s.extend(msg(5, &[0xff, 0x80]));
        s.extend(msg(2, &[]));
        s.extend(msg(1, &[]));
        s.extend(0u32.to_be_bytes());
        s.extend(msg(4, &3u32.to_be_bytes()));
        let mut req = 1u32.to_be_bytes().to_vec();
        req.extend(16384u32.to_be_bytes());
        req.extend(16384u32.to_be_bytes());
        s.extend(msg(6, &req));
        s.extend(piece(1, 16384, 3000));
        s.extend(msg(9, &6881u16.to_be_bytes()));
        s.extend(msg(14, &[]));
        s.extend(msg(15, &[]));
        s.extend(msg(17, &9u32.to_be_bytes()));
        s.extend(msg(16, &req));
        s.extend(msg(13, &2u32.to_be_bytes()));
        s.extend(msg(8, &req));
        s.extend(msg(99, &[1, 2, 3]));
        s.extend(piece(2, 0, 100));
        s
    }

    #[test]
    fn decodes_every_message_kind() {
        let s = sample_stream();
        let evs = run(PeerWireFramer::new(PeerWireLimits::default()), &[Chunk::Data(&s)]);
        let names: Vec<String> = evs
            .iter()
            .filter_map(|e| match e {
                Ev::Msg(m, _) => Some(m.split([' ', '(']).next().unwrap_or("").to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            names,
            [
                "Extended",
                "Bitfield",
                "Interested",
                "Unchoke",
                "KeepAlive",
                "Have",
                "Request",
                "Piece",
                "Port",
                "HaveAll",
                "HaveNone",
                "AllowedFast",
                "Reject",
                "Suggest",
                "Cancel",
                "Unknown",
                "Piece"
            ]
        );
        assert!(matches!(evs[0], Ev::Hs(h, Some(_)) if h == [0x11; 20]));
        let data: u64 = evs.iter().map(|e| if let Ev::Data(n) = e { *n } else { 0 }).sum();
        assert_eq!(data, 3100);
        assert!(evs.contains(&Ev::Anom("unknown_message_id")));
    }

    #[test]
    fn every_split_gives_identical_events() {
        let s = sample_stream();
        let whole = run(PeerWireFramer::new(PeerWireLimits::default()), &[Chunk::Data(&s)]);
        for cut in 0..=s.len() {
            let (a, b) = s.split_at(cut);
            let got = run(
                PeerWireFramer::new(PeerWireLimits::default()),
                &[Chunk::Data(a), Chunk::Data(b)],
            );
            assert_eq!(got, whole, "cut at {cut}");
        }
        // And byte by byte.
        let chunks: Vec<Chunk<'_>> = s.chunks(1).map(Chunk::Data).collect();
        assert_eq!(run(PeerWireFramer::new(PeerWireLimits::default()), &chunks), whole);
    }

    #[test]
    fn gap_inside_piece_keeps_framing() {
        let mut s = handshake();
        s.extend(piece(0, 0, 16384));
        s.extend(msg(4, &7u32.to_be_bytes()));
        let hs = HANDSHAKE_LEN + 13;
        let (a, rest) = s.split_at(hs + 1000);
        let b = &rest[5000..];
        let evs = run(
            PeerWireFramer::new(PeerWireLimits::default()),
            &[Chunk::Data(a), Chunk::Gap(5000), Chunk::Data(b)],
        );
        assert!(evs.contains(&Ev::Gap(5000)));
        assert!(evs.contains(&Ev::Data(1000)));
        assert!(evs.contains(&Ev::Data(16384 - 1000 - 5000)));
        assert_eq!(evs.last(), Some(&Ev::Msg("Have { piece: 7 }".into(), 9)));
    }

    #[test]
    fn gap_outside_piece_hunts_and_resyncs() {
        let mut s = handshake();
        s.extend(msg(4, &1u32.to_be_bytes()));
        let after_gap = s.len() + 3; // the gap cuts into the next message
        s.extend(msg(4, &2u32.to_be_bytes()));
        s.extend(piece(3, 0, 16384));
        s.extend(msg(4, &3u32.to_be_bytes()));
        s.extend(msg(4, &4u32.to_be_bytes()));
        let a = &s[..after_gap - 3];
        let b = &s[after_gap..];
        let evs = run(
            PeerWireFramer::new(PeerWireLimits::default()),
            &[Chunk::Data(a), Chunk::Gap(3), Chunk::Data(b)],
        );
        assert!(evs.contains(&Ev::Lost("gap_in_message")));
        // The rest of the broken `have` (6 bytes) is skipped, then the piece.
        assert!(evs.contains(&Ev::Resync(3 + 6)), "{evs:?}");
        assert!(evs.contains(&Ev::Msg("Piece { piece: 3, begin: 0, length: 16384 }".into(), 16397)));
        assert_eq!(evs.last(), Some(&Ev::Msg("Have { piece: 4 }".into(), 9)));
    }

    /// A xorshift generator seeded with `x`, for test noise.
    fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// The events of a mid-stream framer over `chunks` with the fast skip,
    /// and without it (every offset tried).
    fn fast_and_slow(chunks: &[Chunk<'_>]) -> (Vec<Ev>, Vec<Ev>) {
        let fast = run(PeerWireFramer::new_midstream(PeerWireLimits::default()), chunks);
        let mut f = PeerWireFramer::new_midstream(PeerWireLimits::default());
        f.fast_skip = false;
        (fast, run(f, chunks))
    }

    #[test]
    fn hunting_fast_skip_changes_nothing() {
        // Random bytes (an xorshift stream, with zeros and 0x13 now and
        // then), then real messages, a handshake inside the stream, more
        // noise and messages: the framer that jumps to candidate offsets
        // must give exactly the events of the one that tries every offset,
        // for any chunking.
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
        let mut noise = |n: usize| -> Vec<u8> { (0..n).map(|_| next() as u8).collect() };
        let mut s = noise(5000);
        s.extend(msg(4, &7u32.to_be_bytes()));
        s.extend(piece(3, 16384, 300));
        s.extend(msg(2, &[]));
        s.extend(noise(777));
        s.extend(handshake());
        s.extend(msg(4, &9u32.to_be_bytes()));
        s.extend(noise(3000));
        s.extend(piece(1, 0, 1000));
        s.extend(msg(1, &[]));
        s.extend(msg(4, &2u32.to_be_bytes()));
        for cut in [1usize, 3, 7, 64, 1500, s.len()] {
            let chunks: Vec<Chunk<'_>> = s.chunks(cut).map(Chunk::Data).collect();
            let (fast, slow) = fast_and_slow(&chunks);
            assert_eq!(fast, slow, "chunks of {cut}");
            assert!(fast.iter().any(|e| matches!(e, Ev::Resync(_))), "{fast:?}");
        }
    }

    /// The fast skip against trying every offset, on noise dense in the
    /// bytes it stops at and the bytes that decide there (zeros, 0x13, 'B',
    /// small length bytes), with cut-off protocol strings ("\x13B",
    /// "\x13BitTorrent") and a whole handshake, under several chunkings and
    /// a gap.
    #[test]
    fn hunting_fast_skip_changes_nothing_on_dense_noise() {
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    let x = next();
                    match x % 8 {
                        0 | 1 => 0,
                        2 => HANDSHAKE_PREFIX[0],
                        3 => b'B',
                        4 => (x >> 8) as u8 % 0x12,
                        _ => (x >> 16) as u8,
                    }
                })
                .collect()
        };
        let mut s = noise(4000);
        s.extend(b"\x13B");
        s.extend(noise(500));
        s.extend(&HANDSHAKE_PREFIX[..12]);
        s.extend(noise(900));
        s.extend(handshake());
        s.extend(msg(4, &9u32.to_be_bytes()));
        s.extend(noise(3000));
        s.extend(piece(1, 0, 1000));
        s.extend(msg(1, &[]));
        s.extend(noise(2000));
        s.extend(msg(4, &2u32.to_be_bytes()));
        for cut in [1usize, 5, 64, 1448, s.len()] {
            let mut chunks: Vec<Chunk<'_>> = s.chunks(cut).map(Chunk::Data).collect();
            let at = chunks.len() / 3;
            chunks.insert(at, Chunk::Gap(100));
            let (fast, slow) = fast_and_slow(&chunks);
            assert_eq!(fast, slow, "chunks of {cut}");
            assert!(
                fast.iter().filter(|e| matches!(e, Ev::Resync(_))).count() >= 2,
                "{fast:?}"
            );
        }
    }

    #[test]
    fn midstream_pickup_inside_a_block() {
        let mut s = Vec::new();
        for i in 0..4 {
            s.extend(piece(i, 0, 16384));
            s.extend(msg(4, &i.to_be_bytes()));
        }
        // Start 5000 bytes into the first piece message.
        let tail = &s[5000..];
        let whole = run(
            PeerWireFramer::new_midstream(PeerWireLimits::default()),
            &[Chunk::Data(tail)],
        );
        let first_resync = whole.iter().position(|e| matches!(e, Ev::Resync(_)));
        assert_eq!(
            whole.get(first_resync.unwrap_or(usize::MAX)),
            Some(&Ev::Resync(16397 - 5000))
        );
        let n_pieces = whole
            .iter()
            .filter(|e| matches!(e, Ev::Msg(m, _) if m.starts_with("Piece")))
            .count();
        assert_eq!(n_pieces, 3);
        for cut in (0..tail.len()).step_by(97) {
            let (a, b) = tail.split_at(cut);
            let got = run(
                PeerWireFramer::new_midstream(PeerWireLimits::default()),
                &[Chunk::Data(a), Chunk::Data(b)],
            );
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    /// What `ruled_out_by_length` rules out, `plausible` rules out as a
    /// candidate: on every length prefix near the limits and random ones,
    /// with each id, and with the limit moved; and it does rule out (zero
    /// lengths, lengths over the limit).
    #[test]
    fn ruled_out_by_length_agrees_with_plausible() {
        let mut x: u64 = 0x243f_6a88_85a3_08d3;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut ruled_out = 0;
        for max in [1u32 << 20, 16_393, u32::MAX] {
            let f = PeerWireFramer::new(PeerWireLimits {
                max_message_len: max,
                ..Default::default()
            });
            for i in 0..20_000u32 {
                let len = match i % 4 {
                    0 => i / 4 % 3,
                    1 => max.wrapping_add(i / 4 % 3).wrapping_sub(1),
                    _ => next() as u32 >> (next() % 32),
                };
                let mut h = len.to_be_bytes().to_vec();
                let n = (next() % 18) as usize;
                h.extend((0..n).map(|_| next() as u8));
                if let Some(id) = h.get_mut(4) {
                    *id = (i % 24) as u8;
                }
                if f.ruled_out_by_length(&h) {
                    ruled_out += 1;
                    assert_eq!(f.plausible(&h, true), Plausible::No, "{h:?} max {max}");
                }
            }
        }
        assert!(ruled_out > 10_000, "{ruled_out}");
    }

    #[test]
    fn hostile_length_prefix_is_not_buffered() {
        let mut s = handshake();
        s.extend(0xFFFF_FFFFu32.to_be_bytes());
        s.push(5);
        s.extend(vec![0u8; 100_000]);
        let mut f = PeerWireFramer::new(PeerWireLimits::default());
        let mut evs = Vec::new();
        f.feed(Chunk::Data(&s), &mut |e| evs.push(own(e)));
        assert!(evs.contains(&Ev::Lost("oversized_length")));
        assert!(f.buffered_bytes() <= PeerWireLimits::default().max_hunt_window as usize + 64);
    }

    #[test]
    fn random_data_gives_up_within_budget_and_never_panics() {
        let limits = PeerWireLimits {
            max_hunt_bytes: 64 * 1024,
            ..PeerWireLimits::default()
        };
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut data = vec![0u8; 300_000];
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let evs = run(PeerWireFramer::new(limits), &[Chunk::Data(&data)]);
        assert_eq!(evs.first(), Some(&Ev::NoHs));
        assert!(evs.contains(&Ev::GaveUp));
        assert!(!evs.iter().any(|e| matches!(e, Ev::Msg(..))));
        // Mutated valid streams never panic, whatever the cuts.
        let s = sample_stream();
        for round in 0..2000 {
            let mut m = s.clone();
            for _ in 0..(round % 7 + 1) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % m.len();
                m[i] = (x >> 17) as u8;
            }
            let cut = (x as usize >> 5) % m.len();
            let (a, b) = m.split_at(cut);
            let _ = run(
                PeerWireFramer::new(PeerWireLimits::default()),
                &[Chunk::Data(a), Chunk::Gap(x % 50), Chunk::Data(b)],
            );
        }
    }

    #[test]
    fn large_bitfield_split_across_chunks_is_buffered_and_decoded() {
        let mut s = handshake();
        let bf = vec![0xFFu8; 5000];
        s.extend(msg(5, &bf));
        let chunks: Vec<Chunk<'_>> = s.chunks(1448).map(Chunk::Data).collect();
        let evs = run(PeerWireFramer::new(PeerWireLimits::default()), &chunks);
        assert!(matches!(&evs[1], Ev::Msg(m, 5005) if m.starts_with("Bitfield")));
    }

    #[test]
    fn extension_map_per_direction() {
        let mut m = ExtensionMap::default();
        m.insert(1, "ut_metadata");
        m.insert(2, "ut_pex");
        m.insert(2, "ut_pex");
        assert_eq!(m.name(2), Some("ut_pex"));
        assert_eq!(m.name(0), Some("handshake"));
        m.insert(0, "ut_pex");
        assert_eq!(m.name(2), None);
        for i in 0..200u32 {
            m.insert((i % 250) as u8 + 1, &format!("x{i}"));
        }
        assert!(m.entries.len() <= MAX_EXTENSIONS);
    }
}
