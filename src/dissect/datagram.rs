//! Datagram probes: tests over one UDP datagram, and the uTP consistency
//! check that spans several. Their order is fixed in
//! `dissect::probe_datagram`.
//!
//! One datagram's first bytes never make a uTP connection: DHCP, NetBIOS,
//! DNS and many others open with bytes that parse as a uTP header. A flow is
//! uTP once [`UtpConsistency`] has seen headers in both directions that
//! agree the way BEP 29 peers' headers do (see there).

use crate::proto::tracker_udp::{request_shape, UdpLimits};
use crate::proto::utp::{parse_utp, utp_confidence, UtpConfidence, UtpPacket, UtpProbeLimits, UtpType};

/// KRPC: a bencoded dictionary with a `y` key (BEP 5). Deliberately loose
/// (no check of the last byte): a truncated or malformed message that looks
/// like KRPC is handed to the parser, which reports it.
pub fn is_krpc(d: &[u8]) -> bool {
    const Y: &[u8] = b"1:y1:";
    // `y` is the last key of a message with sorted keys (`...1:y1:qe`):
    // found there at once, the search of the whole datagram (about 570
    // instructions on DHT traffic) only for the others. The same answer.
    let at_end = d.len().checked_sub(7).and_then(|i| d.get(i..i + Y.len())) == Some(Y);
    d.first() == Some(&b'd') && (at_end || memchr::memmem::find(d, Y).is_some())
}

/// LSD: `BT-SEARCH * HTTP/1.1` (BEP 14).
pub fn is_lsd(d: &[u8]) -> bool {
    crate::proto::lsd::looks_like_lsd(d)
}

/// The shape of a BEP 15 request (connect: the protocol id; announce and
/// scrape: action and size), values not judged: with its connection id
/// known, an announce with numwant or amounts out of range is still the
/// client's announce (the tracker side decides, `UdpTrackers`, and hands
/// what it refuses back to the uTP probe).
pub fn is_tracker_request_shape(d: &[u8]) -> bool {
    request_shape(d, &UdpLimits::default()).is_some()
}

/// A uTP header whose fields fit together (`proto::utp::utp_confidence`).
pub fn is_utp_shape(d: &[u8]) -> bool {
    parse_utp(d).is_ok_and(|p| utp_confidence(d, &p, &UtpProbeLimits::default()) != UtpConfidence::NotUtp)
}

/// Packets each direction must show before a uTP connection is believed.
pub const UTP_MIN_PACKETS_PER_SIDE: u32 = 2;

/// Largest distance (16-bit, wrapping) between one side's acknowledgement
/// number and the other side's sequence numbers: what is in flight. uTP
/// windows hold at most a few hundred packets.
const UTP_MAX_ACK_DISTANCE: u16 = 1024;

/// Largest step between consecutive sequence numbers of one side (16-bit,
/// wrapping; backwards steps are retransmissions and reordering).
const UTP_MAX_SEQ_STEP: u16 = 1024;

/// Candidate connections tracked per flow while probing.
const UTP_MAX_CANDIDATES: usize = 8;

/// What one side of a candidate connection showed.
#[derive(Debug, Clone, Copy, Default)]
struct SideSeen {
    n: u32,
    /// The side sent packets as the initiator (SYN with id X, then X+1)
    /// and as the acceptor (id X): exactly one of the two must hold.
    as_initiator: bool,
    as_acceptor: bool,
    last_seq: Option<u16>,
    last_ack: Option<u16>,
    /// A sequence number jumped further than any sender steps.
    broken: bool,
}

/// One candidate connection: the acceptor's id X (BEP 29: the initiator's
/// SYN carries X and its later packets X+1; the acceptor's packets X).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u16,
    sides: [SideSeen; 2],
}

/// The uTP check over several datagrams of one UDP flow: believed when, for
/// one pair of connection ids, both directions sent at least
/// [`UTP_MIN_PACKETS_PER_SIDE`] well-formed headers (version 1, known
/// type, a sane extension chain), one side as initiator and the other as
/// acceptor, each side's sequence numbers progressing in small steps, and
/// each side acknowledging sequence numbers near what the other sent.
/// Random or foreign datagrams agree on all of that with probability far
/// below 2^-30.
#[derive(Debug, Clone, Default)]
pub struct UtpConsistency {
    cands: Vec<Candidate>,
    confirmed: bool,
}

impl UtpConsistency {
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// One uTP-shaped datagram from side `side` (0 or 1). Returns true when
    /// the flow is (now or already) confirmed.
    pub fn packet(&mut self, side: usize, p: &UtpPacket<'_>) -> bool {
        if self.confirmed {
            return true;
        }
        let side = side.min(1);
        let id = p.connection_id;
        // As initiator: a SYN carries X, later packets X+1. As acceptor: X.
        let both = [(id.wrapping_sub(1), true), (id, false)];
        let syn = [(id, true)];
        let views: &[(u16, bool)] = if p.ty == UtpType::Syn { &syn } else { &both };
        for &(x, initiator) in views {
            let i = match self.cands.iter().position(|c| c.id == x) {
                Some(i) => i,
                None => {
                    if self.cands.len() >= UTP_MAX_CANDIDATES {
                        self.cands.remove(0);
                    }
                    self.cands.push(Candidate {
                        id: x,
                        sides: Default::default(),
                    });
                    self.cands.len() - 1
                }
            };
            let Some(c) = self.cands.get_mut(i) else { continue };
            let s = &mut c.sides[side];
            s.n += 1;
            if initiator {
                s.as_initiator = true;
            } else {
                s.as_acceptor = true;
            }
            if let Some(prev) = s.last_seq {
                let fwd = p.seq_nr.wrapping_sub(prev);
                let back = prev.wrapping_sub(p.seq_nr);
                if fwd > UTP_MAX_SEQ_STEP && back > UTP_MAX_SEQ_STEP {
                    s.broken = true;
                }
            }
            s.last_seq = Some(p.seq_nr);
            if p.ty != UtpType::Syn {
                s.last_ack = Some(p.ack_nr);
            }
            if c.consistent() {
                self.confirmed = true;
                self.cands.clear();
                return true;
            }
        }
        false
    }
}

