//! ut_metadata (BEP 9): the extension message that carries a torrent's info
//! dictionary between peers, so a client started from a magnet link can
//! fetch it.
//!
//! Every message is a bencoded dictionary (`msg_type` 0 request, 1 data, 2
//! reject; `piece`; `total_size` in data messages); a data message is
//! followed by the raw bytes of the piece. Metadata pieces are 16 KiB, the
//! last one shorter. This module only decodes one message; assembling
//! pieces across connections is `analyze::metadata`'s job.
//!
//! Invariants: no panic on any input; nothing is copied (the data slice
//! borrows from the message); a data message whose length disagrees with
//! its `piece` and `total_size` is refused (a peer cannot make the
//! assembler write outside a piece).

use super::bencode::{self, BencodeLimits};

/// Size of every metadata piece but the last (BEP 9).
pub const METADATA_PIECE_LEN: u32 = 16 * 1024;

/// The dictionary is tiny (three integers); anything deep or long is hostile.
const LIMITS: BencodeLimits = BencodeLimits {
    max_depth: 4,
    max_items: 64,
};

/// One decoded ut_metadata message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataMsg<'a> {
    Request {
        piece: u32,
    },
    /// A piece of the info dictionary; `data` is exactly the piece's bytes.
    Data {
        piece: u32,
        total_size: u32,
        data: &'a [u8],
    },
    Reject {
        piece: u32,
    },
    /// A msg_type this module does not know (kept for the record).
    Other {
        msg_type: i64,
    },
}

/// Why a message was refused (anomaly kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataError {
    /// Not a bencoded dictionary (or too deep / too many items).
    BadDict,
    /// `msg_type` or `piece` missing, or not a small non-negative integer.
    MissingField,
    /// A data message without a positive `total_size` that fits in 32 bits.
    BadTotalSize,
    /// The data length does not match `piece` and `total_size`, or the piece
    /// lies beyond `total_size`.
    BadPiece,
}

impl MetadataError {
    pub fn kind(self) -> &'static str {
        match self {
            MetadataError::BadDict => "ut_metadata_bad_dict",
            MetadataError::MissingField => "ut_metadata_missing_field",
            MetadataError::BadTotalSize => "ut_metadata_bad_total_size",
            MetadataError::BadPiece => "ut_metadata_bad_piece",
        }
    }
}

/// Number of metadata pieces for a total size.
pub fn n_pieces(total_size: u32) -> u32 {
    total_size.div_ceil(METADATA_PIECE_LEN)
}

/// Length of metadata piece `piece` of a `total_size`-byte dictionary, or
/// `None` when the piece is past the end.
pub fn piece_len(piece: u32, total_size: u32) -> Option<u32> {
    let start = u64::from(piece) * u64::from(METADATA_PIECE_LEN);
    let total = u64::from(total_size);
    if start >= total {
        return None;
    }
    Some((total - start).min(u64::from(METADATA_PIECE_LEN)) as u32)
}

