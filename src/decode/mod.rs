//! Link layer → IP → TCP/UDP decoding of one captured frame.
//!
//! Link types: Ethernet (with 802.1Q / 802.1ad / QinQ tags), Linux cooked
//! capture v1 and v2, raw IPv4/IPv6 (LINKTYPE_RAW, IPV4, IPV6), BSD loopback
//! (NULL, host byte order; LOOP, network byte order). IP and TCP/UDP headers,
//! IPv6 extension headers included, are sliced by `etherparse` without
//! copying. A decoded packet refers to its payload by offset into the frame,
//! so it can travel to a shard without borrowing.
//!
//! Nothing here fails loudly: a frame is either a TCP/UDP packet or a named
//! outcome that the pipeline counts.

use std::net::IpAddr;

use etherparse::{LaxIpSlice, TcpSlice, UdpSlice};

/// LINKTYPE_* values handled here (tcpdump.org/linktypes.html).
pub mod linktype {
    pub const NULL: u16 = 0;
    pub const ETHERNET: u16 = 1;
    pub const RAW_OPENBSD: u16 = 12;
    pub const RAW_BSD: u16 = 14;
    pub const RAW: u16 = 101;
    pub const LOOP: u16 = 108;
    pub const LINUX_SLL: u16 = 113;
    pub const IPV4: u16 = 228;
    pub const IPV6: u16 = 229;
    pub const LINUX_SLL2: u16 = 276;
}

/// TCP flag bits as in the header's 13th byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp { seq: u32, ack: u32, flags: u8 },
    Udp,
}

/// A decoded TCP or UDP packet; payload bytes are
/// `frame[payload_off .. payload_off + payload_len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub transport: Transport,
    pub payload_off: u32,
    pub payload_len: u32,
    /// Payload bytes the IP header announces but the capture does not hold
    /// (snaplen cut). TCP reassembly turns them into a gap.
    pub payload_missing: u32,
    /// The TCP/UDP checksum, verified.
    pub checksum: Checksum,
}

/// What the TCP or UDP checksum (RFC 9293 §3.1, RFC 768, RFC 8200 §8.1)
/// says of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    Good,
    /// Not checkable: the segment is cut by the snaplen, or UDP over IPv4
    /// without a checksum (0, allowed by RFC 768).
    Unchecked,
    /// Wrong, in the pattern checksum offload leaves in packets captured on
    /// the host that sent them before the NIC filled the checksum in: 0, or
    /// the pseudo-header's sum (Linux CHECKSUM_PARTIAL) or its complement.
    /// The pipeline decides whether the sender is such a host.
    Offloaded,
    /// Wrong.
    Bad,
}

/// Ones'-complement sum of `b` as big-endian 16-bit words (odd length
/// padded with a zero byte), folded to 16 bits: [`ones_sum_le`]'s sum with
/// its bytes swapped (the ones'-complement sum of byte-swapped 16-bit words
/// is the byte-swapped sum, RFC 1071 §2(B)).
#[cfg(test)]
fn ones_sum(b: &[u8]) -> u32 {
    let s = ones_sum_le(0, b);
    ((s & 0xff) << 8) | (s >> 8)
}

/// `init` plus the ones'-complement sum of `b` as 16-bit words in the
/// machine's (little-endian) order (odd length padded with a zero byte),
/// folded to 16 bits modulo 0xffff: 0 only when both are 0.
///
/// It runs over every payload byte of every packet, most of them short
/// (a mixed capture averages ~180 bytes a segment), so the work per call
/// matters as much as per byte. It adds 8 bytes at a time read in the
/// machine's order, and the last 1–7 bytes with one 8-byte read that ends
/// at the buffer's end (shifted so that each byte sits at its own offset):
/// 2^16 ≡ 1 mod 0xffff, so adding 64-bit words, and folding 2^64 into 1,
/// gives the same value as adding 16-bit words.
///
/// On x86-64 the words go through one add-with-carry chain
/// (`_addcarry_u64`, safe and in the baseline instruction set): each
/// carry out of 2^64 is added back by the next word (the end-around carry
/// of RFC 1071 §2(C)), one instruction per 8 bytes, in blocks of 256 bytes
/// and then at most one block each of 128, 64, 32, 16 and 8 for the rest
/// (bench/README.md "Session 11 — bulk": ~40 % fewer instructions than
/// [`ones_sum_le_portable`] on full-size segments).
/// Inlined into `verify_segment` (one call a packet; left to itself the
/// compiler called it once `verify_segment` had two callers).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn ones_sum_le(init: u64, b: &[u8]) -> u32 {
    use std::arch::x86_64::_addcarry_u64;
    /// Adds `words`' 8-byte words (its length a multiple of 8) to `acc`
    /// with carry `c` in; the carry out.
    #[inline(always)]
    fn add(mut c: u8, acc: &mut u64, words: &[u8]) -> u8 {
        for w in words.chunks_exact(8) {
            c = _addcarry_u64(c, *acc, le64(w), acc);
        }
        c
    }
    let (mut acc, mut c) = (init, 0u8);
    let mut blocks = b.chunks_exact(256);
    for blk in &mut blocks {
        c = add(c, &mut acc, blk);
    }
    let mut rest = blocks.remainder();
    for n in [128, 64, 32, 16, 8] {
        if let Some((words, after)) = rest.split_at_checked(n) {
            c = add(c, &mut acc, words);
            rest = after;
        }
    }
    if !rest.is_empty() {
        c = _addcarry_u64(c, acc, last_bytes(b, rest), &mut acc);
    }
    fold64(u128::from(acc) + u128::from(c))
}

/// [`ones_sum_le`] without the carry chain: two 128-bit accumulators (an add
/// and an add-with-carry each, nothing to overflow below 2^66 bytes).
/// Elsewhere than x86-64 it is `ones_sum_le`; on x86-64 the tests hold the
/// chain to it.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn ones_sum_le_portable(init: u64, b: &[u8]) -> u32 {
    let (mut a0, mut a1) = (u128::from(init), 0u128);
    let mut blocks = b.chunks_exact(32);
    for blk in &mut blocks {
        a0 += u128::from(le64(&blk[0..8]));
        a1 += u128::from(le64(&blk[8..16]));
        a0 += u128::from(le64(&blk[16..24]));
        a1 += u128::from(le64(&blk[24..32]));
    }
    let mut acc = a0 + a1;
    let mut words = blocks.remainder().chunks_exact(8);
    for w in &mut words {
        acc += u128::from(le64(w));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        acc += u128::from(last_bytes(b, tail));
    }
    fold64(acc)
}

