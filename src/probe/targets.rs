//! What to probe and where the probe may go: torrents named by .torrent
//! file, magnet link or bare info hash, explicit peer endpoints, a passive
//! dataset's torrents and peers (`--from DIR`), and the address policy
//! (CIDR allow/deny lists, private and loopback ranges refused unless
//! `--allow-private`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use crate::proto::metainfo::Metainfo;

/// One torrent to probe.
#[derive(Debug, Clone)]
pub struct Target {
    pub info_hash: [u8; 20],
    pub name: Option<String>,
    pub trackers: Vec<String>,
    /// Metadata when known (from a .torrent).
    pub meta: Option<Metainfo>,
    /// Piece count known without metadata (from a passive dataset).
    pub n_pieces: Option<u32>,
    /// Peers to contact besides what discovery finds.
    pub peers: Vec<SocketAddr>,
    /// Those of `peers` a passive dataset saw using uTP (`peers.utp`):
    /// tried over uTP first.
    pub utp_peers: Vec<SocketAddr>,
}

impl Target {
    pub fn bare(info_hash: [u8; 20]) -> Self {
        Target {
            info_hash,
            name: None,
            trackers: Vec::new(),
            meta: None,
            n_pieces: None,
            peers: Vec::new(),
            utp_peers: Vec::new(),
        }
    }
}

fn unhex20(s: &str) -> Option<[u8; 20]> {
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// RFC 4648 base32 (the older magnet form of a v1 hash).
fn unbase32_20(s: &str) -> Option<[u8; 20]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 20];
    let mut acc: u64 = 0;
    let mut bits = 0;
    let mut k = 0;
    for c in s.bytes() {
        let v = match c.to_ascii_uppercase() {
            b'A'..=b'Z' => c.to_ascii_uppercase() - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(k)? = (acc >> bits) as u8;
            k += 1;
        }
    }
    (k == 20).then_some(out)
}

/// A bare info hash: 40 hex digits or 32 base32 characters.
pub fn parse_info_hash(s: &str) -> Option<[u8; 20]> {
    unhex20(s).or_else(|| unbase32_20(s))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A magnet link (BEP 9): `xt=urn:btih:` (hex or base32), `dn`, `tr`,
/// `x.pe` (peer addresses).
pub fn parse_magnet(m: &str) -> Result<Target, String> {
    let q = m
        .strip_prefix("magnet:?")
        .ok_or_else(|| format!("not a magnet link: {m}"))?;
    let mut t: Option<Target> = None;
    let mut name = None;
    let mut trackers = Vec::new();
    let mut peers = Vec::new();
    for kv in q.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v);
        match k {
            "xt" => {
                if let Some(h) = v.strip_prefix("urn:btih:") {
                    let ih = parse_info_hash(h).ok_or_else(|| format!("bad btih in magnet: {h}"))?;
                    t.get_or_insert_with(|| Target::bare(ih));
                }
            }
            "dn" => name = Some(v),
            "tr" => trackers.push(v),
            "x.pe" => {
                if let Ok(a) = v.parse() {
                    peers.push(a);
                }
            }
            _ => {}
        }
    }
    let mut t = t.ok_or("magnet link without a v1 info hash (urn:btih)")?;
    t.name = name;
    t.trackers = trackers;
    t.peers = peers;
    Ok(t)
}

