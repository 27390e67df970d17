//! `swarmtap live` (issue 7) on a veth pair between two network namespaces
//! the test creates: a sample capture is replayed with tcpreplay into one
//! end and captured on the other. No traffic leaves the namespaces (they
//! have no route and nothing else attached). When not root or when `ip
//! netns` or tcpreplay is unavailable the tests follow `require`'s rule:
//! a failure under SWARMTAP_REQUIRE_ALL, else a recorded skip.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use polars::prelude::*;
use swarmtap::sink::TABLE_NAMES;

use super::{require, run, strs, table, u64s};

/// Two namespaces joined by a veth pair; deleted on drop (also when the
/// test fails), which deletes the veth pair with them.
struct Netns {
    /// Namespace and interface that sends (tcpreplay).
    tx_ns: String,
    tx_if: String,
    /// Namespace and interface that captures.
    rx_ns: String,
    rx_if: String,
    /// Processes started in the namespaces, killed on drop if still there
    /// (a failed assertion must not leave a capture running).
    pids: std::cell::RefCell<Vec<u32>>,
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Netns {
    /// Sets up the pair, or says why not.
    fn new() -> Option<Netns> {
        if !require::root("the live tests create network namespaces and a veth pair") {
            return None;
        }
        if !require::require(
            sh(&["tcpreplay", "-V"]),
            "tcpreplay",
            "not installed (tests/setup.sh installs it)",
        ) {
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!("{}{}", std::process::id() % 100_000, N.fetch_add(1, Ordering::SeqCst));
        let n = Netns {
            tx_ns: format!("swtx{id}"),
            tx_if: format!("swx{id}"),
            rx_ns: format!("swrx{id}"),
            rx_if: format!("swr{id}"),
            pids: Default::default(),
        };
        if !require::require(
            sh(&["ip", "netns", "add", &n.tx_ns]),
            "network namespaces",
            "`ip netns add` failed (no ip, or no CAP_SYS_ADMIN)",
        ) {
            return None;
        }
        let ok = sh(&["ip", "netns", "add", &n.rx_ns])
            && sh(&[
                "ip", "link", "add", &n.tx_if, "netns", &n.tx_ns, "type", "veth", "peer", "name", &n.rx_if, "netns",
                &n.rx_ns,
            ]);
        if !require::require(ok, "a veth pair", "cannot create one between the namespaces") {
            return None;
        }
        for (ns, dev) in [(&n.tx_ns, &n.tx_if), (&n.rx_ns, &n.rx_if)] {
            // No IPv6 on the pair: no router solicitations or MLD reports
            // mixed into the replayed packets.
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
            ]);
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]);
            assert!(
                sh(&["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"]),
                "link up"
            );
            // Offloads would merge frames into 64 KB super-frames.
            sh(&[
                "ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
            ]);
        }
        Some(n)
    }

    /// Starts `swarmtap live` on the capturing end, and waits until the
    /// capture is open (its first interval's files are being written).
    fn live(&self, out: &Path, extra: &[&str]) -> Child {
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.rx_ns.clone(),
            env!("CARGO_BIN_EXE_swarmtap").into(),
            "live".into(),
            "-i".into(),
            self.rx_if.clone(),
            "-o".into(),
            out.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new("ip")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn swarmtap live");
        self.pids.borrow_mut().push(child.id());
        let t0 = Instant::now();
        while !out.join("capture_stats").is_dir() {
            assert!(t0.elapsed() < Duration::from_secs(20), "swarmtap live did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// Replays `pcap` into the sending end (`how`: tcpreplay rate options).
    fn replay(&self, pcap: &Path, how: &[&str]) -> Child {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.tx_ns, "tcpreplay", "-q", "-i", &self.tx_if])
            .args(how)
            .arg(pcap)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tcpreplay");
        self.pids.borrow_mut().push(child.id());
        child
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids.borrow().iter() {
            // Only our own children: `ip netns exec` became the program.
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ours = cmd.windows(8).any(|w| w == b"swarmtap") || cmd.windows(9).any(|w| w == b"tcpreplay");
            if ours {
                sh(&["kill", "-9", &pid.to_string()]);
            }
        }
        sh(&["ip", "netns", "del", &self.tx_ns]);
        sh(&["ip", "netns", "del", &self.rx_ns]);
    }
}

/// Waits for a child for at most `limit`; kills it and fails past that.
fn wait_for(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: &str) {
    assert!(sh(&["kill", sig, &child.id().to_string()]), "kill {sig}");
}

