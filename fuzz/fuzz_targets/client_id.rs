//! Client names from peer ids (BEP 20 and the older styles) and from the
//! extension handshake's `v`: no panic on any bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap_wire::client_id::{client_from_ltep_v, client_from_peer_id, peer_id_prefix};

fuzz_target!(|data: &[u8]| {
    let _ = client_from_peer_id(data);
    let _ = client_from_ltep_v(data);
    let _ = peer_id_prefix(data);
});
