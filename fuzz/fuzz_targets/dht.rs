//! KRPC parsing and every lazy iterator over the result.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap_wire::dht::{looks_like_krpc, parse_krpc, DhtLimits};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_krpc(data);
    if let Ok(m) = parse_krpc(data, &DhtLimits::default()) {
        let _ = (m.n_nodes(), m.n_values(), m.client(), m.unknown_keys().count());
        if let Some(n) = m.nodes {
            let _ = n.iter().count();
        }
        if let Some(v) = m.values {
            let _ = v.iter().count();
        }
    }
});
