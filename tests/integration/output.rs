//! Issue 17: output that every engine reads as-is and that no run destroys.
//! Types and keys on the sample captures; failed runs leave a prior dataset
//! byte-identical; the command line's tcpdump habits; export and JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use polars::prelude::*;
use swarmtap::sink::TABLE_NAMES;

use super::{strs, u64s};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_swarmtap"))
}

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-pcaps").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Runs swarmtap with stdin from /dev/null; (success, stderr).
fn sw(args: &[&str]) -> (bool, String) {
    let o = bin().args(args).stdin(Stdio::null()).output().expect("runs");
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn read(dir: &Path, t: &str) -> DataFrame {
    let p = dir.join(format!("{t}.parquet"));
    ParquetReader::new(std::fs::File::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .finish()
        .expect("parquet")
}

/// Every file under `dir` (relative path → bytes), dot-files included.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("prefix").to_path_buf();
                m.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    m
}

/// The folder beside the target holds nothing of a failed run.
fn no_leftovers(parent: &Path) -> Vec<String> {
    std::fs::read_dir(parent)
        .expect("read_dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("swarmtap-"))
        .collect()
}

#[test]
fn failed_runs_leave_the_prior_dataset_byte_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = tmp.path().join("ds");
    let (ok, err) = sw(&["analyze", s(&sample("http.pcap")), "-o", s(&ds)]);
    assert!(ok, "{err}");
    let before = snapshot(&ds);
    assert_eq!(before.len(), TABLE_NAMES.len(), "one file per table, nothing else");

    // Not a capture.
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "meeting notes\n").expect("write");
    let (ok, err) = sw(&["analyze", s(&notes), "-o", s(&ds)]);
    assert!(!ok, "{err}");
    assert_eq!(snapshot(&ds), before, "bad input");
    // A filter that does not compile.
    let (ok, err) = sw(&["analyze", s(&sample("http.pcap")), "-f", "tcp and and", "-o", s(&ds)]);
    assert!(!ok, "{err}");
    assert_eq!(snapshot(&ds), before, "bad filter");
    // An input that does not exist.
    let (ok, err) = sw(&["analyze", "/nonexistent.pcap", "-o", s(&ds)]);
    assert!(!ok, "{err}");
    assert_eq!(snapshot(&ds), before, "missing input");
    assert_eq!(no_leftovers(tmp.path()), Vec::<String>::new());

    // A successful run replaces the dataset as a whole.
    let (ok, err) = sw(&["analyze", s(&sample("udp.pcap")), "-o", s(&ds)]);
    assert!(ok, "{err}");
    let after = snapshot(&ds);
    assert_eq!(after.len(), TABLE_NAMES.len());
    assert_ne!(after, before);
    assert_eq!(no_leftovers(tmp.path()), Vec::<String>::new());
}

/// A full disk: as root a tiny tmpfs, else a folder we may not write into
/// (the staging folder beside the target cannot be made).
#[test]
fn a_full_disk_or_read_only_folder_leaves_the_prior_dataset_byte_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    struct Unmount(PathBuf, bool);
    impl Drop for Unmount {
        fn drop(&mut self) {
            if self.1 {
                let _ = Command::new("umount").arg(&self.0).status();
            } else {
                let _ = Command::new("chmod").arg("755").arg(&self.0).status();
            }
        }
    }
    let mounted = root
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=400k", "swarmtap-test", s(&mnt)])
            .status()
            .is_ok_and(|st| st.success());
    let _guard = Unmount(mnt.clone(), mounted);
    let ds = mnt.join("ds");
    let (ok, err) = sw(&["analyze", s(&sample("http.pcap")), "--no-messages", "-o", s(&ds)]);
    assert!(ok, "{err}");
    let before = snapshot(&ds);
    let size: usize = before.values().map(Vec::len).sum();
    if mounted {
        // The prior dataset fits; a second, larger one beside it does not.
        assert!(size < 200 * 1024, "{size} bytes");
    } else {
        // Not root: the parent folder becomes read-only.
        assert!(Command::new("chmod")
            .arg("555")
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success()));
    }
    // The whole sample set: about 380 KB of Parquet, beside the prior 168 KB.
    let (ok, err) = sw(&["analyze", s(&sample("")), "-o", s(&ds)]);
    assert!(!ok, "the run must fail: {err}");
    // The directory's READMEs and .torrent files are skipped in one line;
    // the failure is the other. A run that takes over 10 s (a loaded
    // machine) also prints progress lines: those are not diagnostics.
    let diagnostics: Vec<&str> = err
        .trim()
        .lines()
        .filter(|l| !(l.starts_with("swarmtap: ") && l.contains(" MB") && l.contains("packets")))
        .collect();
    assert_eq!(diagnostics.len(), 2, "{err}");
    if mounted {
        assert!(err.contains("No space left on device"), "{err}");
    }
    assert_eq!(snapshot(&ds), before);
    assert_eq!(no_leftovers(&mnt), Vec::<String>::new());
}

