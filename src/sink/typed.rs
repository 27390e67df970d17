//! Typed values whose text is made only here, at the sink edge: rows carry
//! ids as bytes and addresses as `IpAddr`, and the writer formats each cell
//! straight into the text column's data buffer as the row arrives (no
//! `String` per cell, no intermediate buffer). Used by the DHT tables, where a row per KRPC datagram made the
//! per-cell strings the largest cost of the run (bench/README.md, session 5).

use std::hash::BuildHasher as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use polars::prelude::*;
use polars_arrow::array::Array;

use super::columns::{ColumnBuilder, ColumnSpec, ColumnValue, NameBuilder};
use super::dict::{DictBuilder, DictKey, Typed};

/// A short byte string kept inline (transaction ids, `v`): up to
/// [`ShortBytes::INLINE`] bytes without allocating; longer ones (rare, and
/// bounded by the datagram) on the heap.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ShortBytes {
    Inline { len: u8, bytes: [u8; ShortBytes::INLINE] },
    Heap(Box<[u8]>),
}

impl ShortBytes {
    /// Bytes kept inline: libtorrent's transaction ids are 2 bytes,
    /// uTorrent's 4, the longest in the corpus 8; `v` is 4.
    pub const INLINE: usize = 14;

    pub fn new(b: &[u8]) -> ShortBytes {
        let mut bytes = [0u8; Self::INLINE];
        match (bytes.get_mut(..b.len()), u8::try_from(b.len())) {
            (Some(dst), Ok(len)) => {
                dst.copy_from_slice(b);
                ShortBytes::Inline { len, bytes }
            }
            _ => ShortBytes::Heap(b.into()),
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            ShortBytes::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(&[]),
            ShortBytes::Heap(b) => b,
        }
    }
}

impl Default for ShortBytes {
    fn default() -> Self {
        ShortBytes::new(&[])
    }
}

impl std::fmt::Debug for ShortBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = Vec::new();
        push_hex(&mut s, self.as_slice());
        write!(f, "ShortBytes({})", String::from_utf8_lossy(&s))
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The two hex digits of every byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX_DIGITS[i >> 4], HEX_DIGITS[i & 15]];
        i += 1;
    }
    t
};

/// Appends `b` as lowercase hex.
#[inline]
pub fn push_hex(buf: &mut Vec<u8>, b: &[u8]) {
    buf.reserve(2 * b.len());
    for &x in b {
        buf.extend_from_slice(&HEX_PAIRS[usize::from(x)]);
    }
}

/// Appends a 20-byte id as 40 hex digits (made on the stack, appended once).
#[inline]
pub fn push_hex20(buf: &mut Vec<u8>, id: &[u8; 20]) {
    let mut out = [0u8; 40];
    for (o, &x) in out.chunks_exact_mut(2).zip(id) {
        o.copy_from_slice(&HEX_PAIRS[usize::from(x)]);
    }
    buf.extend_from_slice(&out);
}

/// Appends `ip` as text: dotted quad, or RFC 5952 for IPv6 (as std prints
/// it, the same text as `IpAddr::to_string`).
#[inline]
pub fn push_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // At most 15 bytes, made on the stack and appended once.
            let mut out = [0u8; 16];
            let mut n = 0;
            for o in v4.octets() {
                if o >= 100 {
                    out[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    out[n] = b'0' + o / 10 % 10;
                    n += 1;
                }
                out[n] = b'0' + o % 10;
                out[n + 1] = b'.';
                n += 2;
            }
            // Without the last dot.
            buf.extend_from_slice(&out[..n - 1]);
        }
        IpAddr::V6(_) => {
            let _ = write!(buf, "{ip}");
        }
    }
}

/// Text of a value, appended to a text column's data buffer.
pub trait ToText {
    fn push_text(&self, buf: &mut Vec<u8>);
}

/// Bytes written as lowercase hex text.
pub struct Hex;
/// An address written as text.
pub struct IpText;

impl ToText for [u8; 20] {
    #[inline]
    fn push_text(&self, buf: &mut Vec<u8>) {
        push_hex20(buf, self);
    }
}

impl ToText for ShortBytes {
    fn push_text(&self, buf: &mut Vec<u8>) {
        push_hex(buf, self.as_slice());
    }
}

/// An address in a row (`IpAddr` with a default, 0.0.0.0, as rows need).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ip(pub IpAddr);

