//! The probe's own DHT node (BEP 5): a routing table, iterative get_peers
//! per target info hash, and the KRPC encoders it needs. Responses are read
//! with the passive pipeline's parser ([`parse_krpc`]) and every message we
//! send or receive becomes a `dht_messages` row built by the passive
//! pipeline's row builder ([`krpc_row`]), so a capture of the probe decodes
//! to the same rows.
//!
//! Read-only (BEP 43): our queries carry `ro` = 1, so other nodes do not put
//! us in their routing tables and do not send us their lookups; we take no
//! share of the DHT's storage. We still answer `ping` (one small reply, no
//! state), since a node that sees our address may check it; every other
//! incoming query is counted and left unanswered (a read-only node is not
//! expected to serve them).
//!
//! Split in two: [`Node`] is the protocol state machine (no I/O, time passed
//! in, so tests drive it exactly), [`run`] the tokio driver around one UDP
//! socket. Bounds are in [`DhtNodeLimits`]; hostile input never panics and
//! is counted in [`DhtStats`].
//!
//! IPv4 and IPv6 (BEP 32): one node per address family, as libtorrent
//! runs them, each with its own socket, routing table and lookups, started
//! when a bootstrap address of that family is given. The IPv6 node follows
//! `nodes6` and asks for them (`want` = `n6`); the IPv4 node follows
//! `nodes` and sends no `want` (BEP 32: the default is the querier's own
//! family). `values` of either may hold peers of both families (6- and
//! 18-byte compact), which are all kept. The IPv6 socket is IPv6-only, on
//! the same port number as the IPv4 one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::targets::{self, AddrPolicy};
use crate::analyze::dht::krpc_row;
use crate::proto::dht::{parse_krpc, DhtLimits, KrpcKind, KrpcMessage, Method, ID_LEN};
use crate::sink::DhtMessageRow;

pub type NodeId = [u8; ID_LEN];

/// Bounds of the DHT node, each with its reason.
#[derive(Debug, Clone, Copy)]
pub struct DhtNodeLimits {
    /// Bucket size and lookup width (BEP 5: K = 8).
    pub k: usize,
    /// Queries in flight per lookup (Kademlia's alpha; libtorrent uses 3 by
    /// default as `search_branching`).
    pub alpha: usize,
    /// Nodes kept in the routing table, replacement caches included. 160
    /// buckets × (8 live + 8 spare) = 2560 is the most a table can hold; a
    /// real table has ~20 buckets (≈ 320 nodes, ~40 KB).
    pub max_nodes: usize,
    /// Queries awaiting an answer at once, all lookups together: bounds the
    /// transaction table and the burst we can cause.
    pub max_outstanding: usize,
    /// Queries sent per second, all together (token bucket, burst of one
    /// second). Keeps the probe a light DHT user: libtorrent's default
    /// `dht_upload_rate_limit` is 8 KB/s ≈ 50 small queries/s.
    pub queries_per_sec: f64,
    /// Peers kept from one lookup's `values`: a get_peers answer carries
    /// ~100 at most (one datagram); 2000 covers the k closest nodes of a
    /// very large swarm while bounding what a liar can inject.
    pub max_values_per_lookup: usize,
    /// Queries one lookup may send: a lookup converges in ~log2(N)/... hops
    /// of alpha queries (30–60 on the real DHT); past this it ends.
    pub max_queries_per_lookup: u32,
    /// Candidates a lookup remembers (closest first; farther ones dropped).
    pub max_candidates: usize,
    /// Compact nodes read from one response: an honest node sends K (8);
    /// more is counted as hostile and cut to this many.
    pub max_nodes_per_response: usize,
    /// A query unanswered this long has failed (libtorrent: ~5 s before
    /// it widens the search).
    pub query_timeout: Duration,
    /// A node that answered within this time is good (BEP 5: 15 minutes);
    /// afterwards it is questionable and pinged before it is trusted.
    pub good_for: Duration,
    /// Failed queries after which a node is bad and replaced (BEP 5 leaves
    /// it to the implementation; two failures in a row).
    pub bad_after: u8,
    /// KRPC datagrams waiting when the node shares the uTP port (handed
    /// over by the uTP socket): a second of queries at a busy node's rate
    /// (~100/s); past it they are dropped and counted, as a full socket
    /// buffer would drop them.
    pub max_queued_datagrams: usize,
}

impl Default for DhtNodeLimits {
    fn default() -> Self {
        DhtNodeLimits {
            k: 8,
            alpha: 3,
            max_nodes: 2560,
            max_outstanding: 64,
            queries_per_sec: 25.0,
            max_values_per_lookup: 2000,
            max_queries_per_lookup: 256,
            max_candidates: 64,
            max_nodes_per_response: 16,
            query_timeout: Duration::from_secs(5),
            good_for: Duration::from_secs(15 * 60),
            bad_after: 2,
            max_queued_datagrams: 128,
        }
    }
}

/// Counters of one node's life; hostile input lands here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhtStats {
    pub sent: u64,
    pub received: u64,
    pub responses: u64,
    pub errors_received: u64,
    pub timeouts: u64,
    /// Datagrams that are not KRPC (bad bencode, no `y`, too large).
    pub not_krpc: u64,
    /// Responses with an unknown transaction id, or from another address
    /// than the one queried.
    pub unmatched: u64,
    /// Responses without a valid 20-byte `id`.
    pub bad_id: u64,
    /// Responses carrying more nodes than `max_nodes_per_response`.
    pub too_many_nodes: u64,
    /// Nodes refused by the address policy (never queried).
    pub nodes_refused: u64,
    /// Nodes with port 0, an unspecified address, or our own id.
    pub nodes_invalid: u64,
    /// Peers dropped past `max_values_per_lookup`.
    pub values_over_cap: u64,
    /// Field-level anomalies the parser found in received messages.
    pub anomalies: u64,
    pub pings_answered: u64,
    /// Incoming queries other than ping (left unanswered: read-only node).
    pub queries_ignored: u64,
    pub lookups_done: u64,
}

/// BEP 33 bloom filters: 2048 bits, two hash functions.
pub const BLOOM_BITS: f64 = 2048.0;

/// BEP 33: how many distinct addresses a bloom filter (256 bytes, k = 2)
/// holds, from its zero bits: ln(c / m) / (k · ln(1 − 1/m)). A filter with
/// no zero bit is saturated: BEP 33 puts its size at 6000 or more, and so
/// do we.
pub fn bloom_estimate(bf: &[u8]) -> f64 {
    let zeros: u32 = bf.iter().map(|b| b.count_zeros()).sum();
    if zeros == 0 {
        return 6000.0;
    }
    if f64::from(zeros) >= BLOOM_BITS {
        return 0.0;
    }
    (f64::from(zeros) / BLOOM_BITS).ln() / (2.0 * (1.0 - 1.0 / BLOOM_BITS).ln())
}

/// A lookup's BEP 33 scrape: the union of the bloom filters of its get_peers
/// answers, as counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DhtScrape {
    /// Seeds (BFsd) and downloaders (BFpe), estimated.
    pub seeds: f64,
    pub peers: f64,
    /// Answers that carried the filters.
    pub n_answers: u32,
}

/// One finished lookup.
#[derive(Debug, Clone)]
pub struct LookupDone {
    pub torrent: Option<u32>,
    pub method: Method,
    pub target: NodeId,
    pub n_queries: u32,
    pub n_responses: u32,
    pub n_values: usize,
    /// Of the k closest nodes found, how many answered.
    pub n_closest_answered: usize,
    pub elapsed: Duration,
    /// get_peers asks for a BEP 33 scrape: the estimate, when any node
    /// answered with the filters.
    pub scrape: Option<DhtScrape>,
    /// Run by the IPv6 node (BEP 32).
    pub ipv6: bool,
}

/// Found peers, rows and finished lookups since the last report.
#[derive(Debug, Default)]
pub struct DhtReport {
    pub rows: Vec<DhtMessageRow>,
    /// (torrent, peer, node that listed it)
    pub found: Vec<(u32, SocketAddr, SocketAddr)>,
    pub lookups: Vec<LookupDone>,
    /// Set on the last report.
    pub stats: Option<DhtStats>,
    pub table_nodes: usize,
}

// ---------------------------------------------------------------------------
// KRPC encoding (bencode writer: dict keys must be written sorted)
// ---------------------------------------------------------------------------

/// Bencode writing helpers.
pub mod ben {
    pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(b.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(b);
    }
    pub fn int(out: &mut Vec<u8>, i: i64) {
        out.push(b'i');
        out.extend_from_slice(i.to_string().as_bytes());
        out.push(b'e');
    }
}

/// Our client version (`v`): two letters and two version bytes.
pub const VERSION: [u8; 4] = *b"SW\x00\x01";

/// A query: `a` = `args` (sorted key/value pairs, values already raw
/// bencoded), plus `ro` = 1 when read-only.
pub fn encode_query(tid: &[u8], method: &str, id: &NodeId, args: &[(&str, &[u8])], read_only: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"d1:ad");
    let mut all: Vec<(&str, Vec<u8>)> = vec![("id", {
        let mut v = Vec::new();
        ben::bytes(&mut v, id);
        v
    })];
    for (k, v) in args {
        all.push((k, v.to_vec()));
    }
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in all {
        ben::bytes(&mut out, k.as_bytes());
        out.extend_from_slice(&v);
    }
    out.push(b'e');
    ben::bytes(&mut out, b"q");
    ben::bytes(&mut out, method.as_bytes());
    if read_only {
        ben::bytes(&mut out, b"ro");
        ben::int(&mut out, 1);
    }
    ben::bytes(&mut out, b"t");
    ben::bytes(&mut out, tid);
    ben::bytes(&mut out, b"v");
    ben::bytes(&mut out, &VERSION);
    ben::bytes(&mut out, b"y");
    ben::bytes(&mut out, b"q");
    out.push(b'e');
    out
}

/// A bencoded 20-byte string, for `encode_query` args.
pub fn ben_id(id: &NodeId) -> Vec<u8> {
    let mut v = Vec::with_capacity(23);
    ben::bytes(&mut v, id);
    v
}

/// A response with `r` = `id` plus sorted raw-bencoded pairs.
pub fn encode_response(tid: &[u8], id: &NodeId, extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"d1:rd");
    let mut all: Vec<(&str, Vec<u8>)> = vec![("id", ben_id(id))];
    all.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in all {
        ben::bytes(&mut out, k.as_bytes());
        out.extend_from_slice(&v);
    }
    out.push(b'e');
    ben::bytes(&mut out, b"t");
    ben::bytes(&mut out, tid);
    ben::bytes(&mut out, b"v");
    ben::bytes(&mut out, &VERSION);
    ben::bytes(&mut out, b"y");
    ben::bytes(&mut out, b"r");
    out.push(b'e');
    out
}

/// Compact IPv4 node info (26 bytes each).
pub fn compact_nodes(nodes: &[(NodeId, SocketAddr)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nodes.len() * 26);
    for (id, a) in nodes {
        if let SocketAddr::V4(a) = a {
            out.extend_from_slice(id);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
    }
    out
}

/// Compact peer info: 6 bytes (IPv4) or 18 bytes (IPv6).
pub fn compact_peer(a: &SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    match a.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&a.port().to_be_bytes());
    out
}