#[test]
fn a_folder_that_is_not_a_dataset_is_refused_unless_forced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).expect("mkdir");
    std::fs::write(home.join("thesis.tex"), "\\documentclass{article}").expect("write");
    let (ok, err) = sw(&["analyze", s(&sample("http.pcap")), "-o", s(&home)]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!(
            "swarmtap: refusing to write into {}: it holds \"thesis.tex\", which is not part of a swarmtap dataset; expected an analyze dataset (DIR/<table>.parquet) (use --force to replace it)",
            home.display()
        )
    );
    assert!(home.join("thesis.tex").exists());
    // A live dataset is not an analyze dataset either, and the reverse.
    let live = tmp.path().join("live");
    std::fs::create_dir_all(live.join("flows/date=2026-01-01/hour=00")).expect("mkdir");
    let (ok, err) = sw(&["analyze", s(&sample("http.pcap")), "-o", s(&live)]);
    assert!(!ok);
    assert!(err.contains("it holds a live dataset"), "{err}");
    // Forced: the folder is replaced by the dataset.
    let (ok, err) = sw(&["analyze", s(&sample("http.pcap")), "--force", "-o", s(&home)]);
    assert!(ok, "{err}");
    assert!(!home.join("thesis.tex").exists());
    assert_eq!(snapshot(&home).len(), TABLE_NAMES.len());
}

/// Types every engine reads without a cast: signed integers, UTC
/// microsecond timestamps, plain strings; `sensor` on every table.
#[test]
fn columns_are_signed_utc_and_carry_the_sensor() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = tmp.path().join("ds");
    let (ok, err) = sw(&["analyze", s(&sample("magnet.pcap")), "--sensor", "tap-7", "-o", s(&ds)]);
    assert!(ok, "{err}");
    for t in TABLE_NAMES {
        let df = read(&ds, t);
        for c in df.columns() {
            let dt = c.dtype();
            assert!(
                !matches!(
                    dt,
                    DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64
                ),
                "{t}.{}: {dt}",
                c.name()
            );
            if let DataType::Datetime(u, tz) = dt {
                assert_eq!(
                    (u, tz.as_ref().map(|z| z.to_string())),
                    (&TimeUnit::Microseconds, Some("UTC".into()))
                );
            }
        }
        let sensors: BTreeSet<Option<String>> = strs(&df, "sensor").into_iter().collect();
        if df.height() > 0 {
            assert_eq!(sensors, BTreeSet::from([Some("tap-7".to_string())]), "{t}");
        }
    }
}

