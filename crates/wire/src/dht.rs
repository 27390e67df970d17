//! Mainline DHT (KRPC over UDP) message parser and query/response pairing.
//!
//! Specs: BEP 5 (KRPC: `t`, `y`, `q`, `a`, `r`, `e`; ping, find_node,
//! get_peers, announce_peer), BEP 32 (IPv6: `nodes6`, `want`), BEP 33 (DHT
//! scrape: `scrape`, `noseed`, `BFsd`, `BFpe`), BEP 42 (security extension:
//! node IDs derived from the IP with CRC32-C, and the top-level `ip` key that
//! tells the requester its external endpoint), BEP 43 (read-only nodes:
//! top-level `ro`), BEP 44 (arbitrary data: get/put with `k`, `sig`, `seq`,
//! `salt`, `v`, `cas`), BEP 51 (sample_infohashes: `samples`, `interval`,
//! `num`). The 4-byte `v` client version follows libtorrent's
//! `dht_extensions` note (two letters for the client, two bytes of version).
//!
//! Invariants:
//! - Pure and borrowed: a [`KrpcMessage`] points into the datagram. No I/O,
//!   and parsing allocates nothing (the anomaly list is a fixed array; node,
//!   peer and sample lists are lazy iterators over the wire bytes).
//! - Never panics on any input. [`parse_krpc`] reads a datagram in one walk
//!   that validates the bencode as [`super::bencode`] does (iterative, depth-
//!   and item-bounded, the same errors) while it takes the fields; every
//!   access is checked. The parser it replaced (validate, then look up,
//!   then walk each level) is kept in [`reference`] for tests and fuzzing.
//! - Only a datagram that is not a bencoded dict with `y` in {q, r, e} is a
//!   [`DhtError`]. Anything else that is wrong (a missing `t`, a `nodes`
//!   string that is not a multiple of 26 bytes, a 7-byte peer in `values`) is
//!   recorded as an [`Anomaly`] on the message, and every other field stays
//!   usable. Anomalies are counted exactly even when more than
//!   [`MAX_ANOMALIES_KEPT`] occur.
//! - Unknown keys are never silently lost: [`KrpcMessage::unknown_keys`]
//!   lists every key outside the tables below, at the top level and in
//!   `a` / `r`.
//! - [`PendingQueries`] is bounded by [`DhtLimits::max_pending`] and ages by
//!   packet time only, so a flood of unique transaction IDs costs a fixed
//!   amount of memory and offline runs are reproducible.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::bencode::{self, BencodeError, BencodeLimits, Dict, List, Value};

/// The parser before the single walk, kept as the oracle for tests and
/// fuzzing (see the module's doc).
#[cfg(any(test, fuzzing))]
#[path = "dht_reference.rs"]
pub mod reference;

/// Bytes per compact IPv4 node: 20-byte node ID, 4-byte IP, 2-byte port (BEP 5).
pub const NODE4_LEN: usize = 26;
/// Bytes per compact IPv6 node: 20-byte node ID, 16-byte IP, 2-byte port (BEP 32).
pub const NODE6_LEN: usize = 38;
/// Compact IPv4 peer: 4-byte IP, 2-byte port (BEP 5).
pub const PEER4_LEN: usize = 6;
/// Compact IPv6 peer: 16-byte IP, 2-byte port (BEP 32).
pub const PEER6_LEN: usize = 18;
/// Node IDs, info-hashes, targets and BEP 51 samples are SHA-1 sized.
pub const ID_LEN: usize = 20;
/// BEP 33 bloom filters are exactly 2048 bits.
pub const BLOOM_LEN: usize = 256;
/// BEP 44: ed25519 public key size.
pub const BEP44_KEY_LEN: usize = 32;
/// BEP 44: ed25519 signature size.
pub const BEP44_SIG_LEN: usize = 64;
/// BEP 44: "the salt ... must not be longer than 64 bytes".
pub const BEP44_MAX_SALT_LEN: usize = 64;
/// BEP 44: the bencoded `v` "must be less than 1000 bytes".
pub const BEP44_MAX_V_LEN: usize = 1000;
/// How many anomalies a message keeps in detail. Real messages have zero or
/// one; a hostile one may have many, and [`KrpcMessage::n_anomalies`] still
/// counts them all, so nothing is hidden from the totals.
pub const MAX_ANOMALIES_KEPT: usize = 8;
/// Longest transaction ID [`PendingQueries`] stores inline. BEP 5 calls the
/// ID "a short string"; libtorrent sends 2 bytes, uTorrent 4 and the longest
/// seen in the corpus is 8. A longer one is not tracked (and is counted) so
/// that an attacker cannot make each entry large.
pub const MAX_TID_LEN: usize = 16;

/// Bounds for parsing and pairing KRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhtLimits {
    /// Datagrams longer than this are rejected before parsing
    /// ([`DhtError::TooLarge`]). Real KRPC fits one unfragmented datagram
    /// (libtorrent and uTorrent stay under 1.5 KB; BEP 44 caps `v` at 1000
    /// bytes), so 16 KiB leaves a wide margin while bounding the work per
    /// datagram.
    pub max_datagram_bytes: usize,
    /// Bencode bounds for one datagram. KRPC nests 3 levels (message, `a`/`r`,
    /// `values`/`want`); BEP 44 `v` may nest further, so depth 32. A 16 KiB
    /// datagram cannot hold more than 8192 elements (each takes 2 bytes).
    pub bencode: BencodeLimits,
    /// Outstanding queries kept for pairing by one [`PendingQueries`]. The
    /// analyzer keeps one table per flow shard and treats
    /// `Limits::dht.max_pending` as the bound for the whole run, split evenly
    /// over the shards. About 100 bytes each; a busy DHT node sees a few
    /// thousand queries per minute.
    pub max_pending: usize,
    /// A query unanswered this long (packet time) is dropped from the pairing
    /// table. libtorrent gives up on a query after about 15 s; 30 s still
    /// pairs late answers.
    pub query_timeout_us: u64,
}

impl Default for DhtLimits {
    fn default() -> Self {
        DhtLimits {
            max_datagram_bytes: 16 * 1024,
            bencode: BencodeLimits {
                max_depth: 32,
                max_items: 8192,
            },
            max_pending: 65_536,
            query_timeout_us: 30_000_000,
        }
    }
}

/// Why a datagram is not a KRPC message at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhtError {
    /// Longer than [`DhtLimits::max_datagram_bytes`].
    TooLarge,
    /// Not one valid bencoded dict (includes [`BencodeError::NotADict`]).
    Bencode(BencodeError),
    /// A dict without a byte-string `y`.
    MissingType,
    /// `y` is not `q`, `r` or `e`.
    UnknownType,
}

impl DhtError {
    /// Stable snake_case name for the `anomalies` table.
    pub fn kind(&self) -> &'static str {
        match self {
            DhtError::TooLarge => "dht_too_large",
            DhtError::Bencode(e) => e.kind(),
            DhtError::MissingType => "dht_missing_y",
            DhtError::UnknownType => "dht_unknown_y",
        }
    }
}

impl std::fmt::Display for DhtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DhtError::Bencode(e) => write!(f, "{e}"),
            _ => f.write_str(self.kind()),
        }
    }
}

impl std::error::Error for DhtError {}

/// `y`: what the message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KrpcKind {
    Query,
    Response,
    Error,
}

impl KrpcKind {
    /// Value of the `kind` column in `dht_messages`.
    pub fn as_str(&self) -> &'static str {
        match self {
            KrpcKind::Query => "query",
            KrpcKind::Response => "response",
            KrpcKind::Error => "error",
        }
    }
}

/// `q`: the query method. The wire name is always kept in
/// [`KrpcMessage::method_name`], so `Other` loses nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Ping,
    FindNode,
    GetPeers,
    AnnouncePeer,
    /// BEP 44
    Get,
    /// BEP 44
    Put,
    /// BEP 51
    SampleInfohashes,
    Other,
}

impl Method {
    pub fn from_name(name: &[u8]) -> Method {
        match name {
            b"ping" => Method::Ping,
            b"find_node" => Method::FindNode,
            b"get_peers" => Method::GetPeers,
            b"announce_peer" => Method::AnnouncePeer,
            b"get" => Method::Get,
            b"put" => Method::Put,
            b"sample_infohashes" => Method::SampleInfohashes,
            _ => Method::Other,
        }
    }

    /// Value of the `method` column; `"other"` for an unknown method.
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Ping => "ping",
            Method::FindNode => "find_node",
            Method::GetPeers => "get_peers",
            Method::AnnouncePeer => "announce_peer",
            Method::Get => "get",
            Method::Put => "put",
            Method::SampleInfohashes => "sample_infohashes",
            Method::Other => "other",
        }
    }
}

/// What is wrong with one field of an otherwise usable message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnomalyKind {
    /// A key the message kind requires is absent (`t`, `id`, `q`, `a`, `r`, `e`).
    Missing,
    /// A known key holds the wrong bencode type (say, `port` as a string).
    WrongType,
    /// A fixed-size or packed field has the wrong length (`id` of 19 bytes,
    /// `nodes` not a multiple of 26, `samples` not a multiple of 20, ...).
    BadLength,
    /// An integer outside its range (`port` above 65535).
    OutOfRange,
    /// An element of a list is malformed (a `values` entry that is not a 6-
    /// or 18-byte string); the iterator skips it.
    BadEntry,
    /// A known key appears twice in one dict; the first one is used.
    DuplicateKey,
    /// Bytes after the message's closing `e`.
    TrailingBytes,
}

impl AnomalyKind {
    /// Value of the `kind` column in `anomalies`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AnomalyKind::Missing => "dht_missing_field",
            AnomalyKind::WrongType => "dht_wrong_type",
            AnomalyKind::BadLength => "dht_bad_length",
            AnomalyKind::OutOfRange => "dht_out_of_range",
            AnomalyKind::BadEntry => "dht_bad_entry",
            AnomalyKind::DuplicateKey => "dht_duplicate_key",
            AnomalyKind::TrailingBytes => "dht_trailing_bytes",
        }
    }
}

/// One recorded anomaly: what, and on which key (`field` is the wire key,
/// e.g. `"nodes"`; empty for [`AnomalyKind::TrailingBytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub field: &'static str,
}

/// Where an unknown key was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyScope {
    /// The message dict itself.
    Top,
    /// The query arguments `a`.
    Args,
    /// The response values `r`.
    Reply,
}

impl KeyScope {
    /// The wire name of the scope: `""`, `"a"` or `"r"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyScope::Top => "",
            KeyScope::Args => "a",
            KeyScope::Reply => "r",
        }
    }
}

/// Packed compact IPv4 nodes (`nodes`, BEP 5): 26 bytes each.
#[derive(Debug, Clone, Copy)]
pub struct CompactNodes4<'a> {
    raw: &'a [u8],
}

impl<'a> CompactNodes4<'a> {
    /// Entries as sent (26 bytes each; a trailing partial entry is
    /// skipped), e.g. [`Self::raw`] kept beyond the datagram.
    pub fn new(raw: &'a [u8]) -> Self {
        CompactNodes4 { raw }
    }
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    /// Whole entries (a trailing partial entry is not counted).
    pub fn len(&self) -> usize {
        self.raw.len() / NODE4_LEN
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8; ID_LEN], SocketAddrV4)> + 'a {
        self.raw.chunks_exact(NODE4_LEN).filter_map(|c| {
            let (id, addr) = c.split_at(ID_LEN);
            Some((id.try_into().ok()?, compact_v4(addr)?))
        })
    }
}

/// Packed compact IPv6 nodes (`nodes6`, BEP 32): 38 bytes each.
#[derive(Debug, Clone, Copy)]
pub struct CompactNodes6<'a> {
    raw: &'a [u8],
}

impl<'a> CompactNodes6<'a> {
    /// Entries as sent (38 bytes each; a trailing partial entry is
    /// skipped), e.g. [`Self::raw`] kept beyond the datagram.
    pub fn new(raw: &'a [u8]) -> Self {
        CompactNodes6 { raw }
    }
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    pub fn len(&self) -> usize {
        self.raw.len() / NODE6_LEN
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8; ID_LEN], SocketAddrV6)> + 'a {
        self.raw.chunks_exact(NODE6_LEN).filter_map(|c| {
            let (id, addr) = c.split_at(ID_LEN);
            Some((id.try_into().ok()?, compact_v6(addr)?))
        })
    }
}

/// `values`: a list of compact peers, 6 bytes (IPv4) or 18 bytes (IPv6) each.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    list: List<'a>,
    n_valid: usize,
}

impl<'a> Values<'a> {
    pub fn raw(&self) -> &'a [u8] {
        self.list.raw()
    }
    /// Well-formed peers (malformed entries are anomalies and are skipped).
    pub fn len(&self) -> usize {
        self.n_valid
    }
    pub fn is_empty(&self) -> bool {
        self.n_valid == 0
    }
    pub fn iter(&self) -> impl Iterator<Item = SocketAddr> + 'a {
        self.list.iter().filter_map(|v| v.as_bytes().and_then(compact_peer))
    }
}

/// BEP 51 `samples`: packed 20-byte info-hashes.
#[derive(Debug, Clone, Copy)]
pub struct Samples<'a> {
    raw: &'a [u8],
}

impl<'a> Samples<'a> {
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    pub fn len(&self) -> usize {
        self.raw.len() / ID_LEN
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8; ID_LEN]> + 'a {
        self.raw.chunks_exact(ID_LEN).filter_map(|c| c.try_into().ok())
    }
}

/// BEP 32 `want`: which address families the querier wants nodes for.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    /// `"n4"` was listed.
    pub n4: bool,
    /// `"n6"` was listed.
    pub n6: bool,
    /// The whole list, for entries other than n4/n6.
    pub list: List<'a>,
}

