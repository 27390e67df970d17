//! Stream probes: tests over the first bytes of one direction of a TCP flow
//! or uTP connection. Their order is fixed in `dissect::probe_stream`.

use crate::proto::peer_wire::HANDSHAKE_PREFIX;

/// The stream opens with the BitTorrent handshake (`\x13BitTorrent
/// protocol`), or with as much of it as arrived.
pub fn is_handshake_start(d: &[u8]) -> bool {
    let n = d.len().min(HANDSHAKE_PREFIX.len());
    n > 0 && d.get(..n) == HANDSHAKE_PREFIX.get(..n)
}

/// An HTTP request whose request line names `info_hash=`, an announce or a
/// scrape path.
pub fn is_tracker_request(d: &[u8]) -> bool {
    if !crate::proto::tracker_http::looks_like_http_request(d) {
        return false;
    }
    let end = memchr::memchr(b'\n', d).unwrap_or(d.len()).min(8192);
    let line = d.get(..end).unwrap_or(d);
    [&b"info_hash="[..], b"announce", b"scrape"]
        .iter()
        .any(|w| line.windows(w.len()).any(|x| x.eq_ignore_ascii_case(w)))
}

/// An HTTP response start (a flow picked up after its request).
pub fn is_http_response(d: &[u8]) -> bool {
    crate::proto::tracker_http::looks_like_http_response(d)
}

/// Shortest and longest first flight of MSE/PE: a 96-byte Diffie-Hellman
/// public key and 0–512 bytes of random padding (BEP 8's MSE spec). The
/// initiator cannot send more before the responder's key arrives, nor the
/// responder before the initiator's hash, so each side's first flight has
/// this size.
pub const MSE_FLIGHT: std::ops::RangeInclusive<usize> = 96..=608;

/// Entropy (bits per byte) above which a sample of 96+ bytes reads as
/// random: random 96-byte samples measure near 6.0 bits, text and binary
/// protocol headers far below 5.
const MSE_MIN_ENTROPY: f64 = 5.5;

/// The first flight of one side of an MSE key exchange: 96–608 bytes that
/// look random. On its own this is weak evidence (any random-looking
/// opening of that size passes); the named look-alikes are ruled out before.
pub fn is_mse_first_flight(d: &[u8]) -> bool {
    MSE_FLIGHT.contains(&d.len()) && entropy(d) > MSE_MIN_ENTROPY
}

/// The responder's first flight as collected so far (`head`: the first
/// bytes of its direction, possibly more than one segment): at least 96
/// random-looking bytes and no named look-alike.
pub fn is_mse_reply(head: &[u8]) -> bool {
    let sample = head.get(..head.len().min(*MSE_FLIGHT.end())).unwrap_or(head);
    sample.len() >= *MSE_FLIGHT.start()
        && entropy(sample) > MSE_MIN_ENTROPY
        && super::lookalike::stream(sample).is_none()
        && super::lookalike::mse_lookalike(sample).is_none()
}

/// Shannon entropy (bits per byte) of a sample.
pub fn entropy(d: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in d {
        counts[usize::from(b)] += 1;
    }
    let n = d.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::super::{probe_stream, StreamFacts, StreamProto, Verdict};
    use super::*;

    fn pseudo_random(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    const START: StreamFacts = StreamFacts {
        midstream: false,
        from_orig: true,
    };

    #[test]
    fn the_order_prefers_proofs_and_rules_out_look_alikes() {
        assert_eq!(
            probe_stream(b"\x13BitTorrent protocol\0\0\0\0\0\x10\0\x05", START),
            Verdict::Certain(StreamProto::PeerWire, "plaintext handshake")
        );
        assert!(matches!(
            probe_stream(b"GET /announce?info_hash=%12 HTTP/1.1\r\n", START),
            Verdict::Certain(StreamProto::TrackerRequest, _)
        ));
        assert_eq!(
            probe_stream(b"GET /index.html HTTP/1.1\r\n", START),
            Verdict::NotMine("http")
        );
        let key = pseudo_random(300, 0x9e37_79b9_7f4a_7c15);
        assert!(matches!(
            probe_stream(&key, START),
            Verdict::Certain(StreamProto::Mse, _)
        ));
        // A TLS ClientHello of MSE's size with a random-looking body.
        let mut hello = vec![0x16, 0x03, 0x01, 0x01, 0x27, 0x01, 0x00, 0x01, 0x23, 0x03, 0x03];
        hello.extend(pseudo_random(289, 7));
        assert_eq!(probe_stream(&hello, START), Verdict::NotMine("tls"));
        // Random bytes from the responder, or on a stream without its
        // start, are no MSE opening.
        let resp = StreamFacts {
            from_orig: false,
            ..START
        };
        assert_eq!(probe_stream(&key, resp), Verdict::NotMine("no BitTorrent opening"));
        let mid = StreamFacts {
            midstream: true,
            ..START
        };
        assert!(matches!(
            probe_stream(&key, mid),
            Verdict::Certain(StreamProto::MidstreamPeerWire, _)
        ));
        assert_eq!(probe_stream(b"SSH-2.0-x\r\n", mid), Verdict::NotMine("ssh"));
    }

    #[test]
    fn mse_reply_needs_96_random_bytes() {
        assert!(is_mse_reply(&pseudo_random(96, 3)));
        assert!(is_mse_reply(&pseudo_random(2000, 3)));
        assert!(!is_mse_reply(&pseudo_random(95, 3)));
        assert!(!is_mse_reply(&[b'a'; 200]));
    }
}
