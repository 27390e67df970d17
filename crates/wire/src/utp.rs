//! uTP (BEP 29, uTorrent Transport Protocol) header view and false-positive guard.
//!
//! [`parse_utp`] checks a UDP payload once — version 1, a known packet type,
//! an extension chain that stays inside the datagram — and returns a
//! borrowed [`UtpPacket`] whose fields and accessors cannot fail afterwards.
//! Nothing is copied: the payload and extension bodies are slices of the
//! datagram.
//!
//! The header is 20 bytes, big endian: `type<<4 | version`, first extension
//! type, `connection_id` (u16), `timestamp_microseconds` (u32),
//! `timestamp_difference_microseconds` (u32), `wnd_size` (u32), `seq_nr` (u16),
//! `ack_nr` (u16). Each extension is `next type (u8), length (u8), body`; the
//! chain ends at type 0 and the payload starts right after it. Extensions
//! seen in the wild: 1 selective ACK (bitmask, bit 0 = `ack_nr + 2`, least
//! significant bit of each byte first), 2 "extension bits" (8 bytes, sent by
//! older libutp) and 3 close reason (libtorrent: 2 reserved bytes and a u16
//! reason code). Unknown types are skipped by their length, as BEP 29 says.
//!
//! A well-formed header is a weak signal: the same UDP socket carries Mainline
//! DHT, BEP 15 tracker traffic and whatever else shares the port, and 20
//! arbitrary bytes pass the version/type check about 2 % of the time. So
//! [`utp_confidence`] / [`plausible_utp`] add shape rules on top (each rule is
//! documented where it is applied). They only need the datagram, never any
//! state; the stream tracker in `flow::utp_stream` adds the stateful evidence
//! (connection ids that pair up, sequence numbers that follow on).
//!
//! Invariants: no function here panics or indexes unchecked on any input;
//! a returned `UtpPacket` satisfies `header_len + payload.len() == d.len()`
//! and its extension chain walks without a length error.

use std::fmt;

/// Length of the fixed version-1 header.
pub const UTP_HEADER_LEN: usize = 20;

/// The only header version in use since 2009 (BEP 29). Version 0 was a
/// pre-release format nobody has spoken for over a decade; treating it as
/// uTP would only add false positives.
pub const UTP_VERSION: u8 = 1;

/// Extension type 1: selective ACK bitmask.
pub const EXT_SACK: u8 = 1;
/// Extension type 2: "extension bits" (8 bytes), sent by older libutp builds.
pub const EXT_BITS: u8 = 2;
/// Extension type 3: close reason (libtorrent), 4 bytes.
pub const EXT_CLOSE_REASON: u8 = 3;

/// The BitTorrent handshake prefix: pstrlen 19 and the protocol string.
const BT_HANDSHAKE_PREFIX: &[u8; 20] = b"\x13BitTorrent protocol";

/// uTP packet type (the high nibble of the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UtpType {
    /// ST_DATA: carries payload, consumes one sequence number.
    Data,
    /// ST_FIN: last packet of a direction; its `seq_nr` is `eof_pkt`.
    Fin,
    /// ST_STATE: a bare ACK; its `seq_nr` is the next one the sender will use.
    State,
    /// ST_RESET: the sender has no state for this connection.
    Reset,
    /// ST_SYN: opens a connection; its `connection_id` is the initiator's
    /// receive id, later packets from the initiator use id + 1.
    Syn,
}

impl UtpType {
    fn from_nibble(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Data),
            1 => Some(Self::Fin),
            2 => Some(Self::State),
            3 => Some(Self::Reset),
            4 => Some(Self::Syn),
            _ => None,
        }
    }

    /// Lower-case name for tables and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Fin => "fin",
            Self::State => "state",
            Self::Reset => "reset",
            Self::Syn => "syn",
        }
    }
}

/// Why a datagram is not a uTP version-1 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UtpError {
    /// Shorter than the 20-byte header.
    Truncated { len: usize },
    /// Version nibble is not 1.
    Version(u8),
    /// Type nibble is above ST_SYN (4).
    Type(u8),
    /// An extension header or body runs past the end of the datagram;
    /// `offset` is where the broken extension starts.
    ExtensionTruncated { offset: usize },
}

impl fmt::Display for UtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { len } => write!(f, "uTP: {len} bytes, header needs 20"),
            Self::Version(v) => write!(f, "uTP: version {v}, expected 1"),
            Self::Type(t) => write!(f, "uTP: unknown packet type {t}"),
            Self::ExtensionTruncated { offset } => {
                write!(f, "uTP: extension at offset {offset} runs past the datagram")
            }
        }
    }
}

impl std::error::Error for UtpError {}

