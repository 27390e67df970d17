//! BEP 14 local service discovery announces: no panic, and the bounds on
//! info hashes and anomalies hold.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap_wire::lsd::{looks_like_lsd, parse_lsd, LsdLimits};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_lsd(data);
    let limits = LsdLimits::default();
    if let Ok(a) = parse_lsd(data, &limits) {
        let n = a.infohashes().count();
        assert_eq!(n, a.n_infohashes());
        assert!(n <= limits.max_infohashes);
        assert!(a.anomalies().len() as u64 <= u64::from(a.n_anomalies()));
    }
});