#[cfg(not(target_arch = "x86_64"))]
use ones_sum_le_portable as ones_sum_le;

#[inline(always)]
fn le64(w: &[u8]) -> u64 {
    u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
}

/// The last 1–7 bytes of `b` (`tail`, its end) as a machine-order word with
/// each byte at its own offset: one 8-byte read ending at the end, shifted,
/// when `b` has 8 bytes.
#[inline(always)]
fn last_bytes(b: &[u8], tail: &[u8]) -> u64 {
    let r = tail.len();
    match b.len().checked_sub(8).and_then(|at| b.get(at..)) {
        Some(w) => le64(w) >> (8 * (8 - r)),
        None => tail
            .iter()
            .enumerate()
            .fold(0u64, |t, (i, &x)| t | u64::from(x) << (8 * i)),
    }
}

/// `x` folded to 16 bits modulo 0xffff (end-around carries): 0 only for 0.
#[inline]
fn fold64(x: u128) -> u32 {
    let (s, c) = (x as u64).overflowing_add((x >> 64) as u64);
    let s = s + u64::from(c);
    // Below 2^33, then 2^18, then 0x10002, then 2^16.
    let mut s = (s & 0xffff_ffff) + (s >> 32);
    for _ in 0..3 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u32
}

fn fold16(mut s: u32) -> u32 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

/// The sum of an address's 16-bit words as ones_sum gives it: its
/// big-endian value folded (the words of a number read big-endian are
/// its 16-bit digits). The tests' network-order oracle.
#[cfg(test)]
fn addr_sum(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(a) => fold64(u128::from(u32::from(a))),
        IpAddr::V6(a) => fold64(u128::from(a)),
    }
}

/// The pseudo-header's words `verify_segment` adds (the addresses, the
/// protocol and the two 16-bit halves of the length) as [`ones_sum_le`]
/// reads them: each word byte-swapped, summed with end-around carries
/// into 64 bits. The addresses (`addrs`: 8 or 32 bytes) are read as
/// little-endian 8-byte words: an IPv4 pair is one word, the source's
/// value plus the destination's times 2^32, and 2^32 ≡ 1 modulo 0xffff,
/// so the sum is the words' sum modulo 0xffff (all a ones'-complement sum
/// keeps), and it is never 0 (the protocol word is not).
#[inline]
fn pseudo_le(addrs: &[u8], proto: u8, len: u32) -> u64 {
    let words = u16::from(proto).swap_bytes() as u128
        + ((len >> 16) as u16).swap_bytes() as u128
        + (len as u16).swap_bytes() as u128;
    // Below 2^67: one fold into 64 bits and its carry.
    let x = addrs.chunks_exact(8).fold(words, |x, w| x + u128::from(le64(w)));
    let (s, c) = (x as u64).overflowing_add((x >> 64) as u64);
    s + u64::from(c)
}

/// Verifies the checksum of transport segment `seg` (header and payload,
/// `wire_len` bytes on the wire) carried between `src` and `dst`: the
/// general path's form ([`decode_ip`]), over [`verify_segment`].
fn verify_checksum(src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8], wire_len: usize) -> Checksum {
    let mut addrs = [0u8; 32];
    let n = match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            addrs[..4].copy_from_slice(&a.octets());
            addrs[4..8].copy_from_slice(&b.octets());
            8
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            addrs[..16].copy_from_slice(&a.octets());
            addrs[16..].copy_from_slice(&b.octets());
            32
        }
        _ => return Checksum::Unchecked,
    };
    verify_segment(addrs.get(..n).unwrap_or_default(), proto, seg, wire_len)
}

/// Verifies the checksum of transport segment `seg` (header and payload,
/// `wire_len` bytes on the wire) whose pseudo-header addresses are `addrs`:
/// the source's then the destination's octets as the IP header holds them
/// (8 bytes for IPv4, 32 for IPv6). The plain path hands the header's own
/// bytes, with no `IpAddr` to take apart (bench/README.md "Session 12 —
/// decode": ~20 fewer instructions a segment than reading the addresses
/// back out of two `IpAddr`s).
#[inline]
fn verify_segment(addrs: &[u8], proto: u8, seg: &[u8], wire_len: usize) -> Checksum {
    let field_at = if proto == 6 { 16 } else { 6 };
    let Some(field) = seg
        .get(field_at..field_at + 2)
        .map(|f| u32::from(u16::from_be_bytes([f[0], f[1]])))
    else {
        return Checksum::Unchecked;
    };
    if seg.len() < wire_len {
        return Checksum::Unchecked;
    }
    if proto == 17 && field == 0 && addrs.len() == 8 {
        return Checksum::Unchecked;
    }
    let seg = seg.get(..wire_len).unwrap_or(seg);
    let len = seg.len() as u32;
    // Right when the pseudo-header's and the segment's words sum to 0
    // modulo 0xffff (the sum is never 0: `proto` is not). Summed in the
    // machine's word order, where each word is byte-swapped, i.e. times
    // 2^8 modulo 0xffff (coprime to it): 0 there exactly when 0 in
    // network order.
    if ones_sum_le(pseudo_le(addrs, proto, len), seg) == 0xffff {
        return Checksum::Good;
    }
    // Wrong: the pseudo-header's network-order sum tells the offload
    // patterns apart (at most 16 address words, no overflow). Summed here
    // word by word rather than by a second `ones_sum_le` call, which kept
    // the compiler from inlining the first.
    let a: u32 = addrs
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let pseudo = fold16(a + u32::from(proto) + (len >> 16) + (len & 0xffff));
    if field == 0 || field == pseudo || field == (!pseudo & 0xffff) {
        Checksum::Offloaded
    } else {
        Checksum::Bad
    }
}

/// What decoding a frame gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    Packet(Packet),
    /// Not IP (ARP, LLDP, …): counted, not an anomaly.
    NotIp,
    /// IP, but neither TCP nor UDP (ICMP, …).
    OtherIp,
    /// A fragment of a fragmented IP datagram (not reassembled; counted).
    Fragment,
    /// A malformed or truncated header: the anomaly kind.
    Error(&'static str),
    /// A link type this module does not decode.
    UnknownLink,
}

