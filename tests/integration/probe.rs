//! `swarmtap probe` against a private swarm of real clients in network
//! namespaces (tests/probe_swarm.py builds it with the sample-pcaps
//! generator's helpers): opentracker, a libtorrent seeder, a Transmission
//! leecher requiring encryption, a libtorrent leecher over TCP only and one
//! over uTP only; the probe runs in a
//! namespace of its own whose interface is captured. When not root or when
//! a tool is missing: a failure under SWARMTAP_REQUIRE_ALL, else a recorded
//! skip (tests/support/require.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::process::Command;

use polars::prelude::*;
use swarmtap::sink::TABLE_NAMES;

fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).output().is_ok_and(|o| o.status.success())
}

fn missing_prerequisite() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root (network namespaces need it)".into());
    }
    for (cmd, args) in [
        ("ip", &["netns", "list"][..]),
        ("/usr/bin/python3", &["-c", "import libtorrent"][..]),
        ("transmission-daemon", &["--version"][..]),
        ("opentracker", &["-h"][..]),
        ("tcpdump", &["--version"][..]),
        ("tshark", &["--version"][..]),
        ("mktorrent", &["-h"][..]),
    ] {
        // opentracker and mktorrent exit non-zero on -h: being found is enough.
        let found = have(cmd, args) || Command::new(cmd).args(args).output().is_ok();
        if !found {
            return Some(format!("{cmd} is not available"));
        }
    }
    None
}

fn read(dir: &Path, table: &str) -> DataFrame {
    let f = File::open(dir.join(format!("{table}.parquet"))).expect("table file");
    ParquetReader::new(f).finish().expect("parquet")
}

