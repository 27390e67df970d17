//! Local Service Discovery (BEP 14) announce parser.
//!
//! A client announces the torrents it has on the local network with an
//! HTTP-like datagram to 239.192.152.143:6771 (IPv4) or [ff15::efc0:988f]:6771
//! (IPv6):
//!
//! ```text
//! BT-SEARCH * HTTP/1.1\r\n
//! Host: <multicast group>:<port>\r\n
//! Port: <listen port>\r\n
//! Infohash: <40 hex digits>\r\n      (one or more)
//! cookie: <opaque token>\r\n         (optional: lets a client ignore its own)
//! \r\n
//! \r\n
//! ```
//!
//! Invariants:
//! - Pure and borrowed: an [`LsdAnnounce`] points into the datagram; parsing
//!   allocates nothing. Info hashes are re-read lazily from the header block
//!   by [`LsdAnnounce::infohashes`], which stops after
//!   [`LsdLimits::max_infohashes`].
//! - Never panics on any input. The datagram size, the number of header lines
//!   and the number of info hashes are bounded by [`LsdLimits`].
//! - Only a datagram that is not a BT-SEARCH request at all is an
//!   [`LsdError`]. Anything else that is wrong (no port, a bad info hash, no
//!   terminating empty line) is an [`LsdAnomaly`] on the announce, and what is
//!   well formed stays usable. Anomalies are counted exactly even beyond
//!   [`MAX_ANOMALIES_KEPT`].
//! - Header names are matched case-insensitively (BEP 14 writes `cookie` in
//!   lower case, the others capitalised; clients differ). Lines may end in
//!   CRLF or a bare LF.

/// Anomalies kept in detail per announce; [`LsdAnnounce::n_anomalies`]
/// counts all of them.
pub const MAX_ANOMALIES_KEPT: usize = 8;

/// Hex digits of a v1 info hash (BEP 14 sends the 20-byte hash as hex; v2
/// torrents are announced under their truncated hash, so 40 digits too).
const INFOHASH_HEX_LEN: usize = 40;

/// Bounds for one LSD datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LsdLimits {
    /// Larger datagrams are rejected unparsed. libtorrent fills one
    /// datagram up to ~1400 bytes with Infohash lines; 8 KiB leaves room.
    pub max_datagram_bytes: usize,
    /// Header lines read; the rest is ignored (and counted). A real announce
    /// has 3 fixed headers and a few dozen Infohash lines at most.
    pub max_headers: usize,
    /// Info hashes taken from one announce; more are ignored (counted).
    pub max_infohashes: usize,
}

impl Default for LsdLimits {
    fn default() -> Self {
        LsdLimits {
            max_datagram_bytes: 8 * 1024,
            max_headers: 128,
            max_infohashes: 64,
        }
    }
}

/// Why a datagram is not an LSD announce at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LsdError {
    /// Longer than [`LsdLimits::max_datagram_bytes`].
    TooLarge,
    /// The first line is not `BT-SEARCH * HTTP/1.x`.
    NotBtSearch,
}

impl LsdError {
    /// Stable snake_case name for the `anomalies` table.
    pub fn kind(&self) -> &'static str {
        match self {
            LsdError::TooLarge => "lsd_too_large",
            LsdError::NotBtSearch => "lsd_bad_request_line",
        }
    }
}

impl std::fmt::Display for LsdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl std::error::Error for LsdError {}

/// What is wrong with a part of an otherwise usable announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LsdAnomaly {
    /// No `Port` header (the announce names no peer).
    MissingPort,
    /// `Port` is not a decimal number in 1..=65535.
    BadPort,
    /// More than one `Port` header; the first is used.
    DuplicatePort,
    /// No valid `Infohash` header.
    MissingInfohash,
    /// An `Infohash` value that is not 40 hex digits (skipped).
    BadInfohash,
    /// More Infohash headers than [`LsdLimits::max_infohashes`].
    TooManyInfohashes,
    /// More header lines than [`LsdLimits::max_headers`].
    TooManyHeaders,
    /// A header line without a colon (skipped).
    BadHeaderLine,
    /// No empty line ends the headers (the datagram was cut short).
    Unterminated,
    /// Non-blank bytes after the empty line that ends the headers.
    TrailingBytes,
}