/// Targets from a passive dataset: every torrent of `torrents.parquet`
/// (with its name and piece count) and every peer endpoint of
/// `peers.parquet` under its torrent.
pub fn from_dataset(dir: &Path) -> Result<Vec<Target>, String> {
    use polars::prelude::*;
    let read = |name: &str| -> Result<DataFrame, String> {
        let p = dir.join(format!("{name}.parquet"));
        let f = std::fs::File::open(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        ParquetReader::new(f)
            .finish()
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let tdf = read("torrents")?;
    let pdf = read("peers")?;
    let mut out: Vec<Target> = Vec::new();
    let err = |e: PolarsError| format!("unexpected dataset schema: {e}");
    {
        let ih = tdf.column("info_hash").map_err(err)?.str().map_err(err)?;
        let name = tdf.column("name").map_err(err)?.str().map_err(err)?;
        // Older datasets wrote u64, newer ones int64: read either.
        let np = tdf
            .column("n_pieces")
            .map_err(err)?
            .cast(&DataType::Int64)
            .map_err(err)?;
        let np = np.i64().map_err(err)?;
        let src = tdf.column("n_pieces_source").map_err(err)?.str().map_err(err)?;
        for i in 0..tdf.height() {
            let Some(h) = ih.get(i).and_then(unhex20) else { continue };
            let mut t = Target::bare(h);
            t.name = name.get(i).map(str::to_string);
            // An estimate from bitfield lengths is not a piece count.
            if src.get(i) != Some("bitfield_estimate") {
                t.n_pieces = np.get(i).and_then(|n| u32::try_from(n).ok());
            }
            out.push(t);
        }
    }
    let ih = pdf.column("info_hash").map_err(err)?.str().map_err(err)?;
    let ip = pdf.column("peer_ip").map_err(err)?.str().map_err(err)?;
    let port = pdf
        .column("peer_port")
        .map_err(err)?
        .cast(&DataType::Int64)
        .map_err(err)?;
    let port = port.i64().map_err(err)?;
    // uTP evidence (absent from datasets older than the column).
    let utp = pdf.column("utp").ok().and_then(|c| c.bool().ok());
    for i in 0..pdf.height() {
        let (Some(h), Some(a), Some(p)) = (ih.get(i).and_then(unhex20), ip.get(i), port.get(i)) else {
            continue;
        };
        let (Ok(a), Ok(p)) = (a.parse::<IpAddr>(), u16::try_from(p)) else {
            continue;
        };
        if p == 0 {
            continue;
        }
        let idx = match out.iter().position(|t| t.info_hash == h) {
            Some(x) => x,
            None => {
                out.push(Target::bare(h));
                out.len() - 1
            }
        };
        out[idx].peers.push(SocketAddr::new(a, p));
        if utp.and_then(|u| u.get(i)) == Some(true) {
            out[idx].utp_peers.push(SocketAddr::new(a, p));
        }
    }
    Ok(out)
}

/// An address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?),
            None => {
                let a = s.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if a.is_ipv4() { 32 } else { 128 };
        (l <= max).then_some(Cidr { addr: a, len: l })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// IPv4 blocks of the IANA IPv4 Special-Purpose Address Registry (RFC 6890
/// and its updates, as of 2025), plus multicast (224/4, its own registry):
/// none of them is a BitTorrent peer on the public Internet. The registry
/// marks a few as globally reachable (192.0.0.9 and .10, the AS112 and AMT
/// anycast blocks); those are anycast infrastructure, refused as well.
const SPECIAL_V4: [(u32, u8); 19] = [
    (0x0000_0000, 8),  // 0.0.0.0/8 "this network" (RFC 791)
    (0x0a00_0000, 8),  // 10.0.0.0/8 private (RFC 1918)
    (0x6440_0000, 10), // 100.64.0.0/10 shared address space, CGNAT (RFC 6598)
    (0x7f00_0000, 8),  // 127.0.0.0/8 loopback (RFC 1122)
    (0xa9fe_0000, 16), // 169.254.0.0/16 link local (RFC 3927)
    (0xac10_0000, 12), // 172.16.0.0/12 private (RFC 1918)
    (0xc000_0000, 24), // 192.0.0.0/24 IETF protocol assignments (RFC 6890)
    (0xc000_0200, 24), // 192.0.2.0/24 documentation TEST-NET-1 (RFC 5737)
    (0xc01f_c400, 24), // 192.31.196.0/24 AS112-v4 (RFC 7535)
    (0xc034_c100, 24), // 192.52.193.0/24 AMT (RFC 7450)
    (0xc058_6300, 24), // 192.88.99.0/24 deprecated 6to4 relay anycast (RFC 7526)
    (0xc0a8_0000, 16), // 192.168.0.0/16 private (RFC 1918)
    (0xc0af_3000, 24), // 192.175.48.0/24 direct delegation AS112 (RFC 7534)
    (0xc612_0000, 15), // 198.18.0.0/15 benchmarking (RFC 2544)
    (0xc633_6400, 24), // 198.51.100.0/24 documentation TEST-NET-2 (RFC 5737)
    (0xcb00_7100, 24), // 203.0.113.0/24 documentation TEST-NET-3 (RFC 5737)
    (0xe000_0000, 4),  // 224.0.0.0/4 multicast (RFC 5771)
    (0xf000_0000, 4),  // 240.0.0.0/4 reserved (RFC 1112)
    (0xffff_ffff, 32), // 255.255.255.255/32 limited broadcast (RFC 919)
];

/// IPv6 blocks inside 2000::/3 (the only global unicast space IANA has
/// allocated; everything outside it is refused, which covers ::/128, ::1,
/// ::/96 IPv4-compatible, 100::/64 discard, 64:ff9b:1::/48 local NAT64,
/// fc00::/7 ULA, fe80::/10 link local, fec0::/10 site local and ff00::/8
/// multicast) that the IANA IPv6 Special-Purpose Address Registry lists.
/// 2001::/23 is IETF protocol assignments (2001:2::/48 benchmarking, ORCHID,
/// AS112, ...); its Teredo block 2001::/32, and 6to4 2002::/16, are judged
/// by the IPv4 addresses they embed instead (see `embedded_v4`).
const SPECIAL_V6: [(u128, u8); 5] = [
    (0x2001_0000_0000_0000_0000_0000_0000_0000, 23), // 2001::/23 IETF protocol assignments (RFC 2928)
    (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32), // 2001:db8::/32 documentation (RFC 3849)
    (0x2620_004f_8000_0000_0000_0000_0000_0000, 48), // 2620:4f:8000::/48 direct delegation AS112 (RFC 7534)
    (0x3fff_0000_0000_0000_0000_0000_0000_0000, 20), // 3fff::/20 documentation (RFC 9637)
    (0x5f00_0000_0000_0000_0000_0000_0000_0000, 16), // 5f00::/16 SRv6 SIDs (RFC 9602)
];

fn in_block(a: u128, net: u128, len: u8, bits: u32) -> bool {
    let shift = bits - u32::from(len);
    len == 0 || a >> shift == net >> shift
}

/// The IPv4 address an IPv6 address stands for, where the prefix makes the
/// packet reach that IPv4 host: IPv4-mapped ::ffff:0:0/96 and SIIT
/// ::ffff:0:0:0/96, the NAT64 well-known prefix 64:ff9b::/96 (RFC 6052),
/// 6to4 2002::/16 (RFC 3056, bits 16..48) and Teredo 2001::/32 (RFC 4380:
/// the client's address inverted in the low 32 bits; the server's in bits
/// 32..64 is judged too, by the caller). A NAT64 gateway would carry a probe
/// to 64:ff9b::10.0.0.1 straight into the operator's own network.
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let v = u128::from(a);
    let low = Ipv4Addr::from(v as u32);
    if v >> 32 == 0xffff || v >> 32 == 0xffff_0000 || v >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(low);
    }
    if v >> 112 == 0x2002 {
        return Some(Ipv4Addr::from((v >> 80) as u32));
    }
    if v >> 96 == 0x2001_0000 {
        return Some(Ipv4Addr::from(!(v as u32)));
    }
    None
}

/// Addresses that are not the public Internet: every block of the IANA
/// IPv4 and IPv6 special-purpose registries (private, loopback, link local,
/// CGNAT, benchmarking, documentation, protocol assignments, 6to4 relay
/// anycast, AS112, reserved, broadcast, multicast), IPv6 outside 2000::/3
/// (site local, ULA, IPv4-compatible, discard, ...), and IPv6 forms that
/// embed an IPv4 address (mapped, NAT64, 6to4, Teredo) when that IPv4
/// address is one of these. Probing them is refused unless
/// `--allow-private`: a probe fed a hostile tracker list or DHT answer must
/// not scan the operator's own network, nor reach it through a translator.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let v = u128::from(u32::from(a));
            SPECIAL_V4
                .iter()
                .any(|&(net, len)| in_block(v, u128::from(net), len, 32))
        }
        IpAddr::V6(a) => {
            if let Some(v4) = embedded_v4(a) {
                let teredo_server =
                    (u128::from(a) >> 96 == 0x2001_0000).then(|| Ipv4Addr::from((u128::from(a) >> 64) as u32));
                return is_private(IpAddr::V4(v4)) || teredo_server.is_some_and(|s| is_private(IpAddr::V4(s)));
            }
            let v = u128::from(a);
            !in_block(v, 0x2000 << 112, 3, 128) || SPECIAL_V6.iter().any(|&(net, len)| in_block(v, net, len, 128))
        }
    }
}