/// Every `*.parquet` under `dir/table`, in interval order (the path holds
/// date, hour, start time and sequence number).
fn part_files(dir: &Path, table: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join(table)];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn read(p: &Path) -> PolarsResult<DataFrame> {
    ParquetReader::new(File::open(p)?).finish()
}

/// A live table: all its intervals' files, in order.
fn live_table(dir: &Path, table: &str) -> DataFrame {
    let files = part_files(dir, table);
    assert!(!files.is_empty(), "no files for {table}");
    let mut df = read(&files[0]).expect("parquet");
    for f in &files[1..] {
        df.vstack_mut(&read(f).expect("parquet")).expect("same schema");
    }
    df
}

/// The latest row of each key (largest interval_start; the later file
/// wins a tie), sorted by key: what consumers of a snapshot table take.
fn latest(df: &DataFrame, key: &[&str]) -> DataFrame {
    let starts: Vec<i64> = df
        .column("interval_start")
        .expect("interval_start")
        .cast(&DataType::Int64)
        .expect("cast")
        .i64()
        .expect("i64")
        .iter()
        .map(|v| v.unwrap_or(i64::MIN))
        .collect();
    let keys: Vec<Vec<String>> = key
        .iter()
        .map(|k| {
            let c = df.column(k).expect(k).cast(&DataType::String).expect("cast");
            c.str()
                .expect("str")
                .iter()
                .map(|v| v.unwrap_or("").to_string())
                .collect()
        })
        .collect();
    let mut best: BTreeMap<Vec<String>, (i64, usize)> = BTreeMap::new();
    for i in 0..df.height() {
        let k: Vec<String> = keys.iter().map(|c| c[i].clone()).collect();
        let e = best.entry(k).or_insert((i64::MIN, i));
        if starts[i] >= e.0 {
            *e = (starts[i], i);
        }
    }
    let idx: Vec<IdxSize> = best.values().map(|(_, i)| *i as IdxSize).collect();
    df.take(&IdxCa::from_vec("idx".into(), idx))
        .expect("take")
        .sort(key.to_vec(), Default::default())
        .expect("sort")
}

fn without(df: &DataFrame, drop: &[&str]) -> DataFrame {
    let cols: Vec<String> = df
        .get_column_names()
        .into_iter()
        .map(|c| c.to_string())
        .filter(|c| !drop.contains(&c.as_str()))
        .collect();
    df.select(cols).expect("select")
}

/// Asserts two frames are equal, naming the columns that differ.
fn assert_same(live: &DataFrame, want: &DataFrame, what: &str) {
    assert_eq!(live.height(), want.height(), "{what}: rows");
    assert_eq!(live.get_column_names(), want.get_column_names(), "{what}: columns");
    let differ: Vec<String> = want
        .columns()
        .iter()
        .filter(|c| {
            live.column(c.name())
                .map(|l| !l.as_materialized_series().equals_missing(c.as_materialized_series()))
                .unwrap_or(true)
        })
        .map(|c| {
            let l: Vec<String> = live
                .column(c.name())
                .map(|l| l.as_materialized_series().iter().map(|v| v.to_string()).collect())
                .unwrap_or_default();
            let a: Vec<String> = c.as_materialized_series().iter().map(|v| v.to_string()).collect();
            let rows: Vec<String> = (0..a.len())
                .filter(|&i| l.get(i) != a.get(i))
                .take(4)
                .map(|i| format!("row {i}: live {:?} analyze {:?}", l.get(i), a[i]))
                .collect();
            format!("{}: {}", c.name(), rows.join("; "))
        })
        .collect();
    assert!(differ.is_empty(), "{what} differs:\n{}", differ.join("\n"));
}

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-pcaps").join(name)
}

