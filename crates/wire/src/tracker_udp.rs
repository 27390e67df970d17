//! UDP tracker protocol (BEP 15) with the BEP 41 option area, recognised on
//! any port.
//!
//! What it does:
//! - [`parse_request`] / [`parse_response`] decode connect, announce, scrape
//!   and error datagrams into zero-copy views: compact peers and scraped
//!   info-hashes are iterated straight out of the datagram, BEP 41 options
//!   are walked in place.
//! - [`classify_request`] / [`classify_response`] recognise tracker datagrams
//!   by content, on any port, with a [`Confidence`]. A connect request
//!   carries the magic protocol id and is certain; an announce or scrape
//!   whose connect was not captured (the capture started later, or the client
//!   reused a cached connection id) is only *plausible* from its structure,
//!   until [`PendingUdp`] has seen its connection id in use, which makes it
//!   certain.
//! - [`PendingUdp`] pairs responses with requests by (transaction id, client
//!   endpoint, tracker endpoint), remembers the connection ids handed out,
//!   expires both by packet time and caps both, counting evictions.
//!
//! Specs: BEP 15 (UDP tracker protocol; the IPv6 peer format was added in
//! 2016: the stride of the peer list follows the address family of the
//! datagram, so the caller passes [`AddrFamily`]), BEP 41 (announce options:
//! EndOfOptions, NOP, URLData).
//!
//! Invariants:
//! - Pure: no I/O, no clock (time is the packet time the caller passes).
//! - No panic on any input: every read goes through `get`, lengths are
//!   checked before views are built, and views only hold in-bounds slices.
//! - Bounded: each parsed message exposes at most [`UdpLimits`] entries;
//!   [`PendingUdp`] never holds more than its [`PendingLimits`] caps.
//! - Defects that leave the message usable (a trailing partial peer entry,
//!   a truncated BEP 41 option, …) are reported in [`UdpAnomalies`] on the
//!   parsed message; defects that make it unusable are [`UdpError`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The constant every connect request starts with (BEP 15 "protocol_id").
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;

/// BEP 15 action numbers.
pub const ACTION_CONNECT: u32 = 0;
pub const ACTION_ANNOUNCE: u32 = 1;
pub const ACTION_SCRAPE: u32 = 2;
pub const ACTION_ERROR: u32 = 3;

/// Connect request and connect response size.
pub const CONNECT_LEN: usize = 16;
/// Announce request size without BEP 41 options.
pub const ANNOUNCE_REQUEST_LEN: usize = 98;
/// Announce response header size (before the peer list).
pub const ANNOUNCE_RESPONSE_HEADER_LEN: usize = 20;
/// Scrape request header size (before the info-hashes).
pub const SCRAPE_REQUEST_HEADER_LEN: usize = 16;
/// Scrape and error response header size (action + transaction id).
pub const RESPONSE_HEADER_LEN: usize = 8;
/// One scraped torrent in a scrape response: seeders, completed, leechers.
pub const SCRAPE_ENTRY_LEN: usize = 12;

/// Bounds on what one datagram may make us produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpLimits {
    /// Compact peers exposed from one announce response. A datagram holds at
    /// most ~10 900 IPv4 entries; trackers send their numwant default (50,
    /// 200 at most on opentracker), so 4096 keeps every real answer whole
    /// while bounding the rows one packet can create. Excess entries are
    /// dropped and flagged [`UdpAnomaly::TooManyPeers`].
    pub max_peers: usize,
    /// Info-hashes exposed from one scrape request or scrape response. BEP 15
    /// says about 74 fit in a normal datagram; 1024 leaves room for jumbo
    /// datagrams and still bounds the rows per packet.
    pub max_scrape_hashes: usize,
    /// BEP 41 options walked in one announce request. Real clients send one
    /// or two URLData options; the bound stops a datagram of 1 400 NOPs from
    /// costing 1 400 iterations in every consumer.
    pub max_options: usize,
    /// Largest `left` / `downloaded` a *plausible* announce may carry when
    /// recognised without its connect (2^50 B = 1 PiB, far above any
    /// torrent). Not applied to `uploaded`, the very field ratio cheaters
    /// inflate: rejecting those would hide exactly what the audit looks for.
    pub max_plausible_amount_bytes: i64,
    /// Largest `num_want` a plausible announce may carry. Clients send -1
    /// (tracker default), 0 (stopping) or a few hundred; 1<<16 is generous.
    pub max_plausible_num_want: i32,
}

impl Default for UdpLimits {
    fn default() -> Self {
        UdpLimits {
            max_peers: 4096,
            max_scrape_hashes: 1024,
            max_options: 64,
            max_plausible_amount_bytes: 1 << 50,
            max_plausible_num_want: 1 << 16,
        }
    }
}

/// Address family of the IP header carrying the datagram: it decides the
/// size of compact peer entries in announce responses (BEP 15: 6 bytes over
/// IPv4, 18 bytes over IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrFamily {
    V4,
    V6,
}

impl AddrFamily {
    /// Bytes of one compact peer entry (address + port).
    pub fn peer_len(self) -> usize {
        match self {
            AddrFamily::V4 => 6,
            AddrFamily::V6 => 18,
        }
    }

    /// The family of an address (for callers holding a `SocketAddr`).
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => AddrFamily::V4,
            IpAddr::V6(_) => AddrFamily::V6,
        }
    }
}

/// A datagram that cannot be used as a tracker message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpError {
    /// Shorter than the fixed part of the message its action announces.
    Truncated { needed: usize, got: usize },
    /// An action outside 0..=3.
    UnknownAction(u32),
}

impl UdpError {
    /// Stable snake_case name, used as `kind` in the `anomalies` table.
    pub fn kind(&self) -> &'static str {
        match self {
            UdpError::Truncated { .. } => "udp_tracker_truncated",
            UdpError::UnknownAction(_) => "udp_tracker_unknown_action",
        }
    }
}

impl fmt::Display for UdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UdpError::Truncated { needed, got } => {
                write!(f, "{}: {} bytes, need {}", self.kind(), got, needed)
            }
            UdpError::UnknownAction(a) => write!(f, "{}: {}", self.kind(), a),
        }
    }
}

impl std::error::Error for UdpError {}

/// Defects that leave a message usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpAnomaly {
    /// A connect request or response longer than 16 bytes.
    TrailingBytes,
    /// Announce response: the peer list is not a whole number of entries;
    /// the whole entries are still used.
    PeersNotMultiple,
    /// Announce response: more peers than [`UdpLimits::max_peers`].
    TooManyPeers,
    /// Scrape request or response: a trailing partial entry.
    ScrapeNotMultiple,
    /// Scrape request or response: more entries than
    /// [`UdpLimits::max_scrape_hashes`].
    TooManyScrapeHashes,
    /// BEP 41: an option's length runs past the datagram.
    OptionTruncated,
    /// BEP 41: more options than [`UdpLimits::max_options`].
    TooManyOptions,
    /// Announce request: event outside 0..=3.
    BadEvent,
    /// Announce or scrape response: a negative count.
    NegativeCount,
    /// Announce request: `num_want` outside -1..=[`UdpLimits::max_plausible_num_want`].
    NumWantOutOfRange,
    /// Announce request: `uploaded`, `downloaded` or `left` at or above 2^63
    /// (negative as BEP 15's signed field), or `downloaded` / `left` above
    /// [`UdpLimits::max_plausible_amount_bytes`].
    AmountOutOfRange,
}

impl UdpAnomaly {
    const ALL: [UdpAnomaly; 11] = [
        UdpAnomaly::TrailingBytes,
        UdpAnomaly::PeersNotMultiple,
        UdpAnomaly::TooManyPeers,
        UdpAnomaly::ScrapeNotMultiple,
        UdpAnomaly::TooManyScrapeHashes,
        UdpAnomaly::OptionTruncated,
        UdpAnomaly::TooManyOptions,
        UdpAnomaly::BadEvent,
        UdpAnomaly::NegativeCount,
        UdpAnomaly::NumWantOutOfRange,
        UdpAnomaly::AmountOutOfRange,
    ];