/// One KRPC message, borrowing from its datagram.
///
/// Fields from `a` (queries) and `r` (responses) share one set of names,
/// since they mean the same thing in both (`id`, `token`, `nodes`, ...).
#[derive(Debug, Clone, Copy)]
pub struct KrpcMessage<'a> {
    /// The whole message dict.
    pub dict: Dict<'a>,
    /// `a` for a query, `r` for a response; `None` for errors or when absent.
    pub body: Option<Dict<'a>>,
    /// `t`, the transaction ID (empty when missing, with an anomaly).
    pub tid: &'a [u8],
    pub kind: KrpcKind,
    /// Queries only: the method decoded from `q`.
    pub method: Option<Method>,
    /// Queries only: `q` as sent.
    pub method_name: Option<&'a [u8]>,
    /// Top-level `v`: client and version (see [`client_from_version`]).
    pub version: Option<&'a [u8]>,
    /// BEP 43: top-level `ro` = 1, the sender is a read-only node.
    pub read_only: bool,
    /// BEP 42: top-level `ip` in a response, the requester's endpoint as the
    /// responder saw it.
    pub ip: Option<SocketAddr>,
    /// `a.id` / `r.id`: the sender's node ID.
    pub id: Option<&'a [u8; ID_LEN]>,
    /// find_node, BEP 44 get, BEP 51 sample_infohashes.
    pub target: Option<&'a [u8; ID_LEN]>,
    /// get_peers, announce_peer.
    pub info_hash: Option<&'a [u8; ID_LEN]>,
    pub token: Option<&'a [u8]>,
    /// announce_peer `port` (out-of-range values are anomalies, not kept).
    pub port: Option<u16>,
    /// announce_peer `implied_port`: use the UDP source port instead.
    pub implied_port: Option<bool>,
    /// announce_peer `seed` (libtorrent, for BEP 33 scrapes).
    pub seed: Option<bool>,
    /// `n` or `name` in get_peers / announce_peer: the torrent's name, which
    /// libtorrent sends along.
    pub name: Option<&'a [u8]>,
    pub nodes: Option<CompactNodes4<'a>>,
    pub nodes6: Option<CompactNodes6<'a>>,
    pub values: Option<Values<'a>>,
    /// BEP 32
    pub want: Option<Want<'a>>,
    /// BEP 33 query flag: return bloom filters.
    pub scrape: Option<bool>,
    /// BEP 33 query flag: leave seeds out of `values`.
    pub noseed: Option<bool>,
    /// BEP 33 `BFsd`: bloom filter of seeds (256 bytes).
    pub bf_seeds: Option<&'a [u8]>,
    /// BEP 33 `BFpe`: bloom filter of downloaders (256 bytes).
    pub bf_peers: Option<&'a [u8]>,
    /// BEP 44 `k`: ed25519 public key (32 bytes).
    pub key: Option<&'a [u8]>,
    /// BEP 44 `sig` (64 bytes).
    pub sig: Option<&'a [u8]>,
    /// BEP 44 `seq`.
    pub seq: Option<i64>,
    /// BEP 44 `salt` (at most 64 bytes).
    pub salt: Option<&'a [u8]>,
    /// BEP 44 `cas`.
    pub cas: Option<i64>,
    /// BEP 44 `v` in `a`/`r`: the stored item, exact bencoded bytes (any type).
    pub item: Option<&'a [u8]>,
    /// BEP 51 `samples`.
    pub samples: Option<Samples<'a>>,
    /// BEP 51 `interval` (seconds).
    pub interval: Option<i64>,
    /// BEP 51 `num`: how many info-hashes the node stores.
    pub num: Option<i64>,
    /// Errors: `e[0]`.
    pub error_code: Option<i64>,
    /// Errors: `e[1]`.
    pub error_msg: Option<&'a [u8]>,
    notes: Notes,
    /// Keys outside the known tables (top level and body).
    n_unknown: u32,
    /// The first unknown keys, as the walk met them (see
    /// [`KrpcMessage::unknown_keys`]).
    unknown: UnknownKept<'a>,
}

/// Unknown keys a message lists without another walk: real messages have
/// none or one (`r.p` on a third of dht-125k's responses, where walking the
/// message again to list it cost ~4 k instructions).
const UNKNOWN_KEPT: usize = 4;

/// The first [`UNKNOWN_KEPT`] unknown keys the walk met, in its order (a
/// body's keys where the body sits among the top-level keys).
#[derive(Clone, Copy)]
struct UnknownKept<'a> {
    keys: [(KeyScope, &'a [u8]); UNKNOWN_KEPT],
    n: u8,
}

impl Default for UnknownKept<'_> {
    fn default() -> Self {
        UnknownKept {
            keys: [(KeyScope::Top, &[]); UNKNOWN_KEPT],
            n: 0,
        }
    }
}

/// What [`KrpcMessage::unknown_keys`] lists is compared instead (the old
/// parser keeps none: it walks).
impl std::fmt::Debug for UnknownKept<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnknownKept")
    }
}

impl<'a> KrpcMessage<'a> {
    /// A message of `kind` with nothing read yet.
    fn empty(dict: Dict<'a>, kind: KrpcKind) -> Self {
        KrpcMessage {
            dict,
            body: None,
            tid: &[],
            kind,
            method: None,
            method_name: None,
            version: None,
            read_only: false,
            ip: None,
            id: None,
            target: None,
            info_hash: None,
            token: None,
            port: None,
            implied_port: None,
            seed: None,
            name: None,
            nodes: None,
            nodes6: None,
            values: None,
            want: None,
            scrape: None,
            noseed: None,
            bf_seeds: None,
            bf_peers: None,
            key: None,
            sig: None,
            seq: None,
            salt: None,
            cas: None,
            item: None,
            samples: None,
            interval: None,
            num: None,
            error_code: None,
            error_msg: None,
            notes: Notes::default(),
            n_unknown: 0,
            unknown: UnknownKept::default(),
        }
    }

    /// Counts an unknown key found by the walk, kept while there is room.
    fn add_unknown(&mut self, scope: KeyScope, key: &'a [u8]) {
        if let Some(slot) = self.unknown.keys.get_mut(usize::from(self.unknown.n)) {
            *slot = (scope, key);
            self.unknown.n += 1;
        }
        self.n_unknown = self.n_unknown.saturating_add(1);
    }

    /// Anomalies in the order found (at most [`MAX_ANOMALIES_KEPT`]).
    pub fn anomalies(&self) -> &[Anomaly] {
        self.notes.kept()
    }

    /// Every anomaly found, including those beyond [`MAX_ANOMALIES_KEPT`].
    pub fn n_anomalies(&self) -> u32 {
        self.notes.n
    }

    /// How many keys [`KrpcMessage::unknown_keys`] lists (counted by the
    /// parse, so a message without any costs no walk).
    pub fn n_unknown_keys(&self) -> usize {
        self.n_unknown as usize
    }

    /// Keys outside the known tables, with where they were found: the
    /// top-level ones, then those of `a` / `r`, each in dict order. The
    /// ones the parse kept (all of them, for up to [`UNKNOWN_KEPT`]), else
    /// lazily, walking the dicts again.
    pub fn unknown_keys(&self) -> impl Iterator<Item = (KeyScope, &'a [u8])> + 'a {
        let kept_all = u32::from(self.unknown.n) == self.n_unknown;
        let kept = self.unknown.keys;
        let n_kept = if kept_all { usize::from(self.unknown.n) } else { 0 };
        let kept_top = kept.into_iter().take(n_kept).filter(|(s, _)| *s == KeyScope::Top);
        let kept_body = kept.into_iter().take(n_kept).filter(|(s, _)| *s != KeyScope::Top);
        let any = self.n_unknown > 0 && !kept_all;
        // Without unknown keys, an empty dict: nothing is walked.
        let dict = if any { self.dict } else { Dict::validated(b"de") };
        let top = dict
            .iter()
            .filter(|(k, _)| TopKey::lookup(k).is_none())
            .map(|(k, _)| (KeyScope::Top, k));
        let scope = match self.kind {
            KrpcKind::Query => KeyScope::Args,
            _ => KeyScope::Reply,
        };
        let body = self
            .body
            .filter(|_| any)
            .into_iter()
            .flat_map(|d| d.iter())
            .filter(move |(k, _)| BodyKey::lookup(k, scope).is_none())
            .map(move |(k, _)| (scope, k));
        kept_top.chain(kept_body).chain(top).chain(body)
    }

    /// Every unknown key, as [`KrpcMessage::unknown_keys`] lists them,
    /// when the parse kept them all (up to [`UNKNOWN_KEPT`]: real
    /// messages), in walk order: the top-level ones (scope `Top`) before
    /// the body's when taken scope by scope. `None` when some were not
    /// kept (then walk with `unknown_keys`).
    pub fn kept_unknown_keys(&self) -> Option<&[(KeyScope, &'a [u8])]> {
        if u32::from(self.unknown.n) != self.n_unknown {
            return None;
        }
        self.unknown.keys.get(..usize::from(self.unknown.n))
    }

    /// Number of whole compact IPv4 nodes (`n_nodes` column; 0 when absent).
    pub fn n_nodes(&self) -> usize {
        self.nodes.map_or(0, |n| n.len())
    }

    /// Number of well-formed peers in `values` (`n_values` column).
    pub fn n_values(&self) -> usize {
        self.values.map_or(0, |v| v.len())
    }

    /// [`client_from_version`] of `v`.
    pub fn client(&self) -> Option<String> {
        self.version.and_then(client_from_version)
    }
}

/// Cheap pre-check for classifying a UDP datagram on a socket shared with
/// uTP and UDP trackers: true when it could be KRPC.
///
/// Why these tests suffice to separate the three: uTP's first byte is
/// `type << 4 | 1` (0x01..=0x41), a UDP tracker packet starts with a
/// big-endian action or the 0x0000041727101980 magic (first byte 0x00);
/// KRPC is a bencoded dict, so `d`, then the first key's length digit, and it
/// ends with `e`. Every KRPC message carries `1:y1:` (the `y` key), which
/// rules out other bencoded payloads cheaply. A `true` is confirmed by
/// [`parse_krpc`].
pub fn looks_like_krpc(d: &[u8]) -> bool {
    // Shortest possible: "d1:y1:ee" plus nothing else would be 8 bytes.
    const MIN_LEN: usize = 8;
    d.len() >= MIN_LEN
        && d.first() == Some(&b'd')
        && d.last() == Some(&b'e')
        && d.get(1).is_some_and(u8::is_ascii_digit)
        // From the end: `y` is the last key of a message with sorted keys.
        && memchr::memmem::rfind(d, b"1:y1:").is_some()
}

/// Parses one KRPC datagram (BEP 5 and the extensions in the module doc).
///
/// One walk over the datagram: the bencode is validated exactly as
/// [`bencode::parse_dict`] validates it (the same checks in the same byte
/// order, so the same error and offset for a bad datagram, the same depth
/// and item bounds), and every field is taken as its bytes go by: the top
/// level, the query arguments or response values (`a` / `r`) and the
/// entries of `values`. Only containers the message does not read
/// (BEP 44 `v`, unknown keys' values, a second `a`) are validated without
/// being looked into. Nothing is allocated.
///
/// What `y` says decides which of `a` and `r` is the body, and `y` comes
/// last in a message with sorted keys: the walk assumes the kind the
/// datagram's last bytes name (`1:y1:qe`, ...), and walks once more with
/// the kind it found when that was wrong (only for a message whose keys
/// are not in order).
pub fn parse_krpc<'a>(d: &'a [u8], limits: &DhtLimits) -> Result<KrpcMessage<'a>, DhtError> {
    parse_krpc_with(d, limits, |m| *m)
}

/// [`parse_krpc`], handing the message to `f` where the walk built it
/// rather than returning it: a message is about 760 bytes, and its moves
/// out of the parse and into the caller cost ~200 instructions a datagram
/// (session 12, dht-125k).
#[inline]
pub fn parse_krpc_with<'a, R>(
    d: &'a [u8],
    limits: &DhtLimits,
    f: impl FnOnce(&KrpcMessage<'a>) -> R,
) -> Result<R, DhtError> {
    if d.len() > limits.max_datagram_bytes {
        return Err(DhtError::TooLarge);
    }
    match d.first() {
        None => return Err(DhtError::Bencode(BencodeError::Truncated)),
        Some(b'd') => {}
        Some(_) => return Err(DhtError::Bencode(BencodeError::NotADict)),
    }
    let guess = match d.len().checked_sub(7).and_then(|i| d.get(i..)) {
        Some(b"1:y1:qe") => KrpcKind::Query,
        Some(b"1:y1:ee") => KrpcKind::Error,
        _ => KrpcKind::Response,
    };
    let mut w = Walked::new(d, guess);
    Walk::new(d, limits).message(guess, &mut w).map_err(DhtError::Bencode)?;
    let kind = match w.y {
        Some(Value::Bytes(b"q")) => KrpcKind::Query,
        Some(Value::Bytes(b"r")) => KrpcKind::Response,
        Some(Value::Bytes(b"e")) => KrpcKind::Error,
        Some(Value::Bytes(_)) => return Err(DhtError::UnknownType),
        _ => return Err(DhtError::MissingType),
    };
    if kind != guess {
        // The datagram validated once already: this walk cannot fail.
        w = Walked::new(d, kind);
        Walk::new(d, limits).message(kind, &mut w).map_err(DhtError::Bencode)?;
    }
    w.finish();
    Ok(f(&w.m))
}

/// A message as one walk found it, before the checks that need the whole
/// of it (see [`Walked::finish`]).
struct Walked<'a> {
    m: KrpcMessage<'a>,
    /// The first `y`, whatever its type.
    y: Option<Value<'a>>,
    /// Bytes the message dict takes (the datagram's length unless
    /// something trails it).
    used: usize,
    len: usize,
    have_tid: bool,
    top: Notes,
    body: Notes,
}

impl<'a> Walked<'a> {
    fn new(buf: &'a [u8], kind: KrpcKind) -> Self {
        Walked {
            m: KrpcMessage::empty(Dict::validated(buf), kind),
            y: None,
            used: 0,
            len: buf.len(),
            have_tid: false,
            top: Notes::default(),
            body: Notes::default(),
        }
    }

    /// The anomalies in the order of the walks the message used to take:
    /// trailing bytes, the top level, what it lacks, then the body.
    fn finish(&mut self) {
        let Walked {
            m,
            used,
            len,
            have_tid,
            top,
            body,
            ..
        } = self;
        if used != len {
            m.notes.note(AnomalyKind::TrailingBytes, "");
        }
        m.notes.append(top);
        if !*have_tid && !m.has_anomaly_on("t") {
            m.notes.note(AnomalyKind::Missing, "t");
        }
        if m.kind == KrpcKind::Error && m.error_code.is_none() && !m.has_anomaly_on("e") {
            m.notes.note(AnomalyKind::Missing, "e");
        }
        match m.kind {
            KrpcKind::Query => {
                if m.method_name.is_none() {
                    m.notes.note(AnomalyKind::Missing, "q");
                }
                if m.body.is_none() && !m.has_anomaly_on("a") {
                    m.notes.note(AnomalyKind::Missing, "a");
                }
            }
            KrpcKind::Response => {
                if m.body.is_none() && !m.has_anomaly_on("r") {
                    m.notes.note(AnomalyKind::Missing, "r");
                }
            }
            KrpcKind::Error => {}
        }
        if m.body.is_some() {
            m.notes.append(body);
            if m.id.is_none() && !m.has_anomaly_on("id") {
                m.notes.note(AnomalyKind::Missing, "id");
            }
        }
    }
}

