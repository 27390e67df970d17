//! Community ID v1 (corelight/community-id-spec): a flow hash that Zeek,
//! Suricata and Arkime write too, so rows of the same traffic join across
//! tools. `1:` + base64(SHA-1(seed, addresses, proto, 0, ports)), with the
//! endpoints ordered so that both directions give the same value.

use std::net::IpAddr;

use sha1::{Digest, Sha1};

/// IANA protocol numbers.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
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
    let (oa, ob) = (octets(a), octets(b));
    let ((s, sp), (d, dp)) = if (&oa, ap) <= (&ob, bp) {
        ((oa, ap), (ob, bp))
    } else {
        ((ob, bp), (oa, ap))
    };
    let mut h = Sha1::new();
    h.update(seed.to_be_bytes());
    h.update(&s);
    h.update(&d);
    h.update([proto, 0]);
    h.update(sp.to_be_bytes());
    h.update(dp.to_be_bytes());
    Some(h.finalize().into())
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
