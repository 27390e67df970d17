#!/usr/bin/env python3
"""The Spark merge equals `swarmtap merge` (issue 19).

Cuts captures into 2, 3 and 7 time pieces (`editcap -i`), analyses every
piece with `swarmtap analyze`, runs the Spark merge (spark/merge.py) over
every case in one job (one SparkSession, local[2], the cases told apart by
a merge-group column), runs `swarmtap merge` on the same inputs, and
compares every table, every column and every row (as multisets; the named
exceptions are below, at FLOAT_REL, and in docs/MERGE.md, "The Spark job").
Two-sensor cases (the same capture as sensors a and b; each with some hosts
filtered out; both cut in 3) must also merge without double counts.

merge(pieces) = analyze(whole) is asserted for `swarmtap merge` by
tests/integration/merge.rs, with its named differences; the Spark job
inherits it through the equality. `--vs-whole` also compares each Spark
piece case with analyze of the whole capture (no CI verdict: the
integration test owns that property and its exceptions).

Prints "N passed, M failed" last and exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import glob
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict

import pandas as pd
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "spark"))
import merge as M  # noqa: E402

# Known difference 1 (docs/MERGE.md): one message in flight per direction per cut.
MSG_IN_FLIGHT = 16 * 1024 + 13

# Public-corpus captures cut like the samples: DHT + tracker + uTP; TCP peer
# wire with its .torrent; DHT and UDP trackers; plain TCP peer wire.
CORPUS = [
    "goncalo-rodrigues__360BitScoping/small_torrent.pcap",
    "tcoppi__BittorrentReconstituter/codemonkey.pcap",
    "terezaburianova__VUT-PDS/small.pcap",
    "ntop__nDPI/bittorrent.pcap",
]

PASSED = 0
FAILED = 0
FAILS: list = []


def check(ok: bool, what: str) -> None:
    global PASSED, FAILED
    if ok:
        PASSED += 1
    else:
        FAILED += 1
        FAILS.append(what)
        print(f"FAIL {what}", flush=True)


def run(cmd: list) -> None:
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()[-2000:]}")


def span(capture: str) -> tuple:
    out = subprocess.run(["capinfos", "-T", "-r", "-S", "-a", "-e", capture], check=True, stdout=subprocess.PIPE,
                         text=True).stdout.split("\t")
    return float(out[1]), float(out[2])


def cut(capture: str, n: int, dest: str, reuse: bool = False) -> list:
    """`editcap -i` with an interval of duration / n: n pieces (fewer only
    when a whole interval holds no packet)."""
    stem, ext = os.path.splitext(os.path.basename(capture))
    if not reuse:
        os.makedirs(dest, exist_ok=True)
        a, b = span(capture)
        interval = max((b - a) / n * (1 + 1e-6), 1e-6)
        run(["editcap", "-i", f"{interval:.6f}", capture, os.path.join(dest, stem + ext)])
    out = []
    for f in sorted(glob.glob(os.path.join(dest, f"{stem}_*{ext}"))):
        # editcap -i writes a file for an interval without packets too.
        c = subprocess.run(["capinfos", "-T", "-r", "-c", f], stdout=subprocess.PIPE, text=True).stdout.split("\t")
        if len(c) > 1 and c[1].strip() == "0":
            os.remove(f)
        else:
            out.append(f)
    return out


def analyze(binary: str, inputs: list, out: str, torrents: list, sensor: str, bpf: str = None) -> str:
    cmd = [binary, "analyze", *inputs, "-o", out, "--sensor", sensor, "--threads", "1"]
    for t in torrents:
        cmd += ["--torrents", t]
    if bpf:
        cmd += ["-f", bpf]
    run(cmd)
    return out


def read(d: str, table: str) -> pd.DataFrame:
    return pq.read_table(os.path.join(d, f"{table}.parquet")).to_pandas()


def ts_us(x) -> int:
    return int(pd.Timestamp(x).value // 1000)


# ------------------------------------------------------------------ compare

def conn_key(r) -> tuple:
    a = (r.orig_ip, int(r.orig_port))
    b = (r.resp_ip, int(r.resp_port))
    return (r.transport,) + tuple(sorted([a, b]))


def compare_with_whole(name: str, whole: str, m: dict, cuts_us: list, stats: Counter) -> None:
    """One merged case `m` (table -> DataFrame) against the whole dataset."""
    # Connections: matched by transport, endpoints and the whole's first_ts.
    wc = read(whole, "connections")
    mc = m["connections"]
    check(len(mc) == len(wc), f"{name}: connections {len(mc)} merged vs {len(wc)} whole")
    by = defaultdict(list)
    for r in mc.itertuples():
        by[conn_key(r)].append(r)
    conn_bound = {}
    for r in wc.itertuples():
        cands = by.get(conn_key(r), [])
        # The whole's row: the merged row whose span holds its first_ts.
        hit = [c for c in cands if abs(ts_us(c.first_ts) - ts_us(r.first_ts)) <= 1]
        if not hit:
            check(False, f"{name}: connection {conn_key(r)} at {r.first_ts} missing in the merge")
            continue
        c = hit[0]
        same = (c.orig_ip, int(c.orig_port)) == (r.orig_ip, int(r.orig_port))
        po, pr = (c.piece_bytes_orig, c.piece_bytes_resp) if same else (c.piece_bytes_resp, c.piece_bytes_orig)
        k = sum(1 for t in cuts_us if ts_us(r.first_ts) < t <= ts_us(r.last_ts))
        # Known difference 1: a message in flight per cut, and what the
        # later pieces passed over (unframed while hunting for a boundary,
        # or stream bytes of a piece that framed no connection at all).
        passed = max(int(c.unframed_bytes) - int(r.unframed_bytes), 0) + max(
            int(r.payload_bytes_orig + r.payload_bytes_resp) - int(c.payload_bytes_orig + c.payload_bytes_resp), 0)
        bound = MSG_IN_FLIGHT * k + (passed if k else 0)
        conn_bound[int(r.conn_id)] = (bound, r)
        for side, got, want in (("orig", po, r.piece_bytes_orig), ("resp", pr, r.piece_bytes_resp)):
            d = int(want) - int(got)
            if d == 0:
                stats["conn_piece_bytes_exact"] += 1
            elif abs(d) <= bound:
                stats["conn_piece_bytes_in_flight (known difference 1)"] += 1
                stats["bytes_in_flight"] += abs(d)
            else:
                check(False, f"{name}: connection {conn_key(r)} piece_bytes_{side} {got} vs whole {want} (bound {bound})")
        check(same or bool(r.midstream), f"{name}: connection {conn_key(r)} orientation")
        check(ts_us(c.last_ts) == ts_us(r.last_ts), f"{name}: connection {conn_key(r)} last_ts {c.last_ts} vs {r.last_ts}")

    # Peers.
    wp = read(whole, "peers")
    mp = m["peers"]
    key = ["info_hash", "peer_ip", "peer_port"]
    wk = set(map(tuple, wp[key].astype(str).values))
    mk = set(map(tuple, mp[key].astype(str).values))
    check(wk == mk, f"{name}: peer keys differ: only whole {sorted(wk - mk)[:5]}, only merged {sorted(mk - wk)[:5]}")
    wprog = read(whole, "peer_progress")
    j = wp.merge(mp, on=key, suffixes=("", "_m"))
    for r in j.itertuples():
        who = f"{name}: peer {r.peer_ip}:{r.peer_port}"
        check(ts_us(r.first_ts) == ts_us(r.first_ts_m), f"{who} first_ts {r.first_ts_m} vs {r.first_ts}")
        check(ts_us(r.last_ts) == ts_us(r.last_ts_m), f"{who} last_ts {r.last_ts_m} vs {r.last_ts}")
        for c in ("first_pieces", "last_pieces", "confirmed_download"):
            a, b = getattr(r, c), getattr(r, c + "_m")
            check((pd.isna(a) and pd.isna(b)) or a == b, f"{who} {c} {b} vs whole {a}")
        a, b = r.completed_ts, r.completed_ts_m
        if pd.isna(a) or pd.isna(b):
            check(pd.isna(a) and pd.isna(b), f"{who} completed_ts {b} vs whole {a}")
        elif ts_us(a) == ts_us(b):
            stats["completed_ts_exact"] += 1
        else:
            # Known difference 3: the next progress row of that peer bounds it.
            later = wprog[(wprog.info_hash == r.info_hash) & (wprog.peer_ip == r.peer_ip)
                          & (wprog.peer_port == r.peer_port) & (wprog.ts > a)].ts
            nxt = ts_us(later.min()) if len(later) else ts_us(r.last_ts)
            ok = ts_us(a) < ts_us(b) <= nxt
            check(ok, f"{who} completed_ts {b} vs whole {a} (next progress {nxt})")
            stats["completed_ts_next_signal (known difference 3)"] += ok
        bound = sum(bd for cid, (bd, _) in conn_bound.items() if cid in set(r.conn_ids))
        for c in ("uploaded_bytes", "downloaded_bytes"):
            d = int(getattr(r, c)) - int(getattr(r, c + "_m"))
            check(abs(d) <= bound, f"{who} {c} {getattr(r, c + '_m')} vs whole {getattr(r, c)} (bound {bound})")
            stats["peer_bytes_exact" if d == 0 else "peer_bytes_in_flight (known difference 1)"] += 1
        check(int(r.n_connections) == int(r.n_connections_m), f"{who} n_connections {r.n_connections_m} vs {r.n_connections}")
        stats["peers"] += 1
        stats["confirmed_downloads"] += bool(r.confirmed_download_m)

    # Torrents.
    wt = read(whole, "torrents")
    mt = m["torrents"]
    check(sorted(wt.info_hash) == sorted(mt.info_hash), f"{name}: torrents {sorted(mt.info_hash)} vs {sorted(wt.info_hash)}")
    jt = wt.merge(mt, on="info_hash", suffixes=("", "_m"))
    for r in jt.itertuples():
        for c in ("n_peers", "n_confirmed_downloads", "n_pieces", "name"):
            a, b = getattr(r, c), getattr(r, c + "_m")
            check((pd.isna(a) and pd.isna(b)) or a == b, f"{name}: torrent {r.info_hash[:8]} {c} {b} vs whole {a}")
        bound = sum(bd for bd, cr in conn_bound.values() if cr.info_hash == r.info_hash)
        check(abs(int(r.piece_bytes) - int(r.piece_bytes_m)) <= 2 * bound,
              f"{name}: torrent piece_bytes {r.piece_bytes_m} vs whole {r.piece_bytes}")
        stats["torrents"] += 1

    # Audit flags per series.
    wa = read(whole, "announce_audit")
    ma = m["announce_audit"]
    akey = ["tracker_ip", "tracker_port", "transport", "info_hash", "client_ip", "peer_id"]
    wf = {tuple(map(str, r[akey])): sorted(r["flags"]) for _, r in wa.iterrows()}
    mf = {tuple(map(str, r[akey])): sorted(r["flags"]) for _, r in ma.iterrows()}
    check(set(wf) == set(mf), f"{name}: audit series {len(mf)} vs whole {len(wf)}")
    for k, f in wf.items():
        if k in mf:
            check(mf[k] == f, f"{name}: audit {k[4]} flags {mf[k]} vs whole {f}")
            stats["audit_series"] += 1
            stats["audit_flags"] += len(f)


def compare_sensors(name: str, whole: str, m: dict, both: bool, stats: Counter) -> None:
    """Two sensors: no double count. `both`: each sensor saw everything, so
    the merge equals the whole (with sensor sets 'a,b')."""
    wc = read(whole, "connections")
    mc = m["connections"]
    want = {(conn_key(r), ts_us(r.first_ts)): r for r in wc.itertuples()}
    seen = Counter((conn_key(r), ts_us(r.first_ts)) for r in mc.itertuples())
    check(all(v == 1 for v in seen.values()), f"{name}: a connection appears twice")
    for r in mc.itertuples():
        w = want.get((conn_key(r), ts_us(r.first_ts)))
        check(w is not None, f"{name}: connection {conn_key(r)} not in the whole")
        if w is not None:
            same = (r.orig_ip, int(r.orig_port)) == (w.orig_ip, int(w.orig_port))
            got = (r.piece_bytes_orig, r.piece_bytes_resp) if same else (r.piece_bytes_resp, r.piece_bytes_orig)
            check(got == (w.piece_bytes_orig, w.piece_bytes_resp), f"{name}: connection {conn_key(r)} bytes {got}")
    for t in ("tracker_announces", "peer_messages", "dht_messages"):
        w = read(whole, t)
        check(len(m[t]) <= len(w), f"{name}: {t} {len(m[t])} rows > whole {len(w)} (double count)")
    if both:
        check(len(mc) == len(wc), f"{name}: connections {len(mc)} vs {len(wc)}")
        for t in ("tracker_announces", "peer_messages", "peer_progress", "dht_messages", "pieces"):
            w = read(whole, t)
            check(len(m[t]) == len(w), f"{name}: {t} {len(m[t])} rows vs whole {len(w)}")
        check(set(mc.sensor) <= {"a,b"}, f"{name}: sensor sets {set(mc.sensor)}")
        wp = read(whole, "peers")
        j = wp.merge(m["peers"], on=["info_hash", "peer_ip", "peer_port"], suffixes=("", "_m"))
        check(len(j) == len(wp) == len(m["peers"]), f"{name}: peers {len(m['peers'])} vs {len(wp)}")
        for r in j.itertuples():
            check((r.uploaded_bytes, r.downloaded_bytes, r.confirmed_download)
                  == (r.uploaded_bytes_m, r.downloaded_bytes_m, r.confirmed_download_m),
                  f"{name}: peer {r.peer_ip} bytes/confirmed differ")
    stats["sensor_cases"] += 1


# Documented exceptions (docs/MERGE.md, "The Spark job"; spark/README.md):
# - types: Spark writes Arrow `string` where analyze and `swarmtap merge`
#   write `large_string` (same values); the comparison is by value;
# - row order: Spark writes each table partitioned by date, the embedded
#   merge one file in time order; tables are compared as multisets of rows;
# - floating-point columns (rates, max_upload_bps, coordinates) are compared
#   to 1e-9 relative (one division computed by another language).
FLOAT_REL = 1e-9

# `swarmtap merge` rules not yet ported to spark/merge.py (docs/MERGE.md,
# "The Spark job"; spark/README.md, "Status"): (case, table) -> the rule.
# A listed pair that differs is counted as "not yet ported", not as a
# failure; a listed pair that is equal is a failure too (the list must
# shrink as rules are ported); any unlisted difference fails. Empty since
# session 7 (the last rule, main f917a29's listen endpoints, ephemeral-port
# join and MSE-encrypted originators, is ported): a new `swarmtap merge`
# rule not yet in the job is named here with the tables it changes.
NOT_YET_PORTED: dict = {}


def norm(x):
    """A cell as comparable value: null, list as tuple, time in µs, float
    rounded to FLOAT_REL."""
    if isinstance(x, (list, tuple)) or (hasattr(x, "tolist") and not isinstance(x, (str, bytes))):
        v = x.tolist() if hasattr(x, "tolist") else list(x)
        if not isinstance(v, list):
            return norm(v)
        return tuple(norm(y) for y in v)
    if x is None:
        return None
    try:
        if pd.isna(x):
            return None
    except (TypeError, ValueError):
        pass
    if isinstance(x, pd.Timestamp):
        return ts_us(x)
    if isinstance(x, float):
        if x.is_integer() and abs(x) < 2 ** 53:
            return int(x)  # an integer column with nulls, as pandas reads it
        if x == 0 or x != x:
            return x
        import math
        e = math.floor(math.log10(abs(x)))
        return round(x, 9 - e)
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, int) or hasattr(x, "item"):
        v = x.item() if hasattr(x, "item") else x
        return float(v) if isinstance(v, float) else v
    return str(x)


def rows_of(df: pd.DataFrame, cols: list) -> list:
    return [tuple(norm(v) for v in r) for r in df[cols].itertuples(index=False, name=None)]


def compare_engines(name: str, emb: str, m: dict, stats: Counter) -> None:
    """Spark's merged tables against `swarmtap merge`'s on the same inputs:
    every table, every column, every row (as multisets)."""
    for t in M.TABLES:
        e = read(emb, t)
        s = m[t]
        check(list(e.columns) == list(s.columns), f"{name}: {t} columns spark {list(s.columns)} vs swarmtap merge {list(e.columns)}")
        cols = [c for c in e.columns if c in s.columns]
        re_, rs = Counter(rows_of(e, cols)), Counter(rows_of(s, cols))
        known = NOT_YET_PORTED.get((name, t))
        if re_ == rs:
            check(known is None, f"{name}: {t} is equal between the engines but listed as not yet ported ({known})")
            stats["engine_tables_equal"] += 1
            stats["engine_rows_equal"] += len(e)
            continue
        if known is not None:
            stats["engine_tables_not_yet_ported"] += 1
            print(f"not yet ported: {name}: {t} ({known})", flush=True)
            continue
        # Which columns differ: the multiset of each column's values.
        bad = [c for i, c in enumerate(cols)
               if Counter(r[i] for r in re_.elements()) != Counter(r[i] for r in rs.elements())]
        only_e = list((re_ - rs).elements())
        only_s = list((rs - re_).elements())
        ex = []
        for c in bad[:4]:
            i = cols.index(c)
            ex.append(f"{c}: merge {[r[i] for r in only_e[:3]]} spark {[r[i] for r in only_s[:3]]}")
        check(False, f"{name}: {t} differs between the engines: rows {len(s)} spark vs {len(e)} merge, "
                     f"{len(only_s)}/{len(only_e)} rows unmatched, columns {bad}; " + "; ".join(ex))


# ------------------------------------------------------------------ main

def spark_cpu(spark) -> float:
    """User + system CPU seconds of the JVM and its descendants (the Python
    workers), from /proc: a measure that does not depend on the load."""
    try:
        jvm = int(spark._jvm.java.lang.ProcessHandle.current().pid())
        tick = os.sysconf("SC_CLK_TCK")
        kids = defaultdict(list)
        stat = {}
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                with open(f"/proc/{p}/stat") as f:
                    v = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stat[int(p)] = sum(int(x) for x in v[11:15])  # utime stime cutime cstime
            kids[int(v[1])].append(int(p))
        total, todo = 0, [jvm]
        while todo:
            p = todo.pop()
            total += stat.get(p, 0)
            todo += kids.get(p, [])
        return total / tick
    except Exception:  # noqa: BLE001 (a figure, not a verdict)
        return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("SWARMTAP_BIN", os.path.join(ROOT, "target/debug/swarmtap")))
    ap.add_argument("--work", default=os.path.join(ROOT, "target/spark-merge"))
    ap.add_argument("--shared", default=os.environ.get("SWARMTAP_SHARED", os.path.join(ROOT, "..", "shared")))
    ap.add_argument("--pieces", default="2,3,7")
    ap.add_argument("--only", default=None, help="comma list of capture names (quick runs)")
    ap.add_argument("--reuse", action="store_true", help="keep the pieces and datasets of an earlier run in --work")
    ap.add_argument("--vs-whole", action="store_true",
                    help="also compare each piece case with analyze of the whole capture (the property "
                         "tests/integration/merge.rs asserts for `swarmtap merge`, with its named differences)")
    ap.add_argument("--analyze-only", action="store_true", help="stop after cutting and analysing")
    a = ap.parse_args()
    t0 = time.time()
    v = os.environ.get("SWARMTAP_REQUIRE_ALL", "")
    require_all = v not in ("", "0")
    done = os.path.join(a.work, ".analysed")
    reuse = a.reuse and os.path.exists(done)
    if not reuse:
        shutil.rmtree(a.work, ignore_errors=True)
        os.makedirs(a.work)

    samples = os.path.join(ROOT, "sample-pcaps")
    captures = [(p, [samples]) for p in sorted(glob.glob(os.path.join(samples, "*.pcap")))]
    corpus = os.path.join(a.shared, "corpus", "public")
    if os.path.isdir(corpus):
        for rel in CORPUS:
            p = os.path.join(corpus, rel)
            tor = glob.glob(os.path.join(os.path.dirname(p), "*.torrent"))
            captures.append((p, [os.path.dirname(p)] if tor else []))
    else:
        msg = f"spark_merge: no public corpus at {corpus}: corpus captures not cut"
        if require_all:
            print(msg + " (SWARMTAP_REQUIRE_ALL=1)")
            return 1
        print(msg)
        skips = os.environ.get("SWARMTAP_SKIP_DIR")
        if skips:
            os.makedirs(skips, exist_ok=True)
            with open(os.path.join(skips, "spark_merge.txt"), "a") as f:
                f.write("tests/spark_merge.py: public-corpus cases (no ../shared)\n")
    if a.only:
        keep = set(a.only.split(","))
        captures = [c for c in captures if os.path.basename(c[0]) in keep]
    pieces = [int(x) for x in a.pieces.split(",")]

    # Cases: (name, kind, whole dir, [dataset dirs], cut times)
    jobs = []
    cases = []
    for cap, tor in captures:
        stem = os.path.splitext(os.path.basename(cap))[0]
        base = os.path.join(a.work, stem)
        whole = os.path.join(base, "whole")
        jobs.append(([cap], whole, tor, "tap", None))
        for n in pieces:
            files = cut(cap, n, os.path.join(base, f"cut{n}"), reuse)
            outs = [os.path.join(base, f"p{n}", f"{i:02d}") for i in range(len(files))]
            for f, o in zip(files, outs):
                jobs.append(([f], o, tor, "tap", None))
            cuts = [int(round(span(f)[0] * 1e6)) for f in files[1:]]
            cases.append((f"{stem}/{n}", "pieces", whole, outs, cuts))
    # Two sensors on one capture: each saw everything; then each with hosts filtered out.
    http = os.path.join(samples, "http.pcap")
    if not a.only or "http.pcap" in a.only.split(","):
        base = os.path.join(a.work, "sensors")
        w = os.path.join(a.work, "http", "whole")
        for s in ("a", "b"):
            jobs.append(([http], os.path.join(base, s), [samples], s, None))
        jobs.append(([http], os.path.join(base, "fa"), [samples], "a", "not host 10.99.0.11 and not host 10.99.0.12"))
        jobs.append(([http], os.path.join(base, "fb"), [samples], "b", "not host 10.99.0.14 and not host 10.99.0.15"))
        cases.append(("http/sensors a+b", "sensors_both", w, [os.path.join(base, "a"), os.path.join(base, "b")], []))
        cases.append(("http/sensors filtered", "sensors_half", w, [os.path.join(base, "fa"), os.path.join(base, "fb")], []))
        # The same two sensors each cut in 3: joins and dedupe together.
        for s in ("a", "b"):
            files = cut(http, 3, os.path.join(base, f"cut-{s}"), reuse)
            for i, f in enumerate(files):
                jobs.append(([f], os.path.join(base, f"{s}3", f"{i:02d}"), [samples], s, None))
        outs = [os.path.join(base, f"{s}3", f"{i:02d}") for s in ("a", "b") for i in range(3)]
        # The reference: sensor a's pieces merged alone (cuts cost the same
        # in both; the second sensor must add nothing but its name).
        cases.append(("http/sensors a+b in 3 pieces", "sensors_cut", os.path.join(base, "a3-merged"), outs, []))

    if not reuse:
        with cf.ThreadPoolExecutor(max_workers=2) as ex:
            list(ex.map(lambda j: analyze(a.bin, j[0], j[1], j[2], j[3], j[4]), jobs))
        open(done, "w").close()
    t1 = time.time()
    print(f"spark_merge: {len(jobs)} analyze runs in {t1 - t0:.0f} s; {len(cases)} merge cases", flush=True)
    if a.analyze_only:
        return 0

    pkl = os.path.join(a.work, "merged.pkl")
    if a.reuse and os.path.exists(pkl):
        import pickle

        with open(pkl, "rb") as f:
            merged, empty = pickle.load(f)
    else:
        spark = M.session(app="swarmtap-spark-merge-test", master="local[2]")
        spark.sparkContext.setLogLevel("ERROR")
        spark.conf.set("spark.sql.shuffle.partitions", "2")
        sc = spark.sparkContext
        sc.setJobGroup("merge", "the Spark merge of every case")
        tp = time.time()
        out = M.merge(spark, [c[3] for c in cases])
        tq = time.time()
        merged = {}
        for t, df in out.items():
            pdf = df.toPandas()
            merged[t] = {s: g.drop(columns=[M.G]) for s, g in pdf.groupby(M.G)}
        empty = {t: out[t].drop(M.G).limit(0).toPandas() for t in out}
        jobs = sc.statusTracker().getJobIdsForGroup("merge")
        stages = sum(len(sc.statusTracker().getJobInfo(j).stageIds) for j in jobs if sc.statusTracker().getJobInfo(j))
        print(f"spark_merge: plan and materialised steps {tq - tp:.0f} s, tables collected {time.time() - tq:.0f} s; "
              f"{len(jobs)} Spark jobs, {stages} stages; CPU {spark_cpu(spark):.0f} s (JVM and Python workers)",
              flush=True)
        prof = os.environ.get("SWARMTAP_SPARK_PROFILE")
        if prof:
            # Needs SWARMTAP_SPARK_UI=true: every job's call site and time.
            import json
            import urllib.request

            ui = sc.uiWebUrl
            app = sc.applicationId
            with urllib.request.urlopen(f"{ui}/api/v1/applications/{app}/jobs") as f:
                js = json.load(f)
            with urllib.request.urlopen(f"{ui}/api/v1/applications/{app}/stages") as f:
                st = json.load(f)
            with open(prof, "w") as f:
                json.dump({"jobs": js, "stages": st}, f)
        import pickle

        with open(pkl, "wb") as f:
            pickle.dump((merged, empty), f)
    t2 = time.time()
    print(f"spark_merge: Spark merge of {len(cases)} cases in {t2 - t1:.0f} s", flush=True)

    for name, kind, whole, dirs, cuts in cases:
        if kind == "sensors_cut" and not os.path.exists(whole):
            run([a.bin, "merge", *[d for d in dirs if "/a3/" in d], "-o", whole])
    has_merge = subprocess.run([a.bin, "merge", "--help"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL).returncode == 0
    stats: Counter = Counter()
    for i, (name, kind, whole, dirs, cuts) in enumerate(cases):
        m = {t: merged[t].get(i, empty[t]) for t in merged}
        if kind == "pieces":
            if a.vs_whole:
                compare_with_whole(name, whole, m, cuts, stats)
        else:
            compare_sensors(name, whole, m, kind in ("sensors_both", "sensors_cut"), stats)
        if has_merge:
            emb = os.path.join(a.work, "embedded", str(i))
            run([a.bin, "merge", *dirs, "-o", emb])
            compare_engines(name, emb, m, stats)
            stats["engine_cases"] += 1
    if not has_merge:
        print(f"spark_merge: {a.bin} has no `merge` subcommand: Spark not compared with the embedded merge")
    print("spark_merge figures: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    print(f"spark_merge: {time.time() - t0:.0f} s in all")
    print(f"{PASSED} passed, {FAILED} failed")
    return 0 if FAILED == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
