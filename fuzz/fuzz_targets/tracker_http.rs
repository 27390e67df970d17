//! An HTTP tracker conversation: bytes alternate between client and server
//! in fuzzer-chosen pieces, with gaps.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap::proto::tracker_http::{HttpLimits, HttpSession, Side};

fuzz_target!(|data: &[u8]| {
    let mut s = HttpSession::new(HttpLimits::default());
    let mut n = 0u64;
    let mut rest = data;
    let mut side = Side::Client;
    while let Some((&len, tail)) = rest.split_first() {
        let take = usize::from(len).min(tail.len());
        let (chunk, after) = tail.split_at(take);
        if len == 0xff {
            s.gap(side, 17, &mut |_, _| n += 1);
        } else {
            s.feed(side, chunk, &mut |_, _| n += 1);
        }
        side = if len & 1 == 0 { Side::Client } else { Side::Server };
        rest = after;
    }
    s.finish(&mut |_, _| n += 1);
});
