//! The uTP header parser and the false-positive guard: a parsed header
//! borrows inside the datagram, its extension chain walks to the payload,
//! and the selective ACK yields at most 8 numbers per mask byte.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap_wire::utp::{parse_utp, plausible_utp, utp_confidence, UtpProbeLimits};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = parse_utp(data) else { return };
    assert_eq!(p.header_len + p.payload.len(), data.len());
    let mut chain = 0usize;
    let mut n = 0u16;
    for e in p.extensions() {
        chain += 2 + e.body.len();
        n += 1;
    }
    assert_eq!(20 + chain, p.header_len);
    assert_eq!(n, p.n_extensions);
    let sack_len = p.sack.map_or(0, <[u8]>::len);
    assert!(p.sack_acked().count() <= sack_len * 8);
    let _ = plausible_utp(data, &p);
    let _ = utp_confidence(data, &p, &UtpProbeLimits::default());
});