/// The public corpus ends with open connections whose last rows are
/// flushed at the end of input: before issue 17 they carried frame 0 (17
/// peer_messages, 5 peer_progress and 8 anomalies rows); now their flow's
/// last packet's frame.
#[test]
fn frames_are_never_zero_on_the_corpus() {
    let Some(c) = super::corpus() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = tmp.path().join("ds");
    let (ok, err) = sw(&["analyze", s(&c), "-o", s(&ds)]);
    assert!(ok, "{err}");
    let mut zero: BTreeMap<&str, u64> = BTreeMap::new();
    let mut n = 0;
    for t in TABLE_NAMES {
        let df = read(&ds, t);
        if df.column("frame").is_ok() {
            for f in u64s(&df, "frame").into_iter().flatten() {
                n += 1;
                if f == 0 {
                    *zero.entry(*t).or_insert(0) += 1;
                }
            }
        }
    }
    assert_eq!(zero, BTreeMap::new());
    // 5,879 before the swarm's 9 conflict rows named their claim's frame.
    assert_eq!(n, 5888, "rows with a frame");
}

/// Frames are 1-based everywhere, also on rows flushed at the end of input.
#[test]
fn frames_are_never_zero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = tmp.path().join("ds");
    let (ok, err) = sw(&["analyze", "-o", s(&ds)]);
    assert!(ok, "{err}");
    let mut n_rows: BTreeMap<&str, u64> = BTreeMap::new();
    for t in TABLE_NAMES {
        let df = read(&ds, t);
        if df.column("frame").is_err() {
            continue;
        }
        for f in u64s(&df, "frame").into_iter().flatten() {
            assert!(f >= 1, "{t}: frame 0");
            *n_rows.entry(*t).or_insert(0) += 1;
        }
    }
    assert_eq!(
        n_rows,
        BTreeMap::from([
            // The swarm's conflicts: the claim's frame.
            ("anomalies", 5),
            ("dht_messages", 1617),
            ("dht_peers", 727),
            ("peer_messages", 9106),
            ("peer_progress", 1329),
            ("pieces", 849),
            ("tracker_announces", 262),
            ("tracker_peers", 850),
            ("tracker_scrapes", 1),
        ])
    );
}

