//! Rebuilds info dictionaries from ut_metadata (BEP 9) data messages seen in
//! either direction of any connection of a torrent. Sequential (the
//! pipeline feeds it the shards' pieces in frame order), so pieces of one
//! torrent carried by connections in different shards meet here.
//!
//! A dictionary is kept only when its SHA-1 equals the info hash (or, for a
//! v2 torrent, its SHA-256 truncated to the 20 bytes the wire carries);
//! otherwise it is counted (`metadata_hash_mismatch`) and dropped, and
//! assembly starts over from the next pieces seen.
//!
//! Bounds: a dictionary larger than `Limits::max_metadata_bytes` is refused
//! before anything is allocated; the dictionaries being assembled at once
//! hold at most `Limits::max_metadata_pending_bytes`, each charged
//! [`PENDING_OVERHEAD`] more than its size for its bookkeeping (beyond it a
//! new torrent's pieces are refused, counted); at
//! most `Limits::max_torrents` dictionaries, of at most
//! `Limits::max_metadata_kept_bytes` together, are rebuilt in a run (a peer
//! can make up valid ones: the info hash is whatever the dictionary hashes
//! to).

use std::collections::{BTreeMap, HashSet};

use sha1::{Digest, Sha1};
use sha2::Sha256;

use super::FrameCtx;
use crate::config::Limits;
use crate::proto::metainfo::{hex, parse_info, Metainfo};
use crate::proto::ut_metadata::{n_pieces, piece_len, METADATA_PIECE_LEN};
use crate::sink::{AnomalyRow, RowBatch, Ts};

/// What one torrent under assembly costs beyond its bytes (map entry,
/// piece flags), charged against `max_metadata_pending_bytes`.
pub const PENDING_OVERHEAD: usize = 256;

/// One metadata piece as a session saw it (copied out of the stream: a
/// data message is rare and at most 16 KiB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataPiece {
    pub ctx: FrameCtx,
    pub conn_id: u64,
    pub info_hash: [u8; 20],
    pub piece: u32,
    pub total_size: u32,
    pub data: Vec<u8>,
}

#[derive(Debug)]
struct Pending {
    total_size: u32,
    buf: Vec<u8>,
    have: Vec<bool>,
    n_have: u32,
}

/// A dictionary rebuilt and verified.
#[derive(Debug)]
pub struct Rebuilt {
    pub ctx: FrameCtx,
    pub meta: Metainfo,
    pub n_pieces: u32,
}

/// The assembler.
#[derive(Debug)]
pub struct MetadataAssembler {
    max_bytes: u32,
    max_pending_bytes: usize,
    max_done: usize,
    max_kept_bytes: usize,
    /// Bytes of the dictionaries rebuilt so far (kept for the run).
    kept_bytes: usize,
    pending: BTreeMap<[u8; 20], Pending>,
    pending_bytes: usize,
    done: HashSet<[u8; 20]>,
    /// Pieces seen (for the run summary and tests).
    pub n_pieces_seen: u64,
}

impl MetadataAssembler {
    pub fn new(limits: &Limits) -> Self {
        MetadataAssembler {
            max_bytes: limits.max_metadata_bytes,
            max_pending_bytes: limits.max_metadata_pending_bytes,
            max_done: limits.max_torrents,
            max_kept_bytes: limits.max_metadata_kept_bytes,
            kept_bytes: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            done: HashSet::new(),
            n_pieces_seen: 0,
        }
    }

    /// Marks a torrent whose metadata is already known (a .torrent): its
    /// pieces are not assembled.
    pub fn known(&mut self, h: [u8; 20]) {
        self.done.insert(h);
    }

