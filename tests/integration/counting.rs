//! Byte and piece counting against answers known without swarmtap: the
//! sample captures' independent wire reassembly (`wire_reference` in
//! sample-pcaps/*.truth.json, made by sample-pcaps/generate/annotate.py),
//! captures built here whose answer is known by construction, and corpus
//! captures whose answer was derived by hand from the bytes on the wire.
//! Every comparison is exact, in both directions of every connection.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{bools, corpus, count_by, run, strs, sum, table, tcp_frame, u64s, write_pcap};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-pcaps")
}

fn truth(name: &str) -> Value {
    let p = samples().join(format!("{name}.truth.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn analyze(name: &str) -> super::Run {
    let t = truth(name);
    let torrents: Vec<PathBuf> = t["torrents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["torrent_file"].as_str())
        .map(|f| samples().join(f))
        .collect();
    run(&[samples().join(format!("{name}.pcap"))], &torrents)
}

/// (transport, orig ip, orig port, resp ip, resp port)
type ConnKey = (String, String, u64, String, u64);

/// One direction of a reference connection: piece bytes (complete messages
/// plus a block cut off at the end of the stream).
fn ref_piece_bytes(side: &Value) -> u64 {
    side["piece_bytes"].as_u64().unwrap_or(0) + side["partial_piece_bytes"].as_u64().unwrap_or(0)
}

/// Every sample capture with plaintext peer-wire connections (mse.pcap has
/// none: all 19 are encrypted).
const WIRE_SAMPLES: [&str; 9] = [
    "http",
    "udp",
    "utp",
    "magnet",
    "lossy",
    "two",
    "ipv6",
    "cheat",
    "midstream",
];

/// `connections.piece_bytes_orig/resp` of every plaintext connection equal
/// the reference's reassembly of that connection, each direction on its
/// own. A connection the reference counts as encrypted is either encrypted
/// for us too, or an MSE exchange that selected plaintext (the reference
/// does not decode MSE streams; we do): those are listed and excluded.
///
/// Also per connection and direction, on every connection (encrypted ones
/// too): `payload_bytes_*` equal the reference's reassembled stream bytes
/// and `gap_bytes` its bytes never captured; and on every plaintext one
/// `n_msgs_*` equal the messages the reference walked, plus the piece
/// message cut off at the end of a stream when there is one (we count its
/// header; the reference lists it apart as partial_piece_bytes).
#[test]
fn connection_bytes_and_messages_equal_the_wire_reference_both_directions() {
    let mut n_compared = 0;
    let mut n_half = 0;
    let mut bytes_compared = 0u64;
    let (mut n_stream_compared, mut stream_bytes_compared, mut msgs_compared) = (0, 0u64, 0u64);
    for name in WIRE_SAMPLES {
        let t = truth(name);
        let r = analyze(name);
        let c = table(&r, "connections");
        let (tr, oi, op, ri, rp) = (
            strs(&c, "transport"),
            strs(&c, "orig_ip"),
            u64s(&c, "orig_port"),
            strs(&c, "resp_ip"),
            u64s(&c, "resp_port"),
        );
        let (po, pr) = (u64s(&c, "piece_bytes_orig"), u64s(&c, "piece_bytes_resp"));
        let (pay_o, pay_r) = (u64s(&c, "payload_bytes_orig"), u64s(&c, "payload_bytes_resp"));
        let (msgs_o, msgs_r) = (u64s(&c, "n_msgs_orig"), u64s(&c, "n_msgs_resp"));
        let gap = u64s(&c, "gap_bytes");
        let unframed = u64s(&c, "unframed_bytes");
        let (enc, mse) = (bools(&c, "encrypted"), bools(&c, "mse_handshake"));
        let mut ours: BTreeMap<ConnKey, usize> = BTreeMap::new();
        for i in 0..c.height() {
            let k = (
                tr[i].clone().unwrap_or_default(),
                oi[i].clone().unwrap_or_default(),
                op[i].unwrap_or(0),
                ri[i].clone().unwrap_or_default(),
                rp[i].unwrap_or(0),
            );
            assert!(ours.insert(k.clone(), i).is_none(), "{name}: two connections {k:?}");
        }
        let mut matched = BTreeSet::new();
        let refs = t["wire_reference"]["connections"].as_array().expect("connections");
        for w in refs {
            let k: ConnKey = (
                w["transport"].as_str().unwrap_or_default().to_string(),
                w["orig_ip"].as_str().unwrap_or_default().to_string(),
                w["orig_port"].as_u64().unwrap_or(0),
                w["resp_ip"].as_str().unwrap_or_default().to_string(),
                w["resp_port"].as_u64().unwrap_or(0),
            );
            let Some(&i) = ours.get(&k) else {
                panic!("{name}: reference connection {k:?} is not in connections");
            };
            matched.insert(i);
            let stream = |d: &Value| d["payload_bytes"].as_u64().expect("payload_bytes");
            let lost = |d: &Value| d["gap_bytes"].as_u64().expect("gap_bytes");
            assert_eq!(
                (pay_o[i], pay_r[i], gap[i]),
                (
                    Some(stream(&w["orig"])),
                    Some(stream(&w["resp"])),
                    Some(lost(&w["orig"]) + lost(&w["resp"]))
                ),
                "{name} {k:?}: payload bytes (orig, resp) and gap bytes vs the wire reference"
            );
            n_stream_compared += 1;
            stream_bytes_compared += stream(&w["orig"]) + stream(&w["resp"]);
            if w["encrypted"].as_bool() == Some(true) {
                if enc[i] == Some(true) || mse[i] == Some(true) {
                    continue;
                }
                // The reference calls a connection encrypted when one side
                // did not start with a handshake: a plaintext handshake
                // answered by silence, or aria2's MSE offer answered by
                // ctorrent's plaintext handshake (midstream.pcap). The side
                // it could not read counts 0 there, and must here too: no
                // framed piece can hide in it.
                n_half += 1;
            }
            assert_eq!(enc[i], Some(false), "{name} {k:?}");
            let (want_o, want_r) = (ref_piece_bytes(&w["orig"]), ref_piece_bytes(&w["resp"]));
            assert_eq!(
                (po[i], pr[i]),
                (Some(want_o), Some(want_r)),
                "{name} {k:?}: piece bytes (orig, resp) vs the wire reference"
            );
            // Mid-stream pickups: the bytes skipped before the first message
            // boundary (the reference's resync_skipped_bytes).
            // (Not on a side the reference could not read: there we hunt
            // through what it left undecoded.)
            let skipped = |d: &Value| d["resync_skipped_bytes"].as_u64().unwrap_or(0);
            let readable = w["encrypted"].as_bool() != Some(true);
            assert!(
                !readable || unframed[i] == Some(skipped(&w["orig"]) + skipped(&w["resp"])),
                "{name} {k:?}: unframed bytes {:?} vs the reference's skipped bytes",
                unframed[i]
            );
            let walked = |d: &Value| -> u64 {
                let msgs = d["msgs"].as_object().expect("msgs");
                msgs.values().map(|n| n.as_u64().expect("count")).sum::<u64>()
                    + u64::from(d.get("partial_piece_bytes").is_some())
            };
            if readable {
                assert_eq!(
                    (msgs_o[i], msgs_r[i]),
                    (Some(walked(&w["orig"])), Some(walked(&w["resp"]))),
                    "{name} {k:?}: messages (orig, resp) vs the wire reference"
                );
                msgs_compared += walked(&w["orig"]) + walked(&w["resp"]);
            }
            n_compared += 1;
            bytes_compared += want_o + want_r;
        }
        // No connection of ours that the reference does not have: every
        // piece byte we count is on one of the reference's connections.
        let extra: Vec<_> = ours
            .iter()
            .filter(|(_, i)| !matched.contains(*i))
            .map(|(k, _)| k)
            .collect();
        assert!(extra.is_empty(), "{name}: connections the reference lacks: {extra:?}");
    }
    // 9 captures: 120 plaintext connections and 7 with one unreadable
    // side, 30.4 MB of piece payload (the truth files' sums).
    assert_eq!((n_compared, n_half), (127, 7), "connections compared");
    assert_eq!(bytes_compared, 30_353_416, "piece bytes compared");
    // Every connection of the 9 captures: 120 plaintext, 7 half, 46
    // encrypted, 4 MSE exchanges that selected plaintext.
    assert_eq!(n_stream_compared, 177, "connections compared");
    assert_eq!(stream_bytes_compared, 31_362_016, "stream bytes compared");
    assert_eq!(msgs_compared, 8_260, "messages compared");
}

// ---------- an MSE exchange longer than the scan window ----------

/// tests/captures/mse-long-head.pcap (made by
/// sample-pcaps/generate/mse_long_head.py): four MSE exchanges that
/// selected plaintext, where the originator sends 5,578 bytes (its key
/// exchange, then pipelined plaintext requests) before the responder's
/// plaintext handshake: more than the 2 KiB the MSE scan keeps. Two over
/// TCP, two over uTP; in one of each a 1,000-byte packet of the
/// originator's, past the scan window, was never captured. A fifth, over
/// uTP, stays encrypted (3,420 and 2,396 bytes): its row is the MSE scan's
/// own count. A sixth, over uTP, loses a 500-byte packet inside the scan
/// window (1,920 bytes before the handshake): 500 gap bytes.
///
/// Per connection and direction, `payload_bytes_*` and `gap_bytes` equal
/// the construction (what was sent and what the capture missed) and, on
/// the streams without a hole, the independent reassembly
/// (`wire_reference`); the responder's plaintext after its handshake is
/// decoded: 65,536 piece bytes in 7 messages. (The bytes the scan passed
/// over were once neither payload nor, over TCP, lost; over uTP they were
/// counted as lost.)
#[test]
fn mse_exchange_longer_than_the_scan_window_is_counted_exactly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures");
    let text = std::fs::read_to_string(dir.join("mse-long-head.truth.json")).expect("truth");
    let t: Value = serde_json::from_str(&text).expect("truth json");
    let r = run(&[dir.join("mse-long-head.pcap")], &[]);
    let c = table(&r, "connections");
    let (tr, op) = (strs(&c, "transport"), u64s(&c, "orig_port"));
    let (pay_o, pay_r, gap) = (
        u64s(&c, "payload_bytes_orig"),
        u64s(&c, "payload_bytes_resp"),
        u64s(&c, "gap_bytes"),
    );
    let (po, pr) = (u64s(&c, "piece_bytes_orig"), u64s(&c, "piece_bytes_resp"));
    let msgs_r = u64s(&c, "n_msgs_resp");
    let (enc, mse) = (bools(&c, "encrypted"), bools(&c, "mse_handshake"));
    let built = t["construction"].as_array().expect("construction");
    assert_eq!((c.height(), built.len()), (6, 6), "connections");
    let wire = t["wire_reference"]["connections"].as_array().expect("wire_reference");
    let n = |v: &Value| v.as_u64().expect("number");
    let mut from_wire = 0;
    for b in built {
        let key = (b["transport"].as_str().expect("transport"), n(&b["orig_port"]));
        let i = (0..c.height())
            .find(|&i| tr[i].as_deref() == Some(key.0) && op[i] == Some(key.1))
            .unwrap_or_else(|| panic!("{key:?} is not in connections"));
        let want = (
            Some(n(&b["orig"]["payload_bytes"])),
            Some(n(&b["resp"]["payload_bytes"])),
            Some(n(&b["orig"]["gap_bytes"]) + n(&b["resp"]["gap_bytes"])),
        );
        assert_eq!(
            (pay_o[i], pay_r[i], gap[i]),
            want,
            "{key:?}: payload (orig, resp), gap vs the construction"
        );
        // More than the scan window before the responder's handshake.
        let plain = b["stays_encrypted"].as_bool() == Some(false);
        // (But on 50006, a gap inside the window: 1,920 bytes.)
        let inside = b["gap_inside_window"].as_bool() == Some(true);
        assert!(
            !plain || inside || n(&b["orig"]["bytes_before_resp_handshake"]) > 2048,
            "{key:?}"
        );
        if b["lost_orig_packet"].as_bool() == Some(false) {
            let w = wire
                .iter()
                .find(|w| w["transport"].as_str() == Some(key.0) && w["orig_port"].as_u64() == Some(key.1))
                .expect("reference connection");
            assert_eq!(
                (pay_o[i], pay_r[i], gap[i]),
                (
                    Some(n(&w["orig"]["payload_bytes"])),
                    Some(n(&w["resp"]["payload_bytes"])),
                    Some(n(&w["orig"]["gap_bytes"]) + n(&w["resp"]["gap_bytes"]))
                ),
                "{key:?}: payload (orig, resp), gap vs the wire reference"
            );
            from_wire += 1;
        }
        if !plain {
            // The MSE scan's own count (uTP: the transport gives none).
            assert_eq!((enc[i], mse[i], pr[i]), (Some(true), Some(true), Some(0)), "{key:?}");
            continue;
        }
        let sent: u64 = b["resp"]["msgs"].as_object().expect("msgs").values().map(n).sum();
        assert_eq!(
            (po[i], pr[i], msgs_r[i], enc[i], mse[i]),
            (
                Some(0),
                Some(n(&b["resp"]["piece_bytes"])),
                Some(sent),
                Some(false),
                Some(true)
            ),
            "{key:?}: piece bytes (orig, resp), responder's messages, encrypted, mse_handshake"
        );
    }
    assert_eq!(from_wire, 3, "connections compared with the wire reference");
    // A hole inside what the scan passed over changes no framing: each
    // lossy connection frames the originator's stream like its lossless
    // twin (the framer resumes after unkept + lost bytes either way).
    let unframed = u64s(&c, "unframed_bytes");
    let msgs_o = u64s(&c, "n_msgs_orig");
    let at = |tr_: &str, port: u64| {
        (0..c.height())
            .find(|&i| tr[i].as_deref() == Some(tr_) && op[i] == Some(port))
            .map(|i| (unframed[i], msgs_o[i]))
    };
    assert_eq!(
        at("tcp", 50001),
        at("tcp", 50002),
        "unframed bytes, messages: tcp twins"
    );
    assert_eq!(
        at("utp", 50003),
        at("utp", 50004),
        "unframed bytes, messages: utp twins"
    );
    assert_eq!(
        at("tcp", 50001),
        at("utp", 50003),
        "unframed bytes, messages: tcp vs utp"
    );
    // The figures themselves (a regenerated capture must not move them).
    assert_eq!(
        (
            sum(&c, "payload_bytes_orig"),
            sum(&c, "payload_bytes_resp"),
            sum(&c, "gap_bytes")
        ),
        (
            2 * 5_578 + 2 * 4_578 + 3_420 + 1_443,
            5 * 66_160 + 2_396,
            2 * 1_000 + 500
        )
    );
    assert_eq!(sum(&c, "piece_bytes_resp"), 5 * 65_536);
    // A uTP flow is certain where one of its connections carried a
    // plaintext handshake (after the MSE exchange), strong where the
    // exchange stayed encrypted (50005).
    let f = table(&r, "flows");
    let (proto, fport, conf) = (strs(&f, "proto"), u64s(&f, "orig_port"), strs(&f, "app_confidence"));
    let mut utp: Vec<(u64, String)> = (0..f.height())
        .filter(|&i| proto[i].as_deref() == Some("udp"))
        .map(|i| (fport[i].unwrap_or(0), conf[i].clone().unwrap_or_default()))
        .collect();
    utp.sort();
    let want = [
        (50003, "certain"),
        (50004, "certain"),
        (50005, "strong"),
        (50006, "certain"),
    ];
    assert_eq!(
        utp,
        want.map(|(p, c)| (p, c.to_string())),
        "uTP flows: orig_port, app_confidence"
    );
}

/// Two captures in one run, each with uTP connections (and the MSE
/// capture with TCP ones): every connection's `conn_id` is `(capture index
/// << 40) | frame` (docs/SCHEMA.md), so the connections of one capture
/// share its index and the two captures' differ.
#[test]
fn connection_ids_carry_their_capture_index_over_utp_as_over_tcp() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures");
    let r = run(&[dir.join("mse-long-head.pcap"), samples().join("utp.pcap")], &[]);
    let c = table(&r, "connections");
    let (cap, tr, id) = (strs(&c, "capture"), strs(&c, "transport"), u64s(&c, "conn_id"));
    let mut by_capture: std::collections::BTreeMap<String, std::collections::BTreeSet<u64>> = Default::default();
    let mut utp = 0;
    for i in 0..c.height() {
        utp += usize::from(tr[i].as_deref() == Some("utp"));
        let high = id[i].expect("conn_id") >> 40;
        by_capture
            .entry(cap[i].clone().unwrap_or_default())
            .or_default()
            .insert(high);
    }
    assert!(utp >= 6, "uTP connections in both captures: {utp}");
    let highs: Vec<Vec<u64>> = by_capture.values().map(|h| h.iter().copied().collect()).collect();
    assert_eq!(by_capture.len(), 2, "{by_capture:?}");
    assert!(
        highs.iter().all(|h| h.len() == 1),
        "one index per capture: {by_capture:?}"
    );
    let mut all: Vec<u64> = highs.concat();
    all.sort_unstable();
    assert_eq!(all, [0, 1], "{by_capture:?}");
}

// ---------- a capture gap inside a piece payload ----------

const A: ([u8; 4], u16) = ([10, 0, 0, 1], 40000);
const B: ([u8; 4], u16) = ([10, 0, 0, 2], 6881);

fn handshake(ih: [u8; 20], pid: &[u8; 20]) -> Vec<u8> {
    let mut v = b"\x13BitTorrent protocol".to_vec();
    v.extend([0u8; 8]);
    v.extend(ih);
    v.extend(pid);
    v
}

fn msg(id: u8, body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32 + 1).to_be_bytes().to_vec();
    v.push(id);
    v.extend_from_slice(body);
    v
}