/// A parsed uTP header borrowing from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtpPacket<'a> {
    pub ty: UtpType,
    pub connection_id: u16,
    pub timestamp_us: u32,
    pub timestamp_difference_us: u32,
    pub wnd_size: u32,
    pub seq_nr: u16,
    pub ack_nr: u16,
    /// Type of the first extension (0 = none).
    pub first_extension: u8,
    /// The raw extension chain (from byte 20 up to the payload); walk it with
    /// [`UtpPacket::extensions`].
    pub extension_chain: &'a [u8],
    /// Body of the first selective-ACK extension, if any.
    pub sack: Option<&'a [u8]>,
    /// Body of the first "extension bits" extension, if any.
    pub extension_bits: Option<&'a [u8]>,
    /// libtorrent close reason code, from the first type-3 extension whose
    /// body is the expected 4 bytes.
    pub close_reason: Option<u16>,
    /// Number of extensions in the chain.
    pub n_extensions: u16,
    /// Extensions of a type this module does not know (skipped by length).
    pub n_unknown_extensions: u16,
    /// A known extension type appeared more than once, or had a body length
    /// its senders never use (SACK of 0 bytes, extension bits other than 8,
    /// close reason other than 4). Kept for [`utp_confidence`].
    pub odd_extension: bool,
    /// Offset of the payload: 20 + extension chain.
    pub header_len: usize,
    pub payload: &'a [u8],
}

/// One extension from the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtpExtension<'a> {
    pub kind: u8,
    pub body: &'a [u8],
}

/// Iterator over a chain already validated by [`parse_utp`].
#[derive(Debug, Clone)]
pub struct UtpExtensions<'a> {
    kind: u8,
    rest: &'a [u8],
}

impl<'a> Iterator for UtpExtensions<'a> {
    type Item = UtpExtension<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.kind == 0 {
            return None;
        }
        // The chain was validated at parse time; `get` keeps this total
        // anyway so that a hand-built `UtpPacket` cannot make it panic.
        let (&next, rest) = self.rest.split_first()?;
        let (&len, rest) = rest.split_first()?;
        let body = rest.get(..usize::from(len))?;
        let kind = self.kind;
        self.kind = next;
        self.rest = rest.get(usize::from(len)..).unwrap_or(&[]);
        Some(UtpExtension { kind, body })
    }
}

/// Iterator over the sequence numbers a selective ACK marks as received.
#[derive(Debug, Clone)]
pub struct SackAcked<'a> {
    base: u16,
    mask: &'a [u8],
    bit: usize,
}

impl Iterator for SackAcked<'_> {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        while let Some(&byte) = self.mask.get(self.bit / 8) {
            let i = self.bit;
            self.bit += 1;
            if byte & (1 << (i % 8)) != 0 {
                // Bit i acknowledges ack_nr + 2 + i (BEP 29); sequence
                // numbers wrap at 16 bits, and the mask is at most 255 bytes
                // so `i` always fits.
                return Some(self.base.wrapping_add(i as u16));
            }
        }
        None
    }
}

impl<'a> UtpPacket<'a> {
    /// Walk the extension chain in order.
    pub fn extensions(&self) -> UtpExtensions<'a> {
        UtpExtensions {
            kind: self.first_extension,
            rest: self.extension_chain,
        }
    }

    /// Sequence numbers acknowledged by the selective ACK (empty if none).
    pub fn sack_acked(&self) -> SackAcked<'a> {
        SackAcked {
            base: self.ack_nr.wrapping_add(2),
            mask: self.sack.unwrap_or(&[]),
            bit: 0,
        }
    }
}

