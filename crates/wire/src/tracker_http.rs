//! HTTP tracker traffic (BEP 3 announce, BEP 48 scrape, BEP 7 / BEP 23 / BEP
//! 24 response keys) over HTTP/1.x, recognised by content on any TCP port.
//!
//! Two layers:
//! - **Framing.** [`HttpStream`] is an incremental, per-direction HTTP/1.x
//!   framer. It is fed the reassembled byte stream in arbitrary pieces
//!   ([`HttpStream::feed`]), told about holes ([`HttpStream::gap`]) and about
//!   the end ([`HttpStream::finish`]), and pushes [`HttpEvent`]s. It handles
//!   keep-alive and pipelining (several messages per connection),
//!   Content-Length, chunked transfer coding, bodies delimited by the close,
//!   and `Content-Encoding: gzip`/`deflate`. [`HttpSession`] pairs the two
//!   directions: each request tells the response side what it asked, because
//!   HTTP/1.x answers requests in order.
//! - **Semantics.** Announce and scrape requests are read from the request
//!   target's query ([`parse_request_target`]); response bodies are decoded
//!   as bencode into [`AnnounceResponse`] or [`ScrapeResponse`]
//!   ([`interpret_body`]), the choice following the request being answered.
//!
//! Invariants:
//! - Pure: no I/O, no clock, no threads.
//! - No panic on any input; no unchecked indexing on wire data.
//! - Bounded memory: at most [`HttpLimits::max_head_bytes`] of head,
//!   [`HttpLimits::max_body_bytes`] of raw body and
//!   [`HttpLimits::max_decoded_body_bytes`] of decompressed body per stream.
//!   Over-long heads, bodies and chunk lines are skipped and reported, never
//!   buffered past their limit.
//! - Split-invariant: the events depend only on the byte stream and the
//!   positions of gaps, never on how the bytes were cut into `feed` calls.
//! - Every defect is one [`HttpAnomaly`] event with a stable
//!   [`HttpAnomaly::kind`]; the events around it stay intact. After a defect
//!   that breaks framing the stream hunts for the next plausible message
//!   start (a request method or `HTTP/1.x NNN` at the start of a line), which
//!   is also how a capture started mid-connection is picked up.

use std::collections::VecDeque;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::bencode::{self, BencodeError, BencodeLimits, Dict, Value};
use super::tracker_udp::{AddrFamily, CompactPeers};

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

/// Every bound the HTTP tracker parser applies to hostile input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Request/status line plus headers, terminator included. A scrape of
    /// 100 torrents has a ~7.5 KB request line; real heads are well under
    /// 2 KB otherwise. 16 KiB is what common servers accept too; beyond it
    /// the head is dropped and the stream hunts for the next message.
    pub max_head_bytes: usize,
    /// Header lines interpreted per message. Trackers and clients send
    /// fewer than 15; lines past 64 are ignored and reported.
    pub max_headers: usize,
    /// Raw (still compressed) response body kept for decoding. A compact
    /// announce answer is under 2 KB and a dictionary-model one with 200
    /// peers ~15 KB; only full scrapes are larger. Bodies beyond 1 MiB are
    /// skipped (framing kept) and reported. Request bodies are never kept.
    pub max_body_bytes: usize,
    /// Output bound of decompression: a gzip bomb (10 MB of zeros packs into
    /// ~10 KB) stops here and is reported instead of filling memory.
    pub max_decoded_body_bytes: usize,
    /// Largest chunk size accepted in chunked coding. Servers emit chunks of
    /// a few KB; a larger claim (up to 16 hex digits can overflow counters)
    /// is treated as broken framing.
    pub max_chunk_bytes: u64,
    /// Chunk-size line, extensions included. Real ones are under 20 bytes.
    pub max_chunk_line_bytes: usize,
    /// All trailer lines of a chunked body together.
    pub max_trailer_bytes: usize,
    /// Requests waiting for their response on one connection (pipelining
    /// depth). Clients pipeline a few at most; the oldest is dropped beyond.
    pub max_pending_requests: usize,
    /// Query parameters read from one request target.
    pub max_query_params: usize,
    /// `info_hash` values kept from one scrape request.
    pub max_scrape_hashes: usize,
    /// Peers kept from one announce response (all peer lists together).
    /// Trackers return their numwant default (50, at most a few hundred).
    pub max_peers: usize,
    /// Torrents kept from one scrape response.
    pub max_scrape_files: usize,
    /// Longest text kept from a header, reason or parameter (user agent,
    /// failure reason, path …); longer values are cut, since they only
    /// feed table cells.
    pub max_text_bytes: usize,
    /// Bencode bounds for response bodies. Tracker documents nest 4 levels
    /// (scrape: dict / files / hash / counters), so 16 is ample.
    pub bencode: BencodeLimits,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 1024 * 1024,
            max_decoded_body_bytes: 4 * 1024 * 1024,
            max_chunk_bytes: 16 * 1024 * 1024,
            max_chunk_line_bytes: 1024,
            max_trailer_bytes: 8 * 1024,
            max_pending_requests: 64,
            max_query_params: 256,
            max_scrape_hashes: 256,
            max_peers: 4096,
            max_scrape_files: 4096,
            max_text_bytes: 1024,
            bencode: BencodeLimits {
                max_depth: 16,
                max_items: BencodeLimits::DEFAULT_MAX_ITEMS,
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Anomalies
// ---------------------------------------------------------------------------

/// A defect in HTTP tracker traffic. Reported as an event; never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpAnomaly {
    /// The stream does not begin with a message start (mid-stream pickup or
    /// not HTTP at all); hunting for one.
    NoMessageStart,
    /// Bytes between messages that do not start a message; hunting.
    Desync,
    /// A gap outside a body of known length: framing lost; hunting.
    GapLostSync,
    /// A gap inside a body of known length: framing kept, body unusable.
    GapInBody,
    /// Head longer than [`HttpLimits::max_head_bytes`]; skipped.
    HeadTooLong,
    /// More header lines than [`HttpLimits::max_headers`]; rest ignored.
    TooManyHeaders,
    /// Unparseable request or status line; message skipped.
    BadStartLine,
    /// A header line without a colon; ignored.
    BadHeaderLine,
    /// Content-Length not a number, or two different ones; framing lost.
    BadContentLength,
    /// A request transfer coding other than chunked; framing lost.
    BadTransferEncoding,
    /// Body longer than [`HttpLimits::max_body_bytes`]: skipped, not kept.
    BodyTooLong,
    /// Chunk-size line longer than [`HttpLimits::max_chunk_line_bytes`].
    ChunkLineTooLong,
    /// Chunk size not hex, or above [`HttpLimits::max_chunk_bytes`].
    BadChunkSize,
    /// Chunk data not followed by CRLF.
    BadChunkTerminator,
    /// Trailers longer than [`HttpLimits::max_trailer_bytes`].
    TrailerTooLong,
    /// The stream ended inside a message.
    TruncatedMessage,
    /// More pipelined requests than [`HttpLimits::max_pending_requests`].
    TooManyPendingRequests,
    /// A content coding other than gzip, x-gzip, deflate or identity.
    UnknownContentEncoding,
    /// Compressed body that does not decompress.
    BadCompression,
    /// Decompressed body above [`HttpLimits::max_decoded_body_bytes`]
    /// (a decompression bomb); stopped there.
    DecompressedTooLong,
    /// A tracker response (2xx) whose body is not a bencoded dict.
    BodyNotBencode,
    /// The body starts like bencode but is not valid bencode.
    Bencode(BencodeError),
    /// Non-whitespace bytes after the bencoded dict.
    BodyTrailingBytes,
    /// A `%` not followed by two hex digits (kept literally).
    BadPercentEncoding,
    /// More query parameters than [`HttpLimits::max_query_params`].
    TooManyParams,
    /// `info_hash` that does not decode to 20 bytes.
    BadInfoHash,
    /// `peer_id` that does not decode to 20 bytes.
    BadPeerId,
    /// A numeric or 0/1 parameter that is neither (parameter name).
    BadValue(&'static str),
    /// More `info_hash` values than [`HttpLimits::max_scrape_hashes`].
    TooManyScrapeHashes,
    /// Compact `peers` not a multiple of 6 bytes; whole entries used.
    PeersNotMultiple,
    /// Compact `peers6` not a multiple of 18 bytes; whole entries used.
    Peers6NotMultiple,
    /// More peers than [`HttpLimits::max_peers`]; the rest dropped.
    TooManyPeers,
    /// A dictionary-model peer without a usable ip or port.
    BadPeerEntry,
    /// `peers` / `peers6` of the wrong bencode type.
    BadPeersType,
    /// `external ip` neither 4 nor 16 bytes (BEP 24).
    BadExternalIp,
    /// A scrape `files` entry whose key is not 20 bytes or value not a dict.
    BadScrapeEntry,
    /// More scrape files than [`HttpLimits::max_scrape_files`].
    TooManyScrapeFiles,
}

impl HttpAnomaly {
    /// Stable snake_case name, used as `kind` in the `anomalies` table.
    pub fn kind(&self) -> &'static str {
        use HttpAnomaly::*;
        match self {
            NoMessageStart => "http_no_message_start",
            Desync => "http_desync",
            GapLostSync => "http_gap_lost_sync",
            GapInBody => "http_gap_in_body",
            HeadTooLong => "http_head_too_long",
            TooManyHeaders => "http_too_many_headers",
            BadStartLine => "http_bad_start_line",
            BadHeaderLine => "http_bad_header_line",
            BadContentLength => "http_bad_content_length",
            BadTransferEncoding => "http_bad_transfer_encoding",
            BodyTooLong => "http_body_too_long",
            ChunkLineTooLong => "http_chunk_line_too_long",
            BadChunkSize => "http_bad_chunk_size",
            BadChunkTerminator => "http_bad_chunk_terminator",
            TrailerTooLong => "http_trailer_too_long",
            TruncatedMessage => "http_truncated_message",
            TooManyPendingRequests => "http_too_many_pending_requests",
            UnknownContentEncoding => "http_unknown_content_encoding",
            BadCompression => "http_bad_compression",
            DecompressedTooLong => "http_decompressed_too_long",
            BodyNotBencode => "tracker_body_not_bencode",
            Bencode(e) => e.kind(),
            BodyTrailingBytes => "tracker_body_trailing_bytes",
            BadPercentEncoding => "tracker_bad_percent_encoding",
            TooManyParams => "tracker_too_many_params",
            BadInfoHash => "tracker_bad_info_hash",
            BadPeerId => "tracker_bad_peer_id",
            BadValue(_) => "tracker_bad_value",
            TooManyScrapeHashes => "tracker_too_many_scrape_hashes",
            PeersNotMultiple => "peers_len_not_multiple_of_6",
            Peers6NotMultiple => "peers6_len_not_multiple_of_18",
            TooManyPeers => "tracker_too_many_peers",
            BadPeerEntry => "tracker_bad_peer_entry",
            BadPeersType => "tracker_bad_peers_type",
            BadExternalIp => "tracker_bad_external_ip",
            BadScrapeEntry => "tracker_bad_scrape_entry",
            TooManyScrapeFiles => "tracker_too_many_scrape_files",
        }
    }
}

impl fmt::Display for HttpAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpAnomaly::BadValue(name) => write!(f, "{}: {}", self.kind(), name),
            HttpAnomaly::Bencode(e) => write!(f, "{e}"),
            _ => f.write_str(self.kind()),
        }
    }
}

// ---------------------------------------------------------------------------
// Events and messages
// ---------------------------------------------------------------------------

/// What a stream reports, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
///
/// Messages are boxed: they are rare next to the bytes that carry them, and
/// this keeps the event (and every anomaly) small.
pub enum HttpEvent {
    Request(Box<HttpRequest>),
    Response(Box<HttpResponse>),
    Anomaly(HttpAnomaly),
}

/// What a request asked, as far as the tracker protocol is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Announce,
    Scrape,
    /// Any other request (a web page, a webseed, a redirect target …).
    Other,
}

/// What the response side needs to know about the request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub kind: RequestKind,
    /// A HEAD request: its response has no body whatever its headers say.
    pub head: bool,
    /// [`HttpRequest::index`] of that request, handed back in
    /// [`HttpResponse::request_index`] so the caller can find its own
    /// record of the request (time, frame) without a parallel queue.
    pub index: u64,
}

/// One complete request (head, and body skipped over if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// 0-based position of this request among the requests framed on its
    /// stream.
    pub index: u64,
    /// As sent (`GET`, `HEAD` …).
    pub method: String,
    /// Request target path, query excluded, as sent (still percent-encoded;
    /// private trackers put the user's passkey here). For a proxy request
    /// in absolute form the scheme and authority are removed.
    pub path: String,
    /// The minor version of `HTTP/1.x`.
    pub http_minor: u8,
    /// `Host` header, or the authority of an absolute-form target.
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub tracker: TrackerRequest,
    /// Bytes of the head, terminator included.
    pub head_bytes: usize,
    /// Bytes of body framed after the head (skipped, never kept).
    pub body_bytes: u64,
}

impl HttpRequest {
    /// What the response side must be told (see [`HttpStream::expect`]).
    pub fn expect(&self) -> Expect {
        Expect {
            kind: self.tracker.kind(),
            head: self.method.eq_ignore_ascii_case("HEAD"),
            index: self.index,
        }
    }
}

/// The tracker meaning of a request.
// Always held inside a boxed `HttpRequest`, and nearly always the announce
// variant: boxing it again would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerRequest {
    Announce(AnnounceRequest),
    Scrape(ScrapeRequest),
    Other,
}

impl TrackerRequest {
    pub fn kind(&self) -> RequestKind {
        match self {
            TrackerRequest::Announce(_) => RequestKind::Announce,
            TrackerRequest::Scrape(_) => RequestKind::Scrape,
            TrackerRequest::Other => RequestKind::Other,
        }
    }
}