// ---------------------------------------------------------------------------
// Routing table
// ---------------------------------------------------------------------------

pub fn distance(a: &NodeId, b: &NodeId) -> NodeId {
    let mut d = [0u8; ID_LEN];
    for i in 0..ID_LEN {
        d[i] = a[i] ^ b[i];
    }
    d
}

/// Leading bits `a` and `b` share (160 when equal).
pub fn common_prefix(a: &NodeId, b: &NodeId) -> usize {
    for i in 0..ID_LEN {
        let x = a[i] ^ b[i];
        if x != 0 {
            return i * 8 + x.leading_zeros() as usize;
        }
    }
    ID_LEN * 8
}

#[derive(Debug, Clone)]
pub struct TableNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// Last answer from it.
    pub last_ok: Instant,
    /// Failed queries since its last answer.
    pub fails: u8,
    /// A ping to check it is in flight.
    pub pinging: bool,
}

#[derive(Debug, Default, Clone)]
struct Bucket {
    live: Vec<TableNode>,
    /// Replacement cache: nodes heard while the bucket was full, newest last.
    spare: Vec<TableNode>,
}

/// What [`RoutingTable::heard`] did with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    Refreshed,
    Added,
    /// Took the place of a bad node.
    Replaced,
    /// Bucket full of good nodes: kept in its replacement cache.
    Spare,
    /// Our own id, a known id at another address, or the table is full.
    Ignored,
}

/// BEP 5 routing table: buckets of K nodes over the id space, the bucket
/// holding our own id split when full; nodes that stop answering become
/// bad and are replaced from the bucket's replacement cache.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    own: NodeId,
    k: usize,
    max_nodes: usize,
    bad_after: u8,
    buckets: Vec<Bucket>,
    n_nodes: usize,
}

impl RoutingTable {
    pub fn new(own: NodeId, limits: &DhtNodeLimits) -> Self {
        RoutingTable {
            own,
            k: limits.k.max(1),
            max_nodes: limits.max_nodes,
            bad_after: limits.bad_after.max(1),
            buckets: vec![Bucket::default()],
            n_nodes: 0,
        }
    }

    pub fn n_buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Live nodes (replacement caches not counted).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.live.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live and spare nodes.
    pub fn n_stored(&self) -> usize {
        self.n_nodes
    }

    /// Bytes held by the table (nodes and bucket vectors).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .buckets
                .iter()
                .map(|b| {
                    std::mem::size_of::<Bucket>()
                        + (b.live.capacity() + b.spare.capacity()) * std::mem::size_of::<TableNode>()
                })
                .sum::<usize>()
    }

    fn index(&self, id: &NodeId) -> usize {
        common_prefix(&self.own, id).min(self.buckets.len() - 1)
    }

    fn is_bad(&self, n: &TableNode) -> bool {
        n.fails >= self.bad_after
    }

    /// A node answered us (`now`): refresh, add, split, replace or cache it.
    pub fn heard(&mut self, id: NodeId, addr: SocketAddr, now: Instant) -> Heard {
        if id == self.own {
            return Heard::Ignored;
        }
        loop {
            let i = self.index(&id);
            let n_buckets = self.buckets.len();
            let k = self.k;
            let bad_after = self.bad_after;
            let b = &mut self.buckets[i];
            if let Some(n) = b.live.iter_mut().find(|n| n.id == id) {
                if n.addr != addr {
                    // An id moving address is either NAT churn or someone
                    // spoofing; keep the one we know.
                    return Heard::Ignored;
                }
                n.last_ok = now;
                n.fails = 0;
                n.pinging = false;
                return Heard::Refreshed;
            }
            let node = TableNode {
                id,
                addr,
                last_ok: now,
                fails: 0,
                pinging: false,
            };
            if b.live.len() < k {
                if b.live.iter().any(|n| n.addr == addr) {
                    return Heard::Ignored;
                }
                if self.n_nodes >= self.max_nodes {
                    return Heard::Ignored;
                }
                b.spare.retain(|n| n.id != id);
                b.live.push(node);
                self.n_nodes = self.buckets.iter().map(|b| b.live.len() + b.spare.len()).sum();
                return Heard::Added;
            }
            if let Some(bad) = b.live.iter().position(|n| n.fails >= bad_after) {
                b.live[bad] = node;
                return Heard::Replaced;
            }
            // Full: split the bucket that holds our own id.
            if i == n_buckets - 1 && n_buckets < ID_LEN * 8 {
                self.split();
                continue;
            }
            if let Some(s) = b.spare.iter_mut().find(|n| n.id == id) {
                s.last_ok = now;
                s.addr = addr;
                return Heard::Spare;
            }
            if b.spare.len() >= k {
                b.spare.remove(0);
            } else if self.n_nodes >= self.max_nodes {
                return Heard::Ignored;
            }
            b.spare.push(node);
            self.n_nodes = self.buckets.iter().map(|b| b.live.len() + b.spare.len()).sum();
            return Heard::Spare;
        }
    }

    fn split(&mut self) {
        let last = self.buckets.len() - 1;
        let old = std::mem::take(&mut self.buckets[last]);
        self.buckets.push(Bucket::default());
        for n in old.live {
            let i = self.index(&n.id);
            self.buckets[i].live.push(n);
        }
        for n in old.spare {
            let i = self.index(&n.id);
            self.buckets[i].spare.push(n);
        }
    }

    /// A query to `addr` failed; a node bad after it is replaced by the
    /// newest of its bucket's spares.
    pub fn failed(&mut self, addr: SocketAddr) {
        let bad_after = self.bad_after;
        for b in &mut self.buckets {
            if let Some(p) = b.live.iter().position(|n| n.addr == addr) {
                let n = &mut b.live[p];
                n.fails = n.fails.saturating_add(1);
                n.pinging = false;
                if n.fails >= bad_after {
                    if let Some(s) = b.spare.pop() {
                        b.live[p] = s;
                    } else {
                        // Kept (bad) until something better comes: an empty
                        // slot would be filled by the next node anyway.
                    }
                }
                break;
            }
        }
        self.n_nodes = self.buckets.iter().map(|b| b.live.len() + b.spare.len()).sum();
    }

    /// Questionable nodes (no answer for `good_for`) not being pinged yet;
    /// marks them as pinged.
    pub fn take_questionable(&mut self, now: Instant, good_for: Duration, max: usize) -> Vec<(NodeId, SocketAddr)> {
        let mut out = Vec::new();
        for b in &mut self.buckets {
            for n in &mut b.live {
                if out.len() >= max {
                    return out;
                }
                if !n.pinging && now.saturating_duration_since(n.last_ok) >= good_for {
                    n.pinging = true;
                    out.push((n.id, n.addr));
                }
            }
        }
        out
    }

    /// The `n` closest good-or-questionable nodes to `target`.
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<(NodeId, SocketAddr)> {
        let mut all: Vec<(NodeId, NodeId, SocketAddr)> = self
            .buckets
            .iter()
            .flat_map(|b| b.live.iter())
            .filter(|x| !self.is_bad(x))
            .map(|x| (distance(&x.id, target), x.id, x.addr))
            .collect();
        all.sort_unstable_by_key(|a| a.0);
        all.into_iter().take(n).map(|(_, id, a)| (id, a)).collect()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &TableNode> {
        self.buckets.iter().flat_map(|b| b.live.iter())
    }
}

// ---------------------------------------------------------------------------
// Lookups
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CandState {
    Fresh,
    Asked,
    Answered,
    Failed,
}

#[derive(Debug, Clone)]
struct Cand {
    id: NodeId,
    addr: SocketAddr,
    state: CandState,
}

#[derive(Debug)]
struct Lookup {
    id: u32,
    method: Method,
    target: NodeId,
    torrent: Option<u32>,
    /// By XOR distance to the target.
    cands: BTreeMap<NodeId, Cand>,
    /// Entry points of unknown id (bootstrap addresses), asked first.
    seeds: Vec<SocketAddr>,
    asked: HashSet<SocketAddr>,
    in_flight: usize,
    n_queries: u32,
    n_responses: u32,
    values: HashSet<SocketAddr>,
    started: Instant,
    /// BEP 33 filters (seeds, downloaders), OR-ed over the answers, and how
    /// many answers carried them.
    bloom: Option<Box<([u8; 256], [u8; 256])>>,
    n_bloom: u32,
    /// A BEP 33 scrape round: get_peers with `scrape` 1, which nodes
    /// (libtorrent) answer with the filters instead of `values`.
    scrape: bool,
}

impl Lookup {
    fn add_cand(&mut self, id: NodeId, addr: SocketAddr, max: usize) {
        let d = distance(&id, &self.target);
        if self.cands.contains_key(&d) {
            return;
        }
        let state = if self.asked.contains(&addr) {
            CandState::Asked
        } else {
            CandState::Fresh
        };
        self.cands.insert(d, Cand { id, addr, state });
        while self.cands.len() > max {
            let Some((&far, _)) = self.cands.iter().next_back() else {
                break;
            };
            self.cands.remove(&far);
        }
    }

    /// The next node to ask: a seed, else the closest fresh node among the
    /// k closest that have not failed. `None`: nothing closer to ask.
    fn next(&mut self, k: usize) -> Option<(Option<NodeId>, SocketAddr)> {
        while let Some(a) = self.seeds.pop() {
            if !self.asked.contains(&a) {
                return Some((None, a));
            }
        }
        let mut seen = 0;
        for c in self.cands.values_mut() {
            if c.state == CandState::Failed {
                continue;
            }
            seen += 1;
            if seen > k {
                break;
            }
            if c.state == CandState::Fresh {
                c.state = CandState::Asked;
                return Some((Some(c.id), c.addr));
            }
        }
        None
    }

    fn set_state(&mut self, id: &NodeId, addr: SocketAddr, st: CandState) {
        let d = distance(id, &self.target);
        if let Some(c) = self.cands.get_mut(&d) {
            if c.addr == addr {
                c.state = st;
            }
        }
    }

    fn n_closest_answered(&self, k: usize) -> usize {
        self.cands
            .values()
            .filter(|c| c.state != CandState::Failed)
            .take(k)
            .filter(|c| c.state == CandState::Answered)
            .count()
    }
}

#[derive(Debug, Clone)]
struct Pending {
    addr: SocketAddr,
    method: Method,
    sent: Instant,
    sent_us: i64,
    lookup: Option<u32>,
    node: Option<NodeId>,
}

/// Settings of the node.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// Entry points (`--dht-bootstrap`, resolved).
    pub bootstrap: Vec<SocketAddr>,
    /// UDP port to bind (`--dht-port`; 0: any).
    pub port: u16,
    /// Time between lookup rounds (`--dht-interval`).
    pub interval: Duration,
    pub policy: AddrPolicy,
    pub limits: DhtNodeLimits,
}