/// peers name their connections (conn_ids, counted by n_connections) and
/// connections name the peers rows of both ends; every peer_messages row of
/// an attributed connection carries its info_hash; flows and connections
/// carry the same Community ID.
#[test]
fn keys_join_peers_connections_and_messages() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = tmp.path().join("ds");
    let (ok, err) = sw(&["analyze", "-o", s(&ds)]);
    assert!(ok, "{err}");
    assert!(err.contains("analyzing the bundled"), "{err}");
    let peers = read(&ds, "peers");
    let conns = read(&ds, "connections");
    let by_id: BTreeMap<u64, usize> = u64s(&conns, "conn_id")
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.expect("conn_id"), i))
        .collect();
    let c_hash = strs(&conns, "info_hash");
    // peers -> connections: every counted connection is found by its id.
    let (p_hash, p_ip, p_port) = (
        strs(&peers, "info_hash"),
        strs(&peers, "peer_ip"),
        u64s(&peers, "peer_port"),
    );
    let n_conn = u64s(&peers, "n_connections");
    let ids = peers
        .column("conn_ids")
        .expect("conn_ids")
        .list()
        .expect("list")
        .clone();
    let mut n_counted = 0u64;
    let mut n_found = 0u64;
    let mut keys = BTreeSet::new();
    for i in 0..peers.height() {
        let l: Vec<i64> = ids
            .get_as_series(i)
            .map(|s| s.i64().expect("i64").into_no_null_iter().collect())
            .unwrap_or_default();
        assert_eq!(l.len() as u64, n_conn[i].unwrap_or(0), "peer {i}");
        n_counted += n_conn[i].unwrap_or(0);
        for c in l {
            let row = by_id
                .get(&(c as u64))
                .unwrap_or_else(|| panic!("conn {c} of peer {i} not in connections"));
            assert_eq!(c_hash[*row], p_hash[i], "conn {c}");
            n_found += 1;
        }
        keys.insert((p_hash[i].clone(), p_ip[i].clone(), p_port[i]));
    }
    assert_eq!(n_found, n_counted);
    // Before issue 17, matching by endpoint found 293 of the 384 the ten
    // captures then in sample-pcaps/ counted; suppressed.pcap adds 22; the
    // receiving end of midstream.pcap's connection 42 (credited with its
    // bytes, listed since session 6) one.
    assert_eq!(n_counted, 407);
    // connections -> peers: both ends by (info_hash, ip, *_peer_port).
    let (oi, op, ri, rp) = (
        strs(&conns, "orig_ip"),
        u64s(&conns, "orig_peer_port"),
        strs(&conns, "resp_ip"),
        u64s(&conns, "resp_peer_port"),
    );
    let mut n_ends = 0;
    for i in 0..conns.height() {
        for (ip, port) in [(&oi[i], op[i]), (&ri[i], rp[i])] {
            if port.is_some() {
                assert!(keys.contains(&(c_hash[i].clone(), ip.clone(), port)), "conn row {i}");
                n_ends += 1;
            }
        }
    }
    // 207 connections, every one attributed: 414 ends, of which 7 are in
    // no peers row's conn_ids (one-way handshakes whose other side sent
    // nothing), so their *_peer_port is null. (An eighth, the receiver of
    // midstream.pcap's connection 42, seen only on an ephemeral port, is
    // named since its peer lists the connection it was credited for.)
    assert_eq!((conns.height(), n_ends), (207, 407));
    // Every message of an attributed connection carries its info_hash.
    let msgs = read(&ds, "peer_messages");
    let (m_conn, m_hash) = (u64s(&msgs, "conn_id"), strs(&msgs, "info_hash"));
    let mid: BTreeSet<u64> = u64s(&conns, "conn_id")
        .into_iter()
        .zip(super::bools(&conns, "midstream"))
        .filter(|(_, m)| *m == Some(true))
        .filter_map(|(c, _)| c)
        .collect();
    let mut n_mid_rows = 0;
    for (c, h) in m_conn.iter().zip(&m_hash) {
        let c = c.expect("conn_id");
        if let Some(row) = by_id.get(&c) {
            if c_hash[*row].is_some() {
                assert_eq!(h, &c_hash[*row], "message of conn {c}");
                n_mid_rows += u64::from(mid.contains(&c));
            }
        }
    }
    // 10 attributed mid-stream connections: all 976 of their messages carry
    // the info_hash (220 did before issue 17).
    assert_eq!(n_mid_rows, 976);
    // Community IDs: one per flow, the same on the connection it carries.
    let flows = read(&ds, "flows");
    let f_cid: BTreeMap<u64, Option<String>> = u64s(&flows, "conn_id")
        .into_iter()
        .map(|c| c.expect("id"))
        .zip(strs(&flows, "community_id"))
        .collect();
    assert!(f_cid
        .values()
        .all(|c| c.as_deref().is_some_and(|c| c.starts_with("1:") && c.len() == 30)));
    for (fid, cid) in u64s(&conns, "flow_id").into_iter().zip(strs(&conns, "community_id")) {
        assert_eq!(f_cid.get(&fid.expect("flow_id")), Some(&cid));
    }
}

// ---------- the command line ----------

fn table_height(dir: &Path, t: &str) -> usize {
    read(dir, t).height()
}