/// `event=` of an announce (BEP 3; `paused` from BEP 21).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnounceEvent {
    Started,
    Completed,
    Stopped,
    Paused,
    /// `event=` present but empty (a regular announce, as if absent).
    Empty,
    /// Anything else, as sent (cut to [`HttpLimits::max_text_bytes`]).
    Other(String),
}

impl AnnounceEvent {
    fn from_bytes(v: &[u8], max_text: usize) -> Self {
        match v {
            b"started" => AnnounceEvent::Started,
            b"completed" => AnnounceEvent::Completed,
            b"stopped" => AnnounceEvent::Stopped,
            b"paused" => AnnounceEvent::Paused,
            b"" => AnnounceEvent::Empty,
            other => AnnounceEvent::Other(text(other, max_text)),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            AnnounceEvent::Started => "started",
            AnnounceEvent::Completed => "completed",
            AnnounceEvent::Stopped => "stopped",
            AnnounceEvent::Paused => "paused",
            AnnounceEvent::Empty => "",
            AnnounceEvent::Other(s) => s,
        }
    }
}

/// An announce request's parameters (BEP 3, BEP 7, BEP 23, BEP 8-era
/// crypto flags). Absent or malformed parameters are `None`; malformed ones
/// are also reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// Percent-decoded; exactly 20 bytes (v1, or BEP 52's truncated v2).
    pub info_hash: Option<[u8; 20]>,
    /// Percent-decoded; exactly 20 bytes.
    pub peer_id: Option<[u8; 20]>,
    pub port: Option<u16>,
    pub uploaded: Option<i64>,
    pub downloaded: Option<i64>,
    pub left: Option<i64>,
    pub corrupt: Option<i64>,
    pub redundant: Option<i64>,
    pub event: Option<AnnounceEvent>,
    pub compact: Option<bool>,
    pub no_peer_id: Option<bool>,
    pub numwant: Option<i64>,
    pub key: Option<String>,
    pub trackerid: Option<String>,
    pub supportcrypto: Option<bool>,
    pub requirecrypto: Option<bool>,
    pub ip: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
}

/// A scrape request (BEP 48): zero or more info-hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeRequest {
    pub info_hashes: Vec<[u8; 20]>,
}

/// One complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub http_minor: u8,
    pub reason: String,
    pub location: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub server: Option<String>,
    /// What was asked: `None` when no request was pending (the capture
    /// missed it); the body's kind is then inferred from its keys.
    pub answers: Option<RequestKind>,
    /// [`Expect::index`] of the request answered, when one was pending.
    pub request_index: Option<u64>,
    /// A 1xx interim response: it answers nothing yet.
    pub interim: bool,
    pub head_bytes: usize,
    /// Body bytes as framed on the wire (before decompression).
    pub body_bytes: u64,
    pub body: ResponseBody,
}

/// What a response body says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body (HEAD, 1xx/204/304, zero length).
    Empty,
    Announce(AnnounceResponse),
    Scrape(ScrapeResponse),
    /// A body that is not a tracker document (a web page, a redirect
    /// notice, the answer to a non-tracker request).
    Other,
    /// A body that could not be read (too long, gap, truncated, bad
    /// compression or bencode); the anomaly was reported before.
    Unusable,
}

/// An announce response (BEP 3; `peers6` BEP 7; compact BEP 23;
/// `external ip` BEP 24).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnounceResponse {
    pub failure_reason: Option<String>,
    pub warning_message: Option<String>,
    pub interval: Option<i64>,
    pub min_interval: Option<i64>,
    /// Seeders.
    pub complete: Option<i64>,
    /// Leechers.
    pub incomplete: Option<i64>,
    /// Completed downloads (not in BEP 3; common).
    pub downloaded: Option<i64>,
    pub tracker_id: Option<String>,
    pub external_ip: Option<IpAddr>,
    /// All peers returned, in wire order: `peers` first, then `peers6`.
    pub peers: Vec<TrackerPeer>,
}

/// Where a tracker-returned peer came from in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFormat {
    /// `peers` as a string of 6-byte entries (BEP 23).
    Compact,
    /// `peers6` as a string of 18-byte entries (BEP 7).
    Compact6,
    /// `peers` as a list of dicts (BEP 3 dictionary model).
    Dict,
}

/// The `ip` of a dictionary-model peer: BEP 3 allows a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerHost {
    Ip(IpAddr),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerPeer {
    pub host: PeerHost,
    pub port: u16,
    /// Dictionary model only (absent with `no_peer_id`).
    pub peer_id: Option<[u8; 20]>,
    pub format: PeerFormat,
}

/// A scrape response (BEP 48).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeResponse {
    pub failure_reason: Option<String>,
    /// `flags` / `min_request_interval` (unofficial, BNBT and others).
    pub min_request_interval: Option<i64>,
    pub files: Vec<ScrapeFile>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeFile {
    pub info_hash: [u8; 20],
    /// Seeders.
    pub complete: Option<i64>,
    /// Leechers.
    pub incomplete: Option<i64>,
    /// Completed downloads ever.
    pub downloaded: Option<i64>,
    pub name: Option<String>,
}

// ---------------------------------------------------------------------------
// Recognition
// ---------------------------------------------------------------------------

/// Which half of the conversation a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Client to server: requests.
    Request,
    /// Server to client: responses.
    Response,
}

/// Request methods accepted as a message start. A closed list, because
/// when hunting for a message start inside arbitrary bytes "any run of
/// capitals followed by a space" matches far too often.
const METHODS: [&[u8]; 9] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT", b"PATCH",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Consistent so far; more bytes needed.
    Need,
    Yes,
    No,
}

/// Whether `p` (the bytes since a line start) begins a message.
/// Requests: a known method, one space, then `/`, `*` or `h` (absolute
/// form, as sent to proxies). Responses: `HTTP/1.`, a digit, a space and
/// three digits. Both are decided within 12 bytes.
fn start_verdict(role: Role, p: &[u8]) -> Verdict {
    match role {
        Role::Request => {
            let mut any_prefix = false;
            for m in METHODS {
                let n = m.len();
                if p.len() <= n {
                    if m.starts_with(p) {
                        any_prefix = true;
                    }
                    continue;
                }
                if p.get(..n) == Some(m) && p.get(n) == Some(&b' ') {
                    match p.get(n + 1) {
                        None => any_prefix = true,
                        Some(b'/' | b'*' | b'h' | b'H') => return Verdict::Yes,
                        Some(_) => {}
                    }
                }
            }
            if any_prefix {
                Verdict::Need
            } else {
                Verdict::No
            }
        }
        Role::Response => {
            // "HTTP/1." then [01] then ' ' then 3 digits.
            const LIT: &[u8] = b"HTTP/1.";
            for (i, &b) in p.iter().enumerate() {
                let ok = match i {
                    0..=6 => LIT.get(i) == Some(&b),
                    7 => b == b'0' || b == b'1',
                    8 => b == b' ',
                    9..=11 => b.is_ascii_digit(),
                    _ => true,
                };
                if !ok {
                    return Verdict::No;
                }
            }
            if p.len() >= 12 {
                Verdict::Yes
            } else {
                Verdict::Need
            }
        }
    }
}

/// Whether the first bytes of a TCP direction look like an HTTP/1.x
/// request: a known method, a target and, if the first line is complete in
/// `first_bytes`, an `HTTP/1.0` or `HTTP/1.1` version at its end.
pub fn looks_like_http_request(first_bytes: &[u8]) -> bool {
    if start_verdict(Role::Request, first_bytes.get(..12).unwrap_or(first_bytes)) != Verdict::Yes {
        return false;
    }
    match memchr::memchr(b'\n', first_bytes) {
        None => true,
        Some(nl) => {
            let line = first_bytes.get(..nl).unwrap_or(&[]);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0")
        }
    }
}

/// Whether the first bytes of a TCP direction look like an HTTP/1.x
/// response: `HTTP/1.0` or `HTTP/1.1`, a space and a three-digit status.
pub fn looks_like_http_response(first_bytes: &[u8]) -> bool {
    start_verdict(Role::Response, first_bytes.get(..12).unwrap_or(first_bytes)) == Verdict::Yes
}

// ---------------------------------------------------------------------------
// Framer
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A message should start here (stream start, after a message).
    /// `self.head` holds the bytes matched so far.
    Start,
    /// Framing lost: scanning for a line start that begins a message.
    Hunt { at_line_start: bool },
    /// Reading the head into `self.head`.
    Head,
    /// Body of `remaining` bytes (Content-Length).
    Length { remaining: u64 },
    /// Chunked: reading a chunk-size line into `self.line`.
    ChunkSize,
    /// Chunked: inside chunk data.
    ChunkData { remaining: u64 },
    /// Chunked: expecting the CRLF after chunk data (in `self.line`).
    ChunkDataEnd,
    /// Chunked: trailer lines, `used` bytes so far.
    Trailers { used: usize },
    /// Response body delimited by the end of the stream.
    UntilClose,
}

/// The parts of a head the framer needs until the message is complete.
#[derive(Debug, Clone, Default)]
struct Head {
    head_bytes: usize,
    // Request
    method: String,
    target: Vec<u8>,
    // Response
    status: u16,
    reason: String,
    // Both
    http_minor: u8,
    host: Option<String>,
    user_agent: Option<String>,
    location: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    server: Option<String>,
    content_length: Option<u64>,
    chunked: bool,
    /// Transfer-Encoding present but not ending in chunked.
    other_transfer_coding: bool,
}

/// The message being framed.
#[derive(Debug, Clone, Default)]
struct InFlight {
    head: Head,
    /// Wire body bytes framed so far (kept or not).
    body_bytes: u64,
    /// The body was (or will be) longer than the limit: not kept.
    body_dropped: bool,
    /// A gap fell inside the body.
    body_gap: bool,
    /// The expectation this response answers (taken when the head was read).
    answers: Option<Expect>,
    interim: bool,
}

/// Incremental HTTP/1.x framer for one direction of one TCP connection.
#[derive(Debug, Clone)]
pub struct HttpStream {
    role: Role,
    limits: HttpLimits,
    state: State,
    /// Head bytes (and, in Start/Hunt, the partial message-start match).
    head: Vec<u8>,
    /// Kept response body (raw, before decompression).
    body: Vec<u8>,
    /// Chunk-size line, chunk terminator or trailer line being read.
    line: Vec<u8>,
    msg: Option<InFlight>,
    /// Response side: what the pending requests asked, oldest first.
    expected: VecDeque<Expect>,
    /// Some message was framed already (so garbage now is a desync, not a
    /// mid-stream pickup).
    seen_message: bool,
    /// Requests emitted so far (request side): the next one's index.
    n_requests: u64,
}

/// Above this capacity an idle buffer is released after a message, so an
/// idle keep-alive connection does not pin a large allocation.
const IDLE_KEEP_CAPACITY: usize = 64 * 1024;

