//! Tables that count the same things agree with each other: a capture's
//! `capture_stats.n_anomalies` with its `anomalies` rows, an anomaly's
//! frame and time with the capture's own record, a peer's byte totals with
//! the connections its `conn_ids` lists. Run on the samples and on the
//! public corpus.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use polars::prelude::{DataFrame, DataType};
use swarmtap::capture::{expand_inputs, CaptureReader, FrameBatch, InputSpec};
use swarmtap::config::Settings;
use swarmtap::pipeline::RunSummary;
use swarmtap::proto::metainfo::parse_torrent;

use super::{corpus, strs, table, u64s, Run};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-pcaps")
}

/// The 11 sample captures (sample-pcaps/*.pcap; not the built/ ones, which
/// other tests own), in name order.
fn sample_captures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(samples())
        .expect("samples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    v.sort();
    assert_eq!(v.len(), 11);
    v
}

fn i64s(df: &DataFrame, col: &str) -> Vec<Option<i64>> {
    df.column(col)
        .expect(col)
        .cast(&DataType::Int64)
        .expect("cast")
        .i64()
        .expect("i64")
        .iter()
        .collect()
}

/// `analyze` as the binary runs it, with the run's summary.
fn analyze(inputs: &[PathBuf], torrents: &[PathBuf], settings: &Settings) -> (Run, RunSummary) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("out");
    let exp = expand_inputs(inputs).expect("inputs");
    let metas = torrents
        .iter()
        .map(|t| parse_torrent(&std::fs::read(t).expect("read torrent")).expect("torrent"))
        .collect();
    let s = swarmtap::pipeline::analyze(exp.inputs, None, &dir, settings, metas).expect("analyze");
    (Run { _tmp: tmp, dir }, s)
}

/// Checks that each capture's `n_anomalies` is its number of `anomalies`
/// rows (no kind reached the row cap in these runs) and that the summary
/// counts every row; returns the rows per capture (empty: run-level).
fn anomalies_per_capture(r: &Run, s: &RunSummary) -> BTreeMap<String, u64> {
    let cs = table(r, "capture_stats");
    let an = table(r, "anomalies");
    let mut rows: BTreeMap<String, u64> = BTreeMap::new();
    for c in strs(&an, "capture") {
        *rows.entry(c.unwrap_or_default()).or_default() += 1;
    }
    for (c, n) in strs(&cs, "capture").into_iter().zip(u64s(&cs, "n_anomalies")) {
        let c = c.unwrap_or_default();
        assert_eq!(n, Some(rows.get(&c).copied().unwrap_or(0)), "capture {c}");
    }
    assert_eq!(s.n_anomalies, an.height() as u64, "summary");
    rows
}

