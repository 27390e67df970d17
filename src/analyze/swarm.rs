//! Per-swarm state: each peer's piece set joined across its connections,
//! completion and confirmed downloads, transfer volumes and peak rates, and
//! per-torrent totals. Fed sequentially with [`SwarmEvent`]s in frame order,
//! so it needs no locks and its output does not depend on thread count.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use super::{PeerSource, SwarmEvent, SwarmEventKind};
use crate::config::Limits;
use crate::proto::client_id::client_from_peer_id;
use crate::proto::metainfo::{hex, Metainfo};
use crate::sink::{PeerProgressRow, PeerRow, RowBatch, TorrentRow, Ts};

/// A set of piece indices, grown as indices arrive (bounded by max_pieces).
#[derive(Debug, Clone, Default)]
struct PieceSet {
    words: Vec<u64>,
    count: u64,
    /// have_all: every piece, whatever the count turns out to be.
    all: bool,
}

impl PieceSet {
    fn set(&mut self, i: u32) -> bool {
        let w = (i / 64) as usize;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let bit = 1u64 << (i % 64);
        if self.words[w] & bit == 0 {
            self.words[w] |= bit;
            self.count += 1;
            true
        } else {
            false
        }
    }

    fn clear(&mut self, i: u32) -> bool {
        let w = (i / 64) as usize;
        let bit = 1u64 << (i % 64);
        match self.words.get_mut(w) {
            Some(x) if *x & bit != 0 => {
                *x &= !bit;
                self.count -= 1;
                true
            }
            _ => false,
        }
    }

    /// Union with a bitfield (MSB of byte 0 is piece 0). Returns the highest
    /// set index + 1.
    fn union_bitfield(&mut self, bits: &[u8]) -> u32 {
        let mut top = 0;
        for (i, &b) in bits.iter().enumerate() {
            if b == 0 {
                continue;
            }
            for j in 0..8 {
                if b & (0x80 >> j) != 0 {
                    let idx = (i * 8 + j) as u32;
                    self.set(idx);
                    top = idx + 1;
                }
            }
        }
        top
    }

    /// Pieces held, given the torrent's piece count when known.
    fn have(&self, n: Option<u64>) -> Option<u64> {
        if self.all {
            n
        } else {
            Some(self.count)
        }
    }
}

#[derive(Debug, Clone)]
struct PeerState {
    peer_id: Option<[u8; 20]>,
    client: Option<String>,
    first_ts: i64,
    last_ts: i64,
    pieces: PieceSet,
    known: bool,
    first_pieces: Option<u64>,
    last_pieces: Option<u64>,
    below_seen: bool,
    /// Since when the peer has been below the threshold (None: not below).
    below_since: Option<i64>,
    completed_ts: Option<i64>,
    confirmed: bool,
    uploaded: u64,
    downloaded: u64,
    /// Current rate window start and bytes (down, up).
    win_start: i64,
    win_bytes: [u64; 2],
    win_len: i64,
    max_rate: [Option<f64>; 2],
    conns: Vec<u64>,
    n_connections: u64,
    /// PeerSource bits.
    sources: u8,
}

/// How long a peer must stay below the completion threshold for a later
/// crossing to count as a confirmed download (see the lazy-bitfield note in
/// `apply_one`); real downloads take far longer than a second.
pub const MIN_BELOW_US: i64 = 1_000_000;

/// Most connection ids remembered per peer to count distinct connections.
const MAX_CONNS_REMEMBERED: usize = 64;

#[derive(Debug, Clone, Default)]
struct TorrentState {
    meta: Option<std::sync::Arc<Metainfo>>,
    metadata_source: &'static str,
    /// Estimate from bitfields: max(8·(bytes−1)+1, highest index + 1).
    estimate: u64,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
    piece_bytes: u64,
}

impl TorrentState {
    fn exact(&self) -> Option<u64> {
        self.meta.as_ref().map(|m| u64::from(m.n_pieces))
    }

