//! Protocols that look like ours, ruled out by name. Each test names the
//! protocol and the bytes that give it away, so that a flow set aside says
//! why (`flows.app_evidence`). A rule-out is evidence too: it runs before the
//! weak BitTorrent probes (MSE's randomness test, mid-stream peer-wire
//! hunting, a datagram's uTP or BEP 15 shape) and keeps them from guessing.
//!
//! The tests read fixed offsets of the first bytes of one direction (a
//! stream) or of one datagram; none of them looks at ports. Each is written
//! so that the BitTorrent shape it competes with almost never matches it:
//! the comment beside each says why.

/// A stream look-alike: the name of the protocol whose opening bytes `d`
/// (the first bytes of one direction) are, if any.
pub fn stream(d: &[u8]) -> Option<&'static str> {
    if is_tls(d) {
        return Some("tls");
    }
    if d.starts_with(b"SSH-") {
        return Some("ssh");
    }
    if is_http(d) {
        return Some("http");
    }
    // Gnutella 0.6 handshake: `GNUTELLA CONNECT/0.6` and `GNUTELLA/0.6 200 OK`
    // (its text passed MSE's entropy bar when long enough).
    if d.starts_with(b"GNUTELLA") {
        return Some("gnutella");
    }
    if is_smb(d) {
        return Some("smb");
    }
    if is_bgp(d) {
        return Some("bgp");
    }
    if is_bitcoin(d) {
        return Some("bitcoin");
    }
    if is_rlpx(d) {
        return Some("rlpx");
    }
    if is_kerberos(d) {
        return Some("kerberos");
    }
    if is_sip(d) {
        return Some("sip");
    }
    None
}

/// Kerberos over TCP (RFC 4120 7.2.2): a 4-byte length, then an ASN.1
/// application tag of a Kerberos message (AS/TGS request or reply, AP
/// request or reply, error) with a long-form length.
fn is_kerberos(d: &[u8]) -> bool {
    d.len() >= 8
        && be32(d, 0) < 1 << 20
        && matches!(d[4], 0x6a..=0x6f | 0x7e)
        && matches!(d[5], 0x81..=0x83)
        && d[6] == 0x30
}

/// SIP over TCP: a request or status line.
fn is_sip(d: &[u8]) -> bool {
    const STARTS: [&[u8]; 9] = [
        b"SIP/2.0 ",
        b"INVITE ",
        b"REGISTER ",
        b"ACK ",
        b"BYE ",
        b"CANCEL ",
        b"SUBSCRIBE ",
        b"NOTIFY ",
        b"MESSAGE ",
    ];
    STARTS.iter().any(|s| d.starts_with(s))
}

/// Printable text: at least 90 % of the first bytes are printable ASCII or
/// line ends (a random sample has 37 %). Text protocols of MSE's size
/// (SIP, SMTP, IRC, Gnutella, ...) pass its entropy bar; peer-wire messages
/// are binary headers.
fn is_text(d: &[u8]) -> bool {
    let sample = d.get(..d.len().min(256)).unwrap_or(d);
    let printable = sample
        .iter()
        .filter(|&&b| b == b'\r' || b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b))
        .count();
    sample.len() >= 32 && printable * 10 >= sample.len() * 9
}

/// Stream look-alikes that only matter to the MSE probe (a peer-wire stream
/// picked up mid-connection can be length-prefixed, or a text file's piece
/// data): printable text, and length-prefixed binary framings whose first
/// message fills the first segment exactly.
pub fn mse_lookalike(d: &[u8]) -> Option<&'static str> {
    if is_text(d) {
        return Some("text");
    }
    length_prefixed(d)
}

