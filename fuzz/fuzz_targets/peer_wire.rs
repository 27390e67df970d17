//! The peer-wire framer over arbitrary bytes, cut at fuzzer-chosen points
//! with gaps between pieces; checks the buffer bound after every chunk.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap_wire::peer_wire::{PeerWireFramer, PeerWireLimits};
use swarmtap_wire::Chunk;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let limits = PeerWireLimits::default();
    let mut f = if ctl & 1 == 0 {
        PeerWireFramer::new(limits)
    } else {
        PeerWireFramer::new_midstream(limits)
    };
    let step = usize::from(ctl >> 1).max(1);
    let mut n = 0u64;
    for (i, c) in rest.chunks(step).enumerate() {
        if i % 7 == 3 {
            f.feed(Chunk::Gap(u64::from(c[0])), &mut |_| n += 1);
        }
        f.feed(Chunk::Data(c), &mut |_| n += 1);
        assert!(
            f.buffered_bytes() <= (limits.max_buffered_body as usize).max(limits.max_hunt_window as usize) * 2 + 4096
        );
    }
    f.finish(&mut |_| n += 1);
});
