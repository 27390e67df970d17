//! Client names from BitTorrent peer ids and from the BEP 10 `v` string.
//!
//! Peer id conventions (BEP 20 and practice): Azureus style `-XXVVVV-…`
//! (two-letter client code, four version characters), Shadow style
//! (`S58B-----…`: one letter, version characters, dashes), Mainline style
//! (`M4-3-6--…`), and a few one-off forms (BitComet `exbc`, Opera `OP`).
//! Unknown codes still yield the raw code and version, never nothing, so the
//! `client` column can be grouped on.

/// Azureus-style two-letter codes of clients seen in real swarms, sorted
/// by code (bytewise) so that a lookup is a binary search (checked at
/// compile time below).
const AZUREUS: &[(&[u8; 2], &str)] = &[
    (b"7T", "aTorrent"),
    (b"A2", "aria2"),
    (b"AB", "AnyEvent::BitTorrent"),
    (b"AG", "Ares"),
    (b"AR", "Arctic"),
    (b"AT", "Artemis"),
    (b"AV", "Avicora"),
    (b"AX", "BitPump"),
    (b"AZ", "Azureus"),
    (b"A~", "Ares"),
    (b"BB", "BitBuddy"),
    (b"BC", "BitComet"),
    (b"BE", "baretorrent"),
    (b"BF", "Bitflu"),
    (b"BG", "BTG"),
    (b"BI", "BiglyBT"),
    (b"BL", "BitCometLite"),
    (b"BP", "BitTorrent Pro"),
    (b"BR", "BitRocket"),
    (b"BS", "BTSlave"),
    (b"BT", "BitTorrent"),
    (b"BW", "BitWombat"),
    (b"BX", "BittorrentX"),
    (b"CD", "Enhanced CTorrent"),
    (b"CT", "CTorrent"),
    (b"DE", "Deluge"),
    (b"DP", "Propagate Data Client"),
    (b"EB", "EBit"),
    (b"ES", "electric sheep"),
    (b"FC", "FileCroc"),
    (b"FD", "Free Download Manager"),
    (b"FT", "FoxTorrent"),
    (b"FX", "Freebox BitTorrent"),
    (b"GS", "GSTorrent"),
    (b"HK", "Hekate"),
    (b"HL", "Halite"),
    (b"HM", "hMule"),
    (b"HN", "Hydranode"),
    (b"IL", "iLivid"),
    (b"JS", "Justseed.it"),
    (b"JT", "JavaTorrent"),
    (b"KG", "KGet"),
    (b"KT", "KTorrent"),
    (b"LC", "LeechCraft"),
    (b"LH", "LH-ABC"),
    (b"LP", "Lphant"),
    (b"LT", "libtorrent"),
    (b"LW", "LimeWire"),
    (b"MK", "Meerkat"),
    (b"MO", "MonoTorrent"),
    (b"MP", "MooPolice"),
    (b"MR", "Miro"),
    (b"MT", "MoonlightTorrent"),
    (b"NB", "Net::BitTorrent"),
    (b"NX", "Net Transport"),
    (b"OS", "OneSwarm"),
    (b"OT", "OmegaTorrent"),
    (b"PB", "Protocol::BitTorrent"),
    (b"PD", "Pando"),
    (b"PI", "PicoTorrent"),
    (b"PT", "PHPTracker"),
    (b"QD", "QQDownload"),
    (b"QT", "Qt 4 Torrent example"),
    (b"RT", "Retriever"),
    (b"RZ", "RezTorrent"),
    (b"SB", "Swiftbit"),
    (b"SD", "Thunder (Xunlei)"),
    (b"SM", "SoMud"),
    (b"SP", "BitSpirit"),
    (b"SS", "SwarmScope"),
    (b"ST", "SymTorrent"),
    (b"SW", "swarmtap"),
    (b"SZ", "Shareaza"),
    (b"S~", "Shareaza alpha/beta"),
    (b"TB", "Torch"),
    (b"TE", "terasaur Seed Bank"),
    (b"TL", "Tribler"),
    (b"TN", "TorrentDotNET"),
    (b"TR", "Transmission"),
    (b"TS", "Torrentstorm"),
    (b"TT", "TuoTu"),
    (b"TX", "Tixati"),
    (b"UL", "uLeecher!"),
    (b"UM", "µTorrent Mac"),
    (b"UT", "µTorrent"),
    (b"UW", "µTorrent Web"),
    (b"VG", "Vagaa"),
    (b"WD", "WebTorrent Desktop"),
    (b"WT", "BitLet"),
    (b"WW", "WebTorrent"),
    (b"WY", "FireTorrent"),
    (b"XF", "Xfplay"),
    (b"XL", "Xunlei"),
    (b"XS", "XSwifter"),
    (b"XT", "XanTorrent"),
    (b"XX", "Xtorrent"),
    (b"ZT", "ZipTorrent"),
    (b"lt", "libTorrent (rakshasa)"),
    (b"qB", "qBittorrent"),
    (b"st", "sharktorrent"),
];