/// Issue 7: the tables of `swarmtap live` over a replayed capture equal
/// those of `swarmtap analyze` over the file, for everything that does not
/// depend on packet timing. The replay runs 20 times faster than the
/// capture was made, over ~3 s with 1 s rotations, so the latest snapshot
/// rows (not only the final ones) are what is compared.
#[test]
fn issue_7_live_capture_matches_analyze_of_the_replayed_packets() {
    let Some(ns) = Netns::new() else { return };
    let pcap = sample("http.pcap");
    // With the .torrent on both sides: piece counts and names are known.
    let torrent = sample("http.torrent");
    let want = run(std::slice::from_ref(&pcap), std::slice::from_ref(&torrent));
    let n_packets = u64s(&table(&want, "capture_stats"), "n_packets")[0].unwrap_or(0);
    assert_eq!(n_packets, 6586);
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("live");
    let count = n_packets.to_string();
    let torrent_arg = torrent.to_string_lossy().into_owned();
    let mut live = ns.live(
        &out,
        &[
            "--count",
            &count,
            "--rotate",
            "1s",
            "--duration",
            "40s",
            "--torrents",
            &torrent_arg,
        ],
    );
    let mut replay = ns.replay(&pcap, &["--multiplier", "20"]);
    assert!(wait_for(&mut replay, Duration::from_secs(40)).success(), "tcpreplay");
    let st = wait_for(&mut live, Duration::from_secs(45));
    let mut err = String::new();
    if let Some(mut e) = live.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(st.success(), "swarmtap live failed: {err}");
    eprintln!("{err}");

    // Every packet arrived, none dropped, in several intervals.
    let stats = live_table(&out, "capture_stats");
    let n_intervals = stats.height();
    assert!(n_intervals >= 2, "{n_intervals} intervals");
    let total = |c: &str| u64s(&stats, c).into_iter().flatten().sum::<u64>();
    assert_eq!(total("n_packets"), n_packets);
    assert_eq!(total("n_dropped"), 0);
    assert_eq!(
        total("n_dropped_ours") + total("n_dropped_kernel") + total("n_dropped_ifdrop"),
        0
    );
    let a_stats = table(&want, "capture_stats");
    for c in [
        "n_bytes",
        "n_tcp",
        "n_udp",
        "n_not_ip",
        "n_decode_errors",
        "n_anomalies",
    ] {
        assert_eq!(total(c), u64s(&a_stats, c)[0].unwrap_or(0), "capture_stats.{c}");
    }

    // Connections: the same rows, every column but time and capture name.
    let untimed = ["first_ts", "last_ts", "capture", "interval_start"];
    let a_conn = table(&want, "connections")
        .sort(["conn_id"], Default::default())
        .expect("sort");
    let l_conn = latest(&live_table(&out, "connections"), &["conn_id"]);
    assert_eq!(l_conn.height(), a_conn.height());
    assert_eq!(a_conn.height(), 38);
    assert_same(&without(&l_conn, &untimed), &without(&a_conn, &untimed), "connections");
    let piece: u64 = u64s(&l_conn, "piece_bytes_orig")
        .into_iter()
        .chain(u64s(&l_conn, "piece_bytes_resp"))
        .flatten()
        .sum();
    let n_msgs: u64 = u64s(&l_conn, "n_msgs_orig")
        .into_iter()
        .chain(u64s(&l_conn, "n_msgs_resp"))
        .flatten()
        .sum();
    eprintln!("live = analyze: 38 connections, {n_msgs} messages, {piece} piece bytes");
    assert!(piece > 3_000_000, "{piece}");

    // Messages: every one, in order, with its frame number.
    let a_msgs = table(&want, "peer_messages");
    let l_msgs = live_table(&out, "peer_messages");
    assert_eq!(l_msgs.height(), a_msgs.height());
    let drop_ts = ["ts", "capture", "interval_start"];
    assert_same(
        &without(&l_msgs, &drop_ts),
        &without(&a_msgs, &drop_ts),
        "peer_messages",
    );

    // Flows: the same flows and counts. How a flow ended depends on time:
    // the replay is 20 times faster, so flows closed by FIN or RST are
    // still lingering (30 s of packet time) when the run ends, and end as
    // `end`.
    let a_flows = table(&want, "flows")
        .sort(["conn_id"], Default::default())
        .expect("sort");
    let l_flows = latest(&live_table(&out, "flows"), &["conn_id"]);
    let untimed_flow = ["first_ts", "last_ts", "capture", "interval_start", "end_reason"];
    assert_eq!(l_flows.height(), a_flows.height());
    assert_same(
        &without(&l_flows, &untimed_flow),
        &without(&a_flows, &untimed_flow),
        "flows",
    );
    assert!(strs(&l_flows, "end_reason").iter().all(|r| r.as_deref() == Some("end")));

    // Peers and torrents: identities, volumes, pieces. Rates, completion
    // times and confirmed downloads are measured in packet time, which the
    // faster replay compresses.
    let timed_peer = [
        "first_ts",
        "last_ts",
        "interval_start",
        "max_rate_bps",
        "max_upload_rate_bps",
        "completed_ts",
        "confirmed_download",
    ];
    let key = ["info_hash", "peer_ip", "peer_port"];
    let a_peers = table(&want, "peers").sort(key, Default::default()).expect("sort");
    let l_peers = latest(&live_table(&out, "peers"), &key);
    assert_eq!(l_peers.height(), 5);
    assert_same(
        &without(&l_peers, &timed_peer),
        &without(&a_peers, &timed_peer),
        "peers",
    );
    let timed_torrent = ["first_ts", "last_ts", "interval_start", "n_confirmed_downloads"];
    let a_t = table(&want, "torrents");
    let l_t = latest(&live_table(&out, "torrents"), &["info_hash"]);
    assert_same(
        &without(&l_t, &timed_torrent),
        &without(&a_t, &timed_torrent),
        "torrents",
    );
    assert_eq!(u64s(&l_t, "piece_bytes"), u64s(&a_t, "piece_bytes"));
    // --torrents reached the live pipeline: the name and piece count come
    // from the .torrent file.
    assert_eq!(strs(&l_t, "name"), vec![Some("swarmtap-http.bin".to_string())]);
    assert_eq!(u64s(&l_t, "n_pieces"), vec![Some(24)]);

    // Tracker announces: same requests and answers.
    let a_ann = table(&want, "tracker_announces");
    let l_ann = live_table(&out, "tracker_announces");
    assert_eq!(l_ann.height(), a_ann.height());
    let timed_ann = ["ts", "response_ts", "capture", "interval_start", "rtt_ms"];
    let keep = |df: &DataFrame| {
        let cols: Vec<&str> = [
            "frame",
            "info_hash",
            "uploaded",
            "downloaded",
            "left",
            "event",
            "n_peers_returned",
        ]
        .into_iter()
        .filter(|c| df.column(c).is_ok() && !timed_ann.contains(c))
        .collect();
        df.select(cols).expect("select")
    };
    // An announce's row is written in the interval where its answer (or
    // its give-up) lands, so two announces answered across a rotation can
    // sit in the live files in either order: compared in frame order.
    let by_frame = |df: DataFrame| df.sort(["frame"], Default::default()).expect("sort");
    let (l_ann, a_ann) = (by_frame(keep(&l_ann)), by_frame(keep(&a_ann)));
    let frames = u64s(&a_ann, "frame");
    assert!(
        frames.windows(2).all(|w| w[0] < w[1]),
        "tracker_announces: frame numbers are unique"
    );
    assert_same(&l_ann, &a_ann, "tracker_announces");
}