#[test]
fn read_flag_stdin_and_truncation_warning() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let http = sample("http.pcap");
    assert!(sw(&["analyze", "-r", s(&http), "-o", s(&a)]).0);
    assert!(sw(&["analyze", s(&http), "-o", s(&b)]).0);
    for t in TABLE_NAMES {
        assert_eq!(table_height(&a, t), table_height(&b, t), "{t}");
    }
    assert_eq!(table_height(&a, "flows"), 68);
    // No input named, stdin a pipe: stdin is read.
    let raw = std::fs::read(&http).expect("read");
    let mut child = bin()
        .args(["analyze", "-o", s(&c)])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        // A capture cut inside its last record: a warning, not an error.
        stdin.write_all(&raw[..raw.len() - 100]).expect("write");
    }
    let o = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("swarmtap: no input named; reading the capture on stdin"),
        "{err}"
    );
    assert!(
        err.contains(
            "swarmtap: warning: - ends inside a packet record (truncated capture); everything before it was analyzed"
        ),
        "{err}"
    );
    let cs = read(&c, "capture_stats");
    assert_eq!(strs(&cs, "capture"), [Some("-".to_string())]);
    // The last record (82 bytes) is gone and the one before it is cut.
    assert_eq!(u64s(&cs, "n_packets"), [Some(6584)]);
    assert_eq!(super::bools(&cs, "truncated_tail"), [Some(true)]);
}

#[test]
fn version_durations_and_interfaces() {
    let o = bin().arg("--version").output().expect("runs");
    let v = String::from_utf8_lossy(&o.stdout);
    let commit = v
        .trim()
        .strip_prefix("swarmtap 0.1.0 (")
        .and_then(|r| r.strip_suffix(')'));
    assert!(
        commit.is_some_and(|c| c == "unknown" || (c.len() == 12 && c.chars().all(|x| x.is_ascii_hexdigit()))),
        "{v}"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = tmp.path().join("ds");
    let http = sample("http.pcap");
    // The peak-rate window takes a duration; 5s is the default.
    let (ok, err) = sw(&["analyze", s(&http), "--rate-window", "5s", "-o", s(&ds)]);
    assert!(ok, "{err}");
    let five = u64s(&read(&ds, "peers"), "max_rate_bps");
    let (ok, _) = sw(&["analyze", s(&http), "-o", s(&ds)]);
    assert!(ok);
    assert_eq!(u64s(&read(&ds, "peers"), "max_rate_bps"), five);
    let (ok, err) = sw(&["analyze", s(&http), "--rate-window", "5x", "-o", s(&ds)]);
    assert!(!ok);
    assert!(err.contains("unknown unit \"x\""), "{err}");
    // live -D lists interfaces: the loopback is always there.
    let o = bin().args(["live", "-D"]).output().expect("runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.lines().any(|l| l.contains(".lo")), "{out}");
    let (ok, err) = sw(&["live", "-o", s(&ds)]);
    assert!(!ok);
    assert!(err.contains("--interface"), "{err}");
}

/// ^C: the run stops, writes nothing and leaves the folder as it was. The
/// capture comes through a pipe held open, so the signal arrives while the
/// run is certainly under way.
#[test]
fn interrupt_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = tmp.path().join("ds");
    assert!(sw(&["analyze", s(&sample("udp.pcap")), "-o", s(&ds)]).0);
    let before = snapshot(&ds);
    let raw = std::fs::read(sample("http.pcap")).expect("read");
    let mut child = bin()
        .args(["analyze", "-", "-o", s(&ds)])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    {
        use std::io::Write;
        stdin.write_all(&raw[..raw.len() / 2]).expect("write");
    }
    // Wait until the staging folder exists: the handlers are installed then.
    let staged = || no_leftovers(tmp.path()).iter().any(|n| n.contains("swarmtap-new"));
    for _ in 0..500 {
        if staged() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(staged(), "the run started");
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill")
        .success());
    drop(stdin);
    let o = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.lines().last().unwrap_or_default(),
        format!("swarmtap: interrupted: nothing written, {} is as it was", ds.display())
    );
    assert_eq!(snapshot(&ds), before);
    assert_eq!(no_leftovers(tmp.path()), Vec::<String>::new());
}