/// The DHT node's protocol state (no I/O).
pub struct Node {
    pub id: NodeId,
    pub table: RoutingTable,
    cfg: DhtConfig,
    /// Our address as written in rows (the socket's, with the routed source IP).
    local: SocketAddr,
    targets: Vec<(u32, NodeId)>,
    next_tid: u16,
    pending: HashMap<u16, Pending>,
    lookups: Vec<Lookup>,
    next_lookup_id: u32,
    /// Lookup rounds started (see `start_round`).
    n_rounds: u64,
    tokens: f64,
    refilled: Instant,
    next_round: Instant,
    next_maintenance: Instant,
    out: Vec<(SocketAddr, Vec<u8>)>,
    report: DhtReport,
    pub stats: DhtStats,
    parse_limits: DhtLimits,
    /// BEP 32: ask for nodes of both families (both nodes run).
    want_other: bool,
    /// Nodes of the other family listed in answers, for the other node.
    other: Vec<(NodeId, SocketAddr)>,
    /// Nodes of our family the other node learned (see [`Node::offer`]).
    offered: Vec<(NodeId, SocketAddr)>,
    /// A round found nothing to ask (no table, no bootstrap, nothing
    /// offered): the next one starts as soon as nodes are offered.
    idle_round: bool,
}

impl Node {
    pub fn new(id: NodeId, cfg: DhtConfig, local: SocketAddr, targets: Vec<(u32, NodeId)>, now: Instant) -> Node {
        Node {
            id,
            table: RoutingTable::new(id, &cfg.limits),
            local,
            targets,
            next_tid: 1,
            pending: HashMap::new(),
            lookups: Vec::new(),
            next_lookup_id: 1,
            n_rounds: 0,
            tokens: cfg.limits.queries_per_sec.max(1.0),
            refilled: now,
            next_round: now,
            next_maintenance: now + Duration::from_secs(60),
            out: Vec::new(),
            report: DhtReport::default(),
            stats: DhtStats::default(),
            parse_limits: DhtLimits::default(),
            want_other: false,
            other: Vec::new(),
            offered: Vec::new(),
            idle_round: false,
            cfg,
        }
    }

    /// BEP 32 with both nodes running: our queries want nodes of both
    /// families, and those of the other family are kept for the other node
    /// ([`Node::take_other_family`]).
    pub fn set_want_other(&mut self, on: bool) {
        self.want_other = on;
    }

    /// Nodes of the other family heard of since the last call.
    pub fn take_other_family(&mut self) -> Vec<(NodeId, SocketAddr)> {
        std::mem::take(&mut self.other)
    }

    /// Nodes of our family that the other node heard of: candidates of the
    /// running lookups and of the next ones (how an IPv6 node without an
    /// IPv6 bootstrap address joins, through IPv4 nodes' `nodes6`). Checked
    /// like the nodes of an answer; at most `max_candidates` kept.
    pub fn offer(&mut self, nodes: Vec<(NodeId, SocketAddr)>, now: Instant) {
        let lim = self.cfg.limits;
        let mut any = false;
        if self.local.ip().is_unspecified() {
            // No bootstrap address told us our source address: the first
            // offered node does (for our rows).
            if let Some(ip) = nodes
                .iter()
                .find(|x| x.1.is_ipv6() == self.local.is_ipv6())
                .and_then(|x| routed_source(x.1))
            {
                self.local.set_ip(ip);
            }
        }
        for (nid, a) in nodes {
            if a.is_ipv6() != self.local.is_ipv6() || self.offered.iter().any(|x| x.1 == a) {
                continue;
            }
            if nid == self.id || !targets::contactable(&a) || a == self.local {
                self.stats.nodes_invalid += 1;
                continue;
            }
            if self.cfg.policy.refuse(a.ip()).is_some() {
                self.stats.nodes_refused += 1;
                continue;
            }
            for l in &mut self.lookups {
                l.add_cand(nid, a, lim.max_candidates);
            }
            if self.offered.len() >= lim.max_candidates {
                self.offered.remove(0);
            }
            self.offered.push((nid, a));
            any = true;
        }
        if any && self.idle_round {
            self.idle_round = false;
            self.next_round = now;
        }
    }