fn piece(index: u32, begin: u32, len: usize) -> Vec<u8> {
    let mut body = index.to_be_bytes().to_vec();
    body.extend(begin.to_be_bytes());
    body.extend((0..len).map(|i| (i * 7 + index as usize) as u8));
    msg(7, &body)
}

/// A connection A → B whose stream from B is cut into 1,400-byte segments,
/// of which those whose stream offset (from B's first payload byte) is in
/// `dropped` are left out of the capture. A acknowledges all of B's stream
/// (so the holes are known to be lost, not late), then both close.
fn gapped_connection(a_stream: &[u8], b_stream: &[u8], dropped: &[usize]) -> Vec<(i64, Vec<u8>)> {
    let (isn_a, isn_b) = (1000u32, 5000u32);
    let mut ts = 1_000_000i64;
    let mut next = || {
        ts += 1000;
        ts
    };
    let mut out = vec![
        (next(), tcp_frame(A, B, isn_a, 0, 0x02, &[])),
        (next(), tcp_frame(B, A, isn_b, isn_a + 1, 0x12, &[])),
    ];
    let (sa, sb) = (isn_a + 1, isn_b + 1);
    let end_a = sa + a_stream.len() as u32;
    let end_b = sb + b_stream.len() as u32;
    out.push((next(), tcp_frame(A, B, sa, sb, 0x18, a_stream)));
    for (k, seg) in b_stream.chunks(1400).enumerate() {
        let off = k * 1400;
        if dropped.contains(&off) {
            continue;
        }
        out.push((next(), tcp_frame(B, A, sb + off as u32, end_a, 0x18, seg)));
    }
    out.push((next(), tcp_frame(A, B, end_a, end_b, 0x10, &[])));
    out.push((next(), tcp_frame(A, B, end_a, end_b, 0x11, &[])));
    out.push((next(), tcp_frame(B, A, end_b, end_a + 1, 0x11, &[])));
    out.push((next(), tcp_frame(A, B, end_a + 1, end_b + 1, 0x10, &[])));
    out
}