#[test]
fn summary_json_and_export() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = tmp.path().join("ds");
    assert!(sw(&["analyze", s(&sample("http.pcap")), "-o", s(&ds)]).0);
    let o = bin()
        .args(["summary", s(&ds), "--format", "json"])
        .output()
        .expect("runs");
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["layout"], "single");
    assert_eq!(v["tables"]["flows"], 68);
    assert_eq!(v["tables"]["connections"], 38);
    assert_eq!(v["tables"]["peers"], 5);
    assert_eq!(v["tables"]["peer_messages"], 1146);
    assert_eq!(v["n_packets"], 6586);
    assert_eq!(v["n_confirmed_downloads"], 4);
    assert_eq!(v["n_flagged_audit_series"], 0);
    assert_eq!(v["n_anomalies"], 0);
    assert_eq!(v["torrents"].as_array().map(Vec::len), Some(1));
    // CSV: a header and a line per row; NDJSON: an object per row.
    let csv = tmp.path().join("csv");
    let o = bin()
        .args([
            "export",
            s(&ds),
            "--format",
            "csv",
            "--table",
            "peers",
            "--table",
            "flows",
            "-o",
            s(&csv),
        ])
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names: BTreeSet<String> = std::fs::read_dir(&csv)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["flows.csv".to_string(), "peers.csv".to_string()])
    );
    let peers = std::fs::read_to_string(csv.join("peers.csv")).expect("read");
    let lines: Vec<&str> = peers.lines().collect();
    assert_eq!(lines.len(), 6);
    assert!(
        lines[0].starts_with("info_hash,peer_ip,peer_port,peer_id,client,first_ts,"),
        "{}",
        lines[0]
    );
    assert!(lines[0].ends_with(",sensor"), "{}", lines[0]);
    let flows = std::fs::read_to_string(csv.join("flows.csv")).expect("read");
    assert_eq!(flows.lines().count(), 69);
    // By default beside the dataset (DIR-ndjson), which stays a dataset.
    let nd = tmp.path().join("ds-ndjson");
    let o = bin()
        .args(["export", s(&ds), "--format", "ndjson"])
        .output()
        .expect("runs");
    assert!(o.status.success());
    assert_eq!(snapshot(&ds).len(), TABLE_NAMES.len());
    assert_eq!(std::fs::read_dir(&nd).expect("dir").count(), TABLE_NAMES.len());
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(nd.join("peers.ndjson"))
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rows.len(), 5);
    let confirmed = rows.iter().filter(|r| r["confirmed_download"] == true).count();
    assert_eq!(confirmed, 4);
    assert!(rows.iter().all(|r| r["first_ts"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && t.len() == 27)));
    assert!(rows
        .iter()
        .all(|r| r["conn_ids"].is_array() && r["uploaded_bytes"].is_i64()));
    let (ok, err) = sw(&["export", s(&ds), "--format", "csv", "--table", "nosuch"]);
    assert!(!ok);
    assert!(err.contains("no table \"nosuch\""), "{err}");
}