impl HttpStream {
    pub fn new(role: Role, limits: HttpLimits) -> Self {
        HttpStream {
            role,
            limits,
            state: State::Start,
            head: Vec::new(),
            body: Vec::new(),
            line: Vec::new(),
            msg: None,
            expected: VecDeque::new(),
            seen_message: false,
            n_requests: 0,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Response side: one more request is waiting for its answer. Returns
    /// `false` when the queue was full and its oldest entry was dropped.
    pub fn expect(&mut self, e: Expect) -> bool {
        let mut ok = true;
        if self.expected.len() >= self.limits.max_pending_requests {
            self.expected.pop_front();
            ok = false;
        }
        if self.limits.max_pending_requests > 0 {
            self.expected.push_back(e);
        }
        ok
    }

    /// Bytes currently buffered (for memory accounting and tests).
    pub fn buffered_bytes(&self) -> usize {
        self.head.len() + self.body.len() + self.line.len()
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8], out: &mut impl FnMut(HttpEvent)) {
        let mut rest = data;
        while !rest.is_empty() {
            let used = self.step(rest, out);
            if used == 0 {
                // Every state consumes at least one byte of non-empty
                // input; this only guards against a logic error looping.
                break;
            }
            rest = rest.get(used..).unwrap_or(&[]);
        }
    }

    /// `n` bytes of the stream were never seen. Inside a body of known
    /// length (Content-Length or chunk data) the framing survives and only
    /// that body is lost; anywhere else the stream hunts for the next
    /// message start.
    pub fn gap(&mut self, n: u64, out: &mut impl FnMut(HttpEvent)) {
        if n == 0 {
            return;
        }
        match self.state {
            State::Length { remaining } if n <= remaining => {
                self.body_gap(n);
                let remaining = remaining - n;
                self.state = State::Length { remaining };
                if remaining == 0 {
                    self.complete(out);
                }
            }
            State::ChunkData { remaining } if n <= remaining => {
                self.body_gap(n);
                let remaining = remaining - n;
                self.state = if remaining == 0 {
                    State::ChunkDataEnd
                } else {
                    State::ChunkData { remaining }
                };
            }
            State::UntilClose => self.body_gap(n),
            State::Hunt { .. } => {
                self.head.clear();
                self.state = State::Hunt { at_line_start: true };
            }
            _ => {
                out(HttpEvent::Anomaly(HttpAnomaly::GapLostSync));
                self.lose_sync(true);
            }
        }
    }

    /// End of the stream: a body delimited by the close is complete; any
    /// other unfinished message is reported truncated.
    pub fn finish(&mut self, out: &mut impl FnMut(HttpEvent)) {
        match self.state {
            State::UntilClose => self.complete(out),
            State::Start | State::Hunt { .. } => {}
            State::Head => out(HttpEvent::Anomaly(HttpAnomaly::TruncatedMessage)),
            State::Length { .. }
            | State::ChunkSize
            | State::ChunkData { .. }
            | State::ChunkDataEnd
            | State::Trailers { .. } => {
                out(HttpEvent::Anomaly(HttpAnomaly::TruncatedMessage));
                if let Some(m) = self.msg.as_mut() {
                    // The head is known: report the message, body unusable.
                    m.body_dropped = true;
                }
                self.complete(out);
            }
        }
        self.lose_sync(false);
        self.release();
    }

    fn body_gap(&mut self, n: u64) {
        if let Some(m) = self.msg.as_mut() {
            m.body_gap = true;
            m.body_bytes = m.body_bytes.saturating_add(n);
        }
        self.body.clear();
    }

    /// Drops the message in progress and starts hunting.
    fn lose_sync(&mut self, at_line_start: bool) {
        self.head.clear();
        self.body.clear();
        self.line.clear();
        self.msg = None;
        self.state = State::Hunt { at_line_start };
    }

    fn release(&mut self) {
        for buf in [&mut self.head, &mut self.body, &mut self.line] {
            buf.clear();
            if buf.capacity() > IDLE_KEEP_CAPACITY {
                *buf = Vec::new();
            }
        }
    }

    /// One state step over `data` (non-empty); returns the bytes consumed.
    fn step(&mut self, data: &[u8], out: &mut impl FnMut(HttpEvent)) -> usize {
        match self.state {
            State::Start | State::Hunt { .. } => self.step_scan(data, out),
            State::Head => self.step_head(data, out),
            State::Length { remaining } => {
                let take = clamp(remaining, data.len());
                let (chunk, _) = data.split_at(take);
                self.take_body(chunk, out);
                let remaining = remaining - take as u64;
                self.state = State::Length { remaining };
                if remaining == 0 {
                    self.complete(out);
                }
                take
            }
            State::ChunkData { remaining } => {
                let take = clamp(remaining, data.len());
                let (chunk, _) = data.split_at(take);
                self.take_body(chunk, out);
                let remaining = remaining - take as u64;
                self.state = if remaining == 0 {
                    State::ChunkDataEnd
                } else {
                    State::ChunkData { remaining }
                };
                take
            }
            State::UntilClose => {
                self.take_body(data, out);
                data.len()
            }
            State::ChunkSize => self.step_chunk_size(data, out),
            State::ChunkDataEnd => self.step_chunk_end(data, out),
            State::Trailers { used } => self.step_trailers(used, data, out),
        }
    }

    /// Start and Hunt: match a message start byte by byte (the match is
    /// decided within 12 bytes, so this is cheap), skipping whole lines
    /// while hunting.
    fn step_scan(&mut self, data: &[u8], out: &mut impl FnMut(HttpEvent)) -> usize {
        let mut i = 0;
        while let Some(&b) = data.get(i) {
            if self.head.is_empty() {
                match self.state {
                    State::Start if b == b'\r' || b == b'\n' => {
                        // RFC 9112 §2.2: ignore empty lines before a message.
                        i += 1;
                        continue;
                    }
                    State::Hunt { at_line_start: false } => {
                        let rest = data.get(i..).unwrap_or(&[]);
                        match memchr::memchr(b'\n', rest) {
                            Some(p) => {
                                i += p + 1;
                                self.state = State::Hunt { at_line_start: true };
                                continue;
                            }
                            None => return data.len(),
                        }
                    }
                    _ => {}
                }
            }
            self.head.push(b);
            i += 1;
            match start_verdict(self.role, &self.head) {
                Verdict::Need => {}
                Verdict::Yes => {
                    self.state = State::Head;
                    return i;
                }
                Verdict::No => {
                    self.head.clear();
                    if self.state == State::Start {
                        out(HttpEvent::Anomaly(if self.seen_message {
                            HttpAnomaly::Desync
                        } else {
                            HttpAnomaly::NoMessageStart
                        }));
                    }
                    // The failing byte may itself end a line.
                    self.state = State::Hunt {
                        at_line_start: b == b'\n',
                    };
                }
            }
        }
        data.len()
    }

    fn step_head(&mut self, data: &[u8], out: &mut impl FnMut(HttpEvent)) -> usize {
        let old = self.head.len();
        // One byte past the limit, so that "too long" is decided at the
        // same stream offset however the stream is split.
        let room = (self.limits.max_head_bytes + 1).saturating_sub(old);
        let take = data.len().min(room);
        let (chunk, _) = data.split_at(take);
        self.head.extend_from_slice(chunk);
        if let Some(end) = find_head_end(&self.head, old.saturating_sub(3)) {
            if end <= self.limits.max_head_bytes {
                self.head.truncate(end);
                let consumed = end.saturating_sub(old).max(1);
                self.on_head(out);
                return consumed;
            }
        }
        if self.head.len() > self.limits.max_head_bytes {
            out(HttpEvent::Anomaly(HttpAnomaly::HeadTooLong));
            let last_nl = self.head.last() == Some(&b'\n');
            self.lose_sync(last_nl);
        }
        take.max(1)
    }

    fn on_head(&mut self, out: &mut impl FnMut(HttpEvent)) {
        let head_bytes = self.head.len();
        let parsed = parse_head(self.role, &self.head, &self.limits, out);
        self.head.clear();
        let mut head = match parsed {
            Ok(h) => h,
            Err(a) => {
                out(HttpEvent::Anomaly(a));
                // The head ended with a newline: the next byte starts a line.
                self.lose_sync(true);
                return;
            }
        };
        head.head_bytes = head_bytes;
        self.seen_message = true;
        let mut m = InFlight {
            head,
            ..InFlight::default()
        };
        // Decide the body framing (RFC 9112 §6.3).
        enum Framing {
            None,
            Length(u64),
            Chunked,
            Close,
        }
        let h = &m.head;
        let framing = match self.role {
            Role::Request => {
                if h.other_transfer_coding {
                    out(HttpEvent::Anomaly(HttpAnomaly::BadTransferEncoding));
                    self.lose_sync(true);
                    return;
                } else if h.chunked {
                    Framing::Chunked
                } else {
                    Framing::Length(h.content_length.unwrap_or(0))
                }
            }
            Role::Response => {
                let interim = (100..200).contains(&h.status);
                m.interim = interim;
                let expect = if interim {
                    self.expected.front().copied()
                } else {
                    self.expected.pop_front()
                };
                m.answers = expect;
                let h = &m.head;
                if interim || h.status == 204 || h.status == 304 || expect.is_some_and(|e| e.head) {
                    Framing::None
                } else if h.chunked {
                    Framing::Chunked
                } else if h.other_transfer_coding {
                    Framing::Close
                } else if let Some(n) = h.content_length {
                    Framing::Length(n)
                } else {
                    Framing::Close
                }
            }
        };
        // Request bodies are framed but never kept: trackers use GET.
        if self.role == Role::Request {
            m.body_dropped = true;
        }
        match framing {
            Framing::None | Framing::Length(0) => {
                self.msg = Some(m);
                self.complete(out);
            }
            Framing::Length(n) => {
                if n > self.limits.max_body_bytes as u64 && !m.body_dropped {
                    out(HttpEvent::Anomaly(HttpAnomaly::BodyTooLong));
                    m.body_dropped = true;
                }
                self.msg = Some(m);
                self.state = State::Length { remaining: n };
            }
            Framing::Chunked => {
                self.msg = Some(m);
                self.state = State::ChunkSize;
            }
            Framing::Close => {
                self.msg = Some(m);
                self.state = State::UntilClose;
            }
        }
    }

    fn take_body(&mut self, chunk: &[u8], out: &mut impl FnMut(HttpEvent)) {
        let Some(m) = self.msg.as_mut() else {
            return;
        };
        m.body_bytes = m.body_bytes.saturating_add(chunk.len() as u64);
        if m.body_dropped || m.body_gap {
            return;
        }
        if self.body.len() + chunk.len() > self.limits.max_body_bytes {
            out(HttpEvent::Anomaly(HttpAnomaly::BodyTooLong));
            m.body_dropped = true;
            self.body.clear();
            return;
        }
        self.body.extend_from_slice(chunk);
    }

    /// Reads bytes into `self.line` up to and including a newline, at most
    /// `max` bytes. Returns (consumed, line complete, over limit).
    fn read_line(&mut self, data: &[u8], max: usize) -> (usize, bool, bool) {
        let room = (max + 1).saturating_sub(self.line.len());
        let window = data.get(..data.len().min(room)).unwrap_or(&[]);
        match memchr::memchr(b'\n', window) {
            Some(p) => {
                let (part, _) = window.split_at(p + 1);
                self.line.extend_from_slice(part);
                let over = self.line.len() > max;
                (p + 1, !over, over)
            }
            None => {
                self.line.extend_from_slice(window);
                (window.len(), false, self.line.len() > max)
            }
        }
    }

    fn step_chunk_size(&mut self, data: &[u8], out: &mut impl FnMut(HttpEvent)) -> usize {
        let (used, done, over) = self.read_line(data, self.limits.max_chunk_line_bytes);
        if over {
            out(HttpEvent::Anomaly(HttpAnomaly::ChunkLineTooLong));
            let nl = self.line.last() == Some(&b'\n');
            self.lose_sync(nl);
            return used.max(1);
        }
        if !done {
            return used.max(1);
        }
        let size = parse_chunk_size(&self.line, self.limits.max_chunk_bytes);
        self.line.clear();
        match size {
            None => {
                out(HttpEvent::Anomaly(HttpAnomaly::BadChunkSize));
                self.lose_sync(true);
            }
            Some(0) => self.state = State::Trailers { used: 0 },
            Some(n) => self.state = State::ChunkData { remaining: n },
        }
        used.max(1)
    }

    /// After chunk data: exactly CRLF (or a bare LF, which lenient servers
    /// accept), decided byte by byte.
    fn step_chunk_end(&mut self, data: &[u8], out: &mut impl FnMut(HttpEvent)) -> usize {
        for (i, &b) in data.iter().enumerate() {
            match (self.line.as_slice(), b) {
                ([], b'\r') => self.line.push(b),
                ([], b'\n') | ([b'\r'], b'\n') => {
                    self.line.clear();
                    self.state = State::ChunkSize;
                    return i + 1;
                }
                _ => {
                    out(HttpEvent::Anomaly(HttpAnomaly::BadChunkTerminator));
                    self.lose_sync(b == b'\n');
                    return i + 1;
                }
            }
        }
        data.len()
    }

    fn step_trailers(&mut self, used: usize, data: &[u8], out: &mut impl FnMut(HttpEvent)) -> usize {
        let room = self.limits.max_trailer_bytes.saturating_sub(used);
        let (n, done, over) = self.read_line(data, room);
        if over {
            out(HttpEvent::Anomaly(HttpAnomaly::TrailerTooLong));
            // The body itself is complete: report the message, then hunt.
            self.line.clear();
            self.complete(out);
            let nl = data.get(n.saturating_sub(1)) == Some(&b'\n');
            self.lose_sync(nl);
            return n.max(1);
        }
        if done {
            let empty = self.line == b"\r\n" || self.line == b"\n";
            let len = self.line.len();
            self.line.clear();
            if empty {
                self.complete(out);
            } else {
                self.state = State::Trailers { used: used + len };
            }
        }
        n.max(1)
    }

    /// The message in flight is complete: emit it and expect the next.
    fn complete(&mut self, out: &mut impl FnMut(HttpEvent)) {
        self.state = State::Start;
        let Some(m) = self.msg.take() else {
            return;
        };
        if m.body_gap {
            out(HttpEvent::Anomaly(HttpAnomaly::GapInBody));
        }
        match self.role {
            Role::Request => {
                let h = m.head;
                let path_and_query = split_target(&h.target);
                let tracker = parse_request_target(&h.target, &self.limits, &mut |a| out(HttpEvent::Anomaly(a)));
                let host = h
                    .host
                    .or_else(|| path_and_query.authority.map(|a| text(a, self.limits.max_text_bytes)));
                let index = self.n_requests;
                self.n_requests += 1;
                let req = HttpRequest {
                    index,
                    method: h.method,
                    path: text(path_and_query.path, self.limits.max_text_bytes),
                    http_minor: h.http_minor,
                    host,
                    user_agent: h.user_agent,
                    tracker,
                    head_bytes: h.head_bytes,
                    body_bytes: m.body_bytes,
                };
                out(HttpEvent::Request(Box::new(req)));
            }
            Role::Response => {
                let body = if m.body_dropped || m.body_gap {
                    ResponseBody::Unusable
                } else {
                    interpret_body(
                        m.answers.map(|e| e.kind),
                        m.head.status,
                        m.head.content_encoding.as_deref(),
                        &self.body,
                        &self.limits,
                        &mut |a| out(HttpEvent::Anomaly(a)),
                    )
                };
                let h = m.head;
                out(HttpEvent::Response(Box::new(HttpResponse {
                    status: h.status,
                    http_minor: h.http_minor,
                    reason: h.reason,
                    location: h.location,
                    content_type: h.content_type,
                    content_encoding: h.content_encoding,
                    server: h.server,
                    answers: m.answers.map(|e| e.kind),
                    request_index: m.answers.map(|e| e.index),
                    interim: m.interim,
                    head_bytes: h.head_bytes,
                    body_bytes: m.body_bytes,
                    body,
                })));
            }
        }
        self.release();
    }
}

/// `remaining` as a `usize` bounded by `len` (no truncating casts).
fn clamp(remaining: u64, len: usize) -> usize {
    usize::try_from(remaining).map_or(len, |r| r.min(len))
}

/// Offset just past the first blank line (`\n\n` or `\n\r\n`) at or after
/// `from`, if the buffer holds one.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = buf.get(from..)?;
    for p in memchr::memchr_iter(b'\n', tail) {
        let at = from + p;
        match (buf.get(at + 1), buf.get(at + 2)) {
            (Some(b'\n'), _) => return Some(at + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(at + 3),
            _ => {}
        }
    }
    None
}

/// Hex chunk size before any `;extension`, optional whitespace around it.
fn parse_chunk_size(line: &[u8], max: u64) -> Option<u64> {
    let line = trim_eol(line);
    let size = match memchr::memchr(b';', line) {
        Some(p) => line.get(..p).unwrap_or(&[]),
        None => line,
    };
    let size = trim_ws(size);
    if size.is_empty() || size.len() > 16 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in size {
        let d = (b as char).to_digit(16)?;
        v = v.checked_mul(16)?.checked_add(u64::from(d))?;
    }
    (v <= max).then_some(v)
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

fn trim_ws(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Lossy UTF-8 of at most `max` bytes.
fn text(b: &[u8], max: usize) -> String {
    String::from_utf8_lossy(b.get(..max).unwrap_or(b)).into_owned()
}

fn parse_http_version(v: &[u8]) -> Option<u8> {
    match v {
        b"HTTP/1.0" => Some(0),
        b"HTTP/1.1" => Some(1),
        _ => None,
    }
}

/// Parses a complete head (terminator included). Errors when the message
/// cannot be framed (bad start line, bad Content-Length); other header
/// defects are reported through `out` and skipped.
fn parse_head(
    role: Role,
    buf: &[u8],
    limits: &HttpLimits,
    out: &mut impl FnMut(HttpEvent),
) -> Result<Head, HttpAnomaly> {
    let mut lines = buf.split(|&b| b == b'\n').map(trim_eol);
    let start = lines.next().unwrap_or(&[]);
    let head = parse_start_line(role, start, limits.max_text_bytes).ok_or(HttpAnomaly::BadStartLine)?;
    parse_headers(head, lines, limits, out)
}

fn parse_start_line(role: Role, start: &[u8], max_text: usize) -> Option<Head> {
    let mut head = Head::default();
    match role {
        Role::Request => {
            // METHOD SP target SP HTTP/1.x; the target has no spaces.
            let mut parts = start.split(|&b| b == b' ');
            let method = parts.next()?;
            let target = parts.next()?;
            let version = parts.next()?;
            if parts.next().is_some() || target.is_empty() {
                return None;
            }
            head.http_minor = parse_http_version(version)?;
            head.method = text(method, max_text);
            head.target = target.to_vec();
        }
        Role::Response => {
            let (version, rest) = start.split_at(start.len().min(8));
            head.http_minor = parse_http_version(version)?;
            let rest = rest.strip_prefix(b" ")?;
            let (code, reason) = rest.split_at(rest.len().min(3));
            if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
                return None;
            }
            head.status = code.iter().fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
            if !reason.is_empty() && !reason.starts_with(b" ") {
                return None;
            }
            head.reason = text(trim_ws(reason), max_text);
        }
    }
    Some(head)
}

fn parse_headers<'a>(
    mut head: Head,
    lines: impl Iterator<Item = &'a [u8]>,
    limits: &HttpLimits,
    out: &mut impl FnMut(HttpEvent),
) -> Result<Head, HttpAnomaly> {
    let max_text = limits.max_text_bytes;
    let mut n_headers = 0usize;
    let mut bad_line = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            // Obsolete line folding: a continuation of a header we do not
            // need to reassemble (none of the headers we read is folded in
            // practice).
            continue;
        }
        n_headers += 1;
        if n_headers > limits.max_headers {
            out(HttpEvent::Anomaly(HttpAnomaly::TooManyHeaders));
            break;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            bad_line = true;
            continue;
        };
        let (name, value) = line.split_at(colon);
        let value = trim_ws(value.get(1..).unwrap_or(&[]));
        let name = trim_ws(name);
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("content-length") {
            let n = parse_u64(value);
            match (n, head.content_length) {
                (Some(n), None) => head.content_length = Some(n),
                (Some(n), Some(prev)) if n == prev => {}
                // Unparseable, or two different lengths (a request
                // smuggling classic): the message boundary is unknowable.
                _ => return Err(HttpAnomaly::BadContentLength),
            }
        } else if is("transfer-encoding") {
            let last = value.split(|&b| b == b',').map(trim_ws).rfind(|t| !t.is_empty());
            match last {
                Some(t) if t.eq_ignore_ascii_case(b"chunked") => {
                    head.chunked = true;
                    head.other_transfer_coding = false;
                }
                Some(t) if t.eq_ignore_ascii_case(b"identity") => {}
                Some(_) => {
                    head.chunked = false;
                    head.other_transfer_coding = true;
                }
                None => {}
            }
        } else if is("content-encoding") {
            head.content_encoding = Some(text(value, max_text));
        } else if is("host") {
            head.host = Some(text(value, max_text));
        } else if is("user-agent") {
            head.user_agent = Some(text(value, max_text));
        } else if is("location") {
            head.location = Some(text(value, max_text));
        } else if is("content-type") {
            head.content_type = Some(text(value, max_text));
        } else if is("server") {
            head.server = Some(text(value, max_text));
        }
    }
    if bad_line {
        out(HttpEvent::Anomaly(HttpAnomaly::BadHeaderLine));
    }
    // RFC 9112 §6.3: chunked overrides Content-Length.
    if head.chunked {
        head.content_length = None;
    }
    Ok(head)
}

