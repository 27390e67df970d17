//! An HTTP tracker conversation: records of `[flags, len, bytes]` fed to
//! the client or server side (flags bit 0), or `[flags, len]` for a gap of
//! `len + 1` bytes on that side (bit 1),
//! so requests, responses, pipelining and losses interleave at
//! fuzzer-chosen points.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap_wire::tracker_http::{HttpLimits, HttpSession, Side};

fuzz_target!(|data: &[u8]| {
    let mut s = HttpSession::new(HttpLimits::default());
    let mut n = 0u64;
    let mut rest = data;
    while let [flags, len, tail @ ..] = rest {
        let side = if flags & 1 == 0 { Side::Client } else { Side::Server };
        if flags & 2 != 0 {
            s.gap(side, u64::from(*len) + 1, &mut |_, _| n += 1);
            rest = tail;
            continue;
        }
        let (chunk, after) = tail.split_at(usize::from(*len).min(tail.len()));
        s.feed(side, chunk, &mut |_, _| n += 1);
        rest = after;
    }
    s.finish(&mut |_, _| n += 1);
});