/// `summary` reads a live dataset: every interval's files, the latest
/// snapshot of each entity, the same counts as analyze.
#[test]
fn summary_reads_live_datasets() {
    use swarmtap::capture::{CaptureReader, FrameBatch, InputSpec};
    use swarmtap::config::Settings;
    use swarmtap::pipeline::Engine;
    use swarmtap::sink::writer::Interval;
    use swarmtap::sink::SinkThread;

    let pcap = sample("http.pcap");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("live");
    let settings = Settings {
        sensor: Some("tap-live".into()),
        ..Settings::default()
    };
    let mut engine = Engine::new(&settings, std::sync::Arc::new(vec!["http.pcap".into()]), Vec::new()).expect("engine");
    let mut iv = Interval {
        start_us: 1_700_000_000_000_000,
        seq: 0,
    };
    // A killed run's leftover is removed at start.
    let stale = out.join("flows/date=2023-11-14/hour=22/.part-20231114T221300Z-000009.parquet.tmp");
    std::fs::create_dir_all(stale.parent().expect("parent")).expect("mkdir");
    std::fs::write(&stale, b"half a file").expect("write");
    let sink = SinkThread::rotating(&out, iv, &settings.output_options()).expect("sink");
    assert!(!stale.exists());
    let mut r = CaptureReader::open(&InputSpec::Path(pcap.clone()), None).expect("open");
    let mut b = FrameBatch::default();
    while r.read_batch(&mut b, 1 << 20, 2000).expect("read") {
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
    // The table folders hold whole files only; the temporary folder is empty.
    let mut n_files = 0;
    let mut stack = vec![out.join("flows")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir").flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                let n = e.file_name().to_string_lossy().into_owned();
                assert!(n.starts_with("part-") && n.ends_with(".parquet"), "{n}");
                n_files += 1;
            }
        }
    }
    assert_eq!(n_files, 5, "6586 frames in batches of 2000: 4 intervals, and the last");
    assert_eq!(std::fs::read_dir(out.join(".swarmtap-tmp")).expect("tmp").count(), 0);
    let o = bin()
        .args(["summary", s(&out), "--format", "json"])
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["layout"], "hive");
    assert_eq!(v["tables"]["flows"], 68);
    assert_eq!(v["tables"]["connections"], 38);
    assert_eq!(v["tables"]["peers"], 5);
    assert_eq!(v["tables"]["peer_messages"], 1146);
    assert_eq!(v["n_confirmed_downloads"], 4);
    let text = bin().args(["summary", s(&out)]).output().expect("runs");
    assert!(text.status.success());
    // An analyze run into the live folder is refused.
    let (ok, err) = sw(&["analyze", s(&pcap), "-o", s(&out)]);
    assert!(!ok);
    assert!(err.contains("it holds a live dataset"), "{err}");
}

