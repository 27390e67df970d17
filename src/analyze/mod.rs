//! Analysis state above the parsers: per-connection peer-wire sessions (in
//! the shards, next to their flows) and the per-swarm state (one, sequential,
//! fed by the shards' [`SwarmEvent`]s in frame order).

pub mod apps;
pub mod audit;
pub mod dht;
pub mod held;
pub mod keyhash;
pub mod lsd;
pub mod metadata;
pub mod order;
pub mod packed;
pub mod pieces;
pub mod session;
pub mod stage;
pub mod stream;
pub mod swarm;
pub mod tracker;
pub mod udp;

use std::net::{IpAddr, SocketAddr};

use crate::sink::{AnomalyRow, RowBatch, Ts};

/// Where a packet came from (defined by the flow layer, below us).
pub use crate::flow::FrameCtx;

/// What a connection tells the swarm state about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwarmEventKind {
    /// The peer took part in connection `conn_id`.
    Seen {
        peer_id: Option<[u8; 20]>,
        client: Option<String>,
        /// The endpoint's port is a listen port (the responder's, or the
        /// originator's BEP 10 `p`), not an ephemeral source port.
        listen: bool,
    },
    Bitfield(Vec<u8>),
    Have(u32),
    HaveAll,
    HaveNone,
    DontHave(u32),
    /// The peer sent `bytes` of piece blocks to `to`.
    Transfer {
        to: SocketAddr,
        bytes: u64,
        /// The rest of a block cut off by the end of the connection: known
        /// only when the flow ends, which may be long after its last packet
        /// (an idle timeout, seen at a sweep). It counts in the byte totals
        /// but not in the rate windows, which by then may have moved on
        /// depending on where batches ended.
        cut_off: bool,
    },
    /// The peer's endpoint was learned from another source (a tracker
    /// response, a DHT reply or announce, PEX, LSD, a probe) without it
    /// necessarily being seen on the wire.
    Learned {
        source: PeerSource,
    },
    /// What is known of the peer's transport and encryption preference:
    /// from its BEP 10 `e` key, from PEX flags about it, or from a uTP
    /// connection it took part in. `None` fields say nothing.
    Traits {
        prefers_encryption: Option<bool>,
        utp: Option<bool>,
        /// The peer said it of itself (BEP 10 handshake, its own
        /// connection), rather than another peer about it (PEX).
        from_self: bool,
    },
    /// What a signal other than the peer's own bitfield and `have`s says
    /// of its progress (see [`Claim`]).
    Claim(Claim),
}

/// A statement about a peer's progress from outside its peer-wire piece
/// messages: its tracker announces, its BEP 10 `upload_only`, another
/// peer's ut_pex flags about it, its BEP 33 DHT announce. The swarm state
/// fuses them with the wire (`peers.completion_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A tracker announce by the peer: bytes `left` (BEP 3; null when the
    /// request had none) and whether it was `event=completed`.
    Tracker { left: Option<u64>, completed: bool },
    /// `upload_only` = 1 from the peer itself, in its BEP 10 handshake or a
    /// libtorrent `upload_only` extension message: it wants nothing more
    /// (a seed, or a partial seed of the files it selected).
    UploadOnly,
    /// ut_pex flag 0x02 (seed / upload only) that another peer gave for it.
    PexSeed,
    /// BEP 33 `seed` = 1 in its own DHT announce_peer.
    DhtSeed,
}

/// Where a peer was learned (`peers.sources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerSource {
    Wire,
    Tracker,
    Dht,
    Pex,
    Lsd,
    Probe,
}

impl PeerSource {
    pub const ALL: [PeerSource; 6] = [
        PeerSource::Wire,
        PeerSource::Tracker,
        PeerSource::Dht,
        PeerSource::Pex,
        PeerSource::Lsd,
        PeerSource::Probe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PeerSource::Wire => "wire",
            PeerSource::Tracker => "tracker",
            PeerSource::Dht => "dht",
            PeerSource::Pex => "pex",
            PeerSource::Lsd => "lsd",
            PeerSource::Probe => "probe",
        }
    }

    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// An event about one peer of one torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmEvent {
    pub ctx: FrameCtx,
    pub conn_id: u64,
    pub info_hash: [u8; 20],
    pub peer: SocketAddr,
    pub kind: SwarmEventKind,
}

