//! Issue 4: HTTP and UDP trackers (announce, scrape, paired), returned peers
//! as a peer source, and the announce audit, over the public corpus, the
//! project's own captures (sample-pcaps/, opentracker swarms, and a client
//! cheating through a ratio proxy) and hand-built hostile captures.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use polars::prelude::*;

use crate::{bools, corpus, count_by, run, strs, table, tcp_frame, tshark, u64s, write_pcap, Run};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-pcaps")
}

fn f64s(df: &DataFrame, col: &str) -> Vec<Option<f64>> {
    df.column(col)
        .expect(col)
        .cast(&DataType::Float64)
        .expect("cast")
        .f64()
        .expect("f64")
        .iter()
        .collect()
}

fn lists(df: &DataFrame, col: &str) -> Vec<Vec<String>> {
    let l = df.column(col).expect(col).list().expect("list");
    (0..l.len())
        .map(|i| {
            l.get_as_series(i)
                .map(|s| {
                    s.str()
                        .expect("str list")
                        .iter()
                        .flatten()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Rows of `df` where `col` equals `v`.
fn rows_where(df: &DataFrame, col: &str, v: &str) -> DataFrame {
    let mask: BooleanChunked = strs(df, col).iter().map(|s| s.as_deref() == Some(v)).collect();
    df.filter(&mask).expect("filter")
}

fn tshark_count(file: &Path, filter: &str) -> u64 {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(file)
        .args(["-Y", filter])
        .output()
        .expect("tshark runs");
    String::from_utf8_lossy(&out.stdout).lines().count() as u64
}

/// `tshark_counts.csv` of the public corpus: file → http_announce.
fn corpus_http_announces(c: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(c.join("tshark_counts.csv")).expect("tshark_counts.csv");
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = head
        .iter()
        .position(|h| *h == "http_announce")
        .expect("http_announce column");
    let mut m = BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        if let (Some(name), Some(n)) = (f.first(), f.get(col).and_then(|n| n.parse::<u64>().ok())) {
            if n > 0 {
                m.insert(name.to_string(), n);
            }
        }
    }
    m
}

#[test]
fn corpus_every_http_announce_is_a_row_paired_with_its_response() {
    let Some(c) = corpus() else { return };
    let want = corpus_http_announces(&c);
    assert_eq!(want.values().sum::<u64>(), 19, "{want:?}");
    let mut total_peers = 0;
    for (file, n) in &want {
        let r = run(&[c.join(file)], &[]);
        let a = table(&r, "tracker_announces");
        let http = rows_where(&a, "transport", "http");
        assert_eq!(http.height() as u64, *n, "{file}: announces vs tshark");
        // Every one answered, with its latency.
        assert!(u64s(&http, "status").iter().all(|s| s.is_some()), "{file}");
        assert!(
            f64s(&http, "latency_ms").iter().all(|l| l.is_some_and(|l| l >= 0.0)),
            "{file}"
        );
        assert!(strs(&http, "info_hash")
            .iter()
            .all(|h| h.as_ref().is_some_and(|h| h.len() == 40)));
        let peers: u64 = u64s(&http, "n_peers_returned").into_iter().flatten().sum();
        let tp = rows_where(&table(&r, "tracker_peers"), "transport", "http");
        assert_eq!(
            tp.height() as u64,
            peers,
            "{file}: a tracker_peers row per returned peer"
        );
        total_peers += peers;
        let flows = table(&r, "flows");
        assert!(
            count_by(&flows, "app").get("tracker_http").copied().unwrap_or(0) >= 1,
            "{file}"
        );
        let anomalies = rows_where(&table(&r, "anomalies"), "layer", "tracker");
        assert_eq!(anomalies.height(), 0, "{file}: {:?}", count_by(&anomalies, "kind"));
        println!("{file}: {n} announces paired, {peers} peers returned");
    }
    assert!(total_peers > 0);
    // Details a notebook relies on: zeek's gzip answer and its Deluge client.
    let r = run(&[c.join("zeek__zeek/tracker.pcap")], &[]);
    let a = table(&r, "tracker_announces");
    assert_eq!(
        strs(&a, "info_hash"),
        [Some("e4be9e4db876e3e3179778b03e906297be5c8dbe".into())]
    );
    assert_eq!(strs(&a, "user_agent"), [Some("Deluge 1.3.15".into())]);
    assert_eq!(strs(&a, "event"), [Some("started".into())]);
    assert_eq!(u64s(&a, "port"), [Some(63448)]);
    assert_eq!(u64s(&a, "numwant"), [Some(200)]);
    assert_eq!(strs(&a, "path"), [Some("/announce".into())]);
    let n = u64s(&a, "n_peers_returned")[0].unwrap_or(0);
    assert!(n > 0);
    // Returned peers are a peer source: the 47 distinct addresses among the
    // 50 returned (trackers repeat peers), and the announcing client.
    let tp = table(&r, "tracker_peers");
    let distinct: std::collections::BTreeSet<(Option<String>, Option<u64>)> =
        strs(&tp, "peer_ip").into_iter().zip(u64s(&tp, "peer_port")).collect();
    assert_eq!((n, distinct.len()), (50, 47));
    let peers = table(&r, "peers");
    let tracker_sourced = lists(&peers, "sources")
        .iter()
        .filter(|s| s.iter().any(|x| x == "tracker"))
        .count();
    assert_eq!(tracker_sourced, 47 + 1);
    // All of it in one run, as a user pointing at the directory would: the
    // corpus' clients are honest, and a capture's start is its own (a
    // Deluge announce carrying upload without `started` minutes into
    // bt-http.pcapng is not "a capture that ran an interval before it").
    let r = run(std::slice::from_ref(&c), &[]);
    let au = table(&r, "announce_audit");
    assert_eq!(au.height(), 21);
    assert!(lists(&au, "flags").iter().all(|f| f.is_empty()), "{au}");
    // The 307 answer of nDPI's bt-http: status kept, no body fields.
    let r = run(&[c.join("ntop__nDPI/bt-http.pcapng")], &[]);
    let a = table(&r, "tracker_announces");
    assert_eq!(u64s(&a, "status"), [Some(307)]);
    assert_eq!(bools(&a, "requirecrypto"), [Some(true)]);
}

/// (file, connects-free expectation): announces, answered; scrape rows, answered.
const CORPUS_UDP: &[(&str, u64, u64, u64)] = &[
    ("ntop__nDPI/bittorrent_transmission.pcapng", 8, 8, 0),
    ("goncalo-rodrigues__360BitScoping/small_torrent.pcap", 5, 5, 2),
    ("terezaburianova__VUT-PDS/small.pcap", 8, 8, 0),
];

#[test]
fn corpus_udp_tracker_traffic_is_decoded_and_paired() {
    let Some(c) = corpus() else { return };
    let mut saw_port0 = false;
    for (file, announces, answered, scrapes) in CORPUS_UDP {
        let r = run(&[c.join(file)], &[]);
        let a = rows_where(&table(&r, "tracker_announces"), "transport", "udp");
        assert_eq!(a.height() as u64, *announces, "{file}");
        let got = u64s(&a, "interval").iter().filter(|i| i.is_some()).count() as u64;
        assert_eq!(got, *answered, "{file}: answered");
        assert!(
            strs(&a, "confidence").iter().all(|c| c.as_deref() == Some("certain")),
            "{file}"
        );
        let peers: u64 = u64s(&a, "n_peers_returned").into_iter().flatten().sum();
        let tp = rows_where(&table(&r, "tracker_peers"), "transport", "udp");
        assert_eq!(tp.height() as u64, peers, "{file}");
        let s = rows_where(&table(&r, "tracker_scrapes"), "transport", "udp");
        assert_eq!(s.height() as u64, *scrapes, "{file}");
        assert!(bools(&s, "answered").iter().all(|b| *b == Some(true)));
        assert!(u64s(&s, "seeders").iter().all(|x| x.is_some()));
        // qBittorrent (libtorrent) announces port 0 with a BEP 41 path.
        for (p, path) in u64s(&a, "port").iter().zip(strs(&a, "path")) {
            if *p == Some(0) {
                saw_port0 = true;
                assert_eq!(path.as_deref(), Some("/announce"), "{file}");
            }
        }
        let flows = table(&r, "flows");
        assert!(
            count_by(&flows, "app").get("tracker_udp").copied().unwrap_or(0) >= 1,
            "{file}"
        );
        println!("{file}: {announces} UDP announces, {answered} answered, {peers} peers, {scrapes} scrape rows");
    }
    assert!(saw_port0);
}

/// Announces in a sample capture, counted independently of swarmtap:
/// HTTP requests whose URI carries info_hash, and BEP 15 datagrams to the
/// tracker port with action 1 (announce) at offset 8.
const SAMPLE_ANNOUNCES: &[(&str, u64, u64)] = &[
    ("http", 30, 0),
    ("udp", 0, 26),
    ("mse", 24, 0),
    ("utp", 21, 0),
    ("midstream", 14, 0),
    ("lossy", 21, 0),
    ("two", 57, 0),
    ("cheat", 38, 0),
    ("suppressed", 31, 0),
];

fn sample_run(name: &str) -> Run {
    let d = samples();
    let mut torrents = vec![];
    for e in std::fs::read_dir(&d).expect("sample-pcaps").flatten() {
        let p = e.path();
        let f = p.file_name().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        if f.ends_with(".torrent") && (f == format!("{name}.torrent") || f.starts_with(&format!("{name}-"))) {
            torrents.push(p);
        }
    }
    run(&[d.join(format!("{name}.pcap"))], &torrents)
}

#[test]
fn sample_captures_every_announce_of_every_client_is_decoded() {
    let check_tshark = tshark();
    for (name, http, udp) in SAMPLE_ANNOUNCES {
        let pcap = samples().join(format!("{name}.pcap"));
        if check_tshark {
            let h = tshark_count(&pcap, "http.request.uri contains \"info_hash\"");
            let u = tshark_count(
                &pcap,
                "udp.dstport == 6969 && udp.length >= 106 && udp.payload[8:4] == 00:00:00:01",
            );
            assert_eq!((h, u), (*http, *udp), "{name}: tshark's count moved");
        }
        let r = sample_run(name);
        let a = table(&r, "tracker_announces");
        let by = count_by(&a, "transport");
        assert_eq!(by.get("http").copied().unwrap_or(0), *http, "{name}");
        assert_eq!(by.get("udp").copied().unwrap_or(0), *udp, "{name}");
        // Every announce was answered by opentracker.
        let answered = u64s(&a, "interval").iter().filter(|i| i.is_some()).count() as u64;
        assert_eq!(answered, http + udp, "{name}");
        assert!(strs(&a, "failure_reason").iter().all(|f| f.is_none()), "{name}");
        // Every client of the capture announced.
        let truth: serde_json_lite::Value = serde_json_lite::parse(
            &std::fs::read_to_string(samples().join(format!("{name}.truth.json"))).expect("truth"),
        );
        let clients: Vec<Option<String>> = strs(&a, "client_ip");
        for ip in truth.host_ips() {
            assert!(
                clients.iter().any(|c| c.as_deref() == Some(ip.as_str())),
                "{name}: {ip} never announced"
            );
        }
        println!(
            "{name}: {} announces, {} peers returned, {} scrape rows",
            a.height(),
            table(&r, "tracker_peers").height(),
            table(&r, "tracker_scrapes").height()
        );
    }
}

/// Tiny reader for the truth files: just the host addresses.
mod serde_json_lite {
    pub struct Value(String);

    pub fn parse(s: &str) -> Value {
        Value(s.to_string())
    }

    impl Value {
        /// `"ip": "10.99.0.N"` of every host except DHT-only nodes.
        pub fn host_ips(&self) -> Vec<String> {
            let hosts = self.0.split("\"hosts\": [").nth(1).unwrap_or_default();
            let hosts = hosts.split("\"network\":").next().unwrap_or_default();
            let mut out = Vec::new();
            for chunk in hosts.split("\"name\": ").skip(1) {
                if chunk.contains("\"client\": \"libtorrent-dht-node\"") {
                    continue;
                }
                if let Some(rest) = chunk.split("\"ip\": \"").nth(1) {
                    if let Some(ip) = rest.split('"').next() {
                        out.push(ip.to_string());
                    }
                }
            }
            out
        }
    }
}

#[test]
fn udp_sample_is_paired_and_counts_connects_and_scrapes() {
    let r = sample_run("udp");
    let a = table(&r, "tracker_announces");
    assert_eq!(a.height(), 26);
    let conf = count_by(&a, "confidence");
    assert_eq!(conf.get("certain").copied().unwrap_or(0), 26, "{conf:?}");
    let s = table(&r, "tracker_scrapes");
    assert_eq!(s.height(), 1);
    assert_eq!(
        strs(&s, "info_hash"),
        [Some("a0d09960345f9389a3db67c05b918c501a44734b".into())]
    );
    assert_eq!(bools(&s, "answered"), [Some(true)]);
    // The transmission leecher's announces carry its real UDP counters.
    let tr = rows_where(&a, "client_ip", "10.99.0.12");
    assert_eq!(strs(&tr, "event").last().cloned().flatten().as_deref(), Some("stopped"));
}

#[test]
fn the_audit_raises_no_flag_on_honest_clients() {
    for (name, _, _) in SAMPLE_ANNOUNCES {
        if *name == "cheat" {
            continue;
        }
        let r = sample_run(name);
        let au = table(&r, "announce_audit");
        assert!(au.height() >= 4, "{name}: {}", au.height());
        let flags = lists(&au, "flags");
        let ips = strs(&au, "client_ip");
        for (ip, f) in ips.iter().zip(&flags) {
            assert!(f.is_empty(), "{name}: {ip:?} flagged {f:?}\n{au}");
        }
        assert!(bools(&au, "suspicious").iter().all(|s| *s == Some(false)));
        println!("{name}: {au}");
    }
}

#[test]
fn the_audit_bounds_encrypted_clients_by_their_encrypted_bytes() {
    // mse.pcap: every peer-wire byte is RC4. No piece message is visible,
    // so each client's reported upload is compared with the payload its
    // address sent on encrypted connections (piece data plus protocol):
    // never below what it reported.
    let r = sample_run("mse");
    let au = table(&r, "announce_audit");
    let (ips, rep, obs, opaque) = (
        strs(&au, "client_ip"),
        u64s(&au, "reported_uploaded"),
        u64s(&au, "observed_uploaded"),
        u64s(&au, "opaque_sent_bytes"),
    );
    let mut bounded = 0;
    for i in 0..au.height() {
        assert_eq!(obs[i], Some(0), "{:?}: a piece message seen through RC4", ips[i]);
        let (r, o) = (rep[i].unwrap_or(0), opaque[i].unwrap_or(0));
        if r > 0 {
            assert!(o >= r, "{:?}: reported {r} above its encrypted bytes {o}", ips[i]);
            println!(
                "{:?}: reported {r}, encrypted bytes sent {o} (+{:.1} %)",
                ips[i],
                100.0 * (o - r) as f64 / r as f64
            );
            bounded += 1;
        }
    }
    assert!(bounded >= 4, "{bounded} series bounded");
}

#[test]
fn the_audit_flags_the_client_behind_a_ratio_proxy_and_no_one_else() {
    let r = sample_run("cheat");
    let au = table(&r, "announce_audit");
    println!("{au}");
    let ips = strs(&au, "client_ip");
    let flags = lists(&au, "flags");
    let rep = u64s(&au, "reported_uploaded");
    let obs = u64s(&au, "observed_uploaded");
    let mut cheater_rows = 0;
    for i in 0..au.height() {
        let ip = ips[i].clone().unwrap_or_default();
        if ip == "10.99.0.12" && rep[i].unwrap_or(0) > 0 {
            cheater_rows += 1;
            assert_eq!(flags[i], ["upload_above_wire"], "cheater");
            // Told 4 × what it sent: 2555904 reported for 638976 seen.
            assert_eq!(rep[i], Some(2_555_904));
            assert_eq!(obs[i], Some(638_976));
        } else {
            assert!(flags[i].is_empty(), "{ip} flagged {:?}", flags[i]);
        }
    }
    assert_eq!(cheater_rows, 1);
    let cov = strs(&au, "coverage");
    assert!(cov.iter().all(|c| c.as_deref() == Some("client")), "{cov:?}");
    // `swarmtap summary` says so too.
    let text = swarmtap::summary::render(&r.dir).expect("summary");
    assert!(text.contains("Announce audit (5 series, 1 flagged"), "{text}");
    assert!(text.contains("upload_above_wire"), "{text}");
}

// ---------- hostile tracker traffic, built here ----------

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const TRACKER: [u8; 4] = [10, 0, 0, 9];

/// A TCP connection from CLIENT:`port` to TRACKER:6969 carrying `req`
/// then `resp`, each cut into segments of at most 32 KiB.
fn http_exchange(port: u16, t0: i64, req: &[u8], resp: &[u8]) -> Vec<(i64, Vec<u8>)> {
    let c = (CLIENT, port);
    let t = (TRACKER, 6969);
    let mut out = vec![
        (t0, tcp_frame(c, t, 1000, 0, 0x02, &[])),
        (t0 + 100, tcp_frame(t, c, 5000, 1001, 0x12, &[])),
    ];
    let mut ts = t0 + 200;
    let (mut sc, mut st) = (1001u32, 5001u32);
    for seg in req.chunks(32 * 1024) {
        out.push((ts, tcp_frame(c, t, sc, st, 0x18, seg)));
        sc = sc.wrapping_add(seg.len() as u32);
        ts += 100;
    }
    for seg in resp.chunks(32 * 1024) {
        out.push((ts, tcp_frame(t, c, st, sc, 0x18, seg)));
        st = st.wrapping_add(seg.len() as u32);
        ts += 100;
    }
    out.push((ts, tcp_frame(c, t, sc, st, 0x11, &[])));
    out.push((ts + 100, tcp_frame(t, c, st, sc.wrapping_add(1), 0x11, &[])));
    out
}

fn udp_frame(src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = (28 + payload.len()) as u16;
    f.extend([0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend(src.0);
    f.extend(dst.0);
    f.extend(src.1.to_be_bytes());
    f.extend(dst.1.to_be_bytes());
    f.extend((8 + payload.len() as u16).to_be_bytes());
    f.extend([0, 0]);
    f.extend_from_slice(payload);
    f
}

fn announce(extra_header: &str) -> Vec<u8> {
    format!(
        "GET /announce?info_hash=%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42\
         &peer_id=-TR3000-aaaaaaaaaaaa&port=51413&uploaded=0&downloaded=0&left=100&event=started \
         HTTP/1.1\r\nHost: 10.0.0.9:6969\r\n{extra_header}\r\n"
    )
    .into_bytes()
}

fn answer(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!("HTTP/1.1 200 OK\r\n{headers}\r\n").into_bytes();
    v.extend_from_slice(body);
    v
}

fn with_length(body: &[u8]) -> Vec<u8> {
    answer(&format!("Content-Length: {}\r\n", body.len()), body)
}

#[test]
fn hostile_tracker_traffic_is_counted_bounded_and_not_fatal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut frames = Vec::new();
    let mut t = 1_000_000i64;
    let mut next = |req: Vec<u8>, resp: Vec<u8>, frames: &mut Vec<(i64, Vec<u8>)>| {
        let port = 40000 + (frames.len() % 20000) as u16;
        frames.extend(http_exchange(port, t, &req, &resp));
        t += 1_000_000;
    };
    // 1. A 40 KB header, then a well-formed announce on the same connection.
    let mut req = announce(&format!("X-Pad: {}\r\n", "a".repeat(40_000)));
    req.extend(announce(""));
    next(req, with_length(b"d8:intervali1800e5:peers0:e"), &mut frames);
    // 2. A 3 MB body (limit 1 MiB): skipped, framing kept.
    next(announce(""), with_length(&vec![b'x'; 3 << 20]), &mut frames);
    // 3. Broken chunk sizes.
    next(
        announce(""),
        answer(
            "Transfer-Encoding: chunked\r\n",
            b"zz\r\nd8:intervali1e5:peers0:e\r\n0\r\n\r\n",
        ),
        &mut frames,
    );
    // 4. A gzip bomb: 256 MB of zeros in ~250 KB.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        enc.write_all(&zeros).expect("gz");
    }
    let bomb = enc.finish().expect("gz");
    assert!(bomb.len() < 1 << 20);
    next(
        announce(""),
        answer(
            &format!("Content-Encoding: gzip\r\nContent-Length: {}\r\n", bomb.len()),
            &bomb,
        ),
        &mut frames,
    );
    // 5. A compact peers string of 13 bytes (two peers and a stray byte).
    next(
        announce(""),
        with_length(b"d8:intervali1800e5:peers13:\x0a\x00\x00\x02\x1a\xe1\x0a\x00\x00\x03\x1a\xe1Xe"),
        &mut frames,
    );
    // 6. Bencode nested 10^5 deep.
    let mut deep = b"d8:intervali1800e5:peers".to_vec();
    deep.extend(std::iter::repeat_n(b'l', 100_000));
    deep.extend(std::iter::repeat_n(b'e', 100_000));
    deep.push(b'e');
    next(announce(""), with_length(&deep), &mut frames);
    // 7. A close-delimited answer (no length): complete only at the end.
    next(
        announce(""),
        answer(
            "Connection: close\r\n",
            b"d8:intervali900e5:peers6:\x0a\x00\x00\x04\x1a\xe1e",
        ),
        &mut frames,
    );
    // 8. UDP: connect, announce, and an answer whose peer list is 13 bytes.
    let (c, tr) = ((CLIENT, 6881u16), (TRACKER, 6969u16));
    let mut conn = 0x0417_2710_1980u64.to_be_bytes().to_vec();
    conn.extend([0, 0, 0, 0, 0, 0, 0, 7]);
    let mut conn_resp = vec![0, 0, 0, 0, 0, 0, 0, 7];
    conn_resp.extend(0x1122_3344_5566_7788u64.to_be_bytes());
    let mut ann = 0x1122_3344_5566_7788u64.to_be_bytes().to_vec();
    ann.extend([0, 0, 0, 1, 0, 0, 0, 8]);
    ann.extend([0x42; 20]);
    ann.extend(*b"-qB4520-bbbbbbbbbbbb");
    ann.extend(0u64.to_be_bytes()); // downloaded
    ann.extend(100u64.to_be_bytes()); // left
    ann.extend(5000u64.to_be_bytes()); // uploaded
    ann.extend(2u32.to_be_bytes()); // started
    ann.extend([0; 4]); // ip
    ann.extend([1, 2, 3, 4]); // key
    ann.extend((-1i32).to_be_bytes());
    ann.extend(6881u16.to_be_bytes());
    let mut ann_resp = vec![0, 0, 0, 1, 0, 0, 0, 8];
    ann_resp.extend(1800u32.to_be_bytes());
    ann_resp.extend(1u32.to_be_bytes());
    ann_resp.extend(1u32.to_be_bytes());
    ann_resp.extend([10, 0, 0, 5, 0x1a, 0xe1, 10, 0, 0, 6, 0x1a, 0xe1, 0x99]);
    for (i, (src, dst, p)) in [(c, tr, conn), (tr, c, conn_resp), (c, tr, ann), (tr, c, ann_resp)]
        .into_iter()
        .enumerate()
    {
        frames.push((t + i as i64 * 1000, udp_frame(src, dst, &p)));
    }
    let p = tmp.path().join("hostile-tracker.pcap");
    write_pcap(&p, &frames);
    let r = run(&[p], &[]);

    let anomalies = rows_where(&table(&r, "anomalies"), "layer", "tracker");
    let kinds = count_by(&anomalies, "kind");
    for k in [
        "http_head_too_long",
        "http_body_too_long",
        "http_bad_chunk_size",
        "http_decompressed_too_long",
        "peers_len_not_multiple_of_6",
        "bencode_too_deep",
        "peers_len_not_multiple",
    ] {
        assert!(kinds.contains_key(k), "{k} missing: {kinds:?}");
    }
    let cs = table(&r, "capture_stats");
    assert!(u64s(&cs, "n_anomalies")[0].unwrap_or(0) >= 7);

    let a = table(&r, "tracker_announces");
    let by = count_by(&a, "transport");
    // The announce after the oversized head is read (framing recovered); 6
    // more HTTP announces, one UDP.
    assert_eq!(by.get("http"), Some(&7), "{a}");
    assert_eq!(by.get("udp"), Some(&1), "{a}");
    // Every HTTP announce got its status but the one whose chunked answer
    // lost its framing (a row without response); only the readable bodies
    // gave fields: the first (recovered) one, the odd peers string, the
    // close-delimited one.
    let http = rows_where(&a, "transport", "http");
    let mut status = u64s(&http, "status");
    status.sort_unstable();
    assert_eq!(
        status,
        [None, Some(200), Some(200), Some(200), Some(200), Some(200), Some(200)],
        "{http}"
    );
    let mut intervals: Vec<u64> = u64s(&http, "interval").into_iter().flatten().collect();
    intervals.sort_unstable();
    assert_eq!(intervals, [900, 1800, 1800]);
    let peers: Vec<u64> = u64s(&a, "n_peers_returned").into_iter().flatten().collect();
    assert_eq!(
        peers.iter().sum::<u64>(),
        5,
        "{peers:?}: 2 (odd peers string) + 1 (close-delimited) + 2 (UDP)"
    );
    let tp = table(&r, "tracker_peers");
    assert_eq!(tp.height(), 5);
    let flows = table(&r, "flows");
    assert_eq!(count_by(&flows, "app").get("tracker_http"), Some(&7));
    assert_eq!(count_by(&flows, "app").get("tracker_udp"), Some(&1));
}

#[test]
fn pipelined_requests_on_one_connection_pair_in_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut req = announce("");
    req.extend(b"GET /scrape?info_hash=%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42 HTTP/1.1\r\n\r\n");
    req.extend(announce(""));
    let mut resp = with_length(b"d8:intervali100e8:completei3e10:incompletei4e5:peers6:\x0a\x00\x00\x02\x1a\xe1e");
    resp.extend(with_length(
        b"d5:filesd20:BBBBBBBBBBBBBBBBBBBBd8:completei5e10:downloadedi50e10:incompletei10eeee",
    ));
    resp.extend(answer(
        "Transfer-Encoding: chunked\r\n",
        b"c\r\nd8:intervali\r\ne\r\n200e5:peers0:e\r\n0\r\n\r\n",
    ));
    let p = tmp.path().join("pipelined.pcap");
    write_pcap(&p, &http_exchange(40000, 1_000_000, &req, &resp));
    let r = run(&[p], &[]);
    let a = table(&r, "tracker_announces");
    assert_eq!(u64s(&a, "interval"), [Some(100), Some(200)]);
    assert_eq!(u64s(&a, "seeders"), [Some(3), None]);
    assert_eq!(u64s(&a, "leechers"), [Some(4), None]);
    assert_eq!(u64s(&a, "n_peers_returned"), [Some(1), Some(0)]);
    let s = table(&r, "tracker_scrapes");
    assert_eq!(strs(&s, "info_hash"), [Some("42".repeat(20))]);
    assert_eq!(u64s(&s, "seeders"), [Some(5)]);
    assert_eq!(u64s(&s, "completed"), [Some(50)]);
    assert_eq!(u64s(&s, "leechers"), [Some(10)]);
    // The announcing client and the returned peer are both peers of the torrent.
    let peers = table(&r, "peers");
    let mut addrs: Vec<(String, u64)> = strs(&peers, "peer_ip")
        .into_iter()
        .zip(u64s(&peers, "peer_port"))
        .map(|(a, p)| (a.unwrap_or_default(), p.unwrap_or(0)))
        .collect();
    addrs.sort();
    assert_eq!(addrs, [("10.0.0.1".to_string(), 51413), ("10.0.0.2".to_string(), 6881)]);
    assert!(lists(&peers, "sources").iter().all(|s| s == &["tracker"]));
}

#[test]
fn audit_flags_an_upload_claim_without_started_seen_by_a_long_capture() {
    // The capture runs for 2000 s before the client's first announce, which
    // already claims upload, with no `started` ever (interval 1800 s).
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut frames = vec![(1_000_000, udp_frame((CLIENT, 1), (TRACKER, 2), b"hello"))];
    let req = |up: u64| {
        format!(
            "GET /announce?info_hash=%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42%42\
             &peer_id=-TR3000-aaaaaaaaaaaa&port=51413&uploaded={up}&downloaded=0&left=0 HTTP/1.1\r\n\r\n"
        )
        .into_bytes()
    };
    let ok = with_length(b"d8:intervali1800e8:completei1e10:incompletei0e5:peers0:e");
    frames.extend(http_exchange(40001, 2_001_000_000, &req(1_000_000), &ok));
    frames.extend(http_exchange(40002, 3_801_000_000, &req(900_000), &ok));
    let p = tmp.path().join("liar.pcap");
    write_pcap(&p, &frames);
    let r = run(&[p], &[]);
    let au = table(&r, "announce_audit");
    assert_eq!(au.height(), 1);
    let mut f = lists(&au, "flags").remove(0);
    f.sort();
    assert_eq!(f, ["counters_backwards", "upload_without_started"]);
    assert_eq!(strs(&au, "coverage"), [Some("none".into())]);
}

fn udp6_frame(src: ([u16; 8], u16), dst: ([u16; 8], u16), payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
    let len = (8 + payload.len()) as u16;
    f.extend([0x60, 0, 0, 0]);
    f.extend(len.to_be_bytes());
    f.extend([17, 64]);
    for a in [src.0, dst.0] {
        for w in a {
            f.extend(w.to_be_bytes());
        }
    }
    f.extend(src.1.to_be_bytes());
    f.extend(dst.1.to_be_bytes());
    f.extend(len.to_be_bytes());
    f.extend([0, 0]);
    f.extend_from_slice(payload);
    f
}

fn udp_announce(cid: u64, tid: u32, uploaded: u64) -> Vec<u8> {
    let mut a = cid.to_be_bytes().to_vec();
    a.extend(1u32.to_be_bytes());
    a.extend(tid.to_be_bytes());
    a.extend([0x42; 20]);
    a.extend(*b"-lt0D80-cccccccccccc");
    a.extend(0u64.to_be_bytes()); // downloaded
    a.extend(0u64.to_be_bytes()); // left
    a.extend(uploaded.to_be_bytes());
    a.extend(0u32.to_be_bytes()); // event none
    a.extend([0; 4]);
    a.extend([9, 9, 9, 9]);
    a.extend((-1i32).to_be_bytes());
    a.extend(6890u16.to_be_bytes());
    a
}

fn udp_announce_answer(tid: u32, peers: &[u8]) -> Vec<u8> {
    let mut r = 1u32.to_be_bytes().to_vec();
    r.extend(tid.to_be_bytes());
    r.extend(1800u32.to_be_bytes());
    r.extend(2u32.to_be_bytes());
    r.extend(3u32.to_be_bytes());
    r.extend_from_slice(peers);
    r
}

#[test]
fn udp_tracker_over_ipv6_and_announces_without_their_connect() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let client = ([0xfd00, 0x99, 0, 0, 0, 0, 0, 0x12], 6890u16);
    let tracker = ([0xfd00, 0x99, 0, 0, 0, 0, 0, 1], 6969u16);
    // Over IPv6 the compact peers are 18 bytes each (BEP 15).
    let mut peers6 = Vec::new();
    for last in [0x13u8, 0x14] {
        peers6.extend([0xfd, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]);
        peers6.extend(6881u16.to_be_bytes());
    }
    let mut conn = 0x0417_2710_1980u64.to_be_bytes().to_vec();
    conn.extend([0, 0, 0, 0, 0, 0, 0, 1]);
    let mut conn_resp = vec![0, 0, 0, 0, 0, 0, 0, 1];
    conn_resp.extend(77u64.to_be_bytes());
    let mut frames = vec![
        (1_000_000, udp6_frame(client, tracker, &conn)),
        (1_001_000, udp6_frame(tracker, client, &conn_resp)),
        (1_002_000, udp6_frame(client, tracker, &udp_announce(77, 2, 0))),
        (1_003_000, udp6_frame(tracker, client, &udp_announce_answer(2, &peers6))),
    ];
    // IPv4, another client whose connect was not captured: its first
    // announce is plausible; once answered, its connection id is known and
    // the next one is certain. The third is never answered.
    let c4 = (CLIENT, 6891u16);
    let t4 = (TRACKER, 6969u16);
    frames.extend([
        (2_000_000, udp_frame(c4, t4, &udp_announce(99, 10, 100))),
        (
            2_001_000,
            udp_frame(t4, c4, &udp_announce_answer(10, &[10, 0, 0, 7, 0x1a, 0xe1])),
        ),
        (3_000_000, udp_frame(c4, t4, &udp_announce(99, 11, 200))),
        (3_001_000, udp_frame(t4, c4, &udp_announce_answer(11, &[]))),
        (4_000_000, udp_frame(c4, t4, &udp_announce(99, 12, 300))),
    ]);
    let p = tmp.path().join("udp6.pcap");
    write_pcap(&p, &frames);
    let r = run(&[p], &[]);
    let a = table(&r, "tracker_announces");
    assert_eq!(
        strs(&a, "client_ip"),
        [
            Some("fd00:99::12".into()),
            Some("10.0.0.1".into()),
            Some("10.0.0.1".into()),
            Some("10.0.0.1".into())
        ]
    );
    assert_eq!(
        strs(&a, "confidence"),
        [
            Some("certain".into()),
            Some("plausible".into()),
            Some("certain".into()),
            Some("certain".into())
        ]
    );
    assert_eq!(u64s(&a, "n_peers_returned"), [Some(2), Some(1), Some(0), None]);
    assert_eq!(u64s(&a, "n_peers6_returned"), [Some(2), Some(0), Some(0), None]);
    assert_eq!(u64s(&a, "uploaded"), [Some(0), Some(100), Some(200), Some(300)]);
    assert_eq!(strs(&a, "key"), vec![Some("09090909".to_string()); 4]);
    let lat = f64s(&a, "latency_ms");
    assert_eq!(lat, [Some(1.0), Some(1.0), Some(1.0), None]);
    let tp = table(&r, "tracker_peers");
    assert_eq!(
        strs(&tp, "peer_ip"),
        [
            Some("fd00:99::13".into()),
            Some("fd00:99::14".into()),
            Some("10.0.0.7".into())
        ]
    );
    assert_eq!(
        strs(&tp, "format"),
        [Some("compact6".into()), Some("compact6".into()), Some("compact".into())]
    );
    let flows = table(&r, "flows");
    assert_eq!(count_by(&flows, "app").get("tracker_udp"), Some(&2));
}

type SeriesKey = ([Option<String>; 5], Option<u64>);

/// The http sample's announce series (torrent, client address, peer id,
/// tracker, transport) in the order of their first announce, and the
/// announces of each, from its tracker_announces table.
fn http_series() -> ([PathBuf; 1], [PathBuf; 1], Vec<SeriesKey>, BTreeMap<SeriesKey, u64>) {
    let d = samples();
    let input = [d.join("http.pcap")];
    let torrents = [d.join("http.torrent")];
    let base = run(&input, &torrents);
    let ann = table(&base, "tracker_announces");
    let frame = u64s(&ann, "frame");
    let cols = ["info_hash", "client_ip", "peer_id", "tracker_ip", "transport"].map(|c| strs(&ann, c));
    let tracker_port = u64s(&ann, "tracker_port");
    let mut rows: Vec<usize> = (0..ann.height()).filter(|&i| cols[0][i].is_some()).collect();
    rows.sort_by_key(|&i| frame[i]);
    let mut order = Vec::new();
    let mut announces: BTreeMap<SeriesKey, u64> = BTreeMap::new();
    for i in rows {
        let key = (cols.each_ref().map(|c| c[i].clone()), tracker_port[i]);
        if !announces.contains_key(&key) {
            order.push(key.clone());
        }
        *announces.entry(key).or_default() += 1;
    }
    // The truth file's five clients, one tracker, one torrent.
    assert_eq!(order.len(), 5, "series in http.pcap");
    assert_eq!(table(&base, "announce_audit").height(), 5);
    (input, torrents, order, announces)
}

/// The details of the anomalies of `kind`.
fn anomaly_details(r: &Run, kind: &str) -> Vec<String> {
    let a = table(r, "anomalies");
    strs(&a, "kind")
        .into_iter()
        .zip(strs(&a, "detail"))
        .filter(|(k, _)| k.as_deref() == Some(kind))
        .map(|(_, d)| d.unwrap_or_default())
        .collect()
}

/// `max_audit_series` at its bound, on the http sample: with room for
/// exactly the announce series its clients form, every series is audited
/// and nothing is counted; with room for one less, the series whose first
/// announce came last is not audited, and each of its announces is counted
/// in one `audit_series_full` anomaly.
#[test]
fn audit_series_past_max_audit_series_are_counted_not_audited() {
    let (input, torrents, order, announces) = http_series();
    let n = order.len();
    let last = announces[&order[n - 1]];
    for (room, dropped) in [(n, 0), (n - 1, last)] {
        let mut settings = swarmtap::config::Settings::default();
        settings.limits.max_audit_series = room;
        let r = crate::run_with(&input, &torrents, settings, None);
        assert_eq!(table(&r, "announce_audit").height(), room, "room for {room}");
        let want: Vec<String> = (dropped > 0)
            .then(|| format!("{dropped} announces of series not audited (max_audit_series)"))
            .into_iter()
            .collect();
        assert_eq!(
            anomaly_details(&r, "audit_series_full"),
            want,
            "room for {room} of {n} series"
        );
    }
}

/// `max_audit_announces` at its bound, on the http sample: with room for
/// the longest series' announces nothing is replaced; with room for one
/// less, every announce past the room is counted, series by series, in one
/// `audit_announces_merged` anomaly, and the series keep their count of
/// announces at the room.
#[test]
fn audit_announces_past_max_audit_announces_are_counted() {
    let (input, torrents, _, announces) = http_series();
    let longest = announces.values().copied().max().unwrap_or(0);
    assert!(longest >= 3, "the longest series has {longest} announces");
    for room in [longest, longest - 1] {
        let merged: u64 = announces.values().map(|&a| a.saturating_sub(room)).sum();
        let mut settings = swarmtap::config::Settings::default();
        settings.limits.max_audit_announces = room as usize;
        let r = crate::run_with(&input, &torrents, settings, None);
        let au = table(&r, "announce_audit");
        let mut kept = u64s(&au, "n_announces");
        kept.sort();
        let mut want_kept: Vec<Option<u64>> = announces.values().map(|&a| Some(a.min(room))).collect();
        want_kept.sort();
        assert_eq!(kept, want_kept, "room for {room}");
        let want: Vec<String> = (merged > 0)
            .then(|| format!("{merged} announces replaced by later ones (max_audit_announces)"))
            .into_iter()
            .collect();
        assert_eq!(
            anomaly_details(&r, "audit_announces_merged"),
            want,
            "room for {room} of {longest} announces"
        );
    }
}

// ---------- peers named by trackers only (tests/MUTANTS.md, session 12) ----------

/// An announce of `ih` from CLIENT (its listen port 51413).
fn announce_of(ih: &[u8; 20]) -> Vec<u8> {
    let escaped: String = ih.iter().map(|b| format!("%{b:02x}")).collect();
    format!(
        "GET /announce?info_hash={escaped}&peer_id=-TR3000-aaaaaaaaaaaa&port=51413\
         &uploaded=0&downloaded=0&left=100&event=started HTTP/1.1\r\nHost: 10.0.0.9:6969\r\n\r\n"
    )
    .into_bytes()
}

/// A tracker answer naming `peers` (compact IPv4 form).
fn answer_naming(peers: &[([u8; 4], u16)]) -> Vec<u8> {
    let mut compact = Vec::new();
    for (ip, port) in peers {
        compact.extend(ip);
        compact.extend(port.to_be_bytes());
    }
    let mut body = format!("d8:intervali1800e5:peers{}:", compact.len()).into_bytes();
    body.extend(compact);
    body.push(b'e');
    with_length(&body)
}

/// `n` bytes of xorshift64 output: what an MSE key exchange looks like.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A TCP connection from `o` to `r` that opens with an MSE key exchange's
/// shape both ways (200 then 300 random bytes), then closes.
fn mse_connection(o: ([u8; 4], u16), r: ([u8; 4], u16), t0: i64, seed: u64) -> Vec<(i64, Vec<u8>)> {
    let (a, b) = (random_bytes(seed, 200), random_bytes(seed + 1, 300));
    vec![
        (t0, tcp_frame(o, r, 100, 0, 0x02, &[])),
        (t0 + 100, tcp_frame(r, o, 900, 101, 0x12, &[])),
        (t0 + 200, tcp_frame(o, r, 101, 901, 0x18, &a)),
        (t0 + 300, tcp_frame(r, o, 901, 301, 0x18, &b)),
        (t0 + 400, tcp_frame(o, r, 301, 1201, 0x11, &[])),
        (t0 + 500, tcp_frame(r, o, 1201, 302, 0x11, &[])),
    ]
}

/// MUTANTS.md session 11, stage.rs:640 (`attribute_encrypted`, the match
/// guard `x != y` made `true`): an encrypted connection neither of whose
/// endpoints is a known listen endpoint is tied to a torrent by address
/// when both ends' addresses take part in that torrent only, and to none
/// when they take part in two different torrents. One tracker answer
/// names .2 and .3 under torrent 42…, another names .4 under 43…; the
/// connections go .2 -> .3 and .2 -> .4, at ports no tracker named.
#[test]
fn encrypted_connection_between_two_addresses_of_one_torrent_is_attributed_by_address() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (t1, t2) = ([0x42u8; 20], [0x43u8; 20]);
    let mut frames = http_exchange(
        40000,
        1_000_000,
        &announce_of(&t1),
        &answer_naming(&[([10, 0, 0, 2], 6881), ([10, 0, 0, 3], 6881)]),
    );
    frames.extend(http_exchange(
        40001,
        2_000_000,
        &announce_of(&t2),
        &answer_naming(&[([10, 0, 0, 4], 6881)]),
    ));
    frames.extend(mse_connection(
        ([10, 0, 0, 2], 50000),
        ([10, 0, 0, 3], 7000),
        3_000_000,
        7,
    ));
    frames.extend(mse_connection(
        ([10, 0, 0, 2], 50001),
        ([10, 0, 0, 4], 7000),
        4_000_000,
        11,
    ));
    let pcap = tmp.path().join("mse-by-address.pcap");
    write_pcap(&pcap, &frames);

    // By default an MSE shape tied by address only is weak: no row.
    let r = run(std::slice::from_ref(&pcap), &[]);
    assert_eq!(table(&r, "connections").height(), 0);
    let flows = table(&r, "flows");
    let (app, conf) = (strs(&flows, "app"), strs(&flows, "app_confidence"));
    let mse: Vec<(Option<String>, Option<String>)> = (0..flows.height())
        .filter(|&i| app[i].as_deref() == Some("mse"))
        .map(|i| (app[i].clone(), conf[i].clone()))
        .collect();
    assert_eq!(mse, vec![(Some("mse".into()), Some("weak".into())); 2]);

    let kept = crate::run_with(
        &[pcap],
        &[],
        swarmtap::config::Settings {
            keep_weak: true,
            ..Default::default()
        },
        None,
    );
    let conns = table(&kept, "connections");
    let cols = ["resp_ip", "info_hash", "info_hash_source", "attribution_confidence"].map(|c| strs(&conns, c));
    let rows: Vec<[Option<String>; 4]> = (0..conns.height())
        .map(|i| cols.each_ref().map(|c| c[i].clone()))
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        vec![
            [s("10.0.0.3"), s(&"42".repeat(20)), s("address"), s("weak")],
            [s("10.0.0.4"), None, None, s("none")],
        ]
    );
    assert_eq!(bools(&conns, "encrypted"), vec![Some(true); 2]);
}