/// Piece bytes lost in a capture gap inside a block are still the peer's:
/// the block's length is in its header. Built here, so the answer is known
/// by construction: two 16 KiB blocks, one 1,400-byte segment of the first
/// one's payload missing from the capture.
#[test]
fn piece_bytes_inside_a_capture_gap_are_counted() {
    let ih = [0x5au8; 20];
    let mut a = handshake(ih, b"-qB4520-aaaaaaaaaaaa");
    a.extend(msg(2, &[])); // interested
    let mut b = handshake(ih, b"-TR3000-bbbbbbbbbbbb");
    b.extend(msg(1, &[])); // unchoke
    let first = b.len();
    b.extend(piece(3, 0, 16384));
    b.extend(piece(3, 16384, 16384));
    // Stream offsets of B's segments: 0, 1400, ...; the one at 2800 lies
    // inside the first block's payload (which starts at `first` + 13 = 86).
    assert!(first + 13 < 2800 && 2800 + 1400 < first + 16397);
    let frames = gapped_connection(&a, &b, &[2800]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("gap.pcap");
    write_pcap(&p, &frames);
    let r = run(&[p], &[]);
    let c = table(&r, "connections");
    assert_eq!(c.height(), 1);
    assert_eq!(
        u64s(&c, "piece_bytes_resp"),
        [Some(32_768)],
        "both blocks, the lost segment included"
    );
    assert_eq!(u64s(&c, "piece_bytes_orig"), [Some(0)]);
    assert_eq!(u64s(&c, "gap_bytes"), [Some(1400)]);
    assert_eq!(u64s(&c, "payload_bytes_resp"), [Some(b.len() as u64 - 1400)]);
    assert_eq!(u64s(&c, "n_msgs_resp"), [Some(3)], "unchoke and two pieces");
    assert_eq!(
        u64s(&c, "n_resyncs"),
        [Some(0)],
        "the gap is inside a block: framing holds"
    );
    let m = table(&r, "peer_messages");
    assert_eq!(count_by(&m, "msg").get("piece"), Some(&2));
    // Per peer: B uploaded both blocks to A.
    let peers = table(&r, "peers");
    let ips = strs(&peers, "peer_ip");
    let (up, down) = (u64s(&peers, "uploaded_bytes"), u64s(&peers, "downloaded_bytes"));
    let at = |ip: &str| ips.iter().position(|x| x.as_deref() == Some(ip)).expect(ip);
    assert_eq!((up[at("10.0.0.2")], down[at("10.0.0.2")]), (Some(32_768), Some(0)));
    assert_eq!((up[at("10.0.0.1")], down[at("10.0.0.1")]), (Some(0), Some(32_768)));
    // Both were last seen when the second block ended: B's bytes after the
    // hole wait in the reassembler until A's ACK past the hole (frame 27:
    // SYN, SYN-ACK, A's data, 23 of B's 24 segments, then the ACK; 1 ms
    // apart from 1 s + 1 ms) declares it lost, at 1 s + 27 ms. The FINs
    // after it carry no message (an empty block "ending" at the close
    // would move this to 1 s + 30 ms).
    let last: Vec<Option<i64>> = peers
        .column("last_ts")
        .expect("last_ts")
        .cast(&polars::prelude::DataType::Int64)
        .expect("cast")
        .i64()
        .expect("i64")
        .iter()
        .collect();
    assert_eq!(last, vec![Some(1_027_000); 2]);
    let t = table(&r, "torrents");
    assert_eq!(u64s(&t, "piece_bytes"), [Some(32_768)]);
    // No .torrent and no bitfield: the piece count is unknown, not 0.
    assert_eq!(u64s(&t, "n_pieces"), [None]);
    assert_eq!(strs(&t, "n_pieces_source"), [Some("none".to_string())]);
}

/// A capture gap over a piece header: the block whose header is lost is
/// not counted (its length is unknown), framing is found again at the next
/// header, and the bytes passed over to find it are counted. By
/// construction: B sends 5 blocks of 16 KiB (messages of 16,397 bytes from
/// stream offset 73); the 1,400-byte segment at 15,400 is missing, which
/// holds the last 1,070 bytes of block 0 and the header of block 1. Block
/// 0 ends at 16,470; block 2's header is at 73 + 2 × 16,397 = 32,867: the
/// 16,397 bytes of block 1's message are passed over (330 of them in the
/// gap, counted in gap_bytes too).
#[test]
fn a_gap_over_a_piece_header_costs_one_block_and_one_resync() {
    let ih = [0x5bu8; 20];
    let mut a = handshake(ih, b"-qB4520-aaaaaaaaaaaa");
    a.extend(msg(2, &[]));
    let mut b = handshake(ih, b"-TR3000-bbbbbbbbbbbb");
    b.extend(msg(1, &[]));
    assert_eq!(b.len(), 73);
    for k in 0..5 {
        b.extend(piece(k, 0, 16384));
    }
    let frames = gapped_connection(&a, &b, &[15_400]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("gap-header.pcap");
    write_pcap(&p, &frames);
    let r = run(&[p], &[]);
    let c = table(&r, "connections");
    assert_eq!(u64s(&c, "piece_bytes_resp"), [Some(4 * 16_384)], "blocks 0, 2, 3, 4");
    assert_eq!(u64s(&c, "piece_bytes_orig"), [Some(0)]);
    assert_eq!(u64s(&c, "gap_bytes"), [Some(1400)]);
    assert_eq!(u64s(&c, "n_resyncs"), [Some(1)]);
    assert_eq!(u64s(&c, "unframed_bytes"), [Some(32_867 - 16_470)]);
    assert_eq!(u64s(&c, "n_msgs_resp"), [Some(5)], "unchoke and four pieces");
    assert_eq!(u64s(&c, "n_msgs_orig"), [Some(1)], "interested");
    let m = table(&r, "peer_messages");
    let pieces: Vec<Option<u64>> = strs(&m, "msg")
        .iter()
        .zip(u64s(&m, "piece"))
        .filter(|(n, _)| n.as_deref() == Some("piece"))
        .map(|(_, p)| p)
        .collect();
    assert_eq!(pieces, [Some(0), Some(2), Some(3), Some(4)]);
}

/// nDPI's bittorrent.pcap: the one connection carrying pieces
/// (198.100.146.9:60163 → 192.168.1.3:52915) spans 781,450 stream bytes of
/// which 269,656 were captured, in 41 runs. Read with tshark's TCP payloads
/// and laid out by sequence number, the stream is: handshake and control
/// messages up to offset 691, then back-to-back 16,397-byte piece messages
/// (16 KiB blocks) from 691 to the end. 40 of their 48 headers are in
/// captured bytes (offsets 17,088 + k·16,397 and 115,470 ...), every
/// one at a multiple of 16,397 from 691; the other 8 fall in holes, so
/// their framing is lost and their blocks are skipped (resync). Of the 40
/// framed blocks, 39 are whole and the last is cut off by the end of the
/// capture after 10,087 bytes: 39 × 16,384 + 10,087 = 649,063 piece bytes,
/// of which only 236,509 are in captured bytes; the rest is counted through
/// capture gaps by the block lengths in the headers.
#[test]
fn ndpi_bittorrent_piece_bytes_through_capture_gaps() {
    let Some(c) = corpus() else { return };
    let r = run(&[c.join("ntop__nDPI/bittorrent.pcap")], &[]);
    let conns = table(&r, "connections");
    let total = sum(&conns, "piece_bytes_orig") + sum(&conns, "piece_bytes_resp");
    assert_eq!(total, 39 * 16_384 + 10_087);
    let (rp, pr, po) = (
        u64s(&conns, "resp_port"),
        u64s(&conns, "piece_bytes_resp"),
        u64s(&conns, "piece_bytes_orig"),
    );
    let op = u64s(&conns, "orig_port");
    let i = (0..conns.height())
        .find(|&i| op[i] == Some(52915) && rp[i] == Some(60163))
        .expect("the transfer connection");
    assert_eq!((po[i], pr[i]), (Some(0), Some(649_063)));
    // The 48 − 40 blocks whose headers are lost are not counted.
    let m = table(&r, "peer_messages");
    assert_eq!(count_by(&m, "msg").get("piece"), Some(&40));
}

// ---------- message counts against an independent walk of the streams ----------

/// Message names by id, as `peer_messages.msg` writes them.
fn msg_name(id: u8) -> &'static str {
    match id {
        0 => "choke",
        1 => "unchoke",
        2 => "interested",
        3 => "not_interested",
        4 => "have",
        5 => "bitfield",
        6 => "request",
        7 => "piece",
        8 => "cancel",
        9 => "port",
        13 => "suggest",
        14 => "have_all",
        15 => "have_none",
        16 => "reject",
        17 => "allowed_fast",
        20 => "extended",
        _ => "unknown",
    }
}

/// (sender "ip:port", message name) → count, from tshark's TCP payloads
/// laid out by absolute sequence number and walked by length prefix after
/// the 68-byte handshake. Only for captures with no hole in any stream:
/// a hole panics, since the walk would not know where messages are.
fn walk_with_tshark(file: &Path) -> BTreeMap<(String, String), u64> {
    let out = std::process::Command::new("tshark")
        .args(["-n", "-o", "tcp.relative_sequence_numbers:FALSE", "-r"])
        .arg(file)
        .args(["-Y", "tcp.len > 0", "-T", "fields"])
        .args([
            "-e",
            "ip.src",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.seq",
            "-e",
            "tcp.payload",
        ])
        .output()
        .expect("tshark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut dirs: BTreeMap<String, BTreeMap<u32, Vec<u8>>> = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        let hex: String = f[3].chars().filter(|c| *c != ':').collect();
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        let seq: u32 = f[2].parse().expect("seq");
        let e = dirs
            .entry(format!("{}:{}", f[0], f[1]))
            .or_default()
            .entry(seq)
            .or_default();
        if bytes.len() > e.len() {
            *e = bytes;
        }
    }
    let mut counts = BTreeMap::new();
    for (from, segs) in dirs {
        let base = *segs.keys().next().expect("a segment");
        let mut stream = Vec::new();
        let mut hole = None;
        for (seq, b) in segs {
            let off = seq.wrapping_sub(base) as usize;
            if off > stream.len() {
                hole = hole.or(Some(stream.len()));
                continue;
            }
            if off + b.len() > stream.len() {
                stream.extend_from_slice(&b[stream.len() - off..]);
            }
        }
        if !stream.starts_with(b"\x13BitTorrent protocol") {
            continue;
        }
        assert_eq!(hole, None, "{}: {from} has a hole", file.display());
        let mut pos = 68;
        while pos + 4 <= stream.len() {
            let len = u32::from_be_bytes([stream[pos], stream[pos + 1], stream[pos + 2], stream[pos + 3]]) as usize;
            let name = if len == 0 {
                "keepalive"
            } else {
                msg_name(*stream.get(pos + 4).expect("message id"))
            };
            *counts.entry((from.clone(), name.to_string())).or_default() += 1;
            pos += 4 + len;
        }
    }
    counts
}

/// Every message of the plaintext captures whose streams have no hole, per
/// sender and type, equals an independent walk of the same bytes (tshark's
/// TCP payloads, framed here). tshark's own BitTorrent dissector is no
/// exact reference there: on lookaway.pcap it shows 116 of the 119 piece
/// messages this walk finds (and that the 1,945,472-byte torrent needs:
/// 118 blocks of 16 KiB and one of 12 KiB).
#[test]
fn message_counts_equal_an_independent_walk_of_clean_streams() {
    let Some(c) = corpus() else { return };
    if !super::tshark() {
        return;
    }
    let d = c.join("tcoppi__BittorrentReconstituter");
    let mut total = 0;
    for f in ["lookaway.pcap", "mippo.pcap", "test.txt.pcap"] {
        let want = walk_with_tshark(&d.join(f));
        let r = run(&[d.join(f)], &[]);
        let m = table(&r, "peer_messages");
        let (ip, port, name) = (strs(&m, "src_ip"), u64s(&m, "src_port"), strs(&m, "msg"));
        let mut ours: BTreeMap<(String, String), u64> = BTreeMap::new();
        for i in 0..m.height() {
            let n = name[i].clone().unwrap_or_default();
            if n == "handshake" {
                continue;
            }
            let from = format!("{}:{}", ip[i].as_deref().unwrap_or_default(), port[i].unwrap_or(0));
            *ours.entry((from, n)).or_default() += 1;
        }
        assert_eq!(ours, want, "{f}");
        total += want.values().sum::<u64>();
    }
    // lookaway 311, mippo 15, test.txt 10 (keep-alives included).
    assert_eq!(total, 336);
}

// ---------- pieces a peer says it no longer has ----------

/// libtorrent's lt_donthave takes a piece out of the peer's count. Built
/// here, so the answer is known by construction: B announces pieces 3, 64
/// and 70 of a 100-piece torrent with `have`, then withdraws 70 (an index
/// that is not the first of its 64-piece word) with lt_donthave, sent with
/// the extension id A asked for. B ends with 2 pieces.
#[test]
fn lt_donthave_takes_the_piece_out_of_the_peers_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let torrent = dir.path().join("tiny.torrent");
    let ih = super::tiny_torrent(&torrent, 100);
    let ltep = |pid: &[u8; 20]| {
        let mut h = handshake(ih, pid);
        h[20 + 5] |= 0x10;
        h
    };
    let ext_handshake = |m: &str| {
        let mut body = vec![0u8];
        body.extend(format!("d1:md{m}ee").as_bytes());
        msg(20, &body)
    };
    let mut a = ltep(b"-LT2080-aaaaaaaaaaaa");
    a.extend(ext_handshake("11:lt_donthavei7e"));
    let mut b = ltep(b"-LT2080-bbbbbbbbbbbb");
    b.extend(ext_handshake("11:lt_donthavei9e"));
    for i in [3u32, 64, 70] {
        b.extend(msg(4, &i.to_be_bytes()));
    }
    let mut donthave = vec![7u8];
    donthave.extend(70u32.to_be_bytes());
    b.extend(msg(20, &donthave));
    let pcap = dir.path().join("donthave.pcap");
    write_pcap(&pcap, &gapped_connection(&a, &b, &[]));
    let r = run(&[pcap], &[torrent]);
    let p = table(&r, "peers");
    let (ip, last) = (strs(&p, "peer_ip"), u64s(&p, "last_pieces"));
    let b_last: Vec<_> = (0..p.height())
        .filter(|&i| ip[i].as_deref() == Some("10.0.0.2"))
        .map(|i| last[i])
        .collect();
    assert_eq!(b_last, [Some(2)], "B's pieces after have 3, 64, 70 and lt_donthave 70");
    let m = table(&r, "peer_messages");
    let ext = strs(&m, "ext");
    assert_eq!(ext.iter().filter(|e| e.as_deref() == Some("lt_donthave")).count(), 1);
}
