//! uTP: datagrams split from the input (length-prefixed) go through the
//! header parser, the plausibility rules and one connection tracker.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap::flow::utp_stream::{UtpLimits, UtpTracker};
use swarmtap::proto::utp::{parse_utp, plausible_utp};

fuzz_target!(|data: &[u8]| {
    let mut t = UtpTracker::new(UtpLimits::default());
    let mut rest = data;
    let mut ts = 0i64;
    let mut n = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let take = usize::from(len).min(tail.len());
        let (d, after) = tail.split_at(take);
        if let Ok(p) = parse_utp(d) {
            let _ = plausible_utp(d, &p);
            t.packet(ts, len & 1 == 0, &p, &mut |_| n += 1);
        }
        ts += i64::from(len) * 1000;
        rest = after;
    }
    t.flush(&mut |_| n += 1);
});