/// Decimal `u64`, digits only.
fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Decimal `i64` with an optional minus sign (clients have sent negative
/// `left`; report what was sent).
fn parse_i64(v: &[u8]) -> Option<i64> {
    let (neg, digits) = match v.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, v),
    };
    let n = parse_u64(digits)?;
    if neg {
        0i64.checked_sub_unsigned(n)
    } else {
        i64::try_from(n).ok()
    }
}

// ---------------------------------------------------------------------------
// Session: both directions
// ---------------------------------------------------------------------------

/// Which end of the connection sent the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Client,
    Server,
}

/// Both directions of one HTTP connection, paired: every request the
/// client side frames is announced to the server side, so each response
/// knows what it answers (HTTP/1.x answers in request order).
///
/// Feed the two sides in capture order (a request's bytes before its
/// response's), which is how they arrive on the wire.
#[derive(Debug, Clone)]
pub struct HttpSession {
    client: HttpStream,
    server: HttpStream,
}

impl HttpSession {
    pub fn new(limits: HttpLimits) -> Self {
        HttpSession {
            client: HttpStream::new(Role::Request, limits),
            server: HttpStream::new(Role::Response, limits),
        }
    }

    pub fn feed(&mut self, side: Side, data: &[u8], out: &mut impl FnMut(Side, HttpEvent)) {
        let HttpSession { client, server } = self;
        match side {
            Side::Client => client.feed(data, &mut |ev| forward(server, ev, out)),
            Side::Server => server.feed(data, &mut |ev| out(Side::Server, ev)),
        }
    }

    pub fn gap(&mut self, side: Side, n: u64, out: &mut impl FnMut(Side, HttpEvent)) {
        let HttpSession { client, server } = self;
        match side {
            Side::Client => client.gap(n, &mut |ev| forward(server, ev, out)),
            Side::Server => server.gap(n, &mut |ev| out(Side::Server, ev)),
        }
    }

    /// End of the connection, both directions (client first).
    pub fn finish(&mut self, out: &mut impl FnMut(Side, HttpEvent)) {
        let HttpSession { client, server } = self;
        client.finish(&mut |ev| forward(server, ev, out));
        server.finish(&mut |ev| out(Side::Server, ev));
    }

    /// Bytes buffered by both directions.
    pub fn buffered_bytes(&self) -> usize {
        self.client.buffered_bytes() + self.server.buffered_bytes()
    }
}

fn forward(server: &mut HttpStream, ev: HttpEvent, out: &mut impl FnMut(Side, HttpEvent)) {
    let overflow = match &ev {
        HttpEvent::Request(r) => !server.expect(r.expect()),
        _ => false,
    };
    out(Side::Client, ev);
    if overflow {
        out(Side::Client, HttpEvent::Anomaly(HttpAnomaly::TooManyPendingRequests));
    }
}

// ---------------------------------------------------------------------------
// Request semantics
// ---------------------------------------------------------------------------

struct Target<'a> {
    authority: Option<&'a [u8]>,
    path: &'a [u8],
    query: Option<&'a [u8]>,
}

/// Splits an origin-form (`/p?q`) or absolute-form (`http://h/p?q`)
/// target; a fragment, never sent by clients, is dropped.
fn split_target(target: &[u8]) -> Target<'_> {
    let target = match memchr::memchr(b'#', target) {
        Some(p) => target.get(..p).unwrap_or(target),
        None => target,
    };
    let mut authority = None;
    let mut rest = target;
    if let Some(p) = memchr::memmem::find(target, b"://") {
        let after = target.get(p + 3..).unwrap_or(&[]);
        let end = after
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(after.len());
        let (auth, r) = after.split_at(end);
        authority = Some(auth);
        rest = r;
    }
    match memchr::memchr(b'?', rest) {
        Some(q) => {
            let (path, query) = rest.split_at(q);
            Target {
                authority,
                path,
                query: query.get(1..),
            }
        }
        None => Target {
            authority,
            path: rest,
            query: None,
        },
    }
}

/// Percent-decodes `s` into `out`. `+` stays `+`: BitTorrent clients escape
/// every byte outside the unreserved set, so a bare `+` was sent as the
/// byte itself, not as form-encoded space. Returns `false` if a `%` was not
/// followed by two hex digits (it is kept literally).
fn percent_decode(s: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut ok = true;
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%' {
            let hi = s.get(i + 1).and_then(|&c| (c as char).to_digit(16));
            let lo = s.get(i + 2).and_then(|&c| (c as char).to_digit(16));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
            ok = false;
        }
        out.push(b);
        i += 1;
    }
    ok
}

/// Reads a request target as an announce, a scrape or neither.
///
/// The kind follows the path's last segment: `announce…` or `scrape…`
/// (the BEP 48 convention that derives one from the other); otherwise a
/// query carrying `info_hash`, `peer_id` and `port` is an announce to an
/// unconventional path. Defects are reported through `anomaly`.
pub fn parse_request_target(
    target: &[u8],
    limits: &HttpLimits,
    anomaly: &mut impl FnMut(HttpAnomaly),
) -> TrackerRequest {
    let t = split_target(target);
    let last_segment = t.path.rsplit(|&b| b == b'/').next().unwrap_or(t.path);
    let starts = |p: &[u8]| last_segment.get(..p.len()).is_some_and(|s| s.eq_ignore_ascii_case(p));
    let query = t.query.unwrap_or(&[]);
    if starts(b"scrape") {
        return TrackerRequest::Scrape(parse_scrape_query(query, limits, anomaly));
    }
    let by_path = starts(b"announce");
    if !by_path {
        let mut has = [false; 3];
        for (k, _) in query_pairs(query).take(limits.max_query_params) {
            match k {
                b"info_hash" => has[0] = true,
                b"peer_id" => has[1] = true,
                b"port" => has[2] = true,
                _ => {}
            }
        }
        if has != [true; 3] {
            return TrackerRequest::Other;
        }
    }
    TrackerRequest::Announce(parse_announce_query(query, limits, anomaly))
}

/// `key=value` pairs of a query, raw (still percent-encoded). Keys of the
/// tracker protocol are plain ASCII, so they are compared raw.
fn query_pairs(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match memchr::memchr(b'=', p) {
            Some(e) => (p.get(..e).unwrap_or(&[]), p.get(e + 1..).unwrap_or(&[])),
            None => (p, &[][..]),
        })
}

fn parse_announce_query(query: &[u8], limits: &HttpLimits, anomaly: &mut impl FnMut(HttpAnomaly)) -> AnnounceRequest {
    let mut a = AnnounceRequest::default();
    let mut buf = Vec::new();
    let mut bad_pct = false;
    let max_text = limits.max_text_bytes;
    for (n, (k, raw)) in query_pairs(query).enumerate() {
        if n == limits.max_query_params {
            anomaly(HttpAnomaly::TooManyParams);
            break;
        }
        bad_pct |= !percent_decode(raw, &mut buf);
        let v = buf.as_slice();
        // The first occurrence wins, as for bencode dict keys.
        match k {
            b"info_hash" if a.info_hash.is_none() => {
                a.info_hash = v.try_into().ok();
                if a.info_hash.is_none() {
                    anomaly(HttpAnomaly::BadInfoHash);
                }
            }
            b"peer_id" if a.peer_id.is_none() => {
                a.peer_id = v.try_into().ok();
                if a.peer_id.is_none() {
                    anomaly(HttpAnomaly::BadPeerId);
                }
            }
            b"port" if a.port.is_none() => {
                a.port = parse_u64(v).and_then(|p| u16::try_from(p).ok());
                if a.port.is_none() {
                    anomaly(HttpAnomaly::BadValue("port"));
                }
            }
            b"uploaded" => set_int(&mut a.uploaded, v, "uploaded", anomaly),
            b"downloaded" => set_int(&mut a.downloaded, v, "downloaded", anomaly),
            b"left" => set_int(&mut a.left, v, "left", anomaly),
            b"corrupt" => set_int(&mut a.corrupt, v, "corrupt", anomaly),
            b"redundant" => set_int(&mut a.redundant, v, "redundant", anomaly),
            b"numwant" => set_int(&mut a.numwant, v, "numwant", anomaly),
            b"compact" => set_flag(&mut a.compact, v, "compact", anomaly),
            b"no_peer_id" => set_flag(&mut a.no_peer_id, v, "no_peer_id", anomaly),
            b"supportcrypto" => set_flag(&mut a.supportcrypto, v, "supportcrypto", anomaly),
            b"requirecrypto" => set_flag(&mut a.requirecrypto, v, "requirecrypto", anomaly),
            b"event" if a.event.is_none() => {
                a.event = Some(AnnounceEvent::from_bytes(v, max_text));
            }
            b"key" if a.key.is_none() => a.key = Some(text(v, max_text)),
            b"trackerid" if a.trackerid.is_none() => a.trackerid = Some(text(v, max_text)),
            b"ip" if a.ip.is_none() => a.ip = Some(text(v, max_text)),
            b"ipv4" if a.ipv4.is_none() => a.ipv4 = Some(text(v, max_text)),
            b"ipv6" if a.ipv6.is_none() => a.ipv6 = Some(text(v, max_text)),
            _ => {}
        }
    }
    if bad_pct {
        anomaly(HttpAnomaly::BadPercentEncoding);
    }
    a
}

fn set_int(slot: &mut Option<i64>, v: &[u8], name: &'static str, anomaly: &mut impl FnMut(HttpAnomaly)) {
    if slot.is_some() {
        return;
    }
    *slot = parse_i64(v);
    if slot.is_none() {
        anomaly(HttpAnomaly::BadValue(name));
    }
}

