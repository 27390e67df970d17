//! ut_pex (BEP 11): peer exchange. A bencoded dictionary whose `added`,
//! `dropped` (IPv4, 6 bytes per peer: address, port) and `added6`,
//! `dropped6` (IPv6, 18 bytes per peer) strings list peers the sender
//! connected to or lost since its last message; `added.f` / `added6.f` hold
//! one flag byte per added peer.
//!
//! Flag bits (BEP 11, as libtorrent sets them): 0x01 prefers encryption,
//! 0x02 seed (upload only), 0x04 supports uTP (libtorrent: the connection
//! to it is uTP), 0x08 supports ut_holepunch, 0x10 reachable (the sender
//! made an outgoing connection to it).
//!
//! Invariants: no panic, no allocation beyond the caller's bound on
//! entries; a list whose length is not a multiple of its entry size yields
//! its whole entries and is reported (the trailing bytes are ignored).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::bencode::{self, BencodeLimits};

/// A PEX dictionary has at most a handful of keys; entries are in strings.
const LIMITS: BencodeLimits = BencodeLimits {
    max_depth: 4,
    max_items: 256,
};

pub const FLAG_ENCRYPTION: u8 = 0x01;
pub const FLAG_SEED: u8 = 0x02;
pub const FLAG_UTP: u8 = 0x04;
pub const FLAG_HOLEPUNCH: u8 = 0x08;
pub const FLAG_REACHABLE: u8 = 0x10;

/// Flag names in bit order, for the `flags` column.
const FLAG_NAMES: [(u8, &str); 5] = [
    (FLAG_ENCRYPTION, "encryption"),
    (FLAG_SEED, "seed"),
    (FLAG_UTP, "utp"),
    (FLAG_HOLEPUNCH, "holepunch"),
    (FLAG_REACHABLE, "reachable"),
];

/// Readable names of the set flag bits (unknown bits are left out).
pub fn flag_names(flags: u8) -> Vec<String> {
    FLAG_NAMES
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| (*n).to_string())
        .collect()
}

/// One peer named by a PEX message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PexEntry {
    pub addr: SocketAddr,
    pub added: bool,
    /// The flag byte, when the matching `.f` string has one for this entry.
    pub flags: Option<u8>,
}

/// A decoded PEX message: its lists as borrowed strings.
#[derive(Debug, Clone, Copy, Default)]
pub struct PexMessage<'a> {
    added: &'a [u8],
    added_f: &'a [u8],
    dropped: &'a [u8],
    added6: &'a [u8],
    added6_f: &'a [u8],
    dropped6: &'a [u8],
}

impl<'a> PexMessage<'a> {
    /// Anomaly kinds of this message (lists with trailing bytes; flag
    /// strings of the wrong length).
    pub fn anomalies(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if !self.added.len().is_multiple_of(6) || !self.dropped.len().is_multiple_of(6) {
            v.push("pex_ipv4_list_not_multiple_of_6");
        }
        if !self.added6.len().is_multiple_of(18) || !self.dropped6.len().is_multiple_of(18) {
            v.push("pex_ipv6_list_not_multiple_of_18");
        }
        if !self.added_f.is_empty() && self.added_f.len() != self.added.len() / 6
            || !self.added6_f.is_empty() && self.added6_f.len() != self.added6.len() / 18
        {
            v.push("pex_flags_length_mismatch");
        }
        v
    }

    /// Entries in message order (added, dropped, added6, dropped6), at most
    /// `max` of them; returns how many were left out past `max`.
    pub fn entries(&self, max: usize, mut f: impl FnMut(PexEntry)) -> usize {
        let lists: [(&[u8], &[u8], bool, usize); 4] = [
            (self.added, self.added_f, true, 6),
            (self.dropped, &[], false, 6),
            (self.added6, self.added6_f, true, 18),
            (self.dropped6, &[], false, 18),
        ];
        let mut n = 0usize;
        let mut left_out = 0usize;
        for (list, flags, added, size) in lists {
            for (i, e) in list.chunks_exact(size).enumerate() {
                if n >= max {
                    left_out += 1;
                    continue;
                }
                let Some(addr) = compact(e) else { continue };
                n += 1;
                f(PexEntry {
                    addr,
                    added,
                    flags: flags.get(i).copied(),
                });
            }
        }
        left_out
    }
}