/// Shadow-style single-letter codes.
const SHADOW: &[(u8, &str)] = &[
    (b'A', "ABC"),
    (b'O', "Osprey Permaseed"),
    (b'Q', "BTQueue"),
    (b'R', "Tribler"),
    (b'S', "Shadow's client"),
    (b'T', "BitTornado"),
    (b'U', "UPnP NAT Bit Torrent"),
];

/// `AZUREUS` strictly ascending by code: a compile error otherwise.
const _: () = {
    let mut i = 1;
    while i < AZUREUS.len() {
        let (a, b) = (AZUREUS[i - 1].0, AZUREUS[i].0);
        assert!(a[0] < b[0] || (a[0] == b[0] && a[1] < b[1]));
        i += 1;
    }
};

fn azureus_name(code: &[u8]) -> Option<&'static str> {
    // A linear search of the ~100 codes was ~410 instructions a peer id.
    let code: &[u8; 2] = code.try_into().ok()?;
    AZUREUS
        .binary_search_by(|(c, _)| c.cmp(&code))
        .ok()
        .and_then(|i| AZUREUS.get(i))
        .map(|(_, n)| *n)
}

/// One version character: digits as themselves, letters as 10.. (base 36),
/// as clients use them (libtorrent `-LT1D20-` is 1.13.2.0).
fn ver_char(c: u8) -> Option<u32> {
    match c {
        b'0'..=b'9' => Some(u32::from(c - b'0')),
        b'A'..=b'Z' => Some(u32::from(c - b'A') + 10),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 10),
        _ => None,
    }
}

fn azureus_version(code: &[u8], v: &[u8]) -> String {
    let digits: Vec<Option<u32>> = v.iter().map(|&c| ver_char(c)).collect();
    match code {
        // Transmission: major digit, two-digit minor; a trailing Z/X marks a
        // development build ("-TR300Z-" is 3.00+).
        b"TR" => {
            // Transmission: "-TRabcd-". Before 4.0 `a.bc` (2.94 is TR2940),
            // from 4.0 on `a.b.c` (4.0.5 is TR4050); a trailing Z or X marks
            // a development build.
            let s = String::from_utf8_lossy(v);
            let b = s.as_bytes();
            if b.len() == 4 && b[..3].iter().all(u8::is_ascii_digit) {
                let dev = if matches!(b[3], b'Z' | b'X') { "+" } else { "" };
                let (a, m, p) = (b[0] - b'0', b[1] - b'0', b[2] - b'0');
                return if a >= 4 {
                    format!("{a}.{m}.{p}{dev}")
                } else {
                    format!("{a}.{m}{p}{dev}")
                };
            }
            s.into_owned()
        }
        // µTorrent and friends: three digits and a build letter.
        b"UT" | b"UM" | b"UW" | b"BT" => {
            let mut s = dotted(digits.iter().take(3));
            if let Some(b) = v.get(3).map(|&b| b as char).filter(|c| c.is_ascii_alphabetic()) {
                s.push(b);
            }
            s
        }
        _ => {
            // A trailing zero is a build number nobody quotes.
            let n = if digits.len() == 4 && digits[3] == Some(0) {
                3
            } else {
                digits.len()
            };
            dotted(digits.iter().take(n))
        }
    }
}