fn be16(d: &[u8], at: usize) -> u16 {
    match d.get(at..at + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

fn be32(d: &[u8], at: usize) -> u32 {
    match d.get(at..at + 4) {
        Some(&[a, b, c, e]) => u32::from_be_bytes([a, b, c, e]),
        _ => 0,
    }
}

/// Parse a UDP payload as a uTP version-1 packet.
///
/// Succeeds for anything structurally valid; whether it is *likely* uTP is
/// [`utp_confidence`]'s question.
pub fn parse_utp(d: &[u8]) -> Result<UtpPacket<'_>, UtpError> {
    let Some(head) = d.get(..UTP_HEADER_LEN) else {
        return Err(UtpError::Truncated { len: d.len() });
    };
    let type_ver = head.first().copied().unwrap_or(0);
    let version = type_ver & 0x0f;
    if version != UTP_VERSION {
        return Err(UtpError::Version(version));
    }
    let ty = UtpType::from_nibble(type_ver >> 4).ok_or(UtpError::Type(type_ver >> 4))?;
    let first_extension = head.get(1).copied().unwrap_or(0);

    let mut pkt = UtpPacket {
        ty,
        connection_id: be16(head, 2),
        timestamp_us: be32(head, 4),
        timestamp_difference_us: be32(head, 8),
        wnd_size: be32(head, 12),
        seq_nr: be16(head, 16),
        ack_nr: be16(head, 18),
        first_extension,
        extension_chain: &[],
        sack: None,
        extension_bits: None,
        close_reason: None,
        n_extensions: 0,
        n_unknown_extensions: 0,
        odd_extension: false,
        header_len: UTP_HEADER_LEN,
        payload: &[],
    };

    // Walk the chain. Every step consumes at least two bytes, so the loop is
    // bounded by the datagram length; no separate iteration cap is needed.
    let mut kind = first_extension;
    let mut off = UTP_HEADER_LEN;
    while kind != 0 {
        let (Some(&next), Some(&len)) = (d.get(off), d.get(off + 1)) else {
            return Err(UtpError::ExtensionTruncated { offset: off });
        };
        let body_at = off + 2;
        let Some(body) = d.get(body_at..body_at + usize::from(len)) else {
            return Err(UtpError::ExtensionTruncated { offset: off });
        };
        pkt.n_extensions = pkt.n_extensions.saturating_add(1);
        match kind {
            EXT_SACK => {
                // libtorrent sizes the mask to the reorder span, (span+7)/8
                // bytes, so lengths 1..=3 are real even though BEP 29 asks for
                // multiples of 4. Only an empty mask is odd.
                pkt.odd_extension |= pkt.sack.is_some() || body.is_empty();
                pkt.sack.get_or_insert(body);
            }
            EXT_BITS => {
                pkt.odd_extension |= pkt.extension_bits.is_some() || body.len() != 8;
                pkt.extension_bits.get_or_insert(body);
            }
            EXT_CLOSE_REASON => {
                // libtorrent ignores a close reason that is not exactly 4
                // bytes (2 reserved + u16 code); so do we.
                let dup = pkt.close_reason.is_some();
                match body {
                    &[_, _, hi, lo] if !dup => pkt.close_reason = Some(u16::from_be_bytes([hi, lo])),
                    _ => pkt.odd_extension = true,
                }
            }
            _ => pkt.n_unknown_extensions = pkt.n_unknown_extensions.saturating_add(1),
        }
        kind = next;
        off = body_at + usize::from(len);
    }
    pkt.extension_chain = d.get(UTP_HEADER_LEN..off).unwrap_or(&[]);
    pkt.header_len = off;
    pkt.payload = d.get(off..).unwrap_or(&[]);
    Ok(pkt)
}

/// How sure a single datagram is uTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UtpConfidence {
    /// A rule below says this is something else (or impossible uTP).
    NotUtp,
    /// Consistent with uTP, nothing more. Most STATE and DATA packets land
    /// here; let connection tracking corroborate them.
    Unsure,
    /// Carries a structure random bytes practically never produce: the
    /// BitTorrent handshake at the start of the payload, or a chain of known
    /// extensions with their usual lengths.
    Likely,
}

/// Bounds used by the false-positive guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtpProbeLimits {
    /// Largest usual `wnd_size` (advertised receive buffer, bytes).
    /// Clients advertise 0x40000 (older libtorrent), 0x100000 (libutp since
    /// 2013) and 0x380000 (early libutp, still in Transmission); the largest
    /// in our corpus is 0x380000. libtorrent takes any 32-bit window from
    /// its peer (`m_adv_wnd = wnd_size`, no bound), so a larger one is still
    /// uTP: it only withholds `Likely` (a tuned or hostile client must not
    /// make its transfer invisible). Wireshark stops at 0x380000 and misses
    /// such a transfer.
    pub max_wnd_size: u32,
    /// Most extensions in one header. libtorrent sends at most two (SACK and
    /// close reason), libutp at most two (SACK and extension bits); a long
    /// chain is a sign of random bytes that happen to link up.
    pub max_extensions: u16,
}

impl Default for UtpProbeLimits {
    fn default() -> Self {
        Self {
            max_wnd_size: 16 << 20,
            max_extensions: 4,
        }
    }
}

/// `utp_confidence(d, p, &UtpProbeLimits::default()) != NotUtp`.
pub fn plausible_utp(d: &[u8], p: &UtpPacket<'_>) -> bool {
    utp_confidence(d, p, &UtpProbeLimits::default()) != UtpConfidence::NotUtp
}