impl Candidate {
    fn consistent(&self) -> bool {
        let [a, b] = &self.sides;
        let enough = a.n >= UTP_MIN_PACKETS_PER_SIDE && b.n >= UTP_MIN_PACKETS_PER_SIDE;
        // One side initiates (SYN with X, then X+1) and the other accepts
        // (X); or a host talks to itself through a NAT (hairpin), and every
        // packet shows up in both directions with both roles.
        let split =
            (a.as_initiator != a.as_acceptor) && (b.as_initiator != b.as_acceptor) && a.as_initiator != b.as_initiator;
        let hairpin = a.as_initiator && a.as_acceptor && b.as_initiator && b.as_acceptor;
        let roles = split || hairpin;
        let near = |ack: Option<u16>, seq: Option<u16>| match (ack, seq) {
            (Some(ack), Some(seq)) => {
                seq.wrapping_sub(ack) <= UTP_MAX_ACK_DISTANCE || ack.wrapping_sub(seq) <= UTP_MAX_ACK_DISTANCE
            }
            _ => false,
        };
        // The side that only sent its SYN has no ack yet: the acceptor's
        // ack of it is enough then.
        let acks = (near(a.last_ack, b.last_seq) || a.last_ack.is_none())
            && (near(b.last_ack, a.last_seq) || b.last_ack.is_none())
            && (a.last_ack.is_some() || b.last_ack.is_some());
        enough && roles && acks && !a.broken && !b.broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(ty: u8, id: u16, seq: u16, ack: u16, payload: &[u8]) -> Vec<u8> {
        let mut d = vec![(ty << 4) | 1, 0];
        d.extend(id.to_be_bytes());
        d.extend(0x1234_5678u32.to_be_bytes());
        d.extend(0u32.to_be_bytes());
        d.extend(0x0010_0000u32.to_be_bytes());
        d.extend(seq.to_be_bytes());
        d.extend(ack.to_be_bytes());
        d.extend(payload);
        d
    }

    fn feed(c: &mut UtpConsistency, side: usize, d: &[u8]) -> bool {
        c.packet(side, &parse_utp(d).expect("utp"))
    }

    #[test]
    fn a_handshake_and_data_both_ways_confirm() {
        let mut c = UtpConsistency::default();
        assert!(!feed(&mut c, 0, &pkt(4, 1000, 500, 0, b"")));
        assert!(!feed(&mut c, 1, &pkt(2, 1000, 9000, 500, b"")));
        assert!(!feed(&mut c, 0, &pkt(0, 1001, 501, 8999, b"\x13BitTorrent protocol")));
        assert!(feed(&mut c, 1, &pkt(0, 1000, 9000, 501, b"\x13BitTorrent protocol")));
    }

    #[test]
    fn one_direction_or_unrelated_ids_never_confirm() {
        let mut c = UtpConsistency::default();
        for i in 0..50u16 {
            assert!(!feed(&mut c, 0, &pkt(0, 7, 100 + i, 3, b"x")));
        }
        let mut c = UtpConsistency::default();
        for i in 0..50u16 {
            assert!(!feed(&mut c, i as usize % 2, &pkt(0, 7 + 100 * i, 100 + i, 3, b"x")));
        }
        // Same ids both ways (no roles): not uTP.
        let mut c = UtpConsistency::default();
        for i in 0..10u16 {
            assert!(!feed(&mut c, i as usize % 2, &pkt(0, 7, 100 + i, 100 + i, b"x")));
        }
    }

    #[test]
    fn a_host_talking_to_itself_through_a_nat_confirms() {
        // small_torrent.pcap: every packet of 192.168.0.102:36360 comes back
        // from its public address unchanged.
        let mut c = UtpConsistency::default();
        let pkts = [
            pkt(4, 0xdcbb, 0x4d32, 0, b""),
            pkt(2, 0xdcbb, 0x4ecd, 0x4d32, b""),
            pkt(0, 0xdcbc, 0x4d33, 0x4ecc, b"\x13BitTorrent protocol"),
        ];
        let mut confirmed = false;
        for p in &pkts {
            confirmed |= feed(&mut c, 0, p);
            confirmed |= feed(&mut c, 1, p);
        }
        assert!(confirmed);
    }

    #[test]
    fn mid_stream_data_both_ways_confirms() {
        let mut c = UtpConsistency::default();
        assert!(!feed(&mut c, 0, &pkt(0, 301, 40, 7000, b"abc")));
        assert!(!feed(&mut c, 1, &pkt(2, 300, 7000, 40, b"")));
        assert!(!feed(&mut c, 0, &pkt(0, 301, 41, 7000, b"def")));
        assert!(feed(&mut c, 1, &pkt(2, 300, 7000, 41, b"")));
    }
}