fn strs(df: &DataFrame, c: &str) -> Vec<Option<String>> {
    df.column(c)
        .expect(c)
        .str()
        .expect(c)
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

fn col_u64(df: &DataFrame, c: &str) -> Vec<Option<u64>> {
    let s = df.column(c).expect(c).cast(&DataType::UInt64).expect(c);
    s.u64().expect(c).iter().collect()
}

fn col_i64(df: &DataFrame, c: &str) -> Vec<Option<i64>> {
    let s = df.column(c).expect(c).cast(&DataType::Int64).expect(c);
    s.i64().expect(c).iter().collect()
}

fn bools(df: &DataFrame, c: &str) -> Vec<Option<bool>> {
    df.column(c).expect(c).bool().expect(c).iter().collect()
}

#[test]
fn probe_swarm_of_real_clients() {
    if let Some(why) = missing_prerequisite() {
        super::require::skip("the probe's swarm (root, namespaces, real clients)", &why);
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe_swarm.py");
    let st = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_swarmtap"))
        .arg(out)
        .args(["--duration", "60"])
        .status()
        .expect("run tests/probe_swarm.py");
    let log = std::fs::read_to_string(out.join("probe.log")).unwrap_or_default();
    eprintln!("--- probe log ---\n{log}");
    assert!(st.success(), "swarm driver failed");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).expect("manifest")).expect("json");
    assert_eq!(m["probe_exit"], 0, "probe exit status");
    let dir = out.join("probe");
    for t in TABLE_NAMES {
        assert!(dir.join(format!("{t}.parquet")).is_file(), "{t}.parquet missing");
    }
    let t_start_us = (m["probe_started"].as_f64().unwrap() * 1e6) as i64;
    let t_end_us = (m["probe_ended"].as_f64().unwrap() * 1e6) as i64;
    let ta = &m["torrents"][0];
    let tb = &m["torrents"][1];
    let ih_a = ta["info_hash"].as_str().unwrap().to_string();
    let ih_b = tb["info_hash"].as_str().unwrap().to_string();
    let tc = &m["torrents"][2];
    let ih_c = tc["info_hash"].as_str().unwrap().to_string();
    let has = |h: &serde_json::Value, ih: &str| h["torrents"].as_array().unwrap().iter().any(|x| x == ih);

    // --- probe_visits: every client reached, piece count on every success.
    let v = read(&dir, "probe_visits");
    let (ips, ihs, succ, enc, have_n, visit, outcome) = (
        strs(&v, "peer_ip"),
        strs(&v, "info_hash"),
        bools(&v, "success"),
        bools(&v, "encrypted"),
        col_u64(&v, "n_pieces_have"),
        col_u64(&v, "visit"),
        strs(&v, "outcome"),
    );
    let hosts = m["hosts"].as_array().unwrap();
    // The dual-stack client is probed at its IPv6 endpoint only (its IPv4
    // one is denied): checked in its own block below.
    let v4_probed = |h: &&serde_json::Value| !h["ip6"].is_string();
    let mut first_total = 0;
    let mut first_ok = 0;
    for i in 0..v.height() {
        // Outgoing visits: incoming contacts are the peer's initiative (a
        // client dropping a duplicate connection says nothing first).
        if succ[i] == Some(true) && bools(&v, "incoming")[i] == Some(false) {
            assert!(have_n[i].is_some(), "successful visit without a piece count: row {i}");
        }
    }
    // First contacts: attempts of visit 1 per (ip, torrent); ok if any succeeded.
    let mut firsts: BTreeMap<(String, String), bool> = BTreeMap::new();
    for i in 0..v.height() {
        if visit[i] == Some(1) {
            let e = firsts
                .entry((ips[i].clone().unwrap(), ihs[i].clone().unwrap()))
                .or_insert(false);
            *e |= succ[i] == Some(true);
        }
    }
    for ok in firsts.values() {
        first_total += 1;
        first_ok += usize::from(*ok);
    }
    for h in hosts.iter().filter(|h| has(h, &ih_a)).filter(v4_probed) {
        let ip = h["ip"].as_str().unwrap();
        let n_ok = (0..v.height())
            .filter(|&i| ips[i].as_deref() == Some(ip) && ihs[i].as_deref() == Some(&ih_a) && succ[i] == Some(true))
            .count();
        // A seeder is complete at its first visit and not revisited; a
        // leecher is watched until it completes (in one contact held open
        // through its crossing, or in several).
        assert!(n_ok >= 1, "{} ({ip}) reached {n_ok} times", h["name"]);
        if h["enc"] == "require" {
            // Every successful visit of the client that requires encryption
            // was RC4-encrypted; plaintext attempts to it failed.
            for i in 0..v.height() {
                if ips[i].as_deref() == Some(ip) {
                    if succ[i] == Some(true) {
                        assert_eq!(enc[i], Some(true), "row {i}: unencrypted success to {ip}");
                    } else {
                        assert_eq!(enc[i], Some(false));
                    }
                }
            }
        }
    }
    // --- the uTP-only client: reached over uTP on every visit, its piece
    // count read each time; TCP (disabled in it) is not tried again once
    // uTP worked (the transport is remembered).
    let transport = strs(&v, "transport");
    let incoming = bools(&v, "incoming");
    let utp_only: Vec<&serde_json::Value> = hosts.iter().filter(|h| h["tcp"] == false).collect();
    assert_eq!(
        utp_only.len(),
        2,
        "two uTP-only clients in the swarm (one probed over IPv6)"
    );
    for h in utp_only.iter().copied().filter(v4_probed) {
        let ip = h["ip"].as_str().unwrap();
        let rows: Vec<usize> = (0..v.height())
            .filter(|&i| ips[i].as_deref() == Some(ip) && ihs[i].as_deref() == Some(&ih_a))
            .filter(|&i| incoming[i] == Some(false))
            .collect();
        let visits: BTreeSet<u64> = rows
            .iter()
            .filter(|&&i| outcome[i].as_deref() != Some("cancelled"))
            .map(|&i| visit[i].unwrap())
            .collect();
        assert!(!visits.is_empty(), "{ip}: no visit");
        let mut first_utp_visit = None;
        for &vis in &visits {
            let ok: Vec<usize> = rows
                .iter()
                .copied()
                .filter(|&i| visit[i] == Some(vis) && succ[i] == Some(true))
                .collect();
            assert_eq!(ok.len(), 1, "{ip}: visit {vis} did not reach it");
            assert_eq!(transport[ok[0]].as_deref(), Some("utp"), "{ip}: visit {vis}");
            assert!(have_n[ok[0]].is_some(), "{ip}: visit {vis} without a piece count");
            first_utp_visit.get_or_insert(vis);
        }
        let first = first_utp_visit.unwrap();
        let tcp_rows: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|&i| transport[i].as_deref() == Some("tcp"))
            .collect();
        for &i in &tcp_rows {
            assert_eq!(succ[i], Some(false), "{ip}: a TCP contact succeeded with TCP disabled");
            assert!(visit[i].unwrap() <= first, "{ip}: TCP tried again after uTP worked");
        }
        let n_in = (0..v.height())
            .filter(|&i| ips[i].as_deref() == Some(ip) && incoming[i] == Some(true))
            .filter(|&i| transport[i].as_deref() == Some("utp") && succ[i] == Some(true))
            .count();
        eprintln!(
            "{} ({ip}, uTP only): {} visit(s), each reached over utp; {} failed TCP attempt(s) at visit {first}; {n_in} incoming uTP contact(s)",
            h["name"],
            visits.len(),
            tcp_rows.len()
        );
    }

    let n_rows = v.height();
    let n_ok_rows = succ.iter().filter(|s| **s == Some(true)).count();
    let outcomes: BTreeSet<String> = outcome.iter().flatten().cloned().collect();
    eprintln!(
        "probe_visits: {n_rows} attempts, {n_ok_rows} successful; outcomes {outcomes:?}; first contacts ok {first_ok}/{first_total}"
    );
    // Visits per (peer, torrent), outgoing: the figure the schedule is
    // judged by (a 60 s run on fixed 5-minute revisits makes one each).
    let mut per_peer: BTreeMap<(String, String), BTreeSet<u64>> = BTreeMap::new();
    for i in 0..v.height() {
        if incoming[i] == Some(false) && outcome[i].as_deref() != Some("cancelled") {
            per_peer
                .entry((ips[i].clone().unwrap_or_default(), ihs[i].clone().unwrap_or_default()))
                .or_default()
                .insert(visit[i].unwrap_or(0));
        }
    }
    let total: usize = per_peer.values().map(BTreeSet::len).sum();
    let end_reasons: BTreeMap<String, usize> =
        strs(&v, "end_reason")
            .into_iter()
            .flatten()
            .fold(BTreeMap::new(), |mut m, r| {
                *m.entry(r).or_default() += 1;
                m
            });
    eprintln!(
        "visits: {total} to {} (peer, torrent) pairs: {:?}; end reasons {end_reasons:?}",
        per_peer.len(),
        per_peer
            .iter()
            .map(|((ip, ih), n)| format!("{ip}/{}={}", &ih[..8], n.len()))
            .collect::<Vec<_>>()
    );

    // --- peers: each leecher that completed during the run counted once, crossing kept.
    let p = read(&dir, "peers");
    let (pips, pihs, conf, cts, srcs) = (
        strs(&p, "peer_ip"),
        strs(&p, "info_hash"),
        bools(&p, "confirmed_download"),
        col_i64(&p, "completed_ts"),
        p.column("sources").expect("sources").clone(),
    );
    let mut expected_confirmed = 0;
    for h in hosts.iter().filter(|h| has(h, &ih_a)).filter(v4_probed) {
        let ip = h["ip"].as_str().unwrap();
        // Rows heard from by the probe (a peer may also be listed by ut_pex
        // under an outgoing port nobody listens on: that row is never
        // reached, never counted).
        let sources_of = |r: usize| -> Vec<String> {
            let s = srcs.list().expect("list").get_as_series(r).expect("sources row");
            s.str().expect("str").iter().flatten().map(str::to_string).collect()
        };
        let rows: Vec<usize> = (0..p.height())
            .filter(|&i| pips[i].as_deref() == Some(ip) && pihs[i].as_deref() == Some(&ih_a))
            .filter(|&i| sources_of(i).iter().any(|x| x == "probe"))
            .collect();
        assert_eq!(rows.len(), 1, "{ip}: one peers row reached by the probe for torrent A");
        let r = rows[0];
        let n_confirmed_rows = (0..p.height())
            .filter(|&i| pips[i].as_deref() == Some(ip) && pihs[i].as_deref() == Some(&ih_a) && conf[i] == Some(true))
            .count();
        assert!(n_confirmed_rows <= 1, "{ip} counted {n_confirmed_rows} times");
        if h["role"] == "leecher" {
            let done = h["completed_seen"][&ih_a].as_f64();
            let done_us = done.map(|d| (d * 1e6) as i64);
            let during = done_us.is_some_and(|d| d > t_start_us && d < t_end_us);
            if h["tcp"] == false {
                assert!(
                    during,
                    "{ip}: the uTP-only leecher did not complete during the run ({done:?})"
                );
            }
            if during {
                expected_confirmed += 1;
                assert_eq!(
                    conf[r],
                    Some(true),
                    "{ip} completed during the run but is not confirmed"
                );
                let c = cts[r].expect("completed_ts");
                let d = done_us.unwrap();
                let diff_s = (c - d) as f64 / 1e6;
                let n_visits = (0..v.height())
                    .filter(|&i| ips[i].as_deref() == Some(ip) && ihs[i].as_deref() == Some(&ih_a))
                    .filter(|&i| incoming[i] == Some(false) && outcome[i].as_deref() != Some("cancelled"))
                    .filter_map(|i| visit[i])
                    .collect::<BTreeSet<u64>>()
                    .len();
                eprintln!(
                    "{} ({ip}): crossing seen by the probe {diff_s:+.2} s from the client's own completion (polled every 0.5 s); {n_visits} visit(s)",
                    h["name"]
                );
                // With the default schedule (--revisit 5 min): the probe
                // cannot see it before it happens (the client's own time is
                // polled every 0.5 s, hence the slack below zero), and must
                // see it within 30 s (issue 18), not a revisit later.
                assert!((-1.0..=30.0).contains(&diff_s), "{ip}: crossing {diff_s} s off");
            } else {
                eprintln!(
                    "{} ({ip}) did not complete during the run (completed_seen {done:?})",
                    h["name"]
                );
            }
        } else {
            assert_eq!(conf[r], Some(false), "the seeder is no download");
        }
    }
    // --- the dual-stack uTP-only leecher at its IPv6 endpoint (given with
    // --peer): reached over uTP on IPv6 at every visit, piece counts read,
    // its crossing caught as over IPv4.
    for h in hosts.iter().filter(|h| h["ip6"].is_string() && has(h, &ih_a)) {
        let ip6 = h["ip6"].as_str().unwrap();
        let rows: Vec<usize> = (0..v.height())
            .filter(|&i| ips[i].as_deref() == Some(ip6) && ihs[i].as_deref() == Some(&ih_a))
            .filter(|&i| incoming[i] == Some(false) && outcome[i].as_deref() != Some("cancelled"))
            .collect();
        let ok: Vec<usize> = rows.iter().copied().filter(|&i| succ[i] == Some(true)).collect();
        assert!(!ok.is_empty(), "{ip6}: never reached over IPv6");
        for &i in &ok {
            assert_eq!(transport[i].as_deref(), Some("utp"), "{ip6}: row {i}");
            assert!(have_n[i].is_some(), "{ip6}: row {i} without a piece count");
        }
        let visits: BTreeSet<u64> = rows.iter().filter_map(|&i| visit[i]).collect();
        for vis in &visits {
            assert!(
                ok.iter().any(|&i| visit[i] == Some(*vis)),
                "{ip6}: visit {vis} did not reach it"
            );
        }
        let r = (0..p.height())
            .find(|&i| pips[i].as_deref() == Some(ip6) && pihs[i].as_deref() == Some(&ih_a))
            .unwrap_or_else(|| panic!("{ip6}: no peers row"));
        let done_us = h["completed_seen"][&ih_a].as_f64().map(|d| (d * 1e6) as i64);
        let during = done_us.is_some_and(|d| d > t_start_us && d < t_end_us);
        assert!(
            during,
            "{ip6}: the IPv6 uTP-only leecher did not complete during the run"
        );
        expected_confirmed += 1;
        assert_eq!(
            conf[r],
            Some(true),
            "{ip6} completed during the run but is not confirmed"
        );
        let diff_s = (cts[r].expect("completed_ts") - done_us.unwrap()) as f64 / 1e6;
        eprintln!(
            "{} ({ip6}, IPv6, uTP only): {} visit(s), {} reached over utp; crossing seen {diff_s:+.2} s from the client's own completion",
            h["name"],
            visits.len(),
            ok.len()
        );
        assert!((-1.0..=30.0).contains(&diff_s), "{ip6}: crossing {diff_s} s off");
    }
    assert!(
        expected_confirmed >= 1,
        "no leecher completed during the run: the swarm is too slow"
    );
    // The DHT-only leecher of C (a bare info hash: its piece count comes
    // from ut_metadata during the first contact): the same rule.
    for h in hosts.iter().filter(|h| h["role"] == "leecher" && has(h, &ih_c)) {
        let ip = h["ip"].as_str().unwrap();
        let done_us = h["completed_seen"][&ih_c].as_f64().map(|d| (d * 1e6) as i64);
        let Some(d) = done_us.filter(|d| *d > t_start_us && *d < t_end_us) else {
            eprintln!("{} ({ip}) did not complete C during the run", h["name"]);
            continue;
        };
        let r = (0..p.height())
            .find(|&i| pips[i].as_deref() == Some(ip) && pihs[i].as_deref() == Some(&ih_c) && conf[i] == Some(true))
            .unwrap_or_else(|| panic!("{ip} completed C during the run but is not confirmed"));
        let diff_s = (cts[r].expect("completed_ts") - d) as f64 / 1e6;
        eprintln!(
            "{} ({ip}, torrent C): crossing seen by the probe {diff_s:+.2} s from the client's own completion",
            h["name"]
        );
        assert!((-1.0..=30.0).contains(&diff_s), "{ip}: crossing {diff_s} s off");
    }

    // --- incoming contacts (--listen 6881, announced): a peer that connected
    // to us is identified by its BEP 10 listen port (else its peer id) and
    // merged with the peer we contact ourselves, never a second peer.
    let inc = bools(&v, "incoming");
    let n_incoming = inc.iter().filter(|x| **x == Some(true)).count();
    let pports_all = col_u64(&p, "peer_port");
    let mut merged = 0;
    for i in 0..p.height() {
        let s: Vec<String> = {
            let x = srcs.list().expect("list").get_as_series(i).expect("row");
            x.str().expect("str").iter().flatten().map(str::to_string).collect()
        };
        if s.iter().any(|x| x == "incoming") {
            let ip = pips[i].as_deref().unwrap();
            let h = hosts
                .iter()
                .find(|h| h["ip"] == ip || h["ip6"] == ip)
                .expect("incoming from a swarm host");
            assert_eq!(
                pports_all[i],
                h["port"].as_u64(),
                "{ip}: incoming peer under another port"
            );
            merged += usize::from(s.iter().any(|x| x == "tracker"));
        }
    }
    eprintln!("incoming contacts: {n_incoming}; peers reached both ways (merged): {merged}");
    // Incoming uTP on the listen port's UDP twin: libtorrent prefers uTP for
    // its outgoing connections, so the seeder (TCP and uTP) comes in over it.
    let n_incoming_utp = (0..v.height())
        .filter(|&i| inc[i] == Some(true) && succ[i] == Some(true) && transport[i].as_deref() == Some("utp"))
        .count();
    assert!(n_incoming_utp >= 1, "no incoming contact over uTP");
    eprintln!("incoming contacts over uTP: {n_incoming_utp}");

    // --- torrents: A from the file, B's metadata fetched and verified.
    let t = read(&dir, "torrents");
    let (tih, tname, tnp, tsrc, tconf) = (
        strs(&t, "info_hash"),
        strs(&t, "name"),
        col_u64(&t, "n_pieces"),
        strs(&t, "metadata_source"),
        col_u64(&t, "n_confirmed_downloads"),
    );
    let row_a = tih
        .iter()
        .position(|h| h.as_deref() == Some(&ih_a))
        .expect("torrent A row");
    let row_b = tih
        .iter()
        .position(|h| h.as_deref() == Some(&ih_b))
        .expect("torrent B row");
    assert_eq!(tsrc[row_a].as_deref(), Some("torrent_file"));
    assert_eq!(tconf[row_a], Some(expected_confirmed));
    assert_eq!(
        tsrc[row_b].as_deref(),
        Some("ut_metadata"),
        "magnet metadata not fetched"
    );
    assert_eq!(tname[row_b].as_deref(), tb["name"].as_str());
    assert_eq!(tnp[row_b], tb["n_pieces"].as_u64());
    assert_eq!(tnp[row_a], ta["n_pieces"].as_u64());

    // --- tracker_announces: HTTP for A, UDP for B, both answered with peers.
    let a = read(&dir, "tracker_announces");
    let (aih, atr, anp) = (
        strs(&a, "info_hash"),
        strs(&a, "transport"),
        col_u64(&a, "n_peers_returned"),
    );
    for (ih, tr) in [(&ih_a, "http"), (&ih_b, "udp")] {
        assert!(
            (0..a.height())
                .any(|i| aih[i].as_deref() == Some(ih) && atr[i].as_deref() == Some(tr) && anp[i] >= Some(1)),
            "{tr} announce for {ih}"
        );
    }

    dht_and_scrape(&dir, &m, hosts, [&ih_a, &ih_b, &ih_c]);

    // --- nothing sent outside the swarm.
    let swarm: BTreeSet<String> = m["swarm_ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    let o = Command::new("tshark")
        .args(["-r"])
        .arg(out.join("probe.pcap"))
        // IGMP membership reports (224.0.0.22) and IPv6 neighbour discovery
        // and MLD (ICMPv6 to ff02::/16 and fe80::/10) are the kernel's own,
        // link-local and never routed; every other packet is counted.
        .args([
            "-Y",
            "not igmp and not (icmpv6 and (ipv6.dst == ff02::/16 or ipv6.dst == fe80::/10))",
            // The outer header only: an ICMP error quotes the datagram it
            // answers (whose destination was us).
            "-E",
            "occurrence=f",
            "-T",
            "fields",
            "-e",
            "ip.dst",
            "-e",
            "arp.dst.proto_ipv4",
            "-e",
            "ipv6.dst",
        ])
        .output()
        .expect("tshark");
    let text = String::from_utf8_lossy(&o.stdout);
    let mut n_pkts = 0;
    let mut dsts = BTreeSet::new();
    for line in text.lines() {
        n_pkts += 1;
        for f in line.split('\t').filter(|f| !f.is_empty()) {
            dsts.insert(f.to_string());
        }
    }
    assert!(n_pkts > 100, "capture too small: {n_pkts} packets");
    let outside: Vec<&String> = dsts.iter().filter(|d| !swarm.contains(*d)).collect();
    assert!(outside.is_empty(), "sent outside the swarm: {outside:?}");
    for h in hosts {
        // The dual-stack client at its IPv6 address (its IPv4 one denied).
        let ip = h["ip6"].as_str().unwrap_or_else(|| h["ip"].as_str().unwrap());
        assert!(dsts.contains(ip), "{ip} never sent to");
        if h["ip6"].is_string() {
            // Its IPv4 address is denied: the probe opens nothing to it (no
            // TCP SYN) and sends it no datagram at all: no uTP SYN of ours,
            // and its own uTP SYNs to our announced listen port get no
            // answer (the socket's accept filter); no visit row.
            let denied = h["ip"].as_str().unwrap();
            let o = Command::new("tshark")
                .args(["-r"])
                .arg(out.join("probe.pcap"))
                .args([
                    "-Y",
                    &format!("ip.dst == {denied} and ((tcp.flags.syn == 1 and tcp.flags.ack == 0) or udp)"),
                ])
                .output()
                .expect("tshark");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let opened = String::from_utf8_lossy(&o.stdout).lines().count();
            assert_eq!(opened, 0, "packets sent to the denied {denied}");
            assert!(
                !(0..v.height()).any(|i| ips[i].as_deref() == Some(denied) && incoming[i] == Some(false)),
                "a visit to the denied {denied}"
            );
        }
    }
    eprintln!("capture: {n_pkts} packets, destinations {dsts:?}");

    // --- the capture of the probe's own traffic, analyzed passively, gives
    // the same piece counts for the peers reached in plaintext (encrypted
    // contacts are opaque to a tap, which is why the probe exists).
    let passive = out.join("passive");
    let st = Command::new(env!("CARGO_BIN_EXE_swarmtap"))
        .arg("analyze")
        .arg(out.join("probe.pcap"))
        .arg("--torrents")
        .arg(out.join("pa.torrent"))
        .arg("--torrents")
        .arg(out.join("pb.torrent"))
        .arg("--torrents")
        .arg(out.join("pc.torrent"))
        .arg("-o")
        .arg(&passive)
        .status()
        .expect("analyze");
    assert!(st.success());
    let pp = read(&passive, "peers");
    let (qips, qihs, qports, qlast) = (
        strs(&pp, "peer_ip"),
        strs(&pp, "info_hash"),
        col_u64(&pp, "peer_port"),
        col_u64(&pp, "last_pieces"),
    );
    let qutp = bools(&pp, "utp");
    let (pports, plast) = (col_u64(&p, "peer_port"), col_u64(&p, "last_pieces"));
    let mut compared = 0;
    let mut compared_utp = 0;
    let mut compared_v6 = 0;
    for (h, ip) in hosts.iter().filter(|h| h["enc"] != "require").flat_map(|h| {
        [h["ip"].as_str(), h["ip6"].as_str()]
            .into_iter()
            .flatten()
            .map(move |ip| (h, ip))
    }) {
        for i in 0..p.height() {
            if pips[i].as_deref() != Some(ip) || plast[i].is_none() {
                continue;
            }
            let j = (0..pp.height())
                .find(|&j| qips[j] == pips[i] && qihs[j] == pihs[i] && qports[j] == pports[i])
                .unwrap_or_else(|| panic!("{ip}:{:?} missing from the passive peers", pports[i]));
            assert_eq!(qlast[j], plast[i], "{ip} {:?}: passive vs probe last_pieces", pihs[i]);
            compared += 1;
            compared_v6 += usize::from(ip.contains(':'));
            if h["tcp"] == false {
                // The tap saw this peer's piece count over uTP only.
                assert_eq!(qutp[j], Some(true), "{ip}: passive peers.utp");
                compared_utp += 1;
            }
        }
    }
    assert!(compared >= 4, "compared {compared} peers");
    assert!(compared_utp >= 2, "the uTP-only peers' piece counts were not compared");
    assert!(compared_v6 >= 1, "the IPv6 peer's piece count was not compared");
    eprintln!(
        "passive analysis of the probe's capture agrees on {compared} peers' piece counts ({compared_utp} over uTP, {compared_v6} over IPv6)"
    );
}

