//! .torrent / info dictionary parsing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap_wire::metainfo::{parse_info, parse_torrent};

fuzz_target!(|data: &[u8]| {
    let _ = parse_torrent(data);
    let _ = parse_info(data);
});
