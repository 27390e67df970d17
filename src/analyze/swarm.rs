//! Per-swarm state: each peer's piece set joined across its connections,
//! completion and confirmed downloads, transfer volumes and peak rates, and
//! per-torrent totals. Fed sequentially with [`SwarmEvent`]s in frame order,
//! so it needs no locks and its output does not depend on thread count.
//!
//! Peer identity is (info_hash, ip, listen port). Two things blur it, and
//! both are repaired here:
//! - An originator that sends no BEP 10 `p` is known only by its ephemeral
//!   source port. Rows of the same (info_hash, ip, peer_id) are merged, and a
//!   listen endpoint (a responder port, a `p`) wins over an ephemeral one.
//!   libtorrent 2 and qBittorrent draw a new peer id for every connection,
//!   so an ephemeral endpoint is also merged into the listen endpoint of the
//!   same (info_hash, ip) whose peer id has the same 8-byte client prefix
//!   (`-LT2080-`), when that listen endpoint is the only one: two copies of
//!   the same client version behind one address on one torrent would be
//!   needed to merge wrongly, and then there would be two listen endpoints.
//! - A connection picked up mid-stream has no handshake, so no info_hash. Its
//!   events wait (bounded) until one of its endpoints is known as the listen
//!   endpoint of exactly one torrent, from a handshake or a tracker/DHT/LSD
//!   sighting; the connection is then attributed to that torrent.
//!
//! Completion is computed at the end from each peer's history of piece
//! counts, with the best piece count known by then (a .torrent, metadata, or
//! the largest bitfield), so early guesses never fix a result.
//!
//! A peer's progress is fused from every signal the capture holds: its own
//! bitfield, `have`, have_all/have_none and lt_donthave on the wire, and the
//! claims of other sources ([`Claim`]): its tracker announces (`left`
//! against the torrent's length, `event=completed`), its BEP 10
//! `upload_only`, ut_pex seed flags others gave for it, its BEP 33 `seed` in
//! a DHT announce. Each source's latest word counts and the fused count is
//! the highest of them ([`fuse`]), so a client that sent its last `have` to
//! no one (clients skip peers that hold the piece) is still complete when
//! its tracker says so. A claim the wire contradicts later (a bitfield or
//! `have` at least [`MIN_BELOW_US`] after it showing fewer pieces) is set
//! aside; both that and a claim standing above the wire's last word are
//! `anomalies` rows (layer swarm). The crossing of a confirmed download is
//! the first evidence of crossing, from whichever signal.

use super::keyhash::{Entry, Map};
use std::collections::{BTreeMap, HashMap};

use std::net::{IpAddr, SocketAddr};

use super::packed::{put_i, put_u, Packed, Reader, Record, Track};
use super::{Claim, PeerSource, SwarmEvent, SwarmEventKind};
use crate::config::Limits;
use crate::proto::client_id::client_from_peer_id;
use crate::proto::metainfo::{hex, Metainfo};
use crate::sink::{AnomalyRow, Ip, PeerProgressRow, PeerRow, RowBatch, TorrentRow, Ts};

/// How long a peer must stay below the completion threshold for its later
/// crossing to count as a confirmed download. Seeders that send a "lazy
/// bitfield" (a few pieces left out, then `have`s for them in the same
/// breath, as Deluge and libtorrent do against ISP filtering) are below for
/// milliseconds; real downloads take far longer than a second.
pub const MIN_BELOW_US: i64 = 1_000_000;

/// Most connection ids remembered per peer to count distinct connections.
const MAX_CONNS_REMEMBERED: usize = 1024;

/// Points kept in a peer's progress history; past it, every other point is
/// dropped (first and last kept), so the shape survives at bounded cost.
const MAX_HISTORY: usize = 4096;

/// At `MAX_HISTORY` points, keeps every other point and the last one: the
/// history stays bounded and keeps its shape and its latest value.
fn thin_at_bound<T: Copy + PartialEq>(v: &mut Vec<T>) {
    if v.len() < MAX_HISTORY {
        return;
    }
    let last = v.last().copied();
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        i % 2 == 1
    });
    if let (Some(l), Some(cur)) = (last, v.last().copied()) {
        if cur != l {
            v.push(l);
        }
    }
}

/// [`thin_at_bound`] for a packed series (decoded and packed again, once
/// every MAX_HISTORY / 2 points past the bound).
fn thin_packed<T: Record + PartialEq>(p: &mut Packed<T>) {
    if p.len() >= MAX_HISTORY {
        let mut v = p.to_vec();
        thin_at_bound(&mut v);
        *p = Packed::from_slice(&v);
    }
}

/// [`thin_packed`] for a [`Track`].
fn thin_track<T: Record + PartialEq>(p: &mut Track<T>) {
    if p.len() >= MAX_HISTORY {
        let mut v = p.to_vec();
        thin_at_bound(&mut v);
        *p = Track::from_slice(&v);
    }
}

/// Events of one unattributed (mid-stream) connection kept while waiting.
const MAX_PENDING_EVENTS_PER_CONN: usize = 4096;
/// Unattributed connections waiting at once.
const MAX_PENDING_CONNS: usize = 4096;

/// File paths listed in a `torrents` row (the count is always whole).
const MAX_FILES_IN_ROW: usize = 1000;

/// Per-torrent totals gathered from the peers at the end.
#[derive(Debug, Clone, Copy, Default)]
struct TorrentCounts {
    peers: u64,
    confirmed: u64,
    enc_known: u64,
    enc: u64,
    utp_known: u64,
    utp: u64,
}

/// `count` value in a history point meaning "have_all" with the piece count
/// unknown at that time.
pub const ALL: u32 = u32::MAX;

/// A signal about a peer's progress: `peer_progress.cause` and
/// `peers.completion_source`. The first five are the peer's own peer-wire
/// messages; the rest are claims ([`Claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    Bitfield,
    Have,
    HaveAll,
    HaveNone,
    DontHave,
    /// A tracker announce's `left`, turned into pieces with the torrent's
    /// piece length and total length (0 left: every piece).
    TrackerLeft,
    /// A tracker announce with `event=completed`.
    TrackerCompleted,
    /// The peer's BEP 10 `upload_only`.
    UploadOnly,
    /// A ut_pex seed flag (0x02) another peer gave for it.
    PexSeed,
    /// BEP 33 `seed` in its DHT announce_peer.
    DhtSeed,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Bitfield => "bitfield",
            Signal::Have => "have",
            Signal::HaveAll => "have_all",
            Signal::HaveNone => "have_none",
            Signal::DontHave => "dont_have",
            Signal::TrackerLeft => "tracker_left",
            Signal::TrackerCompleted => "tracker_completed",
            Signal::UploadOnly => "upload_only",
            Signal::PexSeed => "pex_seed",
            Signal::DhtSeed => "dht_seed",
        }
    }

    /// The signal named `name` (the inverse of [`Signal::name`]).
    pub fn from_name(name: &str) -> Option<Signal> {
        Some(match name {
            "bitfield" => Signal::Bitfield,
            "have" => Signal::Have,
            "have_all" => Signal::HaveAll,
            "have_none" => Signal::HaveNone,
            "dont_have" => Signal::DontHave,
            "tracker_left" => Signal::TrackerLeft,
            "tracker_completed" => Signal::TrackerCompleted,
            "upload_only" => Signal::UploadOnly,
            "pex_seed" => Signal::PexSeed,
            "dht_seed" => Signal::DhtSeed,
            _ => return None,
        })
    }

    /// A claim about the peer (tracker, upload_only, ut_pex, DHT), not its
    /// own peer-wire message.
    pub fn is_claim(self) -> bool {
        self.claim_slot().is_some()
    }

    /// The signal numbered `b` (the inverse of `self as u8`, for packed
    /// series; an unknown number, which our own bytes never hold, reads as
    /// `have`).
    fn from_u8(b: u8) -> Signal {
        const ALL_SIGNALS: [Signal; 10] = [
            Signal::Bitfield,
            Signal::Have,
            Signal::HaveAll,
            Signal::HaveNone,
            Signal::DontHave,
            Signal::TrackerLeft,
            Signal::TrackerCompleted,
            Signal::UploadOnly,
            Signal::PexSeed,
            Signal::DhtSeed,
        ];
        ALL_SIGNALS.get(usize::from(b)).copied().unwrap_or(Signal::Have)
    }

    /// The claim source it speaks for (each keeps its latest word), or
    /// None for the peer's own wire messages.
    fn claim_slot(self) -> Option<usize> {
        match self {
            Signal::TrackerLeft | Signal::TrackerCompleted => Some(0),
            Signal::UploadOnly => Some(1),
            Signal::PexSeed => Some(2),
            Signal::DhtSeed => Some(3),
            _ => None,
        }
    }
}

/// Claim sources (tracker, upload_only, ut_pex, DHT).
const N_CLAIM_SLOTS: usize = 4;

/// Pieces a peer has when a tracker announce says `left` bytes are left,
/// with the torrent's `n` pieces of `plen` bytes and `total` bytes: the
/// missing pieces are ⌈left / plen⌉, except that a short last piece counts
/// as one when `left` is that piece plus whole pieces.
pub fn pieces_from_left(n: u64, plen: u64, total: u64, left: u64) -> u64 {
    if left == 0 {
        return n;
    }
    if n == 0 || plen == 0 || left >= total {
        return 0;
    }
    let last = total.saturating_sub(plen.saturating_mul(n - 1));
    let missing = if last > 0 && last < plen && left >= last && (left - last).is_multiple_of(plen) {
        (left - last) / plen + 1
    } else {
        left.div_ceil(plen)
    };
    n.saturating_sub(missing)
}

/// A peer's progress fused from every signal (see [`fuse`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fused {
    /// (ts, count or ALL, signal) at each change of the fused count; the
    /// signal is the one that said the new count first.
    pub history: Vec<(i64, u32, Signal)>,
    /// (anomaly kind, detail, time of the claim).
    pub conflicts: Vec<(&'static str, String, i64)>,
}

/// Fuses a peer's wire history with its claims. `n`: the torrent's piece
/// count; `shape`: (piece length, total length) when the metadata is known,
/// to read `left`. Each claim source keeps its latest word; the fused count
/// at any time is the highest of the wire's and the sources' words (a tie
/// goes to the one that said it first). A wire message at least
/// MIN_BELOW_US after a claim that shows fewer pieces than the claim voids
/// it (`completion_contradicted`): a claim set aside is no evidence at all,
/// not even of an early crossing. A claim still above the wire's last word
/// at the end is kept and reported (`completion_wire_behind`).
pub fn fuse(
    wire: &[(i64, u32, Signal)],
    claims: &[(i64, Signal, u64)],
    n: Option<u64>,
    shape: Option<(u64, u64)>,
) -> Fused {
    // Claims as points; a `left` without the torrent's shape says nothing
    // countable (0 left still means every piece).
    let points: Vec<(i64, u32, Signal)> = claims
        .iter()
        .filter_map(|&(ts, sig, left)| {
            let v = match sig {
                Signal::TrackerLeft if left > 0 => {
                    let (plen, total) = shape?;
                    let c = pieces_from_left(n?, plen, total, left);
                    c.min(u64::from(ALL - 1)) as u32
                }
                _ => ALL,
            };
            Some((ts, v, sig))
        })
        .collect();
    fuse_points(wire, &points, n)
}

/// [`fuse`] with the claims already read as points (ts, count or [`ALL`],
/// signal): what `swarmtap merge` feeds from `peer_progress` rows, whose
/// claim rows carry the count the claim said.
pub fn fuse_points(wire: &[(i64, u32, Signal)], points: &[(i64, u32, Signal)], n: Option<u64>) -> Fused {
    let first = walk(wire, points, n);
    if first.voided.is_empty() {
        return first.fused;
    }
    // Again without the claims set aside; their conflicts stay reported.
    let kept: Vec<(i64, u32, Signal)> = points
        .iter()
        .enumerate()
        .filter(|(i, _)| !first.voided.contains(i))
        .map(|(_, p)| *p)
        .collect();
    let mut again = walk(wire, &kept, n).fused;
    let mut conflicts = first.fused.conflicts;
    conflicts.extend(again.conflicts.drain(..).filter(|c| c.0 != "completion_contradicted"));
    again.conflicts = conflicts;
    again
}

/// One pass of [`fuse`]: the fused history, the conflicts, and the claim
/// points (indices into `points`) the wire contradicted.
struct Walk {
    fused: Fused,
    voided: Vec<usize>,
}

