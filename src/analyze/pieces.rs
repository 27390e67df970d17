//! Piece verification: where a whole piece passes on one connection from
//! one sender and its SHA-1 is known (a .torrent given with --torrents, or
//! metadata rebuilt from ut_metadata), hash the blocks as they pass and say
//! whether the piece matches (`pieces` table). A corrupt or poisoned piece
//! shows as `verified = false`.
//!
//! Blocks of a piece usually arrive in order (clients request them in
//! order and peers answer in order), so the hash is fed incrementally and
//! nothing is held. A block that arrives ahead of its predecessors is
//! copied aside, within two bounds (`Limits::max_piece_buffer_per_direction`
//! and the shard's share of `Limits::max_piece_buffer_total`); a piece whose
//! out-of-order bytes exceed them is given up and counted. A gap inside a
//! piece's bytes makes it unverifiable: it is dropped silently (the gap is
//! already counted by the reassembler). Only `Limits::max_pieces_in_progress`
//! pieces are followed per direction; a sender interleaving more pieces
//! than that loses the oldest (counted).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sha1::{Digest, Sha1};

use crate::proto::metainfo::Metainfo;

/// Torrents whose piece hashes are known, by the info hash the wire
/// carries. Read-only for the shards; the pipeline replaces it (a new
/// `Arc`) between steps when metadata is rebuilt.
///
/// Each torrent is known from a (capture, frame) on: a .torrent from the
/// start, rebuilt metadata from `Limits::metadata_join_frames` frames after
/// the one that completed it. The shards see a new dictionary only at the
/// next step, and steps span fewer frames than that, so what a packet
/// sees does not depend on where steps end.
#[derive(Debug, Default, Clone)]
pub struct KnownTorrents {
    by_hash: HashMap<[u8; 20], KnownFrom>,
}

/// A dictionary and the (capture, frame) from which the shards may use it.
type KnownFrom = (Arc<Metainfo>, (u32, u64));

impl KnownTorrents {
    /// Known from the start of the run.
    pub fn insert(&mut self, m: Arc<Metainfo>) {
        self.insert_from(m, (0, 0));
    }

    /// Known to packets at or after `(capture, frame)`.
    pub fn insert_from(&mut self, m: Arc<Metainfo>, from: (u32, u64)) {
        for h in m.wire_hashes() {
            self.by_hash.insert(h, (m.clone(), from));
        }
    }

    /// The torrent, as a packet at `at` (capture, frame) sees it.
    pub fn get(&self, h: &[u8; 20], at: (u32, u64)) -> Option<&Arc<Metainfo>> {
        self.by_hash.get(h).filter(|e| at >= e.1).map(|e| &e.0)
    }

    /// Whether a packet at `at` sees the torrent.
    pub fn contains(&self, h: &[u8; 20], at: (u32, u64)) -> bool {
        self.get(h, at).is_some()
    }

    /// Whether the torrent is known at all (to some later packet).
    pub fn has(&self, h: &[u8; 20]) -> bool {
        self.by_hash.contains_key(h)
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// What one run of bytes held aside costs beyond its bytes (map node, `Vec`
/// header, allocator rounding), charged against both bounds: without it a
/// sender of one-byte blocks at every other offset would hold ~50 times the
/// configured bytes in bookkeeping.
pub const AHEAD_ENTRY_OVERHEAD: usize = 64;

/// Out-of-order bytes held by all the connections of one shard.
#[derive(Debug, Clone, Copy, Default)]
pub struct PieceBudget {
    pub used: usize,
    pub max: usize,
}

/// A piece that passed whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceResult {
    pub piece: u32,
    pub bytes: u64,
    pub verified: bool,
}

/// Bounds for one direction (from `Limits`).
#[derive(Debug, Clone, Copy)]
pub struct CheckLimits {
    pub max_in_progress: usize,
    pub max_buffered: usize,
}

#[derive(Debug, Clone)]
struct InProgress {
    piece: u32,
    len: u64,
    /// Bytes hashed so far: the piece's prefix [0, next).
    next: u64,
    hasher: Sha1,
    /// Bytes that arrived ahead of `next`, by offset in the piece.
    ahead: BTreeMap<u64, Vec<u8>>,
    /// What `ahead` is charged: its bytes plus [`AHEAD_ENTRY_OVERHEAD`] per
    /// entry.
    ahead_bytes: usize,
}

/// The block being received: which piece, at which offset the next byte
/// lands, and where the block ends.
#[derive(Debug, Clone, Copy)]
struct Block {
    piece: u32,
    at: u64,
    end: u64,
}

/// Verification state of one direction of one connection.
#[derive(Debug, Clone)]
pub struct PieceChecker {
    meta: Arc<Metainfo>,
    limits: CheckLimits,
    pieces: Vec<InProgress>,
    block: Option<Block>,
    buffered: usize,
}

/// Length of piece `i` of a v1 torrent, when it exists.
pub fn piece_len(m: &Metainfo, i: u32) -> Option<u64> {
    if i >= m.n_pieces || m.piece_hashes.len() != m.n_pieces as usize || m.piece_length == 0 {
        return None;
    }
    let start = u64::from(i).checked_mul(m.piece_length)?;
    let left = m.total_bytes.checked_sub(start)?;
    (left > 0).then_some(left.min(m.piece_length))
}

impl PieceChecker {
    pub fn new(meta: Arc<Metainfo>, limits: CheckLimits) -> Self {
        PieceChecker {
            meta,
            limits,
            pieces: Vec::new(),
            block: None,
            buffered: 0,
        }
    }