/// Length-prefixed binary framings whose first message fills the first
/// segment exactly.
/// MSE's first flight is a 96-byte Diffie-Hellman key and random padding,
/// so its first two or four bytes equal the flight's length minus the
/// prefix with probability 2^-16 or 2^-32. (Peer wire is length-prefixed
/// too, which is why this is not applied to mid-stream hunting.)
pub fn length_prefixed(d: &[u8]) -> Option<&'static str> {
    let n = d.len();
    if n >= 8 && usize::try_from(be32(d, 0) & 0x7fff_ffff).is_ok_and(|l| l + 4 == n) {
        // Kerberos over TCP, ONC-RPC record marking, NetBIOS session.
        return Some("length-prefixed (4 bytes)");
    }
    if n >= 4 && usize::from(be16(d, 0)) + 2 == n {
        // DNS over TCP, RLPx (EIP-8).
        return Some("length-prefixed (2 bytes)");
    }
    if n >= 8 && matches!(d[0], 0x01..=0x12) && usize::from(be16(d, 2)) == n {
        // MS-SQL TDS: type, status, then the packet length with its header.
        return Some("tds");
    }
    None
}

/// TLS record header (handshake, application data, alert, change cipher
/// spec; versions SSL 3.0 to TLS 1.3) or an SSLv2-compatible ClientHello.
/// Any TLS ClientHello of 96–608 bytes passes MSE's randomness test, and a
/// flow picked up mid-stream starts at a record boundary more often than not.
pub fn is_tls(d: &[u8]) -> bool {
    matches!(d, [0x14..=0x17, 0x03, 0x00..=0x04, ..]) || matches!(d, [0x80..=0xff, _, 0x01, 0x03 | 0x02, ..])
}

/// An HTTP/1.x request or response line start (trackers are told apart by
/// the tracker probe, which runs first).
pub fn is_http(d: &[u8]) -> bool {
    const STARTS: [&[u8]; 10] = [
        b"GET ",
        b"POST ",
        b"HEAD ",
        b"HTTP/1.",
        b"PUT ",
        b"OPTIONS ",
        b"DELETE ",
        b"CONNECT ",
        b"PATCH ",
        b"PRI * HTTP/2",
    ];
    STARTS.iter().any(|s| d.starts_with(s))
}

/// SMB1/SMB2/SMB3 over the NetBIOS session service (or direct TCP): a
/// 4-byte length then `\xffSMB`, `\xfeSMB` or `\xfdSMB` (its zero bytes framed as
/// keep-alives and chokes when hunted as peer wire).
fn is_smb(d: &[u8]) -> bool {
    matches!(d.get(4..8), Some([0xfd..=0xff, b'S', b'M', b'B']))
}

/// BGP: every message starts with a 16-byte marker of all ones.
fn is_bgp(d: &[u8]) -> bool {
    d.len() >= 19 && d[..16].iter().all(|&b| b == 0xff)
}

/// Bitcoin P2P: the network magic (main, testnet3, regtest, signet) then a
/// NUL-padded ASCII command.
fn is_bitcoin(d: &[u8]) -> bool {
    const MAGICS: [[u8; 4]; 4] = [
        [0xf9, 0xbe, 0xb4, 0xd9],
        [0x0b, 0x11, 0x09, 0x07],
        [0xfa, 0xbf, 0xb5, 0xda],
        [0x0a, 0x03, 0xcf, 0x40],
    ];
    d.len() >= 24 && MAGICS.iter().any(|m| d.starts_with(m)) && d[4].is_ascii_lowercase()
}

/// Ethereum RLPx auth/ack: EIP-8 messages start with their 2-byte size and
/// an ECIES uncompressed public key (0x04); pre-EIP-8 auth is exactly 307
/// bytes and ack 210, both opening with 0x04. High entropy, so MSE's
/// randomness test alone accepted them.
fn is_rlpx(d: &[u8]) -> bool {
    // EIP-8 auth and ack bodies are 300–2048 bytes; the first segment is
    // the whole message or a full-sized part of it.
    let size = usize::from(be16(d, 0)) + 2;
    let eip8 = d.len() >= 3
        && (302..=2050).contains(&size)
        && (size == d.len() || (size > d.len() && d.len() >= 1200))
        && d[2] == 0x04;
    let legacy = matches!(d.len(), 307 | 210) && d[0] == 0x04;
    eip8 || legacy
}