fn set_flag(slot: &mut Option<bool>, v: &[u8], name: &'static str, anomaly: &mut impl FnMut(HttpAnomaly)) {
    if slot.is_some() {
        return;
    }
    *slot = match v {
        b"1" => Some(true),
        b"0" => Some(false),
        _ => {
            anomaly(HttpAnomaly::BadValue(name));
            None
        }
    };
}

fn parse_scrape_query(query: &[u8], limits: &HttpLimits, anomaly: &mut impl FnMut(HttpAnomaly)) -> ScrapeRequest {
    let mut s = ScrapeRequest::default();
    let mut buf = Vec::new();
    let mut bad_pct = false;
    let mut bad_hash = false;
    for (n, (k, raw)) in query_pairs(query).enumerate() {
        if n == limits.max_query_params {
            anomaly(HttpAnomaly::TooManyParams);
            break;
        }
        if k != b"info_hash" {
            continue;
        }
        if s.info_hashes.len() == limits.max_scrape_hashes {
            anomaly(HttpAnomaly::TooManyScrapeHashes);
            break;
        }
        bad_pct |= !percent_decode(raw, &mut buf);
        match <[u8; 20]>::try_from(buf.as_slice()) {
            Ok(h) => s.info_hashes.push(h),
            Err(_) => bad_hash = true,
        }
    }
    if bad_hash {
        anomaly(HttpAnomaly::BadInfoHash);
    }
    if bad_pct {
        anomaly(HttpAnomaly::BadPercentEncoding);
    }
    s
}

// ---------------------------------------------------------------------------
// Response semantics
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Deflate,
}

/// Decodes a complete response body into its tracker meaning.
///
/// `answers` is what the request asked (`None`: unknown, inferred from the
/// document's keys: `files` without `peers` or `interval` is a scrape). A
/// body of a non-tracker request is not read. A body that does not start
/// with `d` is not a tracker document; that is reported only for a 2xx
/// answer to a tracker request. Gzip is also recognised by its magic bytes
/// when `Content-Encoding` is missing: some tracker front ends compress
/// without saying so, and a bencoded dict can never start with 0x1f.
pub fn interpret_body(
    answers: Option<RequestKind>,
    status: u16,
    content_encoding: Option<&str>,
    raw: &[u8],
    limits: &HttpLimits,
    anomaly: &mut impl FnMut(HttpAnomaly),
) -> ResponseBody {
    if raw.is_empty() {
        return ResponseBody::Empty;
    }
    if answers == Some(RequestKind::Other) {
        return ResponseBody::Other;
    }
    let coding = match content_encoding.map(str::trim) {
        None | Some("") => {
            if raw.starts_with(&[0x1f, 0x8b]) {
                Coding::Gzip
            } else {
                Coding::Identity
            }
        }
        Some(e) if e.eq_ignore_ascii_case("identity") => Coding::Identity,
        Some(e) if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => Coding::Gzip,
        Some(e) if e.eq_ignore_ascii_case("deflate") => Coding::Deflate,
        Some(_) => {
            anomaly(HttpAnomaly::UnknownContentEncoding);
            return ResponseBody::Unusable;
        }
    };
    let decoded;
    let doc: &[u8] = match coding {
        Coding::Identity => raw,
        Coding::Gzip | Coding::Deflate => match inflate(raw, coding, limits.max_decoded_body_bytes) {
            Ok(d) => {
                decoded = d;
                &decoded
            }
            Err(a) => {
                anomaly(a);
                return ResponseBody::Unusable;
            }
        },
    };
    if doc.first() != Some(&b'd') {
        if doc.is_empty() {
            return ResponseBody::Empty;
        }
        if answers.is_some() && (200..300).contains(&status) {
            anomaly(HttpAnomaly::BodyNotBencode);
        }
        return ResponseBody::Other;
    }
    let (dict, used) = match bencode::parse_dict(doc, &limits.bencode) {
        Ok(x) => x,
        Err(e) => {
            anomaly(HttpAnomaly::Bencode(e));
            return ResponseBody::Unusable;
        }
    };
    if doc.get(used..).is_some_and(|t| !t.iter().all(u8::is_ascii_whitespace)) {
        anomaly(HttpAnomaly::BodyTrailingBytes);
    }
    let kind = answers.unwrap_or_else(|| {
        let scrape_like =
            dict.get(b"files").is_some() && dict.get(b"peers").is_none() && dict.get(b"interval").is_none();
        if scrape_like {
            RequestKind::Scrape
        } else {
            RequestKind::Announce
        }
    });
    match kind {
        RequestKind::Scrape => ResponseBody::Scrape(read_scrape(dict, limits, anomaly)),
        RequestKind::Announce | RequestKind::Other => ResponseBody::Announce(read_announce(dict, limits, anomaly)),
    }
}

/// Decompresses with an output bound; `deflate` is tried as zlib (what the
/// RFC means) and then raw (what some servers send).
fn inflate(raw: &[u8], coding: Coding, max: usize) -> Result<Vec<u8>, HttpAnomaly> {
    fn bounded(r: impl Read, max: usize) -> Result<Vec<u8>, HttpAnomaly> {
        let mut out = Vec::new();
        let cap = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
        r.take(cap)
            .read_to_end(&mut out)
            .map_err(|_| HttpAnomaly::BadCompression)?;
        if out.len() > max {
            return Err(HttpAnomaly::DecompressedTooLong);
        }
        Ok(out)
    }
    match coding {
        Coding::Identity => Ok(raw.to_vec()),
        Coding::Gzip => bounded(flate2::read::MultiGzDecoder::new(raw), max),
        Coding::Deflate => match bounded(flate2::read::ZlibDecoder::new(raw), max) {
            Err(HttpAnomaly::BadCompression) => bounded(flate2::read::DeflateDecoder::new(raw), max),
            other => other,
        },
    }
}

fn read_announce(d: Dict<'_>, limits: &HttpLimits, anomaly: &mut impl FnMut(HttpAnomaly)) -> AnnounceResponse {
    let max_text = limits.max_text_bytes;
    // The first value of each key read below, found in one walk of the
    // dict (a `get` per key walked it once per key: ~11 k instructions a
    // response).
    let [mut failure, mut warning, mut interval, mut min_interval, mut complete, mut incomplete, mut downloaded, mut tracker_id, mut external_ip, mut peers, mut peers6] =
        [None; 11];
    for (k, v) in d.iter() {
        let slot = match k {
            b"failure reason" => &mut failure,
            b"warning message" => &mut warning,
            b"interval" => &mut interval,
            b"min interval" => &mut min_interval,
            b"complete" => &mut complete,
            b"incomplete" => &mut incomplete,
            b"downloaded" => &mut downloaded,
            b"tracker id" => &mut tracker_id,
            b"external ip" => &mut external_ip,
            b"peers" => &mut peers,
            b"peers6" => &mut peers6,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(v);
        }
    }
    let s = |v: Option<Value<'_>>| v.and_then(|v| v.as_bytes()).map(|v| text(v, max_text));
    let int = |v: Option<Value<'_>>| v.and_then(|v| v.as_int());
    let mut r = AnnounceResponse {
        failure_reason: s(failure),
        warning_message: s(warning),
        interval: int(interval),
        min_interval: int(min_interval),
        complete: int(complete),
        incomplete: int(incomplete),
        downloaded: int(downloaded),
        tracker_id: s(tracker_id),
        external_ip: None,
        peers: Vec::new(),
    };
    if let Some(ip) = external_ip.and_then(|v| v.as_bytes()) {
        r.external_ip = ip_from_bytes(ip);
        if r.external_ip.is_none() {
            anomaly(HttpAnomaly::BadExternalIp);
        }
    }
    let mut too_many = false;
    match peers {
        None => {}
        Some(Value::Bytes(b)) => {
            too_many |= push_compact(&mut r.peers, b, AddrFamily::V4, limits, anomaly);
        }
        Some(Value::List(list)) => {
            let mut bad = false;
            for item in list.iter() {
                if r.peers.len() >= limits.max_peers {
                    too_many = true;
                    break;
                }
                match dict_peer(item, max_text) {
                    Some(p) => r.peers.push(p),
                    None => bad = true,
                }
            }
            if bad {
                anomaly(HttpAnomaly::BadPeerEntry);
            }
        }
        Some(_) => anomaly(HttpAnomaly::BadPeersType),
    }
    match peers6 {
        None => {}
        Some(Value::Bytes(b)) => {
            too_many |= push_compact(&mut r.peers, b, AddrFamily::V6, limits, anomaly);
        }
        Some(_) => anomaly(HttpAnomaly::BadPeersType),
    }
    if too_many {
        anomaly(HttpAnomaly::TooManyPeers);
    }
    r
}

/// Appends whole compact entries up to the peer limit; reports a partial
/// trailing entry. Returns whether entries were dropped for the limit.
fn push_compact(
    peers: &mut Vec<TrackerPeer>,
    bytes: &[u8],
    family: AddrFamily,
    limits: &HttpLimits,
    anomaly: &mut impl FnMut(HttpAnomaly),
) -> bool {
    let room = limits.max_peers.saturating_sub(peers.len());
    let (list, cut) = CompactPeers::new(bytes, family, room);
    if cut.partial_bytes != 0 {
        anomaly(match family {
            AddrFamily::V4 => HttpAnomaly::PeersNotMultiple,
            AddrFamily::V6 => HttpAnomaly::Peers6NotMultiple,
        });
    }
    let format = match family {
        AddrFamily::V4 => PeerFormat::Compact,
        AddrFamily::V6 => PeerFormat::Compact6,
    };
    peers.extend(list.iter().map(|a| TrackerPeer {
        host: PeerHost::Ip(a.ip()),
        port: a.port(),
        peer_id: None,
        format,
    }));
    cut.dropped_entries != 0
}

/// A dictionary-model peer: `ip` (text address, DNS name, or, from a few
/// trackers, 4 or 16 raw bytes), `port`, optional `peer id`.
fn dict_peer(v: Value<'_>, max_text: usize) -> Option<TrackerPeer> {
    let d = v.as_dict()?;
    let ip = d.get_bytes(b"ip")?;
    let port = u16::try_from(d.get_int(b"port")?).ok()?;
    let host = match std::str::from_utf8(ip)
        .ok()
        .and_then(|s| s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok())
    {
        Some(a) => PeerHost::Ip(a),
        None => match ip_from_bytes(ip) {
            // Raw bytes only when the value cannot be a name: a DNS name
            // of exactly 4 or 16 printable bytes stays a name.
            Some(a) if !ip.iter().all(|b| b.is_ascii_graphic()) => PeerHost::Ip(a),
            _ if !ip.is_empty() && ip.iter().all(|b| b.is_ascii_graphic()) => PeerHost::Name(text(ip, max_text)),
            _ => return None,
        },
    };
    Some(TrackerPeer {
        host,
        port,
        peer_id: d.get_bytes(b"peer id").and_then(|p| p.try_into().ok()),
        format: PeerFormat::Dict,
    })
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    if let Ok(a) = <[u8; 4]>::try_from(b) {
        return Some(IpAddr::V4(Ipv4Addr::from(a)));
    }
    if let Ok(a) = <[u8; 16]>::try_from(b) {
        return Some(IpAddr::V6(Ipv6Addr::from(a)));
    }
    None
}