/// Judge whether a datagram that parsed as uTP really is uTP.
///
/// `d` must be the datagram `p` was parsed from (the raw bytes are needed to
/// recognise other protocols' layouts).
///
/// Rules that reject (`NotUtp`), and why:
/// - Bencoded DHT messages (`d1:…`) and LSD (`BT-SEARCH`) never get here: 'd'
///   (0x64) and 'B' (0x42) carry version nibbles 4 and 2. BEP 15 tracker
///   responses and the connect request start with a zero byte (version 0).
///   Only the tracker's announce and scrape *requests* start with the
///   8-byte random connection id, so 5 in 256 of them pass the header check:
///   they are recognised by the action (1 announce, 2 scrape) at bytes 8..12
///   with their fixed sizes (announce ≥ 98 bytes with an event code 0..=3 at
///   80..84; scrape 16 + 20·n bytes). For real uTP those bytes are
///   `timestamp_difference_us`, and exactly 1 or 2 µs is a 1-in-2³¹ event.
/// - DNS (and mDNS/LLMNR) shape: a query has QDCOUNT 1 and small other
///   counts at bytes 4..12, i.e. `timestamp_us` in 0x10000..=0x10040 together
///   with a small `timestamp_difference_us`. A 20-byte query such as
///   `"\x41\x00\x01\x00\x00\x01…"` otherwise parses as a uTP SYN.
/// - STUN: the magic cookie 0x2112A442 at bytes 4..8 with the STUN length at
///   2..4 matching the datagram. Binding responses start with 0x01 0x01,
///   which reads as an ST_DATA with a SACK.
/// - Payload where the type allows none: SYN, STATE and RESET are
///   header-only in every implementation we know; payload there means the
///   extension chain ended in the wrong place, i.e. the "extensions" were
///   random bytes. ST_DATA without payload is equally impossible (BEP 29:
///   "always has a data payload"). ST_FIN is *not* in this list: libtorrent
///   and libutp send it bare, but some peers in
///   `ntop__nDPI/bittorrent_transmission.pcapng` send their last data in the
///   FIN itself (4, 225 and 394 bytes at the next sequence number), so a FIN
///   with payload only withholds `Likely`.
/// - More extensions than [`UtpProbeLimits::max_extensions`].
///
/// There is no range rule for the timestamps: `timestamp_us` is the
/// sender's microsecond clock modulo 2^32 and the difference is taken
/// between two unsynchronised clocks, so every value occurs in real traffic.
///
/// Rules that only withhold `Likely` (so a real but unusual sender is not
/// lost): `wnd_size` above [`UtpProbeLimits::max_wnd_size`] (libtorrent
/// accepts any window); unknown or odd extensions; a FIN with payload; a SYN with a
/// non-zero timestamp difference or ack_nr (both are 0 from every client we
/// have seen, and BEP 29 requires the difference to be 0 before the first
/// sample); a zero `timestamp_us` outside RESET (libutp's RESET is all
/// zeros apart from ids and numbers; every other packet carries the
/// sender's clock).
pub fn utp_confidence(d: &[u8], p: &UtpPacket<'_>, limits: &UtpProbeLimits) -> UtpConfidence {
    if is_bep15_request(d) || is_dns_shaped(d) || is_stun(d) {
        return UtpConfidence::NotUtp;
    }
    let payload_allowed = match p.ty {
        UtpType::Data => !p.payload.is_empty(),
        UtpType::Fin => true,
        UtpType::Syn | UtpType::State | UtpType::Reset => p.payload.is_empty(),
    };
    if !payload_allowed || p.n_extensions > limits.max_extensions {
        return UtpConfidence::NotUtp;
    }

    let unusual = p.wnd_size > limits.max_wnd_size
        || p.odd_extension
        || p.n_unknown_extensions > 0
        || (p.ty == UtpType::Fin && !p.payload.is_empty())
        || (p.ty == UtpType::Syn && (p.timestamp_difference_us != 0 || p.ack_nr != 0))
        || (p.ty != UtpType::Reset && p.timestamp_us == 0);
    if unusual {
        return UtpConfidence::Unsure;
    }
    let handshake = p.payload.starts_with(BT_HANDSHAKE_PREFIX);
    // Every extension is known with its usual size (checked via `unusual`).
    let known_chain = p.n_extensions > 0;
    if handshake || known_chain {
        UtpConfidence::Likely
    } else {
        UtpConfidence::Unsure
    }
}

/// BEP 15 client requests that begin with a random connection id.
fn is_bep15_request(d: &[u8]) -> bool {
    let action = be32(d, 8);
    match action {
        // announce: 98 bytes (+ BEP 41 options); event at 80..84 is 0..=3
        1 => d.len() >= 98 && be32(d, 80) <= 3,
        // scrape: 16-byte header + 20 bytes per info_hash
        2 => d.len() >= 36 && (d.len() - 16).is_multiple_of(20),
        _ => false,
    }
}