/// SIGINT ends a run cleanly: exit 0, every table written, the attempts
/// made so far in probe_visits. Loopback only (a closed port: refused).
#[test]
fn probe_sigint_writes_every_table() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_swarmtap"))
        .args(["probe", "--info-hash", "0123456789abcdef0123456789abcdef01234567"])
        .args([
            "--peer",
            &format!("127.0.0.1:{port}"),
            "--allow-private",
            "--retry",
            "200ms",
            "--transport",
            "tcp",
        ])
        .arg("-o")
        .arg(tmp.path())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let st = child.wait().expect("wait");
    assert!(st.success(), "exit status {st:?}");
    for t in TABLE_NAMES {
        assert!(tmp.path().join(format!("{t}.parquet")).is_file(), "{t}.parquet missing");
    }
    let v = read(tmp.path(), "probe_visits");
    assert!(v.height() >= 2, "{} attempts", v.height());
    assert!(strs(&v, "outcome").iter().all(|o| o.as_deref() == Some("refused")));
    // Default transports (tcp, then utp): TCP is refused, the uTP SYN to a
    // port where nothing listens gets no answer and is resent until the
    // connect timeout (10 s here); SIGINT ends it at once.
    let tmp3 = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_swarmtap"))
        .args(["probe", "--info-hash", "0123456789abcdef0123456789abcdef01234567"])
        .args(["--peer", &format!("127.0.0.1:{port}"), "--allow-private"])
        .args(["--connect-timeout", "10s"])
        .arg("-o")
        .arg(tmp3.path())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let t = std::time::Instant::now();
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill")
        .success());
    assert!(child.wait().expect("wait").success());
    // What ended the uTP attempt is in the data: its outcome is
    // `cancelled`, not `timeout` (below), so the exit came from SIGINT and
    // not from the 10 s connect timeout; the time taken is only reported.
    eprintln!("{:.2} s from SIGINT to exit", t.elapsed().as_secs_f64());
    let v = read(tmp3.path(), "probe_visits");
    let got: Vec<(Option<String>, Option<String>)> =
        strs(&v, "transport").into_iter().zip(strs(&v, "outcome")).collect();
    assert_eq!(
        got,
        vec![
            (Some("tcp".into()), Some("refused".into())),
            (Some("utp".into()), Some("cancelled".into()))
        ]
    );
    // Without --allow-private the same target is refused by policy: no attempt.
    let tmp2 = tempfile::tempdir().expect("tempdir");
    let st = Command::new(env!("CARGO_BIN_EXE_swarmtap"))
        .args(["probe", "--info-hash", "0123456789abcdef0123456789abcdef01234567"])
        .args(["--peer", &format!("127.0.0.1:{port}"), "--duration", "1s"])
        .arg("-o")
        .arg(tmp2.path())
        .status()
        .expect("run");
    assert!(st.success());
    assert_eq!(read(tmp2.path(), "probe_visits").height(), 0);
    assert_eq!(read(tmp2.path(), "peers").height(), 0);
}