    /// The torrent this checker verifies against.
    pub fn meta(&self) -> &Arc<Metainfo> {
        &self.meta
    }

    /// Bytes this checker holds aside.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Heap bytes beyond its own size: the pieces in progress and the
    /// blocks held aside (a flow's memory account).
    pub fn heap_bytes(&self) -> usize {
        crate::flow::alloc_bytes(self.pieces.capacity() * std::mem::size_of::<InProgress>()) + self.buffered
    }

    /// A piece message header: the next `length` bytes are piece `piece`
    /// from offset `begin`. Returns an anomaly kind when the block cannot
    /// belong to the piece or a piece had to be dropped for room.
    pub fn start_block(
        &mut self,
        piece: u32,
        begin: u32,
        length: u32,
        budget: &mut PieceBudget,
    ) -> Option<&'static str> {
        self.block = None;
        let Some(len) = piece_len(&self.meta, piece) else {
            return Some("piece_index_out_of_range");
        };
        let end = u64::from(begin) + u64::from(length);
        if end > len {
            self.drop_piece(piece, budget);
            return Some("block_outside_piece");
        }
        let mut anomaly = None;
        if !self.pieces.iter().any(|p| p.piece == piece) {
            if self.pieces.len() >= self.limits.max_in_progress.max(1) {
                // The piece begun longest ago is the least likely to finish.
                let oldest = self.pieces.remove(0);
                self.release(&oldest, budget);
                anomaly = Some("piece_check_too_many_in_progress");
            }
            self.pieces.push(InProgress {
                piece,
                len,
                next: 0,
                hasher: Sha1::new(),
                ahead: BTreeMap::new(),
                ahead_bytes: 0,
            });
        }
        self.block = Some(Block {
            piece,
            at: u64::from(begin),
            end,
        });
        anomaly
    }

    /// Bytes of the current block. Returns the piece's result when these
    /// bytes complete it, and an anomaly kind when a bound was hit.
    pub fn data(&mut self, d: &[u8], budget: &mut PieceBudget) -> (Option<PieceResult>, Option<&'static str>) {
        let Some(b) = self.block else {
            return (None, None);
        };
        let at = b.at;
        let n = (d.len() as u64).min(b.end.saturating_sub(at));
        let d = d.get(..n as usize).unwrap_or_default();
        self.block = Some(Block { at: at + n, ..b });
        let Some(idx) = self.pieces.iter().position(|p| p.piece == b.piece) else {
            return (None, None);
        };
        let p = &mut self.pieces[idx];
        if at <= p.next {
            // In order (or overlapping what was hashed: only the new tail).
            let skip = (p.next - at).min(n) as usize;
            let tail = d.get(skip..).unwrap_or_default();
            p.hasher.update(tail);
            p.next += tail.len() as u64;
            self.drain_ahead(idx, budget);
        } else {
            // Bytes that continue a held run extend it; a run already held
            // at this offset keeps the longer bytes; otherwise a new run.
            let extends = p
                .ahead
                .range(..at)
                .next_back()
                .is_some_and(|(off, v)| *off + v.len() as u64 == at);
            let same = p.ahead.get(&at).map(Vec::len);
            let cost = match (extends, same) {
                (true, _) => d.len(),
                (false, Some(have)) => d.len().saturating_sub(have),
                (false, None) => d.len() + AHEAD_ENTRY_OVERHEAD,
            };
            let room_here = self.limits.max_buffered.saturating_sub(self.buffered);
            let room_shard = budget.max.saturating_sub(budget.used);
            if cost > room_here.min(room_shard) {
                self.drop_piece(b.piece, budget);
                self.block = None;
                return (None, Some("piece_check_buffer_full"));
            }
            if extends {
                if let Some((_, v)) = p.ahead.range_mut(..at).next_back() {
                    v.extend_from_slice(d);
                }
            } else if cost > 0 {
                p.ahead.insert(at, d.to_vec());
            }
            p.ahead_bytes += cost;
            self.buffered += cost;
            budget.used += cost;
        }
        let Some(idx) = self.pieces.iter().position(|p| p.piece == b.piece) else {
            return (None, None);
        };
        let done = self.pieces[idx].next >= self.pieces[idx].len;
        if !done {
            return (None, None);
        }
        let p = self.pieces.remove(idx);
        self.release(&p, budget);
        let digest: [u8; 20] = p.hasher.finalize().into();
        let verified = self.meta.piece_hashes.get(p.piece as usize) == Some(&digest);
        (
            Some(PieceResult {
                piece: p.piece,
                bytes: p.len,
                verified,
            }),
            None,
        )
    }