    /// Stable snake_case name, used as `kind` in the `anomalies` table.
    pub fn kind(&self) -> &'static str {
        match self {
            UdpAnomaly::TrailingBytes => "udp_tracker_trailing_bytes",
            UdpAnomaly::PeersNotMultiple => "peers_len_not_multiple",
            UdpAnomaly::TooManyPeers => "too_many_peers",
            UdpAnomaly::ScrapeNotMultiple => "scrape_len_not_multiple",
            UdpAnomaly::TooManyScrapeHashes => "too_many_scrape_hashes",
            UdpAnomaly::OptionTruncated => "bep41_option_truncated",
            UdpAnomaly::TooManyOptions => "bep41_too_many_options",
            UdpAnomaly::BadEvent => "udp_tracker_bad_event",
            UdpAnomaly::NegativeCount => "udp_tracker_negative_count",
            UdpAnomaly::NumWantOutOfRange => "udp_tracker_numwant_out_of_range",
            UdpAnomaly::AmountOutOfRange => "udp_tracker_amount_out_of_range",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A small set of [`UdpAnomaly`] (no allocation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpAnomalies(u16);

impl UdpAnomalies {
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn contains(&self, a: UdpAnomaly) -> bool {
        self.0 & a.bit() != 0
    }

    pub fn iter(&self) -> impl Iterator<Item = UdpAnomaly> + '_ {
        UdpAnomaly::ALL.into_iter().filter(|a| self.contains(*a))
    }

    fn insert(&mut self, a: UdpAnomaly) {
        self.0 |= a.bit();
    }
}

// ---------------------------------------------------------------------------
// Byte access (never panics: every read is `get` + fixed-size conversion)
// ---------------------------------------------------------------------------

fn be_u16(d: &[u8], at: usize) -> Option<u16> {
    let b: [u8; 2] = d.get(at..at.checked_add(2)?)?.try_into().ok()?;
    Some(u16::from_be_bytes(b))
}

fn be_u32(d: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = d.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

fn be_u64(d: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = d.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

fn be_i32(d: &[u8], at: usize) -> Option<i32> {
    be_u32(d, at).map(|v| v as i32)
}

fn be_i64(d: &[u8], at: usize) -> Option<i64> {
    be_u64(d, at).map(|v| v as i64)
}

fn arr20(d: &[u8], at: usize) -> Option<[u8; 20]> {
    d.get(at..at.checked_add(20)?)?.try_into().ok()
}

fn need(d: &[u8], needed: usize) -> Result<(), UdpError> {
    if d.len() < needed {
        Err(UdpError::Truncated { needed, got: d.len() })
    } else {
        Ok(())
    }
}

/// Shorthand for a read that the preceding [`need`] made infallible; the
/// error arm exists only so that no `unwrap` is needed.
fn trunc(d: &[u8], needed: usize) -> UdpError {
    UdpError::Truncated { needed, got: d.len() }
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// BEP 15 announce event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpEvent {
    None,
    Completed,
    Started,
    Stopped,
    /// Outside the spec (flagged [`UdpAnomaly::BadEvent`]).
    Other(u32),
}

impl UdpEvent {
    fn from_wire(v: u32) -> Self {
        match v {
            0 => UdpEvent::None,
            1 => UdpEvent::Completed,
            2 => UdpEvent::Started,
            3 => UdpEvent::Stopped,
            other => UdpEvent::Other(other),
        }
    }

    /// The HTTP spelling (`event=` value), `""` for a regular announce.
    pub fn as_str(&self) -> &'static str {
        match self {
            UdpEvent::None => "",
            UdpEvent::Completed => "completed",
            UdpEvent::Started => "started",
            UdpEvent::Stopped => "stopped",
            UdpEvent::Other(_) => "other",
        }
    }
}

/// A client-to-tracker datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpRequest<'a> {
    Connect(ConnectRequest),
    Announce(AnnounceRequest<'a>),
    Scrape(ScrapeRequest<'a>),
}

impl UdpRequest<'_> {
    pub fn transaction_id(&self) -> u32 {
        match self {
            UdpRequest::Connect(c) => c.transaction_id,
            UdpRequest::Announce(a) => a.transaction_id,
            UdpRequest::Scrape(s) => s.transaction_id,
        }
    }

    pub fn class(&self) -> RequestClass {
        match self {
            UdpRequest::Connect(_) => RequestClass::Connect,
            UdpRequest::Announce(_) => RequestClass::Announce,
            UdpRequest::Scrape(_) => RequestClass::Scrape,
        }
    }

    /// The connection id an announce or scrape carries (none for connect).
    pub fn connection_id(&self) -> Option<u64> {
        match self {
            UdpRequest::Connect(_) => None,
            UdpRequest::Announce(a) => Some(a.connection_id),
            UdpRequest::Scrape(s) => Some(s.connection_id),
        }
    }

    pub fn anomalies(&self) -> UdpAnomalies {
        match self {
            UdpRequest::Connect(c) => c.anomalies,
            UdpRequest::Announce(a) => a.anomalies,
            UdpRequest::Scrape(s) => s.anomalies,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectRequest {
    pub transaction_id: u32,
    pub anomalies: UdpAnomalies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceRequest<'a> {
    pub connection_id: u64,
    pub transaction_id: u32,
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    /// BEP 15 declares the three amounts as signed 64-bit.
    pub downloaded: i64,
    pub left: i64,
    pub uploaded: i64,
    pub event: UdpEvent,
    /// The `IP address` field: `0.0.0.0` means "use the datagram's source".
    pub ip: Ipv4Addr,
    pub key: u32,
    /// -1 asks for the tracker's default.
    pub num_want: i32,
    pub port: u16,
    /// BEP 41 option area (everything after the 98 fixed bytes).
    pub options: Bep41Options<'a>,
    pub anomalies: UdpAnomalies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeRequest<'a> {
    pub connection_id: u64,
    pub transaction_id: u32,
    pub info_hashes: InfoHashes<'a>,
    pub anomalies: UdpAnomalies,
}

/// A tracker-to-client datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpResponse<'a> {
    Connect(ConnectResponse),
    Announce(AnnounceResponse<'a>),
    Scrape(ScrapeResponse<'a>),
    Error(ErrorResponse<'a>),
}

impl UdpResponse<'_> {
    pub fn transaction_id(&self) -> u32 {
        match self {
            UdpResponse::Connect(c) => c.transaction_id,
            UdpResponse::Announce(a) => a.transaction_id,
            UdpResponse::Scrape(s) => s.transaction_id,
            UdpResponse::Error(e) => e.transaction_id,
        }
    }

    pub fn class(&self) -> ResponseClass {
        match self {
            UdpResponse::Connect(_) => ResponseClass::Connect,
            UdpResponse::Announce(_) => ResponseClass::Announce,
            UdpResponse::Scrape(_) => ResponseClass::Scrape,
            UdpResponse::Error(_) => ResponseClass::Error,
        }
    }

    pub fn anomalies(&self) -> UdpAnomalies {
        match self {
            UdpResponse::Connect(c) => c.anomalies,
            UdpResponse::Announce(a) => a.anomalies,
            UdpResponse::Scrape(s) => s.anomalies,
            UdpResponse::Error(_) => UdpAnomalies::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectResponse {
    pub transaction_id: u32,
    pub connection_id: u64,
    pub anomalies: UdpAnomalies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceResponse<'a> {
    pub transaction_id: u32,
    /// Seconds; BEP 15 declares the three counters as signed 32-bit.
    pub interval: i32,
    pub leechers: i32,
    pub seeders: i32,
    pub peers: CompactPeers<'a>,
    pub anomalies: UdpAnomalies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeResponse<'a> {
    pub transaction_id: u32,
    /// One entry per info-hash of the request, in request order.
    pub entries: ScrapeEntries<'a>,
    pub anomalies: UdpAnomalies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorResponse<'a> {
    pub transaction_id: u32,
    /// The tracker's message, as sent (usually ASCII, never terminated).
    pub message: &'a [u8],
}

// ---------------------------------------------------------------------------
// Zero-copy lists
// ---------------------------------------------------------------------------

/// Compact peer entries (BEP 15 announce response, BEP 23 / BEP 7 `peers`
/// and `peers6` strings): 4- or 16-byte address then a big-endian port.
/// Holds only whole entries, at most the limit it was built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactPeers<'a> {
    bytes: &'a [u8],
    family: AddrFamily,
}

/// What [`CompactPeers::new`] had to leave out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactCut {
    /// Bytes of a trailing partial entry.
    pub partial_bytes: usize,
    /// Whole entries beyond the limit.
    pub dropped_entries: usize,
}

impl<'a> CompactPeers<'a> {
    /// Keeps the whole entries of `bytes`, at most `max_entries` of them.
    pub fn new(bytes: &'a [u8], family: AddrFamily, max_entries: usize) -> (Self, CompactCut) {
        let stride = family.peer_len();
        let whole = bytes.len() / stride;
        let kept = whole.min(max_entries);
        let cut = CompactCut {
            partial_bytes: bytes.len() % stride,
            dropped_entries: whole - kept,
        };
        let bytes = bytes.get(..kept * stride).unwrap_or(&[]);
        (CompactPeers { bytes, family }, cut)
    }

    pub fn empty(family: AddrFamily) -> Self {
        CompactPeers { bytes: &[], family }
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / self.family.peer_len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn family(&self) -> AddrFamily {
        self.family
    }

    pub fn iter(&self) -> impl Iterator<Item = SocketAddr> + 'a {
        let family = self.family;
        self.bytes
            .chunks_exact(family.peer_len())
            .filter_map(move |e| decode_compact(e, family))
    }
}

fn decode_compact(e: &[u8], family: AddrFamily) -> Option<SocketAddr> {
    match family {
        AddrFamily::V4 => {
            let a: [u8; 4] = e.get(..4)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), be_u16(e, 4)?))
        }
        AddrFamily::V6 => {
            let a: [u8; 16] = e.get(..16)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), be_u16(e, 16)?))
        }
    }
}

/// Info-hashes of a scrape request, 20 bytes each, whole entries only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoHashes<'a> {
    bytes: &'a [u8],
}

impl<'a> InfoHashes<'a> {
    pub fn len(&self) -> usize {
        self.bytes.len() / 20
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = [u8; 20]> + 'a {
        self.bytes.chunks_exact(20).filter_map(|c| <[u8; 20]>::try_from(c).ok())
    }
}

/// One torrent's counters in a scrape response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeEntry {
    pub seeders: i32,
    pub completed: i32,
    pub leechers: i32,
}

/// Entries of a scrape response, whole entries only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeEntries<'a> {
    bytes: &'a [u8],
}

impl<'a> ScrapeEntries<'a> {
    pub fn len(&self) -> usize {
        self.bytes.len() / SCRAPE_ENTRY_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = ScrapeEntry> + 'a {
        self.bytes.chunks_exact(SCRAPE_ENTRY_LEN).filter_map(|c| {
            Some(ScrapeEntry {
                seeders: be_i32(c, 0)?,
                completed: be_i32(c, 4)?,
                leechers: be_i32(c, 8)?,
            })
        })
    }
}

/// One BEP 41 option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bep41Option<'a> {
    /// Type 0x0: nothing after it is an option.
    EndOfOptions,
    /// Type 0x1: padding.
    Nop,
    /// Type 0x2: a piece of the announce URL's path and query; several are
    /// concatenated in order.
    UrlData(&'a [u8]),
    /// Any other type: BEP 41 gives every type above 0x1 a length byte, so
    /// unknown ones can be stepped over.
    Unknown { kind: u8, data: &'a [u8] },
}

/// The option area of an announce request (may be empty).
///
/// Built by [`parse_request`], which validated the walk, so iteration
/// yields exactly the options that lie inside the datagram, at most
/// [`UdpLimits::max_options`] of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bep41Options<'a> {
    bytes: &'a [u8],
    max_options: usize,
}

impl<'a> Bep41Options<'a> {
    pub fn raw(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn iter(&self) -> Bep41Iter<'a> {
        Bep41Iter {
            rest: self.bytes,
            left: self.max_options,
        }
    }

    /// The URLData pieces concatenated (BEP 41: the request string is split
    /// over as many options as needed), lossily decoded as UTF-8. `None`
    /// when the request carries no URLData.
    pub fn url_data(&self) -> Option<String> {
        let mut out: Option<Vec<u8>> = None;
        for opt in self.iter() {
            if let Bep41Option::UrlData(d) = opt {
                out.get_or_insert_with(Vec::new).extend_from_slice(d);
            }
        }
        out.map(|v| String::from_utf8_lossy(&v).into_owned())
    }
}

/// Iterator over [`Bep41Options`]; stops at EndOfOptions, at the end of the
/// datagram, at a truncated option or after the option limit.
#[derive(Debug, Clone)]
pub struct Bep41Iter<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for Bep41Iter<'a> {
    type Item = Bep41Option<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let (&kind, tail) = self.rest.split_first()?;
        self.left -= 1;
        match kind {
            0 => {
                self.rest = &[];
                Some(Bep41Option::EndOfOptions)
            }
            1 => {
                self.rest = tail;
                Some(Bep41Option::Nop)
            }
            _ => {
                let (&len, tail) = tail.split_first().or_else(|| {
                    self.rest = &[];
                    None
                })?;
                let len = usize::from(len);
                let Some(data) = tail.get(..len) else {
                    self.rest = &[];
                    return None;
                };
                self.rest = tail.get(len..).unwrap_or(&[]);
                Some(if kind == 2 {
                    Bep41Option::UrlData(data)
                } else {
                    Bep41Option::Unknown { kind, data }
                })
            }
        }
    }
}

/// Walks an option area once, to find its defects.
fn check_options(bytes: &[u8], max_options: usize) -> UdpAnomalies {
    let mut anomalies = UdpAnomalies::default();
    let mut rest = bytes;
    let mut n = 0usize;
    while let Some((&kind, tail)) = rest.split_first() {
        if n == max_options {
            anomalies.insert(UdpAnomaly::TooManyOptions);
            break;
        }
        n += 1;
        match kind {
            0 => break,
            1 => rest = tail,
            _ => {
                let Some((&len, tail)) = tail.split_first() else {
                    anomalies.insert(UdpAnomaly::OptionTruncated);
                    break;
                };
                match tail.get(usize::from(len)..) {
                    Some(r) => rest = r,
                    None => {
                        anomalies.insert(UdpAnomaly::OptionTruncated);
                        break;
                    }
                }
            }
        }
    }
    anomalies
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Decodes a client-to-tracker datagram. The type comes from the bytes: the
/// protocol id makes a connect, otherwise the action at offset 8 decides.
pub fn parse_request<'a>(d: &'a [u8], limits: &UdpLimits) -> Result<UdpRequest<'a>, UdpError> {
    need(d, CONNECT_LEN)?;
    let first = be_u64(d, 0).ok_or_else(|| trunc(d, 8))?;
    let action = be_u32(d, 8).ok_or_else(|| trunc(d, 12))?;
    let transaction_id = be_u32(d, 12).ok_or_else(|| trunc(d, 16))?;
    if first == PROTOCOL_ID && action == ACTION_CONNECT {
        let mut anomalies = UdpAnomalies::default();
        if d.len() > CONNECT_LEN {
            anomalies.insert(UdpAnomaly::TrailingBytes);
        }
        return Ok(UdpRequest::Connect(ConnectRequest {
            transaction_id,
            anomalies,
        }));
    }
    match action {
        ACTION_ANNOUNCE => parse_announce_request(d, first, transaction_id, limits).map(UdpRequest::Announce),
        ACTION_SCRAPE => {
            let (info_hashes, anomalies) = scrape_hashes(d, limits);
            Ok(UdpRequest::Scrape(ScrapeRequest {
                connection_id: first,
                transaction_id,
                info_hashes,
                anomalies,
            }))
        }
        other => Err(UdpError::UnknownAction(other)),
    }
}