fn walk(wire: &[(i64, u32, Signal)], points: &[(i64, u32, Signal)], n: Option<u64>) -> Walk {
    let level = |v: u32| -> u64 {
        if v == ALL {
            n.unwrap_or(u64::MAX)
        } else {
            u64::from(v)
        }
    };
    let show = |v: u32| -> String {
        let c = if v == ALL { n } else { Some(u64::from(v)) };
        match (c, n) {
            (Some(c), Some(n)) => format!("{c} of {n}"),
            (Some(c), None) => format!("{c}"),
            (None, _) => "all".to_string(),
        }
    };
    let mut out = Fused::default();
    let mut voided = Vec::new();
    let mut wire_cur: Option<(u32, i64, Signal)> = None;
    // Each claim source's word: (count, time, signal, index in points).
    let mut slots: [Option<(u32, i64, Signal, usize)>; N_CLAIM_SLOTS] = [None; N_CLAIM_SLOTS];
    let (mut wi, mut ci) = (0, 0);
    loop {
        // Merge by time; the wire first at equal times.
        let take_wire = match (wire.get(wi), points.get(ci)) {
            (Some(w), Some(c)) => w.0 <= c.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let ts;
        if take_wire {
            let (t, v, sig) = wire[wi];
            wi += 1;
            ts = t;
            wire_cur = Some((v, t, sig));
            for slot in slots.iter_mut() {
                if let Some((cv, cts, csig, idx)) = *slot {
                    if t - cts >= MIN_BELOW_US && level(v) < level(cv) {
                        out.conflicts.push((
                            "completion_contradicted",
                            format!(
                                "{} said {} at {cts} µs; the wire said {} ({}) at {t} µs: the claim is set aside",
                                csig.name(),
                                show(cv),
                                show(v),
                                sig.name()
                            ),
                            cts,
                        ));
                        voided.push(idx);
                        *slot = None;
                    }
                }
            }
        } else {
            let (t, v, sig) = points[ci];
            ts = t;
            if let Some(k) = sig.claim_slot() {
                slots[k] = Some((v, t, sig, ci));
            }
            ci += 1;
        }
        let best = std::iter::once(wire_cur)
            .chain(slots.iter().map(|s| s.map(|(v, t, sig, _)| (v, t, sig))))
            .flatten()
            .max_by(|a, b| level(a.0).cmp(&level(b.0)).then(b.1.cmp(&a.1)));
        if let Some((v, _, sig)) = best {
            if out.history.last().is_none_or(|l| level(l.1) != level(v)) {
                out.history.push((ts, v, sig));
            }
        }
    }
    if let (Some((wv, wts, wsig)), Some(&(fts, fv, fsig))) = (wire_cur, out.history.last()) {
        if fsig.claim_slot().is_some() && level(fv) > level(wv) {
            out.conflicts.push((
                "completion_wire_behind",
                format!(
                    "{} said {} at {fts} µs; the wire's last word was {} ({}) at {wts} µs: the claim is kept",
                    fsig.name(),
                    show(fv),
                    show(wv),
                    wsig.name()
                ),
                fts,
            ));
        }
    }
    Walk { fused: out, voided }
}

/// Completion from a history with the final piece count: the first time
/// at or above `threshold` × n, and whether the peer had been below it for
/// at least MIN_BELOW_US before (a confirmed download).
pub fn completion(history: &[(i64, u32)], n: Option<u64>, threshold: f64) -> (Option<i64>, bool) {
    let Some(n) = n.filter(|&n| n > 0) else {
        return (None, false);
    };
    let need = threshold * n as f64;
    let mut below_since: Option<i64> = None;
    for &(ts, c) in history {
        let have = if c == ALL { n } else { u64::from(c) };
        if (have as f64) < need {
            below_since.get_or_insert(ts);
        } else {
            let confirmed = below_since.is_some_and(|b| ts - b >= MIN_BELOW_US);
            return (Some(ts), confirmed);
        }
    }
    (None, false)
}

/// The `peers` progress columns of a fused history: first_pieces,
/// last_pieces, completed_ts, confirmed_download, completion_source.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub first_pieces: Option<u64>,
    pub last_pieces: Option<u64>,
    pub completed_ts: Option<i64>,
    pub confirmed: bool,
    pub source: Option<&'static str>,
}

/// [`Progress`] of `fused` with the torrent's piece count `n`.
pub fn progress(fused: &Fused, n: Option<u64>, threshold: f64) -> Progress {
    let points: Vec<(i64, u32)> = fused.history.iter().map(|h| (h.0, h.1)).collect();
    let (completed_ts, confirmed) = completion(&points, n, threshold);
    let at = |c: u32| if c == ALL { n } else { Some(u64::from(c)) };
    // The signal that decided: the one that first showed the crossing,
    // else the one behind the last count.
    let source = match completed_ts {
        Some(ts) => fused
            .history
            .iter()
            .filter(|h| h.0 == ts)
            .max_by_key(|h| at(h.1))
            .map(|h| h.2.name()),
        None => fused.history.last().map(|h| h.2.name()),
    };
    Progress {
        first_pieces: fused.history.first().and_then(|h| at(h.1)),
        last_pieces: fused.history.last().and_then(|h| at(h.1)),
        completed_ts,
        confirmed,
        source,
    }
}

/// A set of piece indices, grown as indices arrive (bounded by max_pieces).
#[derive(Debug, Clone, Default)]
pub struct PieceSet {
    words: Vec<u64>,
    count: u64,
    /// have_all: every piece, whatever the count turns out to be.
    pub all: bool,
}

impl PieceSet {
    pub fn set(&mut self, i: u32) -> bool {
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

    pub fn clear(&mut self, i: u32) -> bool {
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

    /// Union with a bitfield (MSB of byte 0 is piece 0).
    /// Eight bytes at a time: they are one word of the set (byte k's MSB
    /// is the word's bit 8k), so a word is the bytes read big-endian with
    /// their bits reversed. The same words, count and buffer growth as
    /// setting each bit (`set`, ~10 k instructions a bitfield on bulk
    /// captures).
    pub fn union_bitfield(&mut self, bits: &[u8]) {
        for (w, chunk) in bits.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            if let Some(head) = b.get_mut(..chunk.len()) {
                head.copy_from_slice(chunk);
            }
            let word = u64::from_be_bytes(b).reverse_bits();
            if word == 0 {
                continue;
            }
            if w >= self.words.len() {
                self.words.resize(w + 1, 0);
            }
            if let Some(x) = self.words.get_mut(w) {
                self.count += u64::from((word & !*x).count_ones());
                *x |= word;
            }
        }
    }

    fn union(&mut self, other: &PieceSet) {
        self.all |= other.all;
        for (w, &x) in other.words.iter().enumerate() {
            let mut x = x;
            while x != 0 {
                let b = x.trailing_zeros();
                self.set((w * 64) as u32 + b);
                x &= x - 1;
            }
        }
    }

    /// Pieces held, given the torrent's piece count when known.
    fn have(&self, n: Option<u64>) -> Option<u64> {
        if self.all {
            n
        } else {
            Some(self.count)
        }
    }

    /// History value: the count, or ALL for have_all.
    pub fn point(&self) -> u32 {
        if self.all {
            ALL
        } else {
            self.count.min(u64::from(ALL - 1)) as u32
        }
    }
}

/// Highest set index + 1 of a bitfield.
fn bitfield_top(bits: &[u8]) -> u64 {
    for (i, &b) in bits.iter().enumerate().rev() {
        if b != 0 {
            return (i * 8 + 8 - b.trailing_zeros() as usize) as u64;
        }
    }
    0
}

#[derive(Debug, Clone)]
struct PeerState {
    peer_id: Option<[u8; 20]>,
    client: Option<String>,
    first_ts: i64,
    last_ts: i64,
    pieces: PieceSet,
    /// (ts, count, signal) at each change of the piece set its own wire
    /// messages showed (packed: it grows with the pieces a peer gets).
    history: Track<(i64, u32, Signal)>,
    /// (ts, signal, bytes left for TrackerLeft, where it was said) at each
    /// change of a claim source's word (see [`fuse`]).
    claims: Packed<(i64, Signal, u64, ClaimAt)>,
    uploaded: u64,
    downloaded: u64,
    /// Current rate window start and bytes (down, up).
    win_start: i64,
    win_bytes: [u64; 2],
    /// The run's rate window (to close the last one at the end).
    win_len: i64,
    max_rate: [Option<f64>; 2],
    conns: Vec<u64>,
    n_connections: u64,
    /// PeerSource bits.
    sources: u8,
    /// The port is a listen port (responder, BEP 10 `p`, tracker, DHT).
    listen: bool,
    /// The peer's first known state was a `have` (seen mid-connection, no
    /// bitfield): its initial pieces are unknown.
    unknown_start: bool,
    /// A connection of it was seen from its handshake: a first `have`
    /// then means it started with nothing (BEP 3 lets a peer with no piece
    /// skip the bitfield), not that its earlier pieces went unseen.
    start_known: bool,
    /// Encryption preference from its own BEP 10 `e`, and from PEX flags
    /// others gave for it (its own word wins).
    enc_own: Option<bool>,
    enc_pex: Option<bool>,
    /// Seen using uTP (any true wins over false).
    utp: Option<bool>,
    /// Payload bytes it sent / received on MSE-encrypted connections
    /// attributed to this torrent (unreadable: pieces plus protocol).
    enc_sent: u64,
    enc_received: u64,
}

/// Where a claim was said: its frame, capture and connection, so that an
/// anomaly about it (`completion_contradicted`, `completion_wire_behind`)
/// points at the packet a user can look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClaimAt {
    frame: u64,
    conn_id: u64,
    capture: u32,
}

/// A history point: the time and count as differences from the point
/// before, the signal as its number.
impl Record for (i64, u32, Signal) {
    fn put(&self, prev: Option<&Self>, buf: &mut Vec<u8>) {
        let (pts, pv, _) = prev.copied().unwrap_or((0, 0, Signal::Have));
        put_i(buf, self.0.wrapping_sub(pts));
        put_i(buf, i64::from(self.1) - i64::from(pv));
        buf.push(self.2 as u8);
    }

    fn get(prev: Option<&Self>, r: &mut Reader<'_>) -> Self {
        let (pts, pv, _) = prev.copied().unwrap_or((0, 0, Signal::Have));
        let ts = pts.wrapping_add(r.i());
        let v = (i64::from(pv) + r.i()) as u32;
        (ts, v, Signal::from_u8(r.byte()))
    }
}

/// A claim: time, frame and connection as differences from the claim
/// before; signal, bytes left and capture as they are.
impl Record for (i64, Signal, u64, ClaimAt) {
    fn put(&self, prev: Option<&Self>, buf: &mut Vec<u8>) {
        let (pts, pframe, pconn) = prev.map_or((0, 0, 0), |p| (p.0, p.3.frame, p.3.conn_id));
        put_i(buf, self.0.wrapping_sub(pts));
        buf.push(self.1 as u8);
        put_u(buf, self.2);
        put_i(buf, self.3.frame.wrapping_sub(pframe) as i64);
        put_i(buf, self.3.conn_id.wrapping_sub(pconn) as i64);
        put_u(buf, u64::from(self.3.capture));
    }

    fn get(prev: Option<&Self>, r: &mut Reader<'_>) -> Self {
        let (pts, pframe, pconn) = prev.map_or((0, 0, 0), |p| (p.0, p.3.frame, p.3.conn_id));
        let ts = pts.wrapping_add(r.i());
        let sig = Signal::from_u8(r.byte());
        let left = r.u();
        let frame = pframe.wrapping_add(r.i() as u64);
        let conn_id = pconn.wrapping_add(r.i() as u64);
        let capture = r.u() as u32;
        (
            ts,
            sig,
            left,
            ClaimAt {
                frame,
                conn_id,
                capture,
            },
        )
    }
}

/// An MSE-encrypted connection attributed to a torrent, for the swarm state.
#[derive(Debug, Clone, Copy)]
pub struct EncryptedConn {
    pub info_hash: [u8; 20],
    pub conn_id: u64,
    pub orig: SocketAddr,
    pub resp: SocketAddr,
    pub utp: bool,
    pub first_ts: i64,
    pub last_ts: i64,
    pub payload_bytes_orig: u64,
    pub payload_bytes_resp: u64,
}

/// Joins two pieces of evidence where any `true` wins.
fn any_true(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (x, y) => x.or(y),
    }
}

#[derive(Debug, Clone, Default)]
struct TorrentState {
    meta: Option<std::sync::Arc<Metainfo>>,
    metadata_source: &'static str,
    /// Lower bound from bitfields: max(8·(bytes−1)+1, highest index + 1).
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

/// A listen endpoint's torrent, or several (then it attributes nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndpointHash {
    One([u8; 20]),
    Ambiguous,
}

/// An event of a connection whose info_hash is not known (mid-stream).
#[derive(Debug, Clone)]
pub struct UnattributedEvent {
    pub event: SwarmEvent,
    /// The connection's other endpoint.
    pub other: SocketAddr,
}

type PeerKey = ([u8; 20], SocketAddr);
/// (info_hash, ip, 8-byte client prefix of the peer id).
type PrefixKey = ([u8; 20], IpAddr, [u8; 8]);
/// (info_hash, ip, peer id).
type PeerIdKey = ([u8; 20], IpAddr, [u8; 20]);

/// The torrent and address a key names.
trait Base {
    fn base(&self) -> ([u8; 20], IpAddr);
}

impl Base for PeerKey {
    fn base(&self) -> ([u8; 20], IpAddr) {
        (self.0, self.1.ip())
    }
}

impl Base for PeerIdKey {
    fn base(&self) -> ([u8; 20], IpAddr) {
        (self.0, self.1)
    }
}

/// The peer key of `base` at `port`, when that is exactly `k` (a key
/// built from a packet's address is; SocketAddr::new sets no IPv6 flow
/// label or scope).
fn port_of(base: ([u8; 20], IpAddr), k: &PeerKey) -> Option<u16> {
    (k.0 == base.0 && k.1 == SocketAddr::new(base.1, k.1.port())).then_some(k.1.port())
}

/// A map to peer keys. Nearly every value is the key's own torrent and
/// address at another port (merges while packets come join endpoints of one
/// address; only the end of a run joins the two hashes of a hybrid
/// torrent): those hold the port alone (2 bytes instead of a 52-byte key),
/// the others the whole key. On bulk-1g (1,457 peers; 8,192 slots in the
/// peer-id map at the peak) the two maps of this kind took 1.36 MB, 0.73 MB
/// this way.
#[derive(Clone)]
struct PortMap<K> {
    near: Map<K, u16>,
    far: Map<K, PeerKey>,
}

impl<K> Default for PortMap<K> {
    fn default() -> Self {
        PortMap {
            near: Map::default(),
            far: Map::default(),
        }
    }
}

impl<K: Base + std::hash::Hash + Eq + Copy> PortMap<K> {
    fn get(&self, k: &K) -> Option<PeerKey> {
        if let Some(p) = self.near.get(k) {
            let (h, ip) = k.base();
            return Some((h, SocketAddr::new(ip, *p)));
        }
        if self.far.is_empty() {
            return None;
        }
        self.far.get(k).copied()
    }

