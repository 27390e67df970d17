//! Mainline DHT (BEP 5 KRPC and its extensions) above the parser.
//!
//! Two halves, split by where they run:
//! - [`DhtShard`] runs inside a flow shard, once per KRPC datagram: it parses
//!   ([`crate::proto::dht`]), pairs responses and errors with their queries
//!   (a query and its answer travel on one UDP flow, so on one shard),
//!   writes `dht_messages` and `dht_peers` rows, pushes the peers it learns
//!   as [`SwarmEvent`]s (`peers.sources` gets `dht`), reports anomalies and
//!   emits [`DhtObservation`]s for the run-wide tables.
//! - [`DhtAggregate`] runs once, sequentially, in the pipeline: it folds the
//!   observations in frame order into `dht_nodes` (one row per node id and
//!   address) and `dht_infohashes` (one row per info hash named), written at
//!   the end of the run.
//!
//! Bounds: the pending-query table ([`crate::proto::dht::DhtLimits::max_pending`],
//! split over shards) and the aggregate tables (`Limits::max_dht_nodes`,
//! `Limits::max_dht_infohashes`) are fixed; what does not fit is counted and
//! reported in `anomalies`.

use hashbrown::hash_map::Entry as AggEntry;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::{Claim, FrameCtx, PeerSource, ShardOut, SwarmEvent, SwarmEventKind};
use crate::config::Limits;
use crate::proto::dht::{
    bep42_exempt, bep42_id_matches, client_from_version, parse_krpc_with, DhtLimits, InsertOutcome, KeyScope, KrpcKind,
    KrpcMessage, Method, PendingQueries, PendingQuery, BLOOM_LEN, ID_LEN, NODE4_LEN, NODE6_LEN,
};
use crate::proto::metainfo::hex;
use crate::sink::{AnomalyRow, DhtInfohashRow, DhtMessageRow, DhtNodeRow, DhtPeerRow, Ip, RowBatch, ShortBytes, Ts};

/// Longest text kept from free-form wire strings (torrent names, error
/// messages, unknown method names and keys): enough to read, bounded so a
/// hostile datagram cannot make every row large.
const MAX_TEXT_BYTES: usize = 256;
/// Unknown key names listed per message (the rest are counted in
/// `n_unknown_keys`).
const MAX_UNKNOWN_KEYS_LISTED: usize = 32;

/// Lossy UTF-8 of at most [`MAX_TEXT_BYTES`] bytes.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b.get(..MAX_TEXT_BYTES).unwrap_or(b)).into_owned()
}

/// How an info hash was named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfohashVia {
    /// In a get_peers query.
    GetPeers,
    /// In an announce_peer query.
    AnnouncePeer,
    /// Peers returned for it (`values` of a paired get_peers response).
    Values(u32),
    /// In BEP 51 `samples`.
    Sample,
}

/// What a shard saw that the run-wide DHT tables aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhtSeen {
    /// `addr` sent a message with node id `id`.
    Sender {
        id: [u8; ID_LEN],
        addr: SocketAddr,
        kind: KrpcKind,
        /// Top-level `v` when it is the usual 4 bytes.
        version: Option<[u8; 4]>,
        read_only: bool,
    },
    /// The nodes a response lists in `nodes` / `nodes6`, as sent (compact
    /// entries of 26 / 38 bytes), each one reported in that order, IPv4
    /// first. One observation a response instead of one a node: a
    /// response lists 8 or so, and each observation is pushed, merged
    /// into frame order and walked once more (dht-125k: 251,765 nodes in
    /// 31 k responses).
    Reported { nodes: Box<[u8]>, nodes6: Box<[u8]> },
    /// An info hash was named.
    Infohash {
        info_hash: [u8; ID_LEN],
        via: InfohashVia,
        /// Torrent name sent along (`n` / `name`), if any.
        name: Option<String>,
    },
}

/// One observation, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtObservation {
    pub ctx: FrameCtx,
    pub seen: DhtSeen,
}

/// BEP 33: estimated number of distinct items in a 2048-bit bloom filter
/// with k = 2 hash functions, from the count `c` of zero bits:
/// `ln(c / m) / (k · ln(1 − 1/m))`. A full filter (c = 0) is taken as c = 1,
/// its upper bound, as libtorrent does.
fn bloom_estimate(filter: &[u8]) -> Option<u64> {
    if filter.len() != BLOOM_LEN {
        return None;
    }
    let m = (BLOOM_LEN * 8) as f64;
    let zeros: u32 = filter.iter().map(|b| b.count_zeros()).sum();
    let c = f64::from(zeros.max(1));
    let n = (c / m).ln() / (2.0 * (1.0 - 1.0 / m).ln());
    Some(n.round().max(0.0) as u64)
}

/// Client names of 4-byte `v` values ([`client_from_version`]), made once
/// per distinct value and shared by every row that carries it: a KRPC row
/// then allocates nothing for its `version`. Bounded: past
/// [`ClientNames::MAX`] distinct values (a hostile sender varies `v`) a
/// name is made per row instead of kept.
#[derive(Debug, Default)]
pub struct ClientNames {
    /// Keyed by the 4 bytes as one integer: hashed as one word (a byte
    /// array is hashed as a slice: its length, then its bytes).
    map: HashMap<u32, Option<Arc<str>>, foldhash::fast::RandomState>,
}

impl ClientNames {
    /// Distinct `v` values kept: real captures hold a few dozen (clients
    /// times versions); 4,096 entries are about 160 KB.
    pub const MAX: usize = 4096;

