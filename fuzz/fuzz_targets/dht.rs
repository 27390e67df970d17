//! KRPC parsing and every lazy iterator over the result; the single-walk
//! parser must agree with the old one (`dht::reference`) on every input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap_wire::dht::{looks_like_krpc, parse_krpc, reference, DhtLimits};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_krpc(data);
    let limits = DhtLimits::default();
    let parsed = parse_krpc(data, &limits);
    assert!(
        reference::same(&parsed, &reference::parse_krpc(data, &limits)),
        "the single walk and the old parser differ"
    );
    if let Ok(m) = parsed {
        let _ = (m.n_nodes(), m.n_values(), m.client(), m.unknown_keys().count());
        assert_eq!(m.unknown_keys().count(), m.n_unknown_keys());
        if let Some(n) = m.nodes {
            let _ = n.iter().count();
        }
        if let Some(v) = m.values {
            let _ = v.iter().count();
        }
    }
});