impl Default for Ip {
    fn default() -> Self {
        Ip(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }
}

impl From<IpAddr> for Ip {
    fn from(ip: IpAddr) -> Self {
        Ip(ip)
    }
}

impl std::fmt::Display for Ip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Compares with an address's text (`r.src_ip == "10.0.0.1"` in tests and
/// filters): equal when the text parses to the same address.
impl PartialEq<&str> for Ip {
    fn eq(&self, other: &&str) -> bool {
        other.parse::<IpAddr>().is_ok_and(|ip| ip == self.0)
    }
}

impl ToText for Ip {
    fn push_text(&self, buf: &mut Vec<u8>) {
        push_ip(buf, self.0);
    }
}

/// The transport of a peer-wire connection (`connections.transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ConnTransport {
    #[default]
    Tcp,
    Utp,
}

impl ConnTransport {
    pub fn name(self) -> &'static str {
        match self {
            ConnTransport::Tcp => "tcp",
            ConnTransport::Utp => "utp",
        }
    }

    /// The IANA number of the flow carrying it (uTP rides on UDP).
    pub fn ip_proto(self) -> u8 {
        match self {
            ConnTransport::Tcp => super::community_id::PROTO_TCP,
            ConnTransport::Utp => super::community_id::PROTO_UDP,
        }
    }
}

impl ColumnValue for ConnTransport {
    type Builder = NameBuilder;
    fn dtype() -> DataType {
        DataType::String
    }
    fn type_doc() -> &'static str {
        "string"
    }
}

impl ColumnBuilder<ConnTransport> for NameBuilder {
    #[inline]
    fn push(&mut self, v: &ConnTransport) {
        ColumnBuilder::<&'static str>::push(self, &v.name());
    }
    fn bytes(&self) -> usize {
        ColumnBuilder::<&'static str>::bytes(self)
    }
    fn finish(&mut self, name: &str, dtype: &ArrowDataType) -> PolarsResult<Box<dyn Array>> {
        ColumnBuilder::<&'static str>::finish(self, name, dtype)
    }
}

/// A flow's Community ID v1 as its SHA-1 (see [`super::community_id`]);
/// None for a flow between address families (written as empty text).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CommunityId(pub Option<[u8; 20]>);

impl CommunityId {
    /// Of the flow between `a` and `b` with IANA protocol `proto`, seed 0.
    pub fn of(proto: u8, a: SocketAddr, b: SocketAddr) -> CommunityId {
        CommunityId(super::community_id::digest(
            0,
            proto,
            a.ip(),
            a.port(),
            b.ip(),
            b.port(),
        ))
    }
}

/// A Community ID written as its text (`1:` + base64).
pub struct CidText;

impl ToText for CommunityId {
    fn push_text(&self, buf: &mut Vec<u8>) {
        if let Some(d) = &self.0 {
            super::community_id::push_text(buf, d);
        }
    }
}

// A dictionary's hashes, from the value's bits as few integers as hold
// them: a 128-bit write is one keyed multiply, where `Hash` (derived) writes
// a length, an enum tag and bytes, and hashes a 20-byte id with the long
// byte path. Values that are equal give the same integers.

/// The hash of a 20-byte id: its first 16 bytes, then its last 4.
#[inline]
fn hash20(s: &foldhash::fast::RandomState, id: &[u8; 20]) -> u64 {
    let (a, b) = id.split_at(16);
    let a = u128::from_le_bytes(a.try_into().unwrap_or_default());
    let b = u32::from_le_bytes(b.try_into().unwrap_or_default());
    s.hash_one((a, b))
}

impl DictKey for [u8; 20] {
    #[inline]
    fn dict_hash(&self, s: &foldhash::fast::RandomState) -> u64 {
        hash20(s, self)
    }
}

impl DictKey for CommunityId {
    #[inline]
    fn dict_hash(&self, s: &foldhash::fast::RandomState) -> u64 {
        match &self.0 {
            Some(d) => hash20(s, d),
            None => s.hash_one(0u8),
        }
    }
}

impl DictKey for Ip {
    #[inline]
    fn dict_hash(&self, s: &foldhash::fast::RandomState) -> u64 {
        // An IPv4 address and the IPv6 address of the same 128-bit number
        // hash equally; `==` tells them apart.
        match self.0 {
            IpAddr::V4(a) => s.hash_one(u32::from(a)),
            IpAddr::V6(a) => s.hash_one(u128::from(a)),
        }
    }
}

