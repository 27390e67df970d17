//! uTP connection tracking over arbitrary datagrams: records of
//! `[flags, len, bytes]` go through the header parser and, when they parse,
//! into one flow's tracker from side A or B (flags bit 0); any ids, types
//! and sequence numbers, so several connections, SYN collisions, tombstones
//! and eviction. Packet time advances by `flags >> 2` seconds and bit 1
//! runs idle expiry. The buffer and connection bounds hold after every
//! packet. The single-connection stream is checked against a model in the
//! `reassembly` target.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap::flow::utp_stream::{UtpLimits, UtpTracker};
use swarmtap::proto::utp::parse_utp;

fuzz_target!(|data: &[u8]| {
    let limits = UtpLimits {
        max_conns: 4,
        max_ooo_pkts_per_dir: 8,
        max_ooo_bytes_per_dir: 2048,
        max_ooo_bytes_per_flow: 3072,
        max_seq_ahead: 64,
        idle_timeout_us: 60_000_000,
        closed_linger_us: 10_000_000,
        ..UtpLimits::default()
    };
    let mut t = UtpTracker::new(limits);
    let mut rest = data;
    let mut ts = 0i64;
    let mut n = 0u64;
    while let [flags, len, tail @ ..] = rest {
        let (d, after) = tail.split_at(usize::from(*len).min(tail.len()));
        ts += i64::from(flags >> 2) * 1_000_000;
        if let Ok(p) = parse_utp(d) {
            t.packet(ts, flags & 1 == 0, &p, &mut |_| n += 1);
            assert!(t.n_tracked() <= limits.max_conns);
            assert!(t.buffered_bytes() <= limits.max_ooo_bytes_per_flow);
        }
        if flags & 2 != 0 {
            t.expire(ts, &mut |_| n += 1);
        }
        rest = after;
    }
    t.flush(&mut |_| n += 1);
    assert_eq!(t.n_tracked(), 0);
    assert_eq!(t.buffered_bytes(), 0);
});