    /// Adds one piece; returns the dictionary when this piece completes a
    /// verified one. Problems become anomaly rows in `rows`.
    pub fn add(&mut self, p: MetadataPiece, names: &[String], rows: &mut RowBatch) -> Option<Rebuilt> {
        self.n_pieces_seen += 1;
        if self.done.contains(&p.info_hash) {
            return None;
        }
        let anomaly = |rows: &mut RowBatch, kind: &str, detail: String| {
            rows.anomalies.push(AnomalyRow {
                ts: Some(Ts(p.ctx.ts)),
                frame: Some(p.ctx.frame),
                capture: names.get(p.ctx.capture as usize).cloned().unwrap_or_default(),
                conn_id: Some(p.conn_id),
                layer: "peer_wire",
                kind: kind.to_string(),
                detail: Some(detail),
            });
        };
        if p.total_size > self.max_bytes {
            anomaly(rows, "metadata_size_too_large", format!("total_size {}", p.total_size));
            return None;
        }
        let Some(want) = piece_len(p.piece, p.total_size) else {
            anomaly(rows, "ut_metadata_bad_piece", format!("piece {}", p.piece));
            return None;
        };
        if want as usize != p.data.len() {
            anomaly(
                rows,
                "ut_metadata_bad_piece",
                format!("piece {} length {}", p.piece, p.data.len()),
            );
            return None;
        }
        if let Some(q) = self.pending.get(&p.info_hash) {
            if q.total_size != p.total_size {
                // Two sizes for one torrent: one sender lies. Start over with
                // the newer one; a correct set still verifies by hash.
                anomaly(
                    rows,
                    "metadata_size_conflict",
                    format!("{} vs {}", q.total_size, p.total_size),
                );
                self.forget(&p.info_hash);
            }
        }
        if !self.pending.contains_key(&p.info_hash) {
            if self.done.len() >= self.max_done {
                anomaly(rows, "metadata_table_full", "max_torrents rebuilt".to_string());
                return None;
            }
            if self.kept_bytes.saturating_add(p.total_size as usize) > self.max_kept_bytes {
                anomaly(
                    rows,
                    "metadata_table_full",
                    format!("{} bytes rebuilt (max_metadata_kept_bytes)", self.kept_bytes),
                );
                return None;
            }
            let size = p.total_size as usize + PENDING_OVERHEAD;
            if self.pending_bytes + size > self.max_pending_bytes {
                anomaly(rows, "metadata_pending_full", format!("{} bytes refused", size));
                return None;
            }
            self.pending_bytes += size;
            let n = n_pieces(p.total_size) as usize;
            self.pending.insert(
                p.info_hash,
                Pending {
                    total_size: p.total_size,
                    buf: vec![0; p.total_size as usize],
                    have: vec![false; n],
                    n_have: 0,
                },
            );
        }
        let q = self.pending.get_mut(&p.info_hash)?;
        let i = p.piece as usize;
        if q.have.get(i) == Some(&false) {
            let start = i * METADATA_PIECE_LEN as usize;
            if let Some(dst) = q.buf.get_mut(start..start + p.data.len()) {
                dst.copy_from_slice(&p.data);
                q.have[i] = true;
                q.n_have += 1;
            }
        }
        if q.n_have as usize != q.have.len() {
            return None;
        }
        let q = self.forget(&p.info_hash)?;
        let h1: [u8; 20] = Sha1::digest(&q.buf).into();
        let h2 = Sha256::digest(&q.buf);
        if h1 != p.info_hash && h2.get(..20) != Some(&p.info_hash[..]) {
            anomaly(
                rows,
                "metadata_hash_mismatch",
                format!("{} bytes hash to {}", q.buf.len(), hex(&h1)),
            );
            return None;
        }
        match parse_info(&q.buf) {
            Ok(meta) => {
                self.done.insert(p.info_hash);
                self.kept_bytes += q.buf.len();
                Some(Rebuilt {
                    ctx: p.ctx,
                    meta,
                    n_pieces: q.have.len() as u32,
                })
            }
            Err(e) => {
                // The hash matched, so this is what the torrent's creator
                // made; nothing better will come.
                self.done.insert(p.info_hash);
                anomaly(rows, "metadata_unparsable", e.0);
                None
            }
        }
    }