/// A datagram look-alike: the name of the protocol datagram `d` is, if any.
/// Runs after the KRPC, LSD and BEP 15 pairing probes (which prove their
/// protocol) and before the structural ones (BEP 15 request shape, uTP).
pub fn datagram(d: &[u8]) -> Option<&'static str> {
    if is_dhcp(d) {
        return Some("dhcp");
    }
    if is_netbios_datagram(d) {
        return Some("netbios");
    }
    if is_dhcpv6(d) {
        return Some("dhcpv6");
    }
    if is_stun(d) {
        return Some("stun");
    }
    if is_onc_rpc(d) {
        return Some("rpc");
    }
    if is_quic(d) {
        return Some("quic");
    }
    if is_dns(d) {
        return Some("dns");
    }
    if is_text_udp(d) {
        return Some("text (sip/ssdp/http)");
    }
    None
}

/// BOOTP/DHCP: op 1 or 2, hardware type, and the magic cookie 99.130.83.99
/// at byte 236. Its first bytes (0x01 0x01 0x06 0x00) read as a uTP header.
fn is_dhcp(d: &[u8]) -> bool {
    d.len() >= 240 && matches!(d[0], 1 | 2) && d[236..240] == [0x63, 0x82, 0x53, 0x63]
}

/// NetBIOS datagram service (RFC 1002): message type 0x10–0x16, flags in
/// the low nibble only, and the source port field at bytes 8..10 is 138 or
/// the datagram length at 10..12 counts exactly the bytes after the 14-byte
/// header. The type byte reads as a uTP ST_FIN header.
fn is_netbios_datagram(d: &[u8]) -> bool {
    d.len() >= 14
        && matches!(d[0], 0x10..=0x16)
        && d[1] & 0xf0 == 0
        && (be16(d, 8) == 138 || usize::from(be16(d, 10)) + 14 == d.len())
}

/// DHCPv6 (RFC 8415) client/server message: type 1–11, a 3-byte
/// transaction id, then options (code, length, body) that fill the datagram
/// exactly. Type 1 (Solicit) reads as a uTP ST_DATA header.
fn is_dhcpv6(d: &[u8]) -> bool {
    if d.len() < 8 || !matches!(d[0], 1..=11) {
        return false;
    }
    let mut at = 4;
    while at + 4 <= d.len() {
        at += 4 + usize::from(be16(d, at + 2));
    }
    at == d.len()
}

/// STUN (RFC 5389): the magic cookie at 4..8 and a length that fits.
fn is_stun(d: &[u8]) -> bool {
    d.len() >= 20 && be32(d, 4) == 0x2112_a442 && usize::from(be16(d, 2)) + 20 == d.len()
}

/// ONC-RPC (RFC 5531) over UDP: a call is xid, msg_type 0, rpcvers 2 (which
/// reads as a BEP 15 scrape: "action" 2 at byte 8); a reply is xid,
/// msg_type 1, reply_stat 0 or 1.
fn is_onc_rpc(d: &[u8]) -> bool {
    let call = d.len() >= 40 && be32(d, 4) == 0 && be32(d, 8) == 2 && be32(d, 12) > 0;
    let reply = d.len() >= 24 && be32(d, 4) == 1 && be32(d, 8) <= 1 && be32(d, 12) <= 1;
    call || reply
}

/// QUIC long header: form and fixed bits set and a known version (v1, v2,
/// drafts 0xff0000xx, Google's Q0xx).
fn is_quic(d: &[u8]) -> bool {
    if d.len() < 20 || d[0] & 0xc0 != 0xc0 {
        return false;
    }
    let v = be32(d, 1);
    v == 1 || v == 0x6b33_43cf || v & 0xffff_ff00 == 0xff00_0000 || (d[1] == b'Q' && d[2] == b'0')
}

/// DNS (and NetBIOS name service, which shares its header): one question,
/// few records, and the header's reserved Z bit clear.
fn is_dns(d: &[u8]) -> bool {
    d.len() >= 17 && be16(d, 4) == 1 && be16(d, 6) <= 64 && be16(d, 8) <= 64 && be16(d, 10) <= 64 && d[3] & 0x40 == 0
}

