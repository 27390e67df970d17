//! Typed values whose text is made only here, at the sink edge: rows carry
//! ids as bytes and addresses as `IpAddr`, and the writer formats each cell
//! into one reused buffer straight into the column builder (no `String` per
//! cell). Used by the DHT tables, where a row per KRPC datagram made the
//! per-cell strings the largest cost of the run (bench/README.md, session 5).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use polars::prelude::*;

use super::columns::ColumnSpec;
use super::columns::ColumnValue;

/// A short byte string kept inline (transaction ids, `v`): up to
/// [`ShortBytes::INLINE`] bytes without allocating; longer ones (rare, and
/// bounded by the datagram) on the heap.
#[derive(Clone, PartialEq, Eq)]
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
        let mut s = String::new();
        push_hex(&mut s, self.as_slice());
        write!(f, "ShortBytes({s})")
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `b` as lowercase hex.
pub fn push_hex(buf: &mut String, b: &[u8]) {
    for &x in b {
        buf.push(char::from(HEX_DIGITS[usize::from(x >> 4)]));
        buf.push(char::from(HEX_DIGITS[usize::from(x & 15)]));
    }
}

/// Appends `ip` as text: dotted quad, or RFC 5952 for IPv6 (as std prints
/// it, the same text as `IpAddr::to_string`).
pub fn push_ip(buf: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push('.');
                }
                if o >= 100 {
                    buf.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    buf.push(char::from(b'0' + o / 10 % 10));
                }
                buf.push(char::from(b'0' + o % 10));
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(buf, "{ip}");
        }
    }
}

/// Text of a value, written into a reused buffer.
pub trait ToText {
    fn push_text(&self, buf: &mut String);
}

/// Bytes written as lowercase hex text.
pub struct Hex;
/// An address written as text.
pub struct IpText;

impl ToText for [u8; 20] {
    fn push_text(&self, buf: &mut String) {
        push_hex(buf, self);
    }
}

impl ToText for ShortBytes {
    fn push_text(&self, buf: &mut String) {
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

/// Compares with an address's text (`r.src_ip == "10.0.0.1"` in tests and
/// filters): equal when the text parses to the same address.
impl PartialEq<&str> for Ip {
    fn eq(&self, other: &&str) -> bool {
        other.parse::<IpAddr>().is_ok_and(|ip| ip == self.0)
    }
}

impl ToText for Ip {
    fn push_text(&self, buf: &mut String) {
        push_ip(buf, self.0);
    }
}

fn text_column<'a, V: ToText + 'a>(name: &str, values: impl ExactSizeIterator<Item = &'a V>) -> Column {
    let mut b = StringChunkedBuilder::new(name.into(), values.len());
    let mut buf = String::with_capacity(64);
    for v in values {
        buf.clear();
        v.push_text(&mut buf);
        b.append_value(buf.as_str());
    }
    b.finish().into_column()
}

fn opt_text_column<'a, V: ToText + 'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Option<V>>) -> Column {
    let mut b = StringChunkedBuilder::new(name.into(), values.len());
    let mut buf = String::with_capacity(64);
    for v in values {
        match v {
            Some(v) => {
                buf.clear();
                v.push_text(&mut buf);
                b.append_value(buf.as_str());
            }
            None => b.append_null(),
        }
    }
    b.finish().into_column()
}

macro_rules! text_spec {
    ($marker:ty, $v:ty) => {
        impl ColumnSpec<$v> for $marker {
            fn dtype() -> DataType {
                DataType::String
            }
            fn type_doc() -> &'static str {
                "string"
            }
            fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a $v>) -> Column {
                text_column(name, values)
            }
        }
        impl ColumnSpec<Option<$v>> for $marker {
            fn dtype() -> DataType {
                DataType::String
            }
            fn type_doc() -> &'static str {
                "string?"
            }
            fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Option<$v>>) -> Column {
                opt_text_column(name, values)
            }
        }
    };
}

text_spec!(Hex, [u8; 20]);
text_spec!(Hex, ShortBytes);
text_spec!(IpText, Ip);

/// Text that is a static name almost always (a method name) and owned
/// only when the wire sent something else.
impl ColumnValue for Option<Cow<'static, str>> {
    fn dtype() -> DataType {
        DataType::String
    }
    fn type_doc() -> &'static str {
        "string?"
    }
    fn column<'a>(name: &str, values: impl ExactSizeIterator<Item = &'a Self>) -> Column {
        StringChunked::from_iter_options(name.into(), values.map(|s| s.as_deref())).into_column()
    }
}

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
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut s = String::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
        let mut s = String::new();
        push_hex(&mut s, &[0, 0xab, 0x10, 0xff]);
        assert_eq!(s, "00ab10ff");
        for n in [0usize, 2, 14, 15, 40] {
            let b: Vec<u8> = (0..n as u8).collect();
            let sb = ShortBytes::new(&b);
            assert_eq!(sb.as_slice(), &b[..]);
            assert_eq!(matches!(sb, ShortBytes::Heap(_)), n > ShortBytes::INLINE);
        }
        let c = <Hex as ColumnSpec<Option<[u8; 20]>>>::column("id", [Some([0x1f; 20]), None].iter());
        let got: Vec<Option<&str>> = c.str().unwrap().iter().collect();
        assert_eq!(got, [Some("1f".repeat(20).as_str()), None]);
    }
}
