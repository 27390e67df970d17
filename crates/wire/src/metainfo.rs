//! Metainfo (.torrent) files and info dictionaries: BEP 3 (v1), BEP 52 (v2
//! and hybrid), BEP 12 announce-list, BEP 27 private flag.
//!
//! The info_hash is the SHA-1 (v1) or SHA-256 (v2) of the info dictionary's
//! exact bytes, so the dictionary is located with our zero-copy bencode
//! reader (which also bounds nesting before `serde_bencode`, which has no
//! depth limit, sees the data). Typed fields of v1 info dictionaries are then
//! decoded with `serde_bencode`; the v2 `file tree` is walked iteratively.

use serde::Deserialize;
use sha1::{Digest, Sha1};
use sha2::Sha256;

use super::bencode::{self, BencodeLimits, Dict};

/// A torrent's identity and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    pub info_hash_v1: Option<[u8; 20]>,
    pub info_hash_v2: Option<[u8; 32]>,
    pub name: String,
    pub piece_length: u64,
    pub n_pieces: u32,
    pub total_bytes: u64,
    pub files: Vec<FileEntry>,
    pub private: bool,
    pub trackers: Vec<String>,
    /// v1 piece hashes (20 bytes each), for piece verification.
    pub piece_hashes: Vec<[u8; 20]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub length: u64,
}

#[derive(Debug)]
pub struct MetainfoError(pub String);

impl std::fmt::Display for MetainfoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MetainfoError {}

fn err(s: impl Into<String>) -> MetainfoError {
    MetainfoError(s.into())
}

/// Limits for metainfo parsing. A .torrent is a local file the user chose,
/// but ut_metadata delivers info dictionaries from the wire.
const LIMITS: BencodeLimits = BencodeLimits {
    max_depth: 64,
    // Millions of files are possible in real torrents; a few million items
    // bound the work.
    max_items: 1 << 23,
};
/// Most files listed (each costs a String); beyond it files are summed only.
pub const MAX_FILES_LISTED: usize = 100_000;

#[derive(Deserialize)]
struct V1File {
    length: u64,
    #[serde(default)]
    path: Vec<serde_bytes::ByteBuf>,
}

#[derive(Deserialize)]
struct V1Info {
    #[serde(default)]
    name: Option<serde_bytes::ByteBuf>,
    #[serde(rename = "piece length")]
    piece_length: u64,
    #[serde(default)]
    pieces: Option<serde_bytes::ByteBuf>,
    #[serde(default)]
    length: Option<u64>,
    #[serde(default)]
    files: Option<Vec<V1File>>,
    #[serde(default)]
    private: Option<i64>,
}

/// Parses a whole .torrent file.
pub fn parse_torrent(buf: &[u8]) -> Result<Metainfo, MetainfoError> {
    let top = bencode::parse_dict_exact(buf, &LIMITS)
        .or_else(|_| bencode::parse_dict(buf, &LIMITS).map(|(d, _)| d))
        .map_err(|e| err(format!("not a bencoded dictionary ({})", e.kind())))?;
    let info_raw = top.get_raw(b"info").ok_or_else(|| err("no info dictionary"))?;
    let mut m = parse_info(info_raw)?;
    let mut trackers = Vec::new();
    if let Some(a) = top.get_bytes(b"announce") {
        trackers.push(String::from_utf8_lossy(a).into_owned());
    }
    if let Some(tiers) = top.get_list(b"announce-list") {
        for tier in tiers.iter() {
            if let Some(l) = tier.as_list() {
                for t in l.iter().filter_map(|v| v.as_bytes()) {
                    let t = String::from_utf8_lossy(t).into_owned();
                    if !trackers.contains(&t) {
                        trackers.push(t);
                    }
                }
            }
        }
    }
    m.trackers = trackers;
    Ok(m)
}