fn read_scrape(d: Dict<'_>, limits: &HttpLimits, anomaly: &mut impl FnMut(HttpAnomaly)) -> ScrapeResponse {
    let max_text = limits.max_text_bytes;
    let mut r = ScrapeResponse {
        failure_reason: d.get_bytes(b"failure reason").map(|v| text(v, max_text)),
        min_request_interval: d.get_dict(b"flags").and_then(|f| f.get_int(b"min_request_interval")),
        files: Vec::new(),
    };
    let Some(files) = d.get_dict(b"files") else {
        return r;
    };
    let mut bad = false;
    for (k, v) in files.iter() {
        if r.files.len() >= limits.max_scrape_files {
            anomaly(HttpAnomaly::TooManyScrapeFiles);
            break;
        }
        let (Ok(info_hash), Some(e)) = (<[u8; 20]>::try_from(k), v.as_dict()) else {
            bad = true;
            continue;
        };
        r.files.push(ScrapeFile {
            info_hash,
            complete: e.get_int(b"complete"),
            incomplete: e.get_int(b"incomplete"),
            downloaded: e.get_int(b"downloaded"),
            name: e.get_bytes(b"name").map(|n| text(n, max_text)),
        });
    }
    if bad {
        anomaly(HttpAnomaly::BadScrapeEntry);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lim() -> HttpLimits {
        HttpLimits::default()
    }

    /// Small limits, so hostile fixtures stay short enough to be split at
    /// every offset.
    fn small() -> HttpLimits {
        HttpLimits {
            max_head_bytes: 300,
            max_headers: 8,
            max_body_bytes: 600,
            max_decoded_body_bytes: 2000,
            max_chunk_bytes: 4096,
            max_chunk_line_bytes: 24,
            max_trailer_bytes: 64,
            max_pending_requests: 4,
            max_query_params: 32,
            max_scrape_hashes: 3,
            max_peers: 5,
            max_scrape_files: 3,
            max_text_bytes: 64,
            bencode: lim().bencode,
        }
    }

    const IH: [u8; 20] = [
        0xaa, 0x37, 0x69, 0xc4, 0x53, 0x0d, 0xde, 0x06, 0x24, 0x18, 0x73, 0xda, 0xd4, 0x3a, 0xb5, 0xcc, 0xec, 0x2c,
        0xe6, 0x22,
    ];

    fn pct(b: &[u8]) -> String {
        b.iter()
            .map(|&c| {
                if c.is_ascii_alphanumeric() || b"-_.~".contains(&c) {
                    (c as char).to_string()
                } else {
                    format!("%{c:02x}")
                }
            })
            .collect()
    }

    fn announce_target() -> String {
        format!(
            "/announce?info_hash={}&peer_id=-TR2940-chho92c56pul&port=51413&uploaded=10&downloaded=20\
             &left=282050560&corrupt=0&redundant=5&numwant=80&key=3b5502cc&compact=1&no_peer_id=1\
             &supportcrypto=1&requirecrypto=0&event=started&trackerid=T1&ip=10.0.0.1\
             &ipv4=10.0.0.1:51413&ipv6=%5B2001%3Adb8%3A%3A1%5D&passkey=secret",
            pct(&IH)
        )
    }

    fn get(target: &str, extra_headers: &str) -> Vec<u8> {
        format!(
            "GET {target} HTTP/1.1\r\nHost: tracker.example:6969\r\nUser-Agent: Transmission/2.94\r\n{extra_headers}\r\n"
        )
        .into_bytes()
    }

    fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut v = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n{headers}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        v.extend_from_slice(body);
        v
    }

    fn chunked(status: &str, body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut v = format!("HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
        let mut rest = body;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            i += 1;
            v.extend_from_slice(format!("{n:X};ext=1\r\n").as_bytes());
            v.extend_from_slice(&rest[..n]);
            v.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        v.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
        v
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn bstr(b: &[u8]) -> Vec<u8> {
        let mut v = format!("{}:", b.len()).into_bytes();
        v.extend_from_slice(b);
        v
    }

    /// A compact announce answer with two peers (plus `extra` raw peers bytes).
    fn compact_body(extra: &[u8]) -> Vec<u8> {
        let mut peers = vec![1, 2, 3, 4, 0x1a, 0xe1, 5, 6, 7, 8, 0, 80];
        peers.extend_from_slice(extra);
        let mut v =
            b"d8:completei5e10:downloadedi50e10:incompletei10e8:intervali1800e12:min intervali900e5:peers".to_vec();
        v.extend_from_slice(&bstr(&peers));
        v.extend_from_slice(b"e");
        v
    }

    fn dict_model_body() -> Vec<u8> {
        let mut v = b"d11:external ip4:".to_vec();
        v.extend_from_slice(&[198, 51, 100, 7]);
        v.extend_from_slice(b"8:intervali60e5:peersl");
        v.extend_from_slice(b"d2:ip9:10.0.0.207:peer id20:-DE13F0-VnpZRF8ZP9iv4:porti6881ee");
        v.extend_from_slice(b"d2:ip11:2001:db8::14:porti80ee");
        v.extend_from_slice(b"d2:ip16:peer.example.org4:porti1ee");
        v.extend_from_slice(b"d2:ip3:bad4:porti70000ee");
        v.extend_from_slice(b"i5e");
        v.extend_from_slice(b"e6:peers6");
        let mut p6 = vec![0x20, 0x01, 0x0d, 0xb8];
        p6.extend_from_slice(&[0; 11]);
        p6.push(2);
        p6.extend_from_slice(&[0x1a, 0xe1]);
        v.extend_from_slice(&bstr(&p6));
        v.extend_from_slice(b"10:tracker id3:xyz15:warning message4:slowe");
        v
    }

    fn scrape_body() -> Vec<u8> {
        let mut v = b"d5:filesd".to_vec();
        v.extend_from_slice(&bstr(&IH));
        v.extend_from_slice(b"d8:completei5e10:downloadedi50e10:incompletei10e4:name3:isoe");
        v.extend_from_slice(&bstr(&[0x11; 20]));
        v.extend_from_slice(b"d8:completei0ee");
        v.extend_from_slice(b"3:bad");
        v.extend_from_slice(b"d8:completei1ee");
        v.extend_from_slice(b"e5:flagsd20:min_request_intervali900eee");
        v
    }

    /// Runs one stream over `pieces` (data, or a gap when `None`).
    fn run_pieces(
        role: Role,
        limits: HttpLimits,
        expects: &[Expect],
        pieces: &[Option<&[u8]>],
        gaps: &[u64],
        finish: bool,
    ) -> (Vec<HttpEvent>, usize) {
        let mut s = HttpStream::new(role, limits);
        for e in expects {
            s.expect(*e);
        }
        let mut events = Vec::new();
        let mut max_buffered = 0;
        let mut g = gaps.iter();
        for p in pieces {
            match p {
                Some(d) => s.feed(d, &mut |e| events.push(e)),
                None => s.gap(*g.next().unwrap(), &mut |e| events.push(e)),
            }
            max_buffered = max_buffered.max(s.buffered_bytes());
        }
        if finish {
            s.finish(&mut |e| events.push(e));
        }
        (events, max_buffered)
    }

    fn run(role: Role, limits: HttpLimits, expects: &[Expect], data: &[u8]) -> Vec<HttpEvent> {
        run_pieces(role, limits, expects, &[Some(data)], &[], true).0
    }

    fn anomalies(ev: &[HttpEvent]) -> Vec<&'static str> {
        ev.iter()
            .filter_map(|e| match e {
                HttpEvent::Anomaly(a) => Some(a.kind()),
                _ => None,
            })
            .collect()
    }

    fn requests(ev: &[HttpEvent]) -> Vec<&HttpRequest> {
        ev.iter()
            .filter_map(|e| match e {
                HttpEvent::Request(r) => Some(&**r),
                _ => None,
            })
            .collect()
    }

    fn responses(ev: &[HttpEvent]) -> Vec<&HttpResponse> {
        ev.iter()
            .filter_map(|e| match e {
                HttpEvent::Response(r) => Some(&**r),
                _ => None,
            })
            .collect()
    }

    const ANN: Expect = Expect {
        kind: RequestKind::Announce,
        head: false,
        index: 0,
    };
    const SCR: Expect = Expect {
        kind: RequestKind::Scrape,
        head: false,
        index: 0,
    };
    const HEAD_ANN: Expect = Expect {
        kind: RequestKind::Announce,
        head: true,
        index: 2,
    };

    /// A named stream with its role, limits and pending expectations.
    type Fixture = (&'static str, Role, HttpLimits, Vec<Expect>, Vec<u8>);

    fn fixtures() -> Vec<Fixture> {
        let mut f = Vec::new();
        // Keep-alive and pipelining: announce, scrape, HEAD in one go.
        let mut reqs = get(&announce_target(), "");
        reqs.extend(get(
            &format!("/x/scrape.php?info_hash={}&info_hash={}", pct(&IH), pct(&[0x11; 20])),
            "Connection: keep-alive\r\n",
        ));
        reqs.extend(format!("HEAD /announce?info_hash={} HTTP/1.1\r\n\r\n", pct(&IH)).into_bytes());
        f.push(("pipelined_requests", Role::Request, lim(), vec![], reqs));

        let mut resps = response("200 OK", "", &compact_body(&[]));
        resps.extend(chunked("200 OK", &scrape_body(), &[7, 1, 30]));
        resps.extend(response("200 OK", "", b"ignored-for-head"));
        // The HEAD response's Content-Length describes a body never sent.
        let head_len = b"ignored-for-head".len();
        resps.truncate(resps.len() - head_len);
        resps.extend(b"HTTP/1.1 100 Continue\r\n\r\n");
        resps.extend(response("200 OK", "", &dict_model_body()));
        f.push((
            "keepalive_responses",
            Role::Response,
            lim(),
            vec![ANN, SCR, HEAD_ANN, ANN],
            resps,
        ));

        let mut gz = response("200 OK", "Content-Encoding: gzip\r\n", &gzip(&compact_body(&[])));
        gz.extend(chunked("200 OK", &gzip(&compact_body(&[9, 9, 9])), &[5]));
        let mut def = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        def.write_all(&compact_body(&[])).unwrap();
        gz.extend(response(
            "200 OK",
            "Content-Encoding: deflate\r\n",
            &def.finish().unwrap(),
        ));
        f.push(("compressed", Role::Response, lim(), vec![ANN, ANN, ANN], gz));

        let mut close = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        close.extend(b"d14:failure reason12:unregisterede");
        f.push(("until_close", Role::Response, lim(), vec![ANN], close));

        let mut redirect =
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /announce?x=1\r\nContent-Length: 0\r\n\r\n".to_vec();
        redirect.extend(response("404 Not Found", "", b"<html>nope</html>"));
        f.push(("redirect_then_404", Role::Response, lim(), vec![ANN, ANN], redirect));

        // Hostile, with small limits.
        let mut junk = b"\x13BitTorrent protocol junk\r\nmore junk\n".to_vec();
        junk.extend(get(
            "/announce?info_hash=%zz&peer_id=short&port=99999&left=-5&compact=yes",
            "",
        ));
        f.push(("junk_then_request", Role::Request, small(), vec![], junk));

        let mut long_head = get("/announce", &"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(20));
        long_head.extend(get(&announce_target()[..200], ""));
        f.push(("head_too_long", Role::Request, small(), vec![], long_head));

        let mut many = get("/announce", &"X-A: 1\r\n".repeat(12));
        many.extend(get("/scrape", ""));
        f.push(("too_many_headers", Role::Request, small(), vec![], many));

        let mut big_body = response("200 OK", "", &vec![b'x'; 5000]);
        big_body.extend(response("200 OK", "", &compact_body(&[])));
        f.push(("body_too_long", Role::Response, small(), vec![ANN, ANN], big_body));

        let mut big_chunks = chunked("200 OK", &vec![b'y'; 1500], &[500]);
        big_chunks.extend(response("200 OK", "", &compact_body(&[])));
        f.push(("chunked_too_long", Role::Response, small(), vec![ANN, ANN], big_chunks));

        let mut bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec();
        bad_chunk.extend(response("200 OK", "", &compact_body(&[])));
        f.push(("bad_chunk_size", Role::Response, small(), vec![ANN, ANN], bad_chunk));

        let mut huge_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\n".to_vec();
        huge_chunk.extend(response("200 OK", "", &compact_body(&[])));
        f.push((
            "chunk_size_overflow",
            Role::Response,
            small(),
            vec![ANN, ANN],
            huge_chunk,
        ));

        let mut long_ext = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;".to_vec();
        long_ext.extend(vec![b'e'; 100]);
        long_ext.extend(b"\r\nhello\r\n0\r\n\r\n");
        long_ext.extend(response("200 OK", "", &compact_body(&[])));
        f.push(("chunk_line_too_long", Role::Response, small(), vec![ANN, ANN], long_ext));

        let mut bad_term = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY\r\n0\r\n\r\n".to_vec();
        bad_term.extend(response("200 OK", "", &compact_body(&[])));
        f.push((
            "bad_chunk_terminator",
            Role::Response,
            small(),
            vec![ANN, ANN],
            bad_term,
        ));

        let bomb = response("200 OK", "Content-Encoding: gzip\r\n", &gzip(&vec![0u8; 100_000]));
        f.push(("gzip_bomb_small", Role::Response, small(), vec![ANN], bomb));

        let mut bad_gz = response("200 OK", "Content-Encoding: gzip\r\n", b"\x1f\x8bnot gzip at all");
        bad_gz.extend(response("200 OK", "Content-Encoding: br\r\n", b"xx"));
        f.push(("bad_compression", Role::Response, small(), vec![ANN, ANN], bad_gz));

        f.push((
            "peers_not_multiple_of_6",
            Role::Response,
            small(),
            vec![ANN],
            response("200 OK", "", &compact_body(&[9, 9, 9, 9])),
        ));

        let mut deep = vec![b'l'; 200];
        deep.extend(vec![b'e'; 200]);
        let mut deep_body = b"d5:peers".to_vec();
        deep_body.extend(&deep);
        deep_body.push(b'e');
        let mut deep_resp = response("200 OK", "", &deep_body);
        deep_resp.extend(response("200 OK", "", b"not bencode"));
        deep_resp.extend(response("200 OK", "", b"d8:intervali5eeXX"));
        f.push((
            "deep_and_bad_bencode",
            Role::Response,
            small(),
            vec![ANN, ANN, ANN],
            deep_resp,
        ));

        let mut cl = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello\r\n".to_vec();
        cl.extend(response("200 OK", "", &compact_body(&[])));
        f.push((
            "conflicting_content_length",
            Role::Response,
            small(),
            vec![ANN, ANN],
            cl,
        ));

        let mut truncated = response("200 OK", "", &compact_body(&[]));
        truncated.truncate(truncated.len() - 3);
        f.push(("truncated_body", Role::Response, small(), vec![ANN], truncated));
        f
    }

    #[test]
    fn every_split_gives_the_same_events() {
        for (name, role, limits, expects, data) in fixtures() {
            let whole = run(role, limits, &expects, &data);
            let (bytewise, _) = run_pieces(
                role,
                limits,
                &expects,
                &data.chunks(1).map(Some).collect::<Vec<_>>(),
                &[],
                true,
            );
            assert_eq!(bytewise, whole, "{name}: byte by byte");
            for i in 0..=data.len() {
                let (a, b) = data.split_at(i);
                let (ev, _) = run_pieces(role, limits, &expects, &[Some(a), Some(b)], &[], true);
                assert_eq!(ev, whole, "{name}: split at {i}");
            }
            // A few three-way splits.
            let n = data.len();
            for (i, j) in [(1, 2), (n / 3, 2 * n / 3), (n / 2, n / 2 + 1), (7, n - 7)] {
                if i <= j && j <= n {
                    let pieces = [Some(&data[..i]), Some(&data[i..j]), Some(&data[j..])];
                    let (ev, _) = run_pieces(role, limits, &expects, &pieces, &[], true);
                    assert_eq!(ev, whole, "{name}: split at {i},{j}");
                }
            }
        }
    }

    #[test]
    fn memory_stays_within_limits_on_every_fixture() {
        for (name, role, limits, expects, data) in fixtures() {
            let pieces: Vec<_> = data.chunks(13).map(Some).collect();
            let (_, max_buffered) = run_pieces(role, limits, &expects, &pieces, &[], true);
            let bound = limits.max_head_bytes + 1 + limits.max_body_bytes + limits.max_chunk_line_bytes + 1;
            assert!(max_buffered <= bound, "{name}: {max_buffered} > {bound}");
        }
    }

    #[test]
    fn pipelined_requests_are_parsed() {
        let ev = run(Role::Request, lim(), &[], &fixtures()[0].4);
        assert!(anomalies(&ev).is_empty(), "{:?}", anomalies(&ev));
        let r = requests(&ev);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].method, "GET");
        assert_eq!(r[0].path, "/announce");
        assert_eq!(r[0].http_minor, 1);
        assert_eq!(r[0].host.as_deref(), Some("tracker.example:6969"));
        assert_eq!(r[0].user_agent.as_deref(), Some("Transmission/2.94"));
        let TrackerRequest::Announce(a) = &r[0].tracker else {
            panic!("{:?}", r[0].tracker)
        };
        assert_eq!(a.info_hash, Some(IH));
        assert_eq!(a.peer_id.as_ref(), Some(b"-TR2940-chho92c56pul"));
        assert_eq!(a.port, Some(51413));
        assert_eq!(
            (a.uploaded, a.downloaded, a.left),
            (Some(10), Some(20), Some(282050560))
        );
        assert_eq!((a.corrupt, a.redundant, a.numwant), (Some(0), Some(5), Some(80)));
        assert_eq!(a.event, Some(AnnounceEvent::Started));
        assert_eq!(a.compact, Some(true));
        assert_eq!(a.no_peer_id, Some(true));
        assert_eq!(a.supportcrypto, Some(true));
        assert_eq!(a.requirecrypto, Some(false));
        assert_eq!(a.key.as_deref(), Some("3b5502cc"));
        assert_eq!(a.trackerid.as_deref(), Some("T1"));
        assert_eq!(a.ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(a.ipv4.as_deref(), Some("10.0.0.1:51413"));
        assert_eq!(a.ipv6.as_deref(), Some("[2001:db8::1]"));
        assert_eq!(r[0].expect(), ANN);

        let TrackerRequest::Scrape(s) = &r[1].tracker else {
            panic!()
        };
        assert_eq!(s.info_hashes, vec![IH, [0x11; 20]]);
        assert_eq!(r[1].path, "/x/scrape.php");
        assert_eq!(r[2].expect(), HEAD_ANN);
    }

    #[test]
    fn request_kind_rules() {
        let k = |t: &str| parse_request_target(t.as_bytes(), &lim(), &mut |_| {}).kind();
        assert_eq!(k("/announce"), RequestKind::Announce);
        assert_eq!(k("/abcdef0123/announce.php?passkey=1"), RequestKind::Announce);
        assert_eq!(k("/Scrape?info_hash=x"), RequestKind::Scrape);
        assert_eq!(k("http://t.example:80/scrape"), RequestKind::Scrape);
        assert_eq!(k("/tr?info_hash=a&peer_id=b&port=1"), RequestKind::Announce);
        assert_eq!(k("/tr?info_hash=a&peer_id=b"), RequestKind::Other);
        assert_eq!(k("/favicon.ico"), RequestKind::Other);
        assert_eq!(k("/announce/x"), RequestKind::Other);
        // Absolute form (proxies): host from the authority.
        let req = get("http://tracker.example:6969/announce?port=1", "");
        let req = String::from_utf8(req)
            .unwrap()
            .replace("Host: tracker.example:6969\r\n", "");
        let ev = run(Role::Request, lim(), &[], req.as_bytes());
        let r = requests(&ev);
        assert_eq!(r[0].path, "/announce");
        assert_eq!(r[0].host.as_deref(), Some("tracker.example:6969"));
    }

    #[test]
    fn keepalive_chunked_head_and_interim_responses() {
        let (_, role, limits, expects, data) = fixtures().swap_remove(1);
        let ev = run(role, limits, &expects, &data);
        // Both defects are planted in the fixtures (see
        // dict_model_defects_are_reported).
        assert_eq!(
            anomalies(&ev),
            vec!["tracker_bad_scrape_entry", "tracker_bad_peer_entry"]
        );
        let r = responses(&ev);
        assert_eq!(r.len(), 5);
        let ResponseBody::Announce(a) = &r[0].body else {
            panic!("{:?}", r[0].body)
        };
        assert_eq!(r[0].answers, Some(RequestKind::Announce));
        assert_eq!((a.complete, a.incomplete, a.downloaded), (Some(5), Some(10), Some(50)));
        assert_eq!((a.interval, a.min_interval), (Some(1800), Some(900)));
        assert_eq!(
            a.peers
                .iter()
                .map(|p| (p.host.clone(), p.port, p.format))
                .collect::<Vec<_>>(),
            vec![
                (PeerHost::Ip("1.2.3.4".parse().unwrap()), 6881, PeerFormat::Compact),
                (PeerHost::Ip("5.6.7.8".parse().unwrap()), 80, PeerFormat::Compact),
            ]
        );

        assert_eq!(r[1].answers, Some(RequestKind::Scrape));
        let ResponseBody::Scrape(s) = &r[1].body else {
            panic!("{:?}", r[1].body)
        };
        assert_eq!(s.min_request_interval, Some(900));
        assert_eq!(s.files.len(), 2);
        assert_eq!(s.files[0].info_hash, IH);
        assert_eq!(
            (s.files[0].complete, s.files[0].incomplete, s.files[0].downloaded),
            (Some(5), Some(10), Some(50))
        );
        assert_eq!(s.files[0].name.as_deref(), Some("iso"));

        // HEAD: no body despite Content-Length.
        assert_eq!(r[2].body, ResponseBody::Empty);
        assert_eq!(r[2].body_bytes, 0);
        // 100 Continue is interim and does not consume the expectation.
        assert!(r[3].interim);
        assert_eq!(r[3].answers, Some(RequestKind::Announce));
        let ResponseBody::Announce(d) = &r[4].body else {
            panic!("{:?}", r[4].body)
        };
        assert_eq!(d.external_ip, Some("198.51.100.7".parse().unwrap()));
        assert_eq!(d.tracker_id.as_deref(), Some("xyz"));
        assert_eq!(d.warning_message.as_deref(), Some("slow"));
        assert_eq!(d.interval, Some(60));
        let got: Vec<_> = d.peers.iter().map(|p| (p.host.clone(), p.port, p.format)).collect();
        assert_eq!(
            got,
            vec![
                (PeerHost::Ip("10.0.0.20".parse().unwrap()), 6881, PeerFormat::Dict),
                (PeerHost::Ip("2001:db8::1".parse().unwrap()), 80, PeerFormat::Dict),
                (PeerHost::Name("peer.example.org".into()), 1, PeerFormat::Dict),
                (PeerHost::Ip("2001:db8::2".parse().unwrap()), 6881, PeerFormat::Compact6),
            ]
        );
        assert_eq!(d.peers[0].peer_id.as_ref(), Some(b"-DE13F0-VnpZRF8ZP9iv"));
    }

    #[test]
    fn dict_model_defects_are_reported() {
        let ev = run(
            Role::Response,
            lim(),
            &[ANN],
            &response("200 OK", "", &dict_model_body()),
        );
        // The port-70000 entry and the integer entry are skipped.
        assert_eq!(anomalies(&ev), vec!["tracker_bad_peer_entry"]);
        let ev = run(Role::Response, lim(), &[SCR], &response("200 OK", "", &scrape_body()));
        assert_eq!(anomalies(&ev), vec!["tracker_bad_scrape_entry"]);
    }

    #[test]
    fn compressed_bodies() {
        let (_, role, limits, expects, data) = fixtures().swap_remove(2);
        let ev = run(role, limits, &expects, &data);
        assert_eq!(anomalies(&ev), vec!["peers_len_not_multiple_of_6"]);
        let r = responses(&ev);
        assert_eq!(r.len(), 3);
        for resp in &r {
            let ResponseBody::Announce(a) = &resp.body else {
                panic!("{:?}", resp.body)
            };
            assert_eq!(a.peers.len(), 2);
            assert_eq!(a.interval, Some(1800));
        }
        // Gzip without Content-Encoding is recognised by its magic.
        let ev = run(
            Role::Response,
            lim(),
            &[ANN],
            &response("200 OK", "", &gzip(&compact_body(&[]))),
        );
        assert!(matches!(responses(&ev)[0].body, ResponseBody::Announce(_)));
    }

    #[test]
    fn until_close_redirect_and_non_tracker_bodies() {
        let f = fixtures();
        let ev = run(f[3].1, f[3].2, &f[3].3, &f[3].4);
        let r = responses(&ev);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].http_minor, 0);
        let ResponseBody::Announce(a) = &r[0].body else {
            panic!()
        };
        assert_eq!(a.failure_reason.as_deref(), Some("unregistered"));
        // Without finish() the close-delimited body never completes.
        let (ev, _) = run_pieces(f[3].1, f[3].2, &f[3].3, &[Some(&f[3].4)], &[], false);
        assert!(responses(&ev).is_empty());

        let ev = run(f[4].1, f[4].2, &f[4].3, &f[4].4);
        assert!(anomalies(&ev).is_empty(), "{:?}", anomalies(&ev));
        let r = responses(&ev);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].status, 307);
        assert_eq!(r[0].location.as_deref(), Some("/announce?x=1"));
        assert_eq!(r[1].status, 404);
        assert_eq!(r[1].body, ResponseBody::Other);
        // A web page answering a non-tracker request is not read.
        let other = Expect {
            kind: RequestKind::Other,
            head: false,
            index: 0,
        };
        let ev = run(Role::Response, lim(), &[other], &response("200 OK", "", b"d1:xi1ee"));
        assert_eq!(responses(&ev)[0].body, ResponseBody::Other);
    }

    #[test]
    fn response_without_request_infers_its_kind() {
        let mut data = response("200 OK", "", &scrape_body());
        data.extend(response("200 OK", "", &compact_body(&[])));
        let ev = run(Role::Response, lim(), &[], &data);
        let r = responses(&ev);
        assert_eq!(r[0].answers, None);
        assert!(matches!(r[0].body, ResponseBody::Scrape(_)));
        assert!(matches!(r[1].body, ResponseBody::Announce(_)));
    }

    fn kinds_of(name: &str) -> (Vec<&'static str>, Vec<HttpEvent>) {
        let (_, role, limits, expects, data) = fixtures().into_iter().find(|f| f.0 == name).unwrap();
        let ev = run(role, limits, &expects, &data);
        (anomalies(&ev), ev)
    }

    #[test]
    fn hostile_requests() {
        let (a, ev) = kinds_of("junk_then_request");
        assert_eq!(
            a,
            vec![
                "http_no_message_start",
                "tracker_bad_info_hash",
                "tracker_bad_peer_id",
                "tracker_bad_value",
                "tracker_bad_value",
                "tracker_bad_percent_encoding"
            ]
        );
        let r = requests(&ev);
        assert_eq!(r.len(), 1);
        let TrackerRequest::Announce(x) = &r[0].tracker else {
            panic!()
        };
        assert_eq!((x.info_hash, x.port, x.left, x.compact), (None, None, Some(-5), None));

        let (a, ev) = kinds_of("head_too_long");
        assert_eq!(a, vec!["http_head_too_long"]);
        assert_eq!(requests(&ev).len(), 1, "resynchronised on the next request");

        let (a, ev) = kinds_of("too_many_headers");
        assert_eq!(a, vec!["http_too_many_headers"]);
        assert_eq!(requests(&ev).len(), 2);
    }

    #[test]
    fn hostile_responses() {
        let cases: [(&str, &[&str], usize); 12] = [
            ("body_too_long", &["http_body_too_long"], 2),
            ("chunked_too_long", &["http_body_too_long"], 2),
            ("bad_chunk_size", &["http_bad_chunk_size"], 1),
            ("chunk_size_overflow", &["http_bad_chunk_size"], 1),
            ("chunk_line_too_long", &["http_chunk_line_too_long"], 1),
            ("bad_chunk_terminator", &["http_bad_chunk_terminator"], 1),
            ("gzip_bomb_small", &["http_decompressed_too_long"], 1),
            (
                "bad_compression",
                &["http_bad_compression", "http_unknown_content_encoding"],
                2,
            ),
            ("peers_not_multiple_of_6", &["peers_len_not_multiple_of_6"], 1),
            (
                "deep_and_bad_bencode",
                &[
                    "bencode_too_deep",
                    "tracker_body_not_bencode",
                    "tracker_body_trailing_bytes",
                ],
                3,
            ),
            ("conflicting_content_length", &["http_bad_content_length"], 1),
            ("truncated_body", &["http_truncated_message"], 1),
        ];
        for (name, want, n_responses) in cases {
            let (a, ev) = kinds_of(name);
            assert_eq!(a, want, "{name}");
            assert_eq!(responses(&ev).len(), n_responses, "{name}");
        }
        // The response after a skipped body keeps its framing and content.
        let (_, ev) = kinds_of("body_too_long");
        let r = responses(&ev);
        assert_eq!(r[0].body, ResponseBody::Unusable);
        assert_eq!(r[0].body_bytes, 5000);
        assert!(matches!(r[1].body, ResponseBody::Announce(_)));
        // Whole compact entries are still used.
        let (_, ev) = kinds_of("peers_not_multiple_of_6");
        let ResponseBody::Announce(a) = &responses(&ev)[0].body else {
            panic!()
        };
        assert_eq!(a.peers.len(), 2);
    }

    #[test]
    fn too_many_peers_and_scrape_hashes() {
        let extra: Vec<u8> = (0..10u8).flat_map(|i| [10, 0, 0, i, 0, 1]).collect();
        let ev = run(
            Role::Response,
            small(),
            &[ANN],
            &response("200 OK", "", &compact_body(&extra)),
        );
        assert_eq!(anomalies(&ev), vec!["tracker_too_many_peers"]);
        let ResponseBody::Announce(a) = &responses(&ev)[0].body else {
            panic!()
        };
        assert_eq!(a.peers.len(), small().max_peers);

        let target = format!("/scrape?{}", format!("info_hash={}&", pct(&IH)).repeat(5));
        let limits = HttpLimits {
            max_scrape_hashes: 3,
            ..lim()
        };
        let ev = run(Role::Request, limits, &[], &get(&target, ""));
        assert_eq!(anomalies(&ev), vec!["tracker_too_many_scrape_hashes"]);
        let TrackerRequest::Scrape(s) = &requests(&ev)[0].tracker else {
            panic!()
        };
        assert_eq!(s.info_hashes.len(), 3);
    }

    #[test]
    fn gzip_bomb_of_10_mb_is_stopped_at_the_limit() {
        let compressed = gzip(&vec![0u8; 10 * 1024 * 1024]);
        assert!(compressed.len() < 64 * 1024, "{}", compressed.len());
        let data = response("200 OK", "Content-Encoding: gzip\r\n", &compressed);
        let ev = run(Role::Response, lim(), &[ANN], &data);
        assert_eq!(anomalies(&ev), vec!["http_decompressed_too_long"]);
        assert_eq!(responses(&ev)[0].body, ResponseBody::Unusable);
        // The same bomb split in two gives the same events.
        let (a, b) = data.split_at(data.len() / 2);
        let (ev2, max) = run_pieces(Role::Response, lim(), &[ANN], &[Some(a), Some(b)], &[], true);
        assert_eq!(ev2, ev);
        assert!(max <= lim().max_head_bytes + lim().max_body_bytes);
    }

    #[test]
    fn bencode_nested_100k_deep_does_not_overflow() {
        let mut body = b"d5:peers".to_vec();
        body.extend(vec![b'l'; 100_000]);
        body.extend(vec![b'e'; 100_000]);
        body.push(b'e');
        let ev = run(Role::Response, lim(), &[ANN], &response("200 OK", "", &body));
        assert_eq!(anomalies(&ev), vec!["bencode_too_deep"]);
        assert_eq!(responses(&ev)[0].body, ResponseBody::Unusable);
    }

    #[test]
    fn oversized_head_and_body_with_default_limits_are_not_buffered() {
        let mut data = get("/announce", &format!("X-Pad: {}\r\n", "a".repeat(100_000)));
        data.extend(get(&announce_target(), ""));
        let pieces: Vec<_> = data.chunks(1460).map(Some).collect();
        let (ev, max) = run_pieces(Role::Request, lim(), &[], &pieces, &[], true);
        assert_eq!(anomalies(&ev), vec!["http_head_too_long"]);
        assert_eq!(requests(&ev).len(), 1);
        assert!(max <= lim().max_head_bytes + 1, "{max}");

        let mut data = response("200 OK", "", &vec![b'z'; 3 * 1024 * 1024]);
        data.extend(response("200 OK", "", &compact_body(&[])));
        let pieces: Vec<_> = data.chunks(1460).map(Some).collect();
        let (ev, max) = run_pieces(Role::Response, lim(), &[ANN, ANN], &pieces, &[], true);
        assert_eq!(anomalies(&ev), vec!["http_body_too_long"]);
        assert_eq!(responses(&ev).len(), 2);
        assert!(
            max <= lim().max_head_bytes + 1,
            "known-length oversize is never kept: {max}"
        );
    }

    #[test]
    fn gaps_keep_or_lose_framing() {
        // A gap inside a Content-Length body: framing kept, body lost.
        let first = response("200 OK", "", &compact_body(&[]));
        let second = response("200 OK", "", &compact_body(&[]));
        let cut = first.len() - 10;
        let pieces = [Some(&first[..cut]), None, Some(&first[cut + 4..]), Some(&second[..])];
        let (ev, _) = run_pieces(Role::Response, lim(), &[ANN, ANN], &pieces, &[4], true);
        assert_eq!(anomalies(&ev), vec!["http_gap_in_body"]);
        let r = responses(&ev);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].body, ResponseBody::Unusable);
        assert_eq!(r[0].body_bytes, compact_body(&[]).len() as u64);
        assert!(matches!(r[1].body, ResponseBody::Announce(_)));

        // A gap in a head: lost, then the next message is found again.
        let req = get(&announce_target(), "");
        let pieces = [Some(&req[..30]), None, Some(&req[40..]), Some(&req[..])];
        let (ev, _) = run_pieces(Role::Request, lim(), &[], &pieces, &[10], true);
        assert_eq!(anomalies(&ev), vec!["http_gap_lost_sync"]);
        assert_eq!(requests(&ev).len(), 1);

        // A capture that starts mid-body: hunting finds the next response.
        let mut data = b"tail of some earlier body\r\n".to_vec();
        data.extend(&second);
        let pieces = [None, Some(&data[..])];
        let (ev, _) = run_pieces(Role::Response, lim(), &[], &pieces, &[1000], true);
        assert_eq!(anomalies(&ev), vec!["http_gap_lost_sync"]);
        assert_eq!(responses(&ev).len(), 1);
    }

    #[test]
    fn session_pairs_requests_and_responses() {
        let mut s = HttpSession::new(small());
        let mut events = Vec::new();
        let mut out = |side: Side, e: HttpEvent| events.push((side, e));
        let scrape = format!("/scrape?info_hash={}", pct(&IH));
        s.feed(Side::Client, &get(&announce_target()[..150], ""), &mut out);
        s.feed(Side::Client, &get(&scrape, ""), &mut out);
        s.feed(Side::Server, &response("200 OK", "", &compact_body(&[])), &mut out);
        s.feed(Side::Server, &response("200 OK", "", &scrape_body()), &mut out);
        s.finish(&mut out);
        let answers: Vec<_> = events
            .iter()
            .filter_map(|(side, e)| match e {
                HttpEvent::Response(r) => Some((
                    *side,
                    r.answers,
                    r.request_index,
                    matches!(r.body, ResponseBody::Scrape(_)),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            answers,
            vec![
                (Side::Server, Some(RequestKind::Announce), Some(0), false),
                (Side::Server, Some(RequestKind::Scrape), Some(1), true)
            ]
        );
        // Too many pipelined requests: the oldest expectation is dropped.
        let mut s = HttpSession::new(small());
        let mut kinds = Vec::new();
        for _ in 0..6 {
            s.feed(Side::Client, &get("/announce", ""), &mut |_, e| {
                if let HttpEvent::Anomaly(a) = e {
                    kinds.push(a.kind())
                }
            });
        }
        assert_eq!(kinds, vec!["http_too_many_pending_requests"; 2]);
    }

    #[test]
    fn recognition_by_content() {
        assert!(looks_like_http_request(
            b"GET /announce?info_hash=x HTTP/1.1\r\nHost: a\r\n"
        ));
        assert!(looks_like_http_request(b"GET /announce?info_hash=xxxxxxxxxxx"));
        assert!(looks_like_http_request(b"HEAD http://t/ HTTP/1.0\n"));
        assert!(!looks_like_http_request(b"GET /x FTP/1.0\r\n"));
        assert!(!looks_like_http_request(b"\x13BitTorrent protocol"));
        assert!(!looks_like_http_request(b"GET"));
        assert!(!looks_like_http_request(b"GETX / HTTP/1.1\r\n"));
        assert!(looks_like_http_response(b"HTTP/1.1 200 OK\r\n"));
        assert!(looks_like_http_response(b"HTTP/1.0 307 Temporary Redirect"));
        assert!(!looks_like_http_response(b"HTTP/2 200\r\n"));
        assert!(!looks_like_http_response(b"HTTP/1.1 2x0 OK"));
        assert!(!looks_like_http_response(b"HTTP/1.1"));
    }

    #[test]
    fn random_mutations_never_panic_and_stay_bounded() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let fx = fixtures();
        for _ in 0..3000 {
            let (_, role, limits, expects, data) = &fx[(next() % fx.len() as u64) as usize];
            let mut d = data.clone();
            for _ in 0..(1 + next() % 6) {
                let at = (next() % (d.len() as u64 + 1)) as usize;
                match next() % 4 {
                    0 if at < d.len() => d[at] = next() as u8,
                    1 => d.truncate(at),
                    2 => d.insert(at, b"\r\n0:;%dle"[(next() % 9) as usize]),
                    _ if at < d.len() => {
                        d.remove(at);
                    }
                    _ => {}
                }
            }
            let cut = (next() % (d.len() as u64 + 1)) as usize;
            let gap = next() % 50;
            let pieces = [Some(&d[..cut]), None, Some(&d[cut..])];
            let (_, max) = run_pieces(*role, *limits, expects, &pieces, &[gap], true);
            let bound = limits.max_head_bytes + 1 + limits.max_body_bytes + limits.max_chunk_line_bytes + 1;
            assert!(max <= bound);
        }
    }
}

#[cfg(test)]
mod corpus_tests {
    use super::super::tracker_udp::test_capture::{corpus_dir, read_frames, tcp_conns, tshark_count, Piece};
    use super::*;

    #[derive(Debug, Default)]
    struct Found {
        announces: Vec<(AnnounceRequest, Option<String>)>,
        responses: Vec<HttpResponse>,
        anomalies: Vec<&'static str>,
    }

    fn run(file: &str) -> Option<Found> {
        let dir = corpus_dir()?;
        let bytes = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let frames = read_frames(&bytes).expect("capture");
        let mut found = Found::default();
        for conn in tcp_conns(&frames) {
            let first_orig = conn.pieces.iter().find_map(|(o, p)| match (o, p) {
                (true, Piece::Data(d)) => Some(d),
                _ => None,
            });
            if !first_orig.is_some_and(|d| looks_like_http_request(d)) {
                continue;
            }
            let mut s = HttpSession::new(HttpLimits::default());
            let mut out = |side: Side, e: HttpEvent| match e {
                HttpEvent::Request(r) => {
                    if let TrackerRequest::Announce(a) = r.tracker {
                        found.announces.push((a, r.user_agent));
                    }
                }
                HttpEvent::Response(r) => {
                    assert_eq!(side, Side::Server);
                    found.responses.push(*r)
                }
                HttpEvent::Anomaly(a) => found.anomalies.push(a.kind()),
            };
            for (from_orig, piece) in &conn.pieces {
                let side = if *from_orig { Side::Client } else { Side::Server };
                match piece {
                    Piece::Data(d) => s.feed(side, d, &mut out),
                    Piece::Gap(n) => s.gap(side, *n, &mut out),
                }
            }
            s.finish(&mut out);
        }
        let expected = tshark_count(&dir, file, "http_announce").expect("count in csv");
        assert_eq!(found.announces.len() as u64, expected, "{file}: announces vs tshark");
        assert!(found.anomalies.is_empty(), "{file}: {:?}", found.anomalies);
        for (a, _) in &found.announces {
            assert!(
                a.info_hash.is_some() && a.peer_id.is_some() && a.port.is_some(),
                "{file}: {a:?}"
            );
        }
        // Every announce is answered, in order.
        let answered: Vec<_> = found
            .responses
            .iter()
            .filter(|r| r.answers == Some(RequestKind::Announce))
            .collect();
        assert_eq!(answered.len(), found.announces.len(), "{file}");
        for r in &answered {
            match r.status {
                200 => {
                    let ResponseBody::Announce(a) = &r.body else {
                        panic!("{file}: {:?}", r.body)
                    };
                    assert!(a.interval.is_some() && a.failure_reason.is_none(), "{file}: {a:?}");
                }
                307 => assert!(r.location.is_some(), "{file}"),
                other => panic!("{file}: status {other}"),
            }
        }
        println!(
            "{file}: {} announces, responses {:?}, peers {:?}",
            found.announces.len(),
            answered.iter().map(|r| r.status).collect::<Vec<_>>(),
            answered
                .iter()
                .map(|r| match &r.body {
                    ResponseBody::Announce(a) => a.peers.len(),
                    _ => 0,
                })
                .collect::<Vec<_>>(),
        );
        Some(found)
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn corpus_zeek_tracker_gzip_response() {
        let Some(f) = run("zeek__zeek/tracker.pcap") else {
            return;
        };
        let (a, ua) = &f.announces[0];
        assert_eq!(hex(&a.info_hash.unwrap()), "e4be9e4db876e3e3179778b03e906297be5c8dbe");
        assert_eq!(a.peer_id.as_ref(), Some(b"-DE13F0-VnpZRF8ZP9iv"));
        assert_eq!((a.port, a.left, a.numwant), (Some(63448), Some(1921843200), Some(200)));
        assert_eq!(a.event, Some(AnnounceEvent::Started));
        assert_eq!(ua.as_deref(), Some("Deluge 1.3.15"));
        let r = &f.responses[0];
        assert_eq!(r.content_encoding.as_deref(), Some("gzip"));
        let ResponseBody::Announce(body) = &r.body else {
            panic!("{:?}", r.body)
        };
        assert!(!body.peers.is_empty());
    }

    #[test]
    fn corpus_ndpi_bt_http_redirect() {
        let Some(f) = run("ntop__nDPI/bt-http.pcapng") else {
            return;
        };
        let (a, _) = &f.announces[0];
        assert_eq!(a.requirecrypto, Some(true));
        assert_eq!(f.responses[0].status, 307);
    }

    #[test]
    fn corpus_ndpi_transmission_http_announce() {
        let Some(f) = run("ntop__nDPI/bittorrent_transmission.pcapng") else {
            return;
        };
        assert_eq!(hex(&f.announces[0].0.info_hash.unwrap())[..8], *"aa3769c4");
    }

    #[test]
    fn corpus_tcoppi_http_announces() {
        let known = [
            "12a35a70a0f917e72cca136efe6fb6508f938256",
            "2a72ac0b7b1e62e0d4f6ac9ec997138e1d636bcd",
            "4aa10386e70174864eaeaa54237d37f93e18458f",
            "a060d2981790dacb715ac99ed7cbd2dfc1df47d8",
        ];
        for file in [
            "codemonkey.pcap",
            "codemonkey2.pcap",
            "codemonkey_and_testtxt.pcap",
            "lookaway.pcap",
            "mippo.pcap",
            "test.txt.pcap",
        ] {
            let Some(f) = run(&format!("tcoppi__BittorrentReconstituter/{file}")) else {
                return;
            };
            for (a, _) in &f.announces {
                assert!(known.contains(&hex(&a.info_hash.unwrap()).as_str()), "{file}");
            }
        }
    }
}
