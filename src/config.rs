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
    /// Live flows in the whole flow table (`--max-flows`). An idle or
    /// half-open flow is accounted 0.5–0.8 KiB (see `max_memory`), so 2^18
    /// flows are ≤ 200 MiB; a tap sees far fewer concurrent BitTorrent
    /// flows. Before each batch the table makes room for the batch's
    /// packets: when it would pass this, the least recently active flows
    /// of the whole table (last packet, then conn_id: the same flows every
    /// run, whatever the hash key) are evicted until an eighth is free
    /// (counted: `flow_table_full`, `capture_stats.n_flows_evicted`).
    pub max_flows: usize,
    /// Bytes the flows' state may be accounted for, over the whole table
    /// (`--max-memory`): each flow's own allocations, its reassembly
    /// buffers (out-of-order segments, the compare tail) and its
    /// application state (handshake bytes, peer-wire framing buffers, piece
    /// blocks held for verification, staged mid-stream rows, uTP buffers),
    /// added up from sizes and buffer capacities (an account, not the
    /// process's RSS). Checked before each batch as `max_flows` is: past
    /// it the least recently active flows are evicted until an eighth is
    /// free (`flow_memory_full`), so the account passes it by at most what
    /// one batch adds (2 Ki frames, 2 MiB of payload). 128 MiB: ~170 k
    /// half-open flows (0.75 KiB each) or 240 k idle ones, or a busy tap's
    /// thousands of peer connections (2–4 KiB each) with hundreds of them
    /// holding a loss's worth of out-of-order data; a 1 GB bulk capture
    /// needs 5 MiB. With the rest of a run's state (batches in flight, the
    /// sink's row buffers, swarm and DHT tables, each bounded on its own) a
    /// flood of 600 k half-open connections then peaks under 300 MiB of RSS
    /// (bench/README.md, Session 5).
    pub max_memory: usize,
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
    /// How far (bytes, either way) a RST's sequence number may be from the
    /// next byte expected from its sender for the RST to close the
    /// connection (RFC 5961 §3 in-window check; the receiver's advertised
    /// window is not kept). Outside it the RST is ignored and counted
    /// (`tcp_rst_out_of_window`): a blind spoofer hits it with odds of
    /// 2 × 2^22 / 2^32 = 1/512 per guess, and one that does is undone by the
    /// next data its supposed sender sends (`tcp_rst_not_honoured`). 4 MiB
    /// covers the data in flight of real peer connections (Linux's default
    /// largest receive buffer is 6 MiB, of which a BitTorrent peer rarely
    /// fills more than one RTT's worth).
    pub tcp_rst_window: u32,
    /// A forward step of the capture's clock between two consecutive frames
    /// beyond which the time is taken as a clock step of the capturing host
    /// (NTP, a wrong date set by hand, +50 years) rather than as time that
    /// passed: the flow clock idle expiry runs on does not advance over it
    /// (counted, `capture_stats.n_ts_jumps`). Equal to `tcp_idle_us`: a
    /// transfer running across the step is not split, while any shorter
    /// silence still counts as time. A whole link silent for longer is
    /// rare on a tap; its flows then end at their next idle period.
    pub max_clock_jump_us: i64,
    /// Sources whose checksum habit is remembered (whether their first
    /// checked packet carried a checksum-offload pattern, which marks the
    /// capturing host). A capture holds a handful of such hosts; past the
    /// bound new sources are judged strictly (an offload pattern counts as
    /// a wrong checksum). ~40 bytes each.
    pub max_checksum_sources: usize,
    /// How often (packet time) shards sweep for idle flows.
    pub sweep_interval_us: i64,
    /// Frames per batch read from a capture file. Each batch is decoded and
    /// spread over the shards at once; four are in flight (one being read,
    /// two queued, one analyzed). 2 Ki frames of at most `batch_bytes` keep
    /// those four (~8 MB) inside the L3 cache, so the workers do not read
    /// cold packets: against 8 Ki / 8 MB batches, peak RSS on bulk-1g
    /// 140 -> 100 MB and on dht-500k 227 -> 159 MB. The output does not
    /// depend on it (a test runs batches of 7 frames against the default).
    pub batch_frames: usize,
    /// Bytes of frame data per batch (see `batch_frames`).
    pub batch_bytes: usize,
    /// Frames after the one that completed a dictionary rebuilt from
    /// ut_metadata before the shards verify pieces with it (the connection
    /// that carried it whole does at once). The shards learn it between
    /// steps, and a step never spans more frames than this, so which
    /// pieces are verified does not depend on where batches end. 2 Ki: one
    /// default batch.
    pub metadata_join_frames: u64,
    /// Peers (info_hash, ip, port) tracked in the swarm state; past it new
    /// peers are counted, not tracked. Each costs ~200 bytes plus its bitfield.
    pub max_peers: usize,
    /// Torrents tracked.
    pub max_torrents: usize,
    /// Largest piece count a bitfield may describe (2^23 pieces = 1 MiB of
    /// bitfield, libtorrent's message cap); longer bitfields are truncated
    /// and counted.
    pub max_pieces: u32,
    /// Addresses whose geolocation is cached (`--geoip`); each entry is about
    /// 150 bytes, so 2^18 ≈ 40 MB. Past it the cache starts over.
    pub max_geo_cache: usize,
    /// Rows buffered for Parquet row groups, over all tables (bytes). Rows
    /// are held as columns (the writer's column builders; counted exactly,
    /// by their buffers' capacities). A table's rows are written when it
    /// has a full row group (64 Ki rows) or, when the tables together pass
    /// this, the largest buffer is written early: without it twenty slowly
    /// filling tables could each hold most of a row group until the end of
    /// the run. The budget is checked every 1,024 rows of a table: between
    /// checks the buffers grow by those rows (and a buffer that fills up
    /// doubles its capacity). 4 MiB: with 12 MiB a capture whose tables
    /// never fill a row group (bulk-1g with --no-messages: 11 MB of rows
    /// over all tables) held its whole output until the end; peak RSS
    /// bulk-1g 66.7 -> 61.3 MiB (messages), 61.7 -> 57.0 (--no-messages),
    /// for 14 % (messages) and 3 % more Parquet bytes (smaller row groups).
    pub sink_buffer_bytes: usize,
    /// Anomaly rows written per (layer, kind); more are counted only, so a
    /// flood of one kind cannot fill the disk.
    pub max_anomaly_rows_per_kind: u64,
    /// Peer-wire events held per connection side while waiting for the
    /// originator's BEP 10 handshake (its `p` gives the listen port that
    /// identifies the peer). Real clients send it within the first few
    /// messages.
    pub max_held_events: usize,
    /// peer_messages rows of connections without an info_hash yet (picked
    /// up mid-stream) held until the swarm state attributes the connection,
    /// so that every row of it carries the info_hash. ~150 bytes each: 2^18
    /// ≈ 40 MB. Past it the oldest are written without one, counted as
    /// anomaly `held_messages_released`.
    pub max_held_messages: usize,
    /// Packet time a connection holds its events at most (settled at its
    /// first packet after that, keep-alives included): an originator that
    /// announces BEP 10 and never sends its handshake must not hold the
    /// swarm state's event order (see `max_event_wait_us`) for long.
    pub max_hold_us: i64,
    /// Stream bytes (both directions) a flow picked up mid-connection may
    /// be hunted for peer-wire framing before it must have framed a run of
    /// messages both ways (`analyze::stream`). Its staged output is bounded
    /// by what these bytes can frame. Real peer wire confirms within a few
    /// messages (three 16 KiB blocks one way, three requests the other).
    pub max_midstream_probe_bytes: u64,
    /// Messages one direction of such a stream may frame (their rows staged
    /// in memory) while the other has not framed its run: past it the
    /// stream is given up as one-way. Bounds the staged rows of a hostile
    /// stream of tiny messages to a few kilobytes.
    pub max_midstream_staged_msgs: u64,
    /// uTP-shaped datagrams of one UDP flow copied while the flow's uTP is
    /// not confirmed yet (`dissect::datagram::UtpConsistency`), and their
    /// bytes: a real connection confirms within its first handful of
    /// packets both ways; foreign traffic never does, and past the bound
    /// its uTP-shaped datagrams are no longer followed.
    pub utp_probe_max_datagrams: usize,
    pub utp_probe_max_bytes: usize,
    /// Swarm events kept back because a connection holds an earlier one
    /// (see `max_held_events`; each connection holds at most that many, so
    /// the wait is short). Past it they are applied out of frame order,
    /// counted as `swarm_order_forced`. ~100 bytes each: 2^18 ≈ 26 MB.
    pub max_waiting_events: usize,
    /// Packet time an event may wait for an earlier held one before it is
    /// applied anyway (counted as `swarm_order_forced`): a connection that
    /// holds events and then sends only keep-alives would otherwise stall
    /// the swarm state until it ends (up to `tcp_idle_us`), and live
    /// snapshots with it. Clients send their BEP 10 handshake within a
    /// second of the connection's start.
    pub max_event_wait_us: i64,
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
    /// (a query and its response are one UDP flow, so one shard): 2^16
    /// queries of ~150 bytes (an 8-byte keyed hash of the transaction id
    /// and both endpoints, the 48-byte query, two 16-byte places in the
    /// expiry order, the map's slack) ≈ 10 MB at worst (~300 bytes each
    /// while the key held both endpoints). With the 30 s
    /// timeout that pairs a node sending 2,000 queries a second (a busy
    /// DHT node sees a few hundred); past it the oldest query of the shard
    /// is dropped (counted, `dht_pending_full`).
    pub dht: DhtLimits,
    /// LSD (BEP 14) datagram bounds.
    pub lsd: LsdLimits,
    /// Distinct DHT nodes (node id, address) in `dht_nodes`, counting nodes
    /// only listed in responses. A crawl meets millions of nodes; past the
    /// bound new ones are counted, not tracked (`dht_node_table_full`).
    /// 7/8 of 2^17 (114,688): the hash table then fits in 2^17 buckets of
    /// ~105 bytes (14 MB; the key packs id, address and port in 39 bytes);
    /// at 2^17 entries it would double. A flood of queries from fresh node
    /// ids fills it (bench/README.md, session 5: the 600 k flood).
    pub max_dht_nodes: usize,
    /// Distinct info hashes in `dht_infohashes` (get_peers, announce_peer,
    /// BEP 51 samples); past it new ones are counted, not tracked
    /// (`dht_infohash_table_full`). 7/8 of 2^17, as `max_dht_nodes`: 2^17
    /// buckets of ~110 bytes (14 MB).
    pub max_dht_infohashes: usize,
    /// Live capture: peers, torrents, DHT nodes and info hashes not seen
    /// for this long (packet time) are forgotten at a rotation, right after
    /// the snapshot that holds their last state. One hour: clients
    /// re-announce every 30 min and send keep-alives every 2 min, so a peer
    /// silent for an hour has left the swarm as far as a tap can tell; a
    /// sensor running for days then holds what is active, not everything
    /// it ever saw (the max_* bounds above still cap a burst).
    pub live_state_idle_us: i64,
    /// Largest info dictionary rebuilt from ut_metadata (BEP 9). An info
    /// dictionary is 20 bytes per piece plus file names: 16 MiB holds
    /// 800 000 pieces, beyond any real torrent (libtorrent refuses more
    /// than a few MiB). A larger `metadata_size` or `total_size` (2^31 from
    /// a hostile peer) is refused before anything is allocated, counted.
    pub max_metadata_bytes: u32,
    /// Bytes of info dictionaries being assembled at once, over all
    /// torrents (a capture rarely holds more than a few magnet downloads);
    /// past it a new torrent's pieces are refused, counted.
    pub max_metadata_pending_bytes: usize,
    /// Bytes of info dictionaries rebuilt from ut_metadata and kept for the
    /// run (their piece hashes verify pieces). A peer can make up valid
    /// dictionaries (the info hash is whatever one hashes to), so without
    /// it `max_torrents` dictionaries of `max_metadata_bytes` each could be
    /// kept (1 TiB); past it new dictionaries are refused, counted
    /// (`metadata_table_full`). 256 MiB is thousands of real torrents.
    pub max_metadata_kept_bytes: usize,
    /// Pieces followed at once for verification per connection direction.
    /// Clients download a handful of pieces from one peer at a time; a
    /// sender interleaving more loses the oldest (counted).
    pub max_pieces_in_progress: usize,
    /// Out-of-order block bytes held aside per connection direction while
    /// a piece is verified. Blocks normally arrive in order and nothing is
    /// held; 2 MiB covers a reordered request pipeline of 128 blocks.
    /// Past it the piece is given up (counted).
    pub max_piece_buffer_per_direction: usize,
    /// The same over all connections (split evenly over shards): 256 MiB.
    pub max_piece_buffer_total: usize,
    /// Peers read from one ut_pex message. BEP 11 allows 50 added and 50
    /// dropped per message; 1024 leaves room for lax clients while a
    /// megabyte `added` string cannot turn into 170 000 rows.
    pub max_pex_entries: usize,
    /// `swarmtap probe`: peers tracked, visit history, messages and
    /// metadata per contact (see `ProbeLimits` for each reason).
    pub probe: crate::probe::ProbeLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_flows: 1 << 18,
            max_memory: 128 << 20,
            reassembly: ReassemblyLimits::default(),
            peer_wire: PeerWireLimits::default(),
            tcp_idle_us: 10 * 60 * 1_000_000,
            udp_idle_us: 3 * 60 * 1_000_000,
            tcp_closed_linger_us: 30 * 1_000_000,
            tcp_rst_window: 4 << 20,
            max_clock_jump_us: 10 * 60 * 1_000_000,
            max_checksum_sources: 1 << 16,
            sweep_interval_us: 10 * 1_000_000,
            batch_frames: 2 * 1024,
            batch_bytes: 2 << 20,
            metadata_join_frames: 2 * 1024,
            max_peers: 1 << 20,
            max_torrents: 1 << 16,
            max_pieces: 1 << 23,
            max_geo_cache: 1 << 18,
            sink_buffer_bytes: 4 << 20,
            max_anomaly_rows_per_kind: 10_000,
            max_held_events: 32,
            max_held_messages: 1 << 18,
            max_hold_us: 20 * 1_000_000,
            max_midstream_probe_bytes: 1 << 20,
            max_midstream_staged_msgs: 256,
            utp_probe_max_datagrams: 64,
            utp_probe_max_bytes: 96 * 1024,
            max_waiting_events: 1 << 18,
            max_event_wait_us: 60 * 1_000_000,
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
                max_pending: 1 << 16,
                ..DhtLimits::default()
            },
            lsd: LsdLimits::default(),
            max_dht_nodes: (1 << 17) / 8 * 7,
            max_dht_infohashes: (1 << 17) / 8 * 7,
            live_state_idle_us: 3600 * 1_000_000,
            max_metadata_bytes: 16 << 20,
            max_metadata_pending_bytes: 64 << 20,
            max_metadata_kept_bytes: 256 << 20,
            max_pieces_in_progress: 16,
            max_piece_buffer_per_direction: 2 << 20,
            max_piece_buffer_total: 256 << 20,
            max_pex_entries: 1024,
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
    /// Geolocation databases (`--geoip`); without them the geo columns are null.
    pub geo: Option<std::sync::Arc<crate::geo::GeoDb>>,
    /// `--verify-checksums`: drop TCP/UDP packets whose checksum is wrong
    /// (as a receiver does), counting them, instead of only counting them.
    pub verify_checksums: bool,
    /// The `sensor` column of every table (`--sensor`); None: the host name.
    pub sensor: Option<String>,
    /// Write into an output folder that holds something else (`--force`).
    pub force: bool,
    /// Write connection, peer, torrent and audit rows of flows identified
    /// with weak confidence too (`--keep-weak`); by default they stay in
    /// `flows` only.
    pub keep_weak: bool,
}

impl Settings {
    /// How the run's dataset is written.
    pub fn output_options(&self) -> crate::sink::OutputOptions {
        let mut o = crate::sink::OutputOptions {
            budget: self.limits.sink_buffer_bytes,
            force: self.force,
            ..Default::default()
        };
        if let Some(s) = &self.sensor {
            o.sensor = s.clone();
        }
        o
    }
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
            geo: None,
            verify_checksums: false,
            sensor: None,
            force: false,
            keep_weak: false,
        }
    }
}