fn parse_announce_request<'a>(
    d: &'a [u8],
    connection_id: u64,
    transaction_id: u32,
    limits: &UdpLimits,
) -> Result<AnnounceRequest<'a>, UdpError> {
    need(d, ANNOUNCE_REQUEST_LEN)?;
    let t = |n| trunc(d, n);
    let event_raw = be_u32(d, 80).ok_or_else(|| t(84))?;
    let event = UdpEvent::from_wire(event_raw);
    let opt_bytes = d.get(ANNOUNCE_REQUEST_LEN..).unwrap_or(&[]);
    let mut anomalies = check_options(opt_bytes, limits.max_options);
    if matches!(event, UdpEvent::Other(_)) {
        anomalies.insert(UdpAnomaly::BadEvent);
    }
    let (downloaded, left, uploaded, num_want) = (
        be_i64(d, 56).ok_or_else(|| t(64))?,
        be_i64(d, 64).ok_or_else(|| t(72))?,
        be_i64(d, 72).ok_or_else(|| t(80))?,
        be_i32(d, 92).ok_or_else(|| t(96))?,
    );
    if !(-1..=limits.max_plausible_num_want).contains(&num_want) {
        anomalies.insert(UdpAnomaly::NumWantOutOfRange);
    }
    let max = limits.max_plausible_amount_bytes;
    if uploaded < 0 || !(0..=max).contains(&downloaded) || !(0..=max).contains(&left) {
        anomalies.insert(UdpAnomaly::AmountOutOfRange);
    }
    Ok(AnnounceRequest {
        connection_id,
        transaction_id,
        info_hash: arr20(d, 16).ok_or_else(|| t(36))?,
        peer_id: arr20(d, 36).ok_or_else(|| t(56))?,
        downloaded,
        left,
        uploaded,
        event,
        ip: Ipv4Addr::from(be_u32(d, 84).ok_or_else(|| t(88))?),
        key: be_u32(d, 88).ok_or_else(|| t(92))?,
        num_want,
        port: be_u16(d, 96).ok_or_else(|| t(98))?,
        options: Bep41Options {
            bytes: opt_bytes,
            max_options: limits.max_options,
        },
        anomalies,
    })
}

fn scrape_hashes<'a>(d: &'a [u8], limits: &UdpLimits) -> (InfoHashes<'a>, UdpAnomalies) {
    let mut anomalies = UdpAnomalies::default();
    let body = d.get(SCRAPE_REQUEST_HEADER_LEN..).unwrap_or(&[]);
    if body.len() % 20 != 0 {
        anomalies.insert(UdpAnomaly::ScrapeNotMultiple);
    }
    let whole = body.len() / 20;
    if whole > limits.max_scrape_hashes {
        anomalies.insert(UdpAnomaly::TooManyScrapeHashes);
    }
    let kept = whole.min(limits.max_scrape_hashes);
    let bytes = body.get(..kept * 20).unwrap_or(&[]);
    (InfoHashes { bytes }, anomalies)
}

/// Decodes a tracker-to-client datagram. `family` is the address family of
/// the IP header that carried it (it fixes the peer entry size).
pub fn parse_response<'a>(d: &'a [u8], family: AddrFamily, limits: &UdpLimits) -> Result<UdpResponse<'a>, UdpError> {
    need(d, RESPONSE_HEADER_LEN)?;
    let action = be_u32(d, 0).ok_or_else(|| trunc(d, 4))?;
    let transaction_id = be_u32(d, 4).ok_or_else(|| trunc(d, 8))?;
    let body = d.get(RESPONSE_HEADER_LEN..).unwrap_or(&[]);
    match action {
        ACTION_CONNECT => {
            need(d, CONNECT_LEN)?;
            let mut anomalies = UdpAnomalies::default();
            if d.len() > CONNECT_LEN {
                anomalies.insert(UdpAnomaly::TrailingBytes);
            }
            Ok(UdpResponse::Connect(ConnectResponse {
                transaction_id,
                connection_id: be_u64(d, 8).ok_or_else(|| trunc(d, 16))?,
                anomalies,
            }))
        }
        ACTION_ANNOUNCE => {
            need(d, ANNOUNCE_RESPONSE_HEADER_LEN)?;
            let interval = be_i32(d, 8).ok_or_else(|| trunc(d, 12))?;
            let leechers = be_i32(d, 12).ok_or_else(|| trunc(d, 16))?;
            let seeders = be_i32(d, 16).ok_or_else(|| trunc(d, 20))?;
            let raw_peers = d.get(ANNOUNCE_RESPONSE_HEADER_LEN..).unwrap_or(&[]);
            let (peers, cut) = CompactPeers::new(raw_peers, family, limits.max_peers);
            let mut anomalies = UdpAnomalies::default();
            if cut.partial_bytes != 0 {
                anomalies.insert(UdpAnomaly::PeersNotMultiple);
            }
            if cut.dropped_entries != 0 {
                anomalies.insert(UdpAnomaly::TooManyPeers);
            }
            if interval < 0 || leechers < 0 || seeders < 0 {
                anomalies.insert(UdpAnomaly::NegativeCount);
            }
            Ok(UdpResponse::Announce(AnnounceResponse {
                transaction_id,
                interval,
                leechers,
                seeders,
                peers,
                anomalies,
            }))
        }
        ACTION_SCRAPE => {
            let mut anomalies = UdpAnomalies::default();
            if body.len() % SCRAPE_ENTRY_LEN != 0 {
                anomalies.insert(UdpAnomaly::ScrapeNotMultiple);
            }
            let whole = body.len() / SCRAPE_ENTRY_LEN;
            if whole > limits.max_scrape_hashes {
                anomalies.insert(UdpAnomaly::TooManyScrapeHashes);
            }
            let kept = whole.min(limits.max_scrape_hashes);
            let entries = ScrapeEntries {
                bytes: body.get(..kept * SCRAPE_ENTRY_LEN).unwrap_or(&[]),
            };
            if entries
                .iter()
                .any(|e| e.seeders < 0 || e.completed < 0 || e.leechers < 0)
            {
                anomalies.insert(UdpAnomaly::NegativeCount);
            }
            Ok(UdpResponse::Scrape(ScrapeResponse {
                transaction_id,
                entries,
                anomalies,
            }))
        }
        ACTION_ERROR => Ok(UdpResponse::Error(ErrorResponse {
            transaction_id,
            message: body,
        })),
        other => Err(UdpError::UnknownAction(other)),
    }
}

// ---------------------------------------------------------------------------
// Recognition on any port
// ---------------------------------------------------------------------------

/// How sure a recognition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Confidence {
    /// Structure fits and the values are sane, but no protocol constant or
    /// captured context proves it.
    Plausible,
    /// Proven: the magic protocol id, or a connection id / transaction id
    /// seen in the same exchange.
    Certain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestClass {
    Connect,
    Announce,
    Scrape,
}

impl RequestClass {
    pub fn as_str(&self) -> &'static str {
        match self {
            RequestClass::Connect => "connect",
            RequestClass::Announce => "announce",
            RequestClass::Scrape => "scrape",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseClass {
    Connect,
    Announce,
    Scrape,
    Error,
}

impl ResponseClass {
    pub fn as_str(&self) -> &'static str {
        match self {
            ResponseClass::Connect => "connect",
            ResponseClass::Announce => "announce",
            ResponseClass::Scrape => "scrape",
            ResponseClass::Error => "error",
        }
    }

    /// Whether a response of this class can answer a request of `req`
    /// (an error answers anything).
    pub fn answers(&self, req: RequestClass) -> bool {
        matches!(
            (self, req),
            (ResponseClass::Error, _)
                | (ResponseClass::Connect, RequestClass::Connect)
                | (ResponseClass::Announce, RequestClass::Announce)
                | (ResponseClass::Scrape, RequestClass::Scrape)
        )
    }
}

/// Recognises a client-to-tracker datagram by content alone.
///
/// - Connect: the 64-bit protocol id and action 0: [`Confidence::Certain`]
///   (exactly 16 bytes) or plausible (longer: nobody pads a connect).
/// - Announce: at least 98 bytes, action 1, and values a real client sends:
///   event 0..=3, `left` and `downloaded` in
///   0..=[`UdpLimits::max_plausible_amount_bytes`], `uploaded` ≥ 0,
///   `num_want` in -1..=[`UdpLimits::max_plausible_num_want`], a well-formed
///   BEP 41 option area, and a connection id that is not the protocol id.
///   Six independent constraints on otherwise random-looking bytes (uTP and
///   DHT datagrams cannot reach action 1 at offset 8 with the rest holding).
///   The port is deliberately *not* checked: qBittorrent (libtorrent)
///   announces port 0 in real captures.
/// - Scrape: action 2 and a size of 16 + 20·n (n ≥ 1), connection id not the
///   protocol id. Weaker; pair it with its response to be sure.
/// - Neither when the connection id starts with a response action (1..=3):
///   that is an answer whose request was not captured.
///
/// Announce and scrape are only ever plausible here: [`PendingUdp`] upgrades
/// them to certain when their connection id is known.
pub fn classify_request(d: &[u8], limits: &UdpLimits) -> Option<(RequestClass, Confidence)> {
    let class = request_shape(d, limits)?;
    if class == RequestClass::Connect {
        let conf = if d.len() == CONNECT_LEN {
            Confidence::Certain
        } else {
            Confidence::Plausible
        };
        return Some((class, conf));
    }
    // The first four bytes of an announce, scrape or error answer are its
    // action (1..=3): a connection id starting so is such an answer seen
    // without its request (a scrape answer whose first seeders count is 1
    // has the shape of an announce request), or one chance in 2^30 of a
    // real id; without a known connection id it is not taken for a request.
    if be_u32(d, 0).is_some_and(|v| (ACTION_ANNOUNCE..=ACTION_ERROR).contains(&v)) {
        return None;
    }
    if class == RequestClass::Announce {
        let downloaded = be_i64(d, 56)?;
        let left = be_i64(d, 64)?;
        let uploaded = be_i64(d, 72)?;
        let event = be_u32(d, 80)?;
        let num_want = be_i32(d, 92)?;
        let max = limits.max_plausible_amount_bytes;
        let sane = event <= 3
            && (0..=max).contains(&left)
            && (0..=max).contains(&downloaded)
            && uploaded >= 0
            && (-1..=limits.max_plausible_num_want).contains(&num_want);
        if !sane {
            return None;
        }
    }
    Some((class, Confidence::Plausible))
}

/// The structure of a client-to-tracker datagram, without judging its
/// values: connect (protocol id, action 0), announce (action 1, at least 98
/// bytes, a well-formed BEP 41 option area, connection id not the protocol
/// id) or scrape (action 2, 16 + 20·n bytes, n ≥ 1, any n: a longer scrape
/// is cut when parsed, and flagged). With the connection id known (the
/// connect exchange was captured) this is enough: the values are the
/// client's to report, out of range or not, and an audit must see them.
pub fn request_shape(d: &[u8], limits: &UdpLimits) -> Option<RequestClass> {
    let first = be_u64(d, 0)?;
    let action = be_u32(d, 8)?;
    if first == PROTOCOL_ID {
        return (action == ACTION_CONNECT && d.len() >= CONNECT_LEN).then_some(RequestClass::Connect);
    }
    match action {
        ACTION_ANNOUNCE
            if d.len() >= ANNOUNCE_REQUEST_LEN
                && check_options(d.get(ANNOUNCE_REQUEST_LEN..).unwrap_or(&[]), limits.max_options).is_empty() =>
        {
            Some(RequestClass::Announce)
        }
        ACTION_SCRAPE
            if d.len() > SCRAPE_REQUEST_HEADER_LEN && (d.len() - SCRAPE_REQUEST_HEADER_LEN).is_multiple_of(20) =>
        {
            Some(RequestClass::Scrape)
        }
        _ => None,
    }
}

/// Recognises a tracker-to-client datagram by its action and size:
/// connect = exactly 16 bytes; announce = 20 + whole peer entries of the
/// datagram's family with non-negative counters; scrape = 8 + 12·n with
/// non-negative counters; error = action 3 and a printable message.
///
/// Always [`Confidence::Plausible`]: a response is certain only when it
/// answers a pending request ([`PendingUdp::on_response`]).
pub fn classify_response(d: &[u8], family: AddrFamily, limits: &UdpLimits) -> Option<(ResponseClass, Confidence)> {
    let action = be_u32(d, 0)?;
    let _tid = be_u32(d, 4)?;
    let body = d.get(RESPONSE_HEADER_LEN..)?;
    let class = match action {
        ACTION_CONNECT if d.len() == CONNECT_LEN => ResponseClass::Connect,
        ACTION_ANNOUNCE if d.len() >= ANNOUNCE_RESPONSE_HEADER_LEN => {
            let peers_len = d.len() - ANNOUNCE_RESPONSE_HEADER_LEN;
            let counters_ok = (8..20).step_by(4).all(|at| be_i32(d, at).is_some_and(|v| v >= 0));
            if !peers_len.is_multiple_of(family.peer_len())
                || peers_len / family.peer_len() > limits.max_peers
                || !counters_ok
            {
                return None;
            }
            ResponseClass::Announce
        }
        ACTION_SCRAPE if !body.is_empty() && body.len() % SCRAPE_ENTRY_LEN == 0 => {
            let ok = (0..body.len())
                .step_by(4)
                .all(|at| be_i32(body, at).is_some_and(|v| v >= 0));
            if !ok {
                return None;
            }
            ResponseClass::Scrape
        }
        ACTION_ERROR
            if !body.is_empty()
                && body
                    .iter()
                    .all(|&b| b == b'\t' || b == b'\n' || b == b'\r' || (0x20..0x7f).contains(&b) || b >= 0x80) =>
        {
            ResponseClass::Error
        }
        _ => return None,
    };
    Some((class, Confidence::Plausible))
}

// ---------------------------------------------------------------------------
// Pairing
// ---------------------------------------------------------------------------

/// The two ends of a tracker exchange (the client sends requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub client: SocketAddr,
    pub tracker: SocketAddr,
}