    fn count(&self) -> Option<u64> {
        self.exact().or((self.estimate > 0).then_some(self.estimate))
    }
}

/// Swarm state over the whole run.
pub struct Swarm {
    limits: Limits,
    threshold: f64,
    rate_window_us: i64,
    torrents: HashMap<[u8; 20], TorrentState>,
    peers: HashMap<([u8; 20], SocketAddr), PeerState>,
    pub n_peers_dropped: u64,
    pub n_torrents_dropped: u64,
}

impl Swarm {
    pub fn new(limits: Limits, threshold: f64, rate_window_s: u32) -> Self {
        Swarm {
            limits,
            threshold,
            rate_window_us: i64::from(rate_window_s.max(1)) * 1_000_000,
            torrents: HashMap::new(),
            peers: HashMap::new(),
            n_peers_dropped: 0,
            n_torrents_dropped: 0,
        }
    }

    /// Registers a torrent from a .torrent file (piece count, name, …).
    /// A hybrid torrent is registered under both its v1 hash and its v2 hash
    /// truncated to 20 bytes: clients put either in the handshake (BEP 52).
    pub fn add_metainfo(&mut self, m: std::sync::Arc<Metainfo>, source: &'static str) {
        for h in m.wire_hashes() {
            let t = self.torrents.entry(h).or_default();
            t.meta = Some(m.clone());
            t.metadata_source = source;
        }
    }

    fn torrent(&mut self, h: [u8; 20], ts: i64) -> Option<&mut TorrentState> {
        if !self.torrents.contains_key(&h) && self.torrents.len() >= self.limits.max_torrents {
            self.n_torrents_dropped += 1;
            return None;
        }
        let t = self.torrents.entry(h).or_default();
        t.first_ts = Some(t.first_ts.map_or(ts, |f| f.min(ts)));
        t.last_ts = Some(t.last_ts.map_or(ts, |l| l.max(ts)));
        Some(t)
    }

    /// Applies a batch's events (already in frame order) and appends
    /// `peer_progress` rows.
    pub fn apply(&mut self, events: Vec<SwarmEvent>, rows: &mut RowBatch) {
        for ev in events {
            self.apply_one(ev, rows);
        }
    }