    pub fn name(&mut self, v: &[u8]) -> Option<Arc<str>> {
        let key = u32::from_le_bytes(v.try_into().ok()?);
        if let Some(n) = self.map.get(&key) {
            return n.clone();
        }
        let n: Option<Arc<str>> = client_from_version(v).map(Into::into);
        if self.map.len() < Self::MAX {
            self.map.insert(key, n.clone());
        }
        n
    }
}

/// Per-shard DHT state: the bounded table of outstanding queries.
#[derive(Debug)]
pub struct DhtShard {
    limits: DhtLimits,
    pending: PendingQueries,
    names: ClientNames,
}

impl DhtShard {
    /// `limits.dht.max_pending` is for the whole run; each of the `n_shards`
    /// shards gets an even share (at least 16).
    pub fn new(limits: &Limits, n_shards: usize) -> Self {
        let mut l = limits.dht;
        l.max_pending = (l.max_pending / n_shards.max(1)).max(16);
        DhtShard {
            limits: l,
            pending: PendingQueries::new(&l),
            names: ClientNames::default(),
        }
    }

    /// One datagram that looks like KRPC, sent `src` → `dst` on flow
    /// `conn_id`. Returns false when it is not KRPC after all (an anomaly
    /// has been written).
    pub fn datagram(
        &mut self,
        ctx: FrameCtx,
        conn_id: u64,
        src: SocketAddr,
        dst: SocketAddr,
        d: &[u8],
        out: &mut ShardOut,
    ) -> bool {
        self.pending.expire(u64::try_from(ctx.ts).unwrap_or(0));
        // The message is read where the parse built it (not moved out).
        let limits = self.limits;
        match parse_krpc_with(d, &limits, |m| self.message(ctx, conn_id, src, dst, m, out)) {
            Ok(()) => true,
            Err(e) => {
                out.anomaly_with(Some(ctx), Some(conn_id), "dht", e.kind(), || {
                    Some(format!("{e}: {} bytes from {src}", d.len()))
                });
                false
            }
        }
    }

    /// A parsed KRPC message of [`DhtShard::datagram`]: its anomalies,
    /// pairing, rows, events and observations.
    #[inline(always)]
    fn message(
        &mut self,
        ctx: FrameCtx,
        conn_id: u64,
        src: SocketAddr,
        dst: SocketAddr,
        m: &KrpcMessage<'_>,
        out: &mut ShardOut,
    ) {
        for a in m.anomalies() {
            out.anomaly_with(Some(ctx), Some(conn_id), "dht", a.kind.as_str(), || {
                Some(format!("key `{}`", a.field))
            });
        }
        let n_more = m.n_anomalies() as usize - m.anomalies().len();
        if n_more > 0 {
            out.anomaly(
                Some(ctx),
                Some(conn_id),
                "dht",
                "dht_more_anomalies",
                Some(format!("{n_more} more anomalies in this message")),
            );
        }

        // Pairing: a query waits; a response or error takes its query.
        let mut query: Option<PendingQuery> = None;
        match m.kind {
            KrpcKind::Query => {
                let q = PendingQuery {
                    method: m.method.unwrap_or(Method::Other),
                    ts_us: u64::try_from(ctx.ts).unwrap_or(0),
                    frame: ctx.frame,
                    info_hash: m.info_hash.copied(),
                };
                let max_pending = self.limits.max_pending;
                match self.pending.insert(m.tid, src, dst, q) {
                    InsertOutcome::EvictedOldest => {
                        out.anomaly_with(Some(ctx), Some(conn_id), "dht", "dht_pending_full", || {
                            Some(format!(
                                "oldest outstanding query dropped (max {max_pending} per shard)"
                            ))
                        })
                    }
                    InsertOutcome::TidTooLong => {
                        out.anomaly_with(Some(ctx), Some(conn_id), "dht", "dht_tid_too_long", || {
                            Some(format!("{}-byte transaction id not tracked", m.tid.len()))
                        })
                    }
                    InsertOutcome::Inserted | InsertOutcome::Replaced => {}
                }
            }
            KrpcKind::Response | KrpcKind::Error => query = self.pending.take(m.tid, dst, src),
        }

        self.peers(ctx, conn_id, src, m, query, out);
        self.observe(ctx, src, m, query, out);
        let capture = out.capture_text(ctx.capture);
        out.rows
            .dht_messages
            .push(message_row(ctx, capture, src, dst, m, query, &mut self.names));
    }