    /// Datagrams to send.
    pub fn take_out(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.out)
    }

    /// What happened since the last call.
    pub fn take_report(&mut self) -> DhtReport {
        let mut r = std::mem::take(&mut self.report);
        r.table_nodes = self.table.len();
        r
    }

    pub fn report_len(&self) -> (usize, usize, usize) {
        (
            self.report.rows.len(),
            self.report.found.len(),
            self.report.lookups.len(),
        )
    }

    pub fn n_pending(&self) -> usize {
        self.pending.len()
    }

    pub fn n_lookups(&self) -> usize {
        self.lookups.len()
    }

    fn start_lookup(&mut self, method: Method, target: NodeId, torrent: Option<u32>, now: Instant) {
        if self.lookups.iter().any(|l| l.target == target && l.method == method) {
            return;
        }
        let id = self.next_lookup_id;
        self.next_lookup_id += 1;
        let mut l = Lookup {
            id,
            method,
            target,
            torrent,
            cands: BTreeMap::new(),
            seeds: Vec::new(),
            asked: HashSet::new(),
            in_flight: 0,
            n_queries: 0,
            n_responses: 0,
            values: HashSet::new(),
            started: now,
            bloom: None,
            n_bloom: 0,
            scrape: method == Method::GetPeers && self.n_rounds >= 2 && self.n_rounds.is_multiple_of(2),
        };
        let k = self.cfg.limits.k;
        for (nid, a) in self.table.closest(&target, 2 * k) {
            l.add_cand(nid, a, self.cfg.limits.max_candidates);
        }
        for &(nid, a) in &self.offered {
            l.add_cand(nid, a, self.cfg.limits.max_candidates);
        }
        if l.cands.len() < k {
            // Asked in order: the first given first; not a node the table
            // already lists (it would be asked twice).
            let known: HashSet<SocketAddr> = l.cands.values().map(|c| c.addr).collect();
            l.seeds = self
                .cfg
                .bootstrap
                .iter()
                .rev()
                .filter(|a| !known.contains(a))
                .copied()
                .collect();
        }
        self.lookups.push(l);
    }

    /// A new round: find_node of our own id while the table is small, and
    /// get_peers for every target.
    fn start_round(&mut self, now: Instant) {
        if self.table.is_empty() && self.cfg.bootstrap.is_empty() && self.offered.is_empty() {
            self.idle_round = true;
            return;
        }
        // Rounds alternate: peers (`values`), then a BEP 33 scrape (nodes
        // answer a scrape with filters instead of peers), so every other
        // round finds peers, the first one included.
        self.n_rounds += 1;
        if self.table.len() < self.cfg.limits.k * 2 {
            self.start_lookup(Method::FindNode, self.id, None, now);
        }
        for (t, ih) in self.targets.clone() {
            self.start_lookup(Method::GetPeers, ih, Some(t), now);
        }
    }

    fn refill(&mut self, now: Instant) {
        let qps = self.cfg.limits.queries_per_sec.max(0.001);
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * qps).min(qps.max(1.0));
        self.refilled = now;
    }

    fn alloc_tid(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let t = self.next_tid;
            self.next_tid = self.next_tid.wrapping_add(1);
            if !self.pending.contains_key(&t) {
                return Some(t);
            }
        }
        None
    }

    fn can_send(&self) -> bool {
        self.tokens >= 1.0 && self.pending.len() < self.cfg.limits.max_outstanding
    }

    #[allow(clippy::too_many_arguments)]
    fn send_query(
        &mut self,
        now: Instant,
        now_us: i64,
        to: SocketAddr,
        method: Method,
        scrape: bool,
        target: &NodeId,
        lookup: Option<u32>,
        node: Option<NodeId>,
    ) {
        let Some(tid) = self.alloc_tid() else {
            return;
        };
        let tb = tid.to_be_bytes();
        let tgt = ben_id(target);
        let mut a: Vec<(&str, &[u8])> = match method {
            // BEP 33: `scrape` 1 asks for the seed and downloader filters.
            Method::GetPeers if scrape => vec![("info_hash", &tgt[..]), ("scrape", &b"i1e"[..])],
            Method::GetPeers => vec![("info_hash", &tgt[..])],
            Method::FindNode => vec![("target", &tgt[..])],
            _ => Vec::new(),
        };
        // BEP 32: the IPv6 node asks for `nodes6`; the IPv4 node relies on
        // the default (the querier's family) and sends no `want`; with both
        // nodes running, each asks for both families.
        if !a.is_empty() {
            if self.want_other {
                a.push(("want", &b"l2:n42:n6e"[..]));
            } else if self.local.is_ipv6() {
                a.push(("want", &b"l2:n6e"[..]));
            }
        }
        let name = match method {
            Method::GetPeers => "get_peers",
            Method::FindNode => "find_node",
            _ => "ping",
        };
        let bytes = encode_query(&tb, name, &self.id, &a, true);
        self.tokens -= 1.0;
        self.stats.sent += 1;
        self.pending.insert(
            tid,
            Pending {
                addr: to,
                method,
                sent: now,
                sent_us: now_us,
                lookup,
                node,
            },
        );
        self.row(now_us, self.local, to, &bytes, None, None);
        self.out.push((to, bytes));
    }

    fn row(&mut self, ts_us: i64, src: SocketAddr, dst: SocketAddr, d: &[u8], qm: Option<Method>, rtt: Option<f64>) {
        if let Ok(m) = parse_krpc(d, &self.parse_limits) {
            let mut r = krpc_row(ts_us, src, dst, &m, qm, rtt);
            r.capture = "probe".into();
            self.report.rows.push(r);
        }
    }

    /// Sends what lookups want to send, within the rate and outstanding
    /// caps; finished lookups are reported.
    fn pump(&mut self, now: Instant, now_us: i64) {
        self.refill(now);
        let k = self.cfg.limits.k;
        let alpha = self.cfg.limits.alpha.max(1);
        let maxq = self.cfg.limits.max_queries_per_lookup;
        let mut i = 0;
        while i < self.lookups.len() {
            loop {
                let l = &mut self.lookups[i];
                if l.in_flight >= alpha
                    || l.n_queries >= maxq
                    || !self_can_send(self.tokens, self.pending.len(), &self.cfg.limits)
                {
                    break;
                }
                let Some((node, addr)) = l.next(k) else {
                    break;
                };
                if addr == self.local || self.cfg.policy.refuse(addr.ip()).is_some() {
                    if let Some(n) = node {
                        l.set_state(&n, addr, CandState::Failed);
                    }
                    continue;
                }
                l.in_flight += 1;
                l.n_queries += 1;
                l.asked.insert(addr);
                let (method, target, id, scrape) = (l.method, l.target, l.id, l.scrape);
                self.send_query(now, now_us, addr, method, scrape, &target, Some(id), node);
            }
            let l = &mut self.lookups[i];
            let stuck = l.in_flight == 0
                && (l.n_queries >= maxq || {
                    let nothing = l.seeds.is_empty()
                        && !l
                            .cands
                            .values()
                            .filter(|c| c.state != CandState::Failed)
                            .take(k)
                            .any(|c| c.state == CandState::Fresh);
                    nothing
                });
            if stuck {
                let l = self.lookups.swap_remove(i);
                self.stats.lookups_done += 1;
                self.report.lookups.push(LookupDone {
                    torrent: l.torrent,
                    method: l.method,
                    target: l.target,
                    n_queries: l.n_queries,
                    n_responses: l.n_responses,
                    n_values: l.values.len(),
                    n_closest_answered: l.n_closest_answered(k),
                    elapsed: now.saturating_duration_since(l.started),
                    scrape: l.bloom.as_ref().map(|b| DhtScrape {
                        seeds: bloom_estimate(&b.0),
                        peers: bloom_estimate(&b.1),
                        n_answers: l.n_bloom,
                    }),
                    ipv6: self.local.is_ipv6(),
                });
                continue;
            }
            i += 1;
        }
    }

    /// Timeouts, rounds, table maintenance, then sending.
    pub fn tick(&mut self, now: Instant, now_us: i64) {
        let timeout = self.cfg.limits.query_timeout;
        let expired: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.sent) >= timeout)
            .map(|(&t, _)| t)
            .collect();
        for t in expired {
            if let Some(p) = self.pending.remove(&t) {
                self.stats.timeouts += 1;
                self.table.failed(p.addr);
                if let Some(l) = p.lookup.and_then(|id| self.lookups.iter_mut().find(|l| l.id == id)) {
                    l.in_flight = l.in_flight.saturating_sub(1);
                    if let Some(n) = p.node {
                        l.set_state(&n, p.addr, CandState::Failed);
                    }
                }
            }
        }
        if now >= self.next_round {
            self.start_round(now);
            self.next_round = now + self.cfg.interval;
        }
        if now >= self.next_maintenance {
            self.next_maintenance = now + Duration::from_secs(60);
            self.refill(now);
            let n = (self.tokens as usize).min(self.cfg.limits.k);
            for (id, a) in self.table.take_questionable(now, self.cfg.limits.good_for, n) {
                if self.can_send() {
                    self.send_query(now, now_us, a, Method::Ping, false, &id, None, Some(id));
                }
            }
        }
        self.pump(now, now_us);
    }

    /// When [`Node::tick`] has something to do next.
    pub fn next_wake(&self, now: Instant) -> Instant {
        let mut w = self.next_round.min(self.next_maintenance);
        if let Some(p) = self.pending.values().map(|p| p.sent).min() {
            w = w.min(p + self.cfg.limits.query_timeout);
        }
        if !self.lookups.is_empty() && self.tokens < 1.0 {
            let qps = self.cfg.limits.queries_per_sec.max(0.001);
            w = w.min(now + Duration::from_secs_f64((1.0 - self.tokens) / qps));
        }
        w.max(now)
    }

    /// One received datagram.
    pub fn on_datagram(&mut self, now: Instant, now_us: i64, from: SocketAddr, d: &[u8]) {
        self.stats.received += 1;
        let limits = self.parse_limits;
        let m = match parse_krpc(d, &limits) {
            Ok(m) => m,
            Err(_) => {
                self.stats.not_krpc += 1;
                return;
            }
        };
        self.stats.anomalies += u64::from(m.n_anomalies());
        match m.kind {
            KrpcKind::Query => {
                self.row(now_us, from, self.local, d, None, None);
                self.on_query(now_us, from, &m);
            }
            KrpcKind::Response | KrpcKind::Error => {
                let tid = <[u8; 2]>::try_from(m.tid).ok().map(u16::from_be_bytes);
                let p = match tid.and_then(|t| self.pending.get(&t).map(|p| (t, p.addr))) {
                    Some((t, a)) if a == from => self.pending.remove(&t),
                    _ => None,
                };
                let Some(p) = p else {
                    self.stats.unmatched += 1;
                    self.row(now_us, from, self.local, d, None, None);
                    return;
                };
                let rtt = (now_us - p.sent_us) as f64 / 1000.0;
                self.row(now_us, from, self.local, d, Some(p.method), Some(rtt));
                if m.kind == KrpcKind::Error {
                    self.stats.errors_received += 1;
                    self.table.failed(from);
                    self.answered(&p, None, &m, now);
                } else {
                    self.stats.responses += 1;
                    match m.id {
                        Some(id) => {
                            self.table.heard(*id, from, now);
                            self.answered(&p, Some(*id), &m, now);
                        }
                        None => {
                            self.stats.bad_id += 1;
                            self.table.failed(from);
                            self.answered(&p, None, &m, now);
                        }
                    }
                }
                self.pump(now, now_us);
            }
        }
    }

    fn on_query(&mut self, now_us: i64, from: SocketAddr, m: &KrpcMessage<'_>) {
        if m.method == Some(Method::Ping)
            && !m.tid.is_empty()
            && m.tid.len() <= 16
            && targets::contactable(&from)
            && self.cfg.policy.refuse(from.ip()).is_none()
        {
            let bytes = encode_response(m.tid, &self.id, &[]);
            self.stats.pings_answered += 1;
            self.stats.sent += 1;
            self.row(now_us, self.local, from, &bytes, Some(Method::Ping), None);
            self.out.push((from, bytes));
        } else {
            self.stats.queries_ignored += 1;
        }
    }

    /// A matched response (`id` None: error or no valid id) to a lookup.
    fn answered(&mut self, p: &Pending, id: Option<NodeId>, m: &KrpcMessage<'_>, _now: Instant) {
        let Some(li) = p.lookup.and_then(|lid| self.lookups.iter().position(|l| l.id == lid)) else {
            return;
        };
        let lim = self.cfg.limits;
        let own = self.id;
        let mut new_nodes: Vec<(NodeId, SocketAddr)> = Vec::new();
        let mut found = Vec::new();
        {
            let l = &mut self.lookups[li];
            l.in_flight = l.in_flight.saturating_sub(1);
            let Some(id) = id else {
                if let Some(n) = p.node {
                    l.set_state(&n, p.addr, CandState::Failed);
                }
                return;
            };
            l.n_responses += 1;
            match p.node {
                Some(n) if n == id => l.set_state(&n, p.addr, CandState::Answered),
                Some(n) => {
                    // Answered under another id than listed: the listing was
                    // wrong; keep the answer, under the id it gave.
                    l.set_state(&n, p.addr, CandState::Failed);
                    l.add_cand(id, p.addr, lim.max_candidates);
                    l.set_state(&id, p.addr, CandState::Answered);
                }
                None => {
                    l.add_cand(id, p.addr, lim.max_candidates);
                    l.set_state(&id, p.addr, CandState::Answered);
                }
            }
            // Nodes of our own family: `nodes` (IPv4), `nodes6` (IPv6).
            let (n_listed, listed): (usize, Vec<(NodeId, SocketAddr)>) = if self.local.is_ipv6() {
                m.nodes6.map_or((0, Vec::new()), |n| {
                    (
                        n.len(),
                        n.iter()
                            .take(lim.max_nodes_per_response)
                            .map(|(i, a)| (*i, SocketAddr::V6(a)))
                            .collect(),
                    )
                })
            } else {
                m.nodes.map_or((0, Vec::new()), |n| {
                    (
                        n.len(),
                        n.iter()
                            .take(lim.max_nodes_per_response)
                            .map(|(i, a)| (*i, SocketAddr::V4(a)))
                            .collect(),
                    )
                })
            };
            if n_listed > lim.max_nodes_per_response {
                self.stats.too_many_nodes += 1;
            }
            new_nodes.extend(listed);
            // The other family's, for the other node (checked there).
            if self.want_other {
                let other: Vec<(NodeId, SocketAddr)> = if self.local.is_ipv6() {
                    m.nodes.map_or(Vec::new(), |n| {
                        n.iter()
                            .take(lim.max_nodes_per_response)
                            .map(|(i, a)| (*i, SocketAddr::V4(a)))
                            .collect()
                    })
                } else {
                    m.nodes6.map_or(Vec::new(), |n| {
                        n.iter()
                            .take(lim.max_nodes_per_response)
                            .map(|(i, a)| (*i, SocketAddr::V6(a)))
                            .collect()
                    })
                };
                for x in other {
                    if self.other.len() < lim.max_candidates && !self.other.contains(&x) {
                        self.other.push(x);
                    }
                }
            }
            if l.method == Method::GetPeers {
                if let (Some(sd), Some(pe)) = (m.bf_seeds, m.bf_peers) {
                    let b = l.bloom.get_or_insert_with(|| Box::new(([0; 256], [0; 256])));
                    for (x, y) in b.0.iter_mut().zip(sd) {
                        *x |= y;
                    }
                    for (x, y) in b.1.iter_mut().zip(pe) {
                        *x |= y;
                    }
                    l.n_bloom += 1;
                }
                if let (Some(v), Some(t)) = (m.values, l.torrent) {
                    for peer in v.iter() {
                        if l.values.contains(&peer) {
                            continue;
                        }
                        if l.values.len() >= lim.max_values_per_lookup {
                            self.stats.values_over_cap += 1;
                            continue;
                        }
                        l.values.insert(peer);
                        found.push((t, peer, p.addr));
                    }
                }
            }
        }
        for (nid, a) in new_nodes {
            if nid == own || !targets::contactable(&a) || a == self.local {
                self.stats.nodes_invalid += 1;
                continue;
            }
            if self.cfg.policy.refuse(a.ip()).is_some() {
                self.stats.nodes_refused += 1;
                continue;
            }
            self.lookups[li].add_cand(nid, a, lim.max_candidates);
        }
        self.report.found.extend(found);
    }
}

fn self_can_send(tokens: f64, pending: usize, l: &DhtNodeLimits) -> bool {
    tokens >= 1.0 && pending < l.max_outstanding
}

/// A random node id.
pub fn random_id() -> NodeId {
    let mut id = [0u8; ID_LEN];
    super::mse::fill_random(&mut id);
    id
}

/// The source address the kernel uses towards `dst` (for our rows).
fn routed_source(dst: SocketAddr) -> Option<IpAddr> {
    let any = if dst.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let s = std::net::UdpSocket::bind((any, 0)).ok()?;
    s.connect(dst).ok()?;
    s.local_addr().ok().map(|a| a.ip()).filter(|ip| !ip.is_unspecified())
}

/// Resolves `HOST:PORT` bootstrap names, IPv4 and IPv6 addresses alike
/// (each family's node takes its own).
pub async fn resolve_bootstrap(names: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for n in names {
        match tokio::net::lookup_host(n.as_str()).await {
            Ok(addrs) => {
                let before = out.len();
                out.extend(addrs.filter(|a| !out.contains(a)).collect::<Vec<_>>());
                if out.len() == before {
                    eprintln!("swarmtap: DHT bootstrap {n} has no address; skipped");
                }
            }
            Err(e) => eprintln!("swarmtap: cannot resolve DHT bootstrap {n}: {e}"),
        }
    }
    out
}

/// A node's UDP port: a socket of its own, or the uTP socket's port
/// shared with `--listen` (KRPC datagrams arriving there are handed over,
/// answers go out from it).
pub enum DhtPort {
    Own,
    Shared(
        std::sync::Arc<super::utp::UtpSocket>,
        mpsc::Receiver<(Vec<u8>, SocketAddr)>,
    ),
}