    fn apply_one(&mut self, ev: SwarmEvent, rows: &mut RowBatch) {
        let ts = ev.ctx.ts;
        let max_pieces = self.limits.max_pieces;
        let Some(t) = self.torrent(ev.info_hash, ts) else {
            return;
        };
        // Estimate the piece count from what this event shows.
        match &ev.kind {
            SwarmEventKind::Bitfield(b) if !b.is_empty() => {
                let lower = 8 * (b.len() as u64 - 1) + 1;
                t.estimate = t.estimate.max(lower);
            }
            SwarmEventKind::Have(i) | SwarmEventKind::DontHave(i) if *i < max_pieces => {
                t.estimate = t.estimate.max(u64::from(*i) + 1);
            }
            SwarmEventKind::Transfer { bytes, .. } => t.piece_bytes += bytes,
            _ => {}
        }
        let n_exact = t.exact();
        let n = t.count();
        let key = (ev.info_hash, ev.peer);
        if !self.peers.contains_key(&key) {
            if self.peers.len() >= self.limits.max_peers {
                self.n_peers_dropped += 1;
                return;
            }
            self.peers.insert(key, PeerState::new(ts, self.rate_window_us));
        }
        let window = self.rate_window_us;
        let Some(p) = self.peers.get_mut(&key) else { return };
        p.first_ts = p.first_ts.min(ts);
        p.last_ts = p.last_ts.max(ts);
        let cause: Option<&'static str> = match ev.kind {
            SwarmEventKind::Learned { source } => {
                p.sources |= source.bit();
                None
            }
            SwarmEventKind::Seen { peer_id, client } => {
                p.sources |= PeerSource::Wire.bit();
                if peer_id.is_some() {
                    p.peer_id = peer_id;
                }
                if client.is_some() {
                    p.client = client;
                } else if p.client.is_none() {
                    p.client = peer_id.and_then(|i| client_from_peer_id(&i));
                }
                if !p.conns.contains(&ev.conn_id) {
                    p.n_connections += 1;
                    if p.conns.len() < MAX_CONNS_REMEMBERED {
                        p.conns.push(ev.conn_id);
                    }
                }
                None
            }
            SwarmEventKind::Bitfield(bits) => {
                p.pieces.union_bitfield(&bits);
                Some("bitfield")
            }
            SwarmEventKind::Have(i) => {
                if i < self.limits.max_pieces && n_exact.is_none_or(|n| u64::from(i) < n) {
                    p.pieces.set(i);
                    Some("have")
                } else {
                    None
                }
            }
            SwarmEventKind::HaveAll => {
                p.pieces.all = true;
                Some("have_all")
            }
            SwarmEventKind::HaveNone => {
                p.pieces.all = false;
                Some("have_none")
            }
            SwarmEventKind::DontHave(i) => {
                p.pieces.all = false;
                p.pieces.clear(i);
                Some("dont_have")
            }
            SwarmEventKind::Transfer { to, bytes } => {
                p.uploaded += bytes;
                p.add_rate(ts, window, 1, bytes);
                let rkey = (ev.info_hash, to);
                if let Some(r) = self.peers.get_mut(&rkey) {
                    r.downloaded += bytes;
                    r.last_ts = r.last_ts.max(ts);
                    r.add_rate(ts, window, 0, bytes);
                }
                None
            }
        };
        let Some(cause) = cause else { return };
        let Some(p) = self.peers.get_mut(&key) else { return };
        let have = p.pieces.have(n);
        let changed = have != p.last_pieces || !p.known;
        p.known = true;
        if p.first_pieces.is_none() {
            p.first_pieces = have;
        }
        p.last_pieces = have;
        if let (Some(h), Some(n)) = (have, n) {
            if n > 0 {
                let done = h as f64 >= self.threshold * n as f64;
                // A below-threshold state counts once it has lasted
                // MIN_BELOW_US: seeders that send a "lazy bitfield" (a few
                // pieces left out, then `have`s for them in the same breath,
                // as Deluge and libtorrent do against ISP filtering) are
                // below for a few milliseconds and are not downloads.
                let since = *p.below_since.get_or_insert(ts);
                if ts - since >= MIN_BELOW_US {
                    p.below_seen = true;
                }
                if done {
                    p.below_since = None;
                    if p.completed_ts.is_none() {
                        p.completed_ts = Some(ts);
                        p.confirmed = p.below_seen;
                    }
                }
            }
        }
        if changed {
            rows.peer_progress.push(PeerProgressRow {
                ts: Ts(ts),
                frame: ev.ctx.frame,
                conn_id: ev.conn_id,
                info_hash: hex(&ev.info_hash),
                peer_ip: ev.peer.ip().to_string(),
                peer_port: u32::from(ev.peer.port()),
                n_pieces_have: have,
                n_pieces: n_exact,
                cause,
            });
        }
    }

    /// Final `peers` and `torrents` rows.
    pub fn finish(mut self, rows: &mut RowBatch) {
        // Deterministic order: by torrent, then address.
        let mut keys: Vec<_> = self.peers.keys().copied().collect();
        keys.sort();
        let mut per_torrent: BTreeMap<[u8; 20], (u64, u64)> = BTreeMap::new();
        for k in keys {
            let Some(p) = self.peers.remove(&k) else { continue };
            let t = self.torrents.get(&k.0);
            let n = t.and_then(|t| t.count());
            let mut p = p;
            p.flush_rate();
            let e = per_torrent.entry(k.0).or_default();
            e.0 += 1;
            e.1 += u64::from(p.confirmed);
            rows.peers.push(PeerRow {
                info_hash: hex(&k.0),
                peer_ip: k.1.ip().to_string(),
                peer_port: u32::from(k.1.port()),
                peer_id: p.peer_id.map(|i| hex(&i)),
                client: p.client,
                first_ts: Ts(p.first_ts),
                last_ts: Ts(p.last_ts),
                first_pieces: p.first_pieces,
                last_pieces: p.last_pieces,
                n_pieces: n,
                completed_ts: p.completed_ts.map(Ts),
                confirmed_download: p.confirmed,
                uploaded_bytes: p.uploaded,
                downloaded_bytes: p.downloaded,
                max_rate_bps: p.max_rate[0],
                max_upload_rate_bps: p.max_rate[1],
                n_connections: p.n_connections,
                sources: PeerSource::ALL
                    .iter()
                    .filter(|s| p.sources & s.bit() != 0)
                    .map(|s| s.name().to_string())
                    .collect(),
            });
        }
        let mut hashes: Vec<_> = self.torrents.keys().copied().collect();
        hashes.sort();
        for h in hashes {
            let Some(t) = self.torrents.get(&h) else { continue };
            // Torrents only named by --torrents and never seen are not rows.
            if t.first_ts.is_none() {
                continue;
            }
            let (n_peers, n_conf) = per_torrent.get(&h).copied().unwrap_or_default();
            let m = t.meta.as_deref();
            rows.torrents.push(TorrentRow {
                info_hash: hex(&h),
                info_hash_v2: m.and_then(|m| m.info_hash_v2).map(|h| hex(&h)),
                name: m.map(|m| m.name.clone()),
                piece_length: m.map(|m| m.piece_length),
                n_pieces: t.count(),
                n_pieces_source: if m.is_some() {
                    t.metadata_source
                } else if t.estimate > 0 {
                    "bitfield_estimate"
                } else {
                    "none"
                },
                total_bytes: m.map(|m| m.total_bytes),
                metadata_source: if m.is_some() { t.metadata_source } else { "none" },
                n_peers,
                n_confirmed_downloads: n_conf,
                piece_bytes: t.piece_bytes,
                first_ts: t.first_ts.map(Ts),
                last_ts: t.last_ts.map(Ts),
            });
        }
    }

    /// Piece count and piece length for framing checks, when known exactly.
    pub fn shape_of(&self, h: &[u8; 20]) -> Option<(u32, u64)> {
        self.torrents
            .get(h)
            .and_then(|t| t.meta.as_ref())
            .map(|m| (m.n_pieces, m.piece_length))
    }
}