/// Where the probe may send packets.
#[derive(Debug, Clone, Default)]
pub struct AddrPolicy {
    pub allow_private: bool,
    /// When not empty, only these blocks.
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl AddrPolicy {
    /// `None` when the address may be contacted, else why not.
    pub fn refuse(&self, ip: IpAddr) -> Option<&'static str> {
        if self.deny.iter().any(|c| c.contains(ip)) {
            return Some("denied");
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(ip)) {
            return Some("not_allowed");
        }
        if !self.allow_private && is_private(ip) {
            return Some("private_address");
        }
        None
    }
}

/// Unused-address sanity: port 0 is never contactable.
pub fn contactable(a: &SocketAddr) -> bool {
    a.port() != 0
        && !a.ip().is_unspecified()
        && a.ip() != IpAddr::V4(Ipv4Addr::BROADCAST)
        && a.ip() != IpAddr::V6(Ipv6Addr::UNSPECIFIED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_utp_evidence() {
        use polars::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let ih = "0123456789abcdef0123456789abcdef01234567";
        let write = |name: &str, mut df: DataFrame| {
            let f = std::fs::File::create(dir.path().join(format!("{name}.parquet"))).unwrap();
            ParquetWriter::new(f).finish(&mut df).unwrap();
        };
        write(
            "torrents",
            df!("info_hash" => [ih], "name" => ["x"], "n_pieces" => [10u64], "n_pieces_source" => ["torrent_file"])
                .unwrap(),
        );
        write(
            "peers",
            df!(
                "info_hash" => [ih, ih, ih],
                "peer_ip" => ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
                "peer_port" => [6881u32, 6881, 6881],
                "utp" => [Some(true), Some(false), None]
            )
            .unwrap(),
        );
        let t = from_dataset(dir.path()).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].peers.len(), 3);
        assert_eq!(t[0].utp_peers, vec!["10.0.0.1:6881".parse::<SocketAddr>().unwrap()]);
        assert_eq!(t[0].n_pieces, Some(10));
    }

    #[test]
    fn magnets() {
        let t = parse_magnet(
            "magnet:?xt=urn:btih:0123456789abcdef0123456789ABCDEF01234567&dn=a%20b&tr=udp%3A%2F%2F10.0.0.1%3A6969&x.pe=10.0.0.2:6881",
        )
        .unwrap();
        assert_eq!(t.info_hash[0], 0x01);
        assert_eq!(t.info_hash[19], 0x67);
        assert_eq!(t.name.as_deref(), Some("a b"));
        assert_eq!(t.trackers, vec!["udp://10.0.0.1:6969".to_string()]);
        assert_eq!(t.peers, vec!["10.0.0.2:6881".parse().unwrap()]);
        // base32 of 20 zero bytes
        let t = parse_magnet("magnet:?xt=urn:btih:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert_eq!(t.info_hash, [0; 20]);
        assert!(parse_magnet("magnet:?dn=x").is_err());
        assert!(parse_magnet("http://x").is_err());
    }

    #[test]
    fn special_purpose_registries_are_refused() {
        let p = AddrPolicy::default();
        let refused = [
            // IPv4 special-purpose registry
            "0.1.2.3",
            "198.18.0.1",
            "198.19.255.254",
            "192.0.0.9",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "192.31.196.1",
            "192.52.193.1",
            "192.175.48.6",
            "198.51.100.7",
            "203.0.113.9",
            "240.0.0.1",
            "255.255.255.255",
            "239.1.2.3",
            // IPv6
            "::",
            "::1",
            "::a00:1",
            "::8.8.8.8",
            "64:ff9b::10.0.0.1",
            "64:ff9b::198.18.0.1",
            "64:ff9b:1::8.8.8.8",
            "::ffff:10.0.0.1",
            "::ffff:0:192.168.0.1",
            "2002:0a00:0001::1",
            "2002:c058:6301::1",
            "2001:2::1",
            "2001:db8::1",
            "3fff::1",
            "5f00::1",
            "2620:4f:8000::1",
            "fec0::1",
            "fc00::1",
            "100::1",
            "ff02::1",
            "4000::1",
            "2001:0:4136:e378:8000:63bf:f5ff:fffe", // Teredo for client 10.0.0.1
        ];
        for a in refused {
            assert_eq!(p.refuse(a.parse().unwrap()), Some("private_address"), "{a}");
        }
        for a in [
            "8.8.8.8",
            "198.20.0.1",
            "192.0.1.1",
            "64:ff9b::8.8.8.8",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
            "2001:4860:4860::8888",
            "2a00:1450::1",
        ] {
            assert_eq!(p.refuse(a.parse().unwrap()), None, "{a}");
        }
        let open = AddrPolicy {
            allow_private: true,
            ..AddrPolicy::default()
        };
        assert_eq!(open.refuse("64:ff9b::10.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn cidrs_and_policy() {
        let c = Cidr::parse("10.99.0.0/24").unwrap();
        assert!(c.contains("10.99.0.11".parse().unwrap()));
        assert!(!c.contains("10.99.1.11".parse().unwrap()));
        assert!(c.contains("::ffff:10.99.0.5".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8").unwrap().contains("fd00:99::1".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4/33").is_none());
        let p = AddrPolicy::default();
        for a in [
            "10.1.2.3",
            "127.0.0.1",
            "192.168.1.1",
            "172.20.0.1",
            "100.64.0.1",
            "fd00::1",
            "fe80::1",
            "::1",
            "169.254.0.1",
            "224.0.0.1",
        ] {
            assert_eq!(p.refuse(a.parse().unwrap()), Some("private_address"), "{a}");
        }
        assert_eq!(p.refuse("8.8.8.8".parse().unwrap()), None);
        let p = AddrPolicy {
            allow_private: true,
            allow: vec![Cidr::parse("10.99.0.0/24").unwrap()],
            deny: vec![Cidr::parse("10.99.0.13").unwrap()],
        };
        assert_eq!(p.refuse("10.99.0.12".parse().unwrap()), None);
        assert_eq!(p.refuse("10.99.0.13".parse().unwrap()), Some("denied"));
        assert_eq!(p.refuse("10.98.0.1".parse().unwrap()), Some("not_allowed"));
    }
}
