//! Community ID v1 (corelight/community-id-spec): a flow hash that Zeek,
//! Suricata and Arkime write too, so rows of the same traffic join across
//! tools. `1:` + base64(SHA-1(seed, addresses, proto, 0, ports)), with the
//! endpoints ordered so that both directions give the same value.

use std::net::IpAddr;

/// IANA protocol numbers.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// An address's bytes in a fixed buffer (4 or 16 of them used): no
/// allocation per flow.
fn octets(ip: IpAddr) -> ([u8; 16], usize) {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            if let Some(d) = b.get_mut(..4) {
                d.copy_from_slice(&a.octets());
            }
            (b, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    let mut s = Vec::with_capacity(data.len().div_ceil(3) * 4);
    push_base64(&mut s, data);
    // Only characters of the base64 alphabet were written.
    String::from_utf8(s).unwrap_or_default()
}

/// Appends `data` as standard base64 with padding (no `String` made: the
/// writer appends community ids straight into a text column's buffer).
/// Four characters are appended per three bytes at once (a push per
/// character was ~500 instructions a community id, 2.5 % of the DHT
/// writer thread with its 51 k flows).
fn push_base64(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(data.len().div_ceil(3) * 4);
    let sextet = |n: u32, i: u32| B64[((n >> (18 - 6 * i)) & 63) as usize];
    let (groups, rest) = data.as_chunks::<3>();
    for g in groups {
        let n = (u32::from(g[0]) << 16) | (u32::from(g[1]) << 8) | u32::from(g[2]);
        out.extend_from_slice(&[sextet(n, 0), sextet(n, 1), sextet(n, 2), sextet(n, 3)]);
    }
    match *rest {
        [a] => {
            let n = u32::from(a) << 16;
            out.extend_from_slice(&[sextet(n, 0), sextet(n, 1), b'=', b'=']);
        }
        [a, b] => {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.extend_from_slice(&[sextet(n, 0), sextet(n, 1), sextet(n, 2), b'=']);
        }
        _ => {}
    }
}

/// The Community ID v1 of a TCP/UDP flow between (a, ap) and (b, bp), with
/// `seed` (0 by default in every tool). None for mixed address families.
pub fn community_id(seed: u16, proto: u8, a: IpAddr, ap: u16, b: IpAddr, bp: u16) -> Option<String> {
    digest(seed, proto, a, ap, b, bp).map(|d| text(&d))
}

/// The SHA-1 behind [`community_id`]: rows carry it, the sink writes its
/// text ([`push_text`]).
pub fn digest(seed: u16, proto: u8, a: IpAddr, ap: u16, b: IpAddr, bp: u16) -> Option<[u8; 20]> {
    if a.is_ipv4() != b.is_ipv4() {
        return None;
    }
    let ((oa, n), (ob, _)) = (octets(a), octets(b));
    let (oa, ob) = (oa.get(..n).unwrap_or(&[]), ob.get(..n).unwrap_or(&[]));
    let ((s, sp), (d, dp)) = if (oa, ap) <= (ob, bp) {
        ((oa, ap), (ob, bp))
    } else {
        ((ob, bp), (oa, ap))
    };
    // The hashed input (seed, addresses, proto, 0, ports: 16 or 40 bytes)
    // fits one 64-byte SHA-1 block with its padding: laid out there and
    // compressed once. Two `Vec`s, six `update`s and the hasher's block
    // buffer were ~600 instructions a flow besides the SHA-1 rounds
    // (dht-125k: 51 k flows).
    let mut block = [0u8; 64];
    let mut len = 0;
    for part in [
        &seed.to_be_bytes()[..],
        s,
        d,
        &[proto, 0],
        &sp.to_be_bytes(),
        &dp.to_be_bytes(),
    ] {
        if let Some(dst) = block.get_mut(len..len + part.len()) {
            dst.copy_from_slice(part);
        }
        len += part.len();
    }
    Some(sha1_one_block(block, len))
}

/// SHA-1 of the first `len` bytes of `block` (at most 55, so that the
/// padding fits the same block; the rest of `block` zero): the 0x80 byte
/// after the message and its length in bits in the last 8 bytes (FIPS
/// 180-4, 5.1.1), one compression from the initial hash value (5.3.1).
fn sha1_one_block(mut block: [u8; 64], len: usize) -> [u8; 20] {
    debug_assert!(len <= 55 && block.get(len..).is_some_and(|r| r.iter().all(|&b| b == 0)));
    if let Some(b) = block.get_mut(len) {
        *b = 0x80;
    }
    if let Some(l) = block.get_mut(56..) {
        l.copy_from_slice(&(len as u64 * 8).to_be_bytes());
    }
    let mut state: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];
    sha1::compress(&mut state, &[block.into()]);
    let mut out = [0u8; 20];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// The text of a digest: `1:` + base64.
pub fn text(d: &[u8; 20]) -> String {
    format!("1:{}", base64(d))
}

/// Appends [`text`] of `d` to a text column's buffer.
pub fn push_text(buf: &mut Vec<u8>, d: &[u8; 20]) {
    buf.extend_from_slice(b"1:");
    push_base64(buf, d);
}

/// The same, from the text addresses and ports of a row.
pub fn community_id_of(proto: &str, a: &str, ap: u32, b: &str, bp: u32) -> Option<String> {
    let proto = match proto {
        "tcp" => PROTO_TCP,
        // uTP connections ride on UDP flows.
        "udp" | "utp" => PROTO_UDP,
        _ => return None,
    };
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    let (ap, bp) = (u16::try_from(ap).ok()?, u16::try_from(bp).ok()?);
    community_id(0, proto, a, ap, b, bp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values computed with the `communityid` PyPI package (the spec's
    /// reference implementation), and the spec README's example.
    /// The one-block SHA-1 equals the hasher's on every length the
    /// community id uses and around them (0..=55), on varied bytes.
    #[test]
    fn one_block_sha1_equals_the_hasher() {
        use sha1::{Digest, Sha1};
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..=55usize {
            for _ in 0..8 {
                let mut block = [0u8; 64];
                for b in block.iter_mut().take(len) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                let want: [u8; 20] = Sha1::digest(&block[..len]).into();
                assert_eq!(sha1_one_block(block, len), want, "len {len}");
            }
        }
    }

    #[test]
    fn known_vectors() {
        let v = |p, a: &str, ap, b: &str, bp| community_id_of(p, a, ap, b, bp).unwrap();
        assert_eq!(
            v("tcp", "128.232.110.120", 34855, "66.35.250.204", 80),
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
        );
        assert_eq!(
            v("tcp", "66.35.250.204", 80, "128.232.110.120", 34855),
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
        );
        assert_eq!(
            v("udp", "192.168.1.52", 54585, "8.8.8.8", 53),
            "1:d/FP5EW3wiY1vCndhwleRRKHowQ="
        );
        assert_eq!(
            v("tcp", "fe80::200:86ff:fe05:80da", 1, "fe80::260:97ff:fe07:69ea", 2),
            "1:JETlgBm4LXP5CwobPGu4IYZF5Hs="
        );
        assert_eq!(
            v("utp", "10.0.0.1", 6881, "10.0.0.1", 6881),
            "1:PCUP7scfEGscB+YbkXUI7H4aPVE="
        );
        let seeded = community_id(
            1,
            PROTO_TCP,
            "128.232.110.120".parse().unwrap(),
            34855,
            "66.35.250.204".parse().unwrap(),
            80,
        );
        assert_eq!(seeded.as_deref(), Some("1:3V71V58M3Ksw/yuFALMcW0LAHvc="));
        assert_eq!(community_id_of("tcp", "10.0.0.1", 1, "::1", 2), None);
        let d = digest(
            0,
            PROTO_UDP,
            "10.0.0.1".parse().unwrap(),
            6881,
            "10.0.0.1".parse().unwrap(),
            6881,
        )
        .unwrap();
        let mut t = Vec::new();
        push_text(&mut t, &d);
        assert_eq!(t, b"1:PCUP7scfEGscB+YbkXUI7H4aPVE=");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x3e, 0x3f]), "//4APj8=");
    }
}