/// Bounds of [`PendingUdp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    /// Requests waiting for their answer. A client has a handful in flight
    /// per tracker; 4096 covers a busy host on a tap. When full, the oldest
    /// is evicted (counted in [`PendingStats::n_evicted`]).
    pub max_pending: usize,
    /// How long a request waits for its answer, in microseconds of packet
    /// time. BEP 15 clients retransmit after 15 s, 30 s, 60 s …; an answer
    /// later than 60 s would be to a retransmission, which carries the same
    /// transaction id and re-arms the wait.
    pub request_timeout_us: i64,
    /// Connection ids remembered. One per (client, tracker) at a time in
    /// practice; 4096 as for requests, oldest evicted when full.
    pub max_connection_ids: usize,
    /// How long a connection id counts as known, in microseconds of packet
    /// time. BEP 15: a client may use one for 1 minute and a tracker accepts
    /// it for 2 minutes after issuing it, so 2 minutes.
    pub connection_id_ttl_us: i64,
}

impl Default for PendingLimits {
    fn default() -> Self {
        PendingLimits {
            max_pending: 4096,
            request_timeout_us: 60_000_000,
            max_connection_ids: 4096,
            connection_id_ttl_us: 120_000_000,
        }
    }
}

/// Counters of [`PendingUdp`] (for `capture_stats` / `anomalies`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingStats {
    /// Requests dropped because the table was full.
    pub n_evicted: u64,
    /// Requests never answered within the timeout.
    pub n_expired: u64,
    /// Requests seen again with a transaction id already pending.
    pub n_retransmits: u64,
    /// Connection ids dropped because their table was full.
    pub n_connection_ids_evicted: u64,
}

/// What [`PendingUdp::on_request`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new pending request.
    New,
    /// Same key already pending: kept the first (its time is the start of
    /// the exchange), counted as a retransmission.
    Retransmit,
    /// New, and the oldest pending request was evicted to make room.
    EvictedOldest,
}

/// A response paired with its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<T> {
    pub request: RequestClass,
    /// Packet time of the request, microseconds.
    pub request_ts_us: i64,
    /// What the caller stored with the request.
    pub value: T,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TxKey {
    transaction_id: u32,
    endpoints: Endpoints,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    connection_id: u64,
    endpoints: Endpoints,
}

#[derive(Debug)]
struct Pending<T> {
    class: RequestClass,
    connection_id: Option<u64>,
    value: T,
}

/// Pending transactions and known connection ids, bounded and expiring by
/// packet time. `T` is whatever the caller wants back with the response
/// (typically the half-built `tracker_announces` row).
///
/// Deterministic: eviction and expiry follow insertion order, never hash
/// order.
#[derive(Debug)]
pub struct PendingUdp<T> {
    limits: PendingLimits,
    pending: ExpiringTable<TxKey, Pending<T>>,
    conn_ids: ExpiringTable<ConnKey, ()>,
    stats: PendingStats,
    /// Requests that left the table unanswered (expired or evicted), kept
    /// until the caller takes them with [`PendingUdp::take_unanswered`], so
    /// that an unanswered announce still becomes a row. The caller drains
    /// it after every call, so it holds what one call dropped.
    unanswered: Vec<Unanswered<T>>,
}

/// A request that was never answered: expired after
/// [`PendingLimits::request_timeout_us`], evicted from a full table, or
/// still waiting when the caller drained the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswered<T> {
    pub request: RequestClass,
    /// Packet time of the request, microseconds.
    pub request_ts_us: i64,
    pub endpoints: Endpoints,
    /// What the caller stored with the request.
    pub value: T,
}

impl<T> PendingUdp<T> {
    pub fn new(limits: PendingLimits) -> Self {
        PendingUdp {
            limits,
            pending: ExpiringTable::new(limits.max_pending),
            conn_ids: ExpiringTable::new(limits.max_connection_ids),
            stats: PendingStats::default(),
            unanswered: Vec::new(),
        }
    }

    /// Requests dropped unanswered since the last call (see [`Unanswered`]).
    pub fn take_unanswered(&mut self) -> Vec<Unanswered<T>> {
        std::mem::take(&mut self.unanswered)
    }

    /// Removes every pending request (end of input): all of them are
    /// returned by the next [`PendingUdp::take_unanswered`].
    pub fn drain(&mut self) {
        let out = &mut self.unanswered;
        self.pending.drain(&mut |k: TxKey, ts, v: Pending<T>| {
            out.push(Unanswered {
                request: v.class,
                request_ts_us: ts,
                endpoints: k.endpoints,
                value: v.value,
            })
        });
    }

    pub fn stats(&self) -> PendingStats {
        self.stats
    }

    /// Requests currently waiting.
    pub fn n_pending(&self) -> usize {
        self.pending.len()
    }

    /// Connection ids currently remembered.
    pub fn n_connection_ids(&self) -> usize {
        self.conn_ids.len()
    }

    /// Drops what is older than the limits allow at packet time `now_us`.
    /// Every other method calls it first, so calling it directly is only
    /// needed to release memory on an idle table.
    pub fn expire(&mut self, now_us: i64) {
        let out = &mut self.unanswered;
        self.stats.n_expired += self
            .pending
            .expire(now_us, self.limits.request_timeout_us, &mut |k, ts, v| {
                out.push(Unanswered {
                    request: v.class,
                    request_ts_us: ts,
                    endpoints: k.endpoints,
                    value: v.value,
                })
            });
        self.conn_ids
            .expire(now_us, self.limits.connection_id_ttl_us, &mut |_, _, _| {});
    }

    /// Whether `connection_id` was handed to (or successfully used by) this
    /// client at this tracker within the TTL.
    pub fn knows_connection(&mut self, now_us: i64, ep: Endpoints, connection_id: u64) -> bool {
        self.expire(now_us);
        self.conn_ids
            .get(&ConnKey {
                connection_id,
                endpoints: ep,
            })
            .is_some()
    }

    /// Remembers a connection id (done automatically for matched connect
    /// responses and for answered announces / scrapes).
    pub fn learn_connection(&mut self, now_us: i64, ep: Endpoints, connection_id: u64) {
        self.expire(now_us);
        let key = ConnKey {
            connection_id,
            endpoints: ep,
        };
        // Re-learning restarts the TTL: the tracker has just accepted it.
        self.conn_ids.remove(&key);
        if self.conn_ids.insert(now_us, key, ()).is_some() {
            self.stats.n_connection_ids_evicted += 1;
        }
    }

    /// [`classify_request`], upgraded to certain when the datagram carries a
    /// connection id known for these endpoints. `ep.client` must be the
    /// datagram's source.
    pub fn classify_request(
        &mut self,
        now_us: i64,
        ep: Endpoints,
        d: &[u8],
        limits: &UdpLimits,
    ) -> Option<(RequestClass, Confidence)> {
        let class = request_shape(d, limits)?;
        if class != RequestClass::Connect {
            if let Some(cid) = be_u64(d, 0) {
                if self.knows_connection(now_us, ep, cid) {
                    return Some((class, Confidence::Certain));
                }
            }
        }
        classify_request(d, limits)
    }

    /// Records a request sent by `ep.client` to `ep.tracker`.
    pub fn on_request(&mut self, now_us: i64, ep: Endpoints, request: &UdpRequest<'_>, value: T) -> Inserted {
        self.expire(now_us);
        let key = TxKey {
            transaction_id: request.transaction_id(),
            endpoints: ep,
        };
        if self.pending.get(&key).is_some() {
            self.stats.n_retransmits += 1;
            return Inserted::Retransmit;
        }
        let entry = Pending {
            class: request.class(),
            connection_id: request.connection_id(),
            value,
        };
        if let Some((k, ts, v)) = self.pending.insert(now_us, key, entry) {
            self.unanswered.push(Unanswered {
                request: v.class,
                request_ts_us: ts,
                endpoints: k.endpoints,
                value: v.value,
            });
            self.stats.n_evicted += 1;
            Inserted::EvictedOldest
        } else {
            Inserted::New
        }
    }

    /// Pairs a response sent by `ep.tracker` to `ep.client` with its request
    /// (same transaction id and endpoints, compatible action). On a match
    /// the request is removed and the connection id learned: from a connect
    /// response, or the one the answered announce / scrape used (the tracker
    /// accepted it). A response whose action does not fit the pending
    /// request leaves it pending and returns `None`.
    pub fn on_response(&mut self, now_us: i64, ep: Endpoints, response: &UdpResponse<'_>) -> Option<Matched<T>> {
        self.expire(now_us);
        let key = TxKey {
            transaction_id: response.transaction_id(),
            endpoints: ep,
        };
        let class = self.pending.get(&key)?.class;
        if !response.class().answers(class) {
            return None;
        }
        let (request_ts_us, entry) = self.pending.remove(&key)?;
        let learned = match response {
            UdpResponse::Connect(c) => Some(c.connection_id),
            UdpResponse::Announce(_) | UdpResponse::Scrape(_) => entry.connection_id,
            UdpResponse::Error(_) => None,
        };
        if let Some(cid) = learned {
            self.learn_connection(now_us, ep, cid);
        }
        Some(Matched {
            request: entry.class,
            request_ts_us,
            value: entry.value,
        })
    }
}

/// A capped map whose entries expire in insertion order.
///
/// The FIFO can hold stale keys (removed or re-inserted entries); each FIFO
/// slot carries the sequence number of the insert that made it, and only the
/// slot whose number matches the live entry counts. The FIFO is compacted
/// when stale slots outnumber live ones, so its length stays below
/// `2 * cap + 16`.
#[derive(Debug)]
struct ExpiringTable<K, V> {
    cap: usize,
    map: HashMap<K, (u64, i64, V)>,
    fifo: VecDeque<(u64, i64, K)>,
    next_seq: u64,
}

impl<K: Copy + Eq + Hash, V> ExpiringTable<K, V> {
    fn new(cap: usize) -> Self {
        ExpiringTable {
            cap,
            map: HashMap::new(),
            fifo: VecDeque::new(),
            next_seq: 0,
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(_, _, v)| v)
    }

