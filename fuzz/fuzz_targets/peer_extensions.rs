//! BEP 9 ut_metadata and BEP 11 ut_pex payloads: no panic, a data piece
//! always fits its declared size, the entry bound holds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap_wire::{ut_metadata, ut_pex};

fuzz_target!(|data: &[u8]| {
    if let Ok(ut_metadata::MetadataMsg::Data {
        piece,
        total_size,
        data: d,
    }) = ut_metadata::parse(data)
    {
        assert_eq!(ut_metadata::piece_len(piece, total_size), Some(d.len() as u32));
    }
    if let Ok(m) = ut_pex::parse(data) {
        let _ = m.anomalies();
        let mut n = 0usize;
        let _ = m.entries(64, |_| n += 1);
        assert!(n <= 64);
    }
});
