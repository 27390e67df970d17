//! The stage of one step runs while the shards take the next
//! (`Engine::shards_step`): what the stage hands back to the shards reaches
//! them a step later than when each step waited for the stage. These tests
//! drive the engine both ways over inputs built so that the delay would
//! show if it were handled wrong, and want the same rows and counts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use swarmtap::capture::{CaptureReader, FrameBatch, InputSpec};
use swarmtap::config::Settings;
use swarmtap::pipeline::{CaptureCounts, Engine};
use swarmtap::sink::RowBatch;

use super::corpus;

/// Every frame of `path` in batches of `settings`' size.
fn batches(path: &Path, settings: &Settings) -> Vec<FrameBatch> {
    let mut r = CaptureReader::open(&InputSpec::Path(path.to_path_buf()), None).expect("open");
    let mut out = Vec::new();
    loop {
        let mut b = FrameBatch::default();
        if !r
            .read_batch(&mut b, settings.limits.batch_bytes, settings.limits.batch_frames)
            .expect("read")
        {
            return out;
        }
        out.push(b);
    }
}

struct EngineRun {
    rows: RowBatch,
    counts: HashMap<String, CaptureCounts>,
    barrier_waits: u64,
}

/// The engine over `input` as `analyze` drives it: overlapped, or each
/// step's stage before the next step's shards (`one_step_at_a_time`).
fn drive(input: &[FrameBatch], name: &str, settings: &Settings, overlapped: bool) -> EngineRun {
    let mut engine = Engine::new(settings, Arc::new(vec![name.to_string()]), Vec::new()).expect("engine");
    if !overlapped {
        engine.one_step_at_a_time();
    }
    let mut rows = RowBatch::default();
    let mut emit = |mut r: RowBatch| {
        rows.append(&mut r);
        Ok(())
    };
    for b in input {
        engine.batch(b, &mut emit).expect("batch");
    }
    engine.end_flows(&mut emit).expect("end_flows");
    let barrier_waits = engine.n_barrier_waits();
    let (mut last, counts, _) = engine.finish();
    rows.append(&mut last);
    EngineRun {
        rows,
        counts,
        barrier_waits,
    }
}

/// The engine overlapped with 1 and 2 worker threads, against one step
/// at a time: every row, in order, and every capture counter equal. The
/// run with 2 threads is returned.
fn assert_overlap_changes_nothing(input: &[FrameBatch], name: &str, settings: &Settings) -> EngineRun {
    let one_at_a_time = drive(input, name, settings, false);
    assert_eq!(one_at_a_time.barrier_waits, 0);
    let want = format!("{:?}", one_at_a_time.rows);
    let counters = |r: &EngineRun| format!("{:?}", r.counts.get(name));
    let mut runs = Vec::new();
    for threads in [1, 2] {
        let s = Settings {
            threads,
            ..settings.clone()
        };
        let got = drive(input, name, &s, true);
        assert!(
            format!("{:?}", got.rows) == want,
            "{name}: rows differ overlapped, {threads} thread(s)"
        );
        assert_eq!(
            counters(&got),
            counters(&one_at_a_time),
            "{name}: counters, {threads} thread(s)"
        );
        runs.push(got);
    }
    let two = runs.pop().expect("two runs");
    assert_eq!(runs.pop().map(|r| r.barrier_waits), Some(two.barrier_waits));
    two
}