impl PeerState {
    fn new(ts: i64, window: i64) -> Self {
        PeerState {
            peer_id: None,
            client: None,
            first_ts: ts,
            last_ts: ts,
            pieces: PieceSet::default(),
            known: false,
            first_pieces: None,
            last_pieces: None,
            below_seen: false,
            below_since: None,
            completed_ts: None,
            confirmed: false,
            uploaded: 0,
            downloaded: 0,
            win_start: ts - ts.rem_euclid(window),
            win_bytes: [0, 0],
            win_len: window,
            max_rate: [None, None],
            conns: Vec::new(),
            n_connections: 0,
            sources: 0,
        }
    }

    /// Adds bytes to the tumbling window holding `ts` (dir 0 = down, 1 = up).
    fn add_rate(&mut self, ts: i64, window: i64, dir: usize, bytes: u64) {
        let start = ts - ts.rem_euclid(window);
        if start > self.win_start {
            self.flush_rate_with(window);
            self.win_start = start;
        }
        self.win_bytes[dir] += bytes;
    }

    fn flush_rate_with(&mut self, window: i64) {
        for d in 0..2 {
            if self.win_bytes[d] > 0 {
                let r = self.win_bytes[d] as f64 / (window as f64 / 1e6);
                self.max_rate[d] = Some(self.max_rate[d].map_or(r, |m: f64| m.max(r)));
            }
            self.win_bytes[d] = 0;
        }
    }

    fn flush_rate(&mut self) {
        let w = self.win_len;
        if w > 0 {
            self.flush_rate_with(w);
        }
    }
}