    /// `dht_peers` rows and `Learned` events: `values` of a get_peers
    /// response, and the querier of an announce_peer.
    fn peers(
        &self,
        ctx: FrameCtx,
        conn_id: u64,
        src: SocketAddr,
        m: &KrpcMessage<'_>,
        query: Option<PendingQuery>,
        out: &mut ShardOut,
    ) {
        let add = |out: &mut ShardOut, ih: Option<[u8; ID_LEN]>, peer: SocketAddr, via: &'static str| {
            let capture = out.capture_text(ctx.capture);
            out.rows.dht_peers.push(DhtPeerRow {
                ts: Ts(ctx.ts),
                frame: ctx.frame,
                capture,
                info_hash: ih,
                peer_ip: Ip(peer.ip()),
                peer_port: u32::from(peer.port()),
                via,
                reporter_ip: Ip(src.ip()),
                reporter_port: u32::from(src.port()),
            });
            if let Some(info_hash) = ih {
                out.events.push(SwarmEvent {
                    ctx,
                    conn_id,
                    info_hash,
                    peer,
                    kind: SwarmEventKind::Learned {
                        source: PeerSource::Dht,
                    },
                });
            }
        };
        match m.kind {
            KrpcKind::Response => {
                if let Some(values) = m.values {
                    let ih = query.and_then(|q| q.info_hash);
                    for peer in values.iter() {
                        add(out, ih, peer, "values");
                    }
                }
            }
            KrpcKind::Query if m.method == Some(Method::AnnouncePeer) => {
                // BEP 5: with implied_port = 1 the peer's port is the UDP
                // source port (it sits behind a NAT), else `port`.
                let port = if m.implied_port == Some(true) {
                    Some(src.port())
                } else {
                    m.port
                };
                if let (Some(ih), Some(port)) = (m.info_hash, port) {
                    let peer = SocketAddr::new(src.ip(), port);
                    add(out, Some(*ih), peer, "announce_peer");
                    // BEP 33: the announcer says it is a seed.
                    if m.seed == Some(true) {
                        out.events.push(SwarmEvent {
                            ctx,
                            conn_id,
                            info_hash: *ih,
                            peer,
                            kind: SwarmEventKind::Claim(Claim::DhtSeed),
                        });
                    }
                }
            }
            _ => {}
        }
    }

    /// Observations for `dht_nodes` and `dht_infohashes`.
    fn observe(
        &self,
        ctx: FrameCtx,
        src: SocketAddr,
        m: &KrpcMessage<'_>,
        query: Option<PendingQuery>,
        out: &mut ShardOut,
    ) {
        let mut push = |seen| out.dht.push(DhtObservation { ctx, seen });
        if let Some(id) = m.id {
            push(DhtSeen::Sender {
                id: *id,
                addr: src,
                kind: m.kind,
                version: m.version.and_then(|v| v.try_into().ok()),
                read_only: m.read_only,
            });
        }
        let nodes = m.nodes.filter(|n| !n.is_empty()).map_or(&[][..], |n| n.raw());
        let nodes6 = m.nodes6.filter(|n| !n.is_empty()).map_or(&[][..], |n| n.raw());
        if !nodes.is_empty() || !nodes6.is_empty() {
            push(DhtSeen::Reported {
                nodes: nodes.into(),
                nodes6: nodes6.into(),
            });
        }
        let name = || m.name.map(text);
        match (m.kind, m.method, m.info_hash) {
            (KrpcKind::Query, Some(Method::GetPeers), Some(ih)) => push(DhtSeen::Infohash {
                info_hash: *ih,
                via: InfohashVia::GetPeers,
                name: name(),
            }),
            (KrpcKind::Query, Some(Method::AnnouncePeer), Some(ih)) => push(DhtSeen::Infohash {
                info_hash: *ih,
                via: InfohashVia::AnnouncePeer,
                name: name(),
            }),
            _ => {}
        }
        if m.kind == KrpcKind::Response {
            if let (Some(values), Some(ih)) = (m.values, query.and_then(|q| q.info_hash)) {
                push(DhtSeen::Infohash {
                    info_hash: ih,
                    via: InfohashVia::Values(u32::try_from(values.len()).unwrap_or(u32::MAX)),
                    name: None,
                });
            }
        }
        if let Some(samples) = m.samples {
            for ih in samples.iter() {
                push(DhtSeen::Infohash {
                    info_hash: *ih,
                    via: InfohashVia::Sample,
                    name: None,
                });
            }
        }
    }
}

/// The row of a KRPC message the shard saw: built whole, where it is
/// pushed (a row is ~650 bytes; built, patched and returned it was copied
/// three times).
#[inline(always)]
fn message_row(
    ctx: FrameCtx,
    capture: Arc<str>,
    src: SocketAddr,
    dst: SocketAddr,
    m: &KrpcMessage<'_>,
    query: Option<PendingQuery>,
    names: &mut ClientNames,
) -> DhtMessageRow {
    krpc_row_at(
        RowPlace {
            ts_us: ctx.ts,
            frame: ctx.frame,
            capture,
            query_frame: query.map(|q| q.frame),
        },
        src,
        dst,
        m,
        query.map(|q| q.method),
        query.map(|q| (ctx.ts - i64::try_from(q.ts_us).unwrap_or(i64::MAX)) as f64 / 1000.0),
        names,
    )
}

/// Where a KRPC row comes from: its time, frame, capture and the frame of
/// its paired query.
struct RowPlace {
    ts_us: i64,
    frame: u64,
    capture: Arc<str>,
    query_frame: Option<u64>,
}

/// The `dht_messages` row of one KRPC message (frame 0, capture empty, no
/// query frame: the caller fills those in). `query_method`: the method of
/// the paired query for a response or error; `rtt_ms` its response time.
/// Shared by the passive pipeline and the probe's own DHT node, so both
/// write the same columns the same way.
pub fn krpc_row(
    ts_us: i64,
    src: SocketAddr,
    dst: SocketAddr,
    m: &KrpcMessage<'_>,
    query_method: Option<Method>,
    rtt_ms: Option<f64>,
) -> DhtMessageRow {
    krpc_row_named(ts_us, src, dst, m, query_method, rtt_ms, &mut ClientNames::default())
}

/// [`krpc_row`] with the client names kept in `names`. Nothing is
/// allocated for a message without free text (an unknown method, an error
/// message, a name, unknown keys, `want`, BEP 44 `k`): ids, addresses and
/// the transaction id stay bytes until the sink writes them.
pub fn krpc_row_named(
    ts_us: i64,
    src: SocketAddr,
    dst: SocketAddr,
    m: &KrpcMessage<'_>,
    query_method: Option<Method>,
    rtt_ms: Option<f64>,
    names: &mut ClientNames,
) -> DhtMessageRow {
    krpc_row_at(
        RowPlace {
            ts_us,
            frame: 0,
            capture: Arc::default(),
            query_frame: None,
        },
        src,
        dst,
        m,
        query_method,
        rtt_ms,
        names,
    )
}