/// Decodes one ut_metadata message payload (after the extension id byte).
pub fn parse(payload: &[u8]) -> Result<MetadataMsg<'_>, MetadataError> {
    let (dict, used) = bencode::parse_dict(payload, &LIMITS).map_err(|_| MetadataError::BadDict)?;
    let small = |k: &[u8]| dict.get_int(k).and_then(|v| u32::try_from(v).ok());
    let msg_type = dict.get_int(b"msg_type").ok_or(MetadataError::MissingField)?;
    let piece = small(b"piece").ok_or(MetadataError::MissingField)?;
    match msg_type {
        0 => Ok(MetadataMsg::Request { piece }),
        2 => Ok(MetadataMsg::Reject { piece }),
        1 => {
            let total_size = small(b"total_size")
                .filter(|&t| t > 0)
                .ok_or(MetadataError::BadTotalSize)?;
            let data = payload.get(used..).unwrap_or_default();
            match piece_len(piece, total_size) {
                Some(n) if n as usize == data.len() => Ok(MetadataMsg::Data {
                    piece,
                    total_size,
                    data,
                }),
                _ => Err(MetadataError::BadPiece),
            }
        }
        t => Ok(MetadataMsg::Other { msg_type: t }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_msg(piece: u32, total: u32, data: &[u8]) -> Vec<u8> {
        let mut v = format!("d8:msg_typei1e5:piecei{piece}e10:total_sizei{total}ee").into_bytes();
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn decodes_request_data_reject() {
        assert_eq!(
            parse(b"d8:msg_typei0e5:piecei3ee"),
            Ok(MetadataMsg::Request { piece: 3 })
        );
        assert_eq!(
            parse(b"d8:msg_typei2e5:piecei0ee"),
            Ok(MetadataMsg::Reject { piece: 0 })
        );
        let m = data_msg(0, 5, b"hello");
        assert_eq!(
            parse(&m),
            Ok(MetadataMsg::Data {
                piece: 0,
                total_size: 5,
                data: b"hello"
            })
        );
        let full = vec![7u8; 16384];
        let m = data_msg(0, 16384 + 10, &full);
        assert!(matches!(parse(&m), Ok(MetadataMsg::Data { data, .. }) if data.len() == 16384));
        let m = data_msg(1, 16384 + 10, &[1; 10]);
        assert!(matches!(parse(&m), Ok(MetadataMsg::Data { piece: 1, .. })));
        assert_eq!(
            parse(b"d8:msg_typei9e5:piecei0ee"),
            Ok(MetadataMsg::Other { msg_type: 9 })
        );
    }

    #[test]
    fn hostile_messages_are_refused() {
        // Wrong length for the piece, piece past the end, huge/negative sizes.
        assert_eq!(parse(&data_msg(0, 6, b"hello")), Err(MetadataError::BadPiece));
        assert_eq!(parse(&data_msg(1, 5, b"")), Err(MetadataError::BadPiece));
        assert_eq!(parse(&data_msg(0, 16384, b"x")), Err(MetadataError::BadPiece));
        assert_eq!(
            parse(b"d8:msg_typei1e5:piecei0e10:total_sizei-1ee"),
            Err(MetadataError::BadTotalSize)
        );
        assert_eq!(
            parse(b"d8:msg_typei1e5:piecei0e10:total_sizei99999999999ee"),
            Err(MetadataError::BadTotalSize)
        );
        // 2^31 fits in u32: it parses here (the assembler refuses it by its
        // limit), and the data cannot match it anyway.
        assert_eq!(
            parse(b"d8:msg_typei1e5:piecei0e10:total_sizei2147483648eexx"),
            Err(MetadataError::BadPiece)
        );
        assert_eq!(parse(b"d5:piecei0ee"), Err(MetadataError::MissingField));
        assert_eq!(parse(b"d8:msg_typei0e5:piecei-4ee"), Err(MetadataError::MissingField));
        assert_eq!(parse(b"l8:msg_typee"), Err(MetadataError::BadDict));
        assert_eq!(parse(b""), Err(MetadataError::BadDict));
        let deep = [b"d1:a".repeat(50), b"i1e".to_vec(), b"e".repeat(50)].concat();
        assert_eq!(parse(&deep), Err(MetadataError::BadDict));
        // Every truncation of a valid data message is refused: inside the
        // dictionary it is not one, after it the data is short.
        let m = data_msg(0, 20, &[3; 20]);
        let dict_len = m.len() - 20;
        for cut in 0..m.len() {
            let want = if cut < dict_len {
                MetadataError::BadDict
            } else {
                MetadataError::BadPiece
            };
            assert_eq!(parse(&m[..cut]), Err(want), "cut at {cut}");
        }
    }

    #[test]
    fn piece_arithmetic() {
        assert_eq!(n_pieces(1), 1);
        assert_eq!(n_pieces(16384), 1);
        assert_eq!(n_pieces(16385), 2);
        assert_eq!(piece_len(1, 16385), Some(1));
        assert_eq!(piece_len(2, 16385), None);
        assert_eq!(piece_len(u32::MAX, u32::MAX), None);
    }
}