    fn insert(&mut self, k: K, v: PeerKey) {
        match port_of(k.base(), &v) {
            Some(p) => {
                if !self.far.is_empty() {
                    self.far.remove(&k);
                }
                self.near.insert(k, p);
            }
            None => {
                self.near.remove(&k);
                self.far.insert(k, v);
            }
        }
    }

    fn len(&self) -> usize {
        self.near.len() + self.far.len()
    }

    fn retain(&mut self, mut keep: impl FnMut(&PeerKey) -> bool) {
        self.near.retain(|k, p| {
            let (h, ip) = k.base();
            keep(&(h, SocketAddr::new(ip, *p)))
        });
        self.far.retain(|_, v| keep(v));
    }
}

/// Keys `Swarm::resolve` remembers (an event's two ends, and the two of
/// the event before).
const RESOLVED: usize = 4;

/// Swarm state over the whole run.
#[derive(Clone)]
pub struct Swarm {
    limits: Limits,
    threshold: f64,
    rate_window_us: i64,
    torrents: Map<[u8; 20], TorrentState>,
    /// Boxed: a table slot is the key and a pointer (~64 bytes) instead of
    /// key and state (~350), so the slots hashbrown keeps empty (up to half
    /// after it grows) cost little: on bulk-1g (2,048 slots at the peak)
    /// 0.71 MB -> 0.54 MB with the states.
    peers: Map<PeerKey, Box<PeerState>>,
    /// Merged peer keys → the key they live under now.
    alias: PortMap<PeerKey>,
    /// The last keys `resolve` looked up in `alias` and where they led,
    /// newest first; emptied whenever `alias` changes. Events come in runs
    /// of one connection (a `Transfer` per block names both its ends), so
    /// most resolve here instead of through a hash and probe of a 52-byte
    /// key.
    resolved: [Option<(PeerKey, PeerKey)>; RESOLVED],
    /// (info_hash, ip, peer_id) → peer key.
    by_peer_id: PortMap<PeerIdKey>,
    /// (info_hash, ip, client prefix) → ports of the listen keys and of the
    /// ephemeral keys at that torrent and address.
    by_prefix: Map<PrefixKey, (Vec<u16>, Vec<u16>)>,
    /// Listen endpoints seen with a torrent (for mid-stream attribution),
    /// over the whole run and per input file: a client on one port may serve
    /// several torrents over a day of captures, so sightings in the same
    /// file as the connection are asked first.
    endpoints: Map<SocketAddr, EndpointHash>,
    endpoints_in_capture: Map<(u32, SocketAddr), EndpointHash>,
    /// Mid-stream connections: attributed ones, and those still waiting.
    attributed: Map<u64, [u8; 20]>,
    pending: BTreeMap<u64, Vec<UnattributedEvent>>,
    pub n_peers_dropped: u64,
    pub n_torrents_dropped: u64,
    pub n_unattributed_dropped: u64,
    /// Pieces verified and failed, by info hash (hex, as in the rows).
    piece_checks: Map<String, (u64, u64)>,
}

impl Swarm {
    pub fn new(limits: Limits, threshold: f64, rate_window_s: u32) -> Self {
        Swarm {
            limits,
            threshold,
            rate_window_us: i64::from(rate_window_s.max(1)) * 1_000_000,
            torrents: Map::default(),
            peers: Map::default(),
            alias: PortMap::default(),
            resolved: [None; RESOLVED],
            by_peer_id: PortMap::default(),
            by_prefix: Map::default(),
            endpoints: Map::default(),
            endpoints_in_capture: Map::default(),
            attributed: Map::default(),
            pending: BTreeMap::new(),
            n_peers_dropped: 0,
            n_torrents_dropped: 0,
            n_unattributed_dropped: 0,
            piece_checks: Map::default(),
        }
    }

    /// Counts a `pieces` row for its torrent's totals.
    pub fn note_piece(&mut self, info_hash_hex: &str, verified: bool) {
        if !self.piece_checks.contains_key(info_hash_hex) && self.piece_checks.len() >= self.limits.max_torrents {
            return;
        }
        let e = self.piece_checks.entry(info_hash_hex.to_string()).or_default();
        if verified {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    /// True when the torrent's metadata (hence piece count) is known.
    pub fn has_metainfo(&self, h: &[u8; 20]) -> bool {
        self.torrents.get(h).is_some_and(|t| t.meta.is_some())
    }

    /// Registers a torrent's metadata (a .torrent file, rebuilt ut_metadata).
    /// A hybrid torrent is registered under both its v1 hash and its v2 hash
    /// truncated to 20 bytes: clients put either in the handshake (BEP 52).
    pub fn add_metainfo(&mut self, m: std::sync::Arc<Metainfo>, source: &'static str) {
        for h in m.wire_hashes() {
            let t = self.torrents.entry(h).or_default();
            t.meta = Some(m.clone());
            t.metadata_source = source;
        }
    }

    /// The torrent a mid-stream connection was attributed to.
    pub fn attribution(&self, conn_id: u64) -> Option<[u8; 20]> {
        self.attributed.get(&conn_id).copied()
    }

    fn torrent(&mut self, h: [u8; 20], ts: i64) -> Option<&mut TorrentState> {
        // One hash and probe per event (the entry).
        let full = self.torrents.len() >= self.limits.max_torrents;
        let t = match self.torrents.entry(h) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                if full {
                    self.n_torrents_dropped += 1;
                    return None;
                }
                v.insert(TorrentState::default())
            }
        };
        t.first_ts = Some(t.first_ts.map_or(ts, |f| f.min(ts)));
        t.last_ts = Some(t.last_ts.map_or(ts, |l| l.max(ts)));
        Some(t)
    }

    fn resolve(&mut self, k: PeerKey) -> PeerKey {
        if let Some((_, to)) = self.resolved.iter().flatten().find(|(from, _)| *from == k) {
            return *to;
        }
        let from = k;
        let mut k = k;
        // Alias chains are short (a merge re-points the old key); bound the
        // walk anyway.
        for _ in 0..8 {
            match self.alias.get(&k) {
                Some(n) => k = n,
                None => break,
            }
        }
        self.resolved.rotate_right(1);
        self.resolved[0] = Some((from, k));
        k
    }

    /// Points `from` at `to` from now on.
    fn alias_to(&mut self, from: PeerKey, to: PeerKey) {
        self.alias.insert(from, to);
        self.resolved = [None; RESOLVED];
    }

    fn learn_endpoint(&mut self, ep: SocketAddr, h: [u8; 20], capture: u32) {
        fn learn<K: std::hash::Hash + Eq>(m: &mut Map<K, EndpointHash>, k: K, h: [u8; 20], max: usize) {
            match m.get(&k) {
                None => {
                    if m.len() < max {
                        m.insert(k, EndpointHash::One(h));
                    }
                }
                Some(EndpointHash::One(x)) if *x != h => {
                    m.insert(k, EndpointHash::Ambiguous);
                }
                Some(_) => {}
            }
        }
        if ep.port() == 0 {
            return;
        }
        let max = self.limits.max_peers;
        learn(&mut self.endpoints, ep, h, max);
        learn(&mut self.endpoints_in_capture, (capture, ep), h, max);
    }

    /// Applies a batch's events (already in frame order) and appends
    /// `peer_progress` rows. Listen endpoints are learned from the whole
    /// batch first, so that mid-stream connections attributed by them are
    /// applied in frame order with everything else; connections still
    /// unattributed wait for a later batch.
    pub fn apply(&mut self, events: Vec<SwarmEvent>, unattributed: Vec<UnattributedEvent>, rows: &mut RowBatch) {
        self.apply_with_metadata(events, unattributed, Vec::new(), rows);
    }

    /// [`apply`](Self::apply), with dictionaries rebuilt from ut_metadata
    /// by the (capture, frame) that completed them: each is taken before
    /// the events of that frame and the later ones.
    pub fn apply_with_metadata(
        &mut self,
        events: Vec<SwarmEvent>,
        unattributed: Vec<UnattributedEvent>,
        metas: Vec<((u32, u64), std::sync::Arc<Metainfo>)>,
        rows: &mut RowBatch,
    ) {
        for ev in &events {
            let listen = match &ev.kind {
                SwarmEventKind::Seen { listen, .. } => *listen,
                SwarmEventKind::Learned { .. } => true,
                _ => false,
            };
            if listen {
                self.learn_endpoint(ev.peer, ev.info_hash, ev.ctx.capture);
            }
        }
        let mut all = events;
        for u in unattributed {
            self.queue_unattributed(u);
        }
        all.extend(self.take_resolved());
        all.sort_by_key(|e| (e.ctx.capture, e.ctx.frame));
        let mut metas = metas.into_iter().peekable();
        for ev in all {
            while let Some((_, m)) = metas.next_if(|(k, _)| *k <= (ev.ctx.capture, ev.ctx.frame)) {
                self.add_metainfo(m, "ut_metadata");
            }
            self.apply_one(ev, rows);
        }
        for (_, m) in metas {
            self.add_metainfo(m, "ut_metadata");
        }
    }

    fn queue_unattributed(&mut self, u: UnattributedEvent) {
        let conn = u.event.conn_id;
        let q = match self.pending.get_mut(&conn) {
            Some(q) => q,
            None => {
                if self.pending.len() >= MAX_PENDING_CONNS {
                    self.n_unattributed_dropped += 1;
                    return;
                }
                self.pending.entry(conn).or_default()
            }
        };
        if q.len() < MAX_PENDING_EVENTS_PER_CONN {
            q.push(u);
        } else {
            self.n_unattributed_dropped += 1;
        }
    }

    /// Events of waiting connections that can now be attributed (or were
    /// before), with their info_hash filled in.
    fn take_resolved(&mut self) -> Vec<SwarmEvent> {
        let mut done = Vec::new();
        for (conn, q) in &self.pending {
            let h = self
                .attributed
                .get(conn)
                .copied()
                .or_else(|| q.iter().find_map(|u| self.attribute(u)));
            if let Some(h) = h {
                done.push((*conn, h));
            }
        }
        let mut out = Vec::new();
        for (conn, h) in done {
            self.attributed.insert(conn, h);
            if let Some(q) = self.pending.remove(&conn) {
                out.extend(q.into_iter().map(|u| {
                    let mut ev = u.event;
                    ev.info_hash = h;
                    ev
                }));
            }
        }
        out
    }

    fn attribute(&self, u: &UnattributedEvent) -> Option<[u8; 20]> {
        self.attribute_endpoints(u.event.ctx.capture, u.event.peer, u.other)
    }

    /// The torrent of a connection between `a` and `b` in input `capture`,
    /// from its endpoints' sightings as listen addresses (same input first):
    /// an endpoint known for exactly one torrent, and the other not known
    /// for a different one.
    pub fn attribute_endpoints(&self, capture: u32, a: SocketAddr, b: SocketAddr) -> Option<[u8; 20]> {
        fn pick(a: Option<&EndpointHash>, b: Option<&EndpointHash>) -> Option<Option<[u8; 20]>> {
            match (a, b) {
                (None, None) => None,
                (Some(EndpointHash::One(x)), Some(EndpointHash::One(y))) if x != y => Some(None),
                (Some(EndpointHash::One(x)), _) | (_, Some(EndpointHash::One(x))) => Some(Some(*x)),
                _ => Some(None),
            }
        }
        let here = pick(
            self.endpoints_in_capture.get(&(capture, a)),
            self.endpoints_in_capture.get(&(capture, b)),
        );
        match here {
            Some(h) => h,
            None => pick(self.endpoints.get(&a), self.endpoints.get(&b)).flatten(),
        }
    }

    /// The torrent each address takes part in, when it is exactly one (the
    /// peers of every torrent, all inputs so far): the weakest attribution
    /// of an encrypted connection, by address alone.
    pub fn torrents_by_ip(&self) -> HashMap<IpAddr, [u8; 20]> {
        let mut m: HashMap<IpAddr, Option<[u8; 20]>> = HashMap::new();
        for k in self.peers.keys() {
            m.entry(k.1.ip())
                .and_modify(|h| {
                    if *h != Some(k.0) {
                        *h = None;
                    }
                })
                .or_insert(Some(k.0));
        }
        m.into_iter().filter_map(|(ip, h)| Some((ip, h?))).collect()
    }

    /// MSE-encrypted connections attributed to torrents: (info_hash,
    /// originator, responder, over uTP). The originator chose encryption,
    /// which says it prefers it; it is known by address only, so it counts
    /// for the torrent's peer at that address when there is exactly one.
    /// The responder, at its listen endpoint, is known to use that
    /// transport.
    pub fn note_encrypted(&mut self, conns: &[EncryptedConn]) {
        if conns.is_empty() {
            return;
        }
        let mut by_ip: HashMap<([u8; 20], IpAddr), Vec<PeerKey>> = HashMap::new();
        for k in self.peers.keys() {
            by_ip.entry((k.0, k.1.ip())).or_default().push(*k);
        }
        for c in conns {
            let h = c.info_hash;
            // The responder accepted the connection: its endpoint is its
            // listen endpoint. The originator connected from an ephemeral
            // port: its address's listen endpoint when it has exactly one,
            // else its only row.
            let rk = self.resolve((h, c.resp));
            let keys = by_ip.get(&(h, c.orig.ip())).map(Vec::as_slice).unwrap_or_default();
            let listen: Vec<PeerKey> = keys
                .iter()
                .filter(|k| self.peers.get(*k).is_some_and(|p| p.listen))
                .copied()
                .collect();
            let ok = match (listen.as_slice(), keys) {
                ([k], _) | ([], [k]) => Some(*k),
                _ => None,
            };
            for (key, sent, received, is_orig) in [
                (Some(rk), c.payload_bytes_resp, c.payload_bytes_orig, false),
                (ok, c.payload_bytes_orig, c.payload_bytes_resp, true),
            ] {
                let Some(p) = key.and_then(|k| self.peers.get_mut(&k)) else {
                    continue;
                };
                if is_orig {
                    p.enc_pex = any_true(p.enc_pex, Some(true));
                }
                p.utp = any_true(p.utp, Some(c.utp));
                // Seen on the wire, in an encrypted connection of its own.
                p.sources |= PeerSource::Wire.bit();
                if !p.conns.contains(&c.conn_id) {
                    p.n_connections += 1;
                    p.enc_sent += sent;
                    p.enc_received += received;
                    if p.conns.len() < MAX_CONNS_REMEMBERED {
                        p.conns.push(c.conn_id);
                    }
                }
                p.first_ts = p.first_ts.min(c.first_ts);
                p.last_ts = p.last_ts.max(c.last_ts);
            }
        }
    }