#[test]
fn n_anomalies_equals_the_anomaly_rows_of_each_capture() {
    // The samples in one run: the swarm's conflicts name the claim's
    // capture (they were counted nowhere before: 5 rows, 0 counted).
    let torrents: Vec<PathBuf> = std::fs::read_dir(samples())
        .expect("samples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "torrent"))
        .collect();
    let (r, s) = analyze(&sample_captures(), &torrents, &Settings::default());
    let got = anomalies_per_capture(&r, &s);
    let one = |names: &[&str]| {
        names
            .iter()
            .map(|n| (n.to_string(), 1))
            .collect::<BTreeMap<String, u64>>()
    };
    assert_eq!(
        got,
        one(&["lossy.pcap", "magnet.pcap", "midstream.pcap", "udp.pcap", "utp.pcap"])
    );
    let an = table(&r, "anomalies");
    let swarm: Vec<usize> = strs(&an, "layer")
        .iter()
        .enumerate()
        .filter(|(_, l)| l.as_deref() == Some("swarm"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(swarm.len(), 5);
    let frames = u64s(&an, "frame");
    let conns = u64s(&an, "conn_id");
    for &i in &swarm {
        assert!(frames[i].is_some_and(|f| f > 0) && conns[i].is_some(), "row {i}");
    }

    let Some(c) = corpus() else { return };
    // The whole corpus in one run, then a few captures alone (one input:
    // run-level rows are its own).
    let (r, s) = analyze(std::slice::from_ref(&c), &[], &Settings::default());
    let got = anomalies_per_capture(&r, &s);
    let want: BTreeMap<String, u64> = [
        ("bittorrent.pcap", 28),
        ("bittorrent_transmission.pcapng", 2),
        ("codemonkey.pcap", 63),
        ("codemonkey2.pcap", 7),
        ("codemonkey_and_testtxt.pcap", 71),
        ("input.pcap", 3),
        ("lookaway.pcap", 1),
        ("mippo.pcap", 1),
        ("small_torrent.pcap", 3),
    ]
    .into_iter()
    .map(|(c, n)| (c.to_string(), n))
    .collect();
    // 179 rows: 170 counted before, and 9 swarm conflicts counted nowhere.
    assert_eq!(got, want);
    for (dir, name) in [
        ("ntop__nDPI", "bittorrent.pcap"),
        ("ntop__nDPI", "bittorrent_transmission.pcapng"),
        ("tcoppi__BittorrentReconstituter", "codemonkey_and_testtxt.pcap"),
        ("OISF__suricata-verify", "input.pcap"),
    ] {
        let (r, s) = analyze(&[c.join(dir).join(name)], &[], &Settings::default());
        let got = anomalies_per_capture(&r, &s);
        assert_eq!(got, [(name.to_string(), want[name])].into_iter().collect(), "{name}");
    }
    // A real capture cut inside its last record: one row says so.
    let tmp = tempfile::tempdir().expect("tempdir");
    let cut = tmp.path().join("mippo-cut.pcap");
    let bytes = std::fs::read(c.join("tcoppi__BittorrentReconstituter/mippo.pcap")).expect("read");
    std::fs::write(&cut, &bytes[..bytes.len() - 700]).expect("write");
    let (r, s) = analyze(&[cut], &[], &Settings::default());
    let got = anomalies_per_capture(&r, &s);
    assert_eq!(got, [("mippo-cut.pcap".to_string(), 2)].into_iter().collect());
    let kinds = super::count_by(&table(&r, "anomalies"), "kind");
    assert_eq!(kinds.get("truncated_tail"), Some(&1), "{kinds:?}");
}

/// Each record's time by frame number, as the capture file has it.
fn record_times(p: &Path) -> HashMap<u64, i64> {
    let mut r = CaptureReader::open(&InputSpec::Path(p.to_path_buf()), None).expect("open");
    let mut b = FrameBatch::default();
    let mut m = HashMap::new();
    while r.read_batch(&mut b, 1 << 20, 4096).expect("read") {
        m.extend(b.frames.iter().map(|f| (f.frame_no, f.ts_us)));
    }
    m
}

/// Checks that every anomaly with a frame names a record of its capture
/// at the row's time, and one of its flow's (between the flow's first and
/// last packet); returns (rows with a frame, rows of flows ended idle that
/// carry the flow's last packet's time).
fn check_frames(r: &Run, files: &HashMap<String, PathBuf>) -> (usize, usize) {
    let an = table(r, "anomalies");
    let fl = table(r, "flows");
    let flows: HashMap<(String, u64), (i64, i64, String)> = strs(&fl, "capture")
        .into_iter()
        .zip(u64s(&fl, "conn_id"))
        .zip(i64s(&fl, "first_ts").into_iter().zip(i64s(&fl, "last_ts")))
        .zip(strs(&fl, "end_reason"))
        .map(|(((c, id), (a, b)), e)| {
            (
                (c.unwrap_or_default(), id.unwrap_or_default()),
                (a.unwrap_or_default(), b.unwrap_or_default(), e.unwrap_or_default()),
            )
        })
        .collect();
    let mut times: HashMap<String, HashMap<u64, i64>> = HashMap::new();
    let (mut n_framed, mut n_idle_last) = (0, 0);
    let rows = strs(&an, "capture")
        .into_iter()
        .zip(u64s(&an, "frame"))
        .zip(i64s(&an, "ts"))
        .zip(u64s(&an, "conn_id"))
        .zip(strs(&an, "kind"));
    for ((((c, frame), ts), conn), kind) in rows {
        let (c, kind) = (c.unwrap_or_default(), kind.unwrap_or_default());
        let Some(frame) = frame else { continue };
        n_framed += 1;
        let t = times
            .entry(c.clone())
            .or_insert_with(|| record_times(files.get(&c).unwrap_or_else(|| panic!("no file for {c}"))));
        assert_eq!(t.get(&frame).copied(), ts, "{c} {kind}: frame {frame}");
        if let Some(id) = conn {
            let Some((first, last, end)) = flows.get(&(c.clone(), id)) else {
                continue;
            };
            let ts = ts.unwrap_or_default();
            assert!((*first..=*last).contains(&ts), "{c} {kind}: conn {id} at {ts}");
            n_idle_last += usize::from(end == "idle" && ts == *last);
        }
    }
    (n_framed, n_idle_last)
}

#[test]
fn anomaly_frames_are_the_records_they_name_also_for_flows_ended_by_a_sweep() {
    let Some(c) = corpus() else { return };
    let exp = expand_inputs(std::slice::from_ref(&c)).expect("inputs");
    let mut files: HashMap<String, PathBuf> = HashMap::new();
    let mut inputs = Vec::new();
    for i in exp
        .inputs
        .into_iter()
        .chain(sample_captures().into_iter().map(InputSpec::Path))
    {
        if let InputSpec::Path(p) = i {
            files.insert(
                p.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                p.clone(),
            );
            inputs.push(p);
        }
    }
    // Every row with a frame (none with frame 0, which no record has).
    let (r, _) = analyze(&inputs, &[], &Settings::default());
    assert_eq!(check_frames(&r, &files), (184, 0));
    // Flows idle for 2 s end at the next sweep, in the middle of the
    // capture: what their end finds (a message cut by a gap, lost uTP
    // packets, conflicting overlaps) is timed by their last packet, not
    // the sweep (frame 0 before session 5).
    let mut s = Settings::default();
    s.limits.tcp_idle_us = 2_000_000;
    s.limits.udp_idle_us = 2_000_000;
    s.limits.sweep_interval_us = 1_000_000;
    let (r, _) = analyze(&inputs, &[], &s);
    assert_eq!(check_frames(&r, &files), (193, 16));
}

fn id_lists(df: &DataFrame, c: &str) -> Vec<Vec<u64>> {
    let l = df.column(c).expect(c).list().expect("list").clone();
    (0..l.len())
        .map(|i| {
            l.get_as_series(i)
                .map(|s| s.i64().expect("i64").iter().flatten().map(|v| v as u64).collect())
                .unwrap_or_default()
        })
        .collect()
}

/// For every peer whose `conn_ids` is whole (n_connections of them): its
/// uploaded and downloaded bytes are the piece bytes it sent and received
/// on exactly those connections, and each of them names it as one of its
/// ends (orig/resp_peer_port). Returns (peers, bytes checked).
fn check_peer_bytes(r: &Run) -> (usize, u64) {
    let peers = table(r, "peers");
    let conns = table(r, "connections");
    type End = (Option<String>, Option<u64>);
    let mut by_id: HashMap<u64, (End, End, u64, u64)> = HashMap::new();
    let ids = u64s(&conns, "conn_id");
    let (oi, op, ri, rp) = (
        strs(&conns, "orig_ip"),
        u64s(&conns, "orig_peer_port"),
        strs(&conns, "resp_ip"),
        u64s(&conns, "resp_peer_port"),
    );
    let (po, pr) = (u64s(&conns, "piece_bytes_orig"), u64s(&conns, "piece_bytes_resp"));
    for i in 0..conns.height() {
        let end = |ip: &[Option<String>], port: &[Option<u64>]| (ip[i].clone(), port[i]);
        by_id.insert(
            ids[i].unwrap_or_default(),
            (end(&oi, &op), end(&ri, &rp), po[i].unwrap_or(0), pr[i].unwrap_or(0)),
        );
    }
    let (ip, port, n_conn) = (
        strs(&peers, "peer_ip"),
        u64s(&peers, "peer_port"),
        u64s(&peers, "n_connections"),
    );
    let (up, down) = (u64s(&peers, "uploaded_bytes"), u64s(&peers, "downloaded_bytes"));
    let (mut n_peers, mut n_bytes) = (0, 0);
    for (i, list) in id_lists(&peers, "conn_ids").into_iter().enumerate() {
        if n_conn[i] != Some(list.len() as u64) {
            continue;
        }
        let me: End = (ip[i].clone(), port[i]);
        let (mut sent, mut received) = (0, 0);
        for id in &list {
            let (o, r, bo, br) = by_id
                .get(id)
                .unwrap_or_else(|| panic!("peer {me:?}: conn {id} has no row"));
            if *o == me {
                (sent, received) = (sent + bo, received + br);
            } else if *r == me {
                (sent, received) = (sent + br, received + bo);
            } else {
                panic!("peer {me:?}: conn {id} names {o:?} and {r:?}");
            }
        }
        assert_eq!(
            (up[i], down[i]),
            (Some(sent), Some(received)),
            "peer {me:?}, conns {list:?}"
        );
        n_peers += 1;
        n_bytes += sent + received;
    }
    (n_peers, n_bytes)
}

#[test]
fn peers_bytes_are_the_piece_bytes_of_the_connections_they_list() {
    // midstream.pcap's connection 42 (10.99.0.11 sends 737,280 piece bytes
    // to 10.99.0.13 on an ephemeral port) was in no peer's conn_ids while
    // its bytes were in 10.99.0.13:2706's downloaded_bytes.
    let torrents: Vec<PathBuf> = std::fs::read_dir(samples())
        .expect("samples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "torrent"))
        .collect();
    let (r, _) = analyze(&sample_captures(), &torrents, &Settings::default());
    assert_eq!(check_peer_bytes(&r), (53, 65_228_816));
    let Some(c) = corpus() else { return };
    let (r, _) = analyze(std::slice::from_ref(&c), &[], &Settings::default());
    assert_eq!(check_peer_bytes(&r), (871, 19_217_738));
    // And each capture alone.
    let exp = expand_inputs(&[c]).expect("inputs");
    let mut n = 0;
    for i in sample_captures().into_iter().map(InputSpec::Path).chain(exp.inputs) {
        let InputSpec::Path(p) = i else { continue };
        let (r, _) = analyze(&[p], &torrents, &Settings::default());
        n += check_peer_bytes(&r).0;
    }
    assert_eq!(n, 928, "peers of the 37 captures analysed alone");
}