/// The single walk: the bencode validator's steps (`bencode::validate`),
/// written out for the levels a KRPC message has.
struct Walk<'a> {
    buf: &'a [u8],
    limits: BencodeLimits,
    max_depth: u32,
    /// Elements so far, as the validator counts them.
    items: u32,
}

impl<'a> Walk<'a> {
    fn new(buf: &'a [u8], limits: &DhtLimits) -> Self {
        Walk {
            buf,
            limits: limits.bencode,
            max_depth: limits.bencode.max_depth.min(bencode::MAX_DEPTH_CEILING),
            items: 0,
        }
    }

    fn byte(&self, pos: usize) -> Result<u8, BencodeError> {
        self.buf.get(pos).copied().ok_or(BencodeError::Truncated)
    }

    /// One more element (the validator counts each one as it starts).
    fn count(&mut self) -> Result<(), BencodeError> {
        self.items = self.items.checked_add(1).ok_or(BencodeError::TooManyItems)?;
        if self.items > self.limits.max_items {
            return Err(BencodeError::TooManyItems);
        }
        Ok(())
    }

    /// Opens a container at `pos` with `open` containers around it.
    fn open(&mut self, open: u32) -> Result<(), BencodeError> {
        self.count()?;
        if open >= self.max_depth {
            return Err(BencodeError::TooDeep);
        }
        Ok(())
    }

    /// The key at `pos` of an open dict, with the offset past it; `None`
    /// at the dict's closing `e`. Inlined: out of line, its result (five
    /// words through memory) cost ~48 instructions a key (dht-125k: 1.16 M
    /// keys).
    #[inline(always)]
    fn key(&mut self, pos: usize) -> Result<Option<(&'a [u8], usize)>, BencodeError> {
        let b = self.byte(pos)?;
        if b == b'e' {
            return Ok(None);
        }
        if !b.is_ascii_digit() {
            return Err(BencodeError::UnexpectedByte { at: pos });
        }
        self.count()?;
        scan_str(self.buf, pos).map(Some)
    }

    /// The value at `pos` of a dict entry, inside `open` containers: a
    /// scalar, or a container validated whole.
    fn value(&mut self, pos: usize, open: u32) -> Result<(Value<'a>, usize), BencodeError> {
        let b = self.byte(pos)?;
        match b {
            // A key without a value.
            b'e' => Err(BencodeError::UnexpectedByte { at: pos }),
            b'l' | b'd' => {
                let end = bencode::validate_nested(self.buf, pos, open, &mut self.items, &self.limits)?;
                let raw = self.buf.get(pos..end).ok_or(BencodeError::Truncated)?;
                let v = if b == b'l' {
                    Value::List(List::validated(raw))
                } else {
                    Value::Dict(Dict::validated(raw))
                };
                Ok((v, end))
            }
            _ => {
                self.count()?;
                match b {
                    b'i' => bencode::scan_int(self.buf, pos).map(|(n, end)| (Value::Int(n), end)),
                    b'0'..=b'9' => scan_str(self.buf, pos).map(|(s, end)| (Value::Bytes(s), end)),
                    _ => Err(BencodeError::UnexpectedByte { at: pos }),
                }
            }
        }
    }

    /// [`Walk::value`], with a byte string (most values: `t`, `v`, ids,
    /// tokens, `nodes`) read here rather than through the call: the same
    /// count and scan `value` makes for one (dht-125k: ~780 k values, ~56
    /// instructions a call around the scan).
    #[inline(always)]
    fn value_or_str(&mut self, pos: usize, open: u32) -> Result<(Value<'a>, usize), BencodeError> {
        if self.buf.get(pos).is_some_and(u8::is_ascii_digit) {
            self.count()?;
            return scan_str(self.buf, pos).map(|(s, end)| (Value::Bytes(s), end));
        }
        self.value(pos, open)
    }

    /// The message dict, walked as a message of `kind`.
    /// `w`, fresh from [`Walked::new`] with the same kind, is filled in
    /// place (a message is about a kilobyte: moving it through the walk's
    /// results cost more than a walk of its keys).
    fn message(mut self, kind: KrpcKind, w: &mut Walked<'a>) -> Result<(), BencodeError> {
        let buf = self.buf;
        let Walked {
            m,
            y,
            have_tid,
            top,
            body: body_notes,
            ..
        } = w;
        let (wanted, scope) = match kind {
            KrpcKind::Query => (Some(TopKey::A), KeyScope::Args),
            KrpcKind::Response => (Some(TopKey::R), KeyScope::Reply),
            KrpcKind::Error => (None, KeyScope::Reply),
        };
        let mut seen = Seen::default();
        self.open(0)?;
        let mut pos = 1;
        while let Some((key, start)) = self.key(pos)? {
            let known = TopKey::lookup(key);
            let body =
                matches!(known, Some((_, k)) if Some(k) == wanted && !seen.has(k as u32)) && self.byte(start)? == b'd';
            let (val, end) = if body {
                let end = self.body(start, scope, m, body_notes)?;
                let raw = buf.get(start..end).ok_or(BencodeError::Truncated)?;
                (Value::Dict(Dict::validated(raw)), end)
            } else {
                self.value_or_str(start, 1)?
            };
            pos = end;
            if key == b"y" && y.is_none() {
                *y = Some(val);
            }
            match known {
                Some((name, k)) => top_entry(m, top, &mut seen, have_tid, name, k, val),
                None => m.add_unknown(KeyScope::Top, key),
            }
        }
        // Past the closing `e`.
        let used = pos + 1;
        m.dict = Dict::validated(buf.get(..used).ok_or(BencodeError::Truncated)?);
        w.used = used;
        Ok(())
    }

    /// The body dict (`a` or `r`) at `pos`, inside the message: its fields
    /// go to `m`, its anomalies to `notes`. Returns the offset past it.
    fn body(
        &mut self,
        pos: usize,
        scope: KeyScope,
        m: &mut KrpcMessage<'a>,
        notes: &mut Notes,
    ) -> Result<usize, BencodeError> {
        let buf = self.buf;
        self.open(1)?;
        let mut seen = Seen::default();
        let mut pos = pos + 1;
        while let Some((key, start)) = self.key(pos)? {
            let known = BodyKey::lookup(key, scope);
            let (val, end, counts) = if matches!(known, Some((_, BodyKey::Values))) && self.byte(start)? == b'l' {
                let (end, counts) = self.values(start)?;
                let raw = buf.get(start..end).ok_or(BencodeError::Truncated)?;
                (Value::List(List::validated(raw)), end, Some(counts))
            } else {
                let (v, end) = self.value_or_str(start, 2)?;
                (v, end, None)
            };
            pos = end;
            match known {
                Some((name, k)) => {
                    let raw = buf.get(start..end).ok_or(BencodeError::Truncated)?;
                    body_entry(m, notes, &mut seen, name, k, val, raw, counts);
                }
                None => m.add_unknown(scope, key),
            }
        }
        Ok(pos + 1)
    }

    /// A `values` list at `pos` inside the body: the offset past it and
    /// how many of its entries are compact peers and how many are not.
    fn values(&mut self, pos: usize) -> Result<(usize, (usize, usize)), BencodeError> {
        self.open(2)?;
        let (mut valid, mut bad) = (0, 0);
        let mut pos = pos + 1;
        loop {
            let b = self.byte(pos)?;
            match b {
                b'e' => return Ok((pos + 1, (valid, bad))),
                b'l' | b'd' => {
                    pos = bencode::validate_nested(self.buf, pos, 3, &mut self.items, &self.limits)?;
                    bad += 1;
                }
                _ => {
                    self.count()?;
                    match b {
                        b'i' => {
                            pos = bencode::scan_int(self.buf, pos)?.1;
                            bad += 1;
                        }
                        b'0'..=b'9' => {
                            let (s, end) = scan_str(self.buf, pos)?;
                            pos = end;
                            if compact_peer(s).is_some() {
                                valid += 1;
                            } else {
                                bad += 1;
                            }
                        }
                        _ => return Err(BencodeError::UnexpectedByte { at: pos }),
                    }
                }
            }
        }
    }
}

/// [`bencode::scan_bytes`] for the byte string at `pos`, whose first byte
/// is a digit, with the lengths KRPC sends (one or two digits: keys, ids,
/// tokens, `nodes` up to 99 bytes) read without the general loop's
/// overflow checks; anything else (three or more digits, a truncated
/// datagram) goes through `scan_bytes`. The same result and the same error
/// for every input: for one or two digits then `:` the loop computes the
/// same length and checks the same range (dht-125k: ~1.5 M strings, keys
/// and values, at ~46 instructions each through the loop).
#[inline(always)]
fn scan_str(buf: &[u8], pos: usize) -> Result<(&[u8], usize), BencodeError> {
    if let Some(&[d0, b1, b2]) = buf.get(pos..pos.wrapping_add(3)) {
        let d0 = usize::from(d0.wrapping_sub(b'0'));
        let (len, start) = if b1 == b':' {
            (d0, pos + 2)
        } else if b1.is_ascii_digit() && b2 == b':' {
            (d0 * 10 + usize::from(b1 - b'0'), pos + 3)
        } else {
            return bencode::scan_bytes(buf, pos);
        };
        if d0 < 10 {
            let end = start + len;
            return match buf.get(start..end) {
                Some(s) => Ok((s, end)),
                None => Err(BencodeError::Truncated),
            };
        }
    }
    bencode::scan_bytes(buf, pos)
}

impl KrpcMessage<'_> {
    fn has_anomaly_on(&self, field: &str) -> bool {
        self.anomalies().iter().any(|a| a.field == field)
    }
}

/// Anomalies of one message or of one part of it: the first
/// [`MAX_ANOMALIES_KEPT`] in detail, all of them counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Notes {
    kept: [Anomaly; MAX_ANOMALIES_KEPT],
    n: u32,
}

impl Default for Notes {
    fn default() -> Self {
        Notes {
            kept: [Anomaly {
                kind: AnomalyKind::Missing,
                field: "",
            }; MAX_ANOMALIES_KEPT],
            n: 0,
        }
    }
}

impl Notes {
    fn note(&mut self, kind: AnomalyKind, field: &'static str) {
        if let Some(slot) = self.kept.get_mut(self.n as usize) {
            *slot = Anomaly { kind, field };
        }
        self.n = self.n.saturating_add(1);
    }

    fn kept(&self) -> &[Anomaly] {
        let kept = (self.n as usize).min(MAX_ANOMALIES_KEPT);
        self.kept.get(..kept).unwrap_or(&[])
    }

    /// `other`'s anomalies after these, as if noted here one by one.
    fn append(&mut self, other: &Notes) {
        for a in other.kept() {
            self.note(a.kind, a.field);
        }
        let rest = other.n.saturating_sub(other.kept().len() as u32);
        self.n = self.n.saturating_add(rest);
    }
}

/// Known top-level keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopKey {
    T,
    Y,
    Q,
    A,
    R,
    E,
    V,
    Ip,
    Ro,
}

impl TopKey {
    /// By length, then by bytes (slice patterns: a jump on the byte,
    /// not a comparison per arm).
    fn lookup(key: &[u8]) -> Option<(&'static str, TopKey)> {
        Some(match *key {
            [b't'] => ("t", TopKey::T),
            [b'y'] => ("y", TopKey::Y),
            [b'q'] => ("q", TopKey::Q),
            [b'a'] => ("a", TopKey::A),
            [b'r'] => ("r", TopKey::R),
            [b'e'] => ("e", TopKey::E),
            [b'v'] => ("v", TopKey::V),
            [b'i', b'p'] => ("ip", TopKey::Ip),
            [b'r', b'o'] => ("ro", TopKey::Ro),
            _ => return None,
        })
    }
}

/// Known keys of `a` and `r`. [`BodyKey::lookup`] says where each one
/// belongs, so that a response-only key inside `a` is reported as unknown
/// there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKey {
    Id,
    Target,
    InfoHash,
    Token,
    Port,
    ImpliedPort,
    Seed,
    Name,
    Want,
    Scrape,
    NoSeed,
    Nodes,
    Nodes6,
    Values,
    BfSeeds,
    BfPeers,
    Key,
    Sig,
    Seq,
    Salt,
    Cas,
    Item,
    Samples,
    Interval,
    Num,
}

/// Where a body key is known: in `a`, in `r`, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum In {
    Args,
    Reply,
    Both,
}

impl BodyKey {
    /// By length first, then the few keys of that length (each compared
    /// as a fixed-size value, not through a chain of slice comparisons).
    #[inline]
    fn lookup(key: &[u8], scope: KeyScope) -> Option<(&'static str, BodyKey)> {
        let (name, k, place) = match key.len() {
            1 => match *key {
                [b'n'] => ("n", BodyKey::Name, In::Args),
                [b'k'] => ("k", BodyKey::Key, In::Both),
                [b'v'] => ("v", BodyKey::Item, In::Both),
                _ => return None,
            },
            2 => match *key {
                [b'i', b'd'] => ("id", BodyKey::Id, In::Both),
                _ => return None,
            },
            3 => match key {
                b"sig" => ("sig", BodyKey::Sig, In::Both),
                b"seq" => ("seq", BodyKey::Seq, In::Both),
                b"cas" => ("cas", BodyKey::Cas, In::Args),
                b"num" => ("num", BodyKey::Num, In::Reply),
                _ => return None,
            },
            4 => match key {
                b"port" => ("port", BodyKey::Port, In::Args),
                b"seed" => ("seed", BodyKey::Seed, In::Args),
                // Seen from libtorrent 1.x in get_peers / announce_peer (corpus: VUT-PDS).
                b"name" => ("name", BodyKey::Name, In::Args),
                b"want" => ("want", BodyKey::Want, In::Args),
                b"BFsd" => ("BFsd", BodyKey::BfSeeds, In::Reply),
                b"BFpe" => ("BFpe", BodyKey::BfPeers, In::Reply),
                b"salt" => ("salt", BodyKey::Salt, In::Args),
                _ => return None,
            },
            5 => match key {
                b"token" => ("token", BodyKey::Token, In::Both),
                b"nodes" => ("nodes", BodyKey::Nodes, In::Reply),
                _ => return None,
            },
            6 => match key {
                b"target" => ("target", BodyKey::Target, In::Args),
                b"values" => ("values", BodyKey::Values, In::Reply),
                b"nodes6" => ("nodes6", BodyKey::Nodes6, In::Reply),
                b"scrape" => ("scrape", BodyKey::Scrape, In::Args),
                b"noseed" => ("noseed", BodyKey::NoSeed, In::Args),
                _ => return None,
            },
            7 => match key {
                b"samples" => ("samples", BodyKey::Samples, In::Reply),
                _ => return None,
            },
            8 => match key {
                b"interval" => ("interval", BodyKey::Interval, In::Reply),
                _ => return None,
            },
            9 => match key {
                b"info_hash" => ("info_hash", BodyKey::InfoHash, In::Args),
                _ => return None,
            },
            12 => match key {
                b"implied_port" => ("implied_port", BodyKey::ImpliedPort, In::Args),
                _ => return None,
            },
            _ => return None,
        };
        match (place, scope) {
            (In::Both, _) | (In::Args, KeyScope::Args) | (In::Reply, KeyScope::Reply) => Some((name, k)),
            _ => None,
        }
    }
}