/// Compact peer info: 4 or 16 address bytes, then a big-endian port.
fn compact(e: &[u8]) -> Option<SocketAddr> {
    match e.len() {
        6 => {
            let ip = Ipv4Addr::new(e[0], e[1], e[2], e[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([e[4], e[5]])))
        }
        18 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&e[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                u16::from_be_bytes([e[16], e[17]]),
            ))
        }
        _ => None,
    }
}

/// Decodes a ut_pex payload (after the extension id byte). Keys of the
/// wrong type are treated as absent.
pub fn parse(payload: &[u8]) -> Result<PexMessage<'_>, &'static str> {
    let (d, _) = bencode::parse_dict(payload, &LIMITS).map_err(|_| "pex_bad_dict")?;
    let s = |k: &[u8]| d.get_bytes(k).unwrap_or_default();
    Ok(PexMessage {
        added: s(b"added"),
        added_f: s(b"added.f"),
        dropped: s(b"dropped"),
        added6: s(b"added6"),
        added6_f: s(b"added6.f"),
        dropped6: s(b"dropped6"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(m: &PexMessage<'_>, max: usize) -> (Vec<PexEntry>, usize) {
        let mut v = Vec::new();
        let left = m.entries(max, |e| v.push(e));
        (v, left)
    }

    #[test]
    fn decodes_all_lists_with_flags() {
        let mut p = b"d5:added12:".to_vec();
        p.extend([10, 0, 0, 1, 0x1A, 0xE1, 10, 0, 0, 2, 0x1A, 0xE2]);
        p.extend(b"7:added.f2:");
        p.extend([0x01 | 0x04, 0x12]);
        p.extend(b"6:added618:");
        p.extend([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1A, 0xE1]);
        p.extend(b"7:dropped6:");
        p.extend([192, 168, 1, 9, 0, 80]);
        p.push(b'e');
        let m = parse(&p).expect("valid");
        assert!(m.anomalies().is_empty());
        let (v, left) = collect(&m, 100);
        assert_eq!(left, 0);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].addr.to_string(), "10.0.0.1:6881");
        assert_eq!(v[0].flags, Some(5));
        assert_eq!(flag_names(5), ["encryption", "utp"]);
        assert_eq!(flag_names(0x12), ["seed", "reachable"]);
        assert_eq!(v[2].addr.to_string(), "192.168.1.9:80");
        assert!(!v[2].added);
        assert_eq!(v[3].addr.to_string(), "[2001:db8::1]:6881");
        assert!(v[3].added && v[3].flags.is_none());
        // The bound on entries holds.
        let (v, left) = collect(&m, 2);
        assert_eq!((v.len(), left), (2, 2));
    }

    #[test]
    fn hostile_lists() {
        // 13 bytes: two whole entries, one trailing byte, reported.
        let mut p = b"d5:added13:".to_vec();
        p.extend([1u8; 13]);
        p.extend(b"7:added.f5:xxxxx6:added65:abcdee");
        let m = parse(&p).expect("dict");
        let a = m.anomalies();
        assert!(a.contains(&"pex_ipv4_list_not_multiple_of_6"));
        assert!(a.contains(&"pex_ipv6_list_not_multiple_of_18"));
        assert!(a.contains(&"pex_flags_length_mismatch"));
        let (v, _) = collect(&m, 100);
        assert_eq!(v.len(), 2);
        assert_eq!(parse(b"d5:addedi3ee").map(|m| collect(&m, 10).0.len()), Ok(0));
        assert_eq!(parse(b"garbage").err(), Some("pex_bad_dict"));
        for cut in 0..p.len() {
            if let Ok(m) = parse(&p[..cut]) {
                let _ = collect(&m, 10);
                let _ = m.anomalies();
            }
        }
    }
}