/// Runs the nodes until `stop`, reporting rows, peers and lookups on `tx`
/// (each node's last report carries its stats), on ports of their own.
pub async fn run(
    cfg: DhtConfig,
    targets_: Vec<(u32, NodeId)>,
    tx: mpsc::Sender<DhtReport>,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    run_on(cfg, [DhtPort::Own, DhtPort::Own], targets_, tx, stop).await
}

/// A uTP socket whose KRPC datagrams a node takes (see [`DhtPort::Shared`]).
type SharedPort = (
    std::sync::Arc<super::utp::UtpSocket>,
    mpsc::Receiver<(Vec<u8>, SocketAddr)>,
);

/// One family's node and its socket.
struct Side {
    node: Node,
    sock: Option<UdpSocket>,
    shared: Option<SharedPort>,
    buf: Vec<u8>,
}

impl Side {
    /// `seeded`: the other family's node runs and may hand this one
    /// nodes, so it starts even without a bootstrap address of its family.
    async fn start(
        cfg: &DhtConfig,
        v6: bool,
        port_: DhtPort,
        id: NodeId,
        targets_: &[(u32, NodeId)],
        seeded: bool,
    ) -> Result<Option<Side>, String> {
        let mut cfg = cfg.clone();
        cfg.bootstrap.retain(|a| a.is_ipv6() == v6);
        if cfg.bootstrap.is_empty() && !seeded {
            return Ok(None);
        }
        let (sock, shared) = match port_ {
            DhtPort::Own => {
                let any = if v6 {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                };
                let s = super::utp::bind_udp(SocketAddr::new(any, cfg.port))
                    .and_then(|s| {
                        s.set_nonblocking(true)?;
                        UdpSocket::from_std(s)
                    })
                    .map_err(|e| {
                        format!(
                            "cannot bind the DHT port {} ({}): {e}",
                            cfg.port,
                            if v6 { "IPv6" } else { "IPv4" }
                        )
                    })?;
                (Some(s), None)
            }
            DhtPort::Shared(u, rx) => (None, Some((u, rx))),
        };
        let port = match (&sock, &shared) {
            (Some(s), _) => s.local_addr().map(|a| a.port()).unwrap_or(cfg.port),
            (None, Some((u, _))) => u.local_addr().map(|a| a.port()).unwrap_or(cfg.port),
            (None, None) => cfg.port,
        };
        let ip = cfg.bootstrap.first().and_then(|&b| routed_source(b)).unwrap_or(if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        });
        let node = Node::new(id, cfg, SocketAddr::new(ip, port), targets_.to_vec(), Instant::now());
        Ok(Some(Side {
            node,
            sock,
            shared,
            buf: vec![0u8; 65536],
        }))
    }

    /// The next datagram for this node (pending for ever when absent).
    async fn recv(side: &mut Option<Side>) -> Option<(Vec<u8>, SocketAddr)> {
        let Some(s) = side else {
            return std::future::pending().await;
        };
        match (&s.sock, &mut s.shared) {
            (Some(sock), _) => {
                let (n, from) = sock.recv_from(&mut s.buf).await.ok()?;
                Some((s.buf[..n].to_vec(), from))
            }
            (None, Some((_, rx))) => match rx.recv().await {
                Some(x) => Some(x),
                None => std::future::pending().await,
            },
            (None, None) => std::future::pending().await,
        }
    }

    async fn send_out(&mut self) {
        for (to, d) in self.node.take_out() {
            match (&self.sock, &self.shared) {
                (Some(s), _) => {
                    let _ = s.send_to(&d, to).await;
                }
                (None, Some((u, _))) => {
                    let _ = u.send_datagram(&d, to);
                }
                (None, None) => {}
            }
        }
    }
}