/// Parses an info dictionary given its exact bytes (from a .torrent or
/// assembled from ut_metadata pieces).
pub fn parse_info(info_raw: &[u8]) -> Result<Metainfo, MetainfoError> {
    let info = bencode::parse_dict_exact(info_raw, &LIMITS)
        .map_err(|e| err(format!("info is not a bencoded dictionary ({})", e.kind())))?;
    let version = info.get_int(b"meta version").unwrap_or(1);
    let has_v1 = info.get(b"pieces").is_some();
    let has_v2 = version == 2 && info.get(b"file tree").is_some();
    if !has_v1 && !has_v2 {
        return Err(err("info dictionary has neither pieces nor a v2 file tree"));
    }
    let name = info
        .get_bytes(b"name")
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .unwrap_or_default();
    let piece_length = info
        .get_int(b"piece length")
        .filter(|&p| p > 0)
        .ok_or_else(|| err("missing or bad piece length"))? as u64;
    let private = info.get_int(b"private") == Some(1);
    let mut m = Metainfo {
        info_hash_v1: None,
        info_hash_v2: None,
        name,
        piece_length,
        n_pieces: 0,
        total_bytes: 0,
        files: Vec::new(),
        private,
        trackers: Vec::new(),
        piece_hashes: Vec::new(),
    };
    if has_v1 {
        let v1: V1Info = serde_bencode::from_bytes(info_raw).map_err(|e| err(format!("info: {e}")))?;
        m.info_hash_v1 = Some(Sha1::digest(info_raw).into());
        let pieces = v1.pieces.map(|p| p.into_vec()).unwrap_or_default();
        if !pieces.len().is_multiple_of(20) {
            return Err(err("pieces length is not a multiple of 20"));
        }
        m.piece_hashes = pieces
            .chunks_exact(20)
            .map(|c| {
                let mut h = [0u8; 20];
                h.copy_from_slice(c);
                h
            })
            .collect();
        m.n_pieces = m.piece_hashes.len() as u32;
        if let Some(files) = v1.files {
            for f in files {
                m.total_bytes = m.total_bytes.saturating_add(f.length);
                if m.files.len() < MAX_FILES_LISTED {
                    let parts: Vec<String> = f.path.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
                    m.files.push(FileEntry {
                        path: parts.join("/"),
                        length: f.length,
                    });
                }
            }
        } else {
            m.total_bytes = v1.length.unwrap_or(0);
            m.files.push(FileEntry {
                path: v1
                    .name
                    .map(|n| String::from_utf8_lossy(&n).into_owned())
                    .unwrap_or_default(),
                length: m.total_bytes,
            });
        }
        let _ = (v1.piece_length, v1.private);
    }
    if has_v2 {
        m.info_hash_v2 = Some(Sha256::digest(info_raw).into());
        if let Some(tree) = info.get_dict(b"file tree") {
            let (files, n_pieces_v2, total) = walk_file_tree(tree, piece_length);
            if !has_v1 {
                m.files = files;
                m.total_bytes = total;
                m.n_pieces = n_pieces_v2;
            }
        }
    }
    Ok(m)
}