/// [`krpc_row_named`] with its frame, capture and query frame.
#[inline(always)]
fn krpc_row_at(
    at: RowPlace,
    src: SocketAddr,
    dst: SocketAddr,
    m: &KrpcMessage<'_>,
    query_method: Option<Method>,
    rtt_ms: Option<f64>,
    names: &mut ClientNames,
) -> DhtMessageRow {
    let RowPlace {
        ts_us,
        frame,
        capture,
        query_frame,
    } = at;
    let method: Option<Cow<'static, str>> = match (m.method, m.method_name) {
        (Some(Method::Other), Some(name)) => Some(Cow::Owned(text(name))),
        (Some(method), _) => Some(Cow::Borrowed(method.as_str())),
        (None, _) => query_method.map(|q| Cow::Borrowed(q.as_str())),
    };
    let mut unknown_keys = Vec::new();
    let mut n_unknown_keys = 0u64;
    let mut list = |scope: KeyScope, key: &[u8]| {
        n_unknown_keys += 1;
        if unknown_keys.len() < MAX_UNKNOWN_KEYS_LISTED {
            let scope = scope.as_str();
            unknown_keys.push(if scope.is_empty() {
                text(key)
            } else {
                // `text(key)` after the scope, in one allocation (a third
                // of dht-125k's responses carry `r.p`).
                let key = String::from_utf8_lossy(key.get(..MAX_TEXT_BYTES).unwrap_or(key));
                let mut k = String::with_capacity(scope.len() + 1 + key.len());
                k.push_str(scope);
                k.push('.');
                k.push_str(&key);
                k
            });
        }
    };
    // Most messages have none: not even an iterator. Those with a few
    // (a third of dht-125k's responses carry `r.p`) list the ones the
    // parse kept, top level first, as `unknown_keys` does; moving that
    // iterator (two copies of the kept keys) cost ~150 instructions a
    // message with one.
    if m.n_unknown_keys() > 0 {
        match m.kept_unknown_keys() {
            Some(kept) => {
                let top = kept.iter().filter(|(s, _)| *s == KeyScope::Top);
                let body = kept.iter().filter(|(s, _)| *s != KeyScope::Top);
                for &(scope, key) in top.chain(body) {
                    list(scope, key);
                }
            }
            None => {
                for (scope, key) in m.unknown_keys() {
                    list(scope, key);
                }
            }
        }
    }
    DhtMessageRow {
        ts: Ts(ts_us),
        frame,
        capture,
        src_ip: Ip(src.ip()),
        src_port: u32::from(src.port()),
        dst_ip: Ip(dst.ip()),
        dst_port: u32::from(dst.port()),
        tid: ShortBytes::new(m.tid),
        kind: m.kind.as_str(),
        method,
        node_id: m.id.copied(),
        target: m.target.copied(),
        info_hash: m.info_hash.copied(),
        n_nodes: (m.n_nodes() + m.nodes6.map_or(0, |n| n.len())) as u64,
        n_nodes6: m.nodes6.map_or(0, |n| n.len()) as u64,
        n_values: m.n_values() as u64,
        version: m.version.and_then(|v| names.name(v)),
        version_raw: m.version.map(ShortBytes::new),
        rtt_ms,
        query_frame,
        error_code: m.error_code,
        error_msg: m.error_msg.map(text),
        read_only: m.read_only,
        external_ip: m.ip.map(|a| Ip(a.ip())),
        external_port: m.ip.map(|a| u32::from(a.port())),
        port: m.port.map(u32::from),
        implied_port: m.implied_port,
        seed: m.seed,
        name: m.name.map(text),
        want: m
            .want
            .map(|w| {
                w.list
                    .iter()
                    .filter_map(|v| v.as_bytes())
                    .take(MAX_UNKNOWN_KEYS_LISTED)
                    .map(text)
                    .collect()
            })
            .unwrap_or_default(),
        scrape: m.scrape,
        scrape_seeds: m.bf_seeds.and_then(bloom_estimate),
        scrape_peers: m.bf_peers.and_then(bloom_estimate),
        bep44_key: m.key.map(hex),
        bep44_seq: m.seq,
        n_samples: m.samples.map(|s| s.len() as u64),
        sample_num: m.num,
        sample_interval: m.interval,
        unknown_keys,
        n_unknown_keys,
        n_anomalies: u64::from(m.n_anomalies()),
    }
}

// ---------------------------------------------------------------------------
// Run-wide aggregates
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct NodeState {
    /// Order of first sight, for a reproducible row order.
    seq: u64,
    first_ts: i64,
    last_ts: i64,
    n_queries: u64,
    n_responses: u64,
    n_errors: u64,
    n_reported: u64,
    version: Option<[u8; 4]>,
    read_only: bool,
}

#[derive(Debug, Clone)]
struct InfohashState {
    seq: u64,
    first_ts: i64,
    last_ts: i64,
    n_get_peers: u64,
    n_announce_peer: u64,
    n_values: u64,
    n_samples: u64,
    name: Option<Box<str>>,
}

/// A node's key in the run-wide table: id, address and port packed into
/// 39 bytes (a `SocketAddr` alone takes 32), IPv4 kept as its mapped IPv6
/// form with a flag so that an IPv4-mapped address sent in `nodes6` stays
/// IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodeKey {
    id: [u8; ID_LEN],
    ip: [u8; 16],
    port: [u8; 2],
    v4: bool,
}

