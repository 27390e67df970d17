//! The whole pipeline: the input is a capture file (pcap header added when
//! the fuzzer's bytes lack one), analyzed with every table encoded as
//! Parquet (column builders, pages, zstd, footers) and no file written
//! (`analyze_without_files`): no folder, 21 files and 22 fsyncs per input.
//! Most of an input's CPU (~160 ms) is libFuzzer's comparison tracing of
//! the unoptimized dependencies (polars), not the file system.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmtap::capture::InputSpec;
use swarmtap::config::Settings;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("in.pcap");
    let mut bytes = Vec::new();
    if !data.starts_with(&[0xd4, 0xc3, 0xb2, 0xa1]) && !data.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
        bytes.extend([
            0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
        ]);
    }
    bytes.extend_from_slice(data);
    if std::fs::write(&path, &bytes).is_err() {
        return;
    }
    let settings = Settings {
        threads: 1,
        n_shards: 4,
        ..Settings::default()
    };
    let _ = swarmtap::pipeline::analyze_without_files(vec![InputSpec::Path(path)], None, &settings, Vec::new());
});