/// Version characters joined by dots, `?` for one that is not a version
/// character (what joining each one's `to_string` gave, without a string
/// per part: this runs for every peer id of every connection).
fn dotted<'a>(parts: impl Iterator<Item = &'a Option<u32>>) -> String {
    let mut s = String::with_capacity(12);
    for (i, d) in parts.enumerate() {
        if i > 0 {
            s.push('.');
        }
        match d {
            // Version characters are below 36 (base 36).
            Some(d) if *d < 100 => {
                if *d >= 10 {
                    s.push(char::from(b'0' + (*d / 10) as u8));
                }
                s.push(char::from(b'0' + (*d % 10) as u8));
            }
            Some(d) => s.push_str(&d.to_string()),
            None => s.push('?'),
        }
    }
    s
}

/// The client name and version encoded in a 20-byte peer id, when it follows
/// one of the known conventions.
pub fn client_from_peer_id(id: &[u8]) -> Option<String> {
    if id.len() < 8 {
        return None;
    }
    // Azureus style: -XXVVVV-
    if id[0] == b'-' && id[7] == b'-' {
        let code = &id[1..3];
        let ver = &id[3..7];
        let version = azureus_version(code, ver);
        let mut s = String::with_capacity(24);
        match azureus_name(code) {
            Some(name) => s.push_str(name),
            None => s.push_str(&String::from_utf8_lossy(code)),
        }
        s.push(' ');
        s.push_str(&version);
        return Some(s);
    }
    // Mainline style: M4-3-6-- or M4-10-2-
    if matches!(id[0], b'M' | b'Q') && id[1].is_ascii_digit() {
        let s: String = id[1..8]
            .iter()
            .map(|&b| b as char)
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        let v: Vec<&str> = s.split('-').filter(|p| !p.is_empty()).collect();
        if v.len() >= 2 {
            let name = if id[0] == b'M' { "Mainline" } else { "Queen Bee" };
            return Some(format!("{name} {}", v.join(".")));
        }
    }
    // aria2: "A2-1-36-0-" (major-minor-patch between dashes). Checked before
    // the Shadow table, whose 'A' (ABC) would otherwise claim it.
    if id.starts_with(b"A2-") {
        let s: String = id[3..]
            .iter()
            .map(|&b| b as char)
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        let v: Vec<&str> = s.split('-').filter(|p| !p.is_empty()).take(3).collect();
        if !v.is_empty() {
            return Some(format!("aria2 {}", v.join(".")));
        }
    }
    if id.starts_with(b"exbc") {
        return Some(format!("BitComet {}.{:02}", id[4], id[5]));
    }
    if id.starts_with(b"OP") && id[2..6].iter().all(u8::is_ascii_digit) {
        return Some(format!("Opera {}", String::from_utf8_lossy(&id[2..6])));
    }
    // Shadow style: a letter, up to five version characters, then dashes.
    if let Some((_, name)) = SHADOW.iter().find(|(c, _)| *c == id[0]) {
        let ver: Vec<String> = id[1..6]
            .iter()
            .take_while(|&&b| b != b'-')
            .filter_map(|&b| ver_char(b))
            .map(|d| d.to_string())
            .collect();
        // The dash within bytes 1..9 (fewer when the id is shorter).
        if !ver.is_empty() && id.iter().skip(1).take(8).any(|&b| b == b'-') {
            return Some(format!("{name} {}", ver.join(".")));
        }
    }
    None
}