    fn retry_pending(&mut self, rows: &mut RowBatch) {
        let mut evs = self.take_resolved();
        evs.sort_by_key(|e| (e.ctx.capture, e.ctx.frame));
        for ev in evs {
            self.apply_one(ev, rows);
        }
    }

    /// Moves the state of peer `from` into `to` (same torrent and address).
    fn merge(&mut self, from: PeerKey, to: PeerKey) {
        if from == to {
            return;
        }
        let Some(a) = self.peers.remove(&from) else {
            self.alias_to(from, to);
            return;
        };
        match self.peers.get_mut(&to) {
            Some(b) => {
                let a = *a;
                b.peer_id = b.peer_id.or(a.peer_id);
                b.client = b.client.take().or(a.client);
                b.first_ts = b.first_ts.min(a.first_ts);
                b.last_ts = b.last_ts.max(a.last_ts);
                b.pieces.union(&a.pieces);
                let mut h = a.history.to_vec();
                h.extend(b.history.iter());
                h.sort_by_key(|p| p.0);
                b.history = Track::from_slice(&h);
                let mut c = a.claims.to_vec();
                c.extend(b.claims.iter());
                c.sort_by_key(|p| p.0);
                b.claims = Packed::from_slice(&c);
                b.uploaded += a.uploaded;
                b.downloaded += a.downloaded;
                for d in 0..2 {
                    b.max_rate[d] = match (a.max_rate[d], b.max_rate[d]) {
                        (Some(x), Some(y)) => Some(x.max(y)),
                        (x, y) => x.or(y),
                    };
                }
                for c in a.conns {
                    if !b.conns.contains(&c) && b.conns.len() < MAX_CONNS_REMEMBERED {
                        b.conns.push(c);
                    }
                }
                b.n_connections = b.n_connections.max(b.conns.len() as u64);
                b.sources |= a.sources;
                b.enc_own = b.enc_own.or(a.enc_own);
                b.start_known |= a.start_known;
                b.enc_pex = any_true(b.enc_pex, a.enc_pex);
                b.utp = any_true(b.utp, a.utp);
                b.enc_sent += a.enc_sent;
                b.enc_received += a.enc_received;
            }
            None => {
                self.peers.insert(to, a);
            }
        }
        self.alias_to(from, to);
    }