#[test]
fn metadata_rebuilt_in_one_step_reaches_the_shards_of_the_next() {
    // magnet.pcap: the info dictionary comes in one ut_metadata piece (four
    // peers send it). Renumbered so that each frame after a ut_metadata
    // message comes `metadata_join_frames` numbers later (as a capture
    // filter leaves gaps), the step after the one that completed the
    // dictionary needs it for its very first packet: its pieces are
    // verified only if the stage of the step before ran first. Overlapped
    // runs wait for it there; without that wait they verify fewer pieces.
    let settings = Settings::default();
    let join = settings.limits.metadata_join_frames;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-pcaps/magnet.pcap");
    let plain = batches(&path, &settings);
    let before = assert_overlap_changes_nothing(&plain, "magnet.pcap", &settings);
    // As the metadata tests say: 75 whole pieces verified, all good.
    assert_eq!(before.rows.pieces.len(), 75);
    let meta_frames: Vec<u64> = before
        .rows
        .peer_messages
        .iter()
        .filter(|m| m.ext.as_deref() == Some("ut_metadata"))
        .map(|m| m.frame)
        .collect();
    assert!(meta_frames.len() >= 4, "{meta_frames:?}");
    let mut gapped = plain;
    for b in &mut gapped {
        for f in &mut b.frames {
            let n = meta_frames.iter().filter(|&&m| m < f.frame_no).count() as u64;
            f.frame_no += n * join;
        }
    }
    // Steps end at gaps; with the default batch size the step after a
    // dictionary's completion is up to 2 Ki frames, every one of them at
    // or past the frame from which the dictionary is used.
    let after = assert_overlap_changes_nothing(&gapped, "magnet.pcap", &settings);
    assert!(after.barrier_waits > 0);
    // Every piece that starts after the dictionary is complete is now
    // verified on every connection: all 91 whole pieces, as many as with
    // the .torrent given up front.
    assert_eq!(after.rows.pieces.len(), 91);
    assert!(after.rows.pieces.iter().all(|p| p.verified));
    // Batches of 7 frames: steps end everywhere, the same again.
    let small = Settings {
        limits: swarmtap::config::Limits {
            batch_frames: 7,
            ..settings.limits
        },
        ..settings.clone()
    };
    let mut gapped7 = batches(&path, &small);
    for b in &mut gapped7 {
        for f in &mut b.frames {
            let n = meta_frames.iter().filter(|&&m| m < f.frame_no).count() as u64;
            f.frame_no += n * join;
        }
    }
    let seven = assert_overlap_changes_nothing(&gapped7, "magnet.pcap", &small);
    assert_eq!(seven.rows.pieces.len(), 91);
}

#[test]
fn an_anomaly_kind_full_at_a_step_end_is_gated_as_before() {
    // codemonkey.pcap: 30 peer_wire resync rows, the first five at frames
    // 58, 58, 121, 121 and 178. With a cap of 4 rows a kind and steps of
    // 121 frames the kind fills with the last row of the first step; the
    // shards of the second step (which has the row at frame 178) are told
    // only after it when steps overlap: the rows they build anyway are
    // dropped and counted by the gate, as those they withhold otherwise.
    let Some(c) = corpus() else { return };
    let path = c.join("tcoppi__BittorrentReconstituter/codemonkey.pcap");
    let name = "codemonkey.pcap";
    let settings = Settings::default();
    let full = drive(&batches(&path, &settings), name, &settings, true);
    let resync: Vec<u64> = full
        .rows
        .anomalies
        .iter()
        .filter(|a| a.kind == "resync")
        .filter_map(|a| a.frame)
        .collect();
    assert_eq!(resync.len(), 30);
    assert_eq!(resync[..5], [58, 58, 121, 121, 178]);
    let n_anomalies = full.counts.get(name).map(|c| c.n_anomalies);
    assert_eq!(n_anomalies, Some(63));
    for (cap, step) in [(4, 121), (2, 58), (1, 1), (3, 7)] {
        let s = Settings {
            limits: swarmtap::config::Limits {
                max_anomaly_rows_per_kind: cap,
                batch_frames: step,
                ..settings.limits
            },
            ..settings.clone()
        };
        let r = assert_overlap_changes_nothing(&batches(&path, &s), name, &s);
        let n_resync = r.rows.anomalies.iter().filter(|a| a.kind == "resync").count();
        assert_eq!(n_resync as u64, cap, "cap {cap}, steps of {step}");
        // Every anomaly counted, whether its row was built or not.
        assert_eq!(r.counts.get(name).map(|c| c.n_anomalies), n_anomalies);
    }
}