impl LsdAnomaly {
    /// Value of the `kind` column in `anomalies`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LsdAnomaly::MissingPort => "lsd_missing_port",
            LsdAnomaly::BadPort => "lsd_bad_port",
            LsdAnomaly::DuplicatePort => "lsd_duplicate_port",
            LsdAnomaly::MissingInfohash => "lsd_missing_infohash",
            LsdAnomaly::BadInfohash => "lsd_bad_infohash",
            LsdAnomaly::TooManyInfohashes => "lsd_too_many_infohashes",
            LsdAnomaly::TooManyHeaders => "lsd_too_many_headers",
            LsdAnomaly::BadHeaderLine => "lsd_bad_header_line",
            LsdAnomaly::Unterminated => "lsd_unterminated",
            LsdAnomaly::TrailingBytes => "lsd_trailing_bytes",
        }
    }
}

/// One BT-SEARCH announce, borrowing from its datagram.
#[derive(Debug, Clone, Copy)]
pub struct LsdAnnounce<'a> {
    /// `Host` as sent (the multicast group and port), if present.
    pub host: Option<&'a [u8]>,
    /// `Port`: the announcer's listen port.
    pub port: Option<u16>,
    /// `cookie`, if present.
    pub cookie: Option<&'a [u8]>,
    /// The header lines (after the request line, up to the empty line or the
    /// header bound), re-walked by [`LsdAnnounce::infohashes`].
    headers: &'a [u8],
    max_headers: usize,
    max_infohashes: usize,
    n_infohashes: usize,
    anomalies: [LsdAnomaly; MAX_ANOMALIES_KEPT],
    n_anomalies: u32,
}

impl<'a> LsdAnnounce<'a> {
    /// Valid info hashes in the order sent (at most
    /// [`LsdLimits::max_infohashes`]; duplicates are kept as sent).
    pub fn infohashes(&self) -> impl Iterator<Item = [u8; 20]> + 'a {
        header_lines(self.headers)
            .take(self.max_headers)
            .filter_map(split_header)
            .filter(|(name, _)| name.eq_ignore_ascii_case(b"infohash"))
            .filter_map(|(_, value)| parse_infohash(value))
            .take(self.max_infohashes)
    }

    /// Number of valid info hashes [`Self::infohashes`] yields.
    pub fn n_infohashes(&self) -> usize {
        self.n_infohashes
    }

    /// Anomalies in the order found (at most [`MAX_ANOMALIES_KEPT`]).
    pub fn anomalies(&self) -> &[LsdAnomaly] {
        let kept = (self.n_anomalies as usize).min(MAX_ANOMALIES_KEPT);
        self.anomalies.get(..kept).unwrap_or(&[])
    }

    /// Every anomaly found, including those beyond [`MAX_ANOMALIES_KEPT`].
    pub fn n_anomalies(&self) -> u32 {
        self.n_anomalies
    }

    fn note(&mut self, a: LsdAnomaly) {
        if let Some(slot) = self.anomalies.get_mut(self.n_anomalies as usize) {
            *slot = a;
        }
        self.n_anomalies = self.n_anomalies.saturating_add(1);
    }
}

/// Cheap pre-check for classifying a UDP datagram: true when it could be an
/// LSD announce ([`parse_lsd`] decides).
pub fn looks_like_lsd(d: &[u8]) -> bool {
    d.starts_with(b"BT-SEARCH ")
}

/// The line starting at `pos` (without its CR LF or bare LF) and the
/// position after it; `None` at the end. A last line without LF counts.
fn line_at(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..).filter(|r| !r.is_empty())?;
    let (line, next) = match memchr::memchr(b'\n', rest) {
        Some(i) => (rest.get(..i).unwrap_or(&[]), pos + i + 1),
        None => (rest, buf.len()),
    };
    Some((line.strip_suffix(b"\r").unwrap_or(line), next))
}

/// Lines of `block`, as [`line_at`] cuts them.
fn header_lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let (line, next) = line_at(block, pos)?;
        pos = next;
        Some(line)
    })
}