/// Remembers which known keys were seen, to flag duplicates (first wins,
/// like [`Dict::get`]). 64 bits cover both key tables.
#[derive(Default)]
struct Seen(u64);

impl Seen {
    /// True the first time `bit` is offered.
    fn first(&mut self, bit: u32) -> bool {
        let mask = 1u64.checked_shl(bit).unwrap_or(0);
        let fresh = self.0 & mask == 0;
        self.0 |= mask;
        fresh
    }

    /// Whether `bit` was offered already.
    fn has(&self, bit: u32) -> bool {
        self.0 & 1u64.checked_shl(bit).unwrap_or(0) != 0
    }
}

/// One top-level entry of a message of kind `m.kind`, in wire order.
fn top_entry<'a>(
    m: &mut KrpcMessage<'a>,
    notes: &mut Notes,
    seen: &mut Seen,
    have_tid: &mut bool,
    name: &'static str,
    k: TopKey,
    val: Value<'a>,
) {
    if !seen.first(k as u32) {
        notes.note(AnomalyKind::DuplicateKey, name);
        return;
    }
    match k {
        TopKey::T => match val.as_bytes() {
            Some(t) => {
                m.tid = t;
                *have_tid = true;
            }
            None => notes.note(AnomalyKind::WrongType, name),
        },
        // Decoded apart: it decides the kind.
        TopKey::Y => {}
        TopKey::Q => {
            if m.kind == KrpcKind::Query {
                match val.as_bytes() {
                    Some(q) => {
                        m.method_name = Some(q);
                        m.method = Some(Method::from_name(q));
                    }
                    None => notes.note(AnomalyKind::WrongType, name),
                }
            }
        }
        TopKey::A | TopKey::R => {
            let wanted = match m.kind {
                KrpcKind::Query => TopKey::A,
                KrpcKind::Response => TopKey::R,
                KrpcKind::Error => return,
            };
            if k == wanted {
                match val.as_dict() {
                    Some(body) => m.body = Some(body),
                    None => notes.note(AnomalyKind::WrongType, name),
                }
            }
        }
        TopKey::E => {
            if m.kind == KrpcKind::Error {
                parse_error_list(m, notes, val);
            }
        }
        TopKey::V => match val.as_bytes() {
            Some(v) => m.version = Some(v),
            None => notes.note(AnomalyKind::WrongType, name),
        },
        TopKey::Ip => match val.as_bytes() {
            Some(b) => match compact_peer(b) {
                Some(addr) => m.ip = Some(addr),
                None => notes.note(AnomalyKind::BadLength, name),
            },
            None => notes.note(AnomalyKind::WrongType, name),
        },
        TopKey::Ro => match val.as_int() {
            Some(n) => m.read_only = n != 0,
            None => notes.note(AnomalyKind::WrongType, name),
        },
    }
}

/// `e`: `[code, message]` (BEP 5). Clients disagree on little here, but a
/// missing message or a string code is still reported.
fn parse_error_list<'a>(m: &mut KrpcMessage<'a>, notes: &mut Notes, val: Value<'a>) {
    let Some(list) = val.as_list() else {
        notes.note(AnomalyKind::WrongType, "e");
        return;
    };
    let mut items = list.iter();
    match items.next().map(|v| v.as_int()) {
        Some(Some(code)) => m.error_code = Some(code),
        Some(None) => notes.note(AnomalyKind::WrongType, "e"),
        None => notes.note(AnomalyKind::BadLength, "e"),
    }
    match items.next().map(|v| v.as_bytes()) {
        Some(Some(msg)) => m.error_msg = Some(msg),
        Some(None) => notes.note(AnomalyKind::WrongType, "e"),
        None => notes.note(AnomalyKind::BadLength, "e"),
    }
}

/// Good and bad entries of a `values` list: compact peers, and the rest.
fn values_counts(list: List<'_>) -> (usize, usize) {
    let (mut valid, mut bad) = (0, 0);
    for v in list.iter() {
        if v.as_bytes().and_then(compact_peer).is_some() {
            valid += 1;
        } else {
            bad += 1;
        }
    }
    (valid, bad)
}

/// One entry of the body, in wire order: `raw` is the value's exact
/// encoding; `counts`, for a `values` list, its good and bad entries
/// when the walk counted them already.
#[allow(clippy::too_many_arguments)]
fn body_entry<'a>(
    m: &mut KrpcMessage<'a>,
    notes: &mut Notes,
    seen: &mut Seen,
    name: &'static str,
    k: BodyKey,
    val: Value<'a>,
    raw: &'a [u8],
    counts: Option<(usize, usize)>,
) {
    if !seen.first(k as u32) {
        notes.note(AnomalyKind::DuplicateKey, name);
        return;
    }
    match k {
        BodyKey::Id => m.id = id20(notes, name, val),
        BodyKey::Target => m.target = id20(notes, name, val),
        BodyKey::InfoHash => m.info_hash = id20(notes, name, val),
        BodyKey::Token => m.token = bytes(notes, name, val),
        BodyKey::Name => m.name = bytes(notes, name, val),
        BodyKey::Port => {
            if let Some(p) = int(notes, name, val) {
                match u16::try_from(p) {
                    Ok(p) => m.port = Some(p),
                    Err(_) => notes.note(AnomalyKind::OutOfRange, name),
                }
            }
        }
        BodyKey::ImpliedPort => m.implied_port = int(notes, name, val).map(|n| n != 0),
        BodyKey::Seed => m.seed = int(notes, name, val).map(|n| n != 0),
        BodyKey::Scrape => m.scrape = int(notes, name, val).map(|n| n != 0),
        BodyKey::NoSeed => m.noseed = int(notes, name, val).map(|n| n != 0),
        BodyKey::Want => match val.as_list() {
            Some(list) => {
                let mut want = Want {
                    n4: false,
                    n6: false,
                    list,
                };
                for v in list.iter() {
                    match v.as_bytes() {
                        Some(b"n4") => want.n4 = true,
                        Some(b"n6") => want.n6 = true,
                        _ => {}
                    }
                }
                m.want = Some(want);
            }
            None => notes.note(AnomalyKind::WrongType, name),
        },
        BodyKey::Nodes => {
            if let Some(raw) = packed(notes, name, val, NODE4_LEN) {
                m.nodes = Some(CompactNodes4 { raw });
            }
        }
        BodyKey::Nodes6 => {
            if let Some(raw) = packed(notes, name, val, NODE6_LEN) {
                m.nodes6 = Some(CompactNodes6 { raw });
            }
        }
        BodyKey::Samples => {
            if let Some(raw) = packed(notes, name, val, ID_LEN) {
                m.samples = Some(Samples { raw });
            }
        }
        BodyKey::Values => match val.as_list() {
            Some(list) => {
                let (n_valid, n_bad) = counts.unwrap_or_else(|| values_counts(list));
                // One anomaly per list, not per entry: a hostile list of
                // junk should not drown the others.
                if n_bad > 0 {
                    notes.note(AnomalyKind::BadEntry, name);
                }
                m.values = Some(Values { list, n_valid });
            }
            None => notes.note(AnomalyKind::WrongType, name),
        },
        BodyKey::BfSeeds => m.bf_seeds = exact(notes, name, val, BLOOM_LEN),
        BodyKey::BfPeers => m.bf_peers = exact(notes, name, val, BLOOM_LEN),
        BodyKey::Key => m.key = exact(notes, name, val, BEP44_KEY_LEN),
        BodyKey::Sig => m.sig = exact(notes, name, val, BEP44_SIG_LEN),
        BodyKey::Salt => {
            m.salt = bytes(notes, name, val);
            if m.salt.is_some_and(|s| s.len() > BEP44_MAX_SALT_LEN) {
                notes.note(AnomalyKind::BadLength, name);
            }
        }
        BodyKey::Seq => m.seq = int(notes, name, val),
        BodyKey::Cas => m.cas = int(notes, name, val),
        BodyKey::Item => {
            // Any bencoded type is legal; keep the exact encoding, which
            // is what BEP 44 signs and hashes.
            m.item = Some(raw);
            if raw.len() > BEP44_MAX_V_LEN {
                notes.note(AnomalyKind::BadLength, name);
            }
        }
        BodyKey::Interval => m.interval = int(notes, name, val),
        BodyKey::Num => m.num = int(notes, name, val),
    }
}

fn bytes<'a>(notes: &mut Notes, name: &'static str, val: Value<'a>) -> Option<&'a [u8]> {
    let b = val.as_bytes();
    if b.is_none() {
        notes.note(AnomalyKind::WrongType, name);
    }
    b
}

fn int(notes: &mut Notes, name: &'static str, val: Value<'_>) -> Option<i64> {
    let n = val.as_int();
    if n.is_none() {
        notes.note(AnomalyKind::WrongType, name);
    }
    n
}

/// A string of exactly `len` bytes; any other length is an anomaly and the
/// field is left empty (a wrong-size key or filter cannot be interpreted).
fn exact<'a>(notes: &mut Notes, name: &'static str, val: Value<'a>, len: usize) -> Option<&'a [u8]> {
    let b = bytes(notes, name, val)?;
    if b.len() == len {
        Some(b)
    } else {
        notes.note(AnomalyKind::BadLength, name);
        None
    }
}

fn id20<'a>(notes: &mut Notes, name: &'static str, val: Value<'a>) -> Option<&'a [u8; ID_LEN]> {
    exact(notes, name, val, ID_LEN).and_then(|b| b.try_into().ok())
}

/// A packed string of `entry`-sized records. A trailing partial record is an
/// anomaly but the whole records before it stay usable (the iterators use
/// `chunks_exact`).
fn packed<'a>(notes: &mut Notes, name: &'static str, val: Value<'a>, entry: usize) -> Option<&'a [u8]> {
    let b = bytes(notes, name, val)?;
    if b.len() % entry != 0 {
        notes.note(AnomalyKind::BadLength, name);
    }
    Some(b)
}

fn compact_v4(b: &[u8]) -> Option<SocketAddrV4> {
    let b: &[u8; PEER4_LEN] = b.try_into().ok()?;
    let [a, b2, c, d, p0, p1] = *b;
    Some(SocketAddrV4::new(
        Ipv4Addr::new(a, b2, c, d),
        u16::from_be_bytes([p0, p1]),
    ))
}

fn compact_v6(b: &[u8]) -> Option<SocketAddrV6> {
    if b.len() != PEER6_LEN {
        return None;
    }
    let (ip, port) = b.split_at(16);
    let ip: [u8; 16] = ip.try_into().ok()?;
    let port: [u8; 2] = port.try_into().ok()?;
    Some(SocketAddrV6::new(Ipv6Addr::from(ip), u16::from_be_bytes(port), 0, 0))
}

/// A compact peer or endpoint: 6 bytes (IPv4) or 18 bytes (IPv6).
pub fn compact_peer(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        PEER4_LEN => compact_v4(b).map(SocketAddr::V4),
        PEER6_LEN => compact_v6(b).map(SocketAddr::V6),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Client version
// ---------------------------------------------------------------------------

/// Decodes the 4-byte top-level `v`: two letters naming the client, then two
/// version bytes whose layout each client chose:
///
/// - `LT` libtorrent (Rasterbar): major, then `minor << 4 | tiny` since 1.0
///   (`LT 01 2f` = 1.2.15); 0.x versions sent major, minor (`LT 00 10` = 0.16).
/// - `lt` libtorrent (rakshasa, rtorrent): the middle digits of its peer-ID
///   version, minor then `patch << 4` (`lt 0d 60` = 0.13.6).
/// - `TR` Transmission: major, minor (`TR 02 5e` = 2.94).
/// - `UT`/`UM` µTorrent (Windows / Mac): a big-endian build number.
///
/// Client names match `client_id` (peer-ID decoding) so both can be grouped.
/// - Other known codes get their name and the two bytes in hex; unknown but
///   printable codes are returned as the code and hex, so nothing is guessed.
///
/// `None` when `v` is not 4 bytes or the code is not two ASCII letters/digits.
pub fn client_from_version(v: &[u8]) -> Option<String> {
    let [c0, c1, b0, b1]: [u8; 4] = v.try_into().ok()?;
    if !c0.is_ascii_alphanumeric() || !c1.is_ascii_alphanumeric() {
        return None;
    }
    let build = u16::from_be_bytes([b0, b1]);
    let s = match &[c0, c1] {
        b"LT" if b0 == 0 => format!("libtorrent 0.{b1}"),
        b"LT" => format!("libtorrent {b0}.{}.{}", b1 >> 4, b1 & 0x0f),
        b"lt" => format!("libTorrent (rakshasa) 0.{b0}.{}", b1 >> 4),
        b"TR" => format!("Transmission {b0}.{b1:02}"),
        b"UT" => format!("µTorrent build {build}"),
        b"UM" => format!("µTorrent Mac build {build}"),
        code => {
            let name = match code {
                b"GR" => "GetRight",
                b"MP" => "MooPolice",
                b"ML" | b"ml" => "MLDonkey",
                b"BT" => "BitTorrent",
                b"BC" => "BitComet",
                b"AZ" => "Vuze",
                b"KT" => "KTorrent",
                b"DE" => "Deluge",
                b"qB" => "qBittorrent",
                b"WD" | b"WW" => "WebTorrent",
                // aria2 1.36 sends `A2 00 03` (sample-pcaps/magnet.pcap).
                b"A2" => "aria2",
                _ => "",
            };
            if name.is_empty() {
                format!("{}{} {build:04x}", char::from(c0), char::from(c1))
            } else {
                format!("{name} {build:04x}")
            }
        }
    };
    Some(s)
}

// ---------------------------------------------------------------------------
// BEP 42
// ---------------------------------------------------------------------------

/// CRC32-C (Castagnoli, reflected polynomial 0x82F63B78) lookup table, built
/// at compile time.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC32-C of `data` (the checksum BEP 42 specifies).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        // The index is masked to 0..=255, so it cannot leave the table.
        crc = CRC32C_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

/// BEP 42: does `node_id` follow from `ip`? The first 21 bits of the ID must
/// equal the top 21 bits of CRC32-C over the masked IP (4 bytes of IPv4, the
/// first 8 of IPv6) with the ID's last byte's low 3 bits (`r`) placed in the
/// top 3 bits of the first byte.
///
/// This is the bare check: BEP 42 exempts local addresses, see
/// [`bep42_exempt`]; callers decide whether to apply the exemption.
pub fn bep42_id_matches(ip: IpAddr, node_id: &[u8; ID_LEN]) -> bool {
    const V4_MASK: [u8; 4] = [0x03, 0x0f, 0x3f, 0xff];
    const V6_MASK: [u8; 8] = [0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff];
    let r = node_id[ID_LEN - 1] & 0x07;
    let mut buf = [0u8; 8];
    let n = match ip {
        IpAddr::V4(v4) => {
            for ((dst, src), mask) in buf.iter_mut().zip(v4.octets()).zip(V4_MASK) {
                *dst = src & mask;
            }
            4
        }
        IpAddr::V6(v6) => {
            for ((dst, src), mask) in buf.iter_mut().zip(v6.octets()).zip(V6_MASK) {
                *dst = src & mask;
            }
            8
        }
    };
    buf[0] |= r << 5;
    let crc = crc32c(buf.get(..n).unwrap_or(&buf)).to_be_bytes();
    node_id[0] == crc[0] && node_id[1] == crc[1] && (node_id[2] ^ crc[2]) & 0xf8 == 0
}

/// BEP 42 does not restrict node IDs on local networks: 10/8, 172.16/12,
/// 192.168/16, 169.254/16 and 127/8. For IPv6 the same idea is applied to
/// loopback, link-local (fe80::/10) and unique-local (fc00::/7) addresses,
/// as libtorrent does.
pub fn bep42_exempt(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            v6.is_loopback() || (seg0 & 0xffc0) == 0xfe80 || (seg0 & 0xfe00) == 0xfc00
        }
    }
}