/// An encrypted connection's ends, typed, for the sequential stage's
/// attribution by endpoint (its `connections` row carries them as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnEnds {
    pub conn_id: u64,
    pub capture: u32,
    /// [originator, responder]
    pub ends: [SocketAddr; 2],
    pub utp: bool,
}

/// What a shard produces during one batch.
#[derive(Debug, Default)]
pub struct ShardOut {
    pub rows: RowBatch,
    /// The ends of this batch's encrypted connection rows without a torrent.
    pub conn_ends: Vec<ConnEnds>,
    pub events: Vec<SwarmEvent>,
    /// Events of mid-stream connections whose info_hash is not known yet.
    pub unattributed: Vec<swarm::UnattributedEvent>,
    /// Announces for the audit, at their request's frame.
    pub marks: Vec<tracker::AnnounceMark>,
    /// Capture names by index, for the `capture` column.
    pub capture_names: std::sync::Arc<Vec<String>>,

    /// What the DHT tables aggregate run-wide (`dht_nodes`, `dht_infohashes`).
    pub dht: Vec<dht::DhtObservation>,
    /// The same as shared strings, made on first use (per-message,
    /// per-flow and per-connection rows share them instead of allocating a
    /// copy each).
    pub capture_texts: std::sync::OnceLock<Vec<std::sync::Arc<str>>>,
    /// ut_metadata pieces for the run-wide assembler.
    pub metadata: Vec<metadata::MetadataPiece>,
    /// Input, not output: torrents whose piece hashes are known, replaced
    /// by the pipeline between batches (see `pieces`).
    pub known: std::sync::Arc<pieces::KnownTorrents>,
    /// Out-of-order piece bytes held by this shard's connections.
    pub piece_budget: pieces::PieceBudget,
    /// (capture, frame) of the oldest event each connection holds back
    /// (waiting for the originator's identity), with how many connections
    /// hold one there: the swarm state applies no later event until these
    /// are released, so the order events are applied in does not depend on
    /// where batches end.
    pub held_since: std::collections::BTreeMap<(u32, u64), u32>,
    /// Input, not output: anomaly kinds (layer → kinds) whose rows have
    /// reached the run's per-kind cap (Limits::max_anomaly_rows_per_kind),
    /// replaced by the pipeline between steps. Rows of these kinds are
    /// counted in `anomalies_withheld` and never built: the pipeline's gate
    /// would drop every one of them (a kind is full only once the gate has
    /// kept its last row).
    pub full_kinds: std::sync::Arc<FullKinds>,
    /// Anomalies not built because their kind was full, by capture index
    /// (None: no frame, a run-level row); taken by the pipeline each step.
    pub anomalies_withheld: std::collections::BTreeMap<Option<u32>, u64>,
}

/// Anomaly kinds by layer (see [`ShardOut::full_kinds`]).
pub type FullKinds = std::collections::HashMap<&'static str, std::collections::HashSet<String>>;

impl ShardOut {
    /// The oldest (capture, frame) any connection of this shard holds.
    pub fn oldest_held(&self) -> Option<(u32, u64)> {
        self.held_since.keys().next().copied()
    }

    fn hold(&mut self, key: (u32, u64)) {
        *self.held_since.entry(key).or_default() += 1;
    }

