//! BEP 15 request/response parsing and classification.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap_wire::tracker_udp::{
    classify_request, classify_response, parse_request, parse_response, AddrFamily, UdpLimits,
};

fuzz_target!(|data: &[u8]| {
    let l = UdpLimits::default();
    let _ = parse_request(data, &l);
    let _ = classify_request(data, &l);
    for fam in [AddrFamily::V4, AddrFamily::V6] {
        let _ = parse_response(data, fam, &l);
        let _ = classify_response(data, fam, &l);
    }
});