/// DNS header shape: QDCOUNT 1, ANCOUNT/NSCOUNT/ARCOUNT small.
fn is_dns_shaped(d: &[u8]) -> bool {
    // 64 covers real responses (answer lists are short) and EDNS (ARCOUNT 1);
    // for uTP this window is 65 timestamp values out of 2^32.
    const SMALL: u16 = 64;
    be16(d, 4) == 1 && be16(d, 6) <= SMALL && be16(d, 8) <= SMALL && be16(d, 10) <= SMALL
}

/// STUN (RFC 5389): magic cookie at 4..8 and a body length that matches.
fn is_stun(d: &[u8]) -> bool {
    be32(d, 4) == 0x2112_A442 && usize::from(be16(d, 2)) + 20 == d.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a header with the given fields and a raw tail (extensions +
    /// payload).
    #[allow(clippy::too_many_arguments)]
    fn hdr(ty: u8, ext: u8, id: u16, ts: u32, tsd: u32, wnd: u32, seq: u16, ack: u16, tail: &[u8]) -> Vec<u8> {
        let mut v = vec![(ty << 4) | 1, ext];
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&ts.to_be_bytes());
        v.extend_from_slice(&tsd.to_be_bytes());
        v.extend_from_slice(&wnd.to_be_bytes());
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&ack.to_be_bytes());
        v.extend_from_slice(tail);
        v
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Real packets, as captured (ntop__nDPI/bittorrent_utp.pcap frames 3, 4,
    // 5 and 15; ntop__nDPI/bittorrent_transmission.pcapng frames 112 and 299).
    const SYN_F3: &str = "4100530210eeb2f00000000000000000e7f50000";
    const STATE_BITS_F4: &str = "2102530206ff3f5f7fffffff0000f00049c7e7f500080000000000000000";
    const DATA_HS_F5: &str = concat!(
        "0100530310f0687609f1291700100000e7f649c613426974546f7272656e742070726f746f636f6c0000000000180005",
        "0ca4c8e7fb26a354b1a7aa15baeaf26067c668112d4c54313130302d31466135333152744c7576770000007105000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000007ffffffffffffffffffffefffdf7fffbfffffef",
        "fbeffbfff7ff7fffffb7ffb9800000000101",
    );
    const STATE_SACK_F15: &str = "21015302070760ecf61114480000f00049c9e7f7000401000000";
    const FIN_F112: &str = "1100a5c832e4caa1825cd1520000c350d2409b10";
    const RESET_F299: &str = "3100aa17000000000000000000000000ae0a59cd";

    /// Limits that switch the window and chain-length rules off, to show
    /// that a shape rule rejects a datagram on its own.
    fn permissive() -> UtpProbeLimits {
        UtpProbeLimits {
            max_wnd_size: u32::MAX,
            max_extensions: u16::MAX,
        }
    }

    /// Rejected with default limits and by the shape rules alone.
    fn rejected_by_shape(d: &[u8]) -> bool {
        let p = parse_utp(d).unwrap();
        !plausible_utp(d, &p) && utp_confidence(d, &p, &permissive()) == UtpConfidence::NotUtp
    }

    fn conf(d: &[u8]) -> UtpConfidence {
        let p = parse_utp(d).unwrap();
        utp_confidence(d, &p, &UtpProbeLimits::default())
    }

    #[test]
    fn syn_fixture() {
        let d = hex(SYN_F3);
        let p = parse_utp(&d).unwrap();
        assert_eq!(p.ty, UtpType::Syn);
        assert_eq!(p.connection_id, 21250);
        assert_eq!(p.timestamp_us, 0x10ee_b2f0);
        assert_eq!(p.timestamp_difference_us, 0);
        assert_eq!(p.wnd_size, 0);
        assert_eq!(p.seq_nr, 59381);
        assert_eq!(p.ack_nr, 0);
        assert_eq!(p.n_extensions, 0);
        assert!(p.payload.is_empty());
        assert_eq!(p.header_len, 20);
        assert_eq!(conf(&d), UtpConfidence::Unsure);
    }

    #[test]
    fn state_with_extension_bits_fixture() {
        let d = hex(STATE_BITS_F4);
        let p = parse_utp(&d).unwrap();
        assert_eq!(p.ty, UtpType::State);
        assert_eq!(p.connection_id, 21250);
        assert_eq!(p.timestamp_difference_us, 0x7fff_ffff);
        assert_eq!(p.wnd_size, 61440);
        assert_eq!((p.seq_nr, p.ack_nr), (18887, 59381));
        assert_eq!(p.extension_bits, Some(&[0u8; 8][..]));
        assert_eq!(p.n_extensions, 1);
        assert_eq!(p.header_len, 30);
        assert!(p.payload.is_empty());
        assert_eq!(conf(&d), UtpConfidence::Likely);
    }

    #[test]
    fn data_with_handshake_fixture() {
        let d = hex(DATA_HS_F5);
        let p = parse_utp(&d).unwrap();
        assert_eq!(p.ty, UtpType::Data);
        assert_eq!(p.connection_id, 21251);
        assert_eq!(p.wnd_size, 1 << 20);
        assert_eq!((p.seq_nr, p.ack_nr), (59382, 18886));
        assert_eq!(p.payload.len(), 190);
        assert!(p.payload.starts_with(b"\x13BitTorrent protocol"));
        assert_eq!(conf(&d), UtpConfidence::Likely);
    }

    #[test]
    fn state_with_sack_fixture() {
        let d = hex(STATE_SACK_F15);
        let p = parse_utp(&d).unwrap();
        assert_eq!(p.ty, UtpType::State);
        assert_eq!(p.ack_nr, 59383);
        assert_eq!(p.sack, Some(&[1u8, 0, 0, 0][..]));
        // bit 0 acknowledges ack_nr + 2
        assert_eq!(p.sack_acked().collect::<Vec<_>>(), vec![59385]);
        assert_eq!(conf(&d), UtpConfidence::Likely);
    }

    #[test]
    fn fin_and_reset_fixtures() {
        let d = hex(FIN_F112);
        let p = parse_utp(&d).unwrap();
        assert_eq!(p.ty, UtpType::Fin);
        assert_eq!(p.connection_id, 0xa5c8);
        assert_eq!(p.wnd_size, 50000);
        assert_eq!(conf(&d), UtpConfidence::Unsure);

        let d = hex(RESET_F299);
        let p = parse_utp(&d).unwrap();
        assert_eq!(p.ty, UtpType::Reset);
        // libutp's RESET carries no clock and no window
        assert_eq!((p.timestamp_us, p.timestamp_difference_us, p.wnd_size), (0, 0, 0));
        assert_eq!(conf(&d), UtpConfidence::Unsure);
    }

    #[test]
    fn close_reason_after_sack() {
        // libtorrent layout: SACK first, then close reason (reserved u16 + code).
        let d = hdr(
            2,
            EXT_SACK,
            7,
            99,
            5,
            4096,
            10,
            20,
            &[3, 4, 0x05, 0, 0, 0x80, 0, 4, 0, 0, 0, 15],
        );
        let p = parse_utp(&d).unwrap();
        assert_eq!(p.close_reason, Some(15));
        assert_eq!(p.sack, Some(&[0x05u8, 0, 0, 0x80][..]));
        assert_eq!(p.sack_acked().collect::<Vec<_>>(), vec![22, 24, 53]);
        assert_eq!(p.n_extensions, 2);
        let kinds: Vec<u8> = p.extensions().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![EXT_SACK, EXT_CLOSE_REASON]);
        assert!(p.payload.is_empty());
        assert_eq!(conf(&d), UtpConfidence::Likely);

        // alone, on a FIN
        let d = hdr(1, EXT_CLOSE_REASON, 7, 99, 5, 4096, 10, 20, &[0, 4, 0, 0, 1, 2]);
        let p = parse_utp(&d).unwrap();
        assert_eq!(p.close_reason, Some(0x0102));
        assert_eq!(conf(&d), UtpConfidence::Likely);

        // wrong size: parsed, code ignored like libtorrent does, not Likely
        let d = hdr(1, EXT_CLOSE_REASON, 7, 99, 5, 4096, 10, 20, &[0, 2, 0, 9]);
        let p = parse_utp(&d).unwrap();
        assert_eq!(p.close_reason, None);
        assert!(p.odd_extension);
        assert_eq!(conf(&d), UtpConfidence::Unsure);
    }

    #[test]
    fn unknown_extension_is_skipped_by_length() {
        let d = hdr(0, 9, 7, 99, 5, 4096, 10, 20, &[0, 3, 0xaa, 0xbb, 0xcc, b'h', b'i']);
        let p = parse_utp(&d).unwrap();
        assert_eq!(p.n_unknown_extensions, 1);
        assert_eq!(p.payload, b"hi");
        assert_eq!(p.header_len, 25);
        let e: Vec<_> = p.extensions().collect();
        assert_eq!(
            e,
            vec![UtpExtension {
                kind: 9,
                body: &[0xaa, 0xbb, 0xcc]
            }]
        );
        assert_eq!(conf(&d), UtpConfidence::Unsure);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(parse_utp(&[0x41; 19]), Err(UtpError::Truncated { len: 19 }));
        assert_eq!(parse_utp(&[]), Err(UtpError::Truncated { len: 0 }));
        let mut d = hex(SYN_F3);
        d[0] = 0x40;
        assert_eq!(parse_utp(&d), Err(UtpError::Version(0)));
        d[0] = 0x51;
        assert_eq!(parse_utp(&d), Err(UtpError::Type(5)));
        // extension announced, nothing follows
        let d = hdr(2, 1, 1, 1, 1, 1, 1, 1, &[]);
        assert_eq!(parse_utp(&d), Err(UtpError::ExtensionTruncated { offset: 20 }));
        // one byte of extension header
        let d = hdr(2, 1, 1, 1, 1, 1, 1, 1, &[0]);
        assert_eq!(parse_utp(&d), Err(UtpError::ExtensionTruncated { offset: 20 }));
        // body longer than the datagram
        let d = hdr(2, 1, 1, 1, 1, 1, 1, 1, &[0, 4, 1, 2, 3]);
        assert_eq!(parse_utp(&d), Err(UtpError::ExtensionTruncated { offset: 20 }));
        // second extension broken
        let d = hdr(2, 1, 1, 1, 1, 1, 1, 1, &[2, 1, 0xff, 0, 9]);
        assert_eq!(parse_utp(&d), Err(UtpError::ExtensionTruncated { offset: 23 }));
    }

    #[test]
    fn no_panic_on_every_prefix_and_byte_flip() {
        let base = hdr(
            0,
            EXT_SACK,
            7,
            99,
            5,
            4096,
            10,
            20,
            &[3, 4, 1, 2, 3, 4, 0, 4, 0, 0, 0, 1, 9, 9],
        );
        for n in 0..=base.len() {
            if let Ok(p) = parse_utp(&base[..n]) {
                assert_eq!(p.header_len + p.payload.len(), n);
                let _ = utp_confidence(&base[..n], &p, &UtpProbeLimits::default());
                let _ = p.extensions().count();
                let _ = p.sack_acked().count();
            }
        }
        for i in 0..base.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut d = base.clone();
                d[i] = v;
                if let Ok(p) = parse_utp(&d) {
                    assert_eq!(p.header_len + p.payload.len(), d.len());
                    let _ = plausible_utp(&d, &p);
                    let _ = p.extensions().count();
                }
            }
        }
    }

    #[test]
    fn payload_rules() {
        // SYN / STATE / RESET with payload: the chain ended in the wrong place
        for ty in [4u8, 2, 3] {
            let d = hdr(ty, 0, 7, 99, 0, 4096, 10, 0, b"x");
            assert!(!plausible_utp(&d, &parse_utp(&d).unwrap()), "type {ty}");
        }
        // FIN with its last data in it (seen from real peers): kept, Unsure
        let d = hex("1100c41846e8c70b8e72692d00100000eadabfc3e2c89d2f");
        let p = parse_utp(&d).unwrap();
        assert_eq!((p.ty, p.payload), (UtpType::Fin, &[0xe2u8, 0xc8, 0x9d, 0x2f][..]));
        assert_eq!(conf(&d), UtpConfidence::Unsure);
        // DATA without payload
        let d = hdr(0, 0, 7, 99, 0, 4096, 10, 0, b"");
        assert!(!plausible_utp(&d, &parse_utp(&d).unwrap()));
        // a window above the usual ones: still uTP (libtorrent takes any
        // 32-bit window), only not Likely even with a handshake
        let d = hdr(0, 0, 7, 99, 0, 0x7fff_0000, 10, 0, b"x");
        assert_eq!(conf(&d), UtpConfidence::Unsure);
        let mut hs = vec![19u8];
        hs.extend_from_slice(b"BitTorrent protocol");
        let d = hdr(0, 0, 7, 99, 0, 0xffff_ffff, 10, 0, &hs);
        assert_eq!(conf(&d), UtpConfidence::Unsure);
        // too many extensions
        let d = hdr(0, 9, 7, 99, 0, 4096, 10, 0, &[9, 0, 9, 0, 9, 0, 9, 0, 0, 0, b'x']);
        assert_eq!(parse_utp(&d).unwrap().n_extensions, 5);
        assert!(!plausible_utp(&d, &parse_utp(&d).unwrap()));
        // SYN with a delay sample or an ack: kept, but only Unsure
        let d = hdr(4, 0, 7, 99, 5, 4096, 10, 0, b"");
        assert_eq!(conf(&d), UtpConfidence::Unsure);
        // zero clock outside RESET
        let d = hdr(2, 1, 7, 0, 5, 4096, 10, 0, &[0, 4, 1, 0, 0, 0]);
        assert_eq!(conf(&d), UtpConfidence::Unsure);
    }

    #[test]
    fn dht_and_lsd_are_not_utp() {
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        assert_eq!(parse_utp(ping), Err(UtpError::Version(4)));
        let resp = b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re";
        assert_eq!(parse_utp(resp), Err(UtpError::Version(4)));
        let lsd = b"BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\n\r\n";
        assert_eq!(parse_utp(lsd), Err(UtpError::Version(2)));
    }

    #[test]
    fn bep15_tracker_packets_are_not_utp() {
        // connect request: 16 bytes with the protocol magic
        let connect = hex("0000041727101980000000004a3b2c1d");
        assert!(parse_utp(&connect).is_err());
        // connect response: action 0, version nibble 0
        let resp = hex("000000004a3b2c1d0123456789abcdef00000000");
        assert_eq!(parse_utp(&resp), Err(UtpError::Version(0)));
        // announce request whose random connection id happens to read as a
        // uTP ST_DATA without extensions (0x01 0x00 ...)
        let mut ann = hex("0100c0ffee123456000000014a3b2c1d");
        ann.extend_from_slice(&[0xab; 20]); // info_hash
        ann.extend_from_slice(b"-TR2940-abcdefghijkl"); // peer_id
        ann.extend_from_slice(&[0; 8]); // downloaded
        ann.extend_from_slice(&1000u64.to_be_bytes()); // left
        ann.extend_from_slice(&[0; 8]); // uploaded
        ann.extend_from_slice(&2u32.to_be_bytes()); // event: started
        ann.extend_from_slice(&[0; 4]); // ip
        ann.extend_from_slice(&[1, 2, 3, 4]); // key
        ann.extend_from_slice(&(-1i32).to_be_bytes()); // num_want
        ann.extend_from_slice(&51413u16.to_be_bytes()); // port
        assert_eq!(ann.len(), 98);
        let p = parse_utp(&ann).unwrap();
        assert_eq!(p.ty, UtpType::Data);
        assert!(rejected_by_shape(&ann));
        // scrape request with two hashes
        let mut scrape = hex("0100c0ffee123456000000024a3b2c1d");
        scrape.extend_from_slice(&[0x11; 40]);
        assert!(rejected_by_shape(&scrape));
    }

    #[test]
    fn dns_queries_are_not_utp() {
        // The real query from ntop__nDPI/bt-dns.pcap (A utorrent.com) with
        // its transaction id changed to 0x4100 so that the header reads as a
        // uTP SYN without extensions.
        let mut q = hex("6ff1010000010000000000000875746f7272656e7403636f6d0000010001");
        q[0] = 0x41;
        q[1] = 0x00;
        let p = parse_utp(&q).unwrap();
        assert_eq!(p.ty, UtpType::Syn);
        assert!(rejected_by_shape(&q));
        // A 20-byte query (name "ab", type A, class IN): no payload left over,
        // so only the DNS-shape rule stops it.
        let q20 = hex("410001000001000000000000026162000001");
        let mut q20 = q20;
        q20.extend_from_slice(&[0x00, 0x01]);
        assert_eq!(q20.len(), 20);
        let p = parse_utp(&q20).unwrap();
        assert_eq!(p.ty, UtpType::Syn);
        assert!(p.payload.is_empty());
        assert!(rejected_by_shape(&q20));
        // same with EDNS (ARCOUNT 1)
        let mut e = q20.clone();
        e[11] = 1;
        assert!(rejected_by_shape(&e));
        // the real response, likewise re-labelled: DATA type, payload present
        let mut r = hex("6ff1818000010001000000000875746f7272656e7403636f6d0000010001c00c00010001000002e70004628f9207");
        r[0] = 0x01;
        r[1] = 0x00;
        assert!(rejected_by_shape(&r));
    }

    #[test]
    fn stun_binding_response_is_not_utp() {
        // 0x0101 binding success, length 12, cookie, transaction id, and a
        // USERNAME attribute (type 0x0006, length 8): the attribute header
        // reads as "next extension 0, length 6", so the SACK chain fits and
        // 4 bytes are left as ST_DATA payload.
        let mut d = hex("0101000c2112a442");
        d.extend_from_slice(&[7, 7, 7, 7, 0, 0, 0x10, 0, 7, 7, 7, 7]);
        d.extend_from_slice(&hex("000600086162636465666768"));
        assert_eq!(d.len(), 32);
        let p = parse_utp(&d).unwrap();
        assert_eq!((p.ty, p.payload.len()), (UtpType::Data, 4));
        assert_eq!(p.wnd_size, 0x1000);
        assert!(rejected_by_shape(&d));
        // the same bytes with a different cookie pass: the cookie is the rule
        d[4] = 0x22;
        assert!(plausible_utp(&d, &parse_utp(&d).unwrap()));
    }
}