    fn unhold(&mut self, key: (u32, u64)) {
        if let std::collections::btree_map::Entry::Occupied(mut e) = self.held_since.entry(key) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl ShardOut {
    /// A connection's row, with its typed ends when the stage may have to
    /// attribute it (encrypted, no info hash).
    pub fn push_connection(&mut self, init: &stream::StreamInit, row: crate::sink::ConnectionRow) {
        if row.encrypted && row.info_hash.is_none() {
            self.conn_ends.push(ConnEnds {
                conn_id: row.conn_id,
                capture: init.capture,
                ends: init.ends,
                utp: init.transport == crate::sink::ConnTransport::Utp,
            });
        }
        self.rows.connections.push(row);
    }

    pub fn capture_name(&self, idx: u32) -> String {
        self.capture_names.get(idx as usize).cloned().unwrap_or_default()
    }

    /// [`ShardOut::capture_name`] as a shared string.
    pub fn capture_arc(&self, idx: u32) -> std::sync::Arc<str> {
        let names = &self.capture_names;
        let texts = self
            .capture_texts
            .get_or_init(|| names.iter().map(|n| n.as_str().into()).collect());
        match texts.get(idx as usize) {
            Some(t) if texts.len() == names.len() => t.clone(),
            // Names set after the first use (not done): a copy.
            _ => names.get(idx as usize).map_or("", |n| n.as_str()).into(),
        }
    }

    /// The same (kept for the callers that hold the output mutably).
    /// Inlined: out of line it cost dht-125k's worker 2.2 M instructions
    /// (session 14's bulk).
    #[inline]
    pub fn capture_text(&mut self, idx: u32) -> std::sync::Arc<str> {
        self.capture_arc(idx)
    }

    pub fn anomaly(
        &mut self,
        ctx: Option<FrameCtx>,
        conn_id: Option<u64>,
        layer: &'static str,
        kind: &str,
        detail: Option<String>,
    ) {
        self.anomaly_with(ctx, conn_id, layer, kind, || detail);
    }

    /// [`anomaly`](Self::anomaly) with the detail made only when the row is
    /// built: a kind past the run's row cap is only counted (a flood of
    /// them formats no text).
    pub fn anomaly_with(
        &mut self,
        ctx: Option<FrameCtx>,
        conn_id: Option<u64>,
        layer: &'static str,
        kind: &str,
        detail: impl FnOnce() -> Option<String>,
    ) {
        if !self.full_kinds.is_empty() && self.full_kinds.get(layer).is_some_and(|k| k.contains(kind)) {
            *self.anomalies_withheld.entry(ctx.map(|c| c.capture)).or_default() += 1;
            return;
        }
        let detail = detail();
        let capture = ctx.map(|c| self.capture_name(c.capture)).unwrap_or_default();
        self.rows.anomalies.push(AnomalyRow {
            ts: ctx.map(|c| Ts(c.ts)),
            frame: ctx.map(|c| c.frame),
            capture,
            conn_id,
            layer,
            kind: kind.to_string(),
            detail,
        });
    }
}

/// Text form of an address (RFC 5952 for IPv6, as std prints it).
pub fn ip_text(ip: IpAddr) -> String {
    ip.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind the pipeline reported full is counted, by capture, and its
    /// row (detail included) is never made; other kinds still are.
    #[test]
    fn full_kinds_are_counted_without_building_rows() {
        let mut out = ShardOut {
            capture_names: std::sync::Arc::new(vec!["a.pcap".into(), "b.pcap".into()]),
            ..Default::default()
        };
        let mut full = FullKinds::new();
        full.entry("dht").or_default().insert("dht_pending_full".into());
        out.full_kinds = std::sync::Arc::new(full);
        let ctx = |capture| FrameCtx {
            ts: 1,
            frame: 7,
            capture,
        };
        for c in [1, 1, 0] {
            out.anomaly_with(Some(ctx(c)), Some(3), "dht", "dht_pending_full", || {
                panic!("a full kind's detail is made")
            });
        }
        out.anomaly_with(None, None, "dht", "dht_pending_full", || panic!("made"));
        out.anomaly(Some(ctx(0)), Some(3), "dht", "dht_tid_too_long", Some("x".into()));
        assert_eq!(
            out.anomalies_withheld,
            std::collections::BTreeMap::from([(None, 1), (Some(0), 1), (Some(1), 2)])
        );
        assert_eq!(out.rows.anomalies.len(), 1);
        assert_eq!(out.rows.anomalies[0].capture, "a.pcap");
    }
}