/// A hostile client claims 9e18 bytes uploaded in each of two sessions
/// (each value fits a signed 64-bit integer; their sum, the audit's
/// reported_uploaded, does not): written as the column's maximum, never
/// wrapped to a negative number, and counted as an anomaly.
#[test]
fn values_beyond_int64_saturate_and_are_counted() {
    use super::{tcp_frame, write_pcap};
    let t = ([10, 0, 0, 9], 6969u16);
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 29\r\n\r\nd8:intervali1800e5:peers0:e";
    let mut frames = Vec::new();
    let mut t0 = 1_700_000_000_000_000i64;
    for (i, (up, ev)) in [
        (0u64, "&event=started"),
        (9_000_000_000_000_000_000, ""),
        (0, "&event=started"),
        (9_000_000_000_000_000_000, ""),
    ]
    .into_iter()
    .enumerate()
    {
        let c = ([10, 0, 0, 1], 40000 + i as u16);
        let req = format!(
            "GET /announce?info_hash=%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42\
             &peer_id=-TR3000-aaaaaaaaaaaa&port=51413&uploaded={up}&downloaded=0&left=0{ev} HTTP/1.1\r\n\r\n"
        );
        let rl = req.len() as u32;
        frames.extend([
            (t0, tcp_frame(c, t, 1000, 0, 0x02, &[])),
            (t0 + 100, tcp_frame(t, c, 5000, 1001, 0x12, &[])),
            (t0 + 200, tcp_frame(c, t, 1001, 5001, 0x18, req.as_bytes())),
            (t0 + 300, tcp_frame(t, c, 5001, 1001 + rl, 0x18, ok)),
            (t0 + 400, tcp_frame(c, t, 1001 + rl, 5001 + ok.len() as u32, 0x11, &[])),
            (t0 + 500, tcp_frame(t, c, 5001 + ok.len() as u32, 1002 + rl, 0x11, &[])),
        ]);
        t0 += 1_800_000_000;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("hostile.pcap");
    write_pcap(&p, &frames);
    let ds = tmp.path().join("ds");
    let (ok, err) = sw(&["analyze", s(&p), "-o", s(&ds)]);
    assert!(ok, "{err}");
    let ta = read(&ds, "tracker_announces");
    assert_eq!(ta.height(), 4);
    let au = read(&ds, "announce_audit");
    let rep: Vec<Option<i64>> = au
        .column("reported_uploaded")
        .expect("col")
        .i64()
        .expect("i64")
        .iter()
        .collect();
    assert_eq!(rep, [Some(i64::MAX)]);
    let an = read(&ds, "anomalies");
    let sink_rows: Vec<(Option<String>, Option<String>)> = strs(&an, "layer")
        .into_iter()
        .zip(strs(&an, "kind").into_iter().zip(strs(&an, "detail")))
        .filter(|(l, _)| l.as_deref() == Some("sink"))
        .map(|(_, k)| k)
        .collect();
    assert_eq!(
        sink_rows,
        [(
            Some("value_saturated".to_string()),
            Some(
                "announce_audit.reported_uploaded: 1 value(s) above the column's signed range written as its maximum"
                    .to_string()
            )
        )]
    );
}

/// The bound on held mid-stream messages: past it the oldest connection's
/// rows go out without an info_hash, counted in one anomaly row.
#[test]
fn held_messages_are_bounded_and_counted() {
    // Small batches: a mid-stream connection's messages wait several
    // batches for its attribution.
    let mut settings = swarmtap::config::Settings::default();
    settings.limits.batch_frames = 50;
    let all = super::run_with(&[sample("midstream.pcap")], &[], settings.clone(), None);
    settings.limits.max_held_messages = 10;
    let bounded = super::run_with(&[sample("midstream.pcap")], &[], settings, None);
    let msgs = |r: &super::Run| {
        let m = super::table(r, "peer_messages");
        let n_null = strs(&m, "info_hash").iter().filter(|h| h.is_none()).count();
        (m.height(), n_null)
    };
    let (n_all, null_all) = msgs(&all);
    let (n_bounded, null_bounded) = msgs(&bounded);
    assert_eq!(n_all, n_bounded, "every row is written either way");
    assert_eq!(null_all, 0);
    let an = super::table(&bounded, "anomalies");
    let details: Vec<Option<String>> = strs(&an, "kind")
        .into_iter()
        .zip(strs(&an, "detail"))
        .filter(|(k, _)| k.as_deref() == Some("held_messages_released"))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(details.len(), 1);
    let n: usize = details[0]
        .as_deref()
        .and_then(|d| d.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("count");
    assert_eq!(n, null_bounded);
    assert_eq!((n_all, null_bounded), (810, 71));
}

/// `analyze_without_files` (the pipeline fuzz target's entry) is the same
/// run as `analyze` without the files: the same summary on http.pcap
/// (6,586 packets, 68 flows, 38 connections, 5 peers, 4 confirmed
/// downloads, 1,146 messages), and nothing left beside the output folder
/// of the run that writes.
#[test]
fn analyze_without_files_is_the_same_run_without_files() {
    use swarmtap::capture::InputSpec;
    use swarmtap::config::Settings;
    let pcap = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-pcaps/http.pcap");
    let torrent = || {
        let t = std::fs::read(pcap.with_extension("torrent")).expect("torrent");
        vec![swarmtap::proto::metainfo::parse_torrent(&t).expect("parse")]
    };
    let settings = Settings::default();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let inputs = || vec![InputSpec::Path(pcap.clone())];
    let mut written = swarmtap::pipeline::analyze(inputs(), None, &out, &settings, torrent()).expect("analyze");
    let mut none =
        swarmtap::pipeline::analyze_without_files(inputs(), None, &settings, torrent()).expect("without files");
    written.elapsed_s = 0.0;
    none.elapsed_s = 0.0;
    assert_eq!(none.render(), written.render());
    assert_eq!(
        (
            none.n_packets,
            none.n_flows,
            none.n_connections,
            none.n_peers,
            none.n_confirmed_downloads,
            none.n_messages
        ),
        (6586, 68, 38, 5, 4, 1146)
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("out")]);
}