/// [`run`] on the given ports (IPv4, IPv6).
pub async fn run_on(
    mut cfg: DhtConfig,
    ports: [DhtPort; 2],
    targets_: Vec<(u32, NodeId)>,
    tx: mpsc::Sender<DhtReport>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    cfg.bootstrap.retain(|a| match cfg.policy.refuse(a.ip()) {
        Some(why) => {
            eprintln!("swarmtap: DHT bootstrap {a} refused by the address policy ({why})");
            false
        }
        None => true,
    });
    let id = random_id();
    let [p4, p6] = ports;
    let mut s4 = Side::start(&cfg, false, p4, id, &targets_, false).await?;
    // The IPv6 node runs with an IPv6 bootstrap address, or beside the
    // IPv4 node, which then asks for `nodes6` to seed it (BEP 32).
    let mut s6 = match Side::start(&cfg, true, p6, id, &targets_, s4.is_some()).await {
        Ok(s) => s,
        // A host without IPv6: the IPv4 node still runs.
        Err(e) if s4.is_some() => {
            eprintln!("swarmtap: {e}; DHT over IPv6 off");
            None
        }
        Err(e) => return Err(e),
    };
    if let (Some(a), Some(b)) = (s4.as_mut(), s6.as_mut()) {
        a.node.set_want_other(true);
        b.node.set_want_other(true);
    }
    if s4.is_none() && s6.is_none() {
        eprintln!("swarmtap: no usable DHT bootstrap address; DHT off");
        return Ok(());
    }
    let mut last_report = Instant::now();
    loop {
        if *stop.borrow() {
            break;
        }
        let now = Instant::now();
        let wake = [&s4, &s6]
            .into_iter()
            .flatten()
            .map(|s| s.node.next_wake(now))
            .min()
            .unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            r = Side::recv(&mut s4) => {
                if let (Some((d, from)), Some(s)) = (r, s4.as_mut()) {
                    s.node.on_datagram(Instant::now(), super::session::now_us(), from, &d);
                }
            }
            r = Side::recv(&mut s6) => {
                if let (Some((d, from)), Some(s)) = (r, s6.as_mut()) {
                    s.node.on_datagram(Instant::now(), super::session::now_us(), from, &d);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                for s in [&mut s4, &mut s6].into_iter().flatten() {
                    s.node.tick(Instant::now(), super::session::now_us());
                }
            }
            _ = stop.changed() => {}
        }
        // Nodes of the other family heard by one node go to the other.
        if let (Some(a), Some(b)) = (s4.as_mut(), s6.as_mut()) {
            let now = Instant::now();
            b.node.offer(a.node.take_other_family(), now);
            a.node.offer(b.node.take_other_family(), now);
        }
        for s in [&mut s4, &mut s6].into_iter().flatten() {
            s.send_out().await;
            let (r, f, l) = s.node.report_len();
            if f > 0 || l > 0 || r >= 512 || (r > 0 && last_report.elapsed() >= Duration::from_secs(1)) {
                last_report = Instant::now();
                if tx.send(s.node.take_report()).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    for s in [s4, s6].into_iter().flatten() {
        let mut node = s.node;
        let mut rep = node.take_report();
        rep.stats = Some(node.stats.clone());
        eprintln!(
            "swarmtap: DHT node {} ({}): {} in table ({} buckets, {} bytes), {} sent, {} received, {} lookups",
            crate::proto::metainfo::hex(&node.id),
            if node.local.is_ipv6() { "IPv6" } else { "IPv4" },
            node.table.len(),
            node.table.n_buckets(),
            node.table.memory_bytes(),
            node.stats.sent,
            node.stats.received,
            node.stats.lookups_done
        );
        let _ = tx.send(rep).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bep33_bloom_estimates() {
        // Filled by BEP 33's rule: SHA-1 of the address, its first two
        // 16-bit little-endian words mod 2048 are the bits.
        use sha1::{Digest, Sha1};
        let fill = |n: u32| {
            let mut bf = [0u8; 256];
            for i in 0..n {
                let ip = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
                let h: [u8; 20] = Sha1::digest(ip).into();
                for w in [u16::from_le_bytes([h[0], h[1]]), u16::from_le_bytes([h[2], h[3]])] {
                    let b = usize::from(w) % 2048;
                    bf[b / 8] |= 1 << (b % 8);
                }
            }
            bf
        };
        assert_eq!(bloom_estimate(&[0u8; 256]), 0.0);
        assert_eq!(bloom_estimate(&[0xFF; 256]), 6000.0);
        for n in [1u32, 2, 10, 100, 1000] {
            let e = bloom_estimate(&fill(n));
            let err = (e - f64::from(n)).abs() / f64::from(n);
            assert!(err < 0.15, "{n}: estimated {e:.2}");
        }
    }
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn id_with_prefix(bits: &[u8], fill: u8) -> NodeId {
        // `bits`: leading bits (0/1), the rest `fill`.
        let mut id = [fill; ID_LEN];
        for (i, &b) in bits.iter().enumerate() {
            let (byte, bit) = (i / 8, 7 - (i % 8));
            if b == 1 {
                id[byte] |= 1 << bit;
            } else {
                id[byte] &= !(1 << bit);
            }
        }
        id
    }

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from(([1, 2, (i >> 8) as u8, i as u8], 6881))
    }

    #[test]
    fn table_splits_only_our_own_bucket() {
        let lim = DhtNodeLimits::default();
        let t0 = Instant::now();
        let mut t = RoutingTable::new([0; 20], &lim);
        // Eight far nodes (first bit 1) fill the single bucket.
        for i in 0..8u8 {
            let mut id = [0xff; 20];
            id[19] = i;
            assert_eq!(t.heard(id, addr(u32::from(i)), t0), Heard::Added);
        }
        assert_eq!((t.n_buckets(), t.len()), (1, 8));
        // A ninth far node: the bucket (ours) splits, the far half stays
        // full, the newcomer goes to the replacement cache.
        let mut id = [0xff; 20];
        id[19] = 100;
        assert_eq!(t.heard(id, addr(100), t0), Heard::Spare);
        assert_eq!((t.n_buckets(), t.len(), t.n_stored()), (2, 8, 9));
        // Far buckets never split again: 8 more far nodes are spares, the
        // cache holds k at most.
        for i in 0..20u32 {
            let mut id = [0xfe; 20];
            id[19] = i as u8;
            t.heard(id, addr(200 + i), t0);
        }
        assert_eq!((t.n_buckets(), t.len(), t.n_stored()), (2, 8, 16));
        // Near nodes (sharing 1, 2, 3 … leading bits with us) split our bucket.
        for depth in 1..6usize {
            for i in 0..8u8 {
                let mut bits = vec![0u8; depth];
                bits.push(1);
                let id = id_with_prefix(&bits, i + 1);
                assert_ne!(
                    t.heard(id, addr(1000 + depth as u32 * 10 + u32::from(i)), t0),
                    Heard::Ignored
                );
            }
        }
        // Buckets for 0, 1, 2, 3, 4 shared bits, the last one (ours) holding
        // the nodes sharing 5 bits: split only as far as needed.
        assert_eq!(t.len(), 8 * 6);
        assert_eq!(t.n_buckets(), 6);
        // Refresh, same id at another address (ignored), our own id (ignored).
        let mut far = [0xff; 20];
        far[19] = 3;
        assert_eq!(t.heard(far, addr(3), t0), Heard::Refreshed);
        assert_eq!(t.heard(far, addr(9999), t0), Heard::Ignored);
        assert_eq!(t.heard([0; 20], addr(5), t0), Heard::Ignored);
    }

    #[test]
    fn bad_nodes_are_replaced_and_questionable_ones_pinged() {
        let lim = DhtNodeLimits::default();
        let t0 = Instant::now();
        let mut t = RoutingTable::new([0; 20], &lim);
        for i in 0..8u8 {
            let mut id = [0xff; 20];
            id[19] = i;
            t.heard(id, addr(u32::from(i)), t0);
        }
        let mut spare = [0xff; 20];
        spare[19] = 50;
        assert_eq!(t.heard(spare, addr(50), t0), Heard::Spare);
        // One failure: questionable, still listed. Two: bad, replaced by the spare.
        t.failed(addr(0));
        assert!(t.nodes().any(|n| n.addr == addr(0)));
        t.failed(addr(0));
        assert!(!t.nodes().any(|n| n.addr == addr(0)));
        assert!(t.nodes().any(|n| n.addr == addr(50)));
        assert_eq!(t.len(), 8);
        // A bad node with no spare stays until a newcomer takes its slot.
        t.failed(addr(1));
        t.failed(addr(1));
        assert!(t.closest(&[0xff; 20], 20).iter().all(|(_, a)| *a != addr(1)));
        let mut newcomer = [0xff; 20];
        newcomer[19] = 60;
        assert_eq!(t.heard(newcomer, addr(60), t0), Heard::Replaced);
        // After 15 minutes without an answer every node is questionable;
        // each is handed out for a ping once.
        let later = t0 + lim.good_for;
        assert_eq!(t.take_questionable(later, lim.good_for, 100).len(), 8);
        assert!(t.take_questionable(later, lim.good_for, 100).is_empty());
        assert!(t.take_questionable(t0, lim.good_for, 100).is_empty());
    }

    #[test]
    fn table_is_bounded_and_closest_sorted() {
        let lim = DhtNodeLimits {
            max_nodes: 20,
            ..Default::default()
        };
        let t0 = Instant::now();
        let own = [0x55; 20];
        let mut t = RoutingTable::new(own, &lim);
        let mut x: u64 = 0x1234_5678;
        for i in 0..5000u32 {
            let mut id = [0u8; 20];
            for b in id.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            t.heard(id, addr(i), t0);
        }
        assert!(t.n_stored() <= 20, "{}", t.n_stored());
        let target = [0xaa; 20];
        let c = t.closest(&target, 8);
        assert_eq!(c.len(), 8);
        for w in c.windows(2) {
            assert!(distance(&w[0].0, &target) < distance(&w[1].0, &target));
        }
        // Unbounded (default) table of 5000 random nodes: ~k per bucket.
        let mut t = RoutingTable::new(own, &DhtNodeLimits::default());
        for i in 0..5000u32 {
            let mut id = [0u8; 20];
            for b in id.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            t.heard(id, addr(i), t0);
        }
        assert!(t.n_stored() <= 2 * 8 * t.n_buckets());
        eprintln!(
            "5000 random nodes offered: {} live, {} stored, {} buckets, {} bytes",
            t.len(),
            t.n_stored(),
            t.n_buckets(),
            t.memory_bytes()
        );
        assert!(t.memory_bytes() < 64 * 1024, "{}", t.memory_bytes());
    }

    #[test]
    fn encoders_round_trip_through_the_passive_parser() {
        let q = encode_query(b"aa", "ping", &[b'A'; 20], &[], true);
        assert_eq!(
            q,
            b"d1:ad2:id20:AAAAAAAAAAAAAAAAAAAAe1:q4:ping2:roi1e1:t2:aa1:v4:SW\x00\x011:y1:qe".to_vec()
        );
        let g = encode_query(
            b"\x00\x07",
            "get_peers",
            &[1; 20],
            &[("info_hash", &ben_id(&[2; 20]))],
            true,
        );
        let m = parse_krpc(&g, &DhtLimits::default()).unwrap();
        assert_eq!(
            (m.kind, m.method, m.tid),
            (KrpcKind::Query, Some(Method::GetPeers), &b"\x00\x07"[..])
        );
        assert_eq!((m.id, m.info_hash, m.read_only), (Some(&[1; 20]), Some(&[2; 20]), true));
        assert_eq!(m.n_anomalies(), 0);
        assert_eq!(m.unknown_keys().count(), 0);
        let peers: Vec<SocketAddr> = vec!["10.0.0.1:1".parse().unwrap(), "[fd00::1]:2".parse().unwrap()];
        let mut values = b"l".to_vec();
        for p in &peers {
            ben::bytes(&mut values, &compact_peer(p));
        }
        values.push(b'e');
        let nodes = compact_nodes(&[([3; 20], "10.0.0.2:3".parse().unwrap())]);
        let mut nb = Vec::new();
        ben::bytes(&mut nb, &nodes);
        let mut tok = Vec::new();
        ben::bytes(&mut tok, b"tk");
        let r = encode_response(
            b"\x00\x07",
            &[4; 20],
            &[("values", values), ("nodes", nb), ("token", tok)],
        );
        let m = parse_krpc(&r, &DhtLimits::default()).unwrap();
        assert_eq!(m.kind, KrpcKind::Response);
        assert_eq!(m.values.unwrap().iter().collect::<Vec<_>>(), peers);
        assert_eq!(
            m.nodes.unwrap().iter().map(|(i, a)| (*i, a)).collect::<Vec<_>>(),
            vec![([3; 20], "10.0.0.2:3".parse().unwrap())]
        );
        assert_eq!(m.n_anomalies(), 0);
    }

    // --- sans-I/O node: hostile input -------------------------------------

    fn public_cfg(bootstrap: SocketAddr) -> DhtConfig {
        DhtConfig {
            bootstrap: vec![bootstrap],
            port: 0,
            interval: Duration::from_secs(300),
            policy: AddrPolicy::default(),
            limits: DhtNodeLimits::default(),
        }
    }

    fn sent(n: &mut Node) -> Vec<(SocketAddr, Vec<u8>)> {
        n.take_out()
    }

    fn tid_of(d: &[u8]) -> Vec<u8> {
        parse_krpc(d, &DhtLimits::default()).unwrap().tid.to_vec()
    }

    fn method_of(d: &[u8]) -> Option<Method> {
        parse_krpc(d, &DhtLimits::default()).unwrap().method
    }

    fn nodes_field(nodes: &[(NodeId, SocketAddr)]) -> Vec<u8> {
        let mut v = Vec::new();
        ben::bytes(&mut v, &compact_nodes(nodes));
        v
    }

    #[test]
    fn hostile_responses_are_counted_never_trusted() {
        let boot: SocketAddr = "1.1.1.1:6881".parse().unwrap();
        let me: SocketAddr = "2.2.2.2:7000".parse().unwrap();
        let ih = [0x77; 20];
        let t0 = Instant::now();
        let mut n = Node::new([0x11; 20], public_cfg(boot), me, vec![(0, ih)], t0);
        n.tick(t0, 0);
        let out = sent(&mut n);
        // Round start: find_node (bootstrap) and get_peers, both to the entry point, read-only.
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(a, _)| *a == boot));
        let gp = out
            .iter()
            .find(|(_, d)| method_of(d) == Some(Method::GetPeers))
            .unwrap()
            .1
            .clone();
        assert!(parse_krpc(&gp, &DhtLimits::default()).unwrap().read_only);
        let tid = tid_of(&gp);

        // Not KRPC at all: bad bencode, oversized.
        n.on_datagram(t0, 1, boot, b"d1:ad2:id");
        n.on_datagram(t0, 1, boot, &vec![b'x'; 20_000]);
        assert_eq!(n.stats.not_krpc, 2);
        // Unknown tid; right tid from another address.
        n.on_datagram(t0, 1, boot, &encode_response(b"zz", &[9; 20], &[]));
        n.on_datagram(
            t0,
            1,
            "3.3.3.3:1".parse().unwrap(),
            &encode_response(&tid, &[9; 20], &[]),
        );
        assert_eq!(n.stats.unmatched, 2);
        assert_eq!(n.n_pending(), 2, "neither answer consumed the query");

        // The real answer: 40 nodes (too many), of which private ones, our own id, port 0.
        let mut nodes: Vec<(NodeId, SocketAddr)> = vec![
            ([0x70; 20], "10.0.0.1:6881".parse().unwrap()),
            ([0x71; 20], "192.168.1.1:6881".parse().unwrap()),
            ([0x72; 20], "127.0.0.1:6881".parse().unwrap()),
            ([0x11; 20], "4.4.4.4:6881".parse().unwrap()), // our id
            ([0x73; 20], "4.4.4.5:0".parse().unwrap()),    // port 0
            ([0x74; 20], "4.4.4.6:6881".parse().unwrap()),
            ([0x75; 20], "4.4.4.7:6881".parse().unwrap()),
        ];
        for i in 0..33u8 {
            nodes.push(([i; 20], SocketAddr::from(([5, 5, 5, i], 6881))));
        }
        let resp = encode_response(&tid, &[0x20; 20], &[("nodes", nodes_field(&nodes))]);
        n.on_datagram(t0, 1000, boot, &resp);
        assert_eq!(n.stats.too_many_nodes, 1);
        assert_eq!(n.stats.nodes_refused, 3);
        assert_eq!(n.stats.nodes_invalid, 2);
        // Next get_peers queries go to public nodes only, the closest first.
        let out = sent(&mut n);
        let to: Vec<SocketAddr> = out
            .iter()
            .filter(|(_, d)| method_of(d) == Some(Method::GetPeers))
            .map(|(a, _)| *a)
            .collect();
        assert_eq!(to.len(), 3, "alpha = 3 in flight: {to:?}");
        assert_eq!(
            to[..2],
            ["4.4.4.7:6881".parse().unwrap(), "4.4.4.6:6881".parse().unwrap()]
        );
        for a in &to {
            assert!(AddrPolicy::default().refuse(a.ip()).is_none());
        }
        // A response without an id, and garbage values.
        let q = out.iter().find(|(a, _)| *a == to[0]).unwrap();
        let qt = tid_of(&q.1);
        let mut bad = b"d1:rd5:token2:tk6:valuesl5:abcde6:".to_vec();
        bad.extend_from_slice(&[8, 8, 8, 8, 0x1a, 0xe1]);
        bad.extend_from_slice(b"ee1:t2:");
        bad.extend_from_slice(&qt);
        bad.extend_from_slice(b"1:y1:re");
        n.on_datagram(t0, 2000, to[0], &bad);
        assert_eq!(n.stats.bad_id, 1);
        assert!(n.stats.anomalies >= 2, "{:?}", n.stats);
        // Random bytes never panic.
        let mut x: u32 = 7;
        for len in 0..3000usize {
            let mut d = Vec::with_capacity(len % 300);
            for _ in 0..len % 300 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                d.push(if x.is_multiple_of(3) {
                    b"d1:e0ilr"[(x as usize >> 8) % 8]
                } else {
                    x as u8
                });
            }
            n.on_datagram(t0, 3000, to[1], &d);
        }
        // Timeouts: every query still out fails after query_timeout.
        let later = t0 + Duration::from_secs(6);
        let before = n.stats.timeouts;
        n.tick(later, 6_000_000);
        assert!(n.stats.timeouts > before);
        // Every message we sent or received as KRPC is a row.
        let rep = n.take_report();
        assert!(rep
            .rows
            .iter()
            .any(|r| r.kind == "response" && r.method.as_deref() == Some("get_peers") && r.rtt_ms == Some(1.0)));
        assert!(rep
            .rows
            .iter()
            .filter(|r| r.src_ip.0.to_string() == "2.2.2.2")
            .all(|r| r.read_only));
    }

    /// The IPv6 node (BEP 32): its queries want n6; of an answer it
    /// follows `nodes6` only (the IPv4 `nodes` beside them are not its
    /// family), with the same bounds and policy as over IPv4.
    #[test]
    fn ipv6_node_follows_nodes6_only() {
        let boot: SocketAddr = "[2a00:1::1]:6881".parse().unwrap();
        let me: SocketAddr = "[2a00:2::2]:7000".parse().unwrap();
        let t0 = Instant::now();
        let mut n = Node::new([0x11; 20], public_cfg(boot), me, vec![(0, [0x77; 20])], t0);
        n.tick(t0, 0);
        let out = sent(&mut n);
        assert_eq!(out.len(), 2);
        for (to, d) in &out {
            let m = parse_krpc(d, &DhtLimits::default()).unwrap();
            let w = m.want.expect("want");
            assert_eq!((*to, w.n4, w.n6), (boot, false, true));
        }
        let gp = out
            .iter()
            .find(|(_, d)| method_of(d) == Some(Method::GetPeers))
            .unwrap();
        let tid = tid_of(&gp.1);
        let v4: Vec<(NodeId, SocketAddr)> = (0..8u8)
            .map(|i| ([i; 20], SocketAddr::from(([5, 5, 5, i], 6881))))
            .collect();
        let mut v6: Vec<(NodeId, SocketAddr)> = vec![([0x70; 20], "[fd00::1]:6881".parse().unwrap())];
        for i in 0..19u16 {
            v6.push((
                [0x76 ^ i as u8; 20],
                SocketAddr::from(([0x2a00, 0x3, 0, 0, 0, 0, 0, i + 1], 6881)),
            ));
        }
        let resp = encode_response(
            &tid,
            &[0x20; 20],
            &[("nodes", nodes_field(&v4)), ("nodes6", nodes6_field(&v6))],
        );
        n.on_datagram(t0, 1000, boot, &resp);
        assert_eq!((n.stats.too_many_nodes, n.stats.nodes_refused), (1, 1));
        let to: Vec<SocketAddr> = sent(&mut n)
            .iter()
            .filter(|(_, d)| method_of(d) == Some(Method::GetPeers))
            .map(|(a, _)| *a)
            .collect();
        assert_eq!(to.len(), 3, "{to:?}");
        assert!(
            to.iter()
                .all(|a| a.is_ipv6() && a.ip().to_string().starts_with("2a00:3::")),
            "{to:?}"
        );
    }

    #[test]
    fn answers_pings_and_nothing_else() {
        let boot: SocketAddr = "1.1.1.1:6881".parse().unwrap();
        let t0 = Instant::now();
        let mut n = Node::new([0x11; 20], public_cfg(boot), "2.2.2.2:1".parse().unwrap(), vec![], t0);
        let from: SocketAddr = "6.6.6.6:6881".parse().unwrap();
        n.on_datagram(t0, 0, from, &encode_query(b"pq", "ping", &[3; 20], &[], false));
        n.on_datagram(
            t0,
            0,
            from,
            &encode_query(b"fq", "find_node", &[3; 20], &[("target", &ben_id(&[1; 20]))], false),
        );
        let out = n.take_out();
        assert_eq!(out.len(), 1);
        let m = parse_krpc(&out[0].1, &DhtLimits::default()).unwrap();
        assert_eq!(
            (out[0].0, m.kind, m.tid, m.id),
            (from, KrpcKind::Response, &b"pq"[..], Some(&[0x11; 20]))
        );
        assert_eq!((n.stats.pings_answered, n.stats.queries_ignored), (1, 1));
        // A ping from a refused address is not answered.
        let mut n = Node::new([0x11; 20], public_cfg(boot), "2.2.2.2:1".parse().unwrap(), vec![], t0);
        n.on_datagram(
            t0,
            0,
            "10.1.1.1:6881".parse().unwrap(),
            &encode_query(b"pq", "ping", &[3; 20], &[], false),
        );
        assert!(n.take_out().is_empty());
    }

    // --- a real KRPC network on loopback ------------------------------------

    struct FakeNet {
        nodes: Vec<(NodeId, SocketAddr)>,
        get_peers: Arc<AtomicU32>,
        /// Queries whose BEP 32 `want` listed n6.
        want_n6: Arc<AtomicU32>,
    }

    /// Compact IPv6 node info (38 bytes each, BEP 32 `nodes6`).
    fn nodes6_field(nodes: &[(NodeId, SocketAddr)]) -> Vec<u8> {
        let mut raw = Vec::new();
        for (id, a) in nodes {
            if let SocketAddr::V6(a) = a {
                raw.extend_from_slice(id);
                raw.extend_from_slice(&a.ip().octets());
                raw.extend_from_slice(&a.port().to_be_bytes());
            }
        }
        let mut v = Vec::new();
        ben::bytes(&mut v, &raw);
        v
    }

    fn xorshift_ids(n: usize, seed: u64) -> Vec<NodeId> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                let mut id = [0u8; 20];
                for b in id.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = (x >> 24) as u8;
                }
                id
            })
            .collect()
    }

    /// `n` KRPC nodes on loopback. `full`: every node knows every other;
    /// else each knows a BEP 5 table of the others (8 per bucket). The 8
    /// nodes closest to `ih` hold `peers`, peer i at the (i mod 8)-th.
    async fn fake_net(n: usize, full: bool, ih: NodeId, peers: &[SocketAddr]) -> FakeNet {
        fake_net_on("127.0.0.1", n, full, ih, peers, 0x9e37_79b9_7f4a_7c15, &[]).await
    }

    /// [`fake_net`] on `ip` (127.0.0.1 or ::1). Nodes answer as BEP 32
    /// says: `nodes` and/or `nodes6` as `want` lists n4/n6, else the
    /// querier's own family; they know only nodes of their own family.
    /// `also6`: IPv6 nodes these (IPv4) nodes list in `nodes6` when asked,
    /// as a dual-stack node would.
    async fn fake_net_on(
        ip: &str,
        n: usize,
        full: bool,
        ih: NodeId,
        peers: &[SocketAddr],
        seed: u64,
        also6: &[(NodeId, SocketAddr)],
    ) -> FakeNet {
        let ids = xorshift_ids(n, seed);
        let mut socks = Vec::new();
        let mut nodes = Vec::new();
        for id in &ids {
            let s = UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0)).await.unwrap();
            nodes.push((*id, s.local_addr().unwrap()));
            socks.push(s);
        }
        let mut by_dist: Vec<usize> = (0..n).collect();
        by_dist.sort_by_key(|&i| distance(&ids[i], &ih));
        let counter = Arc::new(AtomicU32::new(0));
        let want_n6 = Arc::new(AtomicU32::new(0));
        for (i, s) in socks.into_iter().enumerate() {
            let me = ids[i];
            let known: Vec<(NodeId, SocketAddr)> = if full {
                nodes.iter().filter(|x| x.0 != me).copied().collect()
            } else {
                let mut t = RoutingTable::new(me, &DhtNodeLimits::default());
                for x in &nodes {
                    t.heard(x.0, x.1, Instant::now());
                }
                t.nodes().map(|x| (x.id, x.addr)).collect()
            };
            let rank = by_dist.iter().position(|&j| j == i).unwrap();
            let mine: Vec<SocketAddr> = if rank < 8 {
                peers
                    .iter()
                    .enumerate()
                    .filter(|(p, _)| p % 8 == rank)
                    .map(|(_, a)| *a)
                    .collect()
            } else {
                Vec::new()
            };
            let counter = counter.clone();
            let want6 = want_n6.clone();
            let pool6: Vec<(NodeId, SocketAddr)> = if also6.is_empty() {
                known.clone()
            } else {
                also6.to_vec()
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    let Ok((len, from)) = s.recv_from(&mut buf).await else {
                        return;
                    };
                    let Ok(m) = parse_krpc(&buf[..len], &DhtLimits::default()) else {
                        continue;
                    };
                    if m.kind != KrpcKind::Query {
                        continue;
                    }
                    let target = m.info_hash.or(m.target).copied().unwrap_or(me);
                    let mut close = known.clone();
                    close.sort_by_key(|x| distance(&x.0, &target));
                    close.truncate(8);
                    let (n4, n6) = match m.want {
                        Some(w) => (w.n4, w.n6),
                        None => (from.is_ipv4(), from.is_ipv6()),
                    };
                    if m.want.is_some_and(|w| w.n6) {
                        want6.fetch_add(1, Ordering::SeqCst);
                    }
                    let mut extra = Vec::new();
                    if n4 {
                        extra.push(("nodes", nodes_field(&close)));
                    }
                    if n6 {
                        let mut close6 = pool6.clone();
                        close6.sort_by_key(|x| distance(&x.0, &target));
                        close6.retain(|x| x.1.is_ipv6());
                        close6.truncate(8);
                        extra.push(("nodes6", nodes6_field(&close6)));
                    }
                    if m.method == Some(Method::GetPeers) {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let mut tok = Vec::new();
                        ben::bytes(&mut tok, b"tok");
                        extra.push(("token", tok));
                        if !mine.is_empty() {
                            let mut v = b"l".to_vec();
                            for p in &mine {
                                ben::bytes(&mut v, &compact_peer(p));
                            }
                            v.push(b'e');
                            extra.push(("values", v));
                        }
                    }
                    let r = encode_response(m.tid, &me, &extra);
                    let _ = s.send_to(&r, from).await;
                }
            });
        }
        FakeNet {
            nodes: by_dist.iter().map(|&i| nodes[i]).collect(),
            get_peers: counter,
            want_n6,
        }
    }

    fn swarm_peers() -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = (0..10u8)
            .map(|i| SocketAddr::from(([10, 77, 0, i + 1], 6881 + u16::from(i))))
            .collect();
        v.push("[fd00:77::1]:6881".parse().unwrap());
        v.push("[fd00:77::2]:51413".parse().unwrap());
        v
    }

    async fn lookup(bootstrap: SocketAddr, ih: NodeId) -> (Vec<LookupDone>, HashSet<SocketAddr>, Vec<DhtReport>) {
        lookups(vec![bootstrap], ih, 1).await
    }

    /// Runs the node(s) from `bootstrap` until `n` get_peers lookups ended.
    async fn lookups(
        bootstrap: Vec<SocketAddr>,
        ih: NodeId,
        n: usize,
    ) -> (Vec<LookupDone>, HashSet<SocketAddr>, Vec<DhtReport>) {
        let cfg = DhtConfig {
            bootstrap,
            port: 0,
            interval: Duration::from_secs(3600),
            policy: AddrPolicy {
                allow_private: true,
                ..Default::default()
            },
            limits: DhtNodeLimits {
                queries_per_sec: 1000.0,
                ..Default::default()
            },
        };
        let (tx, mut rx) = mpsc::channel(64);
        let (stop_tx, stop_rx) = watch::channel(false);
        let h = tokio::spawn(run(cfg, vec![(0, ih)], tx, stop_rx));
        let mut done = Vec::new();
        let mut found = HashSet::new();
        let mut reports = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while done
            .iter()
            .filter(|d: &&LookupDone| d.method == Method::GetPeers)
            .count()
            < n
        {
            let r = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("lookup ends")
                .expect("report");
            done.extend(r.lookups.iter().cloned());
            found.extend(r.found.iter().map(|f| f.1));
            reports.push(r);
        }
        let _ = stop_tx.send(true);
        while let Some(r) = rx.recv().await {
            found.extend(r.found.iter().map(|f| f.1));
            reports.push(r);
        }
        h.await.unwrap().unwrap();
        (done, found, reports)
    }

    /// Every node knows every other: the entry point (the node farthest
    /// from the info hash) lists the 8 closest, and those are asked, once
    /// each: exactly 1 + 8 get_peers queries.
    #[tokio::test]
    async fn iterative_get_peers_full_knowledge_network() {
        let ih = [0x3c; 20];
        let peers = swarm_peers();
        let net = fake_net(50, true, ih, &peers).await;
        let farthest = net.nodes[49].1;
        let (done, found, reports) = lookup(farthest, ih).await;
        let gp = done.iter().find(|d| d.method == Method::GetPeers).unwrap();
        assert_eq!(found, peers.iter().copied().collect::<HashSet<_>>());
        assert_eq!(gp.n_values, 12);
        assert_eq!(gp.n_queries, 9);
        assert_eq!(gp.n_responses, 9);
        assert_eq!(gp.n_closest_answered, 8);
        assert_eq!(net.get_peers.load(Ordering::SeqCst), 9);
        // Rows: 9 get_peers queries and 9 responses, 8 of them with values.
        let rows: Vec<&DhtMessageRow> = reports.iter().flat_map(|r| r.rows.iter()).collect();
        let q = rows
            .iter()
            .filter(|r| r.kind == "query" && r.method.as_deref() == Some("get_peers"))
            .count();
        let a: Vec<_> = rows
            .iter()
            .filter(|r| r.kind == "response" && r.method.as_deref() == Some("get_peers"))
            .collect();
        assert_eq!((q, a.len()), (9, 9));
        assert_eq!(a.iter().filter(|r| r.n_values > 0).count(), 8);
        assert_eq!(a.iter().map(|r| r.n_values).sum::<u64>(), 12);
        assert!(a.iter().all(|r| r.rtt_ms.is_some() && r.node_id.is_some()));
    }

    /// Each node knows only its own BEP 5 table: the lookup walks towards
    /// the info hash and still ends at the 8 closest, with every peer.
    #[tokio::test]
    async fn iterative_get_peers_kademlia_network() {
        let ih = [0xc3; 20];
        let peers = swarm_peers();
        let net = fake_net(50, false, ih, &peers).await;
        let (done, found, _) = lookup(net.nodes[49].1, ih).await;
        let gp = done.iter().find(|d| d.method == Method::GetPeers).unwrap();
        assert_eq!(found, peers.iter().copied().collect::<HashSet<_>>());
        assert_eq!(gp.n_closest_answered, 8);
        assert!((9..=30).contains(&gp.n_queries), "{} queries", gp.n_queries);
        assert_eq!(u64::from(gp.n_queries), u64::from(net.get_peers.load(Ordering::SeqCst)));
        eprintln!("kademlia network: {} get_peers queries, {:?}", gp.n_queries, gp.elapsed);
    }

    fn ipv6_swarm_peers() -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = (0..10u16)
            .map(|i| SocketAddr::from(([0xfd00, 0x66, 0, 0, 0, 0, 0, i + 1], 6881 + i)))
            .collect();
        v.push("10.66.0.1:6881".parse().unwrap());
        v
    }

    /// The full-knowledge test over IPv6 (BEP 32): 50 nodes on ::1 that
    /// list each other in `nodes6`; the IPv6 node asks with `want` n6 and
    /// follows `nodes6`: exactly 1 + 8 get_peers queries, every peer found.
    #[tokio::test]
    async fn iterative_get_peers_over_ipv6() {
        let ih = [0x6c; 20];
        let peers = ipv6_swarm_peers();
        let net = fake_net_on("::1", 50, true, ih, &peers, 0x0123_4567_89ab_cdef, &[]).await;
        let (done, found, reports) = lookup(net.nodes[49].1, ih).await;
        let gp = done.iter().find(|d| d.method == Method::GetPeers).unwrap();
        assert!(gp.ipv6);
        assert_eq!(found, peers.iter().copied().collect::<HashSet<_>>());
        assert_eq!(
            (gp.n_values, gp.n_queries, gp.n_responses, gp.n_closest_answered),
            (11, 9, 9, 8)
        );
        assert_eq!(net.get_peers.load(Ordering::SeqCst), 9);
        // Every query (the find_node of our own id included) wanted n6.
        let rows: Vec<&DhtMessageRow> = reports.iter().flat_map(|r| r.rows.iter()).collect();
        let queries = rows.iter().filter(|r| r.kind == "query").count() as u32;
        assert_eq!(net.want_n6.load(Ordering::SeqCst), queries);
        assert!(rows
            .iter()
            .all(|r| r.src_ip.0.to_string() == "::1" && r.dst_ip.0.to_string() == "::1"));
        let a: Vec<_> = rows
            .iter()
            .filter(|r| r.kind == "response" && r.method.as_deref() == Some("get_peers"))
            .collect();
        assert_eq!(a.len(), 9);
        assert_eq!(a.iter().map(|r| r.n_values).sum::<u64>(), 11);
    }

    /// Each IPv6 node knows only its own BEP 5 table: the walk through
    /// `nodes6` still ends at the 8 closest, with every peer.
    #[tokio::test]
    async fn iterative_get_peers_kademlia_network_over_ipv6() {
        let ih = [0x93; 20];
        let peers = ipv6_swarm_peers();
        let net = fake_net_on("::1", 50, false, ih, &peers, 0x0123_4567_89ab_cdef, &[]).await;
        let (done, found, _) = lookup(net.nodes[49].1, ih).await;
        let gp = done.iter().find(|d| d.method == Method::GetPeers).unwrap();
        assert_eq!(found, peers.iter().copied().collect::<HashSet<_>>());
        assert_eq!(gp.n_closest_answered, 8);
        assert!((9..=30).contains(&gp.n_queries), "{} queries", gp.n_queries);
        assert_eq!(u64::from(gp.n_queries), u64::from(net.get_peers.load(Ordering::SeqCst)));
    }

    /// Both families at once: an IPv4 network on 127.0.0.1 and an IPv6
    /// one on ::1, one bootstrap address each. Two nodes, one lookup each
    /// (1 + 8 queries on each network), the union of the peers found; both
    /// ask for both families (BEP 32), which these single-stack networks
    /// answer with empty lists of the other family.
    #[tokio::test]
    async fn ipv4_and_ipv6_nodes_side_by_side() {
        let ih = [0x3c; 20];
        let (p4, p6) = (swarm_peers(), ipv6_swarm_peers());
        let net4 = fake_net(50, true, ih, &p4).await;
        let net6 = fake_net_on("::1", 50, true, ih, &p6, 0x0123_4567_89ab_cdef, &[]).await;
        let (done, found, reports) = lookups(vec![net4.nodes[49].1, net6.nodes[49].1], ih, 2).await;
        let gp: Vec<&LookupDone> = done.iter().filter(|d| d.method == Method::GetPeers).collect();
        assert_eq!(gp.len(), 2);
        assert_eq!(gp.iter().filter(|d| d.ipv6).count(), 1);
        for d in &gp {
            assert_eq!((d.n_queries, d.n_responses, d.n_closest_answered), (9, 9, 8), "{d:?}");
        }
        assert_eq!(found, p4.iter().chain(&p6).copied().collect::<HashSet<_>>());
        assert_eq!(
            (
                net4.get_peers.load(Ordering::SeqCst),
                net6.get_peers.load(Ordering::SeqCst)
            ),
            (9, 9)
        );
        let q4 = reports
            .iter()
            .flat_map(|r| r.rows.iter())
            .filter(|r| r.kind == "query" && r.dst_ip == "127.0.0.1")
            .count() as u32;
        assert_eq!(net4.want_n6.load(Ordering::SeqCst), q4);
    }

    /// An IPv6 node with no IPv6 bootstrap address joins through the IPv4
    /// node (BEP 32): the IPv4 node's queries want n4 and n6, the IPv4
    /// network (dual-stack nodes) lists the IPv6 nodes closest to the
    /// target in `nodes6`, and those seed the IPv6 node's lookup, which
    /// then walks the IPv6 network by itself: every peer of both.
    #[tokio::test]
    async fn ipv6_node_seeded_by_nodes6_from_ipv4_nodes() {
        let ih = [0xa5; 20];
        let (p4, p6) = (swarm_peers(), ipv6_swarm_peers());
        let net6 = fake_net_on("::1", 50, true, ih, &p6, 0x0123_4567_89ab_cdef, &[]).await;
        let net4 = fake_net_on("127.0.0.1", 50, true, ih, &p4, 0x9e37_79b9_7f4a_7c15, &net6.nodes).await;
        let (done, found, reports) = lookups(vec![net4.nodes[49].1], ih, 2).await;
        let gp: Vec<&LookupDone> = done.iter().filter(|d| d.method == Method::GetPeers).collect();
        assert_eq!(gp.len(), 2);
        let (g4, g6) = match gp[0].ipv6 {
            true => (gp[1], gp[0]),
            false => (gp[0], gp[1]),
        };
        assert!(!g4.ipv6 && g6.ipv6);
        assert_eq!(found, p4.iter().chain(&p6).copied().collect::<HashSet<_>>());
        assert_eq!((g4.n_queries, g4.n_closest_answered), (9, 8));
        assert_eq!(g6.n_closest_answered, 8);
        assert_eq!(
            u64::from(g6.n_queries),
            u64::from(net6.get_peers.load(Ordering::SeqCst))
        );
        // Every query of ours to the IPv4 network wanted n6 (find_node
        // included); rows of the IPv6 node carry its routed address.
        let rows: Vec<&DhtMessageRow> = reports.iter().flat_map(|r| r.rows.iter()).collect();
        let q4 = rows
            .iter()
            .filter(|r| r.kind == "query" && r.dst_ip == "127.0.0.1")
            .count() as u32;
        assert_eq!(net4.want_n6.load(Ordering::SeqCst), q4);
        assert!(rows.iter().filter(|r| r.dst_ip == "::1").all(|r| r.src_ip == "::1"));
        eprintln!(
            "IPv6 lookup seeded through IPv4: {} queries, {} answers",
            g6.n_queries, g6.n_responses
        );
    }
}