/// `Name: value` with the value trimmed of blanks; `None` without a colon.
fn split_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = memchr::memchr(b':', line)?;
    let name = trim(line.get(..colon)?);
    let value = trim(line.get(colon + 1..)?);
    Some((name, value))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// 40 hex digits (either case) → 20 bytes.
fn parse_infohash(v: &[u8]) -> Option<[u8; 20]> {
    if v.len() != INFOHASH_HEX_LEN {
        return None;
    }
    let mut out = [0u8; 20];
    for (o, pair) in out.iter_mut().zip(v.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *o = hex_digit(*hi)? << 4 | hex_digit(*lo)?;
    }
    Some(out)
}

/// A decimal port in 1..=65535 (at most 5 digits, nothing else).
fn parse_port(v: &[u8]) -> Option<u16> {
    if v.is_empty() || v.len() > 5 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = v.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// Parses one LSD datagram (BEP 14).
pub fn parse_lsd<'a>(d: &'a [u8], limits: &LsdLimits) -> Result<LsdAnnounce<'a>, LsdError> {
    if d.len() > limits.max_datagram_bytes {
        return Err(LsdError::TooLarge);
    }
    let first_end = memchr::memchr(b'\n', d).unwrap_or(d.len());
    let request = d.get(..first_end).unwrap_or(&[]);
    let request = request.strip_suffix(b"\r").unwrap_or(request);
    let mut words = request.split(|c| *c == b' ').filter(|w| !w.is_empty());
    let ok = words.next() == Some(b"BT-SEARCH".as_slice())
        && words.next() == Some(b"*".as_slice())
        && words.next().is_some_and(|v| v.starts_with(b"HTTP/1."))
        && words.next().is_none();
    if !ok {
        return Err(LsdError::NotBtSearch);
    }
    let rest = d.get(first_end + 1..).unwrap_or(&[]);
    let mut a = LsdAnnounce {
        host: None,
        port: None,
        cookie: None,
        headers: rest,
        max_headers: limits.max_headers,
        max_infohashes: limits.max_infohashes,
        n_infohashes: 0,
        anomalies: [LsdAnomaly::MissingPort; MAX_ANOMALIES_KEPT],
        n_anomalies: 0,
    };
    let mut consumed = 0usize;
    let mut terminated = false;
    let mut cut_short = false;
    let mut n_headers = 0usize;
    let mut n_bad_ih = 0u32;
    let mut n_extra_ih = 0u32;
    let mut port_seen = false;
    while let Some((line, next)) = line_at(rest, consumed) {
        consumed = next;
        if line.is_empty() {
            terminated = true;
            break;
        }
        n_headers += 1;
        if n_headers > limits.max_headers {
            a.note(LsdAnomaly::TooManyHeaders);
            cut_short = true;
            break;
        }
        let Some((name, value)) = split_header(line) else {
            a.note(LsdAnomaly::BadHeaderLine);
            continue;
        };
        if name.eq_ignore_ascii_case(b"host") {
            a.host.get_or_insert(value);
        } else if name.eq_ignore_ascii_case(b"port") {
            if port_seen {
                a.note(LsdAnomaly::DuplicatePort);
                continue;
            }
            port_seen = true;
            match parse_port(value) {
                Some(p) => a.port = Some(p),
                None => a.note(LsdAnomaly::BadPort),
            }
        } else if name.eq_ignore_ascii_case(b"infohash") {
            if parse_infohash(value).is_none() {
                n_bad_ih += 1;
            } else if a.n_infohashes < limits.max_infohashes {
                a.n_infohashes += 1;
            } else {
                n_extra_ih += 1;
            }
        } else if name.eq_ignore_ascii_case(b"cookie") {
            a.cookie.get_or_insert(value);
        }
    }
    // The iterator must see exactly the lines validated above.
    a.headers = rest.get(..consumed).unwrap_or(rest);
    // One anomaly per kind, not per line: a hostile list of junk should not
    // drown the others.
    if n_bad_ih > 0 {
        a.note(LsdAnomaly::BadInfohash);
    }
    if n_extra_ih > 0 {
        a.note(LsdAnomaly::TooManyInfohashes);
    }
    if !port_seen {
        a.note(LsdAnomaly::MissingPort);
    }
    if a.n_infohashes == 0 {
        a.note(LsdAnomaly::MissingInfohash);
    }
    if !terminated && !cut_short {
        a.note(LsdAnomaly::Unterminated);
    }
    if terminated {
        let tail = rest.get(consumed..).unwrap_or(&[]);
        if tail.iter().any(|c| !c.is_ascii_whitespace()) {
            a.note(LsdAnomaly::TrailingBytes);
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IH: &str = "ED4F1085E885F98F9A69B70EE89EB988B8FD9115";

    fn lim() -> LsdLimits {
        LsdLimits::default()
    }

    fn ih_bytes(s: &str) -> [u8; 20] {
        parse_infohash(s.as_bytes()).expect("hex")
    }

    fn names(a: &LsdAnnounce<'_>) -> Vec<&'static str> {
        a.anomalies().iter().map(|x| x.as_str()).collect()
    }

    /// nDPI bt_search.pcap, frame 1 (uTorrent: no cookie).
    const NDPI: &[u8] = b"BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 61197\r\n\
Infohash: ED4F1085E885F98F9A69B70EE89EB988B8FD9115\r\n\r\n\r\n";

    /// VUT-PDS small.pcap, frame 165 (qBittorrent over IPv6, with cookie).
    const QB6: &[u8] = b"BT-SEARCH * HTTP/1.1\r\nHost: [ff15::efc0:988f]:6771\r\nPort: 8999\r\n\
Infohash: 8c271f4d2e92a3449e2d1bde633cd49f64af888f\r\ncookie: 12be2312\r\n\r\n\r\n";

    #[test]
    fn real_announces() {
        let a = parse_lsd(NDPI, &lim()).expect("parses");
        assert_eq!(a.port, Some(61197));
        assert_eq!(a.host, Some(b"239.192.152.143:6771".as_slice()));
        assert_eq!(a.cookie, None);
        assert_eq!(a.infohashes().collect::<Vec<_>>(), vec![ih_bytes(IH)]);
        assert_eq!(a.n_infohashes(), 1);
        assert!(names(&a).is_empty(), "{:?}", names(&a));

        let a = parse_lsd(QB6, &lim()).expect("parses");
        assert_eq!(a.port, Some(8999));
        assert_eq!(a.host, Some(b"[ff15::efc0:988f]:6771".as_slice()));
        assert_eq!(a.cookie, Some(b"12be2312".as_slice()));
        assert_eq!(
            a.infohashes().collect::<Vec<_>>(),
            vec![ih_bytes("8c271f4d2e92a3449e2d1bde633cd49f64af888f")]
        );
        assert!(names(&a).is_empty());
    }

    #[test]
    fn several_infohashes_any_case_and_bare_lf() {
        let d = format!(
            "BT-SEARCH * HTTP/1.1\nhost: x\nPORT:6881\ninfohash: {IH}\nINFOHASH:\t{}\n\
             Infohash: {}\nCookie: c\n\n",
            "11".repeat(20),
            "ab".repeat(20)
        );
        let a = parse_lsd(d.as_bytes(), &lim()).expect("parses");
        assert_eq!(a.port, Some(6881));
        assert_eq!(a.cookie, Some(b"c".as_slice()));
        assert_eq!(
            a.infohashes().collect::<Vec<_>>(),
            vec![ih_bytes(IH), [0x11; 20], [0xab; 20]]
        );
        assert!(names(&a).is_empty(), "{:?}", names(&a));
    }

    #[test]
    fn anomalies_leave_the_rest_usable() {
        let d = format!(
            "BT-SEARCH * HTTP/1.1\r\nPort: 70000\r\nPort: 1\r\nno colon here\r\n\
             Infohash: {IH}\r\nInfohash: xyz\r\nInfohash: {}\r\n\r\njunk",
            "g".repeat(40)
        );
        let a = parse_lsd(d.as_bytes(), &lim()).expect("parses");
        assert_eq!(a.port, None);
        assert_eq!(a.infohashes().count(), 1);
        assert_eq!(
            names(&a),
            vec![
                "lsd_bad_port",
                "lsd_duplicate_port",
                "lsd_bad_header_line",
                "lsd_bad_infohash",
                "lsd_trailing_bytes"
            ]
        );

        let a = parse_lsd(b"BT-SEARCH * HTTP/1.1\r\nHost: x\r\n", &lim()).expect("parses");
        assert_eq!(
            names(&a),
            vec!["lsd_missing_port", "lsd_missing_infohash", "lsd_unterminated"]
        );
        let a = parse_lsd(b"BT-SEARCH * HTTP/1.1", &lim()).expect("parses");
        assert_eq!(
            names(&a),
            vec!["lsd_missing_port", "lsd_missing_infohash", "lsd_unterminated"]
        );
        assert_eq!(a.infohashes().count(), 0);
    }

    #[test]
    fn not_lsd() {
        for d in [
            &b""[..],
            b"BT-SEARCH",
            b"BT-SEARCH * HTTP/1.1 extra\r\n",
            b"M-SEARCH * HTTP/1.1\r\n",
            b"BT-SEARCH / HTTP/1.1\r\n",
            b"BT-SEARCH * FTP/1.1\r\n",
        ] {
            assert_eq!(
                parse_lsd(d, &lim()).err(),
                Some(LsdError::NotBtSearch),
                "{}",
                String::from_utf8_lossy(d)
            );
        }
        let mut big = NDPI.to_vec();
        big.resize(lim().max_datagram_bytes + 1, b' ');
        assert_eq!(parse_lsd(&big, &lim()).err(), Some(LsdError::TooLarge));
        assert!(looks_like_lsd(NDPI));
        assert!(!looks_like_lsd(b"d1:y1:qe"));
    }

    #[test]
    fn bounds_hold() {
        let mut d = b"BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n".to_vec();
        for i in 0..100u8 {
            d.extend(format!("Infohash: {}\r\n", format!("{i:02x}").repeat(20)).bytes());
        }
        d.extend(b"\r\n");
        let l = LsdLimits {
            max_infohashes: 10,
            ..lim()
        };
        let a = parse_lsd(&d, &l).expect("parses");
        assert_eq!(a.n_infohashes(), 10);
        assert_eq!(a.infohashes().count(), 10);
        assert_eq!(names(&a), vec!["lsd_too_many_infohashes"]);
        let l = LsdLimits {
            max_headers: 5,
            ..lim()
        };
        let a = parse_lsd(&d, &l).expect("parses");
        assert_eq!(a.n_infohashes(), 4);
        assert_eq!(a.infohashes().count(), 4);
        assert_eq!(names(&a), vec!["lsd_too_many_headers"]);
    }

    /// xorshift64*: deterministic randomness without a dependency.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn every_cut_and_random_mutations_never_panic() {
        for cut in 0..=QB6.len() {
            if let Ok(a) = parse_lsd(&QB6[..cut], &lim()) {
                assert!(a.infohashes().count() <= 1);
                assert_eq!(a.infohashes().count(), a.n_infohashes());
            }
        }
        let mut rng = XorShift(0x1234_5678_9ABC_DEF1);
        let mut n_ok = 0;
        for round in 0..50_000 {
            let mut d = if round % 2 == 0 { NDPI.to_vec() } else { QB6.to_vec() };
            for _ in 0..=rng.below(4) {
                match rng.below(3) {
                    0 if !d.is_empty() => {
                        let i = rng.below(d.len());
                        d[i] = b"\r\n: aF09"[rng.below(8)];
                    }
                    1 => d.truncate(rng.below(d.len() + 1)),
                    _ => {
                        let i = rng.below(d.len() + 1);
                        d.insert(i, rng.next() as u8);
                    }
                }
            }
            if let Ok(a) = parse_lsd(&d, &lim()) {
                n_ok += 1;
                assert_eq!(a.infohashes().count(), a.n_infohashes());
                let _ = a.anomalies();
            }
        }
        assert!(n_ok > 10_000, "{n_ok}");
    }
}
