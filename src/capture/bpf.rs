//! BPF filtering of frames read from files, through libpcap.
//!
//! libpcap compiles a filter expression (pcap-filter(7) syntax, the one
//! tcpdump and Wireshark's capture filters use) for one link-layer type at a
//! time, because the offsets of IP and port fields depend on the link header.
//! A pcapng file may hold interfaces of several link types, so [`FilterSet`]
//! keeps one compiled program per link type, compiled on first use and
//! cached in a vector sorted by link type (binary search, the last hit
//! remembered), so a hostile file alternating among thousands of link
//! types costs a logarithm per frame, not a scan; at most 65,536 entries.
//!
//! Link types in files are LINKTYPE_* values, while libpcap compiles for its
//! DLT_* values. They are equal except for a few historical codes, which
//! [`linktype_to_dlt`] maps the way libpcap's own savefile reader does
//! (values as defined on Linux and most BSDs).
//!
//! Invariants and caveats:
//! * A frame is matched on its captured bytes only: the pcap crate hands
//!   libpcap the captured length as the wire length too, so `greater`/`less`
//!   and `len` compare against the captured length of snaplen-cut frames.
//! * A link type the expression cannot be compiled for (say `tcp` on USB)
//!   matches nothing; the reader counts those frames apart.
//! * All unsafe code is inside the pcap crate; this module has none.

use pcap::{BpfProgram, Capture, Linktype};

/// LINKTYPE_ETHERNET, used to check an expression's syntax before any link
/// type of a file is known.
pub const LINKTYPE_ETHERNET: u16 = 1;

/// Maps a file's LINKTYPE_* value to libpcap's DLT_* value.
pub fn linktype_to_dlt(link_type: u16) -> i32 {
    match link_type {
        100 => 11, // ATM_RFC1483
        101 => 12, // RAW (DLT_RAW is 12 on Linux and most BSDs)
        102 => 15, // SLIP_BSDOS
        103 => 16, // PPP_BSDOS
        106 => 19, // ATM_CLIP
        other => i32::from(other),
    }
}

/// libpcap's short name of a link type (e.g. `EN10MB`), if it knows one.
pub fn link_type_name(link_type: u16) -> Option<String> {
    Linktype(linktype_to_dlt(link_type)).get_name().ok()
}

/// Whether libpcap knows the link type; a frame of an unknown one is
/// counted in `ReaderStats::n_unknown_link_type`.
pub fn link_type_known(link_type: u16) -> bool {
    link_type_name(link_type).is_some()
}

/// Compiles `expr` for `link_type`; `Err` holds libpcap's message.
pub fn compile(expr: &str, link_type: u16) -> Result<BpfProgram, String> {
    let dead = Capture::dead(Linktype(linktype_to_dlt(link_type))).map_err(pcap_msg)?;
    // The program owns its instructions; the dead handle may go.
    dead.compile(expr, true).map_err(pcap_msg)
}

fn pcap_msg(e: pcap::Error) -> String {
    match e {
        pcap::Error::PcapError(msg) => msg,
        other => other.to_string(),
    }
}

/// One filter expression and its programs, one per link type seen.
pub(crate) struct FilterSet {
    expr: String,
    /// (link type, program; `None` when it does not compile for that type).
    progs: Vec<(u16, Option<BpfProgram>)>,
    /// Index in `progs` of the last link type looked up.
    last: usize,
}

impl FilterSet {
    pub(crate) fn new(expr: &str) -> FilterSet {
        FilterSet {
            expr: expr.to_string(),
            progs: Vec::new(),
            last: 0,
        }
    }

    pub(crate) fn expr(&self) -> &str {
        &self.expr
    }

    /// Compiles for `link_type` unless already done; `Err` when it does not
    /// compile (the failure is cached too, so it is not retried per frame).
    pub(crate) fn prepare(&mut self, link_type: u16) -> Result<(), String> {
        self.slot(link_type).1
    }