    /// Bytes of the current block lost in a gap: its piece cannot be
    /// verified any more.
    pub fn gap(&mut self, budget: &mut PieceBudget) {
        if let Some(b) = self.block.take() {
            self.drop_piece(b.piece, budget);
        }
    }

    /// Returns every held byte to the shard's budget (connection end).
    pub fn clear(&mut self, budget: &mut PieceBudget) {
        let pieces = std::mem::take(&mut self.pieces);
        for p in &pieces {
            self.release(p, budget);
        }
        self.block = None;
    }

    fn drain_ahead(&mut self, idx: usize, budget: &mut PieceBudget) {
        let p = &mut self.pieces[idx];
        let mut freed = 0usize;
        // Runs are ordered by offset: take them from the front while they
        // touch the hashed prefix (each run is visited once).
        while let Some(e) = p.ahead.first_entry() {
            if *e.key() > p.next {
                break;
            }
            let (off, v) = e.remove_entry();
            let skip = (p.next - off).min(v.len() as u64) as usize;
            let tail = v.get(skip..).unwrap_or_default();
            p.hasher.update(tail);
            p.next += tail.len() as u64;
            freed += v.len() + AHEAD_ENTRY_OVERHEAD;
        }
        let freed = freed.min(p.ahead_bytes);
        p.ahead_bytes -= freed;
        self.buffered = self.buffered.saturating_sub(freed);
        budget.used = budget.used.saturating_sub(freed);
    }

    fn drop_piece(&mut self, piece: u32, budget: &mut PieceBudget) {
        if let Some(i) = self.pieces.iter().position(|p| p.piece == piece) {
            let p = self.pieces.remove(i);
            self.release(&p, budget);
        }
    }