/// Our DHT node (bootstrapped from the seeder only) found exactly the
/// DHT-enabled clients of each torrent, including torrent C, which the
/// probe got as a bare info hash with no tracker; its KRPC traffic is in
/// dht_messages; opentracker's scrape answers match the swarm.
fn dht_and_scrape(dir: &Path, m: &serde_json::Value, hosts: &[serde_json::Value], ihs: [&String; 3]) {
    let p = read(dir, "peers");
    let (pips, pihs, pports, srcs) = (
        strs(&p, "peer_ip"),
        strs(&p, "info_hash"),
        col_u64(&p, "peer_port"),
        p.column("sources").expect("sources").clone(),
    );
    let sources_of = |r: usize| -> Vec<String> {
        let s = srcs.list().expect("list").get_as_series(r).expect("sources row");
        s.str().expect("str").iter().flatten().map(str::to_string).collect()
    };
    for ih in ihs {
        let found: BTreeSet<(String, u64)> = (0..p.height())
            .filter(|&i| pihs[i].as_deref() == Some(ih.as_str()) && sources_of(i).iter().any(|s| s == "dht"))
            .map(|i| (pips[i].clone().unwrap(), pports[i].unwrap()))
            .collect();
        let want: BTreeSet<(String, u64)> = hosts
            .iter()
            .filter(|h| h["dht"] == true && h["torrents"].as_array().unwrap().iter().any(|x| x == ih.as_str()))
            .map(|h| (h["ip"].as_str().unwrap().to_string(), h["port"].as_u64().unwrap()))
            .collect();
        eprintln!("DHT peers of {ih}: {found:?}");
        assert!(!want.is_empty());
        assert_eq!(found, want, "peers found through the DHT for {ih}");
    }
    // Torrent C had no tracker: every peer of it came from the DHT or ut_pex.
    let ih_c = ihs[2];
    for (i, ih) in pihs.iter().enumerate() {
        if ih.as_deref() == Some(ih_c.as_str()) {
            let s = sources_of(i);
            assert!(!s.iter().any(|x| x == "tracker"), "{s:?}");
        }
    }
    let d = read(dir, "dht_messages");
    let (kind, method, src, dst, nv) = (
        strs(&d, "kind"),
        strs(&d, "method"),
        strs(&d, "src_ip"),
        strs(&d, "dst_ip"),
        col_u64(&d, "n_values"),
    );
    let (ro, rtt) = (bools(&d, "read_only"), d.column("rtt_ms").expect("rtt_ms").clone());
    let probe_ip = m["probe_ip"].as_str().unwrap();
    let mut n_q = 0;
    let mut n_values_answers = 0;
    for i in 0..d.height() {
        let ours = src[i].as_deref() == Some(probe_ip);
        assert!(
            ours || dst[i].as_deref() == Some(probe_ip),
            "row {i} is not our traffic"
        );
        if ours && kind[i].as_deref() == Some("query") {
            n_q += 1;
            assert_eq!(ro[i], Some(true), "our queries are read-only (BEP 43)");
        }
        if !ours
            && kind[i].as_deref() == Some("response")
            && method[i].as_deref() == Some("get_peers")
            && nv[i] >= Some(1)
        {
            n_values_answers += 1;
            assert!(rtt.get(i).is_ok_and(|v| !v.is_null()), "paired response has an rtt");
        }
    }
    eprintln!(
        "dht_messages: {} rows, {n_q} queries of ours, {n_values_answers} get_peers answers with values",
        d.height()
    );
    assert!(
        n_values_answers >= 3,
        "get_peers responses with values: {n_values_answers}"
    );

    // Scrapes: once before the first announce of each tracker (HTTP for A,
    // UDP for B), while the swarm is as started: the seeder, A's two
    // leechers, nothing completed yet. The probe has not announced yet.
    let s = read(dir, "tracker_scrapes");
    let (sih, str_, ans, se, le, co) = (
        strs(&s, "info_hash"),
        strs(&s, "transport"),
        bools(&s, "answered"),
        col_i64(&s, "seeders"),
        col_i64(&s, "leechers"),
        col_i64(&s, "completed"),
    );
    let rts = col_i64(&s, "ts");
    for (ih, tr) in [(ihs[0], "http"), (ihs[1], "udp")] {
        let first = (0..s.height())
            .filter(|&i| sih[i].as_deref() == Some(ih.as_str()) && str_[i].as_deref() != Some("dht"))
            .min_by_key(|&i| rts[i])
            .unwrap_or_else(|| panic!("no scrape row for {ih}"));
        let n_leechers = hosts
            .iter()
            .filter(|h| h["role"] == "leecher" && h["torrents"].as_array().unwrap().iter().any(|x| x == ih.as_str()))
            .count() as i64;
        eprintln!(
            "scrape of {ih} over {tr}: seeders {:?} leechers {:?} completed {:?}",
            se[first], le[first], co[first]
        );
        assert_eq!(str_[first].as_deref(), Some(tr));
        assert_eq!(ans[first], Some(true));
        assert_eq!(
            (se[first], le[first], co[first]),
            (Some(1), Some(n_leechers), Some(0)),
            "{ih}"
        );
    }
    assert_eq!(
        (0..s.height())
            .filter(|&i| sih[i].as_deref() == Some(ih_c.as_str()) && str_[i].as_deref() != Some("dht"))
            .count(),
        0,
        "C has no tracker"
    );
    // BEP 33: our get_peers ask for the seed and downloader filters; the
    // libtorrent nodes holding C's announces answer with them. C's seeder
    // (seed1) announces as a seed, so some scrape of C counts a seed.
    let dht_rows: Vec<usize> = (0..s.height()).filter(|&i| str_[i].as_deref() == Some("dht")).collect();
    for &i in &dht_rows {
        eprintln!(
            "DHT scrape of {:?}: seeds ~{:?}, downloaders ~{:?}",
            sih[i].as_deref().map(|h| &h[..8]),
            se[i],
            le[i]
        );
    }
    assert!(
        dht_rows
            .iter()
            .any(|&i| sih[i].as_deref() == Some(ih_c.as_str()) && se[i] >= Some(1)),
        "no BEP 33 scrape of C counting its seeder"
    );
}