    fn forget(&mut self, h: &[u8; 20]) -> Option<Pending> {
        let q = self.pending.remove(h)?;
        self.pending_bytes -= q.total_size as usize + PENDING_OVERHEAD;
        Some(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_dict(n_pieces: usize, name_len: usize) -> Vec<u8> {
        let name = "n".repeat(name_len);
        let mut v = format!(
            "d6:lengthi{}e4:name{}:{}12:piece lengthi16384e6:pieces{}:",
            n_pieces * 16384,
            name.len(),
            name,
            n_pieces * 20
        )
        .into_bytes();
        v.extend((0..n_pieces * 20).map(|i| i as u8));
        v.push(b'e');
        v
    }

    fn pieces_of(h: [u8; 20], d: &[u8]) -> Vec<MetadataPiece> {
        d.chunks(16384)
            .enumerate()
            .map(|(i, c)| MetadataPiece {
                ctx: FrameCtx {
                    ts: i as i64,
                    frame: i as u64 + 1,
                    capture: 0,
                },
                conn_id: 1,
                info_hash: h,
                piece: i as u32,
                total_size: d.len() as u32,
                data: c.to_vec(),
            })
            .collect()
    }

    #[test]
    fn rebuilds_out_of_order_and_verifies() {
        let d = info_dict(1000, 30000);
        assert!(d.len() > 2 * 16384);
        let h: [u8; 20] = Sha1::digest(&d).into();
        let mut a = MetadataAssembler::new(&Limits::default());
        let mut rows = RowBatch::default();
        let mut ps = pieces_of(h, &d);
        ps.reverse();
        let dup = ps[0].clone();
        let mut got = None;
        for p in ps {
            if let Some(r) = a.add(p, &[], &mut rows) {
                got = Some(r);
            }
        }
        let r = got.expect("rebuilt");
        assert_eq!(r.meta.n_pieces, 1000);
        assert_eq!(r.meta.name.len(), 30000);
        assert_eq!(r.meta.info_hash_v1, Some(h));
        assert!(rows.anomalies.is_empty());
        // Once done, more pieces are ignored.
        assert!(a.add(dup, &[], &mut rows).is_none());
        assert_eq!(a.pending_bytes, 0);
    }

    #[test]
    fn wrong_hash_huge_size_and_conflicts_are_counted() {
        let d = info_dict(10, 5);
        let mut a = MetadataAssembler::new(&Limits::default());
        let mut rows = RowBatch::default();
        for p in pieces_of([9; 20], &d) {
            assert!(a.add(p, &[], &mut rows).is_none());
        }
        assert_eq!(rows.anomalies[0].kind, "metadata_hash_mismatch");
        // metadata_size 2^31: refused before any allocation.
        let mut p = pieces_of([8; 20], &d).remove(0);
        p.total_size = 1 << 31;
        assert!(a.add(p, &[], &mut rows).is_none());
        assert_eq!(rows.anomalies[1].kind, "metadata_size_too_large");
        assert_eq!(a.pending_bytes, 0);
        // A piece whose length does not fit its size.
        let mut p = pieces_of([8; 20], &d).remove(0);
        p.data.push(0);
        assert!(a.add(p, &[], &mut rows).is_none());
        assert_eq!(rows.anomalies[2].kind, "ut_metadata_bad_piece");
        // Pending bytes are bounded across torrents.
        let limits = Limits {
            max_metadata_pending_bytes: 40_000,
            ..Limits::default()
        };
        let big = info_dict(100, 20_000);
        let mut a = MetadataAssembler::new(&limits);
        let first = pieces_of([1; 20], &big).remove(0);
        let second = pieces_of([2; 20], &big).remove(0);
        assert!(a.add(first, &[], &mut rows).is_none());
        assert!(a.add(second, &[], &mut rows).is_none());
        assert_eq!(
            rows.anomalies.last().map(|r| r.kind.as_str()),
            Some("metadata_pending_full")
        );
        assert!(a.pending_bytes <= 40_000);
        // A flood of first pieces under distinct hashes (a dictionary of one
        // piece completes at once, so pending ones have two or more): the
        // pending bytes stay bounded.
        let mut a = MetadataAssembler::new(&limits);
        let mut rows = RowBatch::default();
        for i in 0..1000u32 {
            let mut h = [0u8; 20];
            h[..4].copy_from_slice(&i.to_be_bytes());
            let mut p = pieces_of(h, b"x").remove(0);
            p.total_size = 16385;
            p.data = vec![b'x'; 16384];
            let _ = a.add(p, &[], &mut rows);
        }
        assert_eq!(a.pending.len(), 40_000 / (16385 + PENDING_OVERHEAD));
        assert!(a.pending_bytes <= 40_000);
        assert!(rows.anomalies.iter().any(|r| r.kind == "metadata_pending_full"));
    }

    #[test]
    fn rebuilt_dictionaries_are_bounded_in_bytes() {
        // Made-up dictionaries, each valid for the hash it claims: only
        // max_metadata_kept_bytes of them are kept.
        let dicts: Vec<Vec<u8>> = (1..=5).map(|i| info_dict(10, 1000 + i)).collect();
        let size = dicts[0].len();
        let limits = Limits {
            max_metadata_kept_bytes: 3 * size + 10,
            ..Limits::default()
        };
        let mut a = MetadataAssembler::new(&limits);
        let mut rows = RowBatch::default();
        let mut rebuilt = 0;
        for d in &dicts {
            let h: [u8; 20] = Sha1::digest(d).into();
            for p in pieces_of(h, d) {
                rebuilt += usize::from(a.add(p, &[], &mut rows).is_some());
            }
        }
        assert_eq!(rebuilt, 3);
        let kinds: Vec<_> = rows.anomalies.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["metadata_table_full", "metadata_table_full"]);
        assert_eq!(a.pending_bytes, 0);
    }
}