// ---------------------------------------------------------------------------
// Pairing
// ---------------------------------------------------------------------------

/// Identifies an outstanding query: a 64-bit keyed hash of the transaction
/// ID and both endpoints (querier, responder). A response travels the
/// other way, so it is looked up with its destination as `querier` and its
/// source as `responder`.
///
/// The table keeps only this integer, not the ID and the two addresses
/// (88 bytes before): the key is SipHash-1-3 ([`SipKey`], a random key per
/// table) of an injective encoding in 64-bit words, so two different
/// queries share a key with probability about n / 2^64 per lookup for n
/// waiting queries (never, in practice), and an attacker who does not know
/// the table's key cannot aim a response at someone else's query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PendingKey(u64);

impl PendingKey {
    /// `None` when `tid` is longer than [`MAX_TID_LEN`].
    pub fn new(key: &SipKey, tid: &[u8], querier: SocketAddr, responder: SocketAddr) -> Option<PendingKey> {
        if tid.len() > MAX_TID_LEN {
            return None;
        }
        // The words: one with the ID's length, each endpoint's family and
        // both ports; the ID in one word, or two past 8 bytes
        // (zero-padded); the addresses (both IPv4: one word). The first
        // word says how many words follow and how to read them, so the
        // encoding is injective and no word list is a prefix of another.
        let head = tid.len() as u64
            | u64::from(querier.is_ipv6()) << 8
            | u64::from(responder.is_ipv6()) << 9
            | u64::from(querier.port()) << 16
            | u64::from(responder.port()) << 32;
        let mut id = [0u64; MAX_TID_LEN / 8];
        for (i, &b) in tid.iter().enumerate() {
            if let Some(w) = id.get_mut(i / 8) {
                *w |= u64::from(b) << (8 * (i % 8));
            }
        }
        let [id0, id1] = id;
        // The common case (IPv4 both ways, an ID of at most 8 bytes: 2 on
        // every message of dht-125k) in a fixed array.
        if let (SocketAddr::V4(q), SocketAddr::V4(r)) = (querier, responder) {
            let addrs = u64::from(q.ip().to_bits()) << 32 | u64::from(r.ip().to_bits());
            let h = if tid.len() <= 8 {
                key.hash(&[head, id0, addrs])
            } else {
                key.hash(&[head, id0, id1, addrs])
            };
            return Some(PendingKey(h));
        }
        let mut words = [0u64; 3 + 4];
        let mut n = 0;
        let mut put = |w: u64| {
            if let Some(slot) = words.get_mut(n) {
                *slot = w;
            }
            n += 1;
        };
        put(head);
        put(id0);
        if tid.len() > 8 {
            put(id1);
        }
        for ip in [querier.ip(), responder.ip()] {
            match ip {
                IpAddr::V4(v4) => put(u64::from(v4.to_bits())),
                IpAddr::V6(v6) => {
                    let b = v6.to_bits();
                    put((b >> 64) as u64);
                    put(b as u64);
                }
            }
        }
        Some(PendingKey(key.hash(words.get(..n).unwrap_or(&words))))
    }
}

/// SipHash-1-3 (one compression round per 64-bit word, three at the end)
/// with a 128-bit key, over whole words: the pairing key of
/// [`PendingKey`]. std's `RandomState` hashes the same way but through the
/// byte-wise `Hasher` interface, which cost about twice as many
/// instructions for a ~20-byte key. The encoding [`PendingKey::new`] feeds
/// it is prefix-free, so no length block is appended.
#[derive(Debug, Clone, Copy)]
pub struct SipKey {
    k0: u64,
    k1: u64,
}

impl SipKey {
    /// A random key: two outputs of std's randomly keyed SipHash
    /// (`RandomState`, seeded from the operating system).
    pub fn random() -> SipKey {
        use std::hash::BuildHasher;
        let rs = std::collections::hash_map::RandomState::new();
        SipKey {
            k0: rs.hash_one(0x5157_4150_u64),
            k1: rs.hash_one(0x5157_4151_u64),
        }
    }

    /// A fixed key (tests).
    pub fn fixed(k0: u64, k1: u64) -> SipKey {
        SipKey { k0, k1 }
    }

    /// The keyed hash of `words`.
    #[inline]
    pub fn hash(&self, words: &[u64]) -> u64 {
        let mut v = [
            self.k0 ^ 0x736f_6d65_7073_6575,
            self.k1 ^ 0x646f_7261_6e64_6f6d,
            self.k0 ^ 0x6c79_6765_6e65_7261,
            self.k1 ^ 0x7465_6462_7974_6573,
        ];
        for &m in words {
            v[3] ^= m;
            sip_round(&mut v);
            v[0] ^= m;
        }
        v[2] ^= 0xff;
        sip_round(&mut v);
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// Hashes a [`PendingKey`], already a keyed hash, as itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type KeyMap<V> = HashMap<PendingKey, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// What is remembered about a query until its answer arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingQuery {
    pub method: Method,
    /// Packet time of the query, microseconds.
    pub ts_us: u64,
    /// Frame number of the query.
    pub frame: u64,
    /// get_peers / announce_peer: the info hash asked about, so that the
    /// `values` of the response can be attributed to it (a response does
    /// not repeat it).
    pub info_hash: Option<[u8; ID_LEN]>,
}

/// What [`PendingQueries::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted,
    /// The same key was already waiting (a retransmission); the newer query
    /// replaced it.
    Replaced,
    /// The table was full; the oldest query was evicted to make room.
    EvictedOldest,
    /// The transaction ID is longer than [`MAX_TID_LEN`]; not tracked.
    TidTooLong,
}

/// Bounded table of outstanding queries, for pairing responses and errors
/// with their query (RTT, method of a response).
///
/// Memory is bounded by [`DhtLimits::max_pending`]: the map never holds more
/// entries, and the insertion-order queue is compacted once it grows past
/// twice that, so a flood of unique transaction IDs only evicts (and counts)
/// the oldest entries. Ageing uses packet time passed in by the caller.
#[derive(Debug)]
pub struct PendingQueries {
    key: SipKey,
    map: KeyMap<(PendingQuery, u64)>,
    /// Insertion order: (key, sequence number). Entries whose sequence no
    /// longer matches the map are stale (taken or replaced) and are skipped.
    order: VecDeque<(PendingKey, u64)>,
    /// (sequence, query time) of the front of `order` when the last
    /// [`PendingQueries::expire`] stopped at it, live and not yet due;
    /// cleared when that query is taken or replaced. While it holds, a
    /// call before its time is answered without a lookup.
    front_live: Option<(u64, u64)>,
    next_seq: u64,
    max_pending: usize,
    timeout_us: u64,
    /// Queries evicted because the table was full.
    pub n_evicted: u64,
    /// Queries dropped unanswered after the timeout.
    pub n_expired: u64,
    /// Queries replaced by a retransmission with the same key.
    pub n_replaced: u64,
    /// Queries not tracked because their transaction ID was too long.
    pub n_tid_too_long: u64,
    /// Responses/errors for which no query was waiting.
    pub n_unmatched: u64,
}