/// Three words instead of four length-prefixed byte strings (the derived
/// hash): every field goes in, so equal keys hash equal and the table's
/// order-free use (rows come out in order of first sight) is unchanged.
impl std::hash::Hash for NodeKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let [a, b, c, d, e, f, g, i, j, k, l, m, n, o, p, q, r, s, t, u] = self.id;
        h.write_u128(u128::from_le_bytes([a, b, c, d, e, f, g, i, j, k, l, m, n, o, p, q]));
        h.write_u64(u64::from_le_bytes([
            r,
            s,
            t,
            u,
            self.port[0],
            self.port[1],
            u8::from(self.v4),
            0,
        ]));
        h.write_u128(u128::from_le_bytes(self.ip));
    }
}

impl NodeKey {
    fn new(id: [u8; ID_LEN], addr: SocketAddr) -> NodeKey {
        let (ip, v4) = match addr.ip() {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), true),
            IpAddr::V6(a) => (a.octets(), false),
        };
        NodeKey {
            id,
            ip,
            port: addr.port().to_be_bytes(),
            v4,
        }
    }

    /// The key of a `nodes` entry as sent (id, IPv4 address, port in
    /// network order), equal to [`NodeKey::new`] of what
    /// `CompactNodes4::iter` reads from it, without the round trip
    /// through a `SocketAddr`.
    fn compact4(e: &[u8; NODE4_LEN]) -> NodeKey {
        let [id @ .., a, b, c, d, p0, p1] = *e;
        NodeKey {
            id,
            ip: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d],
            port: [p0, p1],
            v4: true,
        }
    }

    /// The same for a `nodes6` entry (id, IPv6 address, port): an
    /// IPv4-mapped address stays IPv6, as in [`NodeKey::new`].
    fn compact6(e: &[u8; NODE6_LEN]) -> NodeKey {
        let (id, rest) = e.split_at(ID_LEN);
        let (ip, port) = rest.split_at(16);
        NodeKey {
            id: id.try_into().unwrap_or([0; ID_LEN]),
            ip: ip.try_into().unwrap_or([0; 16]),
            port: port.try_into().unwrap_or([0; 2]),
            v4: false,
        }
    }

    fn addr(&self) -> SocketAddr {
        let v6 = Ipv6Addr::from(self.ip);
        let ip = match (self.v4, v6.to_ipv4_mapped()) {
            (true, Some(a)) => IpAddr::V4(a),
            _ => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, u16::from_be_bytes(self.port))
    }
}

/// The aggregate tables' map: the stage's (keyhash: foldhash with a
/// per-process random seed, since node ids and info hashes are chosen by
/// the sender). hashbrown's own map because its default `inline-more` lets
/// `entry` inline into `node` and `apply_one` whichever code-generation
/// unit the instance lands in: with std's map the merged session 12 build
/// lost that inlining (dht-125k's stage +31 M instructions, bench/README.md
/// "Session 12 — final main").
type AggMap<K, V> = super::keyhash::Map<K, V>;

/// The run-wide `dht_nodes` and `dht_infohashes` state (sequential).
#[derive(Debug, Clone)]
pub struct DhtAggregate {
    max_nodes: usize,
    max_infohashes: usize,
    nodes: AggMap<NodeKey, NodeState>,
    infohashes: AggMap<[u8; ID_LEN], InfohashState>,
    next_seq: u64,
    /// Observations of nodes not tracked because the table was full.
    pub n_nodes_dropped: u64,
    /// Observations of info hashes not tracked because the table was full.
    pub n_infohashes_dropped: u64,
}

impl DhtAggregate {
    pub fn new(limits: &Limits) -> Self {
        DhtAggregate {
            max_nodes: limits.max_dht_nodes,
            max_infohashes: limits.max_dht_infohashes,
            nodes: AggMap::default(),
            infohashes: AggMap::default(),
            next_seq: 0,
            n_nodes_dropped: 0,
            n_infohashes_dropped: 0,
        }
    }

    /// Folds a batch of observations, already in frame order.
    pub fn apply(&mut self, obs: Vec<DhtObservation>) {
        for o in obs {
            self.apply_one(o);
        }
    }

    fn node(&mut self, id: [u8; ID_LEN], addr: SocketAddr, ts: i64) -> Option<&mut NodeState> {
        self.node_at(NodeKey::new(id, addr), ts)
    }