    fn remove(&mut self, k: &K) -> Option<(i64, V)> {
        self.map.remove(k).map(|(_, ts, v)| (ts, v))
    }

    /// Inserts (replacing any entry under `k`); returns the oldest live
    /// entry when it had to be evicted to respect the cap (with a cap of 0
    /// the new entry itself is returned, never stored).
    fn insert(&mut self, ts: i64, k: K, v: V) -> Option<(K, i64, V)> {
        let mut evicted = None;
        if self.cap == 0 {
            return Some((k, ts, v));
        }
        if !self.map.contains_key(&k) && self.map.len() >= self.cap {
            while let Some((seq, _, old)) = self.fifo.pop_front() {
                if self.map.get(&old).is_some_and(|(s, _, _)| *s == seq) {
                    evicted = self.map.remove(&old).map(|(_, ots, ov)| (old, ots, ov));
                    break;
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.map.insert(k, (seq, ts, v));
        self.fifo.push_back((seq, ts, k));
        if self.fifo.len() > 2 * self.cap + 16 {
            let map = &self.map;
            self.fifo
                .retain(|(seq, _, k)| map.get(k).is_some_and(|(s, _, _)| s == seq));
        }
        evicted
    }

    /// Removes live entries older than `ttl` at `now`, handing each to
    /// `gone`; returns how many. Packet time may step backwards (several
    /// files, reordering): an entry "from the future" is simply not expired
    /// yet.
    fn expire(&mut self, now: i64, ttl: i64, gone: &mut impl FnMut(K, i64, V)) -> u64 {
        let mut n = 0;
        while let Some(&(seq, ts, k)) = self.fifo.front() {
            if now.saturating_sub(ts) <= ttl {
                break;
            }
            self.fifo.pop_front();
            if self.map.get(&k).is_some_and(|(s, _, _)| *s == seq) {
                if let Some((_, ts, v)) = self.map.remove(&k) {
                    gone(k, ts, v);
                }
                n += 1;
            }
        }
        n
    }

    /// Removes every live entry, oldest first, handing each to `gone`.
    fn drain(&mut self, gone: &mut impl FnMut(K, i64, V)) {
        while let Some((seq, _, k)) = self.fifo.pop_front() {
            if self.map.get(&k).is_some_and(|(s, _, _)| *s == seq) {
                if let Some((_, ts, v)) = self.map.remove(&k) {
                    gone(k, ts, v);
                }
            }
        }
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> UdpLimits {
        UdpLimits::default()
    }

    fn connect_req(tid: u32) -> Vec<u8> {
        let mut v = PROTOCOL_ID.to_be_bytes().to_vec();
        v.extend_from_slice(&ACTION_CONNECT.to_be_bytes());
        v.extend_from_slice(&tid.to_be_bytes());
        v
    }

    fn connect_resp(tid: u32, cid: u64) -> Vec<u8> {
        let mut v = ACTION_CONNECT.to_be_bytes().to_vec();
        v.extend_from_slice(&tid.to_be_bytes());
        v.extend_from_slice(&cid.to_be_bytes());
        v
    }

    struct Ann {
        cid: u64,
        tid: u32,
        downloaded: i64,
        left: i64,
        uploaded: i64,
        event: u32,
        num_want: i32,
        port: u16,
        options: Vec<u8>,
    }

    impl Default for Ann {
        fn default() -> Self {
            Ann {
                cid: 0x1122_3344_5566_7788,
                tid: 0xdead_beef,
                downloaded: 1000,
                left: 5000,
                uploaded: 300,
                event: 2,
                num_want: -1,
                port: 6881,
                options: Vec::new(),
            }
        }
    }

    fn announce_req(a: &Ann) -> Vec<u8> {
        let mut v = a.cid.to_be_bytes().to_vec();
        v.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
        v.extend_from_slice(&a.tid.to_be_bytes());
        v.extend_from_slice(&[0xaa; 20]);
        v.extend_from_slice(b"-TR2940-abcdefghijkl");
        v.extend_from_slice(&a.downloaded.to_be_bytes());
        v.extend_from_slice(&a.left.to_be_bytes());
        v.extend_from_slice(&a.uploaded.to_be_bytes());
        v.extend_from_slice(&a.event.to_be_bytes());
        v.extend_from_slice(&[10, 0, 0, 1]);
        v.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        v.extend_from_slice(&a.num_want.to_be_bytes());
        v.extend_from_slice(&a.port.to_be_bytes());
        v.extend_from_slice(&a.options);
        v
    }

    fn announce_resp(tid: u32, peers: &[u8]) -> Vec<u8> {
        let mut v = ACTION_ANNOUNCE.to_be_bytes().to_vec();
        v.extend_from_slice(&tid.to_be_bytes());
        v.extend_from_slice(&1800i32.to_be_bytes());
        v.extend_from_slice(&7i32.to_be_bytes());
        v.extend_from_slice(&3i32.to_be_bytes());
        v.extend_from_slice(peers);
        v
    }

    fn scrape_req(cid: u64, tid: u32, n: u8) -> Vec<u8> {
        let mut v = cid.to_be_bytes().to_vec();
        v.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
        v.extend_from_slice(&tid.to_be_bytes());
        for i in 0..n {
            v.extend_from_slice(&[i; 20]);
        }
        v
    }

    fn scrape_resp(tid: u32, entries: &[(i32, i32, i32)]) -> Vec<u8> {
        let mut v = ACTION_SCRAPE.to_be_bytes().to_vec();
        v.extend_from_slice(&tid.to_be_bytes());
        for (s, c, l) in entries {
            v.extend_from_slice(&s.to_be_bytes());
            v.extend_from_slice(&c.to_be_bytes());
            v.extend_from_slice(&l.to_be_bytes());
        }
        v
    }

    fn error_resp(tid: u32, msg: &[u8]) -> Vec<u8> {
        let mut v = ACTION_ERROR.to_be_bytes().to_vec();
        v.extend_from_slice(&tid.to_be_bytes());
        v.extend_from_slice(msg);
        v
    }

    fn ep() -> Endpoints {
        Endpoints {
            client: "192.168.1.2:51413".parse().unwrap(),
            tracker: "203.0.113.9:6969".parse().unwrap(),
        }
    }

    #[test]
    fn connect_roundtrip_and_classification() {
        let req = connect_req(0x4829_9c64);
        assert_eq!(
            classify_request(&req, &lim()),
            Some((RequestClass::Connect, Confidence::Certain))
        );
        match parse_request(&req, &lim()).unwrap() {
            UdpRequest::Connect(c) => {
                assert_eq!(c.transaction_id, 0x4829_9c64);
                assert!(c.anomalies.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let resp = connect_resp(0x4829_9c64, 0x023a_7df5_eb31_67fc);
        assert_eq!(
            classify_response(&resp, AddrFamily::V4, &lim()),
            Some((ResponseClass::Connect, Confidence::Plausible))
        );
        match parse_response(&resp, AddrFamily::V4, &lim()).unwrap() {
            UdpResponse::Connect(c) => assert_eq!(c.connection_id, 0x023a_7df5_eb31_67fc),
            other => panic!("{other:?}"),
        }
        // A padded connect is still a connect, flagged, and only plausible.
        let mut padded = req.clone();
        padded.push(0);
        assert_eq!(
            classify_request(&padded, &lim()),
            Some((RequestClass::Connect, Confidence::Plausible))
        );
        assert!(parse_request(&padded, &lim())
            .unwrap()
            .anomalies()
            .contains(UdpAnomaly::TrailingBytes));
    }

    #[test]
    fn announce_request_fields_and_bep41_options() {
        let mut opts = vec![2u8, 9];
        opts.extend_from_slice(b"/announce");
        opts.extend_from_slice(&[1, 2, 6]);
        opts.extend_from_slice(b"?key=x");
        opts.extend_from_slice(&[7, 2, 0xff, 0xfe, 0, 2, 3]);
        let a = Ann {
            options: opts,
            ..Ann::default()
        };
        let d = announce_req(&a);
        assert_eq!(
            classify_request(&d, &lim()),
            Some((RequestClass::Announce, Confidence::Plausible))
        );
        let UdpRequest::Announce(r) = parse_request(&d, &lim()).unwrap() else {
            panic!()
        };
        assert_eq!(r.connection_id, a.cid);
        assert_eq!(r.transaction_id, a.tid);
        assert_eq!(r.info_hash, [0xaa; 20]);
        assert_eq!(&r.peer_id, b"-TR2940-abcdefghijkl");
        assert_eq!((r.downloaded, r.left, r.uploaded), (1000, 5000, 300));
        assert_eq!(r.event, UdpEvent::Started);
        assert_eq!(r.ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(r.key, 0x0102_0304);
        assert_eq!(r.num_want, -1);
        assert_eq!(r.port, 6881);
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        let opts: Vec<_> = r.options.iter().collect();
        assert_eq!(
            opts,
            vec![
                Bep41Option::UrlData(b"/announce"),
                Bep41Option::Nop,
                Bep41Option::UrlData(b"?key=x"),
                Bep41Option::Unknown {
                    kind: 7,
                    data: &[0xff, 0xfe]
                },
                Bep41Option::EndOfOptions,
            ]
        );
        assert_eq!(r.options.url_data().as_deref(), Some("/announce?key=x"));
    }

    #[test]
    fn bep41_truncated_and_too_many_options() {
        let a = Ann {
            options: vec![2, 50, b'/', b'a'],
            ..Ann::default()
        };
        let d = announce_req(&a);
        // Not plausible by structure …
        assert_eq!(classify_request(&d, &lim()), None);
        // … but parseable, flagged, and the walk stops at the defect.
        let UdpRequest::Announce(r) = parse_request(&d, &lim()).unwrap() else {
            panic!()
        };
        assert!(r.anomalies.contains(UdpAnomaly::OptionTruncated));
        assert_eq!(r.options.iter().count(), 0);
        assert_eq!(r.options.url_data(), None);

        let a = Ann {
            options: vec![1; 200],
            ..Ann::default()
        };
        let d = announce_req(&a);
        let UdpRequest::Announce(r) = parse_request(&d, &lim()).unwrap() else {
            panic!()
        };
        assert!(r.anomalies.contains(UdpAnomaly::TooManyOptions));
        assert_eq!(r.options.iter().count(), lim().max_options);
        // A lone length-less type byte at the very end.
        let a = Ann {
            options: vec![2],
            ..Ann::default()
        };
        let d = announce_req(&a);
        let UdpRequest::Announce(r) = parse_request(&d, &lim()).unwrap() else {
            panic!()
        };
        assert!(r.anomalies.contains(UdpAnomaly::OptionTruncated));
    }

    #[test]
    fn implausible_announces_are_not_recognised() {
        let base = Ann::default();
        assert!(classify_request(&announce_req(&base), &lim()).is_some());
        // Port 0 is what qBittorrent really sends: still plausible.
        let port0 = Ann {
            port: 0,
            ..Ann::default()
        };
        assert!(classify_request(&announce_req(&port0), &lim()).is_some());
        let bad = [
            Ann {
                event: 4,
                ..Ann::default()
            },
            Ann {
                left: -5,
                ..Ann::default()
            },
            Ann {
                downloaded: 1 << 55,
                ..Ann::default()
            },
            Ann {
                uploaded: -1,
                ..Ann::default()
            },
            Ann {
                num_want: -2,
                ..Ann::default()
            },
            Ann {
                num_want: 1 << 20,
                ..Ann::default()
            },
        ];
        for a in &bad {
            assert_eq!(classify_request(&announce_req(a), &lim()), None);
        }
        // A huge `uploaded` (ratio cheating) stays plausible.
        let cheat = Ann {
            uploaded: 1 << 60,
            ..Ann::default()
        };
        assert!(classify_request(&announce_req(&cheat), &lim()).is_some());
        // Event out of range still parses, flagged.
        let d = announce_req(&bad[0]);
        let UdpRequest::Announce(r) = parse_request(&d, &lim()).unwrap() else {
            panic!()
        };
        assert_eq!(r.event, UdpEvent::Other(4));
        assert!(r.anomalies.contains(UdpAnomaly::BadEvent));
    }

    #[test]
    fn announce_response_ipv4_ipv6_and_partial_entry() {
        let mut peers = vec![1, 2, 3, 4, 0x1a, 0xe1, 5, 6, 7, 8, 0, 80];
        let d = announce_resp(9, &peers);
        assert_eq!(
            classify_response(&d, AddrFamily::V4, &lim()),
            Some((ResponseClass::Announce, Confidence::Plausible))
        );
        // 12 bytes of peers is not a whole IPv6 entry.
        assert_eq!(classify_response(&d, AddrFamily::V6, &lim()), None);
        let UdpResponse::Announce(r) = parse_response(&d, AddrFamily::V4, &lim()).unwrap() else {
            panic!()
        };
        assert_eq!((r.interval, r.leechers, r.seeders), (1800, 7, 3));
        let got: Vec<_> = r.peers.iter().collect();
        assert_eq!(
            got,
            vec![
                "1.2.3.4:6881".parse::<SocketAddr>().unwrap(),
                "5.6.7.8:80".parse().unwrap()
            ]
        );
        // Partial trailing entry: flagged, whole entries kept.
        peers.extend_from_slice(&[9, 9, 9]);
        let d = announce_resp(9, &peers);
        assert_eq!(classify_response(&d, AddrFamily::V4, &lim()), None);
        let UdpResponse::Announce(r) = parse_response(&d, AddrFamily::V4, &lim()).unwrap() else {
            panic!()
        };
        assert!(r.anomalies.contains(UdpAnomaly::PeersNotMultiple));
        assert_eq!(r.peers.len(), 2);

        let mut v6 = vec![0u8; 16];
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[15] = 1;
        v6.extend_from_slice(&443u16.to_be_bytes());
        let d = announce_resp(10, &v6);
        let UdpResponse::Announce(r) = parse_response(&d, AddrFamily::V6, &lim()).unwrap() else {
            panic!()
        };
        assert_eq!(
            r.peers.iter().collect::<Vec<_>>(),
            vec!["[2001::1]:443".parse::<SocketAddr>().unwrap()]
        );
        // The same bytes read over IPv4 give three entries.
        let UdpResponse::Announce(r) = parse_response(&d, AddrFamily::V4, &lim()).unwrap() else {
            panic!()
        };
        assert_eq!(r.peers.len(), 3);
    }

    #[test]
    fn too_many_peers_is_capped() {
        let limits = UdpLimits { max_peers: 2, ..lim() };
        let d = announce_resp(1, &[7u8; 6 * 5]);
        let UdpResponse::Announce(r) = parse_response(&d, AddrFamily::V4, &limits).unwrap() else {
            panic!()
        };
        assert_eq!(r.peers.len(), 2);
        assert!(r.anomalies.contains(UdpAnomaly::TooManyPeers));
    }

    #[test]
    fn scrape_request_and_response() {
        let d = scrape_req(77, 5, 3);
        assert_eq!(
            classify_request(&d, &lim()),
            Some((RequestClass::Scrape, Confidence::Plausible))
        );
        let UdpRequest::Scrape(s) = parse_request(&d, &lim()).unwrap() else {
            panic!()
        };
        assert_eq!(s.connection_id, 77);
        assert_eq!(
            s.info_hashes.iter().collect::<Vec<_>>(),
            vec![[0u8; 20], [1; 20], [2; 20]]
        );
        let mut bad = d.clone();
        bad.extend_from_slice(&[1, 2, 3]);
        assert_eq!(classify_request(&bad, &lim()), None);
        let UdpRequest::Scrape(s) = parse_request(&bad, &lim()).unwrap() else {
            panic!()
        };
        assert_eq!(s.info_hashes.len(), 3);
        assert!(s.anomalies.contains(UdpAnomaly::ScrapeNotMultiple));

        let r = scrape_resp(5, &[(1, 2, 3), (4, 5, 6)]);
        assert_eq!(
            classify_response(&r, AddrFamily::V4, &lim()),
            Some((ResponseClass::Scrape, Confidence::Plausible))
        );
        let UdpResponse::Scrape(s) = parse_response(&r, AddrFamily::V4, &lim()).unwrap() else {
            panic!()
        };
        assert_eq!(
            s.entries.iter().collect::<Vec<_>>(),
            vec![
                ScrapeEntry {
                    seeders: 1,
                    completed: 2,
                    leechers: 3
                },
                ScrapeEntry {
                    seeders: 4,
                    completed: 5,
                    leechers: 6
                }
            ]
        );
        let neg = scrape_resp(5, &[(-1, 2, 3)]);
        assert_eq!(classify_response(&neg, AddrFamily::V4, &lim()), None);
        assert!(parse_response(&neg, AddrFamily::V4, &lim())
            .unwrap()
            .anomalies()
            .contains(UdpAnomaly::NegativeCount));
    }

    #[test]
    fn error_response() {
        let d = error_resp(42, b"Connection ID missmatch.");
        assert_eq!(
            classify_response(&d, AddrFamily::V4, &lim()),
            Some((ResponseClass::Error, Confidence::Plausible))
        );
        let UdpResponse::Error(e) = parse_response(&d, AddrFamily::V4, &lim()).unwrap() else {
            panic!()
        };
        assert_eq!(e.transaction_id, 42);
        assert_eq!(e.message, b"Connection ID missmatch.");
        assert_eq!(
            classify_response(&error_resp(1, &[0, 1, 2]), AddrFamily::V4, &lim()),
            None
        );
    }

    #[test]
    fn truncated_and_unknown_never_panic() {
        let samples = [
            connect_req(1),
            connect_resp(1, 2),
            announce_req(&Ann::default()),
            announce_resp(3, &[1, 2, 3, 4, 5, 6]),
            scrape_req(1, 2, 2),
            scrape_resp(2, &[(1, 1, 1)]),
            error_resp(3, b"oops"),
        ];
        for s in &samples {
            for n in 0..s.len() {
                let d = &s[..n];
                let _ = classify_request(d, &lim());
                let _ = classify_response(d, AddrFamily::V4, &lim());
                let _ = classify_response(d, AddrFamily::V6, &lim());
                if let Err(e) = parse_request(d, &lim()) {
                    assert!(!e.kind().is_empty());
                }
                if let Err(e) = parse_response(d, AddrFamily::V6, &lim()) {
                    assert!(!e.kind().is_empty());
                }
            }
        }
        let mut ann = announce_req(&Ann::default());
        ann.truncate(97);
        assert_eq!(
            parse_request(&ann, &lim()),
            Err(UdpError::Truncated { needed: 98, got: 97 })
        );
        assert_eq!(
            parse_response(&connect_resp(1, 2)[..12], AddrFamily::V4, &lim()),
            Err(UdpError::Truncated { needed: 16, got: 12 })
        );
        let mut unk = connect_resp(1, 2);
        unk[3] = 9;
        assert_eq!(
            parse_response(&unk, AddrFamily::V4, &lim()),
            Err(UdpError::UnknownAction(9))
        );
        assert_eq!(
            parse_response(&unk, AddrFamily::V4, &lim()).unwrap_err().kind(),
            "udp_tracker_unknown_action"
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = [
            connect_req(1),
            announce_req(&Ann {
                options: vec![2, 3, b'a', b'b', b'c'],
                ..Ann::default()
            }),
            announce_resp(3, &[1; 18]),
            scrape_req(1, 2, 2),
        ];
        for _ in 0..20_000 {
            let mut d = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..(next() % 4) {
                let n = d.len() as u64 + 1;
                let at = (next() % n) as usize;
                match next() % 3 {
                    0 if at < d.len() => d[at] = next() as u8,
                    1 => d.truncate(at),
                    _ => d.insert(at.min(d.len()), next() as u8),
                }
            }
            let _ = classify_request(&d, &lim());
            let _ = classify_response(&d, AddrFamily::V6, &lim());
            if let Ok(UdpRequest::Announce(a)) = parse_request(&d, &lim()) {
                let _ = a.options.url_data();
            }
            if let Ok(UdpResponse::Announce(a)) = parse_response(&d, AddrFamily::V4, &lim()) {
                let _ = a.peers.iter().count();
            }
        }
    }

    #[test]
    fn known_connection_ids_keep_out_of_range_values_flagged() {
        let mut p: PendingUdp<()> = PendingUdp::new(PendingLimits::default());
        let e = ep();
        p.learn_connection(0, e, 0xabcd);
        let cases = [
            (
                Ann {
                    num_want: 100_000,
                    ..Ann::default()
                },
                UdpAnomaly::NumWantOutOfRange,
            ),
            (
                Ann {
                    num_want: -7,
                    ..Ann::default()
                },
                UdpAnomaly::NumWantOutOfRange,
            ),
            (
                Ann {
                    event: 9,
                    ..Ann::default()
                },
                UdpAnomaly::BadEvent,
            ),
            (
                Ann {
                    uploaded: i64::MIN + 5,
                    ..Ann::default()
                },
                UdpAnomaly::AmountOutOfRange,
            ),
        ];
        for (a, flag) in cases {
            let d = announce_req(&Ann { cid: 0xabcd, ..a });
            // Out of range: not plausible by content alone...
            assert_eq!(classify_request(&d, &lim()), None);
            // ...but certain with the connection id known, and flagged.
            assert_eq!(
                p.classify_request(10, e, &d, &lim()),
                Some((RequestClass::Announce, Confidence::Certain))
            );
            assert!(parse_request(&d, &lim()).unwrap().anomalies().contains(flag));
        }
        // A scrape of 1,500 hashes: plausible, parsed up to the bound, flagged.
        let mut big = scrape_req(0xabcd, 3, 0);
        for i in 0..1500u32 {
            big.extend_from_slice(&[i.to_be_bytes(), [7; 4], [7; 4], [7; 4], [7; 4]].concat());
        }
        assert_eq!(
            p.classify_request(10, e, &big, &lim()),
            Some((RequestClass::Scrape, Confidence::Certain))
        );
        let r = parse_request(&big, &lim()).unwrap();
        assert!(r.anomalies().contains(UdpAnomaly::TooManyScrapeHashes));
        // Its answer (first seeders count 1: action 1 at offset 8) is never a
        // request, seen alone.
        let entries: Vec<(i32, i32, i32)> = (0..1500).map(|i| (1, i, 2)).collect();
        let answer = scrape_resp(3, &entries);
        assert_eq!(classify_request(&answer, &lim()), None);
        assert_eq!(
            classify_response(&answer, AddrFamily::V4, &lim()),
            Some((ResponseClass::Scrape, Confidence::Plausible))
        );
    }

    #[test]
    fn pending_pairs_and_upgrades_connection_ids() {
        let mut p: PendingUdp<&'static str> = PendingUdp::new(PendingLimits::default());
        let e = ep();
        let creq = connect_req(7);
        let r = parse_request(&creq, &lim()).unwrap();
        assert_eq!(p.on_request(1_000, e, &r, "connect"), Inserted::New);
        assert_eq!(p.on_request(2_000, e, &r, "again"), Inserted::Retransmit);
        let cresp = connect_resp(7, 0xabcd);
        let resp = parse_response(&cresp, AddrFamily::V4, &lim()).unwrap();
        let m = p.on_response(3_000, e, &resp).unwrap();
        assert_eq!(m.request, RequestClass::Connect);
        assert_eq!(m.request_ts_us, 1_000);
        assert_eq!(m.value, "connect");
        // The announce using the handed-out id is certain.
        let ann = announce_req(&Ann {
            cid: 0xabcd,
            tid: 8,
            ..Ann::default()
        });
        assert_eq!(
            p.classify_request(4_000, e, &ann, &lim()),
            Some((RequestClass::Announce, Confidence::Certain))
        );
        // From another client it is only plausible.
        let other = Endpoints {
            client: "192.168.1.3:51413".parse().unwrap(),
            ..e
        };
        assert_eq!(
            p.classify_request(4_000, other, &ann, &lim()),
            Some((RequestClass::Announce, Confidence::Plausible))
        );
        let req = parse_request(&ann, &lim()).unwrap();
        p.on_request(4_000, e, &req, "announce");
        // A scrape response with the same tid does not answer an announce.
        let wrong = scrape_resp(8, &[(1, 1, 1)]);
        let wrong = parse_response(&wrong, AddrFamily::V4, &lim()).unwrap();
        assert!(p.on_response(5_000, e, &wrong).is_none());
        let ar = announce_resp(8, &[]);
        let ar = parse_response(&ar, AddrFamily::V4, &lim()).unwrap();
        assert_eq!(p.on_response(6_000, e, &ar).unwrap().value, "announce");
        assert_eq!(p.n_pending(), 0);
        // The connection id expires after its TTL.
        let ttl = PendingLimits::default().connection_id_ttl_us;
        assert!(p.knows_connection(6_000 + ttl, e, 0xabcd));
        assert!(!p.knows_connection(6_001 + ttl, e, 0xabcd));
        assert_eq!(p.stats().n_retransmits, 1);
    }

    #[test]
    fn answered_announce_teaches_its_connection_id() {
        let mut p: PendingUdp<()> = PendingUdp::new(PendingLimits::default());
        let e = ep();
        let ann = announce_req(&Ann {
            cid: 0x77,
            tid: 1,
            ..Ann::default()
        });
        assert_eq!(
            p.classify_request(0, e, &ann, &lim()),
            Some((RequestClass::Announce, Confidence::Plausible))
        );
        p.on_request(0, e, &parse_request(&ann, &lim()).unwrap(), ());
        let err = error_resp(1, b"bad");
        // An error answers, but does not vouch for the connection id.
        assert!(p
            .on_response(10, e, &parse_response(&err, AddrFamily::V4, &lim()).unwrap())
            .is_some());
        assert!(!p.knows_connection(10, e, 0x77));
        p.on_request(20, e, &parse_request(&ann, &lim()).unwrap(), ());
        let ok = announce_resp(1, &[]);
        p.on_response(30, e, &parse_response(&ok, AddrFamily::V4, &lim()).unwrap());
        assert_eq!(
            p.classify_request(40, e, &ann, &lim()),
            Some((RequestClass::Announce, Confidence::Certain))
        );
    }

    #[test]
    fn pending_expiry_and_eviction_are_bounded() {
        let limits = PendingLimits {
            max_pending: 8,
            max_connection_ids: 4,
            ..PendingLimits::default()
        };
        let mut p: PendingUdp<u32> = PendingUdp::new(limits);
        let e = ep();
        let mut evicted = 0;
        for tid in 0..100u32 {
            let d = connect_req(tid);
            let r = parse_request(&d, &lim()).unwrap();
            if p.on_request(i64::from(tid), e, &r, tid) == Inserted::EvictedOldest {
                evicted += 1;
            }
            assert!(p.n_pending() <= 8);
            assert!(p.pending.fifo.len() <= 2 * 8 + 16 + 1);
        }
        assert_eq!(evicted, 92);
        assert_eq!(p.stats().n_evicted, 92);
        // The 8 newest survive, in order; the oldest were evicted.
        let resp = connect_resp(50, 1);
        assert!(p
            .on_response(200, e, &parse_response(&resp, AddrFamily::V4, &lim()).unwrap())
            .is_none());
        for tid in 92..100u32 {
            let resp = connect_resp(tid, u64::from(tid));
            let m = p
                .on_response(200, e, &parse_response(&resp, AddrFamily::V4, &lim()).unwrap())
                .unwrap();
            assert_eq!(m.value, tid);
        }
        assert!(p.n_connection_ids() <= 4);
        assert_eq!(p.stats().n_connection_ids_evicted, 4);
        // Many insert/answer cycles keep the FIFO compacted.
        for tid in 1000..5000u32 {
            let d = connect_req(tid);
            p.on_request(300, e, &parse_request(&d, &lim()).unwrap(), tid);
            let resp = connect_resp(tid, 5);
            p.on_response(300, e, &parse_response(&resp, AddrFamily::V4, &lim()).unwrap());
            assert!(p.pending.fifo.len() <= 2 * 8 + 16 + 1);
        }
        // Expiry by packet time.
        let d = connect_req(9999);
        p.on_request(1_000_000, e, &parse_request(&d, &lim()).unwrap(), 0);
        p.expire(1_000_000 + limits.request_timeout_us + 1);
        assert_eq!(p.n_pending(), 0);
        assert_eq!(p.stats().n_expired, 1);
        // Time going backwards expires nothing.
        p.on_request(5_000_000, e, &parse_request(&d, &lim()).unwrap(), 0);
        p.expire(0);
        assert_eq!(p.n_pending(), 1);
    }

    #[test]
    fn unanswered_requests_come_back_to_the_caller() {
        let limits = PendingLimits {
            max_pending: 2,
            ..PendingLimits::default()
        };
        let mut p: PendingUdp<u32> = PendingUdp::new(limits);
        let e = ep();
        for tid in 0..3u32 {
            let d = connect_req(tid);
            p.on_request(i64::from(tid), e, &parse_request(&d, &lim()).unwrap(), tid);
        }
        // The table holds 2: the oldest was evicted and comes back.
        let u = p.take_unanswered();
        assert_eq!(u.iter().map(|u| u.value).collect::<Vec<_>>(), [0]);
        assert_eq!(
            (u[0].request, u[0].request_ts_us, u[0].endpoints),
            (RequestClass::Connect, 0, e)
        );
        assert!(p.take_unanswered().is_empty());
        // Expiry hands back the expired one.
        p.expire(1 + limits.request_timeout_us + 1);
        assert_eq!(p.take_unanswered().iter().map(|u| u.value).collect::<Vec<_>>(), [1]);
        // Draining hands back the rest, and the table is empty.
        p.drain();
        assert_eq!(p.take_unanswered().iter().map(|u| u.value).collect::<Vec<_>>(), [2]);
        assert_eq!(p.n_pending(), 0);
        // An answered request never comes back.
        let d = connect_req(7);
        p.on_request(10, e, &parse_request(&d, &lim()).unwrap(), 7);
        let resp = connect_resp(7, 1);
        assert!(p
            .on_response(11, e, &parse_response(&resp, AddrFamily::V4, &lim()).unwrap())
            .is_some());
        p.drain();
        assert!(p.take_unanswered().is_empty());
    }
}

/// Test-only reader for the public corpus: pcap / pcapng records, Ethernet
/// → IPv4/IPv6 → TCP/UDP, and a naive per-direction TCP reassembly. The
/// capture module proper belongs elsewhere; this is just enough to feed the
/// tracker parsers real bytes.
#[cfg(test)]
pub(crate) mod test_capture {
    use std::collections::{BTreeMap, HashMap};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::path::PathBuf;

    /// `../shared/corpus/public`, or the skip rule of `crate::require` (a
    /// failure under SWARMTAP_REQUIRE_ALL, else a recorded skip).
    #[track_caller]
    pub(crate) fn corpus_dir() -> Option<PathBuf> {
        crate::require::corpus(env!("CARGO_MANIFEST_DIR"))
    }

    /// One captured frame: 1-based number, time in µs, link type, bytes.
    pub(crate) struct Frame {
        pub frame: usize,
        pub ts_us: i64,
        pub linktype: u32,
        pub data: Vec<u8>,
    }

    fn u16_at(d: &[u8], at: usize, le: bool) -> Option<u16> {
        let b: [u8; 2] = d.get(at..at + 2)?.try_into().ok()?;
        Some(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }

    fn u32_at(d: &[u8], at: usize, le: bool) -> Option<u32> {
        let b: [u8; 4] = d.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    /// Reads a pcap or pcapng file (None if neither).
    pub(crate) fn read_frames(bytes: &[u8]) -> Option<Vec<Frame>> {
        let magic = u32_at(bytes, 0, true)?;
        let mut frames = Vec::new();
        match magic {
            0xa1b2_c3d4 | 0xa1b2_3c4d | 0xd4c3_b2a1 | 0x4d3c_b2a1 => {
                let le = magic == 0xa1b2_c3d4 || magic == 0xa1b2_3c4d;
                let nanos = magic == 0xa1b2_3c4d || magic == 0x4d3c_b2a1;
                let linktype = u32_at(bytes, 20, le)?;
                let mut at = 24;
                while let Some(incl) = u32_at(bytes, at + 8, le) {
                    let sec = i64::from(u32_at(bytes, at, le)?);
                    let frac = i64::from(u32_at(bytes, at + 4, le)?);
                    let start = at + 16;
                    let data = bytes.get(start..start + incl as usize)?.to_vec();
                    let ts_us = sec * 1_000_000 + if nanos { frac / 1000 } else { frac };
                    frames.push(Frame {
                        frame: frames.len() + 1,
                        ts_us,
                        linktype,
                        data,
                    });
                    at = start + incl as usize;
                }
            }
            0x0a0d_0d0a => {
                let mut le = true;
                let mut ifaces: Vec<(u32, i64)> = Vec::new(); // (linktype, units/s)
                let mut at = 0;
                while let Some(btype) = u32_at(bytes, at, le) {
                    if btype == 0x0a0d_0d0a {
                        le = u32_at(bytes, at + 8, true)? == 0x1a2b_3c4d;
                        ifaces.clear();
                    }
                    let blen = u32_at(bytes, at + 4, le)? as usize;
                    let block = bytes.get(at..at + blen)?;
                    match btype {
                        1 => {
                            let lt = u32::from(u16_at(block, 8, le)?);
                            // if_tsresol option (code 9), default 10^-6.
                            let mut per_s = 1_000_000i64;
                            let mut o = 16;
                            while let (Some(code), Some(len)) = (u16_at(block, o, le), u16_at(block, o + 2, le)) {
                                if code == 0 {
                                    break;
                                }
                                if code == 9 {
                                    let v = *block.get(o + 4)?;
                                    per_s = if v & 0x80 == 0 {
                                        10i64.pow(u32::from(v))
                                    } else {
                                        1i64 << (v & 0x7f)
                                    };
                                }
                                o += 4 + usize::from(len).div_ceil(4) * 4;
                            }
                            ifaces.push((lt, per_s));
                        }
                        6 => {
                            let iface = u32_at(block, 8, le)? as usize;
                            let hi = u64::from(u32_at(block, 12, le)?);
                            let lo = u64::from(u32_at(block, 16, le)?);
                            let cap = u32_at(block, 20, le)? as usize;
                            let data = block.get(28..28 + cap)?.to_vec();
                            let (lt, per_s) = *ifaces.get(iface)?;
                            let units = ((hi << 32) | lo) as i64;
                            let ts_us = (i128::from(units) * 1_000_000 / i128::from(per_s)) as i64;
                            frames.push(Frame {
                                frame: frames.len() + 1,
                                ts_us,
                                linktype: lt,
                                data,
                            });
                        }
                        3 => {
                            let (lt, _) = *ifaces.first()?;
                            let len = u32_at(block, 8, le)? as usize;
                            let data = block.get(12..12 + len.min(blen - 16))?.to_vec();
                            frames.push(Frame {
                                frame: frames.len() + 1,
                                ts_us: 0,
                                linktype: lt,
                                data,
                            });
                        }
                        _ => {
                            // Other blocks (name resolution, statistics …)
                            // still occupy a frame number only if they are
                            // packets; they are not.
                        }
                    }
                    if blen < 12 {
                        return None;
                    }
                    at += blen;
                }
            }
            _ => return None,
        }
        Some(frames)
    }

    pub(crate) enum L4<'a> {
        Udp {
            src: SocketAddr,
            dst: SocketAddr,
            payload: &'a [u8],
        },
        Tcp {
            src: SocketAddr,
            dst: SocketAddr,
            seq: u32,
            syn: bool,
            payload: &'a [u8],
        },
    }

    /// Ethernet (with 802.1Q tags) → IPv4/IPv6 → TCP/UDP.
    pub(crate) fn decode(f: &Frame) -> Option<L4<'_>> {
        if f.linktype != 1 {
            return None;
        }
        let d = &f.data;
        let mut et = u16_at(d, 12, false)?;
        let mut at = 14;
        while et == 0x8100 || et == 0x88a8 {
            et = u16_at(d, at + 2, false)?;
            at += 4;
        }
        let (src_ip, dst_ip, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match et {
            0x0800 => {
                let ip = d.get(at..)?;
                let ihl = usize::from(ip.first()? & 0x0f) * 4;
                let total = usize::from(u16_at(ip, 2, false)?);
                let frag = u16_at(ip, 6, false)? & 0x1fff;
                if frag != 0 {
                    return None;
                }
                let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
                let t: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
                (
                    IpAddr::V4(Ipv4Addr::from(s)),
                    IpAddr::V4(Ipv4Addr::from(t)),
                    *ip.get(9)?,
                    ip.get(ihl..total.min(ip.len()))?,
                )
            }
            0x86dd => {
                let ip = d.get(at..)?;
                let plen = usize::from(u16_at(ip, 4, false)?);
                let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
                let t: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
                (
                    IpAddr::V6(Ipv6Addr::from(s)),
                    IpAddr::V6(Ipv6Addr::from(t)),
                    *ip.get(6)?,
                    ip.get(40..(40 + plen).min(ip.len()))?,
                )
            }
            _ => return None,
        };
        match proto {
            17 => {
                let len = usize::from(u16_at(l4, 4, false)?);
                Some(L4::Udp {
                    src: SocketAddr::new(src_ip, u16_at(l4, 0, false)?),
                    dst: SocketAddr::new(dst_ip, u16_at(l4, 2, false)?),
                    payload: l4.get(8..len.min(l4.len()))?,
                })
            }
            6 => {
                let off = usize::from(l4.get(12)? >> 4) * 4;
                let flags = *l4.get(13)?;
                Some(L4::Tcp {
                    src: SocketAddr::new(src_ip, u16_at(l4, 0, false)?),
                    dst: SocketAddr::new(dst_ip, u16_at(l4, 2, false)?),
                    seq: u32_at(l4, 4, false)?,
                    syn: flags & 0x02 != 0,
                    payload: l4.get(off..)?,
                })
            }
            _ => None,
        }
    }

    /// A piece of one direction of a TCP connection, in delivery order.
    pub(crate) enum Piece {
        Data(Vec<u8>),
        Gap(u64),
    }

    /// One TCP connection: the endpoint that sent the first packet is
    /// `orig`; `pieces` interleaves both directions in capture order
    /// (`true` = from orig).
    pub(crate) struct TcpConn {
        pub orig: SocketAddr,
        pub pieces: Vec<(bool, Piece)>,
    }

    #[derive(Default)]
    struct Dir {
        next: Option<u32>,
        ooo: BTreeMap<u32, Vec<u8>>,
    }

    fn deliver(dir: &mut Dir, seq: u32, payload: &[u8], out: &mut Vec<Piece>) {
        let next = *dir.next.get_or_insert(seq);
        let ahead = seq.wrapping_sub(next);
        if ahead as i32 > 0 {
            dir.ooo.entry(seq).or_insert_with(|| payload.to_vec());
            return;
        }
        // Retransmission or overlap: keep only the new tail.
        let skip = next.wrapping_sub(seq) as usize;
        if let Some(new) = payload.get(skip..).filter(|n| !n.is_empty()) {
            out.push(Piece::Data(new.to_vec()));
            dir.next = Some(next.wrapping_add(new.len() as u32));
        }
        // Drain buffered segments that now fit.
        while let Some((&s, _)) = dir.ooo.iter().next() {
            let n = dir.next.unwrap_or(s);
            if (s.wrapping_sub(n) as i32) > 0 {
                break;
            }
            let p = dir.ooo.remove(&s).unwrap_or_default();
            deliver(dir, s, &p, out);
        }
    }

    /// Naive reassembly of every TCP connection in `frames`.
    pub(crate) fn tcp_conns(frames: &[Frame]) -> Vec<TcpConn> {
        let mut index: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
        let mut conns: Vec<(TcpConn, [Dir; 2])> = Vec::new();
        for f in frames {
            let Some(L4::Tcp {
                src,
                dst,
                seq,
                syn,
                payload,
            }) = decode(f)
            else {
                continue;
            };
            let key = if src <= dst { (src, dst) } else { (dst, src) };
            let i = *index.entry(key).or_insert_with(|| {
                conns.push((
                    TcpConn {
                        orig: src,
                        pieces: Vec::new(),
                    },
                    [Dir::default(), Dir::default()],
                ));
                conns.len() - 1
            });
            let (conn, dirs) = &mut conns[i];
            let from_orig = src == conn.orig;
            let dir = &mut dirs[usize::from(!from_orig)];
            let seq = if syn {
                dir.next = Some(seq.wrapping_add(1));
                seq.wrapping_add(1)
            } else {
                seq
            };
            if payload.is_empty() {
                continue;
            }
            let mut out = Vec::new();
            deliver(dir, seq, payload, &mut out);
            conn.pieces.extend(out.into_iter().map(|p| (from_orig, p)));
        }
        // Whatever is still out of order lies after a hole.
        for (conn, dirs) in &mut conns {
            for (d, dir) in dirs.iter_mut().enumerate() {
                while let Some((s, p)) = dir.ooo.pop_first() {
                    let next = dir.next.unwrap_or(s);
                    let hole = s.wrapping_sub(next);
                    if (hole as i32) > 0 {
                        conn.pieces.push((d == 0, Piece::Gap(u64::from(hole))));
                        dir.next = Some(s);
                    }
                    let mut out = Vec::new();
                    deliver(dir, s, &p, &mut out);
                    conn.pieces.extend(out.into_iter().map(|p| (d == 0, p)));
                }
            }
        }
        conns.into_iter().map(|(c, _)| c).collect()
    }

    /// The `http_announce` column of `tshark_counts.csv` for `file`.
    pub(crate) fn tshark_count(dir: &std::path::Path, file: &str, column: &str) -> Option<u64> {
        let csv = std::fs::read_to_string(dir.join("tshark_counts.csv")).ok()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.split(',').collect();
        let col = header.iter().position(|h| *h == column)?;
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&file))
            .and_then(|f| f.get(col)?.parse().ok())
    }
}

#[cfg(test)]
mod corpus_tests {
    use super::test_capture::{corpus_dir, decode, read_frames, L4};
    use super::*;

    #[derive(Debug, Default, PartialEq, Eq)]
    struct Counts {
        connect_req: usize,
        connect_resp: usize,
        announce_req: usize,
        announce_req_certain: usize,
        announce_resp: usize,
        scrape_req: usize,
        scrape_resp: usize,
        error_resp: usize,
        paired: usize,
        peers: usize,
        anomalies: usize,
    }

    fn run(file: &str) -> Option<Counts> {
        run_with(file, false)
    }

    /// `skip_connects`: pretend the capture missed every connect exchange
    /// (started late, or the client reused a cached connection id), so
    /// announces must be recognised by structure alone.
    fn run_with(file: &str, skip_connects: bool) -> Option<Counts> {
        let dir = corpus_dir()?;
        let bytes = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let frames = read_frames(&bytes).expect("capture");
        let limits = UdpLimits::default();
        let mut pending: PendingUdp<usize> = PendingUdp::new(PendingLimits::default());
        let mut c = Counts::default();
        for f in &frames {
            let Some(L4::Udp { src, dst, payload }) = decode(f) else {
                continue;
            };
            if skip_connects
                && (payload.starts_with(&PROTOCOL_ID.to_be_bytes())
                    || (payload.len() == CONNECT_LEN && payload.starts_with(&[0; 4])))
            {
                continue;
            }
            let family = AddrFamily::of(src.ip());
            let as_req = Endpoints {
                client: src,
                tracker: dst,
            };
            if let Some((class, conf)) = pending.classify_request(f.ts_us, as_req, payload, &limits) {
                let req = parse_request(payload, &limits).expect("classified request parses");
                c.anomalies += req.anomalies().iter().count();
                match class {
                    RequestClass::Connect => c.connect_req += 1,
                    RequestClass::Announce => {
                        c.announce_req += 1;
                        if conf == Confidence::Certain {
                            c.announce_req_certain += 1;
                        }
                    }
                    RequestClass::Scrape => c.scrape_req += 1,
                }
                pending.on_request(f.ts_us, as_req, &req, f.frame);
                continue;
            }
            if classify_response(payload, family, &limits).is_some() {
                let resp = parse_response(payload, family, &limits).expect("response parses");
                c.anomalies += resp.anomalies().iter().count();
                match &resp {
                    UdpResponse::Connect(_) => c.connect_resp += 1,
                    UdpResponse::Announce(a) => {
                        c.announce_resp += 1;
                        c.peers += a.peers.len();
                    }
                    UdpResponse::Scrape(_) => c.scrape_resp += 1,
                    UdpResponse::Error(_) => c.error_resp += 1,
                }
                let as_resp = Endpoints {
                    client: dst,
                    tracker: src,
                };
                if pending.on_response(f.ts_us, as_resp, &resp).is_some() {
                    c.paired += 1;
                }
            }
        }
        println!("{file}: {c:?}");
        Some(c)
    }

    pub(super) fn announces_without_connects(file: &str) -> Option<(usize, usize, usize)> {
        let c = run_with(file, true)?;
        assert_eq!((c.connect_req, c.connect_resp), (0, 0));
        Some((c.announce_req, c.announce_req_certain, c.paired - c.scrape_resp))
    }

    #[test]
    fn corpus_transmission_udp_tracker() {
        let Some(c) = run("ntop__nDPI/bittorrent_transmission.pcapng") else {
            return;
        };
        assert_eq!(
            c,
            Counts {
                connect_req: 4,
                connect_resp: 4,
                announce_req: 8,
                announce_req_certain: 8,
                announce_resp: 8,
                scrape_req: 0,
                scrape_resp: 0,
                error_resp: 0,
                paired: 12,
                peers: c.peers,
                anomalies: 0,
            }
        );
        assert!(c.peers > 0);
    }

    #[test]
    fn corpus_small_torrent_udp_tracker() {
        let Some(c) = run("goncalo-rodrigues__360BitScoping/small_torrent.pcap") else {
            return;
        };
        assert_eq!(
            c,
            Counts {
                connect_req: 4,
                connect_resp: 2,
                announce_req: 5,
                announce_req_certain: 5,
                announce_resp: 5,
                scrape_req: 2,
                scrape_resp: 2,
                error_resp: 0,
                paired: 9,
                peers: c.peers,
                anomalies: 0,
            }
        );
    }

    #[test]
    fn corpus_vut_small_udp_tracker() {
        let Some(c) = run("terezaburianova__VUT-PDS/small.pcap") else {
            return;
        };
        assert_eq!(
            c,
            Counts {
                connect_req: 2,
                connect_resp: 2,
                announce_req: 8,
                announce_req_certain: 8,
                announce_resp: 8,
                scrape_req: 0,
                scrape_resp: 0,
                error_resp: 0,
                paired: 10,
                peers: c.peers,
                anomalies: 0,
            }
        );
    }
}

#[cfg(test)]
mod corpus_midstream_tests {
    use super::corpus_tests::announces_without_connects as run_without_connects;

    /// Without the connects, the first announce of each (client, tracker)
    /// pair is only plausible; once the tracker answers it, its connection
    /// id is known and the following announces are certain.
    #[test]
    fn corpus_udp_tracker_without_connects() {
        let cases = [
            ("ntop__nDPI/bittorrent_transmission.pcapng", 8, 4, 8),
            ("goncalo-rodrigues__360BitScoping/small_torrent.pcap", 5, 3, 5),
            ("terezaburianova__VUT-PDS/small.pcap", 8, 6, 8),
        ];
        for (file, announces, certain, paired) in cases {
            let Some((n, c, p)) = run_without_connects(file) else {
                return;
            };
            assert_eq!((n, c, p), (announces, certain, paired), "{file}");
        }
    }
}