impl PendingQueries {
    pub fn new(limits: &DhtLimits) -> Self {
        PendingQueries {
            key: SipKey::random(),
            map: KeyMap::default(),
            order: VecDeque::new(),
            front_live: None,
            next_seq: 0,
            // A zero bound would make every insert evict itself; one slot is
            // the smallest table that still pairs anything.
            max_pending: limits.max_pending.max(1),
            timeout_us: limits.query_timeout_us,
            n_evicted: 0,
            n_expired: 0,
            n_replaced: 0,
            n_tid_too_long: 0,
            n_unmatched: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Remembers a query sent from `querier` to `responder`.
    pub fn insert(
        &mut self,
        tid: &[u8],
        querier: SocketAddr,
        responder: SocketAddr,
        query: PendingQuery,
    ) -> InsertOutcome {
        let Some(key) = PendingKey::new(&self.key, tid, querier, responder) else {
            self.n_tid_too_long += 1;
            return InsertOutcome::TidTooLong;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut outcome = InsertOutcome::Inserted;
        if let Some((_, old)) = self.map.insert(key, (query, seq)) {
            self.forget_front(old);
            self.n_replaced += 1;
            outcome = InsertOutcome::Replaced;
        } else if self.map.len() > self.max_pending {
            self.evict_oldest();
            outcome = InsertOutcome::EvictedOldest;
        }
        self.order.push_back((key, seq));
        if self.order.len() > self.max_pending.saturating_mul(2) {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|(_, live)| live == s));
        }
        outcome
    }

    /// Pairs a response or error travelling `responder` → `querier` with its
    /// query, removing it from the table.
    pub fn take(&mut self, tid: &[u8], querier: SocketAddr, responder: SocketAddr) -> Option<PendingQuery> {
        let found = PendingKey::new(&self.key, tid, querier, responder)
            .and_then(|key| self.map.remove(&key))
            .map(|(q, seq)| {
                self.forget_front(seq);
                q
            });
        if found.is_none() {
            self.n_unmatched += 1;
        }
        found
    }

    /// Drops queries older than the timeout at packet time `now_us`; returns
    /// how many. Entries are aged in insertion order, which is packet order
    /// within a shard; a query stamped earlier than one inserted before it
    /// expires when that one does.
    pub fn expire(&mut self, now_us: u64) -> usize {
        if let Some((seq, ts)) = self.front_live {
            if ts.saturating_add(self.timeout_us) > now_us && self.order.front().is_some_and(|f| f.1 == seq) {
                return 0;
            }
            self.front_live = None;
        }
        let mut n = 0;
        while let Some((key, seq)) = self.order.front().copied() {
            match self.map.get(&key) {
                Some((q, live)) if *live == seq => {
                    if q.ts_us.saturating_add(self.timeout_us) > now_us {
                        self.front_live = Some((seq, q.ts_us));
                        break;
                    }
                    self.map.remove(&key);
                    n += 1;
                }
                // Stale: already taken or replaced.
                _ => {}
            }
            self.order.pop_front();
        }
        self.n_expired += n as u64;
        n
    }

    /// The query of sequence `seq` left the table: if it was the front
    /// [`PendingQueries::expire`] stopped at, the next call looks again.
    fn forget_front(&mut self, seq: u64) {
        if self.front_live.is_some_and(|(s, _)| s == seq) {
            self.front_live = None;
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((key, seq)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|(_, live)| *live == seq) {
                self.map.remove(&key);
                self.n_evicted += 1;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> DhtLimits {
        DhtLimits::default()
    }

    /// The walk's string scan gives `bencode::scan_bytes`'s result and
    /// error on every buffer of up to 6 bytes over digits, `:`, a letter
    /// and `e`, at every offset whose byte is a digit, and on lengths of
    /// one to three digits against buffers too short and long enough.
    #[test]
    fn string_scan_equals_the_bencode_scan() {
        let alphabet = b"0159:ae";
        let mut n = 0;
        for len in 0..=6usize {
            let mut digits = vec![0usize; len];
            loop {
                let buf: Vec<u8> = digits.iter().map(|&d| alphabet[d]).collect();
                for pos in 0..buf.len() {
                    if buf[pos].is_ascii_digit() {
                        assert_eq!(scan_str(&buf, pos), bencode::scan_bytes(&buf, pos), "{buf:?} at {pos}");
                        n += 1;
                    }
                }
                // Next buffer (odometer over the alphabet).
                let Some(i) = digits.iter().rposition(|&d| d + 1 < alphabet.len()) else {
                    break;
                };
                digits[i] += 1;
                for d in digits.iter_mut().skip(i + 1) {
                    *d = 0;
                }
            }
        }
        assert!(n > 100_000, "{n} scans");
        for want in [0usize, 1, 9, 10, 20, 26, 99, 100, 208, 999] {
            let head = format!("{want}:");
            for have in [want.saturating_sub(1), want, want + 1] {
                let mut buf = b"d".to_vec();
                buf.extend_from_slice(head.as_bytes());
                buf.extend(std::iter::repeat_n(b'x', have));
                assert_eq!(
                    scan_str(&buf, 1),
                    bencode::scan_bytes(&buf, 1),
                    "{want} wanted, {have} there"
                );
            }
        }
    }

    /// The key tables, looked up by length and bytes, name exactly the
    /// keys of the tables they replaced (each key, in each scope), and
    /// nothing near them: prefixes, extensions, case, one byte changed.
    #[test]
    fn key_tables_name_the_listed_keys_and_nothing_else() {
        use BodyKey as B;
        let top: [(&str, TopKey); 9] = [
            ("t", TopKey::T),
            ("y", TopKey::Y),
            ("q", TopKey::Q),
            ("a", TopKey::A),
            ("r", TopKey::R),
            ("e", TopKey::E),
            ("v", TopKey::V),
            ("ip", TopKey::Ip),
            ("ro", TopKey::Ro),
        ];
        // (key, kind, known in `a`, known in `r`)
        let body: [(&str, BodyKey, bool, bool); 26] = [
            ("id", B::Id, true, true),
            ("target", B::Target, true, false),
            ("info_hash", B::InfoHash, true, false),
            ("token", B::Token, true, true),
            ("port", B::Port, true, false),
            ("implied_port", B::ImpliedPort, true, false),
            ("seed", B::Seed, true, false),
            ("n", B::Name, true, false),
            ("name", B::Name, true, false),
            ("want", B::Want, true, false),
            ("scrape", B::Scrape, true, false),
            ("noseed", B::NoSeed, true, false),
            ("nodes", B::Nodes, false, true),
            ("nodes6", B::Nodes6, false, true),
            ("values", B::Values, false, true),
            ("BFsd", B::BfSeeds, false, true),
            ("BFpe", B::BfPeers, false, true),
            ("k", B::Key, true, true),
            ("sig", B::Sig, true, true),
            ("seq", B::Seq, true, true),
            ("salt", B::Salt, true, false),
            ("cas", B::Cas, true, false),
            ("v", B::Item, true, true),
            ("samples", B::Samples, false, true),
            ("interval", B::Interval, false, true),
            ("num", B::Num, false, true),
        ];
        for (key, k) in top {
            assert_eq!(TopKey::lookup(key.as_bytes()), Some((key, k)), "{key}");
        }
        for (key, k, args, reply) in body {
            let want = |known: bool| known.then_some((key, k));
            assert_eq!(BodyKey::lookup(key.as_bytes(), KeyScope::Args), want(args), "a.{key}");
            assert_eq!(BodyKey::lookup(key.as_bytes(), KeyScope::Reply), want(reply), "r.{key}");
            assert_eq!(
                BodyKey::lookup(key.as_bytes(), KeyScope::Top),
                want(args && reply),
                "{key}"
            );
        }
        // Near misses of every key: none is known.
        let mut near: Vec<Vec<u8>> = vec![Vec::new(), b"p".to_vec(), b"ipv6".to_vec()];
        for key in top.iter().map(|t| t.0).chain(body.iter().map(|b| b.0)) {
            let b = key.as_bytes();
            near.push(b[..b.len() - 1].to_vec());
            near.push([b, b"x"].concat());
            near.push(b.to_ascii_uppercase());
            for i in 0..b.len() {
                let mut c = b.to_vec();
                c[i] ^= 0x01;
                near.push(c);
            }
        }
        let top_keys: Vec<&str> = top.iter().map(|t| t.0).collect();
        let body_keys: Vec<&str> = body.iter().map(|b| b.0).collect();
        for key in &near {
            let listed = |keys: &[&str]| keys.iter().any(|k| k.as_bytes() == key.as_slice());
            if !listed(&top_keys) {
                assert_eq!(TopKey::lookup(key), None, "{:?}", String::from_utf8_lossy(key));
            }
            if !listed(&body_keys) {
                for scope in [KeyScope::Top, KeyScope::Args, KeyScope::Reply] {
                    assert_eq!(BodyKey::lookup(key, scope), None, "{:?}", String::from_utf8_lossy(key));
                }
            }
        }
    }

    /// The word-wise SipHash-1-3 is std's: `DefaultHasher::new()` is
    /// SipHash-1-3 with a zero key, whose byte-wise hash of whole words is
    /// the word-wise hash of the same words plus its length block.
    #[test]
    fn sip_key_hashes_as_std_siphash13() {
        use std::hash::Hasher;
        let words: Vec<u64> = (0..7u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x0123_4567)
            .collect();
        for n in 0..=words.len() {
            let w = &words[..n];
            let mut std = std::hash::DefaultHasher::new();
            let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            std.write(&bytes);
            let mut with_len = w.to_vec();
            with_len.push(((8 * n) as u64) << 56);
            assert_eq!(SipKey::fixed(0, 0).hash(&with_len), std.finish(), "{n} words");
        }
        // Keyed: another key, another hash.
        assert_ne!(SipKey::fixed(1, 2).hash(&words), SipKey::fixed(0, 0).hash(&words));
    }

    /// Pairing keys tell apart what the words could run together: the
    /// transaction ID's length and padding, families, ports, directions.
    #[test]
    fn pending_keys_are_distinct() {
        let k = SipKey::fixed(7, 9);
        let a4: SocketAddr = "10.0.0.1:6881".parse().unwrap();
        let b4: SocketAddr = "10.0.0.2:6881".parse().unwrap();
        let a6: SocketAddr = "[::ffff:10.0.0.1]:6881".parse().unwrap();
        let b6: SocketAddr = "[2001:db8::2]:6881".parse().unwrap();
        let c4: SocketAddr = "10.0.0.2:6882".parse().unwrap();
        let tids: [&[u8]; 6] = [b"", b"a", b"a\0", b"aa", b"12345678", b"123456789abcdefg"];
        let mut seen = std::collections::HashSet::new();
        let mut n = 0;
        for t in tids {
            for (q, r) in [(a4, b4), (b4, a4), (a6, b4), (a4, b6), (a6, b6), (b6, a6), (a4, c4)] {
                seen.insert(PendingKey::new(&k, t, q, r).unwrap());
                n += 1;
            }
        }
        assert_eq!(seen.len(), n);
        assert_eq!(PendingKey::new(&k, &[0; MAX_TID_LEN + 1], a4, b4), None);
    }

    /// Parses a copy that lives for the rest of the test, so fixtures can be
    /// built inline (tests only: the copies are leaked on purpose).
    fn parse(d: &[u8]) -> KrpcMessage<'static> {
        let d: &'static [u8] = Box::leak(d.to_vec().into_boxed_slice());
        match parse_krpc(d, &lim()) {
            Ok(m) => m,
            Err(e) => panic!("{e} for {}", String::from_utf8_lossy(d)),
        }
    }

    fn kinds(m: &KrpcMessage<'_>) -> Vec<(&'static str, &'static str)> {
        m.anomalies().iter().map(|a| (a.kind.as_str(), a.field)).collect()
    }

    /// Bencodes a byte string.
    fn bs(b: &[u8]) -> Vec<u8> {
        let mut v = format!("{}:", b.len()).into_bytes();
        v.extend_from_slice(b);
        v
    }

    /// Builds `d<entries>e` from already-encoded key/value pairs.
    fn dict(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut v = b"d".to_vec();
        for (k, val) in entries {
            v.extend(bs(k.as_bytes()));
            v.extend_from_slice(val);
        }
        v.push(b'e');
        v
    }

    fn int(n: i64) -> Vec<u8> {
        format!("i{n}e").into_bytes()
    }

    const ID: &[u8; 20] = b"abcdefghij0123456789";
    const IH: &[u8; 20] = b"mnopqrstuvwxyz123456";

    fn query(method: &str, args: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut a = vec![("id", bs(ID))];
        a.extend(args.iter().cloned());
        dict(&[
            ("a", dict(&a)),
            ("q", bs(method.as_bytes())),
            ("t", bs(b"aa")),
            ("y", bs(b"q")),
        ])
    }

    fn response(vals: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut r = vec![("id", bs(ID))];
        r.extend(vals.iter().cloned());
        dict(&[("r", dict(&r)), ("t", bs(b"aa")), ("y", bs(b"r"))])
    }

    fn node4(id: u8, ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut v = vec![id; 20];
        v.extend_from_slice(&ip);
        v.extend_from_slice(&port.to_be_bytes());
        v
    }

    #[test]
    fn bep5_queries() {
        type Args = Vec<(&'static str, Vec<u8>)>;
        let cases: &[(&str, Args, Method)] = &[
            ("ping", vec![], Method::Ping),
            ("find_node", vec![("target", bs(IH))], Method::FindNode),
            ("get_peers", vec![("info_hash", bs(IH))], Method::GetPeers),
            (
                "announce_peer",
                vec![
                    ("implied_port", int(1)),
                    ("info_hash", bs(IH)),
                    ("port", int(6881)),
                    ("token", bs(b"aoeusnth")),
                ],
                Method::AnnouncePeer,
            ),
            ("vote", vec![("target", bs(IH))], Method::Other),
        ];
        for (name, args, method) in cases {
            let d = query(name, args);
            assert!(looks_like_krpc(&d), "{name}");
            let m = parse(&d);
            assert_eq!(m.kind, KrpcKind::Query);
            assert_eq!(m.kind.as_str(), "query");
            assert_eq!(m.method, Some(*method));
            assert_eq!(m.method_name, Some(name.as_bytes()));
            assert_eq!(m.tid, b"aa");
            assert_eq!(m.id, Some(ID));
            assert!(m.anomalies().is_empty(), "{name}: {:?}", kinds(&m));
            assert_eq!(m.unknown_keys().count(), 0);
            match method {
                Method::FindNode | Method::Other => assert_eq!(m.target, Some(IH)),
                Method::GetPeers => assert_eq!(m.info_hash, Some(IH)),
                Method::AnnouncePeer => {
                    assert_eq!(m.info_hash, Some(IH));
                    assert_eq!(m.port, Some(6881));
                    assert_eq!(m.implied_port, Some(true));
                    assert_eq!(m.token, Some(&b"aoeusnth"[..]));
                }
                _ => {}
            }
        }
    }

    #[test]
    fn bep5_responses_and_errors() {
        let mut nodes = node4(1, [10, 0, 0, 1], 6881);
        nodes.extend(node4(2, [192, 168, 1, 2], 51413));
        let d = response(&[("nodes", bs(&nodes)), ("token", bs(b"tok"))]);
        let m = parse(&d);
        assert_eq!(m.kind, KrpcKind::Response);
        assert_eq!(m.method, None);
        assert_eq!(m.n_nodes(), 2);
        let got: Vec<_> = m.nodes.unwrap().iter().collect();
        assert_eq!(got[0].0, &[1u8; 20]);
        assert_eq!(got[0].1, "10.0.0.1:6881".parse().unwrap());
        assert_eq!(got[1].1, "192.168.1.2:51413".parse().unwrap());
        assert_eq!(m.token, Some(&b"tok"[..]));
        assert!(m.anomalies().is_empty());

        let mut values = b"l".to_vec();
        values.extend(bs(&[1, 2, 3, 4, 0x1a, 0xe1]));
        let mut v6 = [0u8; 18];
        v6[15] = 1;
        v6[16] = 0x1a;
        v6[17] = 0xe1;
        values.extend(bs(&v6));
        values.push(b'e');
        let m = parse(&response(&[("token", bs(b"t")), ("values", values)]));
        assert_eq!(m.n_values(), 2);
        let peers: Vec<SocketAddr> = m.values.unwrap().iter().collect();
        assert_eq!(peers[0], "1.2.3.4:6881".parse().unwrap());
        assert_eq!(peers[1], "[::1]:6881".parse().unwrap());

        let d = b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee";
        let m = parse(d);
        assert_eq!(m.kind, KrpcKind::Error);
        assert_eq!(m.kind.as_str(), "error");
        assert_eq!(m.error_code, Some(201));
        assert_eq!(m.error_msg, Some(&b"A Generic Error Ocurred"[..]));
        assert!(m.body.is_none());
        assert!(m.anomalies().is_empty());
    }

    #[test]
    fn extensions() {
        // BEP 32 want + nodes6, BEP 42 ip, BEP 43 ro, client version.
        let d = dict(&[
            (
                "a",
                dict(&[("id", bs(ID)), ("target", bs(IH)), ("want", b"l2:n42:n62:xxe".to_vec())]),
            ),
            ("q", bs(b"find_node")),
            ("ro", int(1)),
            ("t", bs(b"xy")),
            ("v", bs(b"LT\x01\x2f")),
            ("y", bs(b"q")),
        ]);
        let m = parse(&d);
        assert!(m.read_only);
        let want = m.want.unwrap();
        assert!(want.n4 && want.n6);
        assert_eq!(want.list.iter().count(), 3);
        assert_eq!(m.client().as_deref(), Some("libtorrent 1.2.15"));

        let mut n6 = vec![7u8; 20];
        n6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        n6.extend_from_slice(&[0; 12]);
        n6.extend_from_slice(&443u16.to_be_bytes());
        let d = dict(&[
            ("ip", bs(&[198, 51, 100, 7, 0x1f, 0x90])),
            ("r", dict(&[("id", bs(ID)), ("nodes6", bs(&n6))])),
            ("t", bs(b"xy")),
            ("y", bs(b"r")),
        ]);
        let m = parse(&d);
        assert_eq!(m.ip, Some("198.51.100.7:8080".parse().unwrap()));
        let n: Vec<_> = m.nodes6.unwrap().iter().collect();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].1, "[2001:db8::]:443".parse().unwrap());

        // BEP 33 scrape.
        let q = parse(&query(
            "get_peers",
            &[("info_hash", bs(IH)), ("noseed", int(1)), ("scrape", int(1))],
        ));
        assert_eq!(q.scrape, Some(true));
        assert_eq!(q.noseed, Some(true));
        let r = parse(&response(&[
            ("BFpe", bs(&[0xaa; 256])),
            ("BFsd", bs(&[0x55; 256])),
            ("token", bs(b"t")),
        ]));
        assert_eq!(r.bf_seeds.map(|b| b.len()), Some(256));
        assert_eq!(r.bf_peers.map(|b| b[0]), Some(0xaa));
        let bad = parse(&response(&[("BFsd", bs(&[0; 100]))]));
        assert_eq!(kinds(&bad), vec![("dht_bad_length", "BFsd")]);
        assert!(bad.bf_seeds.is_none());

        // BEP 44 put (mutable) and get response.
        let put = parse(&query(
            "put",
            &[
                ("cas", int(4)),
                ("k", bs(&[1; 32])),
                ("salt", bs(b"foobar")),
                ("seq", int(5)),
                ("sig", bs(&[2; 64])),
                ("token", bs(b"tok")),
                ("v", b"l4:spami42ee".to_vec()),
            ],
        ));
        assert_eq!(put.method, Some(Method::Put));
        assert_eq!(put.cas, Some(4));
        assert_eq!(put.seq, Some(5));
        assert_eq!(put.key.map(|k| k.len()), Some(32));
        assert_eq!(put.sig.map(|k| k.len()), Some(64));
        assert_eq!(put.salt, Some(&b"foobar"[..]));
        assert_eq!(put.item, Some(&b"l4:spami42ee"[..]));
        assert!(put.anomalies().is_empty(), "{:?}", kinds(&put));
        let get = parse(&query("get", &[("seq", int(3)), ("target", bs(IH))]));
        assert_eq!(get.method, Some(Method::Get));
        assert_eq!(get.target, Some(IH));
        let got = parse(&response(&[
            ("k", bs(&[1; 31])),
            ("seq", int(5)),
            ("v", bs(b"Hello World!")),
        ]));
        assert_eq!(got.item, Some(&b"12:Hello World!"[..]));
        assert_eq!(kinds(&got), vec![("dht_bad_length", "k")]);

        // BEP 51 sample_infohashes.
        let q = parse(&query("sample_infohashes", &[("target", bs(IH))]));
        assert_eq!(q.method, Some(Method::SampleInfohashes));
        let mut samples = vec![3u8; 20];
        samples.extend([4u8; 20]);
        let r = parse(&response(&[
            ("interval", int(21600)),
            ("num", int(1234)),
            ("samples", bs(&samples)),
        ]));
        assert_eq!(r.interval, Some(21600));
        assert_eq!(r.num, Some(1234));
        let s: Vec<_> = r.samples.unwrap().iter().collect();
        assert_eq!(s, vec![&[3u8; 20], &[4u8; 20]]);
        let r = parse(&response(&[("samples", bs(&[0; 45]))]));
        assert_eq!(r.samples.unwrap().len(), 2);
        assert_eq!(kinds(&r), vec![("dht_bad_length", "samples")]);
    }

    #[test]
    fn unknown_keys_are_listed() {
        let d = dict(&[
            (
                "a",
                dict(&[
                    ("id", bs(ID)),
                    ("info_hash", bs(IH)),
                    ("nodes", bs(b"")),
                    ("zz", int(1)),
                ]),
            ),
            ("q", bs(b"get_peers")),
            ("t", bs(b"aa")),
            ("x-top", bs(b"?")),
            ("y", bs(b"q")),
        ]);
        let m = parse(&d);
        let unknown: Vec<_> = m
            .unknown_keys()
            .map(|(s, k)| (s.as_str(), String::from_utf8_lossy(k).into_owned()))
            .collect();
        // `nodes` is a response key, so inside `a` it is unknown too.
        assert_eq!(
            unknown,
            vec![
                ("", "x-top".to_string()),
                ("a", "nodes".to_string()),
                ("a", "zz".to_string())
            ]
        );
        assert!(m.nodes.is_none());
        // All kept: in walk order (the body sits before `x-top`), listed
        // top level first they are what `unknown_keys` walks.
        let kept = m.kept_unknown_keys().expect("3 keys are kept");
        let walk: Vec<_> = kept.iter().map(|(s, k)| (s.as_str(), *k)).collect();
        assert_eq!(walk, [("a", &b"nodes"[..]), ("a", b"zz"), ("", b"x-top")]);
        let top_first: Vec<_> = kept
            .iter()
            .filter(|(s, _)| *s == KeyScope::Top)
            .chain(kept.iter().filter(|(s, _)| *s != KeyScope::Top))
            .copied()
            .collect();
        assert_eq!(top_first, m.unknown_keys().collect::<Vec<_>>());
        // More unknown keys than the walk keeps: listed by walking again,
        // in the same order (top level, then the body).
        let d = dict(&[
            (
                "a",
                dict(&[("id", bs(ID)), ("k1", int(1)), ("k2", int(2)), ("k3", int(3))]),
            ),
            ("q", bs(b"ping")),
            ("t", bs(b"aa")),
            ("x1", int(1)),
            ("x2", int(2)),
            ("y", bs(b"q")),
        ]);
        let m = parse(&d);
        let unknown: Vec<_> = m
            .unknown_keys()
            .map(|(s, k)| format!("{}.{}", s.as_str(), String::from_utf8_lossy(k)))
            .collect();
        assert!(m.n_unknown_keys() > UNKNOWN_KEPT);
        assert_eq!(unknown, [".x1", ".x2", "a.k1", "a.k2", "a.k3"]);
        assert!(m.kept_unknown_keys().is_none(), "some were not kept");
        // None at all: an empty list.
        let m = parse(&query("ping", &[]));
        assert_eq!(m.kept_unknown_keys(), Some(&[][..]));
    }

    #[test]
    fn malformed_parts_are_anomalies() {
        // nodes of 9 bytes (as in the suricata-verify capture).
        let m = parse(b"d1:rd2:id20:0123456789abcdefghij5:nodes9:def456...e1:t2:aa1:y1:re");
        assert_eq!(kinds(&m), vec![("dht_bad_length", "nodes")]);
        assert_eq!(m.n_nodes(), 0);
        assert_eq!(m.id, Some(b"0123456789abcdefghij"));

        // 1.5 nodes: the whole one stays usable.
        let mut nodes = node4(9, [1, 1, 1, 1], 1);
        nodes.extend_from_slice(&[0; 13]);
        let m = parse(&response(&[("nodes", bs(&nodes))]));
        assert_eq!(m.n_nodes(), 1);
        assert_eq!(m.nodes.unwrap().iter().count(), 1);
        assert_eq!(kinds(&m), vec![("dht_bad_length", "nodes")]);

        // values entries of wrong size and type are skipped, one anomaly.
        let m = parse(&response(&[("values", b"l6:axje.u7:1234567i5e6:idhtnme".to_vec())]));
        assert_eq!(m.n_values(), 2);
        assert_eq!(m.values.unwrap().iter().count(), 2);
        assert_eq!(kinds(&m), vec![("dht_bad_entry", "values")]);

        // Missing tid (suricata-verify frame 15), bad id, bad port, wrong types.
        let m = parse(b"d1:ad2:id19:abcdefghij012345678e1:q4:ping1:y1:qe");
        assert_eq!(m.tid, b"");
        assert!(m.id.is_none());
        assert_eq!(kinds(&m), vec![("dht_missing_field", "t"), ("dht_bad_length", "id")]);
        let m = parse(&query(
            "announce_peer",
            &[("info_hash", bs(b"short")), ("port", int(70000)), ("token", int(5))],
        ));
        assert_eq!(
            kinds(&m),
            vec![
                ("dht_bad_length", "info_hash"),
                ("dht_out_of_range", "port"),
                ("dht_wrong_type", "token"),
            ]
        );
        let m = parse(&query("ping", &[("port", int(-1))]));
        assert_eq!(kinds(&m), vec![("dht_out_of_range", "port")]);

        // Structure problems: no body, no q, no id, trailing bytes, dup keys.
        let m = parse(b"d1:t2:aa1:y1:qe");
        assert_eq!(kinds(&m), vec![("dht_missing_field", "q"), ("dht_missing_field", "a")]);
        let m = parse(b"d1:rde1:t2:aa1:y1:reXX");
        assert_eq!(kinds(&m), vec![("dht_trailing_bytes", ""), ("dht_missing_field", "id")]);
        let m = parse(b"d1:t2:aa1:t2:bb1:y1:e1:eli1eee");
        assert_eq!(m.tid, b"aa");
        assert_eq!(m.error_code, Some(1));
        assert_eq!(kinds(&m), vec![("dht_duplicate_key", "t"), ("dht_bad_length", "e")]);
        let m = parse(b"d1:t2:aa1:y1:ee");
        assert_eq!(kinds(&m), vec![("dht_missing_field", "e")]);
        let m = parse(b"d1:a3:xyz1:q4:ping1:t2:aa1:y1:qe");
        assert_eq!(kinds(&m), vec![("dht_wrong_type", "a")]);
        let m = parse(b"d2:ip3:abc1:rd2:id20:0123456789abcdefghije1:t0:1:y1:re");
        assert_eq!(kinds(&m), vec![("dht_bad_length", "ip")]);
    }

    #[test]
    fn many_anomalies_are_counted_beyond_the_kept_ones() {
        let mut a = vec![("id", bs(b"x"))];
        for k in [
            "target",
            "info_hash",
            "token",
            "port",
            "implied_port",
            "seed",
            "n",
            "want",
            "scrape",
            "noseed",
        ] {
            a.push((k, b"le".to_vec()));
        }
        let d = dict(&[("a", dict(&a)), ("q", bs(b"x")), ("y", bs(b"q"))]);
        let m = parse(&d);
        assert_eq!(m.anomalies().len(), MAX_ANOMALIES_KEPT);
        // id + 9 wrong types (want accepts a list) + missing t.
        assert_eq!(m.n_anomalies(), 11);
    }

    #[test]
    fn errors_for_non_krpc() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "bencode_truncated"),
            (b"hello", "bencode_not_a_dict"),
            (b"li1ee", "bencode_not_a_dict"),
            (b"d1:t2:aae", "dht_missing_y"),
            (b"d1:yi1ee", "dht_missing_y"),
            (b"d1:y1:xe", "dht_unknown_y"),
            (b"d1:y1:q", "bencode_truncated"),
            // uTP SYN and a UDP tracker connect request.
            (b"\x41\x00\x12\x34\x00\x00\x00\x00", "bencode_not_a_dict"),
            (
                b"\x00\x00\x04\x17\x27\x10\x19\x80\x00\x00\x00\x00\x12\x34\x56\x78",
                "bencode_not_a_dict",
            ),
        ];
        for (d, want) in cases {
            let e = parse_krpc(d, &lim()).unwrap_err();
            assert_eq!(e.kind(), *want, "{d:?}");
            assert!(!looks_like_krpc(d) || *want == "dht_missing_y" || *want == "dht_unknown_y");
        }
        let big = vec![b'd'; lim().max_datagram_bytes + 1];
        assert_eq!(parse_krpc(&big, &lim()).unwrap_err(), DhtError::TooLarge);
        assert_eq!(DhtError::TooLarge.to_string(), "dht_too_large");
    }

    #[test]
    fn hostile_inputs_never_panic() {
        let n = 100_000;
        let mut deep = b"d1:t2:aa1:y1:q1:a".to_vec();
        deep.extend(vec![b'l'; n]);
        deep.extend(vec![b'e'; n]);
        deep.push(b'e');
        let small = DhtLimits {
            max_datagram_bytes: usize::MAX,
            ..lim()
        };
        assert_eq!(
            parse_krpc(&deep, &small).unwrap_err(),
            DhtError::Bencode(BencodeError::TooDeep)
        );
        let mut huge_int = b"d1:ad4:porti".to_vec();
        huge_int.extend(vec![b'9'; 10_000]);
        huge_int.extend(b"eee1:t2:aa1:y1:qe");
        assert_eq!(
            parse_krpc(&huge_int, &lim()).unwrap_err(),
            DhtError::Bencode(BencodeError::BadInt)
        );
        let past_end = b"d1:rd5:nodes999999:abce1:t2:aa1:y1:re";
        assert_eq!(
            parse_krpc(past_end, &lim()).unwrap_err(),
            DhtError::Bencode(BencodeError::Truncated)
        );
        for cut in 0..past_end.len() {
            let _ = parse_krpc(&past_end[..cut], &lim());
        }
    }

    /// xorshift64*: deterministic randomness without a dependency.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Touches every accessor; none may panic.
    fn exercise(m: &KrpcMessage<'_>) -> usize {
        let mut n = m.anomalies().len() + m.unknown_keys().count();
        n += m.nodes.map_or(0, |x| x.iter().count());
        n += m.nodes6.map_or(0, |x| x.iter().count());
        n += m.values.map_or(0, |x| x.iter().count());
        n += m.samples.map_or(0, |x| x.iter().count());
        n += m.client().map_or(0, |c| c.len());
        if let Some(id) = m.id {
            n += usize::from(bep42_id_matches(IpAddr::V4(Ipv4Addr::LOCALHOST), id));
        }
        n
    }

    #[test]
    fn random_mutations_never_panic() {
        let mut nodes = node4(1, [1, 2, 3, 4], 5);
        nodes.extend(node4(2, [5, 6, 7, 8], 9));
        let seeds = [
            query("announce_peer", &[("info_hash", bs(IH)), ("port", int(1))]),
            response(&[("nodes", bs(&nodes)), ("values", b"l6:abcdefe".to_vec())]),
            response(&[("samples", bs(&[1; 40])), ("nodes6", bs(&[2; 38]))]),
            b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee".to_vec(),
            dict(&[("ip", bs(&[1; 18])), ("r", dict(&[])), ("y", bs(b"r"))]),
        ];
        let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
        let mut n_ok = 0;
        for round in 0..100_000 {
            let mut d = seeds[round % seeds.len()].clone();
            for _ in 0..=rng.below(3) {
                match rng.below(4) {
                    0 if !d.is_empty() => {
                        let i = rng.below(d.len());
                        d[i] = rng.next() as u8;
                    }
                    1 if !d.is_empty() => {
                        let i = rng.below(d.len());
                        d[i] = b"ilde:0123456789"[rng.below(15)];
                    }
                    2 => d.truncate(rng.below(d.len() + 1)),
                    _ => {
                        let i = rng.below(d.len() + 1);
                        d.insert(i, b"ilde:5"[rng.below(6)]);
                    }
                }
            }
            let _ = looks_like_krpc(&d);
            if let Ok(m) = parse_krpc(&d, &lim()) {
                exercise(&m);
                n_ok += 1;
            }
        }
        assert!(n_ok > 1000, "only {n_ok} mutated messages parsed");
    }

    #[test]
    fn client_versions() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"LT\x01\x2f", Some("libtorrent 1.2.15")),
            (b"LT\x02\x08", Some("libtorrent 2.0.8")),
            (b"LT\x01\x01", Some("libtorrent 1.0.1")),
            (b"LT\x00\x10", Some("libtorrent 0.16")),
            (b"lt\x0d\x60", Some("libTorrent (rakshasa) 0.13.6")),
            (b"TR\x02\x5e", Some("Transmission 2.94")),
            (b"TR\x03\x00", Some("Transmission 3.00")),
            (b"UT\x38\x7a", Some("µTorrent build 14458")),
            (b"UM\x07\x48", Some("µTorrent Mac build 1864")),
            (b"GR\x00\x01", Some("GetRight 0001")),
            (b"ml\x00\x19", Some("MLDonkey 0019")),
            (b"A2\x00\x03", Some("aria2 0003")),
            (b"JB\x00\x00", Some("JB 0000")),
            (b"LT\x01", None),
            (b"LT\x01\x02\x03", None),
            (b"\x00\x01\x02\x03", None),
        ];
        for (v, want) in cases {
            assert_eq!(client_from_version(v).as_deref(), *want, "{v:?}");
        }
    }

    fn hex20(s: &str) -> [u8; 20] {
        let mut out = [0u8; 20];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn crc32c_check_value() {
        // The standard CRC catalogue check value for CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn bep42_vectors() {
        // The test vectors published in BEP 42.
        let vectors = [
            ("124.31.75.21", "5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401"),
            ("21.75.31.124", "5a3ce9c14e7a08645677bbd1cfe7d8f956d53256"),
            ("65.23.51.170", "a5d43220bc8f112a3d426c84764f8c2a1150e616"),
            ("84.124.73.14", "1b0321dd1bb1fe518101ceef99462b947a01ff41"),
            ("43.213.53.83", "e56f6cbf5b7c4be0237986d5243b87aa6d51305a"),
        ];
        for (ip, id) in vectors {
            let ip: IpAddr = ip.parse().unwrap();
            let id = hex20(id);
            assert!(bep42_id_matches(ip, &id), "{ip}");
            // Only the first 21 bits and r are bound: bit 21 matters, bit 22
            // and the middle bytes do not.
            let mut flipped = id;
            flipped[2] ^= 0x08;
            assert!(!bep42_id_matches(ip, &flipped), "{ip} bit 21");
            let mut free = id;
            free[2] ^= 0x04;
            free[10] ^= 0xff;
            assert!(bep42_id_matches(ip, &free), "{ip} free bits");
            // Changing r changes the prefix.
            let mut other_r = id;
            other_r[19] ^= 0x01;
            assert!(!bep42_id_matches(ip, &other_r), "{ip} r");
            assert!(!bep42_exempt(ip));
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let id = [0u8; 20];
        // Deterministic, and agrees with building a compliant prefix by hand.
        let mut masked = [0x20u8 & 0x01, 0x01 & 0x03, 0x0d & 0x07, 0xb8 & 0x0f, 0, 0, 0, 0];
        masked[0] |= 0;
        let crc = crc32c(&masked).to_be_bytes();
        let mut good = id;
        good[0] = crc[0];
        good[1] = crc[1];
        good[2] = crc[2] & 0xf8;
        assert!(bep42_id_matches(v6, &good));
        assert!(!bep42_id_matches(v6, &[0xff; 20]));
        for local in [
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "127.0.0.1",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "fd00::1",
        ] {
            assert!(bep42_exempt(local.parse().unwrap()), "{local}");
        }
    }

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pending_pairs_and_expires() {
        let limits = DhtLimits {
            max_pending: 4,
            query_timeout_us: 1_000,
            ..lim()
        };
        let mut p = PendingQueries::new(&limits);
        let (a, b, c) = (ep("1.1.1.1:1"), ep("2.2.2.2:2"), ep("3.3.3.3:3"));
        let q = |ts| PendingQuery {
            method: Method::GetPeers,
            ts_us: ts,
            frame: ts,
            info_hash: None,
        };
        assert_eq!(p.insert(b"aa", a, b, q(10)), InsertOutcome::Inserted);
        assert_eq!(p.insert(b"aa", a, c, q(11)), InsertOutcome::Inserted);
        assert_eq!(p.insert(b"aa", a, b, q(12)), InsertOutcome::Replaced);
        // Wrong direction or wrong tid: no match.
        assert!(p.take(b"aa", b, a).is_none());
        assert!(p.take(b"ab", a, b).is_none());
        assert_eq!(p.n_unmatched, 2);
        assert_eq!(p.take(b"aa", a, b), Some(q(12)));
        assert!(p.take(b"aa", a, b).is_none());
        assert_eq!(p.len(), 1);
        // The stale order entries for (aa, a, b) do not expire the live one.
        assert_eq!(p.expire(1_010), 0);
        assert_eq!(p.expire(1_011), 1);
        assert!(p.is_empty());
        assert_eq!(p.n_expired, 1);
        let long = [7u8; MAX_TID_LEN + 1];
        assert_eq!(p.insert(&long, a, b, q(1)), InsertOutcome::TidTooLong);
        assert_eq!(p.n_tid_too_long, 1);
        assert!(p.take(&long, a, b).is_none());
    }

    #[test]
    fn pending_is_bounded_under_a_flood() {
        let limits = DhtLimits {
            max_pending: 100,
            ..lim()
        };
        let mut p = PendingQueries::new(&limits);
        let (a, b) = (ep("1.1.1.1:1"), ep("[::2]:2"));
        for i in 0u32..100_000 {
            let q = PendingQuery {
                method: Method::Ping,
                ts_us: u64::from(i),
                frame: u64::from(i),
                info_hash: None,
            };
            p.insert(&i.to_be_bytes(), a, b, q);
            // Answer every other query, so stale order entries pile up too.
            if i % 2 == 0 {
                assert!(p.take(&i.to_be_bytes(), a, b).is_some());
            }
            assert!(p.len() <= 100);
            assert!(p.order.len() <= 201, "order queue grew to {}", p.order.len());
        }
        // The newest queries survived; the oldest were evicted and counted.
        assert!(p.take(&99_999u32.to_be_bytes(), a, b).is_some());
        assert!(p.take(&1u32.to_be_bytes(), a, b).is_none());
        assert_eq!(p.n_evicted, 50_000 - 100);
    }

    // -----------------------------------------------------------------------
    // Real captures (../shared/corpus/public); when absent, `crate::require`'s
    // rule (a failure under SWARMTAP_REQUIRE_ALL, else a recorded skip).
    // -----------------------------------------------------------------------

    struct Datagram {
        frame: u64,
        src: SocketAddr,
        dst: SocketAddr,
        payload: Vec<u8>,
    }

    /// Minimal classic-pcap reader for the corpus checks: Ethernet (with an
    /// optional 802.1Q tag), unfragmented IPv4, UDP. Anything else is skipped.
    fn udp_datagrams(file: &[u8]) -> Option<Vec<Datagram>> {
        let magic = file.get(..4)?;
        let le = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
            _ => return None,
        };
        let u32_at = |b: &[u8], at: usize| -> Option<u32> {
            let w: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
            Some(if le {
                u32::from_le_bytes(w)
            } else {
                u32::from_be_bytes(w)
            })
        };
        if u32_at(file, 20)? != 1 {
            return None;
        }
        let be16 =
            |b: &[u8], at: usize| -> Option<u16> { Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?)) };
        let mut out = Vec::new();
        let mut pos = 24;
        let mut frame = 0;
        while pos + 16 <= file.len() {
            frame += 1;
            let incl = u32_at(file, pos + 8)? as usize;
            let pkt = file.get(pos + 16..pos + 16 + incl)?;
            pos += 16 + incl;
            let mut l3 = 14;
            let mut ethertype = be16(pkt, 12)?;
            if ethertype == 0x8100 {
                ethertype = be16(pkt, 16)?;
                l3 = 18;
            }
            if ethertype != 0x0800 {
                continue;
            }
            let ip = pkt.get(l3..)?;
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let frag = be16(ip, 6)? & 0x3fff;
            if *ip.get(9)? != 17 || frag != 0 {
                continue;
            }
            let v4 = |at: usize| -> Option<Ipv4Addr> {
                let o: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
                Some(Ipv4Addr::from(o))
            };
            let udp = ip.get(ihl..)?;
            let ulen = usize::from(be16(udp, 4)?);
            out.push(Datagram {
                frame,
                src: SocketAddr::new(IpAddr::V4(v4(12)?), be16(udp, 0)?),
                dst: SocketAddr::new(IpAddr::V4(v4(16)?), be16(udp, 2)?),
                payload: udp.get(8..ulen)?.to_vec(),
            });
        }
        Some(out)
    }

    #[track_caller]
    fn corpus(rel: &str) -> Option<Vec<u8>> {
        crate::require::corpus_file(env!("CARGO_MANIFEST_DIR"), rel)
    }

    /// Our view of one message in the compact form used by the expectations
    /// below: `frame kind[:method][:nN][:vN]`, node/value counts only where
    /// tshark prints them (responses with `nodes` / `values`).
    fn summary(frame: u64, m: &KrpcMessage<'_>) -> String {
        let mut s = format!("{frame} {}", &m.kind.as_str()[..1]);
        if let Some(method) = m.method {
            s.push(':');
            s.push_str(method.as_str());
        }
        if m.kind == KrpcKind::Response {
            if let Some(n) = m.nodes {
                s.push_str(&format!(":n{}", n.len()));
            }
            if let Some(v) = m.values {
                s.push_str(&format!(":v{}", v.len()));
            }
        }
        s
    }

    /// Checks every UDP payload of a capture parses as KRPC and matches the
    /// expectations, which were taken from tshark 4.0.17
    /// (`tshark -r F -Y bt-dht -O bt-dht -V`: "Message type", "Request type",
    /// and the "nodes: N" / "values: N peers" lines).
    fn check_capture(rel: &str, expected: &str) -> Option<Vec<(Datagram, String)>> {
        let file = corpus(rel)?;
        let datagrams = udp_datagrams(&file).expect("a classic Ethernet pcap");
        let want: Vec<&str> = expected.split(',').map(str::trim).collect();
        let mut got = Vec::new();
        let mut out = Vec::new();
        for dg in datagrams {
            assert!(looks_like_krpc(&dg.payload), "frame {}", dg.frame);
            let m = match parse_krpc(&dg.payload, &lim()) {
                Ok(m) => m,
                Err(e) => panic!("{rel} frame {}: {e}", dg.frame),
            };
            exercise(&m);
            let old = reference::parse_krpc(&dg.payload, &lim());
            assert!(
                reference::same(&old, &Ok(m)),
                "{rel} frame {}: the old parser differs",
                dg.frame
            );
            got.push(summary(dg.frame, &m));
            let anomalies = kinds(&m)
                .iter()
                .map(|(k, f)| format!("{k}:{f}"))
                .collect::<Vec<_>>()
                .join(" ");
            out.push((dg, anomalies));
        }
        assert_eq!(got, want, "{rel}");
        Some(out)
    }

    #[test]
    fn corpus_suricata_verify() {
        let expected = "1 q:ping, 2 r, 3 q:ping, 4 e, 5 q:find_node, 6 r:n0, \
            7 q:get_peers, 8 r:v2, 9 q:get_peers, 10 r:n0, 11 q:announce_peer, 12 r, \
            13 q:announce_peer, 14 r, 15 q:ping, 16 e";
        let Some(msgs) = check_capture("OISF__suricata-verify/input.pcap", expected) else {
            return;
        };
        // The capture's deliberate defects surface as anomalies.
        let anomalies: Vec<(u64, &str)> = msgs
            .iter()
            .filter(|(_, a)| !a.is_empty())
            .map(|(d, a)| (d.frame, a.as_str()))
            .collect();
        assert_eq!(
            anomalies,
            vec![
                (6, "dht_bad_length:nodes"),
                (10, "dht_bad_length:nodes"),
                (15, "dht_missing_field:t"),
            ]
        );
        let m = parse(&msgs[7].0.payload);
        let peers: Vec<SocketAddr> = m.values.unwrap().iter().collect();
        // tshark: "Peer 1 (IP/Port: 97.120.106.101:11893)".
        assert_eq!(peers[0], ep("97.120.106.101:11893"));
        assert_eq!(
            parse(&msgs[4].0.payload).client().as_deref(),
            Some("µTorrent build 12337")
        );
        let m = parse(&msgs[12].0.payload);
        assert_eq!((m.port, m.implied_port), (Some(6881), Some(true)));
        assert_eq!(parse(&msgs[15].0.payload).error_code, Some(203));

        // Pairing: every response/error but the last answers the query
        // before it; frame 15 has no tid, so error 16 stays unmatched.
        let mut pending = PendingQueries::new(&lim());
        let mut paired = Vec::new();
        for (dg, _) in &msgs {
            let m = parse(&dg.payload);
            match m.kind {
                KrpcKind::Query => {
                    pending.insert(
                        m.tid,
                        dg.src,
                        dg.dst,
                        PendingQuery {
                            method: m.method.unwrap_or(Method::Other),
                            ts_us: dg.frame,
                            frame: dg.frame,
                            info_hash: m.info_hash.copied(),
                        },
                    );
                }
                _ => {
                    if let Some(q) = pending.take(m.tid, dg.dst, dg.src) {
                        paired.push((q.frame, dg.frame, q.method.as_str()));
                    }
                }
            }
        }
        assert_eq!(
            paired,
            vec![
                (1, 2, "ping"),
                (3, 4, "ping"),
                (5, 6, "find_node"),
                (7, 8, "get_peers"),
                (9, 10, "get_peers"),
                (11, 12, "announce_peer"),
                (13, 14, "announce_peer"),
            ]
        );
        assert_eq!(pending.n_unmatched, 1);
    }

    #[test]
    fn corpus_camp0_incc() {
        let expected = "1 q:ping, 2 q:ping, 3 r, 4 r, 5 q:get_peers, 6 q:get_peers, 7 r:n8, \
            8 q:announce_peer, 9 r, 10 q:find_node, 11 r:n8, 12 q:ping, 14 q:ping, \
            15 q:get_peers, 16 q:find_node, 17 q:ping, 18 q:get_peers, 19 q:get_peers, \
            20 q:find_node, 21 q:get_peers, 22 q:get_peers, 23 q:get_peers, 24 q:get_peers, \
            25 q:find_node, 26 q:get_peers, 27 q:find_node, 28 q:get_peers, 29 q:get_peers, \
            30 q:find_node, 31 r:n8, 32 r:v1, 33 q:get_peers, 34 q:find_node, 35 q:ping, \
            36 q:ping, 37 q:ping, 38 q:ping, 40 q:announce_peer, 41 q:ping, 42 q:ping, 43 r, \
            44 q:ping, 45 q:ping, 46 q:ping, 47 q:ping, 48 r, 49 q:ping, 50 q:ping, 51 q:ping, \
            52 r, 53 q:ping, 54 r, 55 q:ping, 56 q:ping, 57 q:ping, 58 q:get_peers, 59 r:v1, \
            60 q:announce_peer, 61 r, 62 q:get_peers, 63 r:v2, 64 q:announce_peer, \
            65 q:get_peers, 66 r:v2, 67 q:announce_peer, 68 r, 69 q:get_peers, 70 q:get_peers, \
            71 r:v3, 72 r:v3, 73 q:get_peers, 74 r:v3, 75 q:announce_peer, 76 r, \
            77 q:get_peers, 78 r:v4";
        let Some(msgs) = check_capture("camp0__incc/torrent-dht.pcap", expected) else {
            return;
        };
        assert_eq!(msgs.len(), 76);
        for (dg, anomalies) in &msgs {
            assert_eq!(anomalies, "", "frame {}", dg.frame);
            assert_eq!(parse(&dg.payload).unknown_keys().count(), 0, "frame {}", dg.frame);
        }
        // Frame 32 returns one IPv6 peer (an 18-byte value).
        let m = parse(&msgs.iter().find(|(d, _)| d.frame == 32).unwrap().0.payload);
        assert!(m.values.unwrap().iter().all(|p| p.is_ipv6()));
        let versions: std::collections::BTreeSet<String> =
            msgs.iter().filter_map(|(d, _)| parse(&d.payload).client()).collect();
        assert!(versions.contains("µTorrent build 14458"), "{versions:?}");
    }
}