/// MUTANTS.md session 11, swarm.rs:1287 (`merge_hybrid_hashes`, `&` made
/// `|`): a hybrid torrent's peer known under one hash from a tracker
/// only joins the same endpoint under the other hash only when the wire
/// showed it there. Here a tracker names 10.0.0.5:6881 under both hashes
/// of two-hybrid.torrent (v1, and v2 truncated) and nobody connects to
/// it: two peers rows, one per hash, each from the tracker alone.
#[test]
fn hybrid_peer_named_under_both_hashes_by_trackers_only_stays_two_rows() {
    let torrent = samples().join("two-hybrid.torrent");
    let meta =
        swarmtap::proto::metainfo::parse_torrent(&std::fs::read(&torrent).expect("read torrent")).expect("torrent");
    let hashes = meta.wire_hashes();
    assert_eq!(hashes.len(), 2, "two-hybrid.torrent is v1 + v2");
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = ([10, 0, 0, 5], 6881);
    let mut frames = http_exchange(40000, 1_000_000, &announce_of(&hashes[0]), &answer_naming(&[p]));
    frames.extend(http_exchange(
        40001,
        2_000_000,
        &announce_of(&hashes[1]),
        &answer_naming(&[p]),
    ));
    let pcap = tmp.path().join("hybrid-tracker-only.pcap");
    write_pcap(&pcap, &frames);
    let r = run(&[pcap], &[torrent]);
    let peers = table(&r, "peers");
    let cols = ["info_hash", "peer_ip"].map(|c| strs(&peers, c));
    let ports = u64s(&peers, "peer_port");
    let sources = lists(&peers, "sources");
    let mut rows: Vec<(String, String, u64, Vec<String>)> = (0..peers.height())
        .map(|i| {
            (
                cols[0][i].clone().unwrap_or_default(),
                cols[1][i].clone().unwrap_or_default(),
                ports[i].unwrap_or_default(),
                sources[i].clone(),
            )
        })
        .collect();
    rows.sort();
    let hex = |h: &[u8; 20]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut want = Vec::new();
    for h in &hashes {
        want.push((hex(h), "10.0.0.1".to_string(), 51413, vec!["tracker".to_string()]));
        want.push((hex(h), "10.0.0.5".to_string(), 6881, vec!["tracker".to_string()]));
    }
    want.sort();
    assert_eq!(rows, want);
}
