//! Validated settings and [`Limits`]: every bound on what hostile or simply
//! huge input may make swarmtap hold, each with its reason.

use crate::flow::reassembly::ReassemblyLimits;
use crate::proto::dht::DhtLimits;
use crate::proto::lsd::LsdLimits;
use crate::proto::peer_wire::PeerWireLimits;
use crate::proto::tracker_http::HttpLimits;
use crate::proto::tracker_udp::{PendingLimits, UdpLimits};

/// Every bound on memory and work that input controls.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Live flows in the whole flow table (split evenly over shards). A flow
    /// without buffered data costs about 300 bytes, so 2^18 flows ≈ 80 MB; a
    /// tap sees far fewer concurrent BitTorrent flows. When full, the
    /// least recently active eighth of a shard is expired (counted).
    pub max_flows: usize,
    /// TCP reassembly bounds per direction.
    pub reassembly: ReassemblyLimits,
    /// Peer-wire framing bounds per direction.
    pub peer_wire: PeerWireLimits,
    /// Idle time (packet time) after which a TCP flow is closed. Peers send
    /// keep-alives every 2 minutes; libtorrent drops peers idle for 2–4 min.
    pub tcp_idle_us: i64,
    /// Idle time after which a UDP flow (DHT, tracker, uTP socket pair) ends.
    pub udp_idle_us: i64,
    /// Time a closed (FIN both ways, or RST) TCP flow is kept for stragglers.
    pub tcp_closed_linger_us: i64,
    /// How often (packet time) shards sweep for idle flows.
    pub sweep_interval_us: i64,
    /// Peers (info_hash, ip, port) tracked in the swarm state; past it new
    /// peers are counted, not tracked. Each costs ~200 bytes plus its bitfield.
    pub max_peers: usize,
    /// Torrents tracked.
    pub max_torrents: usize,
    /// Largest piece count a bitfield may describe (2^23 pieces = 1 MiB of
    /// bitfield, libtorrent's message cap); longer bitfields are truncated
    /// and counted.
    pub max_pieces: u32,
    /// Anomaly rows written per (layer, kind); more are counted only, so a
    /// flood of one kind cannot fill the disk.
    pub max_anomaly_rows_per_kind: u64,
    /// Peer-wire events held per connection side while waiting for the
    /// originator's BEP 10 handshake (its `p` gives the listen port that
    /// identifies the peer). Real clients send it within the first few
    /// messages.
    pub max_held_events: usize,
    /// Bytes of BEP 10 handshakes parsed (larger ones are skipped, counted).
    pub max_ltep_handshake: usize,
    /// HTTP tracker framing and parsing bounds per connection (head, body,
    /// decompressed body, chunk lines, pipelined requests, peers, scrape
    /// files; see `HttpLimits` for each reason). Defaults as there.
    pub tracker_http: HttpLimits,
    /// UDP tracker datagram bounds (peers, scrape hashes, BEP 41 options).
    pub tracker_udp: UdpLimits,
    /// UDP tracker transactions awaiting their answer and connection ids,
    /// **per shard** (a request and its answer are one UDP flow, hence one
    /// shard). 1024 per shard × 64 shards = 65 536 in flight, far more than
    /// a tap sees at once (a client has a handful per tracker), at ~600
    /// bytes each (the half-built row) ≈ 40 MB at worst. Unanswered ones
    /// become rows without a response after 60 s (BEP 15 retransmits at
    /// 15 s, so an answer later than that answers a retransmission), or when
    /// evicted from a full table (counted).
    pub tracker_udp_pending: PendingLimits,
    /// Announce series kept by the audit (tracker, info hash, client
    /// address, peer id). ~100 bytes each plus their announces; a busy
    /// tracker's capture holds a few thousand. Past it, new series are
    /// counted, not audited.
    pub max_audit_series: usize,
    /// Announces kept per series. Clients announce every 30 min (opentracker,
    /// most trackers), so 1024 is three weeks of one client; past it the
    /// newest replaces the last kept one, so deltas stay whole and only the
    /// resolution of the interval checks drops.
    pub max_audit_announces: usize,
    /// (info hash, address) pairs whose observed piece bytes the audit
    /// counts (~64 bytes each), and addresses whose unattributable (encrypted
    /// or unrecognised) TCP flows it remembers. 2^18 covers the peers of a
    /// large capture; past it new pairs are counted, not tracked, and the
    /// audit says so (`coverage` unknown).
    pub max_audit_addrs: usize,
    /// Undecodable-flow spans remembered per address; past it the two
    /// oldest merge into one covering span (the bound they give only grows
    /// looser, never wrong).
    pub max_audit_spans_per_addr: usize,
    /// KRPC bounds: datagram size, bencode depth/items, query timeout, and
    /// `max_pending`, the outstanding queries kept for pairing responses.
    /// `max_pending` is for the whole run, split evenly over the shards
    /// (a query and its response are one UDP flow, so one shard): 2^18
    /// queries of ~100 bytes ≈ 26 MB at worst. With the 30 s timeout that
    /// pairs a node sending 8,000 queries a second; past it the oldest
    /// query of the shard is dropped (counted, `dht_pending_full`).
    pub dht: DhtLimits,
    /// LSD (BEP 14) datagram bounds.
    pub lsd: LsdLimits,
    /// Distinct DHT nodes (node id, address) in `dht_nodes`, counting nodes
    /// only listed in responses. ~150 bytes each: 2^18 ≈ 40 MB. A crawl
    /// meets millions of nodes; past the bound new ones are counted, not
    /// tracked (`dht_node_table_full`).
    pub max_dht_nodes: usize,
    /// Distinct info hashes in `dht_infohashes` (get_peers, announce_peer,
    /// BEP 51 samples). ~120 bytes each: 2^18 ≈ 30 MB; past it new ones are
    /// counted, not tracked (`dht_infohash_table_full`).
    pub max_dht_infohashes: usize,
    /// `swarmtap probe`: peers tracked, visit history, messages and
    /// metadata per contact (see `ProbeLimits` for each reason).
    pub probe: crate::probe::ProbeLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_flows: 1 << 18,
            reassembly: ReassemblyLimits::default(),
            peer_wire: PeerWireLimits::default(),
            tcp_idle_us: 10 * 60 * 1_000_000,
            udp_idle_us: 3 * 60 * 1_000_000,
            tcp_closed_linger_us: 30 * 1_000_000,
            sweep_interval_us: 10 * 1_000_000,
            max_peers: 1 << 20,
            max_torrents: 1 << 16,
            max_pieces: 1 << 23,
            max_anomaly_rows_per_kind: 10_000,
            max_held_events: 32,
            max_ltep_handshake: 64 * 1024,
            tracker_http: HttpLimits::default(),
            tracker_udp: UdpLimits::default(),
            tracker_udp_pending: PendingLimits {
                max_pending: 1024,
                max_connection_ids: 1024,
                ..PendingLimits::default()
            },
            max_audit_series: 1 << 16,
            max_audit_announces: 1024,
            max_audit_addrs: 1 << 18,
            max_audit_spans_per_addr: 64,
            dht: DhtLimits {
                max_pending: 1 << 18,
                ..DhtLimits::default()
            },
            lsd: LsdLimits::default(),
            max_dht_nodes: 1 << 18,
            max_dht_infohashes: 1 << 18,
            probe: crate::probe::ProbeLimits::default(),
        }
    }
}

/// Settings of one analysis run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: Limits,
    /// Completion threshold for confirmed downloads (fraction of pieces).
    pub threshold: f64,
    /// Write peer_messages rows.
    pub messages: bool,
    /// Window (seconds of packet time) for peak rates.
    pub rate_window_s: u32,
    /// Worker threads (rayon); output does not depend on it.
    pub threads: usize,
    /// Flow shards; fixed (not derived from threads) so output is identical
    /// for any thread count.
    pub n_shards: usize,
    /// Announce audit: the fastest upload rate (bytes/s) a client's link can
    /// plausibly carry; a reported rate above it is flagged
    /// `upload_rate_above_link`. 10 Gbit/s (1.25e9 B/s) is the fastest
    /// access link a home or seedbox client is likely to have.
    pub audit_max_link_bps: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits::default(),
            threshold: 0.98,
            messages: true,
            rate_window_s: 5,
            threads: 0,
            n_shards: 64,
            audit_max_link_bps: 1.25e9,
        }
    }
}