/// Most VLAN tags accepted in a row (QinQ is 2; a loop of tags is hostile).
const MAX_VLAN_TAGS: usize = 4;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Offset of the IP header within the frame, or the outcome if there is none.
fn ip_offset(link_type: u16, frame: &[u8]) -> Result<usize, Decoded> {
    let ethertype_at = |mut et_off: usize| -> Result<usize, Decoded> {
        for _ in 0..=MAX_VLAN_TAGS {
            let et = be16(frame, et_off).ok_or(Decoded::Error("truncated_link_header"))?;
            match et {
                0x0800 | 0x86DD => return Ok(et_off + 2),
                0x8100 | 0x88A8 | 0x9100 => et_off += 4,
                _ => return Err(Decoded::NotIp),
            }
        }
        Err(Decoded::Error("too_many_vlan_tags"))
    };
    match link_type {
        linktype::ETHERNET => ethertype_at(12),
        linktype::LINUX_SLL => ethertype_at(14),
        linktype::LINUX_SLL2 => {
            let et = be16(frame, 0).ok_or(Decoded::Error("truncated_link_header"))?;
            if frame.len() < 20 {
                return Err(Decoded::Error("truncated_link_header"));
            }
            match et {
                0x0800 | 0x86DD => Ok(20),
                _ => Err(Decoded::NotIp),
            }
        }
        linktype::RAW | linktype::RAW_BSD | linktype::RAW_OPENBSD | linktype::IPV4 | linktype::IPV6 => Ok(0),
        linktype::NULL | linktype::LOOP => {
            let fam = frame.get(..4).ok_or(Decoded::Error("truncated_link_header"))?;
            // NULL is in the capturing host's byte order: accept either.
            let le = u32::from_le_bytes([fam[0], fam[1], fam[2], fam[3]]);
            let be = u32::from_be_bytes([fam[0], fam[1], fam[2], fam[3]]);
            // AF_INET is 2 everywhere; AF_INET6 is 24, 28 or 30 by OS.
            let is_ip = |f: u32| matches!(f, 2 | 24 | 28 | 30);
            if is_ip(le) || is_ip(be) {
                Ok(4)
            } else {
                Err(Decoded::NotIp)
            }
        }
        _ => Err(Decoded::UnknownLink),
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Decodes one frame. Never panics; `frame` may be cut by the snaplen.
///
/// Inlined into its caller (the pipeline's decode closure, one call per
/// frame): the result is built in the caller's slot rather than returned
/// and copied (it is 64 bytes), and the call's register saves go.
#[inline]
pub fn decode(link_type: u16, frame: &[u8]) -> Decoded {
    let mut d = Decoded::NotIp;
    decode_into(link_type, frame, &mut d);
    d
}

/// [`decode`], written into `out` (the pipeline's decode closure, once a
/// frame, into the frame's slot). Each outcome is stored where it is
/// found: a fragment or another protocol stores its variant alone, a
/// packet is built in the slot. Returned by value, every outcome met at
/// one place where the whole 64-byte value was assembled on the stack
/// and then copied into the slot, for every frame (bench/README.md
/// "Session 14 — mixed").
#[inline]
pub fn decode_into(link_type: u16, frame: &[u8], out: &mut Decoded) {
    // Untagged Ethernet carrying IP, nearly every frame: `ip_offset`'s
    // answer (14) without its call and its switch over link types.
    let plain_ethernet = link_type == linktype::ETHERNET && matches!(be16(frame, 12), Some(0x0800 | 0x86DD));
    let off = if plain_ethernet {
        14
    } else {
        match ip_offset(link_type, frame) {
            Ok(o) => o,
            Err(d) => {
                *out = d;
                return;
            }
        }
    };
    let Some(ip_bytes) = frame.get(off..) else {
        *out = Decoded::Error("truncated_link_header");
        return;
    };
    if decode_plain_into(off, ip_bytes, out).is_some() {
        return;
    }
    *out = decode_ip(off, ip_bytes);
}

/// The plain shapes of nearly every packet, read straight from the
/// headers: IPv4 without options and not a fragment, or IPv6 (with at most
/// one each of hop-by-hop, routing, destination options and
/// authentication headers), each whole in the capture (its length field
/// within the captured bytes) and carrying a whole TCP header or a UDP
/// datagram whose length field is the IP payload's. `None` for anything else, which
/// [`decode_ip`] (etherparse) decodes; on the shapes taken here both give
/// the same `Packet` (a test compares them on every frame of the samples
/// and corpora, and on mutated headers).
#[cfg(test)]
fn decode_plain(off: usize, ip: &[u8]) -> Option<Decoded> {
    let mut d = Decoded::NotIp;
    decode_plain_into(off, ip, &mut d).map(|()| d)
}

/// [`decode_plain`], written into `out` where each outcome is found (see
/// [`decode_into`]); `None` (and `out` untouched) for the general path.
#[inline]
fn decode_plain_into(off: usize, ip: &[u8], out: &mut Decoded) -> Option<()> {
    let (src, dst, addrs, proto, hdr_len, seg_len) = match ip.first()? >> 4 {
        4 => {
            let h = ip.get(..20)?;
            if h[0] != 0x45 {
                return None;
            }
            let total = usize::from(be16(h, 2)?);
            if total < 20 || total > ip.len() {
                return None;
            }
            // More fragments, or a fragment offset.
            if be16(h, 6)? & 0x3fff != 0 {
                *out = Decoded::Fragment;
                return Some(());
            }
            let a = IpAddr::from([h[12], h[13], h[14], h[15]]);
            let b = IpAddr::from([h[16], h[17], h[18], h[19]]);
            (a, b, h.get(12..20)?, h[9], 20, total - 20)
        }
        6 => {
            let h = ip.get(..40)?;
            let plen = usize::from(be16(h, 4)?);
            if plen == 0 || 40 + plen > ip.len() {
                return None;
            }
            let mut a = [0u8; 16];
            let mut b = [0u8; 16];
            a.copy_from_slice(h.get(8..24)?);
            b.copy_from_slice(h.get(24..40)?);
            // Extension headers before the transport header: hop-by-hop
            // options (first only), routing, fragment, destination options
            // and authentication headers, each at most once, whole inside
            // the payload length; anything else (a repeat, an extension
            // header not listed) is the general path's.
            let (mut next, mut at, mut seen) = (h[6], 40usize, 0u8);
            loop {
                let (bit, len) = match next {
                    0 if at == 40 => (1, (usize::from(*ip.get(at + 1)?) + 1) * 8),
                    43 => (2, (usize::from(*ip.get(at + 1)?) + 1) * 8),
                    44 => (16, 8),
                    60 => (4, (usize::from(*ip.get(at + 1)?) + 1) * 8),
                    51 if *ip.get(at + 1)? > 0 => (8, (usize::from(*ip.get(at + 1)?) + 2) * 4),
                    p if p == 6 || p == 17 || other_ip(p) => break,
                    _ => return None,
                };
                if seen & bit != 0 || at + len > 40 + plen {
                    return None;
                }
                // A fragment offset, or more fragments (an atomic fragment
                // header, neither, is passed over).
                if next == 44 && be16(ip, at + 2)? & 0xfff9 != 0 {
                    *out = Decoded::Fragment;
                    return Some(());
                }
                seen |= bit;
                next = *ip.get(at)?;
                at += len;
            }
            (
                IpAddr::from(a),
                IpAddr::from(b),
                h.get(8..40)?,
                next,
                at,
                40 + plen - at,
            )
        }
        _ => return None,
    };
    let seg = ip.get(hdr_len..hdr_len + seg_len)?;
    let seg_off = off + hdr_len;
    match proto {
        6 => {
            let hdr = usize::from(*seg.get(12)? >> 4) * 4;
            if hdr < 20 || hdr > seg.len() {
                return None;
            }
            *out = Decoded::Packet(Packet {
                src,
                dst,
                sport: be16(seg, 0)?,
                dport: be16(seg, 2)?,
                transport: Transport::Tcp {
                    seq: be32(seg, 4)?,
                    ack: be32(seg, 8)?,
                    flags: *seg.get(13)?,
                },
                payload_off: (seg_off + hdr) as u32,
                payload_len: (seg.len() - hdr) as u32,
                payload_missing: 0,
                checksum: verify_segment(addrs, 6, seg, seg.len()),
            });
            Some(())
        }
        p if other_ip(p) => {
            *out = Decoded::OtherIp;
            Some(())
        }
        17 => {
            if seg.len() < 8 || usize::from(be16(seg, 4)?) != seg.len() {
                return None;
            }
            *out = Decoded::Packet(Packet {
                src,
                dst,
                sport: be16(seg, 0)?,
                dport: be16(seg, 2)?,
                transport: Transport::Udp,
                payload_off: (seg_off + 8) as u32,
                payload_len: (seg.len() - 8) as u32,
                payload_missing: 0,
                checksum: verify_segment(addrs, 17, seg, seg.len()),
            });
            Some(())
        }
        _ => None,
    }
}

/// IP protocols the plain path counts as `OtherIp` without looking
/// further: common ones that are neither TCP/UDP nor, to etherparse, an
/// extension header (ICMP, IGMP, IP in IP, IPv6 in IP, GRE, ESP, ICMPv6,
/// OSPF, PIM, VRRP, SCTP).
fn other_ip(p: u8) -> bool {
    matches!(p, 1 | 2 | 4 | 41 | 47 | 50 | 58 | 89 | 103 | 112 | 132)
}

/// Decodes the IP packet at `ip_bytes` (at offset `off` in its frame)
/// with etherparse: every shape, options, extension headers and cut or
/// inconsistent lengths included.
fn decode_ip(off: usize, ip_bytes: &[u8]) -> Decoded {
    let ip = match LaxIpSlice::from_slice(ip_bytes) {
        Ok((ip, _ext_err)) => ip,
        Err(_) => return Decoded::Error("bad_ip_header"),
    };
    if ip.is_fragmenting_payload() {
        return Decoded::Fragment;
    }
    let p = ip.payload();
    let proto = p.ip_number.0;
    // Where the transport header starts in the frame, and how long the IP
    // layer says the transport segment is.
    let seg = p.payload;
    let seg_off = off + (seg.as_ptr() as usize - ip_bytes.as_ptr() as usize);
    let wire_seg_len = match &ip {
        LaxIpSlice::Ipv4(v4) => {
            let h = v4.header();
            let total = usize::from(h.total_len());
            let before = seg_off - off;
            if p.len_source == etherparse::LenSource::Ipv4HeaderTotalLen || total >= before {
                total.saturating_sub(before).max(seg.len())
            } else {
                seg.len()
            }
        }
        LaxIpSlice::Ipv6(v6) => {
            let plen = usize::from(v6.header().payload_length());
            let before = seg_off - off - 40;
            if plen == 0 {
                // Jumbogram or unset length: trust the capture.
                seg.len()
            } else {
                plen.saturating_sub(before).max(seg.len())
            }
        }
    };
    let (src, dst) = (ip.source_addr(), ip.destination_addr());
    match proto {
        6 => {
            let Ok(tcp) = TcpSlice::from_slice(seg) else {
                return Decoded::Error("bad_tcp_header");
            };
            let hdr = tcp.header_slice().len();
            let payload = tcp.payload();
            let flags = seg.get(13).copied().unwrap_or(0);
            Decoded::Packet(Packet {
                src,
                dst,
                sport: tcp.source_port(),
                dport: tcp.destination_port(),
                transport: Transport::Tcp {
                    seq: tcp.sequence_number(),
                    ack: tcp.acknowledgment_number(),
                    flags,
                },
                payload_off: (seg_off + hdr) as u32,
                payload_len: payload.len() as u32,
                payload_missing: wire_seg_len.saturating_sub(hdr + payload.len()) as u32,
                checksum: verify_checksum(src, dst, 6, seg, wire_seg_len),
            })
        }
        17 => {
            let Ok(udp) = UdpSlice::from_slice_lax(seg) else {
                return Decoded::Error("bad_udp_header");
            };
            let payload = udp.payload();
            Decoded::Packet(Packet {
                src,
                dst,
                sport: udp.source_port(),
                dport: udp.destination_port(),
                transport: Transport::Udp,
                payload_off: (seg_off + 8) as u32,
                payload_len: payload.len() as u32,
                payload_missing: wire_seg_len.saturating_sub(8 + payload.len()) as u32,
                checksum: verify_checksum(src, dst, 17, seg, wire_seg_len),
            })
        }
        _ => Decoded::OtherIp,
    }
}

/// IP protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The key of [`FlowKey::shard_hash`], drawn from the capture's first
/// frame (its timestamp, length and bytes, through SHA-1).
///
/// Most of a run does not depend on which shard a flow lands in: flows are
/// independent of their shard, and the flow table shares its room and
/// evicts across shards (`Limits::max_flows`, `Shard::make_room`). The
/// per-shard bounds do (pending KRPC queries and UDP tracker transactions,
/// the piece buffers: `Limits::dht`, `tracker_udp_pending`,
/// `max_piece_buffer_total`): once a flood fills one, which entries it
/// drops depends on its shard's other flows. A key drawn at random per
/// process made two runs over the same flood write different rows (a
/// 600 k-datagram DHT flood: `anomalies` and `flows` differed); a key from
/// the capture gives the same output for the same input, on any machine.
/// It stays unknown to a sender who does not have the capture's first
/// packet to the microsecond (an attacker who wrote that packet, or who
/// knows it, can aim tuples at one shard again, as it could with FNV: it
/// then fills that shard's bounds and no other's).
#[derive(Debug, Clone)]
pub struct ShardKey(foldhash::quality::FixedState);

impl ShardKey {
    /// From the first frame of a run: its capture time, original length
    /// and captured bytes.
    pub fn from_first_frame(ts_us: i64, orig_len: u32, data: &[u8]) -> ShardKey {
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        h.update(b"swarmtap shard key v1");
        h.update(ts_us.to_le_bytes());
        h.update(orig_len.to_le_bytes());
        h.update(data);
        let d = h.finalize();
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&d[..8]);
        ShardKey(foldhash::quality::FixedState::with_seed(u64::from_le_bytes(seed)))
    }
}

/// An endpoint as one integer ordered as `(IpAddr, u16)` is: IPv4 before
/// IPv6 (the enum's order), then the address's big-endian value (its
/// octets' order), then the port. Two integer compares instead of the
/// derived comparison of tuples of enums of byte arrays (every packet's
/// key is made at least once).
#[inline]
fn endpoint_rank((ip, port): (IpAddr, u16)) -> (bool, u128, u16) {
    match ip {
        IpAddr::V4(v) => (false, u128::from(u32::from(v)), port),
        IpAddr::V6(v) => (true, u128::from(v), port),
    }
}

/// A direction-free flow key: the lower endpoint first, so both directions of
/// a flow map to the same key (and the same shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub proto: Proto,
    pub a: (IpAddr, u16),
    pub b: (IpAddr, u16),
}