/// Walks a BEP 52 file tree without recursion: returns files, the v2 piece
/// count (pieces are per file) and the total length.
fn walk_file_tree(tree: Dict<'_>, piece_length: u64) -> (Vec<FileEntry>, u32, u64) {
    let mut files = Vec::new();
    let mut n_pieces: u64 = 0;
    let mut total: u64 = 0;
    let mut stack: Vec<(String, Dict<'_>)> = vec![(String::new(), tree)];
    while let Some((prefix, d)) = stack.pop() {
        for (k, v) in d.iter() {
            let Some(sub) = v.as_dict() else { continue };
            if k.is_empty() {
                // "" key: the file's properties.
                let len = sub.get_int(b"length").unwrap_or(0).max(0) as u64;
                total = total.saturating_add(len);
                n_pieces = n_pieces.saturating_add(len.div_ceil(piece_length));
                if files.len() < MAX_FILES_LISTED {
                    files.push(FileEntry {
                        path: prefix.clone(),
                        length: len,
                    });
                }
            } else {
                let name = String::from_utf8_lossy(k);
                let path = if prefix.is_empty() {
                    name.into_owned()
                } else {
                    format!("{prefix}/{name}")
                };
                stack.push((path, sub));
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    (files, n_pieces.min(u64::from(u32::MAX)) as u32, total)
}

impl Metainfo {
    /// The 20-byte hashes this torrent goes by on the wire: the v1 hash and
    /// the v2 hash truncated to 20 bytes (BEP 52 handshakes, trackers, DHT).
    pub fn wire_hashes(&self) -> Vec<[u8; 20]> {
        let mut v = Vec::new();
        if let Some(h) = self.info_hash_v1 {
            v.push(h);
        }
        if let Some(h2) = self.info_hash_v2 {
            let mut t = [0u8; 20];
            t.copy_from_slice(&h2[..20]);
            v.push(t);
        }
        v
    }
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[usize::from(x >> 4)] as char);
        s.push(D[usize::from(x & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn corpus(name: &str) -> Option<Vec<u8>> {
        crate::require::corpus_file(
            env!("CARGO_MANIFEST_DIR"),
            &format!("tcoppi__BittorrentReconstituter/{name}"),
        )
    }

    #[test]
    fn corpus_torrents_hash_to_their_info_hash() {
        let cases = [
            (
                "lookaway.mp3.torrent",
                "4aa10386e70174864eaeaa54237d37f93e18458f",
                60,
                1_945_472,
            ),
            (
                "Code Monkey.mp3.torrent",
                "12a35a70a0f917e72cca136efe6fb6508f938256",
                115,
                3_741_361,
            ),
            ("test.txt.torrent", "2a72ac0b7b1e62e0d4f6ac9ec997138e1d636bcd", 1, 58),
            (
                "mippo-creative_v92.mp3.torrent",
                "a060d2981790dacb715ac99ed7cbd2dfc1df47d8",
                2,
                47_104,
            ),
        ];
        for (f, ih, n, len) in cases {
            let Some(b) = corpus(f) else { return };
            let m = parse_torrent(&b).expect("parses");
            assert_eq!(hex(&m.info_hash_v1.expect("v1")), ih, "{f}");
            assert_eq!(m.n_pieces, n, "{f}");
            assert_eq!(m.total_bytes, len, "{f}");
        }
    }

    #[test]
    fn v2_file_tree() {
        let info = b"d9:file treed1:ad0:d6:lengthi40000eee1:bd1:cd0:d6:lengthi10eeeee12:meta versioni2e4:name1:x12:piece lengthi16384ee";
        let m = parse_info(info).expect("v2 parses");
        assert!(m.info_hash_v1.is_none());
        assert!(m.info_hash_v2.is_some());
        assert_eq!(m.total_bytes, 40010);
        assert_eq!(m.n_pieces, 3 + 1);
        assert_eq!(
            m.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["a", "b/c"]
        );
    }

    #[test]
    fn hostile_metainfo_is_an_error_not_a_panic() {
        let deep = "l".repeat(100_000);
        assert!(parse_torrent(deep.as_bytes()).is_err());
        assert!(parse_torrent(b"d4:infod6:pieces3:abc12:piece lengthi1eee").is_err());
        assert!(parse_torrent(b"d4:infod12:piece lengthi-5e6:pieces0:ee").is_err());
        assert!(parse_torrent(b"").is_err());
    }

    #[test]
    fn v2_piece_count_saturates_on_hostile_lengths() {
        // Two files of i64::MAX bytes and one of 3 at one byte a piece: the
        // count must not wrap around to 1 (an info dictionary from
        // ut_metadata is whatever a peer made up).
        let max = i64::MAX;
        let info = format!(
            "d9:file treed1:ad0:d6:lengthi{max}eee1:bd0:d6:lengthi{max}eee1:cd0:d6:lengthi3eeee\
             12:meta versioni2e4:name1:x12:piece lengthi1ee"
        );
        let m = parse_info(info.as_bytes()).expect("parses");
        assert_eq!(m.files.len(), 3);
        assert_eq!(m.total_bytes, u64::MAX);
        assert_eq!(m.n_pieces, u32::MAX);
    }
}