/// SIGKILL in the middle of a run with 1 s rotations: every `*.parquet`
/// left is complete and readable (files are written aside and renamed).
#[test]
fn live_killed_mid_run_leaves_only_whole_files() {
    let Some(ns) = Netns::new() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("live");
    let mut live = ns.live(&out, &["--rotate", "1s", "--duration", "60s"]);
    // ~16 s of replay at 2 Mbit/s: traffic through the whole run.
    let mut replay = ns.replay(&sample("utp.pcap"), &["--mbps", "2"]);
    // Killed once two intervals of every table are on disk and traffic has
    // reached them: polled, so the verdict does not depend on how fast this
    // machine runs (the 50 s bound is a hang guard within the 60 s run).
    let t0 = Instant::now();
    loop {
        let ready = TABLE_NAMES.iter().all(|t| part_files(&out, t).len() >= 2)
            && part_files(&out, "peer_messages")
                .iter()
                .any(|f| read(f).is_ok_and(|d| d.height() > 0));
        if ready {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(50),
            "two intervals with traffic not written in 50 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    live.kill().expect("SIGKILL");
    let _ = live.wait();
    let _ = replay.kill();
    let _ = replay.wait();
    let mut n_files = 0;
    let mut n_rows = 0;
    for t in TABLE_NAMES {
        let files = part_files(&out, t);
        // At least the two intervals completed before the kill.
        assert!(files.len() >= 2, "{t}: {} files", files.len());
        for f in files {
            let df = read(&f).unwrap_or_else(|e| panic!("{} unreadable: {e}", f.display()));
            n_rows += df.height();
            n_files += 1;
        }
    }
    let peer_rows = part_files(&out, "peer_messages")
        .iter()
        .map(|f| read(f).map(|d| d.height()).unwrap_or(0))
        .sum::<usize>();
    eprintln!("after SIGKILL: {n_files} files, {n_rows} rows, all readable ({peer_rows} peer messages)");
    assert!(peer_rows > 0, "traffic reached the files before the kill");
}

/// SIGINT: exit 0 within seconds, every table present, the last interval
/// written (its capture_stats row included).
#[test]
fn live_sigint_flushes_every_table_and_exits_0() {
    let Some(ns) = Netns::new() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("live");
    let mut live = ns.live(&out, &["--rotate", "15m"]);
    let mut replay = ns.replay(&sample("http.pcap"), &["--multiplier", "50"]);
    let _ = wait_for(&mut replay, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    signal(&live, "-INT");
    let st = wait_for(&mut live, Duration::from_secs(10));
    eprintln!("stopped {:?} after SIGINT", t0.elapsed());
    assert!(st.success(), "{st:?}");
    for t in TABLE_NAMES {
        assert_eq!(part_files(&out, t).len(), 1, "{t}");
    }
    let stats = live_table(&out, "capture_stats");
    assert_eq!(stats.height(), 1);
    assert!(u64s(&stats, "n_packets")[0].unwrap_or(0) > 6000);
    assert_eq!(u64s(&live_table(&out, "connections"), "conn_id").len(), 38);
}

/// The engine driven as `live` drives it (batches of 1,000 frames, a
/// snapshot after each, a rotation after each) through the rotating
/// writer, over one sample. Returns the live dataset's directory (inside
/// `tmp`), analyze's output of the same file, and the number of intervals.
fn drive_live(name: &str, tmp: &Path) -> (PathBuf, super::Run, usize) {
    use swarmtap::capture::{CaptureReader, FrameBatch, InputSpec};
    use swarmtap::config::Settings;
    use swarmtap::pipeline::Engine;
    use swarmtap::sink::writer::Interval;
    use swarmtap::sink::SinkThread;

    let pcap = sample(name);
    let want = run(std::slice::from_ref(&pcap), &[]);
    let out = tmp.join("live");
    let settings = Settings::default();
    let mut engine = Engine::new(&settings, std::sync::Arc::new(vec![name.into()]), Vec::new()).expect("engine");
    let mut iv = Interval {
        start_us: 1_700_000_000_000_000,
        seq: 0,
    };
    let sink = SinkThread::rotating(&out, iv, &settings.output_options()).expect("sink");
    let mut r = CaptureReader::open(&InputSpec::Path(pcap.clone()), None).expect("open");
    let mut b = FrameBatch::default();
    while r.read_batch(&mut b, 1 << 20, 1000).expect("read") {
        engine.batch(&b, &mut |rows| sink.send(rows)).expect("batch");
        sink.send(engine.snapshot(settings.limits.live_state_idle_us))
            .expect("snapshot");
        iv = Interval {
            start_us: iv.start_us + 1_000_000,
            seq: iv.seq + 1,
        };
        sink.rotate(iv).expect("rotate");
    }
    let (rows, _, _) = engine.finish();
    sink.send(rows).expect("final");
    sink.finish().expect("finish");
    (out, want, iv.seq as usize + 1)
}

/// Without root: the engine driven as `live` drives it (small batches, a
/// snapshot after each) through the rotating writer. Each interval is a
/// complete set of files; the snapshots only grow (counts never go back);
/// and the latest rows equal analyze's exactly, timestamps included (the
/// packets are the file's).
#[test]
fn snapshots_through_the_rotating_sink_converge_to_analyze() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (out, want, n_intervals) = drive_live("http.pcap", tmp.path());
    assert_eq!(n_intervals, 8, "6586 frames in batches of 1000, and the last interval");
    for t in TABLE_NAMES {
        assert_eq!(part_files(&out, t).len(), n_intervals, "{t}");
    }
    // Names and partitions: 2023-11-14 22:13:20 UTC onwards.
    let first = &part_files(&out, "flows")[0];
    assert!(
        first.ends_with("flows/date=2023-11-14/hour=22/part-20231114T221320Z-000000.parquet"),
        "{}",
        first.display()
    );
    let no_ts = ["interval_start"];
    let key = ["conn_id"];
    for (t, k) in [
        ("connections", &key[..]),
        ("flows", &key[..]),
        ("peers", &["info_hash", "peer_ip", "peer_port"][..]),
        ("torrents", &["info_hash"][..]),
    ] {
        let l = latest(&live_table(&out, t), k);
        let a = table(&want, t).sort(k.to_vec(), Default::default()).expect("sort");
        assert_same(&without(&l, &no_ts), &a, t);
    }
    assert_same(
        &without(&live_table(&out, "peer_messages"), &no_ts),
        &table(&want, "peer_messages"),
        "peer_messages",
    );
    // Snapshots of a connection never go back.
    let all = live_table(&out, "connections");
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (id, n) in u64s(&all, "conn_id").into_iter().zip(u64s(&all, "piece_bytes_resp")) {
        let (id, n) = (id.unwrap_or(0), n.unwrap_or(0));
        let prev = last.insert(id, n).unwrap_or(0);
        assert!(n >= prev, "connection {id}: {prev} then {n}");
    }
    let open = strs(&live_table(&out, "flows"), "end_reason")
        .into_iter()
        .filter(|r| r.as_deref() == Some("open"))
        .count();
    assert!(open > 50, "{open} open-flow snapshot rows");
}

/// uTP connections still open at a live snapshot carry their
/// `utp_conn_id` as soon as both sides' ids were seen (the closed row's id,
/// never another): `swarmtap merge` joins an hourly snapshot to its
/// connection's later rows by it, and would join a null to any uTP
/// connection of the flow. utp.pcap: 4,496 frames, 6 intervals.
#[test]
fn live_snapshots_of_open_utp_connections_carry_their_id() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (out, want, n_intervals) = drive_live("utp.pcap", tmp.path());
    assert_eq!(n_intervals, 6, "4496 frames in batches of 1000, and the last interval");
    let fin = table(&want, "connections");
    let mut final_id: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    for ((id, t), u) in u64s(&fin, "conn_id")
        .into_iter()
        .zip(strs(&fin, "transport"))
        .zip(u64s(&fin, "utp_conn_id"))
    {
        if t.as_deref() == Some("utp") {
            final_id.insert(id.unwrap_or(0), u);
        }
    }
    assert!(!final_id.is_empty(), "utp.pcap has uTP connections");
    assert!(final_id.values().all(Option::is_some), "{final_id:?}");
    let all = live_table(&out, "connections");
    let (mut with_id, mut rows) = (0, 0);
    for (id, u) in u64s(&all, "conn_id").into_iter().zip(u64s(&all, "utp_conn_id")) {
        let Some(want_id) = final_id.get(&id.unwrap_or(0)) else {
            continue;
        };
        rows += 1;
        if let Some(u) = u {
            with_id += 1;
            assert_eq!(Some(u), *want_id, "connection {id:?}");
        }
    }
    // Every uTP row in the live dataset, snapshots and final rows alike,
    // carries the id: the ids are seen in the first packets both ways.
    assert!(
        rows > final_id.len(),
        "{rows} live rows of {} uTP connections",
        final_id.len()
    );
    assert_eq!(with_id, rows, "{rows} uTP rows, {with_id} with an id");
}

/// On a quiet link: SIGHUP rotates at once (a second interval, every table
/// in both), and SIGTERM stops cleanly even though no packet arrives to
/// wake the capture.
#[test]
fn live_sighup_rotates_and_sigterm_stops_a_quiet_capture() {
    let Some(ns) = Netns::new() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("live");
    let mut live = ns.live(&out, &["--rotate", "15m"]);
    std::thread::sleep(Duration::from_millis(300));
    signal(&live, "-HUP");
    let t0 = Instant::now();
    while part_files(&out, "capture_stats").is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "SIGHUP did not rotate");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&live, "-TERM");
    let st = wait_for(&mut live, Duration::from_secs(5));
    assert!(st.success(), "{st:?}");
    for t in TABLE_NAMES {
        assert_eq!(part_files(&out, t).len(), 2, "{t}");
    }
    let stats = live_table(&out, "capture_stats");
    assert_eq!(u64s(&stats, "n_packets"), vec![Some(0), Some(0)]);
    assert_eq!(u64s(&stats, "n_dropped"), vec![Some(0), Some(0)]);
}

/// Unusable interface, filter or duration: a one-line reason, exit 1, and
/// nothing written.
#[test]
fn live_cli_errors_are_one_line_and_nonzero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap_or_default();
    for args in [
        vec!["live", "-i", "swtnosuchif0", "-o", o],
        vec!["live", "-i", "lo", "-f", "tcp and and", "-o", o],
    ] {
        let r = Command::new(env!("CARGO_BIN_EXE_swarmtap"))
            .args(&args)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    let r = Command::new(env!("CARGO_BIN_EXE_swarmtap"))
        .args(["live", "-i", "lo", "--rotate", "5x", "-o", o])
        .output()
        .expect("runs");
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("unknown unit"));
}