/// Three words per key instead of the derived hash's ten writes (enum
/// tags, array lengths, bytes): the key is hashed for every packet, once
/// for its shard and once in its shard's table. Equal keys write equal
/// words (Eq is field-wise); the family bits keep an IPv4 address apart
/// from the IPv6 address with the same low bits.
impl std::hash::Hash for FlowKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (a, fa) = addr_word(self.a.0);
        let (b, fb) = addr_word(self.b.0);
        hash_key_words(state, self.proto, (a, fa, self.a.1), (b, fb, self.b.1));
    }
}

/// An address as the key's hash writes it: its value and its family bit.
#[inline]
fn addr_word(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(v) => (u128::from(u32::from(v)), false),
        IpAddr::V6(v) => (u128::from(v), true),
    }
}

/// The words [`FlowKey`]'s hash writes, endpoint `a` (the lower) first,
/// each as (address value, IPv6, port): [`Packet::shard_hash`] writes the
/// same ones without building the key.
#[inline(always)]
fn hash_key_words<H: std::hash::Hasher>(state: &mut H, proto: Proto, a: (u128, bool, u16), b: (u128, bool, u16)) {
    state.write_u128(a.0);
    state.write_u128(b.0);
    state.write_u64(
        u64::from(a.2) | u64::from(b.2) << 16 | u64::from(a.1) << 32 | u64::from(b.1) << 33 | (proto as u64) << 34,
    );
}