    /// End of run: an ephemeral endpoint that never showed a peer id (a
    /// connection picked up mid-stream) joins the listen endpoint of its
    /// (info_hash, ip) when there is exactly one.
    fn merge_anonymous_ephemerals(&mut self) {
        let mut listen_by_ip: HashMap<([u8; 20], IpAddr), Vec<PeerKey>> = HashMap::new();
        for (k, p) in &self.peers {
            if p.listen {
                listen_by_ip.entry((k.0, k.1.ip())).or_default().push(*k);
            }
        }
        let mut anon: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.listen && p.peer_id.is_none())
            .map(|(k, _)| *k)
            .collect();
        anon.sort();
        for k in anon {
            if let Some([target]) = listen_by_ip.get(&(k.0, k.1.ip())).map(Vec::as_slice) {
                self.merge(k, *target);
            }
        }
    }

    /// End of run: an endpoint only PEX named, at an address whose one
    /// listen endpoint was seen on the wire for the same torrent, is that
    /// peer. Some clients (Transmission) pass on the port of their
    /// connection to a peer rather than its listen port, so a peer that
    /// connected to them shows up in their PEX at an ephemeral port.
    fn merge_pex_only(&mut self) {
        let wire = PeerSource::Wire.bit();
        let mut listen_by_ip: HashMap<([u8; 20], IpAddr), Vec<PeerKey>> = HashMap::new();
        for (k, p) in &self.peers {
            if p.listen && p.sources & wire != 0 {
                listen_by_ip.entry((k.0, k.1.ip())).or_default().push(*k);
            }
        }
        let mut pex_only: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.sources == PeerSource::Pex.bit())
            .map(|(k, _)| *k)
            .collect();
        pex_only.sort();
        for k in pex_only {
            if let Some([target]) = listen_by_ip.get(&(k.0, k.1.ip())).map(Vec::as_slice) {
                self.merge(k, *target);
            }
        }
    }

    /// End of run: a hybrid v1+v2 torrent goes by two hashes (BEP 52), and
    /// a client may announce under one while its peer wire uses the other.
    /// A peer known under one hash only from elsewhere than the wire
    /// (tracker, DHT, PEX: its claims included) joins the peer at the same
    /// endpoint that the wire showed under the other hash.
    fn merge_hybrid_hashes(&mut self) {
        let wire = PeerSource::Wire.bit();
        let mut pairs: Vec<(PeerKey, PeerKey)> = Vec::new();
        for (k, p) in &self.peers {
            if p.sources & wire != 0 {
                continue;
            }
            let Some(m) = self.torrents.get(&k.0).and_then(|t| t.meta.as_ref()) else {
                continue;
            };
            for h in m.wire_hashes() {
                let other = (h, k.1);
                if h != k.0 && self.peers.get(&other).is_some_and(|o| o.sources & wire != 0) {
                    pairs.push((*k, other));
                    break;
                }
            }
        }
        pairs.sort();
        for (from, to) in pairs {
            self.merge(from, to);
        }
    }

    /// The client-prefix rule of the module doc. Returns the key the peer
    /// lives under afterwards.
    fn merge_by_prefix(&mut self, h: [u8; 20], key: PeerKey, pid: &[u8; 20], listen: bool) -> PeerKey {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&pid[..8]);
        let pk = (h, key.1.ip(), prefix);
        // The lists hold ports of (h, ip): `key` is always such a key
        // while packets come (merges before the end keep torrent and
        // address); anything else is left alone.
        let Some(port) = port_of((h, pk.1), &key) else {
            return key;
        };
        if !self.by_prefix.contains_key(&pk) && self.by_prefix.len() >= self.limits.max_peers {
            return key;
        }
        let (listens, ephemerals) = self.by_prefix.entry(pk).or_default();
        // A bounded list: a hostile address cycling ports cannot grow it.
        const MAX_KEYS: usize = 64;
        if listen {
            if !listens.contains(&port) && listens.len() < MAX_KEYS {
                listens.push(port);
            }
        } else if !ephemerals.contains(&port) && ephemerals.len() < MAX_KEYS {
            ephemerals.push(port);
        }
        if listens.len() != 1 {
            return key;
        }
        let at = |p: u16| (h, SocketAddr::new(pk.1, p));
        let target = at(listens[0]);
        let eph = std::mem::take(ephemerals);
        for e in eph {
            let e = self.resolve(at(e));
            if e != target {
                self.merge(e, target);
            }
        }
        self.resolve(key)
    }

    fn apply_one(&mut self, ev: SwarmEvent, rows: &mut RowBatch) {
        let ts = ev.ctx.ts;
        let max_pieces = self.limits.max_pieces;
        let Some(t) = self.torrent(ev.info_hash, ts) else {
            return;
        };
        match &ev.kind {
            SwarmEventKind::Bitfield(b) if !b.is_empty() => {
                let lower = (8 * (b.len() as u64 - 1) + 1).max(bitfield_top(b));
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
        let shape = t.meta.as_ref().map(|m| (m.piece_length, m.total_bytes));
        // Identity: learn listen endpoints, merge by peer id.
        let mut key = self.resolve((ev.info_hash, ev.peer));
        let is_listen = match &ev.kind {
            SwarmEventKind::Seen { listen, .. } => *listen,
            SwarmEventKind::Learned { .. } => true,
            _ => false,
        };
        if is_listen {
            self.learn_endpoint(ev.peer, ev.info_hash, ev.ctx.capture);
        }
        if let SwarmEventKind::Seen { peer_id: Some(pid), .. } = &ev.kind {
            let idk = (ev.info_hash, ev.peer.ip(), *pid);
            match self.by_peer_id.get(&idk) {
                Some(k0) => {
                    let k0 = self.resolve(k0);
                    if k0 != key {
                        let k0_listen = self.peers.get(&k0).is_some_and(|p| p.listen);
                        if is_listen && !k0_listen {
                            self.merge(k0, key);
                            self.by_peer_id.insert(idk, key);
                        } else {
                            self.merge(key, k0);
                            key = k0;
                        }
                    }
                }
                None => {
                    if self.by_peer_id.len() < self.limits.max_peers {
                        self.by_peer_id.insert(idk, key);
                    }
                }
            }
            key = self.merge_by_prefix(ev.info_hash, key, pid, is_listen);
        }
        let window = self.rate_window_us;
        let to_key = match &ev.kind {
            SwarmEventKind::Transfer { to, .. } => Some(self.resolve((ev.info_hash, *to))),
            _ => None,
        };
        // One hash and probe for the sender's state (the entry) and one for
        // the receiver's, after it.
        let full = self.peers.len() >= self.limits.max_peers;
        let p: &mut PeerState = match self.peers.entry(key) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                if full {
                    self.n_peers_dropped += 1;
                    return;
                }
                v.insert(Box::new(PeerState::new(ts, window)))
            }
        };
        p.first_ts = p.first_ts.min(ts);
        p.last_ts = p.last_ts.max(ts);
        p.listen |= is_listen;
        let piece_idx = match &ev.kind {
            SwarmEventKind::Have(i) | SwarmEventKind::DontHave(i) => Some(*i),
            _ => None,
        };
        let bitfield_hex = match &ev.kind {
            SwarmEventKind::Bitfield(b) => Some(hex(b)),
            _ => None,
        };
        let cause: Option<Signal> = match ev.kind {
            SwarmEventKind::Learned { source } => {
                p.sources |= source.bit();
                None
            }
            SwarmEventKind::Traits {
                prefers_encryption,
                utp,
                from_self,
            } => {
                // A peer that reports on itself is believed over others'
                // reports (PEX flags), and its latest word counts.
                if from_self {
                    p.enc_own = prefers_encryption.or(p.enc_own);
                } else {
                    p.enc_pex = any_true(p.enc_pex, prefers_encryption);
                }
                p.utp = any_true(p.utp, utp);
                None
            }
            SwarmEventKind::Seen { peer_id, client, .. } => {
                p.sources |= PeerSource::Wire.bit();
                // A peer id comes only from a captured handshake.
                p.start_known |= peer_id.is_some();
                if peer_id.is_some() {
                    p.peer_id = peer_id;
                }
                if client.is_some() {
                    p.client = client;
                } else if p.client.is_none() {
                    p.client = peer_id.and_then(|i| client_from_peer_id(&i));
                }
                p.take_part(ev.conn_id, true);
                None
            }
            SwarmEventKind::Bitfield(bits) => {
                let before = p.pieces.count;
                p.pieces.union_bitfield(&bits);
                let added = p.pieces.count - before;
                if p.unknown_start && added > 0 {
                    // Clients send `have` to every connected peer, so pieces
                    // that a later bitfield shows and no `have` announced
                    // while the peer was watched were there before the
                    // watching began: they belong to every earlier point.
                    let mut h = p.history.to_vec();
                    for h in h.iter_mut().filter(|h| h.1 != ALL) {
                        h.1 = h.1.saturating_add(added.min(u64::from(u32::MAX)) as u32).min(ALL - 1);
                    }
                    p.history = Track::from_slice(&h);
                }
                p.unknown_start = false;
                Some(Signal::Bitfield)
            }
            SwarmEventKind::Have(i) => {
                if p.history.is_empty() && p.pieces.count == 0 && !p.pieces.all && !p.start_known {
                    p.unknown_start = true;
                }
                if i < max_pieces && n_exact.is_none_or(|n| u64::from(i) < n) {
                    p.pieces.set(i);
                    Some(Signal::Have)
                } else {
                    None
                }
            }
            SwarmEventKind::HaveAll => {
                p.unknown_start = false;
                p.pieces.all = true;
                Some(Signal::HaveAll)
            }
            SwarmEventKind::HaveNone => {
                p.unknown_start = false;
                p.pieces.all = false;
                Some(Signal::HaveNone)
            }
            SwarmEventKind::DontHave(i) => {
                p.pieces.all = false;
                p.pieces.clear(i);
                Some(Signal::DontHave)
            }
            SwarmEventKind::Claim(c) => {
                let (sig, left) = match c {
                    Claim::Tracker { completed: true, .. } => (Signal::TrackerCompleted, 0),
                    Claim::Tracker { left: Some(l), .. } => (Signal::TrackerLeft, l),
                    Claim::Tracker { left: None, .. } => return,
                    Claim::UploadOnly => (Signal::UploadOnly, 0),
                    Claim::PexSeed => (Signal::PexSeed, 0),
                    Claim::DhtSeed => (Signal::DhtSeed, 0),
                };
                let at = ClaimAt {
                    frame: ev.ctx.frame,
                    conn_id: ev.conn_id,
                    capture: ev.ctx.capture,
                };
                if p.push_claim(ts, sig, left, at) {
                    let have = if sig == Signal::TrackerLeft && left > 0 {
                        shape
                            .zip(n_exact)
                            .map(|((plen, total), n)| pieces_from_left(n, plen, total, left))
                    } else {
                        n
                    };
                    rows.peer_progress.push(PeerProgressRow {
                        ts: Ts(ts),
                        frame: ev.ctx.frame,
                        conn_id: ev.conn_id,
                        info_hash: ev.info_hash,
                        peer_ip: Ip(key.1.ip()),
                        peer_port: u32::from(key.1.port()),
                        n_pieces_have: have,
                        n_pieces: n_exact,
                        cause: sig.name(),
                        piece: None,
                        bitfield: None,
                    });
                }
                None
            }
            SwarmEventKind::Transfer { bytes, cut_off, .. } => {
                // Both ends took part in the connection whose bytes they
                // are credited with (a receiver that sent nothing the swarm
                // keeps, on a connection picked up mid-stream, had no other
                // event naming it): conn_ids lists every connection behind
                // uploaded_bytes and downloaded_bytes.
                p.take_part(ev.conn_id, false);
                p.uploaded += bytes;
                if !cut_off {
                    p.add_rate(ts, window, 1, bytes);
                }
                if let Some(rk) = to_key {
                    // The receiver may not have a row yet (it has sent
                    // nothing the swarm state keeps): its downloaded bytes
                    // still count. (Taken after the sender's: the sender
                    // has the first claim on the table's room.)
                    let full = self.peers.len() >= self.limits.max_peers;
                    let r = match self.peers.entry(rk) {
                        Entry::Occupied(o) => Some(o.into_mut()),
                        Entry::Vacant(v) => (!full).then(|| v.insert(Box::new(PeerState::new(ts, window)))),
                    };
                    if let Some(r) = r {
                        r.take_part(ev.conn_id, false);
                        r.downloaded += bytes;
                        r.last_ts = r.last_ts.max(ts);
                        if !cut_off {
                            r.add_rate(ts, window, 0, bytes);
                        }
                    }
                }
                // No history point: done (the sender's state is not
                // looked up again).
                return;
            }
        };
        let Some(cause) = cause else { return };
        let point = p.pieces.point();
        let changed = p.history.last().is_none_or(|l| l.1 != point);
        if !changed {
            return;
        }
        p.push_history(ts, point, cause);
        rows.peer_progress.push(PeerProgressRow {
            ts: Ts(ts),
            frame: ev.ctx.frame,
            conn_id: ev.conn_id,
            info_hash: ev.info_hash,
            peer_ip: Ip(key.1.ip()),
            peer_port: u32::from(key.1.port()),
            n_pieces_have: p.pieces.have(n),
            n_pieces: n_exact,
            cause: cause.name(),
            piece: piece_idx,
            bitfield: bitfield_hex,
        });
    }

    /// The end of one capture that the next does not continue: mid-stream
    /// connections get their last chance, then the listen endpoints learned
    /// are forgotten (the same address:port may serve another torrent in an
    /// unrelated capture, as in the sample captures).
    pub fn end_segment(&mut self, rows: &mut RowBatch) {
        self.retry_pending(rows);
        self.n_unattributed_dropped += self.pending.values().map(|q| q.len() as u64).sum::<u64>();
        self.pending.clear();
        self.endpoints.clear();
        self.endpoints_in_capture.clear();
    }

    /// Gives waiting mid-stream connections their last chance (end of run).
    pub fn retry_all(&mut self, rows: &mut RowBatch) {
        self.retry_pending(rows);
    }

    /// Final `peers` and `torrents` rows. Connections still unattributed are
    /// given their last chance first. `names`: the `capture` column by
    /// input index (for the anomalies about claims).
    pub fn finish(mut self, rows: &mut RowBatch, names: &[String]) {
        self.retry_pending(rows);
        self.merge_hybrid_hashes();
        self.merge_anonymous_ephemerals();
        self.merge_pex_only();
        // Deterministic order: by torrent, then address.
        let mut keys: Vec<_> = self.peers.keys().copied().collect();
        keys.sort();
        let mut per_torrent: BTreeMap<[u8; 20], TorrentCounts> = BTreeMap::new();
        for k in keys {
            let Some(mut p) = self.peers.remove(&k) else { continue };
            // A tracker claim announced with port 0 that found no peer at
            // its address to join: it names no peer.
            if k.1.port() == 0 && p.sources == 0 {
                continue;
            }
            let t = self.torrents.get(&k.0);
            let n = t.and_then(|t| t.count());
            let shape = t.and_then(|t| t.meta.as_ref()).map(|m| (m.piece_length, m.total_bytes));
            p.flush_rate();
            let claims: Vec<(i64, Signal, u64)> = p.claims.iter().map(|c| (c.0, c.1, c.2)).collect();
            let fused = fuse(&p.history.to_vec(), &claims, n, shape);
            let Progress {
                first_pieces,
                last_pieces,
                completed_ts,
                confirmed,
                source: completion_source,
            } = progress(&fused, n, self.threshold);
            for (kind, detail, ts) in fused.conflicts {
                // The row points at the claim it is about (the conflict's
                // time is the claim's): its frame, capture and connection.
                let at = p.claims.iter().find(|c| c.0 == ts).map(|c| c.3);
                rows.anomalies.push(AnomalyRow {
                    ts: Some(Ts(ts)),
                    frame: at.map(|a| a.frame),
                    capture: at
                        .and_then(|a| names.get(a.capture as usize))
                        .cloned()
                        .unwrap_or_default(),
                    conn_id: at.map(|a| a.conn_id),
                    layer: "swarm",
                    kind: kind.to_string(),
                    detail: Some(format!("{} {}:{}: {detail}", hex(&k.0), k.1.ip(), k.1.port())),
                });
            }
            let enc = p.enc_own.or(p.enc_pex);
            let e = per_torrent.entry(k.0).or_default();
            e.peers += 1;
            e.confirmed += u64::from(confirmed);
            e.enc_known += u64::from(enc.is_some());
            e.enc += u64::from(enc == Some(true));
            e.utp_known += u64::from(p.utp.is_some());
            e.utp += u64::from(p.utp == Some(true));
            rows.peers.push(PeerRow {
                info_hash: hex(&k.0),
                peer_ip: k.1.ip().to_string(),
                peer_port: u32::from(k.1.port()),
                peer_id: p.peer_id.map(|i| hex(&i)),
                client: p.client,
                first_ts: Ts(p.first_ts),
                last_ts: Ts(p.last_ts),
                first_pieces,
                last_pieces,
                n_pieces: n,
                completion_source,
                completed_ts: completed_ts.map(Ts),
                confirmed_download: confirmed,
                uploaded_bytes: p.uploaded,
                downloaded_bytes: p.downloaded,
                max_rate_bps: p.max_rate[0],
                max_upload_rate_bps: p.max_rate[1],
                n_connections: p.n_connections,
                conn_ids: {
                    let mut c = p.conns.clone();
                    c.sort_unstable();
                    c
                },
                sources: PeerSource::ALL
                    .iter()
                    .filter(|s| p.sources & s.bit() != 0)
                    .map(|s| s.name().to_string())
                    .collect(),
                prefers_encryption: enc,
                utp: p.utp,
                encrypted_bytes_sent: p.enc_sent,
                encrypted_bytes_received: p.enc_received,
                ..Default::default()
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
            let c = per_torrent.get(&h).copied().unwrap_or_default();
            let (verified, failed) = self.piece_checks.get(&hex(&h)).copied().unwrap_or_default();
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
                n_peers: c.peers,
                n_confirmed_downloads: c.confirmed,
                piece_bytes: t.piece_bytes,
                first_ts: t.first_ts.map(Ts),
                last_ts: t.last_ts.map(Ts),
                private: m.map(|m| m.private),
                n_files: m.map(|m| m.files.len() as u64),
                files: m
                    .map(|m| m.files.iter().take(MAX_FILES_IN_ROW).map(|f| f.path.clone()).collect())
                    .unwrap_or_default(),
                n_peers_encryption_known: c.enc_known,
                n_peers_prefer_encryption: c.enc,
                n_peers_utp_known: c.utp_known,
                n_peers_utp: c.utp,
                n_pieces_verified: verified,
                n_pieces_failed: failed,
            });
        }
    }

    /// Peers tracked now.
    pub fn n_peers(&self) -> usize {
        self.peers.len()
    }

    /// Torrents tracked now.
    pub fn n_torrents(&self) -> usize {
        self.torrents.len()
    }

    /// Live capture: the `peers` and `torrents` rows the run would end with
    /// if it ended now, leaving the state as it is. Computed on a copy
    /// (completion needs the whole history, and finishing merges peers):
    /// a rotation briefly holds the swarm twice, which `max_peers` bounds.
    pub fn snapshot(&self, rows: &mut RowBatch) {
        let mut tmp = RowBatch::default();
        self.clone().finish(&mut tmp, &[]);
        rows.peers.append(&mut tmp.peers);
        rows.torrents.append(&mut tmp.torrents);
    }

    /// Live capture: forgets peers last seen before `cutoff` (packet time),
    /// the names that point at them, and torrents idle as long that have no
    /// peer left and no metadata from a .torrent file. Called right after a
    /// snapshot, so the last state of what is dropped has been written.
    pub fn expire_idle(&mut self, cutoff: i64) {
        self.peers.retain(|_, p| p.last_ts >= cutoff);
        let peers = &self.peers;
        self.alias.retain(|k| peers.contains_key(k));
        self.resolved = [None; RESOLVED];
        self.by_peer_id.retain(|k| peers.contains_key(k));
        self.by_prefix.retain(|pk, (l, e)| {
            let at = |p: &u16| peers.contains_key(&(pk.0, SocketAddr::new(pk.1, *p)));
            l.retain(at);
            e.retain(at);
            !l.is_empty() || !e.is_empty()
        });
        let live: std::collections::HashSet<[u8; 20]> = self.peers.keys().map(|k| k.0).collect();
        self.torrents.retain(|h, t| {
            live.contains(h) || t.metadata_source == "torrent_file" || t.last_ts.is_some_and(|l| l >= cutoff)
        });
        // Piece counts go with their torrent: the table is bounded by
        // max_torrents, and counts kept for forgotten torrents would keep
        // every later torrent's pieces from being counted.
        let kept: std::collections::HashSet<String> = self.torrents.keys().map(|h| hex(h)).collect();
        self.piece_checks.retain(|h, _| kept.contains(h));
        // Mid-stream attributions are looked up while a connection lives;
        // its rows are written by then. Bounded like the peer table.
        if self.attributed.len() > self.limits.max_peers {
            self.attributed.clear();
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
            history: Track::new(),
            claims: Packed::new(),
            uploaded: 0,
            downloaded: 0,
            win_start: ts - ts.rem_euclid(window),
            win_bytes: [0, 0],
            win_len: window,
            max_rate: [None, None],
            conns: Vec::new(),
            n_connections: 0,
            sources: 0,
            listen: false,
            unknown_start: false,
            start_known: false,
            enc_own: None,
            enc_pex: None,
            utp: None,
            enc_sent: 0,
            enc_received: 0,
        }
    }

    /// Counts a connection it took part in (listed while fewer than
    /// MAX_CONNS_REMEMBERED are). `once`: the caller's event comes once per
    /// connection, so one past the list is still counted; a block's bytes
    /// (many per connection) count only a connection the list can hold.
    fn take_part(&mut self, conn_id: u64, once: bool) {
        // Blocks come in runs of one connection: the last one first.
        if self.conns.last() == Some(&conn_id) || self.conns.contains(&conn_id) {
            return;
        }
        if self.conns.len() < MAX_CONNS_REMEMBERED {
            self.conns.push(conn_id);
            self.n_connections += 1;
        } else if once {
            self.n_connections += 1;
        }
    }

    /// Records a claim when it changes its source's word (a re-announce
    /// saying the same is not a new point). Returns whether it did.
    fn push_claim(&mut self, ts: i64, sig: Signal, left: u64, at: ClaimAt) -> bool {
        // A source's word: complete (None), or bytes left.
        let word = |sig: Signal, left: u64| {
            let complete = sig != Signal::TrackerLeft || left == 0;
            (sig.claim_slot(), (!complete).then_some(left))
        };
        let slot = sig.claim_slot();
        if let Some((_, ls, ll, _)) = self.claims.iter().filter(|c| c.1.claim_slot() == slot).last() {
            if word(ls, ll) == word(sig, left) {
                return false;
            }
        }
        // Thinned as the wire history is.
        thin_packed(&mut self.claims);
        self.claims.push((ts, sig, left, at));
        true
    }

    fn push_history(&mut self, ts: i64, point: u32, sig: Signal) {
        thin_track(&mut self.history);
        self.history.push((ts, point, sig));
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
        self.flush_rate_with(self.win_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::FrameCtx;

    /// A PortMap gives back every key it was given: ports alone for the
    /// key's own torrent and address, whole keys for another address,
    /// another torrent, or an IPv6 scope that a port cannot carry; a key
    /// re-pointed moves between the two, and retain sees whole keys.
    #[test]
    fn port_map_gives_back_whole_keys() {
        let (h, g) = ([1u8; 20], [2u8; 20]);
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (a, b, c) = (sa("10.0.0.1:6881"), sa("10.0.0.1:51413"), sa("10.0.0.2:6881"));
        let v6 = sa("[2001:db8::1]:7000");
        let scoped = SocketAddr::V6(std::net::SocketAddrV6::new("fe80::1".parse().unwrap(), 7000, 0, 3));
        let pairs = [
            ((h, b), (h, a)),
            ((h, c), (h, a)),
            ((g, a), (h, a)),
            ((h, v6), (h, SocketAddr::new(v6.ip(), 1))),
            ((h, SocketAddr::new(scoped.ip(), 9)), (h, scoped)),
        ];
        let mut m: PortMap<PeerKey> = PortMap::default();
        for (k, v) in pairs {
            m.insert(k, v);
        }
        assert_eq!((m.near.len(), m.far.len(), m.len()), (2, 3, 5));
        for (k, v) in pairs {
            assert_eq!(m.get(&k), Some(v));
        }
        assert_eq!(m.get(&(h, sa("10.0.0.1:1"))), None);
        m.insert((h, c), (h, sa("10.0.0.2:1")));
        m.insert((h, b), (g, a));
        assert_eq!((m.near.len(), m.far.len()), (2, 3));
        assert_eq!(m.get(&(h, c)), Some((h, sa("10.0.0.2:1"))));
        assert_eq!(m.get(&(h, b)), Some((g, a)));
        m.retain(|k| k.0 == g || k.1 == sa("10.0.0.2:1"));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&(h, b)), Some((g, a)));
        let mut ids: PortMap<PeerIdKey> = PortMap::default();
        ids.insert((h, a.ip(), [7; 20]), (h, b));
        assert_eq!((ids.near.len(), ids.get(&(h, a.ip(), [7; 20]))), (1, Some((h, b))));
    }

    fn ev(ts: i64, peer: &str, kind: SwarmEventKind) -> SwarmEvent {
        SwarmEvent {
            ctx: FrameCtx {
                ts,
                frame: ts as u64,
                capture: 0,
            },
            conn_id: 1,
            info_hash: [7; 20],
            peer: peer.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            kind,
        }
    }

    /// A torrent of no pieces (an empty file) has no completion to cross:
    /// neither at once nor ever.
    #[test]
    fn a_torrent_of_no_pieces_has_no_completion() {
        let s = Swarm::new(Limits::default(), 0.98, 5);
        let history = [(1_000_000, 0), (3_000_000, 0)];
        assert_eq!(completion(&history, Some(0), s.threshold), (None, false));
        assert_eq!(completion(&history, None, s.threshold), (None, false));
        // The same history with one piece of one: complete at its first
        // point at or above the threshold, after 2 s below.
        assert_eq!(
            completion(&[(1_000_000, 0), (3_000_000, 1)], Some(1), s.threshold),
            (Some(3_000_000), true)
        );
    }

    /// A swarm of 100 pieces (a seeder's full bitfield: 12 bytes of 0xFF
    /// and 0xF0, highest index 99) and one leecher per `(port, steps)`:
    /// have_none at 0, then `have` for pieces 0, 1, ... at 2 s + k ms for
    /// each k in `steps` (k pieces in all). Returns each leecher's
    /// (completed_ts, confirmed_download), and the torrent's confirmed count.
    fn complete(threshold: f64, leechers: &[(u16, u32)]) -> (Vec<(Option<i64>, bool)>, u64) {
        let mut s = Swarm::new(Limits::default(), threshold, 5);
        let mut rows = RowBatch::default();
        let mut bits = vec![0xFFu8; 12];
        bits.push(0xF0);
        let mut evs = vec![ev(0, "10.0.0.1:1", SwarmEventKind::Bitfield(bits))];
        for &(port, n) in leechers {
            let peer = format!("10.0.1.{port}:{port}");
            evs.push(ev(0, &peer, SwarmEventKind::HaveNone));
            for k in 0..n {
                evs.push(ev(2_000_000 + i64::from(k) * 1000, &peer, SwarmEventKind::Have(k)));
            }
        }
        evs.sort_by_key(|e| e.ctx.ts);
        s.apply(evs, Vec::new(), &mut rows);
        s.finish(&mut rows, &[]);
        assert_eq!(rows.torrents[0].n_pieces, Some(100));
        let out = leechers
            .iter()
            .map(|&(port, _)| {
                let p = rows
                    .peers
                    .iter()
                    .find(|p| p.peer_port == u32::from(port))
                    .expect("leecher row");
                (p.completed_ts.map(|t| t.0), p.confirmed_download)
            })
            .collect();
        (out, rows.torrents[0].n_confirmed_downloads)
    }

    /// Completion at 98 % of 100 pieces: 97 is below, 98 is exactly at the
    /// threshold (complete, at the 98th piece), 99 and 100 are above
    /// (complete at the 98th piece too: the first time at or above).
    #[test]
    fn completion_exactly_at_the_threshold_counts_and_one_below_does_not() {
        let at98 = Some(2_000_000 + 97 * 1000);
        let (got, n) = complete(0.98, &[(11, 97), (12, 98), (13, 99), (14, 100)]);
        assert_eq!(got, vec![(None, false), (at98, true), (at98, true), (at98, true)]);
        assert_eq!(n, 3);
        // The bound moves with the threshold: at 1.0, 99 of 100 is below.
        let at100 = Some(2_000_000 + 99 * 1000);
        let (got, n) = complete(1.0, &[(11, 99), (12, 100)]);
        assert_eq!(got, vec![(None, false), (at100, true)]);
        assert_eq!(n, 1);
        // 0.5 of 100: 49 below, 50 at.
        let (got, _) = complete(0.5, &[(11, 49), (12, 50)]);
        assert_eq!(got, vec![(None, false), (Some(2_000_000 + 49 * 1000), true)]);
    }

    /// A crossing is a confirmed download only after at least MIN_BELOW_US
    /// below the threshold: exactly that long counts, 1 µs less does not.
    #[test]
    fn confirmed_download_needs_exactly_min_below_us_below() {
        for (below_us, want) in [
            (MIN_BELOW_US, true),
            (MIN_BELOW_US - 1, false),
            (MIN_BELOW_US + 1, true),
        ] {
            let mut s = Swarm::new(Limits::default(), 0.98, 5);
            let mut rows = RowBatch::default();
            // 8 pieces: the leecher has 7 from t0 = 50 s (below: 7 < 7.84)
            // and the 8th `below_us` later.
            let t0 = 50_000_000;
            s.apply(
                vec![
                    ev(t0, "10.0.0.1:1", SwarmEventKind::Bitfield(vec![0xFF])),
                    ev(t0, "10.0.0.2:2", SwarmEventKind::Bitfield(vec![0xFE])),
                    ev(t0 + below_us, "10.0.0.2:2", SwarmEventKind::Have(7)),
                ],
                Vec::new(),
                &mut rows,
            );
            s.finish(&mut rows, &[]);
            let p = rows.peers.iter().find(|p| p.peer_port == 2).expect("leecher");
            assert_eq!(p.completed_ts.map(|t| t.0), Some(t0 + below_us), "{below_us}");
            assert_eq!(p.confirmed_download, want, "below for {below_us} µs");
        }
    }

    /// Peak rates over tumbling windows of 5 s: a window holds [start,
    /// start + 5 s); bytes at its last microsecond count in it, bytes at the
    /// next window's first do not. Uploads and downloads both sides.
    #[test]
    fn peak_rate_windows_end_exactly_at_their_bound() {
        let mut s = Swarm::new(Limits::default(), 0.98, 5);
        let mut rows = RowBatch::default();
        let to: SocketAddr = "10.0.0.2:2".parse().unwrap_or_else(|_| SocketAddr::from(([0; 4], 0)));
        let t = |ts, bytes| {
            ev(
                ts,
                "10.0.0.1:1",
                SwarmEventKind::Transfer {
                    to,
                    bytes,
                    cut_off: false,
                },
            )
        };
        s.apply(
            vec![
                t(10_000_000, 1000),
                t(14_999_999, 1500),
                t(15_000_000, 3000),
                t(19_999_999, 1),
                t(20_000_000, 50),
            ],
            Vec::new(),
            &mut rows,
        );
        s.finish(&mut rows, &[]);
        let up = rows.peers.iter().find(|p| p.peer_port == 1).expect("sender");
        let down = rows.peers.iter().find(|p| p.peer_port == 2).expect("receiver");
        // Windows: [10 s, 15 s) 2,500 B, [15 s, 20 s) 3,001 B, [20 s, 25 s) 50 B.
        assert_eq!(up.max_upload_rate_bps, Some(3001.0 / 5.0));
        assert_eq!(down.max_rate_bps, Some(3001.0 / 5.0));
        assert_eq!((up.uploaded_bytes, up.downloaded_bytes), (5551, 0));
        assert_eq!((down.uploaded_bytes, down.downloaded_bytes), (0, 5551));
        assert_eq!(up.max_rate_bps, None, "the sender downloaded nothing");
        assert_eq!(rows.torrents[0].piece_bytes, 5551);
    }

    /// Every signal survives its number (packed series store it so).
    #[test]
    fn signals_come_back_from_their_numbers() {
        for name in [
            "bitfield",
            "have",
            "have_all",
            "have_none",
            "dont_have",
            "tracker_left",
            "tracker_completed",
            "upload_only",
            "pex_seed",
            "dht_seed",
        ] {
            let s = Signal::from_name(name).unwrap_or(Signal::Have);
            assert_eq!(Signal::from_u8(s as u8).name(), name);
        }
        let at = |f: u64| ClaimAt {
            frame: f,
            conn_id: u64::MAX - f,
            capture: 2,
        };
        let claims = vec![
            (5_000_000, Signal::TrackerLeft, 123_456_789, at(10)),
            (4_000_000, Signal::PexSeed, 0, at(3)),
            (9_000_000, Signal::DhtSeed, u64::MAX, at(u64::MAX)),
        ];
        assert_eq!(Packed::from_slice(&claims).to_vec(), claims);
        let hist = vec![
            (1, ALL, Signal::HaveAll),
            (2, 0, Signal::DontHave),
            (0, ALL - 1, Signal::Have),
        ];
        assert_eq!(Packed::from_slice(&hist).to_vec(), hist);
    }

    /// A peer's progress history keeps MAX_HISTORY points; at the bound
    /// nothing is dropped, one more halves it (every other point, the first
    /// and the last kept).
    #[test]
    fn progress_history_is_halved_one_past_its_bound() {
        let mut p = PeerState::new(0, 5_000_000);
        for i in 0..MAX_HISTORY as i64 {
            p.push_history(i, i as u32, Signal::Have);
        }
        assert_eq!(p.history.len(), MAX_HISTORY);
        let n = MAX_HISTORY as i64;
        p.push_history(n, n as u32, Signal::Have);
        assert_eq!(p.history.len(), MAX_HISTORY / 2 + 2);
        let h = p.history.to_vec();
        assert_eq!(h[0], (0, 0, Signal::Have));
        assert_eq!(h[1], (2, 2, Signal::Have));
        let tail: Vec<_> = h[h.len() - 3..].iter().map(|h| (h.0, h.1)).collect();
        assert_eq!(
            tail,
            vec![(n - 2, (n - 2) as u32), (n - 1, (n - 1) as u32), (n, n as u32)]
        );
    }

    #[test]
    fn lazy_bitfield_is_not_a_download_and_a_real_one_is() {
        let mut s = Swarm::new(Limits::default(), 0.98, 5);
        let mut rows = RowBatch::default();
        // Seeder: 7 of 8 pieces then a have in the same millisecond.
        let seen = |listen| SwarmEventKind::Seen {
            peer_id: None,
            client: None,
            listen,
        };
        s.apply(
            vec![
                ev(0, "10.0.0.1:1", seen(true)),
                ev(0, "10.0.0.1:1", SwarmEventKind::Bitfield(vec![0xFE])),
                ev(100, "10.0.0.1:1", SwarmEventKind::Have(7)),
                ev(0, "10.0.0.2:2", seen(true)),
                ev(10, "10.0.0.2:2", SwarmEventKind::Have(0)),
            ],
            Vec::new(),
            &mut rows,
        );
        let haves: Vec<_> = (1..8)
            .map(|i| ev(2_000_000 + i64::from(i), "10.0.0.2:2", SwarmEventKind::Have(i)))
            .collect();
        s.apply(haves, Vec::new(), &mut rows);
        s.finish(&mut rows, &[]);
        let conf: Vec<_> = rows
            .peers
            .iter()
            .map(|p| (p.peer_ip.clone(), p.confirmed_download))
            .collect();
        assert_eq!(conf, [("10.0.0.1".to_string(), false), ("10.0.0.2".to_string(), true)]);
        assert_eq!(rows.torrents[0].n_pieces, Some(8));
        assert_eq!(rows.torrents[0].n_confirmed_downloads, 1);
    }

    #[test]
    fn ephemeral_rows_merge_into_the_listen_endpoint_by_peer_id() {
        let mut s = Swarm::new(Limits::default(), 0.98, 5);
        let mut rows = RowBatch::default();
        let pid = Some([9u8; 20]);
        s.apply(
            vec![
                ev(
                    0,
                    "10.0.0.3:40000",
                    SwarmEventKind::Seen {
                        peer_id: pid,
                        client: None,
                        listen: false,
                    },
                ),
                ev(1, "10.0.0.3:40000", SwarmEventKind::Have(1)),
                ev(
                    2,
                    "10.0.0.3:6881",
                    SwarmEventKind::Seen {
                        peer_id: pid,
                        client: None,
                        listen: true,
                    },
                ),
                ev(3, "10.0.0.3:6881", SwarmEventKind::Have(2)),
                ev(
                    4,
                    "10.0.0.3:40001",
                    SwarmEventKind::Seen {
                        peer_id: pid,
                        client: None,
                        listen: false,
                    },
                ),
                ev(5, "10.0.0.3:40001", SwarmEventKind::Have(3)),
            ],
            Vec::new(),
            &mut rows,
        );
        s.finish(&mut rows, &[]);
        assert_eq!(rows.peers.len(), 1);
        assert_eq!(rows.peers[0].peer_port, 6881);
        assert_eq!(rows.peers[0].last_pieces, Some(3));
    }

    #[test]
    fn midstream_events_wait_for_an_endpoint() {
        let mut s = Swarm::new(Limits::default(), 0.98, 5);
        let mut rows = RowBatch::default();
        let mut u = ev(1, "10.0.0.5:7000", SwarmEventKind::Have(4));
        u.conn_id = 77;
        u.info_hash = [0; 20];
        s.apply(
            Vec::new(),
            vec![UnattributedEvent {
                event: u,
                other: "10.0.0.6:6881"
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([0; 4], 0))),
            }],
            &mut rows,
        );
        assert_eq!(s.attribution(77), None);
        s.apply(
            vec![ev(
                5,
                "10.0.0.6:6881",
                SwarmEventKind::Seen {
                    peer_id: None,
                    client: None,
                    listen: true,
                },
            )],
            Vec::new(),
            &mut rows,
        );
        assert_eq!(s.attribution(77), Some([7; 20]));
        s.finish(&mut rows, &[]);
        assert!(rows
            .peers
            .iter()
            .any(|p| p.peer_ip == "10.0.0.5" && p.last_pieces == Some(1)));
    }

    #[test]
    fn expired_torrents_free_their_piece_counts() {
        // One torrent's piece counts at a time: the first torrent goes idle
        // and is forgotten; the next one's pieces must still be counted.
        let limits = Limits {
            max_torrents: 1,
            ..Limits::default()
        };
        let mut s = Swarm::new(limits, 0.98, 5);
        let mut rows = RowBatch::default();
        let seen = SwarmEventKind::Seen {
            peer_id: None,
            client: None,
            listen: true,
        };
        s.apply(vec![ev(0, "10.0.0.1:1", seen.clone())], Vec::new(), &mut rows);
        s.note_piece(&hex(&[7; 20]), true);
        s.expire_idle(1_000_000);
        assert_eq!(s.n_torrents(), 0);
        let mut e = ev(2_000_000, "10.0.0.2:2", seen);
        e.info_hash = [8; 20];
        s.apply(vec![e], Vec::new(), &mut rows);
        s.note_piece(&hex(&[8; 20]), true);
        s.note_piece(&hex(&[8; 20]), false);
        s.finish(&mut rows, &[]);
        let t: Vec<_> = rows
            .torrents
            .iter()
            .map(|t| (t.info_hash.clone(), t.n_pieces_verified, t.n_pieces_failed))
            .collect();
        assert_eq!(t, [(hex(&[8; 20]), 1, 1)]);
    }

    fn seen(listen: bool) -> SwarmEventKind {
        SwarmEventKind::Seen {
            peer_id: None,
            client: None,
            listen,
        }
    }

    /// A seeder at .1 fixing the piece count at 8, and the events of the
    /// peer at .2 after its own `seen`.
    fn with_seeder(events: Vec<SwarmEvent>) -> (Vec<PeerRow>, Vec<AnomalyRow>, Vec<PeerProgressRow>) {
        let mut s = Swarm::new(Limits::default(), 0.98, 5);
        let mut rows = RowBatch::default();
        let mut all = vec![
            ev(0, "10.0.0.1:1", seen(true)),
            ev(0, "10.0.0.1:1", SwarmEventKind::Bitfield(vec![0xFF])),
            ev(0, "10.0.0.2:2", seen(true)),
        ];
        all.extend(events);
        s.apply(all, Vec::new(), &mut rows);
        s.finish(&mut rows, &[]);
        (rows.peers, rows.anomalies, rows.peer_progress)
    }

    fn tracker(left: u64, completed: bool) -> SwarmEventKind {
        SwarmEventKind::Claim(Claim::Tracker {
            left: Some(left),
            completed,
        })
    }

    #[test]
    fn a_last_have_sent_to_no_one_is_made_up_by_the_tracker() {
        // 7 of 8 `have`s on the wire; the last piece's went to no one (every
        // other peer held it); the tracker hears `completed`, left 0.
        let mut evs: Vec<_> = (0..7)
            .map(|i| ev(1_000_000 + i64::from(i), "10.0.0.2:2", SwarmEventKind::Have(i)))
            .collect();
        evs.push(ev(5_000_000, "10.0.0.2:2", tracker(0, true)));
        evs.push(ev(15_000_000, "10.0.0.2:2", tracker(0, false)));
        let (peers, anomalies, progress) = with_seeder(evs);
        let p = &peers[1];
        assert_eq!((p.last_pieces, p.n_pieces), (Some(8), Some(8)));
        assert_eq!(p.completion_source, Some("tracker_completed"));
        assert!(p.confirmed_download);
        assert_eq!(p.completed_ts, Some(Ts(5_000_000)));
        // The seeder decided by its bitfield.
        assert_eq!(peers[0].completion_source, Some("bitfield"));
        // Kept, and said: the wire's last word was 7 of 8.
        assert_eq!(anomalies.len(), 1);
        assert_eq!(anomalies[0].kind, "completion_wire_behind");
        assert!(anomalies[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("7 of 8 (have)")));
        // One progress row per change of the tracker's word, not per announce.
        let causes: Vec<_> = progress
            .iter()
            .filter(|r| r.peer_ip == "10.0.0.2")
            .map(|r| r.cause)
            .collect();
        assert_eq!(
            causes.iter().filter(|c| c.starts_with("tracker")).count(),
            1,
            "{causes:?}"
        );
    }

    #[test]
    fn the_crossing_is_the_first_evidence_of_it() {
        // The tracker hears `completed` 1 s before the wire's last `have`.
        let mut evs = vec![ev(0, "10.0.0.2:2", SwarmEventKind::HaveNone)];
        evs.extend((0..7).map(|i| ev(1_000_000 + i64::from(i), "10.0.0.2:2", SwarmEventKind::Have(i))));
        evs.push(ev(9_000_000, "10.0.0.2:2", tracker(0, true)));
        evs.push(ev(10_000_000, "10.0.0.2:2", SwarmEventKind::Have(7)));
        let (peers, anomalies, _) = with_seeder(evs);
        let p = &peers[1];
        assert_eq!(p.completed_ts, Some(Ts(9_000_000)));
        assert_eq!(p.completion_source, Some("tracker_completed"));
        assert_eq!(p.last_pieces, Some(8));
        assert!(p.confirmed_download);
        // The wire caught up: no conflict.
        assert!(anomalies.is_empty(), "{anomalies:?}");
        // And the other way round: the wire first.
        let mut evs = vec![ev(0, "10.0.0.2:2", SwarmEventKind::HaveNone)];
        evs.extend((0..8).map(|i| ev(1_000_000 + i64::from(i), "10.0.0.2:2", SwarmEventKind::Have(i))));
        evs.push(ev(1_000_100, "10.0.0.2:2", tracker(0, true)));
        let (peers, _, _) = with_seeder(evs);
        assert_eq!(peers[1].completion_source, Some("have"));
        assert_eq!(peers[1].completed_ts, Some(Ts(1_000_007)));
    }

    #[test]
    fn a_claim_the_wire_contradicts_later_is_set_aside() {
        // upload_only, then 3 s later a bitfield of 4 of 8: a partial seed.
        let evs = vec![
            ev(0, "10.0.0.2:2", SwarmEventKind::Claim(Claim::UploadOnly)),
            ev(3_000_000, "10.0.0.2:2", SwarmEventKind::Bitfield(vec![0xF0])),
        ];
        let (peers, anomalies, _) = with_seeder(evs);
        let p = &peers[1];
        assert_eq!(p.last_pieces, Some(4));
        assert_eq!(p.completion_source, Some("bitfield"));
        assert!(!p.confirmed_download);
        assert_eq!(anomalies.len(), 1);
        assert_eq!(anomalies[0].kind, "completion_contradicted");
        // Within a second it is the same breath (a lazy bitfield after an
        // LTEP handshake saying upload_only): no contradiction.
        let evs = vec![
            ev(0, "10.0.0.2:2", SwarmEventKind::Claim(Claim::UploadOnly)),
            ev(10, "10.0.0.2:2", SwarmEventKind::Bitfield(vec![0xFE])),
            ev(20, "10.0.0.2:2", SwarmEventKind::Have(7)),
        ];
        let (peers, anomalies, _) = with_seeder(evs);
        assert_eq!(peers[1].last_pieces, Some(8));
        assert_eq!(peers[1].completion_source, Some("upload_only"));
        assert!(anomalies.is_empty(), "{anomalies:?}");
    }

    #[test]
    fn seed_flags_of_others_and_of_the_dht_count() {
        for (claim, name) in [(Claim::PexSeed, "pex_seed"), (Claim::DhtSeed, "dht_seed")] {
            let evs = vec![
                ev(0, "10.0.0.2:2", SwarmEventKind::Bitfield(vec![0x80])),
                ev(60_000_000, "10.0.0.2:2", SwarmEventKind::Claim(claim)),
            ];
            let (peers, _, _) = with_seeder(evs);
            assert_eq!(peers[1].last_pieces, Some(8), "{name}");
            assert_eq!(peers[1].completion_source, Some(name));
            assert!(peers[1].confirmed_download, "{name}");
        }
    }

    /// A peer seen from an ephemeral port (have 0, have 1) and on its listen
    /// port (have 2), then named on the listen port by the same peer id:
    /// one entry, whose piece set is the union, so a later have 3 makes 4.
    #[test]
    fn merged_peer_entries_keep_both_piece_sets() {
        let seen_pid = |listen| SwarmEventKind::Seen {
            peer_id: Some([5u8; 20]),
            client: None,
            listen,
        };
        let evs = vec![
            ev(1_000_000, "10.0.0.3:40000", seen_pid(false)),
            ev(1_000_001, "10.0.0.3:40000", SwarmEventKind::Have(0)),
            ev(1_000_002, "10.0.0.3:40000", SwarmEventKind::Have(1)),
            ev(1_500_000, "10.0.0.3:6881", SwarmEventKind::Have(2)),
            ev(2_000_000, "10.0.0.3:6881", seen_pid(true)),
            ev(2_000_001, "10.0.0.3:6881", SwarmEventKind::Have(3)),
        ];
        let (peers, _, _) = with_seeder(evs);
        let got: Vec<_> = peers
            .iter()
            .filter(|p| p.peer_ip == "10.0.0.3")
            .map(|p| (p.peer_port, p.last_pieces))
            .collect();
        assert_eq!(got, [(6881, Some(4))]);
    }

    /// A piece set by construction, indices in three 64-bit words (3, 5,
    /// 64, 70, 130): each index counts once, `clear` takes out exactly its
    /// own bit (not its word's others) and says whether it was there.
    #[test]
    fn piece_set_counts_each_index_once_across_words() {
        let mut s = PieceSet::default();
        for i in [3, 5, 64, 70, 130] {
            assert!(s.set(i), "set {i}");
        }
        assert!(!s.set(70) && !s.set(3), "set twice");
        assert_eq!((s.count, s.point(), s.have(Some(200))), (5, 5, Some(5)));
        assert_eq!(s.words, [(1 << 3) | (1 << 5), (1 << 0) | (1 << 6), 1 << 2]);
        // 69 and 6 are not set (their words are); 200 is past the words.
        assert!(!s.clear(69) && !s.clear(6) && !s.clear(200));
        assert!(s.clear(70) && s.clear(5));
        assert!(!s.clear(70), "cleared twice");
        assert_eq!(s.count, 3);
        assert_eq!(s.words, [1 << 3, 1 << 0, 1 << 2]);
        assert!(s.set(70) && !s.set(64) && !s.set(3));
        assert_eq!(s.count, 4);
        // have_all: the torrent's count whatever the set holds.
        s.all = true;
        assert_eq!((s.point(), s.have(Some(200)), s.have(None)), (ALL, Some(200), None));
    }

    /// A count as large as the have_all marker still reads as a count:
    /// `point` clamps it one below ALL.
    #[test]
    fn piece_set_point_never_reads_as_have_all() {
        let big = PieceSet {
            count: u64::from(ALL),
            ..Default::default()
        };
        assert_eq!(big.point(), ALL - 1);
        let bigger = PieceSet {
            count: u64::from(ALL) + 5,
            ..Default::default()
        };
        assert_eq!(bigger.point(), ALL - 1);
    }

    /// The word-at-a-time union against setting each bit of the bitfield:
    /// same words, count and buffer length, on sets that already hold
    /// pieces, for bitfields of every length to 40 bytes (a partial last
    /// word) and random contents (sparse, dense, all ones).
    #[test]
    fn union_bitfield_agrees_with_setting_each_bit() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut n_counted = 0;
        for round in 0..3_000 {
            let len = round % 41;
            let bits: Vec<u8> = (0..len)
                .map(|_| match next() % 4 {
                    0 => 0,
                    1 => 0xff,
                    _ => next() as u8,
                })
                .collect();
            let mut fast = PieceSet::default();
            for _ in 0..next() % 6 {
                fast.set((next() % 400) as u32);
            }
            let mut slow = fast.clone();
            fast.union_bitfield(&bits);
            for (i, &b) in bits.iter().enumerate() {
                for j in 0..8 {
                    if b & (0x80 >> j) != 0 {
                        slow.set((i * 8 + j) as u32);
                    }
                }
            }
            assert_eq!(
                (&fast.words, fast.count, fast.all),
                (&slow.words, slow.count, slow.all),
                "{bits:?}"
            );
            n_counted += fast.count;
        }
        assert!(n_counted > 100_000, "{n_counted}");
    }

    /// Bitfields (MSB of byte 0 is piece 0) into a set, the union of two
    /// sets, and the highest index + 1 of a bitfield.
    #[test]
    fn piece_set_from_bitfields_and_unions() {
        let mut a = PieceSet::default();
        // Pieces 0, 9, 15 and 31 (byte 3, last bit); the zero byte adds
        // nothing.
        a.union_bitfield(&[0x80, 0x41, 0x00, 0x01]);
        let idx = |s: &PieceSet| -> Vec<u32> {
            (0..300)
                .filter(|&i| s.words.get(i as usize / 64).is_some_and(|w| w & (1 << (i % 64)) != 0))
                .collect()
        };
        assert_eq!(idx(&a), [0, 9, 15, 31]);
        assert_eq!(a.count, 4);
        let mut b = PieceSet::default();
        for i in [9, 40, 200] {
            b.set(i);
        }
        // b's words: [9, 40], [], [], [200]: a zero word between.
        a.union(&b);
        assert_eq!(idx(&a), [0, 9, 15, 31, 40, 200]);
        assert_eq!((a.count, a.all), (6, false));
        let mut all = PieceSet {
            all: true,
            ..Default::default()
        };
        a.union(&all);
        assert!(a.all);
        all.union(&b);
        assert!(all.all, "a union keeps have_all");
        assert_eq!(all.count, 3);
        // Highest set index + 1.
        assert_eq!(bitfield_top(&[]), 0);
        assert_eq!(bitfield_top(&[0, 0]), 0);
        assert_eq!(bitfield_top(&[0x80]), 1);
        assert_eq!(bitfield_top(&[0x01]), 8);
        assert_eq!(bitfield_top(&[0x40, 0x00]), 2);
        assert_eq!(bitfield_top(&[0xFF, 0x20, 0x00]), 11);
        assert_eq!(bitfield_top(&[0, 0, 0x01]), 24);
    }

    /// Info hash 07…07: 10 pieces of 16 bytes, 150 bytes in all (a short
    /// last piece of 6), piece hashes zero.
    fn torrent_10x16() -> std::sync::Arc<Metainfo> {
        std::sync::Arc::new(Metainfo {
            info_hash_v1: Some([7; 20]),
            info_hash_v2: None,
            name: "t".into(),
            piece_length: 16,
            n_pieces: 10,
            total_bytes: 150,
            files: Vec::new(),
            private: false,
            trackers: Vec::new(),
            piece_hashes: vec![[0; 20]; 10],
        })
    }

    /// A torrent of 10 known pieces ([7; 20]) and one without metadata
    /// ([8; 20]) under `max_pieces` 16: a `have` counts only for an index
    /// below both (8, 9 and 15 count, 10 and 16 do not); the second torrent's
    /// count is its bitfield estimate, a third torrent seen with no piece
    /// message has none.
    #[test]
    fn haves_count_below_the_piece_count_and_max_pieces_only() {
        let limits = Limits {
            max_pieces: 16,
            ..Limits::default()
        };
        let mut s = Swarm::new(limits, 0.98, 5);
        s.add_metainfo(torrent_10x16(), "torrent_file");
        let on = |h: u8, e: SwarmEvent| SwarmEvent {
            info_hash: [h; 20],
            ..e
        };
        let mut rows = RowBatch::default();
        s.apply(
            vec![
                ev(1, "10.0.0.5:5", SwarmEventKind::HaveNone),
                ev(2, "10.0.0.5:5", SwarmEventKind::Have(8)),
                ev(2, "10.0.0.5:5", SwarmEventKind::Have(9)),
                ev(3, "10.0.0.5:5", SwarmEventKind::Have(10)),
                on(8, ev(1, "10.0.0.6:6", SwarmEventKind::HaveNone)),
                on(8, ev(2, "10.0.0.6:6", SwarmEventKind::Have(15))),
                on(8, ev(3, "10.0.0.6:6", SwarmEventKind::Have(16))),
                on(8, ev(4, "10.0.0.7:7", SwarmEventKind::Bitfield(vec![0x80, 0x00]))),
                on(9, ev(1, "10.0.0.8:8", seen(true))),
                on(
                    10,
                    ev(1, "10.0.0.9:9", SwarmEventKind::Bitfield(vec![0x80, 0x00, 0x00])),
                ),
                on(11, ev(1, "10.0.0.10:10", SwarmEventKind::Bitfield(vec![0x80, 0x00]))),
            ],
            Vec::new(),
            &mut rows,
        );
        s.finish(&mut rows, &[]);
        let last = |port: u32| {
            rows.peers
                .iter()
                .find(|p| p.peer_port == port)
                .map(|p| (p.last_pieces, p.n_pieces))
        };
        assert_eq!(last(5), Some((Some(2), Some(10))));
        assert_eq!(last(6), Some((Some(1), Some(16))));
        assert_eq!(last(7), Some((Some(1), Some(16))));
        assert_eq!(last(8), Some((None, None)));
        // A bitfield alone: at least 8·(bytes − 1) + 1 pieces (3 bytes: 17,
        // 2 bytes: 9).
        assert_eq!(last(9), Some((Some(1), Some(17))));
        assert_eq!(last(10), Some((Some(1), Some(9))));
        let t: Vec<_> = rows.torrents.iter().map(|t| (t.n_pieces, t.n_pieces_source)).collect();
        assert_eq!(
            t,
            [
                (Some(10), "torrent_file"),
                (Some(16), "bitfield_estimate"),
                (None, "none"),
                (Some(17), "bitfield_estimate"),
                (Some(9), "bitfield_estimate")
            ]
        );
    }

    /// Verified and failed pieces per torrent, under `max_torrents` 2: a
    /// third torrent's pieces are not counted, the first two's still are
    /// once the table is full.
    #[test]
    fn piece_checks_count_per_torrent_within_max_torrents() {
        let limits = Limits {
            max_torrents: 2,
            ..Limits::default()
        };
        let mut s = Swarm::new(limits, 0.98, 5);
        let mut rows = RowBatch::default();
        let mut other = ev(0, "10.0.0.2:2", SwarmEventKind::HaveNone);
        other.info_hash = [8; 20];
        s.apply(
            vec![ev(0, "10.0.0.1:1", SwarmEventKind::HaveNone), other],
            Vec::new(),
            &mut rows,
        );
        let (a, b, c) = (hex(&[7; 20]), hex(&[8; 20]), hex(&[9; 20]));
        for (h, ok) in [(&a, true), (&a, true), (&a, false), (&b, false), (&c, true), (&a, true)] {
            s.note_piece(h, ok);
        }
        s.finish(&mut rows, &[]);
        let got: Vec<_> = rows
            .torrents
            .iter()
            .map(|t| (t.info_hash.clone(), t.n_pieces_verified, t.n_pieces_failed))
            .collect();
        assert_eq!(got, [(a, 3, 1), (b, 0, 1)]);
    }

    /// The progress row of a tracker's `left`: pieces held when the
    /// torrent's shape is known (10 pieces of 16 bytes, 150 bytes: 40 left
    /// is at least 3 pieces missing, 7 held); `left` 0 is every piece, the
    /// bitfield estimate (8) where no metadata is known.
    #[test]
    fn tracker_left_progress_rows_hold_the_pieces_left_allows() {
        let mut s = Swarm::new(Limits::default(), 0.98, 5);
        s.add_metainfo(torrent_10x16(), "torrent_file");
        let mut other = ev(0, "10.0.0.1:1", SwarmEventKind::Bitfield(vec![0xFF]));
        other.info_hash = [8; 20];
        let mut zero = ev(2, "10.0.0.6:6", tracker(0, false));
        zero.info_hash = [8; 20];
        let mut rows = RowBatch::default();
        s.apply(
            vec![other, ev(1, "10.0.0.5:5", tracker(40, false)), zero],
            Vec::new(),
            &mut rows,
        );
        let got: Vec<_> = rows
            .peer_progress
            .iter()
            .filter(|r| r.cause == "tracker_left")
            .map(|r| (r.peer_port, r.n_pieces_have, r.n_pieces))
            .collect();
        assert_eq!(got, [(5, Some(7), Some(10)), (6, Some(8), None)]);
    }

    /// A peer first seen through a `have` (no bitfield, no handshake): the
    /// pieces a later bitfield adds beyond its `have`s were there all along
    /// and raise every earlier point by as many (2 `have`s, then a bitfield
    /// of 5: 3 added, the points 1, 2 become 4, 5). A peer whose handshake
    /// was seen started with nothing: the same messages leave its points.
    #[test]
    fn a_late_bitfield_raises_the_earlier_points_by_what_it_adds() {
        let pid = SwarmEventKind::Seen {
            peer_id: Some([3; 20]),
            client: None,
            listen: true,
        };
        let (peers, _, progress) = with_seeder(vec![
            ev(1_000_000, "10.0.0.5:5", SwarmEventKind::Have(0)),
            ev(2_000_000, "10.0.0.5:5", SwarmEventKind::Have(1)),
            ev(3_000_000, "10.0.0.5:5", SwarmEventKind::Bitfield(vec![0xF8])),
            ev(500_000, "10.0.0.6:6", pid),
            ev(1_000_000, "10.0.0.6:6", SwarmEventKind::Have(0)),
            ev(2_000_000, "10.0.0.6:6", SwarmEventKind::Have(1)),
            ev(3_000_000, "10.0.0.6:6", SwarmEventKind::Bitfield(vec![0xF8])),
        ]);
        let p = peers.iter().find(|p| p.peer_port == 5).expect("peer");
        assert_eq!((p.first_pieces, p.last_pieces, p.n_pieces), (Some(4), Some(5), Some(8)));
        let p = peers.iter().find(|p| p.peer_port == 6).expect("peer with a handshake");
        assert_eq!((p.first_pieces, p.last_pieces), (Some(1), Some(5)));
        let rows: Vec<_> = progress
            .iter()
            .filter(|r| r.peer_port == 5)
            .map(|r| r.n_pieces_have)
            .collect();
        assert_eq!(rows, [Some(1), Some(2)], "the rows say what was seen then");
    }

    /// `pieces_from_left` against its contract, for every `left` from 0 to
    /// past the total: 0 left is every piece, `total` or more is none, and
    /// in between the pieces not covered by ⌈left / plen⌉ missing ones.
    /// Shapes: a short last piece (10 pieces of 10, 95, 97 and 93 bytes:
    /// last pieces of half, more and less than half a piece), exact pieces
    /// (4 of 8, 32 bytes), a single short piece, a `pieces` field one hash
    /// short (2 of 10, 25 bytes), and a v2 torrent of 10 five-byte files
    /// (one piece each: 10 pieces, 50 bytes, less than 9 whole pieces).
    #[test]
    fn pieces_from_left_for_every_left_of_each_shape() {
        let want = |n: u64, plen: u64, total: u64, left: u64| {
            if left == 0 {
                n
            } else if left >= total {
                0
            } else {
                n.saturating_sub(left.div_ceil(plen))
            }
        };
        for (n, plen, total) in [
            (10, 10, 95),
            (10, 10, 97),
            (10, 10, 93),
            (4, 8, 32),
            (1, 10, 7),
            (2, 10, 25),
            (10, 10, 50),
        ] {
            for left in 0..=total + 12 {
                assert_eq!(
                    pieces_from_left(n, plen, total, left),
                    want(n, plen, total, left),
                    "{n} pieces of {plen}, {total} bytes, {left} left"
                );
            }
        }
        // Spot values of the first shape: 53 and 60 left are at least 6
        // pieces missing (4 held), 61 at least 7 (3 held); 5 is the short
        // last piece alone (9 held).
        assert_eq!(pieces_from_left(10, 10, 95, 53), 4);
        assert_eq!(pieces_from_left(10, 10, 95, 60), 4);
        assert_eq!(pieces_from_left(10, 10, 95, 61), 3);
        assert_eq!(pieces_from_left(10, 10, 95, 5), 9);
    }

    #[test]
    fn tracker_left_in_pieces() {
        // 24 pieces of 32 KiB.
        assert_eq!(pieces_from_left(24, 32768, 786_432, 0), 24);
        assert_eq!(pieces_from_left(24, 32768, 786_432, 32768), 23);
        assert_eq!(pieces_from_left(24, 32768, 786_432, 786_432), 0);
        // A client that counts a half-received piece as left: still missing.
        assert_eq!(pieces_from_left(24, 32768, 786_432, 16384), 23);
        // A short last piece (25 bytes in pieces of 10): 5 left is that
        // piece, 15 is it and one more, 7 is some other piece.
        assert_eq!(pieces_from_left(3, 10, 25, 5), 2);
        assert_eq!(pieces_from_left(3, 10, 25, 15), 1);
        assert_eq!(pieces_from_left(3, 10, 25, 7), 2);
        // Less than the short last piece left: that one piece is missing
        // (not `left - last`, which would underflow).
        assert_eq!(pieces_from_left(3, 10, 25, 3), 2);
        // Lengths past the pieces (a `pieces` field one hash short): the
        // whole-piece count of `left`, no special last piece.
        assert_eq!(pieces_from_left(2, 10, 25, 15), 0);
        // Nonsense stays in range.
        assert_eq!(pieces_from_left(3, 10, 25, u64::MAX), 0);
        assert_eq!(pieces_from_left(0, 10, 25, 5), 0);
        assert_eq!(pieces_from_left(3, 0, 25, 5), 0);
        // Without the torrent's shape a `left` above 0 counts nothing; 0
        // still says every piece.
        let f = fuse(&[], &[(0, Signal::TrackerLeft, 5)], Some(3), None);
        assert!(f.history.is_empty());
        let f = fuse(&[], &[(0, Signal::TrackerLeft, 0)], Some(3), None);
        assert_eq!(f.history, [(0, ALL, Signal::TrackerLeft)]);
        let f = fuse(&[], &[(0, Signal::TrackerLeft, 15)], Some(3), Some((10, 25)));
        assert_eq!(f.history, [(0, 1, Signal::TrackerLeft)]);
        // A count from `left` stays a count at the limit: one byte left of
        // 2^32 + 9 one-byte pieces is 2^32 + 8 held, clamped to ALL - 1,
        // never read as have-all (ALL).
        let n = u64::from(ALL) + 10;
        let f = fuse(&[], &[(0, Signal::TrackerLeft, 1)], Some(n), Some((1, n)));
        assert_eq!(f.history, [(0, ALL - 1, Signal::TrackerLeft)]);
    }
}