    fn node_at(&mut self, key: NodeKey, ts: i64) -> Option<&mut NodeState> {
        let len = self.nodes.len();
        let n = match self.nodes.entry(key) {
            AggEntry::Occupied(e) => e.into_mut(),
            AggEntry::Vacant(_) if len >= self.max_nodes => {
                self.n_nodes_dropped += 1;
                return None;
            }
            AggEntry::Vacant(e) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                e.insert(NodeState {
                    seq,
                    first_ts: ts,
                    last_ts: ts,
                    n_queries: 0,
                    n_responses: 0,
                    n_errors: 0,
                    n_reported: 0,
                    version: None,
                    read_only: false,
                })
            }
        };
        n.first_ts = n.first_ts.min(ts);
        n.last_ts = n.last_ts.max(ts);
        Some(n)
    }

    /// Nodes listed in a response (see [`DhtSeen::Reported`]), kept out
    /// of `apply_one` (dht-125k stage 183.2 -> 180.3 M instructions with
    /// the loops there and here). Each entry is keyed from its bytes
    /// ([`NodeKey::compact4`], [`NodeKey::compact6`]), in the order
    /// `CompactNodes4::iter` and `CompactNodes6::iter` read them (a
    /// trailing partial entry skipped): dht-125k 40.7 -> ~34.8 M.
    #[inline(never)]
    fn reported(&mut self, nodes: &[u8], nodes6: &[u8], ts: i64) {
        for e in nodes.chunks_exact(NODE4_LEN).filter_map(|e| e.try_into().ok()) {
            if let Some(n) = self.node_at(NodeKey::compact4(e), ts) {
                n.n_reported += 1;
            }
        }
        for e in nodes6.chunks_exact(NODE6_LEN).filter_map(|e| e.try_into().ok()) {
            if let Some(n) = self.node_at(NodeKey::compact6(e), ts) {
                n.n_reported += 1;
            }
        }
    }

    fn apply_one(&mut self, o: DhtObservation) {
        let ts = o.ctx.ts;
        match o.seen {
            DhtSeen::Sender {
                id,
                addr,
                kind,
                version,
                read_only,
            } => {
                let Some(n) = self.node(id, addr, ts) else { return };
                match kind {
                    KrpcKind::Query => n.n_queries += 1,
                    KrpcKind::Response => n.n_responses += 1,
                    KrpcKind::Error => n.n_errors += 1,
                }
                if version.is_some() {
                    n.version = version;
                }
                n.read_only |= read_only;
            }
            DhtSeen::Reported { nodes, nodes6 } => self.reported(&nodes, &nodes6, ts),
            DhtSeen::Infohash { info_hash, via, name } => {
                let len = self.infohashes.len();
                let s = match self.infohashes.entry(info_hash) {
                    AggEntry::Occupied(e) => e.into_mut(),
                    AggEntry::Vacant(_) if len >= self.max_infohashes => {
                        self.n_infohashes_dropped += 1;
                        return;
                    }
                    AggEntry::Vacant(e) => {
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        e.insert(InfohashState {
                            seq,
                            first_ts: ts,
                            last_ts: ts,
                            n_get_peers: 0,
                            n_announce_peer: 0,
                            n_values: 0,
                            n_samples: 0,
                            name: None,
                        })
                    }
                };
                s.first_ts = s.first_ts.min(ts);
                s.last_ts = s.last_ts.max(ts);
                match via {
                    InfohashVia::GetPeers => s.n_get_peers += 1,
                    InfohashVia::AnnouncePeer => s.n_announce_peer += 1,
                    InfohashVia::Values(n) => s.n_values += u64::from(n),
                    InfohashVia::Sample => s.n_samples += 1,
                }
                if s.name.is_none() {
                    s.name = name.map(String::into_boxed_str);
                }
            }
        }
    }

    /// Nodes tracked now.
    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Live capture: the `dht_nodes` and `dht_infohashes` rows as of now,
    /// state unchanged (computed on a copy, bounded by the table limits).
    pub fn snapshot(&self, rows: &mut RowBatch) {
        let mut tmp = RowBatch::default();
        self.clone().finish(&mut tmp);
        rows.dht_nodes.append(&mut tmp.dht_nodes);
        rows.dht_infohashes.append(&mut tmp.dht_infohashes);
    }

    /// Live capture: forgets nodes and info hashes last seen before
    /// `cutoff` (packet time), after a snapshot wrote their last state.
    pub fn expire_idle(&mut self, cutoff: i64) {
        self.nodes.retain(|_, n| n.last_ts >= cutoff);
        self.infohashes.retain(|_, s| s.last_ts >= cutoff);
    }

    /// Writes `dht_nodes` and `dht_infohashes` (in order of first sight) and
    /// an anomaly for each table that overflowed.
    pub fn finish(self, rows: &mut RowBatch) {
        let mut nodes: Vec<_> = self.nodes.into_iter().collect();
        nodes.sort_unstable_by_key(|(_, n)| n.seq);
        rows.dht_nodes.extend(
            nodes
                .into_iter()
                .map(|(key, n)| (key.id, key.addr(), n))
                .map(|(id, addr, n)| DhtNodeRow {
                    node_id: id,
                    node_ip: Ip(addr.ip()),
                    node_port: u32::from(addr.port()),
                    first_ts: Ts(n.first_ts),
                    last_ts: Ts(n.last_ts),
                    n_messages: n.n_queries + n.n_responses + n.n_errors,
                    n_queries: n.n_queries,
                    n_responses: n.n_responses,
                    n_errors: n.n_errors,
                    n_reported: n.n_reported,
                    version: n.version.and_then(|v| client_from_version(&v)),
                    version_raw: n.version.map(|v| hex(&v)),
                    bep42_valid: bep42_id_matches(addr.ip(), &id),
                    bep42_exempt: bep42_exempt(addr.ip()),
                    read_only: n.read_only,
                }),
        );
        let mut ihs: Vec<_> = self.infohashes.into_iter().collect();
        ihs.sort_unstable_by_key(|(_, s)| s.seq);
        rows.dht_infohashes
            .extend(ihs.into_iter().map(|(ih, s)| DhtInfohashRow {
                info_hash: ih,
                first_ts: Ts(s.first_ts),
                last_ts: Ts(s.last_ts),
                n_get_peers: s.n_get_peers,
                n_announce_peer: s.n_announce_peer,
                n_values: s.n_values,
                n_samples: s.n_samples,
                name: s.name.map(String::from),
            }));
        for (n, kind, what, max) in [
            (
                self.n_nodes_dropped,
                "dht_node_table_full",
                "node observations",
                self.max_nodes,
            ),
            (
                self.n_infohashes_dropped,
                "dht_infohash_table_full",
                "info hash observations",
                self.max_infohashes,
            ),
        ] {
            if n > 0 {
                rows.anomalies.push(AnomalyRow {
                    layer: "dht",
                    kind: kind.into(),
                    detail: Some(format!("{n} {what} not tracked (max {max})")),
                    ..Default::default()
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::dht::{CompactNodes4, CompactNodes6};

    /// A node's key made from its `nodes` / `nodes6` bytes equals the key
    /// of what the wire crate's iterators read from them, for every byte
    /// position varied (IPv4, IPv6, an IPv4-mapped address in `nodes6`,
    /// port 0 and 65535), and the entries come in the same order with a
    /// trailing partial entry skipped.
    #[test]
    fn compact_node_keys_equal_the_keys_of_their_addresses() {
        let mut seed = 0x9e37_79b9u32;
        let mut byte = || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) as u8
        };
        let mut nodes: Vec<u8> = (0..NODE4_LEN * 40).map(|_| byte()).collect();
        let mut nodes6: Vec<u8> = (0..NODE6_LEN * 40).map(|_| byte()).collect();
        nodes[NODE4_LEN - 2..NODE4_LEN].copy_from_slice(&[0, 0]);
        nodes[2 * NODE4_LEN - 2..2 * NODE4_LEN].copy_from_slice(&[0xff, 0xff]);
        // An IPv4-mapped address sent in `nodes6`: stays IPv6.
        nodes6[ID_LEN..ID_LEN + 16].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1]);
        nodes.extend([1, 2, 3]);
        nodes6.extend([4; NODE6_LEN - 1]);
        let by_addr4: Vec<NodeKey> = CompactNodes4::new(&nodes)
            .iter()
            .map(|(id, a)| NodeKey::new(*id, SocketAddr::V4(a)))
            .collect();
        let by_bytes4: Vec<NodeKey> = nodes
            .chunks_exact(NODE4_LEN)
            .filter_map(|e| e.try_into().ok())
            .map(NodeKey::compact4)
            .collect();
        assert_eq!(by_addr4.len(), 40);
        assert_eq!(by_bytes4, by_addr4);
        let by_addr6: Vec<NodeKey> = CompactNodes6::new(&nodes6)
            .iter()
            .map(|(id, a)| NodeKey::new(*id, SocketAddr::V6(a)))
            .collect();
        let by_bytes6: Vec<NodeKey> = nodes6
            .chunks_exact(NODE6_LEN)
            .filter_map(|e| e.try_into().ok())
            .map(NodeKey::compact6)
            .collect();
        assert_eq!(by_addr6.len(), 40);
        assert_eq!(by_bytes6, by_addr6);
        assert!(!by_bytes6[0].v4, "an IPv4-mapped address in nodes6 stays IPv6");
        assert!(by_bytes4.iter().all(|k| k.v4));
        // Each key reads its address back.
        for ((id, a), k) in CompactNodes4::new(&nodes).iter().zip(&by_bytes4) {
            assert_eq!((k.id, k.addr()), (*id, SocketAddr::V4(a)));
        }
    }

    /// A bencoded KRPC message: `y` kind, transaction id `t`, and the rest
    /// of the top-level dictionary as already-encoded `key value` pairs
    /// (keys in order).
    fn krpc(parts: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut v = b"d".to_vec();
        for (k, val) in parts {
            v.extend(format!("{}:{k}", k.len()).into_bytes());
            v.extend(val);
        }
        v.push(b'e');
        v
    }

    fn bstr(b: &[u8]) -> Vec<u8> {
        let mut v = format!("{}:", b.len()).into_bytes();
        v.extend_from_slice(b);
        v
    }

    /// Pairing from raw datagrams: a get_peers query from Q to R, then four
    /// answers with the same transaction id: from Q to R (the wrong
    /// direction: Q is the querier), from a third node to Q, from R to Q
    /// (the real answer), and from R to Q again (already taken). Only the
    /// real one is paired: 25 ms after its query, with the query's method
    /// and frame, and its `values` peers carry the query's info hash and R
    /// as the reporter.
    #[test]
    fn a_response_pairs_only_with_the_query_it_answers() {
        let q: SocketAddr = "10.0.0.1:6881".parse().unwrap_or_else(|_| unreachable!());
        let resp: SocketAddr = "10.0.0.2:7000".parse().unwrap_or_else(|_| unreachable!());
        let other: SocketAddr = "10.0.0.3:7000".parse().unwrap_or_else(|_| unreachable!());
        let ih = [0x11u8; 20];
        let mut args = b"d2:id".to_vec();
        args.extend(bstr(&[1; 20]));
        args.extend(b"9:info_hash");
        args.extend(bstr(&ih));
        args.push(b'e');
        let query = krpc(&[
            ("a", args),
            ("q", bstr(b"get_peers")),
            ("t", bstr(b"aa")),
            ("y", bstr(b"q")),
        ]);
        let answer = |id: u8| {
            let mut r = b"d2:id".to_vec();
            r.extend(bstr(&[id; 20]));
            r.extend(b"5:token");
            r.extend(bstr(b"tok"));
            r.extend(b"6:valuesl");
            r.extend(bstr(&[192, 0, 2, id, 0x1a, 0xe1]));
            r.extend(b"ee");
            krpc(&[("r", r), ("t", bstr(b"aa")), ("y", bstr(b"r"))])
        };
        let mut shard = DhtShard::new(&Limits::default(), 1);
        let mut out = ShardOut::default();
        let ctx = |frame: u64, ts: i64| FrameCtx { ts, frame, capture: 0 };
        let sent = [
            (ctx(1, 1_000_000), q, resp, query),
            (ctx(2, 1_010_000), q, resp, answer(9)),
            (ctx(3, 1_015_000), other, q, answer(3)),
            (ctx(4, 1_025_000), resp, q, answer(2)),
            (ctx(5, 1_030_000), resp, q, answer(2)),
        ];
        for (c, src, dst, d) in &sent {
            assert!(shard.datagram(*c, 77, *src, *dst, d, &mut out), "frame {}", c.frame);
        }
        let rows = &out.rows.dht_messages;
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.frame,
                    r.kind,
                    r.query_frame,
                    r.rtt_ms,
                    r.method.as_deref().map(String::from),
                )
            })
            .collect();
        let gp = Some("get_peers".to_string());
        assert_eq!(
            got,
            vec![
                (1, "query", None, None, gp.clone()),
                (2, "response", None, None, None),
                (3, "response", None, None, None),
                (4, "response", Some(1), Some(25.0), gp),
                (5, "response", None, None, None),
            ]
        );
        // The paired answer's peers are the query's torrent's, reported by
        // R; unpaired answers' peers have no torrent.
        let peers: Vec<_> = out
            .rows
            .dht_peers
            .iter()
            .map(|p| {
                (
                    p.frame,
                    p.info_hash.map(|h| hex(&h)),
                    p.peer_ip.0.to_string(),
                    p.reporter_ip.0.to_string(),
                )
            })
            .collect();
        assert_eq!(
            peers,
            vec![
                (2, None, "192.0.2.9".into(), "10.0.0.1".into()),
                (3, None, "192.0.2.3".into(), "10.0.0.3".into()),
                (4, Some(hex(&ih)), "192.0.2.2".into(), "10.0.0.2".into()),
                (5, None, "192.0.2.2".into(), "10.0.0.2".into()),
            ]
        );
        let learned: Vec<_> = out.events.iter().map(|e| (e.ctx.frame, e.info_hash, e.peer)).collect();
        let p2: SocketAddr = "192.0.2.2:6881".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(learned, vec![(4, ih, p2)]);
    }

    #[test]
    fn node_keys_keep_the_address_and_its_family() {
        for a in ["1.2.3.4:5", "[2001:db8::1]:6881", "[::ffff:1.2.3.4]:5", "0.0.0.0:0"] {
            let addr: SocketAddr = a.parse().unwrap_or_else(|_| unreachable!());
            let k = NodeKey::new([7; 20], addr);
            assert_eq!((k.id, k.addr()), ([7; 20], addr), "{a}");
        }
        let v4: SocketAddr = "1.2.3.4:5".parse().unwrap_or_else(|_| unreachable!());
        let mapped: SocketAddr = "[::ffff:1.2.3.4]:5".parse().unwrap_or_else(|_| unreachable!());
        assert_ne!(NodeKey::new([7; 20], v4), NodeKey::new([7; 20], mapped));
        assert!(std::mem::size_of::<NodeKey>() <= 40);
    }

    #[test]
    fn bloom_estimates() {
        assert_eq!(bloom_estimate(&[0u8; BLOOM_LEN]), Some(0));
        assert_eq!(bloom_estimate(&[0u8; 10]), None);
        // Two bits set: one item (k = 2).
        let mut f = [0u8; BLOOM_LEN];
        f[0] = 0b11;
        assert_eq!(bloom_estimate(&f), Some(1));
        // Full filter: the estimate saturates instead of diverging.
        let full = bloom_estimate(&[0xff; BLOOM_LEN]).unwrap_or(0);
        assert!((7000..8000).contains(&full), "{full}");
    }

    #[test]
    fn aggregate_is_bounded_and_ordered() {
        let limits = Limits {
            max_dht_nodes: 2,
            max_dht_infohashes: 1,
            ..Limits::default()
        };
        let mut agg = DhtAggregate::new(&limits);
        let ctx = |frame| FrameCtx {
            ts: frame as i64 * 1000,
            frame,
            capture: 0,
        };
        let addr: SocketAddr = "1.2.3.4:5".parse().unwrap_or_else(|_| unreachable!());
        // Compact IPv4 node entries of `addr` (26 bytes each).
        let reported = |ids: &[u8]| {
            let nodes: Vec<u8> = ids
                .iter()
                .flat_map(|&i| [[i; 20].as_slice(), &[1, 2, 3, 4, 0, 5]].concat())
                .collect();
            DhtSeen::Reported {
                nodes: nodes.into(),
                nodes6: Box::default(),
            }
        };
        let obs = vec![
            DhtObservation {
                ctx: ctx(1),
                seen: reported(&[2]),
            },
            DhtObservation {
                ctx: ctx(2),
                seen: DhtSeen::Sender {
                    id: [1; 20],
                    addr,
                    kind: KrpcKind::Query,
                    version: Some(*b"LT\x01\x2f"),
                    read_only: false,
                },
            },
            DhtObservation {
                ctx: ctx(3),
                seen: reported(&[3]),
            },
            DhtObservation {
                ctx: ctx(4),
                seen: reported(&[2]),
            },
            DhtObservation {
                ctx: ctx(5),
                seen: DhtSeen::Infohash {
                    info_hash: [9; 20],
                    via: InfohashVia::GetPeers,
                    name: Some("x".into()),
                },
            },
            DhtObservation {
                ctx: ctx(6),
                seen: DhtSeen::Infohash {
                    info_hash: [8; 20],
                    via: InfohashVia::Sample,
                    name: None,
                },
            },
        ];
        agg.apply(obs);
        let mut rows = RowBatch::default();
        agg.finish(&mut rows);
        let ids: Vec<String> = rows.dht_nodes.iter().map(|r| hex(&r.node_id)).collect();
        assert_eq!(ids, vec!["02".repeat(20), "01".repeat(20)]);
        assert_eq!(rows.dht_nodes[0].n_reported, 2);
        assert_eq!(rows.dht_nodes[0].last_ts, Ts(4000));
        assert_eq!(rows.dht_nodes[1].version.as_deref(), Some("libtorrent 1.2.15"));
        assert_eq!(rows.dht_infohashes.len(), 1);
        assert_eq!(rows.dht_infohashes[0].name.as_deref(), Some("x"));
        let kinds: Vec<&str> = rows.anomalies.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, vec!["dht_node_table_full", "dht_infohash_table_full"]);
    }
}