impl Packet {
    /// `FlowKey::of(self).0.shard_hash(key)`, the same value, without
    /// building the key: each address is taken apart once, and the two
    /// 17-byte `IpAddr`s are not copied into a key only to be hashed
    /// (the pipeline's decode closure, once a packet).
    #[inline]
    pub fn shard_hash(&self, key: &ShardKey) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let proto = match self.transport {
            Transport::Tcp { .. } => Proto::Tcp,
            Transport::Udp => Proto::Udp,
        };
        let (vs, fs) = addr_word(self.src);
        let (vd, fd) = addr_word(self.dst);
        let s = (vs, fs, self.sport);
        let d = (vd, fd, self.dport);
        // `endpoint_rank`'s order: family, value, port.
        let (a, b) = if (fs, vs, self.sport) <= (fd, vd, self.dport) {
            (s, d)
        } else {
            (d, s)
        };
        let mut h = key.0.build_hasher();
        hash_key_words(&mut h, proto, a, b);
        h.finish()
    }
}

impl FlowKey {
    /// The canonical key of a packet and whether it travels from `a` to `b`.
    #[inline]
    pub fn of(p: &Packet) -> (FlowKey, bool) {
        let proto = match p.transport {
            Transport::Tcp { .. } => Proto::Tcp,
            Transport::Udp => Proto::Udp,
        };
        let s = (p.src, p.sport);
        let d = (p.dst, p.dport);
        if endpoint_rank(s) <= endpoint_rank(d) {
            (FlowKey { proto, a: s, b: d }, true)
        } else {
            (FlowKey { proto, a: d, b: s }, false)
        }
    }

    /// The shard hash: foldhash's quality variant under the run's
    /// [`ShardKey`]. The 5-tuple is chosen by whoever sends the packets;
    /// FNV-1a taken modulo 64 kept only the low 6 bits of every byte, so
    /// 4,700 SYNs could be aimed at the shard of one valid connection. A key
    /// the sender cannot know makes the shard of a tuple unpredictable (a
    /// passive analyzer shows the attacker no hash, so the key cannot be
    /// learnt from timing of answers), and the quality variant's final
    /// avalanche spreads it over the low bits the modulo keeps. SipHash-1-3
    /// (std's) did the same at 6 % of a run on mixed traffic.
    pub fn shard_hash(&self, key: &ShardKey) -> u64 {
        use std::hash::BuildHasher;
        key.0.hash_one(self)
    }