    /// Index in `progs` of `link_type`'s entry, compiling it if new, and
    /// whether it compiled.
    fn slot(&mut self, link_type: u16) -> (usize, Result<(), String>) {
        let idx = match self.progs.binary_search_by_key(&link_type, |(lt, _)| *lt) {
            Ok(i) => i,
            Err(i) => {
                let compiled = compile(&self.expr, link_type);
                let result = compiled.as_ref().map(|_| ()).map_err(Clone::clone);
                self.progs.insert(i, (link_type, compiled.ok()));
                self.last = i;
                return (i, result);
            }
        };
        let ok = match self.progs.get(idx) {
            Some((_, Some(_))) => Ok(()),
            _ => Err("does not compile for this link type".to_string()),
        };
        (idx, ok)
    }

    /// `Some(matched)`, or `None` when the expression does not compile for
    /// the frame's link type.
    pub(crate) fn matches(&mut self, link_type: u16, frame: &[u8]) -> Option<bool> {
        let idx = match self.progs.get(self.last) {
            Some((lt, _)) if *lt == link_type => self.last,
            _ => match self.progs.binary_search_by_key(&link_type, |(lt, _)| *lt) {
                Ok(i) => i,
                // New link type: compile once; a failure is cached as None.
                Err(_) => self.slot(link_type).0,
            },
        };
        self.last = idx;
        let (_, prog) = self.progs.get(idx)?;
        prog.as_ref().map(|p| p.filter(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 + UDP 6881 -> 6881, no payload.
    fn eth_udp() -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&ipv4_udp());
        f
    }

    fn ipv4_udp() -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        ip.extend_from_slice(&[0x1a, 0xe1, 0x1a, 0xe1, 0, 8, 0, 0]);
        ip
    }

    #[test]
    fn compiles_per_link_type() {
        let mut f = FilterSet::new("udp port 6881");
        assert!(f.prepare(LINKTYPE_ETHERNET).is_ok());
        assert!(f.prepare(101).is_ok(), "LINKTYPE_RAW maps to DLT_RAW");
        assert_eq!(f.matches(1, &eth_udp()), Some(true));
        assert_eq!(f.matches(101, &ipv4_udp()), Some(true));
        assert_eq!(f.matches(1, &ipv4_udp()), Some(false));
        // Never panics on short or empty frames.
        assert_eq!(f.matches(1, &[]), Some(false));
        assert_eq!(f.matches(1, &[0x08]), Some(false));
        let mut t = FilterSet::new("tcp");
        assert_eq!(t.matches(1, &eth_udp()), Some(false));
        // Entries stay sorted and found whatever order link types come in.
        let mut m = FilterSet::new("udp");
        for lt in [276, 113, 0, 101, 1, 12] {
            assert!(m.prepare(lt).is_ok(), "{lt}");
        }
        assert_eq!(m.matches(101, &ipv4_udp()), Some(true));
        assert_eq!(m.matches(1, &eth_udp()), Some(true));
        assert_eq!(m.matches(101, &ipv4_udp()), Some(true));
        assert_eq!(
            m.matches(228, &ipv4_udp()),
            Some(true),
            "LINKTYPE_IPV4, compiled on first use"
        );
        assert!(m.progs.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn bad_expression_and_unsupported_link_type() {
        assert!(compile("udp portt 1", 1).is_err());
        let mut f = FilterSet::new("udp");
        // LINKTYPE_USB_LINUX (189): no IP in it.
        assert!(f.prepare(189).is_err());
        assert_eq!(f.matches(189, &[0; 64]), None);
        assert_eq!(f.matches(189, &[0; 64]), None);
        assert_eq!(f.matches(1, &eth_udp()), Some(true));
    }

    #[test]
    fn names() {
        assert_eq!(link_type_name(1).as_deref(), Some("EN10MB"));
        assert_eq!(link_type_name(101).as_deref(), Some("RAW"));
        assert!(link_type_known(276), "LINUX_SLL2");
        assert!(!link_type_known(65000));
    }
}