impl DictKey for ShortBytes {
    #[inline]
    fn dict_hash(&self, s: &foldhash::fast::RandomState) -> u64 {
        match self {
            // The length and the 14 bytes (zero past the length): 15 bytes.
            ShortBytes::Inline { len, bytes } => {
                let mut b = [0u8; 16];
                b[0] = *len;
                b[1..15].copy_from_slice(bytes);
                s.hash_one(u128::from_le_bytes(b))
            }
            ShortBytes::Heap(b) => s.hash_one(&**b),
        }
    }
    #[inline]
    fn dict_eq(&self, other: &Self) -> bool {
        match (self, other) {
            // The 15 bytes as two words (derived `==` calls `memcmp`).
            (ShortBytes::Inline { len: a, bytes: x }, ShortBytes::Inline { len: b, bytes: y }) => {
                let words = |x: &[u8; ShortBytes::INLINE]| {
                    let lo = x.first_chunk::<8>().copied().map(u64::from_le_bytes);
                    let hi = x.last_chunk::<8>().copied().map(u64::from_le_bytes);
                    (lo, hi)
                };
                a == b && words(x) == words(y)
            }
            _ => self == other,
        }
    }
}

macro_rules! text_spec {
    ($marker:ty, $v:ty) => {
        impl ColumnSpec<$v> for $marker {
            type Builder = DictBuilder<Typed<$v>>;
            fn dtype() -> DataType {
                DataType::String
            }
            fn type_doc() -> &'static str {
                "string"
            }
        }
        impl ColumnSpec<Option<$v>> for $marker {
            type Builder = DictBuilder<Typed<$v>>;
            fn dtype() -> DataType {
                DataType::String
            }
            fn type_doc() -> &'static str {
                "string?"
            }
        }
    };
}

text_spec!(Hex, [u8; 20]);
text_spec!(Hex, ShortBytes);
text_spec!(IpText, Ip);
text_spec!(CidText, CommunityId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_what_to_string_and_hex_give() {
        for ip in [
            "0.0.0.0",
            "1.22.123.255",
            "10.0.100.9",
            "::1",
            "2001:db8::8:800:200c:417a",
            "::ffff:1.2.3.4",
            "255.255.255.255",
            "100.10.1.0",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut s = Vec::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string().as_bytes());
        }
        // Every octet value in every position.
        for o in 0..=255u8 {
            let ip = IpAddr::from([o, o / 3, 255 - o, o ^ 0x55]);
            let mut s = Vec::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string().as_bytes());
        }
        let mut s = b"x".to_vec();
        push_hex(&mut s, &[0, 0xab, 0x10, 0xff]);
        assert_eq!(s, b"x00ab10ff");
        let id: [u8; 20] = std::array::from_fn(|i| (i * 13) as u8);
        let mut s = Vec::new();
        push_hex20(&mut s, &id);
        let mut t = Vec::new();
        push_hex(&mut t, &id);
        assert_eq!(s, t);
        assert_eq!(&s[..8], b"000d1a27");
        for n in [0usize, 2, 14, 15, 40] {
            let b: Vec<u8> = (0..n as u8).collect();
            let sb = ShortBytes::new(&b);
            assert_eq!(sb.as_slice(), &b[..]);
            assert_eq!(matches!(sb, ShortBytes::Heap(_)), n > ShortBytes::INLINE);
        }
        // Ids, addresses and short bytes become the same text in their
        // columns (dictionary-encoded: see dict.rs).
        let mut b = <Hex as ColumnSpec<Option<[u8; 20]>>>::Builder::default();
        for v in [Some([0x1f; 20]), None, Some(id)] {
            b.push(&v);
        }
        let c = ColumnBuilder::<Option<[u8; 20]>>::finish(&mut b, "id", &ArrowDataType::LargeUtf8).unwrap();
        let hex_id = String::from_utf8(t).unwrap();
        assert_eq!(text_of(&*c), [Some("1f".repeat(20)), None, Some(hex_id)]);
        let mut b = <IpText as ColumnSpec<Ip>>::Builder::default();
        let ips = ["2001:db8::1", "10.0.0.1", "2001:db8::1"];
        for ip in ips {
            b.push(&Ip(ip.parse().unwrap()));
        }
        let c = ColumnBuilder::<Ip>::finish(&mut b, "ip", &ArrowDataType::LargeUtf8).unwrap();
        assert_eq!(text_of(&*c), ips.map(|s| Some(s.to_string())));
        let mut b = <Hex as ColumnSpec<ShortBytes>>::Builder::default();
        b.push(&ShortBytes::new(&[0xab, 0x01]));
        b.push(&ShortBytes::new(&[0x5a; 20]));
        let c = ColumnBuilder::<ShortBytes>::finish(&mut b, "tid", &ArrowDataType::LargeUtf8).unwrap();
        assert_eq!(text_of(&*c), [Some("ab01".into()), Some("5a".repeat(20))]);
    }

    fn text_of(a: &dyn Array) -> Vec<Option<String>> {
        let t = super::super::columns::names_as_text(a).unwrap();
        let t = t
            .as_any()
            .downcast_ref::<polars_arrow::array::Utf8Array<i64>>()
            .unwrap();
        t.iter().map(|s| s.map(str::to_string)).collect()
    }
}
