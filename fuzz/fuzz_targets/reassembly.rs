//! TCP reassembly over fuzzer-chosen segments, acks and fins; the buffer
//! never exceeds its limit and delivery accounting always adds up.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap::flow::reassembly::{ReassemblyLimits, StreamReassembler};

fuzz_target!(|data: &[u8]| {
    let limits = ReassemblyLimits { max_ooo_bytes: 4096, max_ooo_segments: 16, ..ReassemblyLimits::default() };
    let mut r = StreamReassembler::new(limits);
    let mut delivered = 0u64;
    let mut rest = data;
    while rest.len() >= 6 {
        let op = rest[0] % 4;
        let seq = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        let len = usize::from(rest[5]).min(rest.len() - 6);
        let payload = &rest[6..6 + len];
        let mut out = |c: swarmtap::flow::Chunk<'_>| match c {
            swarmtap::flow::Chunk::Data(d) => delivered += d.len() as u64,
            swarmtap::flow::Chunk::Gap(n) => delivered += n,
        };
        match op {
            0 | 1 => r.segment(seq, payload, &mut out),
            2 => r.acked(seq, &mut out),
            _ => r.fin(seq, &mut out),
        }
        assert!(r.buffered_bytes() <= limits.max_ooo_bytes);
        rest = &rest[6 + len..];
    }
    r.flush(&mut |_| {});
});