/// Tidies the BEP 10 `v` string (free text, e.g. "Transmission 2.94",
/// "qBittorrent/4.5.2", "µTorrent 3.4.9"): printable, bounded.
pub fn client_from_ltep_v(v: &[u8]) -> Option<String> {
    const MAX: usize = 64;
    // Printable ASCII (what clients send) up to MAX bytes: every character
    // is kept, so the result is the input without surrounding spaces, made
    // without the three strings the general path builds.
    if v.len() <= MAX && v.iter().all(|b| (0x20..0x7f).contains(b)) {
        return std::str::from_utf8(v.trim_ascii())
            .ok()
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
    }
    let s = String::from_utf8_lossy(v);
    let s: String = s.chars().filter(|c| !c.is_control()).take(MAX).collect();
    let s = s.trim().to_string();
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

/// The printable prefix of a peer id, as people quote them (`-TR2940-`).
pub fn peer_id_prefix(id: &[u8]) -> String {
    id.iter()
        .take(8)
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Azureus-style version as it was written before `dotted` (one
    /// string per part, joined): the oracle for the rewrite.
    fn azureus_version_joined(code: &[u8], v: &[u8]) -> String {
        let digits: Vec<Option<u32>> = v.iter().map(|&c| ver_char(c)).collect();
        let part = |d: &Option<u32>| d.map_or("?".to_string(), |d| d.to_string());
        match code {
            b"TR" => azureus_version(code, v),
            b"UT" | b"UM" | b"UW" | b"BT" => {
                let nums: Vec<String> = digits.iter().take(3).map(part).collect();
                match v.get(3).map(|&b| b as char).filter(|c| c.is_ascii_alphabetic()) {
                    Some(b) => format!("{}{}", nums.join("."), b),
                    None => nums.join("."),
                }
            }
            _ => {
                let mut parts: Vec<String> = digits.iter().map(part).collect();
                if parts.len() == 4 && parts[3] == "0" {
                    parts.pop();
                }
                parts.join(".")
            }
        }
    }

    /// Every version byte in each position (one position at a time over a
    /// base of digits, letters and other bytes), for a known code of each
    /// branch and an unknown one: the same text as the joined parts.
    #[test]
    fn azureus_versions_equal_the_joined_parts() {
        let bases: [&[u8; 4]; 5] = [b"0000", b"1234", b"3Z0B", b"a-9?", b"\xff\x00z0"];
        let mut n = 0;
        for code in [&b"UT"[..], b"BT", b"qB", b"LT", b"ZZ", b"TR"] {
            for base in bases {
                for pos in 0..4 {
                    for b in 0..=255u8 {
                        let mut v = *base;
                        v[pos] = b;
                        assert_eq!(
                            azureus_version(code, &v),
                            azureus_version_joined(code, &v),
                            "{code:?} {v:?}"
                        );
                        n += 1;
                    }
                }
            }
        }
        assert_eq!(n, 6 * 5 * 4 * 256);
    }

    #[test]
    fn known_peer_ids() {
        let cases: &[(&[u8], &str)] = &[
            (b"-TR2940-abcdefghijkl", "Transmission 2.94"),
            (b"-TR300Z-abcdefghijkl", "Transmission 3.00+"),
            (b"-TR4050-abcdefghijkl", "Transmission 4.0.5"),
            (b"-UT3450-abcdefghijkl", "µTorrent 3.4.5"),
            (b"-UM1860-abcdefghijkl", "µTorrent Mac 1.8.6"),
            (b"-UT188B-abcdefghijkl", "µTorrent 1.8.8B"),
            (b"-qB4520-abcdefghijkl", "qBittorrent 4.5.2"),
            (b"-LT1100-abcdefghijkl", "libtorrent 1.1.0"),
            (b"-lt0D80-abcdefghijkl", "libTorrent (rakshasa) 0.13.8"),
            (b"-DE13F0-abcdefghijkl", "Deluge 1.3.15"),
            (b"-BT7990-abcdefghijkl", "BitTorrent 7.9.9"),
            (b"-ZZ1234-abcdefghijkl", "ZZ 1.2.3.4"),
            (b"M4-3-6--abcdefghijkl", "Mainline 4.3.6"),
            (b"S58B-----abcdefghijk", "Shadow's client 5.8.11"),
            (b"A2-1-36-0-abcdefghij", "aria2 1.36.0"),
        ];
        for (id, want) in cases {
            assert_eq!(
                client_from_peer_id(id).as_deref(),
                Some(*want),
                "{:?}",
                String::from_utf8_lossy(id)
            );
        }
        assert_eq!(client_from_peer_id(&[0u8; 20]), None);
        assert_eq!(client_from_peer_id(b"-TR"), None);
    }

    /// Found by the client_id fuzz target: an 8-byte id with a Shadow-style
    /// first letter indexed bytes 1..9. Every prefix of every known style,
    /// at every length, must answer without panicking.
    #[test]
    fn short_ids_never_panic() {
        assert_eq!(client_from_peer_id(b"T\xfdTR3000"), None);
        assert_eq!(client_from_peer_id(b"S58B---").as_deref(), None, "shorter than 8 bytes");
        assert_eq!(
            client_from_peer_id(b"S58B----").as_deref(),
            Some("Shadow's client 5.8.11")
        );
        let styles: &[&[u8]] = &[
            b"-TR2940-abcdefghijkl",
            b"M4-3-6--abcdefghijkl",
            b"S58B-----abcdefghijk",
            b"A2-1-36-0-abcdefghij",
            b"exbc\x01\x02abcdefghijklmn",
            b"OP1234abcdefghijklmn",
            b"T\xfdTR3000abcdefghijk",
        ];
        for id in styles {
            for n in 0..=id.len() {
                let _ = client_from_peer_id(&id[..n]);
            }
        }
    }

    #[test]
    fn ltep_v_is_tidied() {
        assert_eq!(
            client_from_ltep_v(b" Transmission 2.94\n").as_deref(),
            Some("Transmission 2.94")
        );
        assert_eq!(client_from_ltep_v(b"\x00\x01"), None);
        assert_eq!(client_from_ltep_v(&[b'a'; 500]).map(|s| s.len()), Some(64));
        assert_eq!(peer_id_prefix(b"-TR2940-\x00\x01"), "-TR2940-");
    }

    /// `client_from_ltep_v` before its printable-ASCII shortcut: the oracle.
    fn ltep_v_general(v: &[u8]) -> Option<String> {
        let s = String::from_utf8_lossy(v);
        let s: String = s.chars().filter(|c| !c.is_control()).take(64).collect();
        let s = s.trim().to_string();
        (!s.is_empty()).then_some(s)
    }

    #[test]
    fn ltep_v_shortcut_agrees_with_the_general_path() {
        let mut cases: Vec<Vec<u8>> = vec![
            b"Transmission 2.94".to_vec(),
            b"  qBittorrent/4.5.2  ".to_vec(),
            b"   ".to_vec(),
            Vec::new(),
            vec![b'x'; 64],
            vec![b'x'; 65],
            b" \t tab".to_vec(),
            "\u{b5}Torrent 3.4.9".as_bytes().to_vec(),
            b"a\x7fb".to_vec(),
            b"a\x1fb ".to_vec(),
        ];
        // Deterministic pseudo-random strings, mostly printable ASCII.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 80) as usize;
            let mut v = Vec::with_capacity(len);
            for i in 0..len {
                let r = x.rotate_left(i as u32 * 7);
                v.push(match r % 10 {
                    0 => b' ',
                    1 => (r >> 8) as u8,
                    _ => 0x20 + ((r >> 16) % 95) as u8,
                });
            }
            cases.push(v);
        }
        let mut fast = 0;
        for v in &cases {
            assert_eq!(client_from_ltep_v(v), ltep_v_general(v), "{v:?}");
            fast += usize::from(v.len() <= 64 && v.iter().all(|b| (0x20..0x7f).contains(b)));
        }
        assert!(fast > 1_000 && fast < cases.len() - 1_000, "{fast} of {}", cases.len());
    }

    #[test]
    fn azureus_lookup_finds_exactly_the_table() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let code = [a, b];
                let linear = AZUREUS.iter().find(|(c, _)| **c == code).map(|(_, n)| *n);
                assert_eq!(azureus_name(&code), linear, "{code:?}");
            }
        }
        assert_eq!(azureus_name(b"TR"), Some("Transmission"));
        assert_eq!(azureus_name(b"qB"), Some("qBittorrent"));
        assert_eq!(azureus_name(b"A~"), Some("Ares"));
        assert_eq!(azureus_name(b"7T"), Some("aTorrent"));
        assert_eq!(azureus_name(b"zz"), None);
        assert_eq!(azureus_name(b"T"), None);
    }
}