/// Text protocols over UDP that start with a method or status line (SIP,
/// SSDP, CoAP-over-text): uTP and BEP 15 are binary.
fn is_text_udp(d: &[u8]) -> bool {
    const STARTS: [&[u8]; 8] = [
        b"M-SEARCH ",
        b"NOTIFY ",
        b"HTTP/1.",
        b"SIP/2.0 ",
        b"INVITE ",
        b"REGISTER ",
        b"OPTIONS ",
        b"SUBSCRIBE ",
    ];
    STARTS.iter().any(|s| d.starts_with(s))
}

fn be16(d: &[u8], at: usize) -> u16 {
    match d.get(at..at + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

fn be32(d: &[u8], at: usize) -> u32 {
    match d.get(at..at + 4) {
        Some(&[a, b, c, e]) => u32::from_be_bytes([a, b, c, e]),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_named() {
        assert_eq!(stream(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Some("tls"));
        assert_eq!(stream(b"SSH-2.0-OpenSSH_9.6\r\n"), Some("ssh"));
        assert_eq!(stream(b"GET / HTTP/1.1\r\n"), Some("http"));
        assert_eq!(stream(b"GNUTELLA CONNECT/0.6\r\n"), Some("gnutella"));
        assert_eq!(
            stream(b"REGISTER sip:192.168.43.100;transport=TCP SIP/2.0\r\n"),
            Some("sip")
        );
        assert_eq!(
            mse_lookalike(&b"EHLO mail.example.org and more text\r\n".repeat(3)),
            Some("text")
        );
        assert_eq!(stream(&[0, 0, 0, 0x45, 0xff, b'S', b'M', b'B', 0x72]), Some("smb"));
        assert_eq!(stream(b"\x13BitTorrent protocol"), None);
        let mut rlpx = vec![0x01, 0x80, 0x04];
        rlpx.resize(386, 0x5a);
        // A random MSE key whose third byte happens to be 4 is not RLPx.
        let mut key = vec![0xce, 0xa7, 0x04];
        key.resize(270, 0x5a);
        assert_eq!(stream(&key), None);
        assert_eq!(stream(&rlpx), Some("rlpx"));
        // A peer-wire message in its own segment is length-prefixed: the
        // length rule is the MSE probe's only.
        assert_eq!(stream(&[0, 0, 0, 5, 4, 0, 0, 0, 7]), None);
        assert!(length_prefixed(&[0, 0, 0, 5, 4, 0, 0, 0, 7]).is_some());
    }

    #[test]
    fn datagrams_are_named() {
        let mut dhcp = vec![1, 1, 6, 0];
        dhcp.resize(300, 0);
        dhcp[236..240].copy_from_slice(&[0x63, 0x82, 0x53, 0x63]);
        assert_eq!(datagram(&dhcp), Some("dhcp"));
        let mut nb = vec![0x11, 0x02, 0x80, 0x01, 10, 0, 0, 1, 0, 138, 0, 100, 0, 0];
        nb.resize(120, 0x20);
        assert_eq!(datagram(&nb), Some("netbios"));
        let mut rpc = vec![0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 0x86, 0xa0];
        rpc.resize(56, 0);
        assert_eq!(datagram(&rpc), Some("rpc"));
        let dns = [
            0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'w', b'w', 0, 0, 1, 0, 1,
        ];
        assert_eq!(datagram(&dns), Some("dns"));
        // DHCPv6 Solicit: client id and elapsed-time options fill it exactly.
        let v6 = [1, 0xaa, 0xbb, 0xcc, 0, 1, 0, 2, 9, 9, 0, 8, 0, 2, 0, 0];
        assert_eq!(datagram(&v6), Some("dhcpv6"));
        // A uTP ST_SYN: no rule matches.
        let syn = [
            0x41, 0, 0x30, 0x39, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 1, 0, 0,
        ];
        assert_eq!(datagram(&syn), None);
    }
}