    /// A hash that is the same in every run and on every machine. FNV-1a
    /// over the key's bytes: predictable, so not for choosing shards.
    pub fn stable_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: &[u8]| {
            for &x in b {
                h ^= u64::from(x);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(&[self.proto as u8]);
        for (ip, port) in [self.a, self.b] {
            match ip {
                IpAddr::V4(v) => eat(&v.octets()),
                IpAddr::V6(v) => eat(&v.octets()),
            }
            eat(&port.to_be_bytes());
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth_ipv4_tcp(payload: &[u8], vlan: bool) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if vlan {
            f.extend([0x81, 0x00, 0x00, 0x05]);
        }
        f.extend([0x08, 0x00]);
        let total = (20 + 20 + payload.len()) as u16;
        f.extend([0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0x40, 0, 64, 6, 0, 0]);
        f.extend([10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend(6881u16.to_be_bytes());
        f.extend(51413u16.to_be_bytes());
        f.extend(1000u32.to_be_bytes());
        f.extend(2000u32.to_be_bytes());
        f.extend([0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn ethernet_vlan_tcp() {
        for vlan in [false, true] {
            let f = eth_ipv4_tcp(b"hello", vlan);
            let Decoded::Packet(p) = decode(linktype::ETHERNET, &f) else {
                panic!("not decoded");
            };
            assert_eq!(p.sport, 6881);
            assert_eq!(p.dport, 51413);
            assert_eq!(
                p.transport,
                Transport::Tcp {
                    seq: 1000,
                    ack: 2000,
                    flags: 0x18
                }
            );
            let off = p.payload_off as usize;
            assert_eq!(&f[off..off + p.payload_len as usize], b"hello");
            assert_eq!(p.payload_missing, 0);
        }
    }

    #[test]
    fn checksums_are_verified_and_offload_patterns_told_apart() {
        let mut f = eth_ipv4_tcp(b"hello", false);
        // The frame is built with checksum 0: the offload pattern.
        let Decoded::Packet(p) = decode(linktype::ETHERNET, &f) else {
            panic!()
        };
        assert_eq!(p.checksum, Checksum::Offloaded);
        // Fill in the right checksum (computed independently, word by word).
        let seg = f[34..].to_vec();
        let mut sum: u32 = 0;
        let mut words = vec![10u16 << 8, 1, 10 << 8, 2, 6, seg.len() as u16];
        words.extend(
            seg.chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])),
        );
        for w in words {
            sum += u32::from(w);
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let ck = !(sum as u16);
        f[50..52].copy_from_slice(&ck.to_be_bytes());
        let Decoded::Packet(p) = decode(linktype::ETHERNET, &f) else {
            panic!()
        };
        assert_eq!(p.checksum, Checksum::Good);
        // One flipped payload byte: bad.
        let last = f.len() - 1;
        f[last] ^= 0x20;
        let Decoded::Packet(p) = decode(linktype::ETHERNET, &f) else {
            panic!()
        };
        assert_eq!(p.checksum, Checksum::Bad);
        // Cut by the snaplen: not checkable.
        let Decoded::Packet(p) = decode(linktype::ETHERNET, &f[..f.len() - 2]) else {
            panic!()
        };
        assert_eq!(p.checksum, Checksum::Unchecked);
    }

    /// The 8-byte, machine-order sum against RFC 1071's definition (16-bit
    /// big-endian words, an odd byte padded), at every length up to 300 (and
    /// full-size segments) and alignment, with bytes that make every carry
    /// path run (0xff runs).
    #[test]
    fn ones_sum_matches_the_word_by_word_definition() {
        fn reference(b: &[u8]) -> u32 {
            let mut sum: u64 = b
                .chunks(2)
                .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
                .sum();
            while sum >> 16 != 0 {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            sum as u32
        }
        let mut x: u32 = 0x1234_5678;
        let bytes: Vec<u8> = (0..1600)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                if i % 7 < 3 {
                    0xff
                } else {
                    (x >> 16) as u8
                }
            })
            .collect();
        for start in 0..8 {
            for len in (0..300).chain([1460, 1472, 1480, 1500]) {
                let b = &bytes[start..start + len];
                assert_eq!(ones_sum(b), reference(b), "start {start} len {len}");
            }
        }
        assert_eq!(ones_sum(&[0xff; 64]), 0xffff);
        assert_eq!(ones_sum(&[0xff; 65_536]), 0xffff);
        assert_eq!(ones_sum(&[0xff; 65_535]), 0xff00);
        assert_eq!(ones_sum(&[0; 64]), 0);
    }

    /// The carry chain (x86-64) against the two-accumulator sum on random
    /// buffers and starting values: every length to 700 and 500 random ones
    /// to 9,000 bytes, at every alignment, with random bytes, 0xff runs (a
    /// carry out of every word) and 0x00 runs. Elsewhere than x86-64 the
    /// two are one function.
    #[test]
    fn ones_sum_carry_chain_matches_the_portable_sum() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut buf = vec![0u8; 9_016];
        let mut lens: Vec<usize> = (0..700).collect();
        lens.extend((0..500).map(|_| (next() % 9_000) as usize));
        for (i, &len) in lens.iter().enumerate() {
            let fill = i % 4;
            for b in buf[..len + 8].iter_mut() {
                let r = next();
                *b = match fill {
                    0 => r as u8,
                    1 if r % 8 != 0 => 0xff,
                    2 if r % 8 != 0 => 0,
                    _ => (r >> 8) as u8,
                };
            }
            let init = match i % 3 {
                0 => 0,
                1 => u64::MAX - next() % 4,
                _ => next(),
            };
            for start in 0..9 {
                let b = &buf[start..start + len];
                assert_eq!(
                    ones_sum_le(init, b),
                    ones_sum_le_portable(init, b),
                    "start {start} len {len} fill {fill} init {init:#x}"
                );
            }
        }
        for n in [65_535, 65_536, 131_071] {
            let b = vec![0xffu8; n];
            assert_eq!(ones_sum_le(0, &b), ones_sum_le_portable(0, &b), "{n} bytes of 0xff");
            assert_eq!(ones_sum_le(u64::MAX, &b), ones_sum_le_portable(u64::MAX, &b));
        }
        // A carry out of the last word of each 256-byte block must come back.
        let mut b = vec![0xffu8; 1_024];
        b[1_022] = 0xfe;
        assert_eq!(ones_sum_le(0, &b), ones_sum_le_portable(0, &b));
        assert_eq!(ones_sum_le(0, &b), 0xfffe);
        assert_eq!(ones_sum(&b), 0xfeff);
    }

    /// `verify_checksum`'s verdicts against the network-order computation
    /// it replaced (pseudo-header folded, segment summed, both added), on
    /// random IPv4 and IPv6 TCP and UDP segments of random lengths: with
    /// the right checksum, with one bit flipped, with the field 0 or the
    /// pseudo-header's sum (the offload patterns), and with random fields.
    #[test]
    fn checksum_verdicts_match_the_network_order_sum() {
        fn old(src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8], field: u32) -> Checksum {
            let len = seg.len() as u32;
            let pseudo = fold16(addr_sum(src) + addr_sum(dst) + u32::from(proto) + (len >> 16) + (len & 0xffff));
            let s = ones_sum_le_portable(0, seg);
            if fold16(pseudo + (((s & 0xff) << 8) | (s >> 8))) == 0xffff {
                Checksum::Good
            } else if field == 0 || field == pseudo || field == (!pseudo & 0xffff) {
                Checksum::Offloaded
            } else {
                Checksum::Bad
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut seen = [0usize; 4];
        for i in 0..6_000 {
            let v6 = i % 2 == 1;
            let proto = if i % 4 < 2 { 6 } else { 17 };
            let field_at = if proto == 6 { 16 } else { 6 };
            let mut addr = || -> IpAddr {
                let r = u128::from(next()) << 64 | u128::from(next());
                // Some addresses all 0xff or 0x00 octets: every carry path.
                let r = match next() % 8 {
                    0 => u128::MAX,
                    1 => 0,
                    _ => r,
                };
                if v6 {
                    IpAddr::from(r.to_be_bytes())
                } else {
                    IpAddr::from((r as u32).to_be_bytes())
                }
            };
            let (src, dst) = (addr(), addr());
            let len = 20 + (next() % 1_600) as usize;
            let mut seg: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 5 == 0 {
                seg.iter_mut().skip(20).for_each(|b| *b = 0xff);
            }
            seg[field_at..field_at + 2].copy_from_slice(&[0, 0]);
            // The right checksum: the complement of the sum with the field 0.
            let l = len as u32;
            let pseudo = fold16(addr_sum(src) + addr_sum(dst) + u32::from(proto) + (l >> 16) + (l & 0xffff));
            let s = ones_sum_le_portable(0, &seg);
            let right = !fold16(pseudo + (((s & 0xff) << 8) | (s >> 8))) as u16;
            let field: u16 = match i % 6 {
                0 | 1 => right,
                2 => right ^ (1 << (next() % 16)),
                3 => 0,
                4 => pseudo as u16,
                _ => next() as u16,
            };
            seg[field_at..field_at + 2].copy_from_slice(&field.to_be_bytes());
            if i % 6 == 1 {
                // A payload bit flipped.
                let at = 20 + (next() as usize) % (len - 20).max(1);
                if at < len {
                    seg[at] ^= 1 << (next() % 8);
                }
            }
            if proto == 17 && field == 0 && !v6 {
                // IPv4 UDP without a checksum: not checked.
                assert_eq!(verify_checksum(src, dst, proto, &seg, len), Checksum::Unchecked);
                continue;
            }
            let got = verify_checksum(src, dst, proto, &seg, len);
            assert_eq!(got, old(src, dst, proto, &seg, u32::from(field)), "case {i}");
            seen[got as usize] += 1;
        }
        // Every verdict but `Unchecked` came up, each many times.
        let n = |c: Checksum| seen[c as usize];
        assert!(
            [Checksum::Good, Checksum::Offloaded, Checksum::Bad]
                .into_iter()
                .all(|c| n(c) > 500),
            "{seen:?}"
        );
    }

    /// The pseudo-header's address sums and the flow key's endpoint order
    /// are computed on integers: both equal their definitions (the sum of
    /// the octets as words; the order of `(IpAddr, u16)`), on addresses
    /// with every carry path (0xff runs, zeros) and both families mixed.
    #[test]
    fn address_sums_and_endpoint_order_match_their_definitions() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut ends: Vec<(IpAddr, u16)> = Vec::new();
        for i in 0..400u32 {
            let r = next();
            let mut o = [0u8; 16];
            for (j, b) in o.iter_mut().enumerate() {
                *b = match (r >> (j * 4)) & 3 {
                    0 => 0,
                    1 => 0xff,
                    _ => (r >> (j * 3)) as u8,
                };
            }
            let port = [0, 1, 6881, 0xffff][(i % 4) as usize];
            let ip = if i % 2 == 0 {
                IpAddr::from([o[0], o[1], o[2], o[3]])
            } else {
                IpAddr::from(o)
            };
            ends.push((ip, port));
            ends.push((ip, port.wrapping_add(1)));
        }
        ends.push((IpAddr::from([255u8; 4]), 0xffff));
        ends.push((IpAddr::from([0u8; 16]), 0));
        for &(ip, _) in &ends {
            let octets = match ip {
                IpAddr::V4(v) => v.octets().to_vec(),
                IpAddr::V6(v) => v.octets().to_vec(),
            };
            assert_eq!(addr_sum(ip), ones_sum(&octets), "{ip}");
        }
        for &a in &ends {
            for &b in ends.iter().step_by(7) {
                assert_eq!(endpoint_rank(a).cmp(&endpoint_rank(b)), a.cmp(&b), "{a:?} {b:?}");
            }
        }
    }

    /// The plain path against etherparse's on every frame of the samples
    /// and of the shared corpora (public BitTorrent, Suricata's other
    /// protocols), and on the first frames of the first files with every
    /// header byte (link, IP, TCP/UDP) set to other values and the frame
    /// cut short:
    /// wherever the plain path takes a frame, both give the same result.
    #[test]
    fn plain_path_decodes_as_etherparse_does() {
        use crate::capture::{CaptureReader, ReaderLimits};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut dirs = vec![root.join("sample-pcaps")];
        if let Some(public) = crate::require::corpus(env!("CARGO_MANIFEST_DIR")) {
            dirs.push(public.with_file_name("mixed"));
            dirs.push(public);
        }
        fn walk(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            let Ok(rd) = std::fs::read_dir(d) else { return };
            let mut es: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
            es.sort();
            for p in es {
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|e| e == "pcap" || e == "pcapng") {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        for d in &dirs {
            walk(d, &mut files);
        }
        let check = |lt: u16, f: &[u8]| -> Option<bool> {
            let off = ip_offset(lt, f).ok()?;
            let ip = f.get(off..)?;
            let plain = decode_plain(off, ip)?;
            assert_eq!(plain, decode_ip(off, ip), "link type {lt}, frame {f:02x?}");
            Some(matches!(plain, Decoded::Packet(_)))
        };
        let (mut frames, mut plain, mut mutated) = (0u64, 0u64, 0u64);
        let mut n_mutated_frames = 0;
        for path in &files {
            let bytes = std::fs::read(path).expect("readable");
            let Ok(mut r) = CaptureReader::from_reader(
                "t",
                Box::new(std::io::Cursor::new(bytes)),
                None,
                ReaderLimits::default(),
            ) else {
                continue;
            };
            let mut n_file = 0;
            while let Ok(Some(b)) = r.next_batch(1 << 20, 1000) {
                for (m, d) in b.iter() {
                    frames += 1;
                    let c = check(m.link_type, d);
                    plain += u64::from(c.is_some());
                    if c != Some(true) || n_file >= 3 || n_mutated_frames >= 300 {
                        continue;
                    }
                    n_file += 1;
                    n_mutated_frames += 1;
                    // Every header byte set to other values, and cuts.
                    let end = d.len().min(96);
                    let mut g = d.to_vec();
                    for i in 0..end {
                        let was = g[i];
                        for v in [0, 1, 0x0f, 0x40, 0x45, 0x46, 0x50, 0x60, 0x7f, 0x80, 0xff, was ^ 0x20] {
                            g[i] = v;
                            mutated += u64::from(check(m.link_type, &g).is_some());
                        }
                        g[i] = was;
                    }
                    for cut in 0..d.len().min(200) {
                        mutated += u64::from(check(m.link_type, &d[..d.len() - cut]).is_some());
                    }
                }
            }
        }
        eprintln!(
            "{} files, {frames} frames, {plain} on the plain path, {mutated} mutated",
            files.len()
        );
        assert!(plain > frames / 2, "{plain} of {frames} frames on the plain path");
        assert!(mutated > 10_000, "{mutated}");
    }

    #[test]
    fn snaplen_cut_reports_missing_bytes() {
        let f = eth_ipv4_tcp(&[7u8; 100], false);
        let cut = &f[..f.len() - 60];
        let Decoded::Packet(p) = decode(linktype::ETHERNET, cut) else {
            panic!("not decoded");
        };
        assert_eq!(p.payload_len, 40);
        assert_eq!(p.payload_missing, 60);
    }

    #[test]
    fn other_link_types_and_garbage() {
        let f = eth_ipv4_tcp(b"x", false);
        let ip = &f[14..];
        assert!(matches!(decode(linktype::RAW, ip), Decoded::Packet(_)));
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend_from_slice(ip);
        assert!(matches!(decode(linktype::NULL, &null), Decoded::Packet(_)));
        let mut sll2 = vec![0x08, 0x00];
        sll2.extend([0u8; 18]);
        sll2.extend_from_slice(ip);
        assert!(matches!(decode(linktype::LINUX_SLL2, &sll2), Decoded::Packet(_)));
        assert_eq!(
            decode(linktype::ETHERNET, &f[..10]),
            Decoded::Error("truncated_link_header")
        );
        assert_eq!(decode(999, &f), Decoded::UnknownLink);
        for n in 0..f.len() {
            let _ = decode(linktype::ETHERNET, &f[..n]);
            let _ = decode(linktype::RAW, &ip[..n.min(ip.len())]);
        }
    }

    #[test]
    fn flow_key_is_direction_free_and_stable() {
        let Decoded::Packet(p) = decode(linktype::ETHERNET, &eth_ipv4_tcp(b"", false)) else {
            panic!()
        };
        let mut q = p;
        std::mem::swap(&mut q.src, &mut q.dst);
        std::mem::swap(&mut q.sport, &mut q.dport);
        let (k1, d1) = FlowKey::of(&p);
        let (k2, d2) = FlowKey::of(&q);
        assert_eq!(k1, k2);
        assert_ne!(d1, d2);
        assert_eq!(k1.stable_hash(), k2.stable_hash());
        let key = ShardKey::from_first_frame(1, 2, b"x");
        assert_eq!(k1.shard_hash(&key), k2.shard_hash(&key));
    }

    #[test]
    fn shard_hash_spreads_tuples_that_agree_in_their_low_bits() {
        // Tuples whose bytes agree modulo 64 all fell in one FNV shard.
        let Decoded::Packet(p) = decode(linktype::ETHERNET, &eth_ipv4_tcp(b"", false)) else {
            panic!()
        };
        let key = ShardKey::from_first_frame(1_700_000_000_123_456, 60, b"first frame");
        let mut shards = std::collections::BTreeSet::new();
        let mut fnv = std::collections::BTreeSet::new();
        for i in 0..4700u32 {
            let mut q = p;
            // Every byte keeps its low 6 bits; the high 2 bits vary.
            let hi = |k: u32| ((k % 4) as u8) << 6;
            q.sport = u16::from_be_bytes([0x1a | hi(i), 0x21 | hi(i >> 2)]);
            q.dport = u16::from_be_bytes([0x09 | hi(i >> 4), 0x3f | hi(i >> 6)]);
            q.src = IpAddr::from([10, ((i >> 8) % 3) as u8 * 64, hi(i >> 10), 1]);
            q.dst = IpAddr::from([10, 200, 0, 2]);
            let k = FlowKey::of(&q).0;
            shards.insert(k.shard_hash(&key) % 64);
            fnv.insert(k.stable_hash() % 64);
        }
        assert_eq!(fnv.len(), 1);
        assert_eq!(shards.len(), 64);
    }

    /// `Packet::shard_hash` is the key's shard hash: on both families,
    /// both protocols, both directions, equal endpoints, addresses equal
    /// but for their family, and ports that alone decide the order.
    #[test]
    fn packet_shard_hash_equals_the_keys() {
        let Decoded::Packet(p) = decode(linktype::ETHERNET, &eth_ipv4_tcp(b"", false)) else {
            panic!()
        };
        let key = ShardKey::from_first_frame(1_700_000_000_123_456, 60, b"first frame");
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let v4 = |r: u64| IpAddr::from((r as u32 % 4).to_be_bytes());
        let v6 = |r: u64| IpAddr::from(u128::from(r as u32 % 4).to_be_bytes());
        let (mut hashes, mut swapped) = (std::collections::BTreeSet::new(), 0);
        for i in 0..4_000u32 {
            let mut q = p;
            let (r1, r2) = (next(), next());
            // Few distinct values, so that equal addresses and ports come up.
            q.src = if r1 & 1 == 0 { v4(r1 >> 8) } else { v6(r1 >> 8) };
            q.dst = if r2 & 1 == 0 { v4(r2 >> 8) } else { v6(r2 >> 8) };
            q.sport = (r1 >> 40) as u16 % 3;
            q.dport = (r2 >> 40) as u16 % 3;
            if i % 2 == 1 {
                q.transport = Transport::Udp;
            }
            if i % 7 == 0 {
                // Non-trivial values too.
                q.src = IpAddr::from((next() as u32).to_be_bytes());
                q.sport = next() as u16;
            }
            let (k, from_a) = FlowKey::of(&q);
            swapped += usize::from(!from_a);
            assert_eq!(q.shard_hash(&key), k.shard_hash(&key), "{q:?}");
            hashes.insert(q.shard_hash(&key));
        }
        assert!(swapped > 1_000, "{swapped}");
        assert!(hashes.len() > 500, "{}", hashes.len());
    }
}