    fn release(&mut self, p: &InProgress, budget: &mut PieceBudget) {
        self.buffered = self.buffered.saturating_sub(p.ahead_bytes);
        budget.used = budget.used.saturating_sub(p.ahead_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A .torrent is known to every packet; rebuilt metadata to packets at
    /// or after the (capture, frame) it was inserted from, in that capture
    /// and every later one.
    #[test]
    fn known_torrents_are_seen_from_their_frame_on() {
        let m = meta(&[7u8; 100], 50);
        let h = [1u8; 20];
        let mut k = KnownTorrents::default();
        k.insert_from(m.clone(), (1, 2048 + 37));
        assert!(k.has(&h));
        for (at, seen) in [
            ((0, u64::MAX), false),
            ((1, 0), false),
            ((1, 2048 + 36), false),
            ((1, 2048 + 37), true),
            ((1, 2048 + 38), true),
            ((2, 0), true),
        ] {
            assert_eq!(k.contains(&h, at), seen, "{at:?}");
            assert_eq!(k.get(&h, at).is_some(), seen, "{at:?}");
        }
        let mut t = KnownTorrents::default();
        t.insert(m);
        assert!(t.contains(&h, (0, 0)));
        assert!(!t.contains(&[2; 20], (5, 5)));
    }

    /// Piece lengths of v1 torrents by construction: 3 pieces of 10 in 25
    /// bytes (the last 5), 3 in exactly 30, and shapes that name no length:
    /// past the last piece, hashes not one per piece, piece length 0, and a
    /// piece count past the bytes (4 pieces of 10 in 30: the fourth starts
    /// at the end, 0 bytes: none).
    #[test]
    fn piece_len_of_each_piece_and_of_no_piece() {
        let m = |n: u32, plen: u64, total: u64, hashes: usize| Metainfo {
            info_hash_v1: Some([1; 20]),
            info_hash_v2: None,
            name: "t".into(),
            piece_length: plen,
            n_pieces: n,
            total_bytes: total,
            files: Vec::new(),
            private: false,
            trackers: Vec::new(),
            piece_hashes: vec![[0; 20]; hashes],
        };
        let short = m(3, 10, 25, 3);
        let lens: Vec<_> = (0..5).map(|i| piece_len(&short, i)).collect();
        assert_eq!(lens, [Some(10), Some(10), Some(5), None, None]);
        let exact = m(3, 10, 30, 3);
        assert_eq!(piece_len(&exact, 2), Some(10));
        assert_eq!(piece_len(&m(3, 10, 25, 2), 0), None, "2 hashes for 3 pieces");
        assert_eq!(piece_len(&m(3, 10, 25, 4), 0), None, "4 hashes for 3 pieces");
        assert_eq!(piece_len(&m(3, 0, 25, 3), 0), None, "piece length 0");
        let long = m(4, 10, 30, 4);
        assert_eq!(piece_len(&long, 2), Some(10));
        assert_eq!(piece_len(&long, 3), None, "starts at the end");
        assert_eq!(piece_len(&m(5, 10, 30, 5), 4), None, "starts past the end");
        assert_eq!(piece_len(&m(2, u64::MAX, u64::MAX, 2), 1), None, "start overflows");
    }

    fn meta(data: &[u8], piece_length: u64) -> Arc<Metainfo> {
        let hashes: Vec<[u8; 20]> = data
            .chunks(piece_length as usize)
            .map(|c| Sha1::digest(c).into())
            .collect();
        Arc::new(Metainfo {
            info_hash_v1: Some([1; 20]),
            info_hash_v2: None,
            name: "t".into(),
            piece_length,
            n_pieces: hashes.len() as u32,
            total_bytes: data.len() as u64,
            files: Vec::new(),
            private: false,
            trackers: Vec::new(),
            piece_hashes: hashes,
        })
    }

    const LIM: CheckLimits = CheckLimits {
        max_in_progress: 4,
        max_buffered: 1 << 20,
    };

    fn budget() -> PieceBudget {
        PieceBudget { used: 0, max: 1 << 20 }
    }

    /// Sends blocks (piece, begin, len) of `data`, each cut in `cut`-byte
    /// chunks; returns results.
    fn send(
        c: &mut PieceChecker,
        data: &[u8],
        pl: usize,
        blocks: &[(u32, u32, u32)],
        cut: usize,
        b: &mut PieceBudget,
    ) -> Vec<PieceResult> {
        let mut out = Vec::new();
        for &(piece, begin, len) in blocks {
            c.start_block(piece, begin, len, b);
            let s = piece as usize * pl + begin as usize;
            for ch in data[s..s + len as usize].chunks(cut.max(1)) {
                if let (Some(r), _) = c.data(ch, b) {
                    out.push(r);
                }
            }
        }
        out
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn in_order_out_of_order_and_last_piece() {
        let data = payload(2 * 32768 + 5000);
        let m = meta(&data, 32768);
        let mut b = budget();
        let mut c = PieceChecker::new(m, LIM);
        // Piece 0 in order, piece 1 with its blocks swapped, last piece short.
        let blocks = [
            (0, 0, 16384),
            (0, 16384, 16384),
            (1, 16384, 16384),
            (1, 0, 16384),
            (2, 0, 5000),
        ];
        for cut in [1, 1000, 1448, 16384] {
            let r = send(&mut c, &data, 32768, &blocks, cut, &mut b);
            let got: Vec<_> = r.iter().map(|r| (r.piece, r.bytes, r.verified)).collect();
            assert_eq!(got, [(0, 32768, true), (1, 32768, true), (2, 5000, true)], "cut {cut}");
            assert_eq!(b.used, 0);
            assert_eq!(c.buffered(), 0);
        }
    }

    #[test]
    fn corrupt_byte_fails_only_its_piece() {
        let data = payload(3 * 16384);
        let m = meta(&data, 16384);
        let mut bad = data.clone();
        bad[16384 + 77] ^= 0x40;
        let mut b = budget();
        let mut c = PieceChecker::new(m, LIM);
        let r = send(
            &mut c,
            &bad,
            16384,
            &[(0, 0, 16384), (1, 0, 16384), (2, 0, 16384)],
            1448,
            &mut b,
        );
        let got: Vec<_> = r.iter().map(|r| (r.piece, r.verified)).collect();
        assert_eq!(got, [(0, true), (1, false), (2, true)]);
    }

    #[test]
    fn gaps_bounds_and_hostile_headers() {
        let data = payload(4 * 16384);
        let m = meta(&data, 16384);
        let mut b = budget();
        let mut c = PieceChecker::new(m.clone(), LIM);
        // A gap inside piece 0 drops it; piece 1 still verifies.
        c.start_block(0, 0, 16384, &mut b);
        let _ = c.data(&data[..100], &mut b);
        c.gap(&mut b);
        let r = send(&mut c, &data, 16384, &[(1, 0, 16384)], 1448, &mut b);
        assert_eq!(r.len(), 1);
        assert_eq!(c.pieces.len(), 0);
        // Out-of-range piece and a block past the piece end.
        assert_eq!(c.start_block(99, 0, 10, &mut b), Some("piece_index_out_of_range"));
        assert_eq!(c.start_block(0, 16000, 1000, &mut b), Some("block_outside_piece"));
        assert_eq!(c.data(&[0; 10], &mut b), (None, None));
        // Out-of-order bytes beyond the direction's bound give the piece up.
        let small = CheckLimits {
            max_in_progress: 2,
            max_buffered: 1000,
        };
        let mut c = PieceChecker::new(m.clone(), small);
        c.start_block(0, 8192, 8192, &mut b);
        let (_, a) = c.data(&data[8192..16384], &mut b);
        assert_eq!(a, Some("piece_check_buffer_full"));
        assert_eq!((b.used, c.buffered()), (0, 0));
        // Too many pieces in progress: the oldest goes, its bytes returned.
        c.start_block(0, 8192, 500, &mut b);
        let _ = c.data(&data[8192..8692], &mut b);
        assert_eq!(b.used, 500 + AHEAD_ENTRY_OVERHEAD);
        c.start_block(1, 0, 10, &mut b);
        assert_eq!(
            c.start_block(2, 0, 10, &mut b),
            Some("piece_check_too_many_in_progress")
        );
        assert_eq!(b.used, 0);
        // The shard-wide budget binds too.
        let mut tight = PieceBudget { used: 0, max: 10 };
        let mut c = PieceChecker::new(m, LIM);
        c.start_block(0, 100, 100, &mut tight);
        assert_eq!(c.data(&data[100..200], &mut tight).1, Some("piece_check_buffer_full"));
        c.clear(&mut tight);
        assert_eq!(tight.used, 0);
    }

    #[test]
    fn held_slivers_are_charged_their_bookkeeping() {
        // One-byte blocks at every other offset: each is a run of its own.
        let data = payload(4 * 16384);
        let m = meta(&data, 65536);
        let lim = CheckLimits {
            max_in_progress: 4,
            max_buffered: 64 * 1024,
        };
        let mut b = PieceBudget {
            used: 0,
            max: usize::MAX,
        };
        let mut c = PieceChecker::new(m.clone(), lim);
        let mut held = 0usize;
        let mut full = false;
        for off in (2..65536u32).step_by(2) {
            c.start_block(0, off, 1, &mut b);
            match c.data(&data[off as usize..off as usize + 1], &mut b) {
                (_, Some("piece_check_buffer_full")) => {
                    full = true;
                    break;
                }
                _ => held += 1,
            }
        }
        assert!(full, "32767 one-byte runs held under a 64 KiB bound");
        assert_eq!(held, 64 * 1024 / (1 + AHEAD_ENTRY_OVERHEAD));
        assert_eq!((b.used, c.buffered()), (0, 0));
        // With room, the same slivers and then the bytes between them, in
        // order, still verify the piece, and every held byte is returned.
        let lim = CheckLimits {
            max_in_progress: 4,
            max_buffered: 8 << 20,
        };
        let mut c = PieceChecker::new(m, lim);
        for off in (1..65536u32).step_by(2) {
            c.start_block(0, off, 1, &mut b);
            assert_eq!(c.data(&data[off as usize..off as usize + 1], &mut b), (None, None));
        }
        assert_eq!(b.used, 32768 * (1 + AHEAD_ENTRY_OVERHEAD));
        let mut got = Vec::new();
        for off in (0..65536u32).step_by(2) {
            c.start_block(0, off, 1, &mut b);
            if let (Some(r), _) = c.data(&data[off as usize..off as usize + 1], &mut b) {
                got.push((r.piece, r.bytes, r.verified));
            }
        }
        assert_eq!(got, [(0, 65536, true)]);
        assert_eq!((b.used, c.buffered()), (0, 0));
    }
}
