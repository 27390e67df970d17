#!/usr/bin/env python3
"""`swarmtap merge` on Apache Spark (issue 19).

    spark-submit spark/merge.py DATASET... -o OUT [--tolerance 2] [--join-gap 120]
                 [--threshold 0.98] [--max-link-bps 1.25e9]

Many swarmtap datasets (time pieces of one tap, hourly `live` datasets,
several sensors) into one, following docs/MERGE.md rule by rule: the same
definition `swarmtap merge` implements in the process. DATASET is any path
Spark reads (local, hdfs://, s3a://): an `analyze` dataset
(`<table>.parquet`) or a `live` one (`<table>/date=…/hour=…/part-*.parquet`).
OUT gets every table as `OUT/<table>/date=YYYY-MM-DD/part-*.parquet` (the
date of the row's `ts`, else `first_ts`; rows without a time go to
`date=__HIVE_DEFAULT_PARTITION__`).

Every step carries a merge-group column `_set`, so one Spark job can run
many independent merges at once (tests/spark_merge.py runs all its cases in
one plan); the command line runs one group.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

TABLES = [
    "flows",
    "connections",
    "peer_messages",
    "peer_progress",
    "peers",
    "torrents",
    "tracker_announces",
    "tracker_peers",
    "tracker_scrapes",
    "announce_audit",
    "dht_messages",
    "dht_peers",
    "dht_nodes",
    "dht_infohashes",
    "pex_peers",
    "lsd_announces",
    "pieces",
    "probe_visits",
    "capture_stats",
    "anomalies",
]

# docs/MERGE.md section 1: the key of each event table (besides ts within T).
EVENT_KEYS: Dict[str, List[str]] = {
    "peer_messages": ["src_ip", "src_port", "dst_ip", "dst_port", "msg", "ext", "piece", "begin", "length", "wire_len"],
    "peer_progress": ["info_hash", "peer_ip", "peer_port", "cause", "n_pieces_have"],
    "pieces": ["info_hash", "piece", "sender_ip", "sender_port", "receiver_ip", "receiver_port", "bytes", "verified"],
    "pex_peers": ["reporter_ip", "info_hash", "peer_ip", "peer_port", "action"],
    "tracker_announces": [
        "client_ip", "client_port", "tracker_ip", "tracker_port", "transport", "info_hash", "peer_id",
        "uploaded", "downloaded", "left", "event",
    ],
    "tracker_peers": ["tracker_ip", "tracker_port", "client_ip", "info_hash", "peer_ip", "peer_port"],
    "tracker_scrapes": ["client_ip", "tracker_ip", "tracker_port", "transport", "info_hash", "seeders", "leechers", "completed"],
    "dht_messages": ["src_ip", "src_port", "dst_ip", "dst_port", "tid", "kind", "method"],
    "dht_peers": ["info_hash", "peer_ip", "peer_port", "via", "reporter_ip", "reporter_port"],
    "lsd_announces": ["src_ip", "src_port", "info_hash", "port"],
    "probe_visits": ["peer_ip", "peer_port", "info_hash", "conn_id", "attempt"],
    "anomalies": ["layer", "kind", "detail", "ts"],
}

# docs/SCHEMA.md "Live datasets": keys of the snapshot tables.
SNAPSHOT_KEYS: Dict[str, List[str]] = {
    "flows": ["conn_id", "first_ts"],
    "connections": ["conn_id", "first_ts"],
    "peers": ["info_hash", "peer_ip", "peer_port"],
    "torrents": ["info_hash"],
    "announce_audit": ["tracker_ip", "tracker_port", "transport", "info_hash", "client_ip", "peer_id"],
    "dht_nodes": ["node_id", "node_ip", "node_port"],
    "dht_infohashes": ["info_hash"],
}

WIRE_CAUSES = ["bitfield", "have", "have_all", "have_none", "dont_have"]
LOW40 = (1 << 40) - 1
US = 1_000_000
G = "_set"


# ---------------------------------------------------------------- reading

def _fs_exists(spark: SparkSession, path: str) -> bool:
    jvm = spark._jvm
    p = jvm.org.apache.hadoop.fs.Path(path)
    return p.getFileSystem(spark._jsc.hadoopConfiguration()).exists(p)


def _path_part(path: str, spark: SparkSession) -> str:
    """The path component of a dataset directory, as input_file_name() shows it."""
    jvm = spark._jvm
    p = jvm.org.apache.hadoop.fs.Path(path)
    fs = p.getFileSystem(spark._jsc.hadoopConfiguration())
    return fs.makeQualified(p).toUri().getPath().rstrip("/")


def _file_dir(table: str) -> "F.Column":
    """Dataset directory (path component) of a row, from its file name."""
    f = F.regexp_replace(F.url_decode(F.input_file_name()), r"^[A-Za-z][A-Za-z0-9+.-]*:(//[^/]*)?", "")
    return F.regexp_extract(f, r"^(.*)/" + table + r"(\.parquet$|/)", 1)


def read_sets(spark: SparkSession, sets: Sequence[Sequence[str]]) -> Dict[str, DataFrame]:
    """Every table of every dataset, with `_set` (merge group) and `_ds`
    (dataset number, unique over all groups). Snapshot tables of live
    datasets keep their latest row per key."""
    dsinfo = []  # (_set, _ds, dir path part, dir, live)
    n = 0
    for s, dirs in enumerate(sets):
        for d in dirs:
            d = d.rstrip("/")
            live = not _fs_exists(spark, d + "/capture_stats.parquet") and _fs_exists(spark, d + "/capture_stats")
            dsinfo.append((s, n, _path_part(spark=spark, path=d), d, live))
            n += 1
    dsmap = spark.createDataFrame(
        [(s, i, p) for s, i, p, _, _ in dsinfo],
        T.StructType(
            [
                T.StructField(G, T.IntegerType(), False),
                T.StructField("_ds", T.IntegerType(), False),
                T.StructField("_dir", T.StringType(), False),
            ]
        ),
    )
    out: Dict[str, DataFrame] = {}
    for table in TABLES:
        parts = []
        offline = [d + f"/{table}.parquet" for _, _, _, d, live in dsinfo if not live and _fs_exists(spark, d + f"/{table}.parquet")]
        livep = [d + f"/{table}" for _, _, _, d, live in dsinfo if live and _fs_exists(spark, d + f"/{table}")]
        if offline:
            parts.append(spark.read.option("mergeSchema", "true").parquet(*offline).withColumn("_dir", _file_dir(table)))
        if livep:
            df = (
                spark.read.option("mergeSchema", "true")
                .option("recursiveFileLookup", "true")
                .option("pathGlobFilter", "*.parquet")
                .parquet(*livep)
                .withColumn("_dir", _file_dir(table))
            )
            parts.append(df)
        if not parts:
            continue
        df = parts[0]
        for p in parts[1:]:
            df = df.unionByName(p, allowMissingColumns=True)
        df = df.join(F.broadcast(dsmap), "_dir").drop("_dir")
        if table in SNAPSHOT_KEYS and "interval_start" in df.columns:
            keys = [G, "_ds"] + SNAPSHOT_KEYS[table]
            w = Window.partitionBy(*keys).orderBy(F.col("interval_start").desc_nulls_last())
            df = df.withColumn("_rn", F.row_number().over(w)).where("_rn = 1").drop("_rn")
        for c in ("interval_start", "date", "hour"):
            if c in df.columns and table != "capture_stats":
                df = df.drop(c)
        out[table] = df
    return out


# ---------------------------------------------------------------- helpers

def sensor_set(col: "F.Column") -> "F.Column":
    """Sorted distinct sensor names of a collected array of sensor strings
    (each possibly a comma list) joined with ','."""
    return F.array_join(F.array_sort(F.array_distinct(F.flatten(F.transform(col, lambda s: F.split(s, ","))))), ",")


def rebase(col: "F.Column") -> "F.Column":
    """((base_d + c) << 40) | frame (MERGE.md 0.2)."""
    return F.when(
        col.isNull(), F.lit(None).cast("long")
    ).otherwise(
        F.shiftleft(F.shiftright(col, 40) + F.col("_base"), 40).bitwiseOR(col.bitwiseAND(F.lit(LOW40)))
    )


def _cut(df: DataFrame) -> DataFrame:
    """Materialises `df` and cuts its lineage: the merge's plan reuses its
    steps many times, and without this the plan tree (and the driver's
    memory) grows with every reuse."""
    return df.localCheckpoint(eager=True)


def _ts_us(c: str) -> "F.Column":
    return F.unix_micros(F.col(c))


# ---------------------------------------------------------------- events

def dedupe_events(df: DataFrame, table: str, tol_us: int, multi: DataFrame) -> DataFrame:
    """MERGE.md section 1: copies of one event seen by different sensors
    (same key, ts within T) become one row, the first sensor's, with the
    group's sensor set. Only groups with more than one sensor are looked at."""
    key = [c for c in EVENT_KEYS.get(table, []) if c in df.columns and c != "ts"]
    if "ts" not in df.columns:
        return df
    df = df.join(F.broadcast(multi), G, "left").fillna(False, ["_multi"])
    single = df.where(~F.col("_multi")).drop("_multi")
    many = df.where(F.col("_multi")).drop("_multi")
    part = [G] + key
    w = Window.partitionBy(*part).orderBy(F.col("ts").asc_nulls_first(), F.col("sensor"))
    t = _ts_us("ts")
    many = many.withColumn("_t", t).withColumn(
        "_new",
        F.when(
            F.lag("_t").over(w).isNull()
            | (F.col("_t") - F.lag("_t").over(w) > tol_us)
            | (F.lag("sensor").over(w) == F.col("sensor")),
            1,
        ).otherwise(0),
    )
    many = many.withColumn("_grp", F.sum("_new").over(w.rowsBetween(Window.unboundedPreceding, 0)))
    gw = Window.partitionBy(*(part + ["_grp"]))
    many = (
        many.withColumn("_sens", sensor_set(F.collect_list("sensor").over(gw)))
        .withColumn("_rk", F.row_number().over(gw.orderBy("sensor", "ts")))
        .where("_rk = 1")
        .withColumn("sensor", F.col("_sens"))
        .drop("_t", "_new", "_grp", "_sens", "_rk")
    )
    return single.unionByName(many)


# ---------------------------------------------------------------- flows, connections

FLOW_IDENT = ["app", "app_confidence", "app_evidence", "midstream"]
CONN_IDENT = [
    "info_hash", "info_hash_source", "attribution_confidence", "orig_peer_id", "resp_peer_id", "orig_client",
    "resp_client", "orig_ltep_v", "resp_ltep_v", "orig_listen_port", "orig_peer_port", "resp_peer_port",
    "midstream", "mse_handshake", "encrypted",
]
FLOW_SUM_PAIRS = [("n_packets_orig", "n_packets_resp"), ("payload_bytes_orig", "payload_bytes_resp")]
FLOW_SUMS = ["n_packets", "gap_bytes", "retrans_bytes", "n_bad_checksums"]
CONN_SUM_PAIRS = [
    ("piece_bytes_orig", "piece_bytes_resp"),
    ("payload_bytes_orig", "payload_bytes_resp"),
    ("n_msgs_orig", "n_msgs_resp"),
]
CONN_SUMS = ["gap_bytes", "unframed_bytes", "n_resyncs"]


def join_pieces(df: DataFrame, kind: str, gap_us: int, flow_end: Optional[DataFrame]) -> DataFrame:
    """MERGE.md section 2, "Join across pieces": adds `_grp` (segment group
    within (set, sensor, proto, community_id)), `_first` (the group's first
    row), `_rev` (orientation reversed against the first row)."""
    proto = "proto" if kind == "flows" else "transport"
    if kind == "connections":
        df = df.join(flow_end, [G, "_ds", "flow_id"], "left")
    else:
        df = df.withColumn("_end", F.col("end_reason"))
    part = [G, "sensor", proto, "community_id"]
    w = Window.partitionBy(*part).orderBy("first_ts", "_ds", "conn_id")
    prev_last = F.lag("last_ts").over(w)
    prev_end = F.lag("_end").over(w)
    joins = (
        prev_last.isNotNull()
        & F.col("midstream")
        & (F.unix_micros("first_ts") - F.unix_micros(prev_last) <= gap_us)
        & (~F.coalesce(prev_end, F.lit("")).isin("fin", "rst", "reused"))
    )
    df = df.withColumn("_new", F.when(joins, 0).otherwise(1))
    df = df.withColumn("_grp", F.sum("_new").over(w.rowsBetween(Window.unboundedPreceding, 0)))
    gw = Window.partitionBy(*(part + ["_grp"])).orderBy("first_ts", "_ds", "conn_id")
    first = F.first(F.struct("orig_ip", "orig_port", "_ds", "conn_id")).over(
        gw.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    )
    df = df.withColumn("_f", first)
    df = df.withColumn(
        "_rev", (F.col("orig_ip") != F.col("_f.orig_ip")) | (F.col("orig_port") != F.col("_f.orig_port"))
    )
    return df


def combine_segments(df: DataFrame, kind: str) -> DataFrame:
    """One row per joined group: the first piece's row, identity filled from
    later pieces, first/last min/max, counts summed (swapped when reversed)."""
    proto = "proto" if kind == "flows" else "transport"
    part = [G, "sensor", proto, "community_id", "_grp"]
    pairs = FLOW_SUM_PAIRS if kind == "flows" else CONN_SUM_PAIRS
    sums = FLOW_SUMS if kind == "flows" else CONN_SUMS
    ident = FLOW_IDENT if kind == "flows" else CONN_IDENT
    cols = df.columns
    # Per-row values in the first row's orientation.
    for a, b in pairs:
        df = df.withColumn("_" + a, F.when(F.col("_rev"), F.col(b)).otherwise(F.col(a)))
        df = df.withColumn("_" + b, F.when(F.col("_rev"), F.col(a)).otherwise(F.col(b)))
    if kind == "connections":
        # Ports and ids of each end, in the first row's orientation.
        for a, b in [("orig_peer_port", "resp_peer_port"), ("orig_peer_id", "resp_peer_id"),
                     ("orig_client", "resp_client"), ("orig_ltep_v", "resp_ltep_v")]:
            df = df.withColumn("_" + a, F.when(F.col("_rev"), F.col(b)).otherwise(F.col(a)))
            df = df.withColumn("_" + b, F.when(F.col("_rev"), F.col(a)).otherwise(F.col(b)))
        df = df.withColumn("_orig_listen_port", F.when(F.col("_rev"), F.lit(None)).otherwise(F.col("orig_listen_port")))
    w = Window.partitionBy(*part).orderBy("first_ts", "_ds", "conn_id")
    wall = w.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    agg = df
    for a, b in pairs:
        agg = agg.withColumn(a, F.sum("_" + a).over(wall)).withColumn(b, F.sum("_" + b).over(wall))
    for c in sums:
        if c in cols:
            agg = agg.withColumn(c, F.sum(c).over(wall))
    agg = agg.withColumn("first_ts", F.min("first_ts").over(wall)).withColumn("last_ts", F.max("last_ts").over(wall))
    if kind == "flows":
        agg = agg.withColumn("end_reason", F.last("end_reason").over(wall))
    for c in ident:
        if c not in cols:
            continue
        src = "_" + c if kind == "connections" and ("_" + c) in df.columns else c
        if c in ("midstream", "mse_handshake", "encrypted"):
            agg = agg.withColumn(c, F.first(c).over(wall))
        else:
            agg = agg.withColumn(c, F.first(src, ignorenulls=True).over(wall))
    if kind == "connections":
        for c in ("orig_extensions", "resp_extensions"):
            if c in cols:
                agg = agg.withColumn(c, F.first(c).over(wall))
    # Map of every segment to the group's first (dataset, conn_id).
    seg = agg.select(G, F.col("_ds").alias("_old_ds"), F.col("conn_id").alias("_old_id"), F.col("_f._ds").alias("_ds0"),
                     F.col("_f.conn_id").alias("_id0"))
    rows = agg.where((F.col("_ds") == F.col("_f._ds")) & (F.col("conn_id") == F.col("_f.conn_id")))
    keep = [c for c in cols if not c.startswith("_")] + [G, "_ds"]
    return rows.select(*keep), seg


def dedupe_sensors(df: DataFrame, kind: str, tol_us: int) -> (DataFrame, DataFrame):
    """MERGE.md section 2, "Deduplicate across sensors": overlapping rows of
    one community_id from several sensors are one; the largest is kept."""
    proto = "proto" if kind == "flows" else "transport"
    part = [G, proto, "community_id"]
    w = Window.partitionBy(*part).orderBy("first_ts", "sensor", "_ds", "conn_id")
    runmax = F.max(F.unix_micros("last_ts")).over(w.rowsBetween(Window.unboundedPreceding, -1))
    df = df.withColumn(
        "_new", F.when(runmax.isNull() | (F.unix_micros("first_ts") - tol_us > runmax + tol_us), 1).otherwise(0)
    )
    df = df.withColumn("_cl", F.sum("_new").over(w.rowsBetween(Window.unboundedPreceding, 0)))
    size = F.col("n_packets") if kind == "flows" else F.col("payload_bytes_orig") + F.col("payload_bytes_resp")
    cw = Window.partitionBy(*(part + ["_cl"]))
    df = df.withColumn("_sens", sensor_set(F.collect_list("sensor").over(cw)))
    df = df.withColumn("_rk", F.row_number().over(cw.orderBy(size.desc(), "sensor", "first_ts", "_ds", "conn_id")))
    keep = df.withColumn("_win", F.first(F.struct("_ds", "conn_id")).over(cw.orderBy("_rk").rowsBetween(
        Window.unboundedPreceding, Window.unboundedFollowing)))
    seg = keep.select(G, F.col("_ds").alias("_old_ds"), F.col("conn_id").alias("_old_id"),
                      F.col("_win._ds").alias("_ds0"), F.col("_win.conn_id").alias("_id0"))
    rows = keep.where("_rk = 1").withColumn("sensor", F.col("_sens")).drop("_new", "_cl", "_sens", "_rk", "_win")
    return rows, seg


# ---------------------------------------------------------------- peers: progress fusion

ALL = 2**32 - 1
CLAIM_SLOT = {"tracker_left": 0, "tracker_completed": 0, "upload_only": 1, "pex_seed": 2, "dht_seed": 3}


def _walk(wire, points, n):
    """analyze::swarm::walk (src/analyze/swarm.rs), line for line."""
    def level(v):
        return (n if n is not None else 2**64) if v == ALL else v

    history = []
    voided = []
    wire_cur = None
    slots = [None, None, None, None]
    wi = ci = 0
    while True:
        if wi < len(wire) and ci < len(points):
            take_wire = wire[wi][0] <= points[ci][0]
        elif wi < len(wire):
            take_wire = True
        elif ci < len(points):
            take_wire = False
        else:
            break
        if take_wire:
            t, v, sig = wire[wi]
            wi += 1
            ts = t
            wire_cur = (v, t, sig)
            for k, slot in enumerate(slots):
                if slot is not None:
                    cv, cts, csig, idx = slot
                    if t - cts >= US and level(v) < level(cv):
                        voided.append(idx)
                        slots[k] = None
        else:
            t, v, sig = points[ci]
            ts = t
            k = CLAIM_SLOT.get(sig)
            if k is not None:
                slots[k] = (v, t, sig, ci)
            ci += 1
        cands = [wire_cur] + [(s[0], s[1], s[2]) if s is not None else None for s in slots]
        best = None
        for c in cands:
            if c is None:
                continue
            # max_by level, ties to the earlier time (then the later in order, as Rust's max_by keeps the last max)
            if best is None or (level(c[0]), -c[1]) >= (level(best[0]), -best[1]):
                best = c
        if best is not None:
            v, _, sig = best
            if not history or level(history[-1][1]) != level(v):
                history.append((ts, v, sig))
    return history, voided


def fuse(wire, points, n):
    """analyze::swarm::fuse with claims already as counts (ALL = every piece)."""
    history, voided = _walk(wire, points, n)
    if not voided:
        return history
    kept = [p for i, p in enumerate(points) if i not in set(voided)]
    return _walk(wire, kept, n)[0]


def completion(history, n, threshold):
    """analyze::swarm's completion rule."""
    if n is None or n <= 0:
        return None, False
    need = threshold * n
    below = None
    for ts, c in history:
        have = n if c == ALL else c
        if have < need:
            if below is None:
                below = ts
        else:
            return ts, below is not None and ts - below >= US
    return None, False


PROGRESS_OUT = T.StructType(
    [
        T.StructField(G, T.IntegerType()),
        T.StructField("info_hash", T.StringType()),
        T.StructField("peer_ip", T.StringType()),
        T.StructField("peer_port", T.IntegerType()),
        T.StructField("_fp", T.LongType()),
        T.StructField("_lp", T.LongType()),
        T.StructField("_cts", T.LongType()),
        T.StructField("_conf", T.BooleanType()),
        T.StructField("_src", T.StringType()),
    ]
)


def _val(h) -> int:
    import pandas as pd

    return ALL if h is None or pd.isna(h) else max(0, min(int(h), ALL - 1))


def _bits(hexs: str) -> List[int]:
    """Piece indices set in a bitfield (hex; MSB of byte 0 is piece 0)."""
    out = []
    for i, b in enumerate(bytes.fromhex(hexs or "")):
        for j in range(8):
            if b & (0x80 >> j):
                out.append(i * 8 + j)
    return out


def points(rows: List[dict]):
    """A peer's merged progress rows as the analysis's fusion reads them
    (docs/MERGE.md, peers 5; src/merge/entities.rs `points`, rule for
    rule): the wire points, rebuilt from the piece sets when every wire row
    names what changed (`piece`, `bitfield`), else with the counts of a
    dataset that picked the peer up mid-stream made absolute; and the claim
    points."""
    import pandas as pd

    def isnull(v):
        return v is None or (not isinstance(v, str) and pd.isna(v))

    rows = sorted(rows, key=lambda r: (r["_t"], r["_ds"]))
    claims = []
    by_ds: Dict[int, list] = {}
    for r in rows:
        c = r["cause"]
        if c in CLAIM_SLOT:
            if c == "tracker_left" and isnull(r["n_pieces_have"]):
                continue
            v = _val(r["n_pieces_have"]) if c == "tracker_left" else ALL
            claims.append((r["_t"], v, c))
        elif c in WIRE_CAUSES:
            by_ds.setdefault(r["_ds"], []).append(r)
    allw = [r for d in sorted(by_ds) for r in by_ds[d]]
    exact = all(
        (not isnull(r["piece"])) if r["cause"] in ("have", "dont_have")
        else (not isnull(r["bitfield"])) if r["cause"] == "bitfield" else True
        for r in allw
    )
    wire = []
    if exact:
        have = set()
        is_all = False
        last = None
        allw.sort(key=lambda r: (r["_t"], r["_ds"]))
        first_ds = allw[0]["_ds"] if allw else None
        last_ds = None
        for r in allw:
            c = r["cause"]
            if c == "bitfield":
                have.update(_bits(r["bitfield"]))
            elif c == "have":
                have.add(int(r["piece"]))
            elif c == "have_all":
                is_all = True
            elif c == "have_none":
                is_all = False
            elif c == "dont_have":
                is_all = False
                have.discard(int(r["piece"]))
            pt = ALL if is_all else min(len(have), ALL - 1)
            if last != pt:
                if wire and wire[-1][0] == r["_t"] and r["_ds"] != first_ds and last_ds == r["_ds"]:
                    wire[-1] = (r["_t"], pt, c)
                else:
                    wire.append((r["_t"], pt, c))
                last = pt
                last_ds = r["_ds"]
        return wire, claims
    dss = sorted((v[0]["_t"], d) for d, v in by_ds.items())
    seen = set()
    for t0, d in dss:
        v = by_ds[d]
        if v[0]["cause"] not in ("have", "dont_have"):
            for r in v:
                wire.append((r["_t"], _val(r["n_pieces_have"]), r["cause"]))
            seen.update(int(r["piece"]) for r in v if r["cause"] == "have" and not isnull(r["piece"]))
            continue
        before_t0 = [w for w in wire if w[0] <= t0]
        cur = max(before_t0, key=lambda w: w[0])[1] if before_t0 else 0
        # Rust's max_by_key keeps the last of equal keys.
        for w in before_t0:
            if w[0] == max(x[0] for x in before_t0):
                cur = w[1]
        pushed = False
        for r in v:
            before = cur
            c = r["cause"]
            if c == "have":
                p = r["piece"]
                new = isnull(p) or int(p) not in seen
                if not isnull(p):
                    seen.add(int(p))
                if new and cur != ALL:
                    cur = min(cur + 1, ALL - 1)
            elif c == "dont_have":
                if cur != ALL:
                    cur = max(cur - 1, 0)
            else:
                cur = _val(r["n_pieces_have"])
            if cur != before or c not in ("have", "dont_have"):
                if wire and wire[-1][0] == r["_t"] and pushed:
                    wire[-1] = (r["_t"], cur, c)
                else:
                    wire.append((r["_t"], cur, c))
                pushed = True
    wire.sort(key=lambda w: w[0])
    return wire, claims


def progress_fn(threshold: float):
    import pandas as pd

    def run(pdf: "pd.DataFrame") -> "pd.DataFrame":
        n = pdf["_n"].iloc[0]
        n = None if pd.isna(n) else max(int(n), 0)
        wire, claims = points(pdf.to_dict("records"))
        hist = fuse(wire, claims, n)
        cts, conf = completion([(h[0], h[1]) for h in hist], n, threshold)

        def at(c):
            return n if c == ALL else c

        if cts is not None:
            best = None
            for h in hist:
                if h[0] != cts:
                    continue
                a = at(h[1])
                if best is None or (a if a is not None else -1) >= (at(best[1]) if at(best[1]) is not None else -1):
                    best = h
            src = best[2] if best else None
        else:
            src = hist[-1][2] if hist else None
        r = pdf.iloc[0]
        return pd.DataFrame(
            [
                {
                    G: int(r[G]),
                    "info_hash": r["info_hash"],
                    "peer_ip": r["peer_ip"],
                    "peer_port": int(r["peer_port"]),
                    "_fp": at(hist[0][1]) if hist else None,
                    "_lp": at(hist[-1][1]) if hist else None,
                    "_cts": cts,
                    "_conf": bool(conf),
                    "_src": src,
                }
            ]
        ).astype({"_fp": "Int64", "_lp": "Int64", "_cts": "Int64"})

    return run


# ---------------------------------------------------------------- announce_audit replay

BLOCK = 16 * 1024
DEFAULT_INTERVAL_S = 1800
AUDIT_KEY = ["tracker_ip", "tracker_port", "transport", "info_hash", "client_ip", "peer_id"]

SERIES_OUT = T.StructType(
    [
        T.StructField(G, T.IntegerType()),
        T.StructField("info_hash", T.StringType()),
        T.StructField("client_ip", T.StringType()),
        T.StructField("peer_id", T.StringType()),
        T.StructField("tracker_ip", T.StringType()),
        T.StructField("tracker_port", T.IntegerType()),
        T.StructField("transport", T.StringType()),
        T.StructField("_first", T.LongType()),
        T.StructField("_last", T.LongType()),
        T.StructField("n_announces", T.LongType()),
        T.StructField("n_intervals", T.LongType()),
        T.StructField("started_seen", T.BooleanType()),
        T.StructField("first_uploaded", T.LongType()),
        T.StructField("last_uploaded", T.LongType()),
        T.StructField("reported_uploaded", T.LongType()),
        T.StructField("observed_uploaded", T.LongType()),
        T.StructField("reported_downloaded", T.LongType()),
        T.StructField("observed_downloaded", T.LongType()),
        T.StructField("max_upload_bps", T.DoubleType()),
        T.StructField("_backwards", T.BooleanType()),
        T.StructField("_claim_before_started", T.BooleanType()),
        T.StructField("_client_wire", T.BooleanType()),
        T.StructField("_torrent_wire", T.BooleanType()),
        T.StructField("_nobody_else", T.BooleanType()),
        T.StructField("_max_interval", T.LongType()),
        T.StructField("_max_swarm", T.LongType()),
        T.StructField("_addrs", T.ArrayType(T.StringType())),
    ]
)


def audit_fn(max_link_bps: float):
    """analyze::audit::Audit replayed over one torrent's merged events
    (docs/MERGE.md, announce_audit; src/merge/entities.rs `audit`): every
    connection with the info_hash puts its ends on the wire at its first
    packet, every piece message is a transfer, tracker/DHT/PEX peers are
    witnesses, every announce a mark (after the events of its instant).
    The unattributable bytes (opaque_*) and the flags are added in Spark."""
    import pandas as pd

    def isnull(v):
        return v is None or (not isinstance(v, str) and pd.isna(v))

    def run(pdf: "pd.DataFrame") -> "pd.DataFrame":
        # _k: 0 seen, 1 transfer, 2 learned, 3 mark; marks after events of one instant.
        pdf = pdf.assign(_o=(pdf["_k"] == 3).astype(int)).sort_values(["_t", "_o", "_k", "_i"], kind="stable")
        observed = {}  # ip -> [up, down, wire]
        witness_wire = False
        witness = []
        series = {}
        order = []
        for r in pdf.to_dict("records"):
            k = r["_k"]
            if k == 0:
                witness_wire = True
                if r["a_ip"] not in witness:
                    witness.append(r["a_ip"])
                observed.setdefault(r["a_ip"], [0, 0, False])[2] = True
            elif k == 1:
                witness_wire = True
                for ip in (r["a_ip"], r["b_ip"]):
                    if ip not in witness:
                        witness.append(ip)
                o = observed.setdefault(r["a_ip"], [0, 0, False])
                o[0] += int(r["n"])
                o[2] = True
                o = observed.setdefault(r["b_ip"], [0, 0, False])
                o[1] += int(r["n"])
                o[2] = True
            elif k == 2:
                if r["a_ip"] not in witness:
                    witness.append(r["a_ip"])
            else:
                key = (r["a_ip"], None if isnull(r["peer_id"]) else r["peer_id"], r["tracker_ip"], int(r["tracker_port"]), r["transport"])
                s = series.get(key)
                if s is None:
                    s = {"declared": [], "ann": [], "max_interval": None, "max_swarm": None}
                    series[key] = s
                    order.append(key)
                for ip in ([] if isnull(r["declared_ip"]) else [x.strip() for x in r["declared_ip"].split(",") if x.strip()][:3]):
                    if len(s["declared"]) < 3 and ip not in s["declared"]:
                        s["declared"].append(ip)
                addrs = [r["a_ip"]] + s["declared"]
                up = down = 0
                for ip in addrs:
                    o = observed.setdefault(ip, [0, 0, False])
                    up += o[0]
                    down += o[1]
                s["ann"].append((int(r["_t"]), None if isnull(r["uploaded"]) else max(int(r["uploaded"]), 0),
                                 None if isnull(r["downloaded"]) else max(int(r["downloaded"]), 0),
                                 None if isnull(r["event"]) else r["event"], up, down))
                if not isnull(r["interval"]):
                    i = int(r["interval"])
                    s["max_interval"] = i if s["max_interval"] is None else max(s["max_interval"], i)
                if not isnull(r["seeders"]) or not isnull(r["leechers"]):
                    n = (0 if isnull(r["seeders"]) else int(r["seeders"])) + (0 if isnull(r["leechers"]) else int(r["leechers"]))
                    s["max_swarm"] = n if s["max_swarm"] is None else max(s["max_swarm"], n)
        out = []
        g = int(pdf[G].iloc[0])
        ih = pdf["info_hash"].iloc[0]
        for key in order:
            s = series[key]
            ann = s["ann"]
            addrs = [key[0]] + s["declared"]
            n_int = 0
            rep_up = rep_down = None
            obs_up = obs_down = 0
            back = False
            max_bps = None
            for p, q in zip(ann, ann[1:]):
                if q[3] == "started":
                    continue
                n_int += 1
                obs_up += max(q[4] - p[4], 0)
                obs_down += max(q[5] - p[5], 0)
                if p[1] is not None and q[1] is not None:
                    back |= q[1] < p[1]
                    inc = max(q[1] - p[1], 0)
                    rep_up = (rep_up or 0) + inc
                    dur = q[0] - p[0]
                    if dur >= US and inc > 0:
                        bps = inc / (dur / 1e6)
                        max_bps = bps if max_bps is None else max(max_bps, bps)
                if p[2] is not None and q[2] is not None:
                    back |= q[2] < p[2]
                    rep_down = (rep_down or 0) + max(q[2] - p[2], 0)
            started = False
            before = False
            for a in ann:
                started |= a[3] == "started"
                if not started and a[1] is not None and a[1] > 0:
                    before = True
            client_wire = any(observed.get(ip, [0, 0, False])[2] for ip in addrs)
            nobody = all(ip in addrs for ip in witness)
            out.append({
                G: g, "info_hash": ih, "client_ip": key[0], "peer_id": key[1], "tracker_ip": key[2],
                "tracker_port": key[3], "transport": key[4], "_first": ann[0][0], "_last": ann[-1][0],
                "n_announces": len(ann), "n_intervals": n_int, "started_seen": started,
                "first_uploaded": ann[0][1], "last_uploaded": ann[-1][1], "reported_uploaded": rep_up,
                "observed_uploaded": obs_up, "reported_downloaded": rep_down, "observed_downloaded": obs_down,
                "max_upload_bps": max_bps, "_backwards": back, "_claim_before_started": before,
                "_client_wire": client_wire, "_torrent_wire": witness_wire, "_nobody_else": nobody,
                "_max_interval": s["max_interval"], "_max_swarm": s["max_swarm"], "_addrs": addrs,
            })
        cols = [f.name for f in SERIES_OUT.fields]
        df = pd.DataFrame(out, columns=cols)
        for c in ("first_uploaded", "last_uploaded", "reported_uploaded", "reported_downloaded", "_max_interval",
                  "_max_swarm"):
            df[c] = df[c].astype("Int64")
        return df

    return run


def audit(spark, conns, flows, ev, caps, max_link_bps: float) -> DataFrame:
    """announce_audit recomputed over the whole series (see audit_fn)."""
    cols = ["_k", "_t", "_i", "info_hash", "a_ip", "b_ip", "n", "peer_id", "tracker_ip", "tracker_port", "transport",
            "declared_ip", "uploaded", "downloaded", "event", "interval", "seeders", "leechers"]

    def shape(df, **kw):
        for c in cols:
            if c not in kw:
                kw[c] = F.lit(None)
        types = {"_k": "int", "_t": "long", "_i": "long", "n": "long", "tracker_port": "int", "uploaded": "long",
                 "downloaded": "long", "interval": "long", "seeders": "long", "leechers": "long"}
        return df.select(F.col(G), *[kw[c].cast(types.get(c, "string")).alias(c) for c in cols])

    ci = conns.where("info_hash is not null")
    seen = shape(ci, _k=F.lit(0), _t=F.unix_micros("first_ts"), _i=F.col("conn_id"), info_hash=F.col("info_hash"),
                 a_ip=F.col("orig_ip")).unionByName(
        shape(ci, _k=F.lit(0), _t=F.unix_micros("first_ts"), _i=F.col("conn_id"), info_hash=F.col("info_hash"),
              a_ip=F.col("resp_ip")))
    pm = ev["peer_messages"].where("msg = 'piece' and info_hash is not null")
    tr = shape(pm, _k=F.lit(1), _t=F.unix_micros("ts"), _i=F.col("frame"), info_hash=F.col("info_hash"),
               a_ip=F.col("src_ip"), b_ip=F.col("dst_ip"), n=F.greatest(F.col("length"), F.lit(0)))
    parts = [seen, tr]
    for name in ("tracker_peers", "dht_peers", "pex_peers"):
        if name in ev:
            d = ev[name].where("info_hash is not null")
            parts.append(shape(d, _k=F.lit(2), _t=F.unix_micros("ts"), _i=F.lit(0), info_hash=F.col("info_hash"),
                               a_ip=F.col("peer_ip")))
    an = ev["tracker_announces"].where("info_hash is not null")
    parts.append(shape(an, _k=F.lit(3), _t=F.unix_micros("ts"), _i=F.col("frame"), info_hash=F.col("info_hash"),
                       a_ip=F.col("client_ip"), peer_id=F.col("peer_id"), tracker_ip=F.col("tracker_ip"),
                       tracker_port=F.col("tracker_port"), transport=F.col("transport"),
                       declared_ip=F.col("declared_ip") if "declared_ip" in an.columns else F.lit(None),
                       uploaded=F.col("uploaded"), downloaded=F.col("downloaded"), event=F.col("event"),
                       interval=F.col("interval"), seeders=F.col("seeders"), leechers=F.col("leechers")))
    items = parts[0]
    for p in parts[1:]:
        items = items.unionByName(p)
    # Only torrents somebody announced.
    items = items.join(an.select(G, "info_hash").distinct(), [G, "info_hash"], "left_semi")
    series = _cut(items.groupBy(G, "info_hash").applyInPandas(audit_fn(max_link_bps), SERIES_OUT))

    # Unattributable bytes per address (Audit::observe_rows), then per series.
    fl = flows.where("proto = 'tcp' and app in ('other', 'mse')").select(
        G, "orig_ip", "resp_ip", "first_ts", "last_ts", F.col("payload_bytes_orig").alias("_o"),
        F.col("payload_bytes_resp").alias("_r"))
    enc = F.coalesce(F.col("encrypted"), F.lit(False))
    cn = conns.where((enc & (F.col("transport") != "tcp")) | (~enc & F.col("info_hash").isNull())).select(
        G, "orig_ip", "resp_ip", "first_ts", "last_ts",
        F.when(enc, F.col("payload_bytes_orig")).otherwise(F.col("piece_bytes_orig")).alias("_o"),
        F.when(enc, F.col("payload_bytes_resp")).otherwise(F.col("piece_bytes_resp")).alias("_r"))
    sp = fl.unionByName(cn).where("_o + _r > 0")
    spans = sp.select(G, F.col("orig_ip").alias("_ip"), F.unix_micros("first_ts").alias("_f"),
                      F.unix_micros("last_ts").alias("_l"), F.col("_o").alias("_s"), F.col("_r").alias("_rv")) \
        .unionByName(sp.select(G, F.col("resp_ip").alias("_ip"), F.unix_micros("first_ts").alias("_f"),
                               F.unix_micros("last_ts").alias("_l"), F.col("_r").alias("_s"), F.col("_o").alias("_rv")))
    skey = [G] + AUDIT_KEY
    ex = series.select(*skey, "_first", "_last", F.explode("_addrs").alias("_ip"))
    op = ex.join(spans, [G, "_ip"]).where((F.col("_l") >= F.col("_first")) & (F.col("_f") <= F.col("_last"))) \
        .groupBy(*skey).agg(F.sum("_s").alias("opaque_sent_bytes"), F.sum("_rv").alias("opaque_received_bytes"))
    t0 = caps.groupBy(G).agg(F.min(F.unix_micros("first_ts")).alias("_t0"))
    sens = ev["tracker_announces"].groupBy(*skey).agg(sensor_set(F.collect_list("sensor")).alias("sensor"))
    a = series.join(op, skey, "left").fillna(0, ["opaque_sent_bytes", "opaque_received_bytes"]) \
        .join(t0, G, "left").join(sens, skey, "left")
    seen_b = F.col("observed_uploaded") + F.col("opaque_sent_bytes")
    tol = F.greatest(F.ceil(seen_b * 0.10).cast("long"), F.lit(2 * BLOCK) * F.col("n_intervals"))
    cov = F.when(F.col("_client_wire") | (F.col("opaque_sent_bytes") + F.col("opaque_received_bytes") > 0), "client") \
        .when(F.col("_torrent_wire"), "swarm").otherwise("none")
    a = a.withColumn("tolerance_bytes", tol).withColumn("coverage", cov)
    rep = F.coalesce(F.col("reported_uploaded"), F.lit(0))
    iv = F.greatest(F.coalesce(F.col("_max_interval"), F.lit(DEFAULT_INTERVAL_S)), F.lit(1)) * US
    flags = F.array(
        F.when(F.col("_claim_before_started") & F.col("_t0").isNotNull() & (F.col("_first") - F.col("_t0") >= iv),
               F.lit("upload_without_started")),
        F.when(F.col("_backwards"), F.lit("counters_backwards")),
        F.when((rep > 0) & F.col("_nobody_else") & (F.col("_max_swarm").isNull() | (F.col("_max_swarm") <= 1)),
               F.lit("upload_without_peers")),
        F.when((F.col("coverage") == "client") & (rep > seen_b + F.col("tolerance_bytes")), F.lit("upload_above_wire")),
        F.when(F.coalesce(F.col("max_upload_bps") > max_link_bps, F.lit(False)), F.lit("upload_rate_above_link")),
        F.when(F.col("coverage").isin("client", "swarm") & (F.col("observed_uploaded") == 0)
               & (F.col("opaque_sent_bytes") == 0) & (rep > F.col("tolerance_bytes")), F.lit("upload_not_on_wire")),
    )
    a = a.withColumn("flags", F.filter(flags, lambda x: x.isNotNull()))
    a = a.withColumn("suspicious", F.size("flags") > 0) \
        .withColumn("excess_uploaded", F.when(F.col("reported_uploaded").isNotNull(),
                                              F.col("reported_uploaded") - seen_b)) \
        .withColumn("first_ts", F.timestamp_micros("_first")).withColumn("last_ts", F.timestamp_micros("_last"))
    return a


def ephemeral_renames(peers: DataFrame, conns: DataFrame) -> DataFrame:
    """docs/MERGE.md peers 1 (src/merge/entities.rs `ephemeral_renames`): a
    peer a piece met only as the originator of connections without its
    listen port is keyed there by an ephemeral source port; where the
    address has exactly one listen endpoint for the torrent and the peer ids
    agree (equal, or the same 8-byte client prefix, or none), such rows join
    it. Returns (_set, info_hash, peer_ip, peer_port) -> _to."""
    k = [G, "info_hash", "peer_ip", "peer_port"]
    pk = peers.select(*k, "peer_id", "sources")
    lc1 = conns.where("info_hash is not null and resp_peer_port is not null").select(
        G, "info_hash", F.col("resp_ip").alias("peer_ip"), F.col("resp_peer_port").alias("peer_port"))
    lc2 = conns.where("info_hash is not null and orig_peer_port is not null and orig_peer_port != orig_port").select(
        G, "info_hash", F.col("orig_ip").alias("peer_ip"), F.col("orig_peer_port").alias("peer_port"))
    lp = pk.where(F.exists("sources", lambda x: ~x.isin("wire", "pex"))).select(*k)
    listen = lc1.unionByName(lc2).unionByName(lp).distinct().withColumn("_L", F.lit(True))
    pl = pk.join(listen, k, "left")
    one = pl.where("_L").groupBy(G, "info_hash", "peer_ip").agg(
        F.collect_set("peer_port").alias("_ports"), F.collect_set("peer_id").alias("_tpids"))
    one = one.where(F.size("_ports") == 1).select(G, "info_hash", "peer_ip", F.col("_ports")[0].alias("_target"), "_tpids")
    cand = pl.where("_L is null").join(one, [G, "info_hash", "peer_ip"]).where(F.col("peer_port") != F.col("_target"))
    same = F.col("peer_id").isNull() | F.exists(
        "_tpids", lambda b: (b == F.col("peer_id")) | (F.substring(b, 1, 16) == F.substring(F.col("peer_id"), 1, 16)))
    return cand.where(same).select(*k, F.col("_target").alias("_to")).dropDuplicates(k)


# ---------------------------------------------------------------- the merge

def merge(
    spark: SparkSession,
    sets: Sequence[Sequence[str]],
    tolerance_s: float = 2.0,
    join_gap_s: float = 120.0,
    threshold: float = 0.98,
    max_link_bps: float = 10e9 / 8,
) -> Dict[str, DataFrame]:
    """Merged tables of every group in `sets` (each a list of dataset paths),
    with the `_set` column telling the groups apart."""
    if __name__ != "__main__":
        # Workers unpickle the progress fusion by reference to this module.
        # (A copy: the file may change while a long job runs.)
        import shutil
        import tempfile

        d = tempfile.mkdtemp(prefix="swarmtap-merge-")
        shutil.copy(os.path.abspath(__file__), os.path.join(d, "merge.py"))
        spark.sparkContext.addPyFile(os.path.join(d, "merge.py"))
    tol = int(round(tolerance_s * US))
    gap = int(round(join_gap_s * US))
    raw = read_sets(spark, sets)
    cs = raw["capture_stats"]

    # 0. Order, capture offsets (collected: one row per dataset).
    per_ds = cs.groupBy(G, "_ds").agg(F.min("first_ts").alias("_t0"), F.count(F.lit(1)).alias("_n"),
                                      F.collect_set("sensor").alias("_sens")).collect()
    bases = []
    sensors: Dict[int, set] = {}
    by_set: Dict[int, list] = {}
    for r in per_ds:
        by_set.setdefault(r[G], []).append(r)
        sensors.setdefault(r[G], set()).update(x for s in r["_sens"] for x in s.split(","))
    for s, rows in by_set.items():
        rows.sort(key=lambda r: (r["_t0"] is None, r["_t0"], r["_ds"]))
        b = 0
        for r in rows:
            bases.append((s, r["_ds"], b))
            b += r["_n"]
    basedf = F.broadcast(spark.createDataFrame(bases, f"{G} int, _ds int, _base long"))
    multi = F.broadcast(spark.createDataFrame([(s, len(v) > 1) for s, v in sensors.items()] or [(0, False)],
                                              f"{G} int, _multi boolean"))

    def based(df: DataFrame) -> DataFrame:
        df = df.join(basedf, [G, "_ds"], "left").fillna(0, ["_base"])
        for c in ("conn_id", "flow_id"):
            if c in df.columns:
                df = df.withColumn(c, rebase(F.col(c)))
        if "conn_ids" in df.columns:
            df = df.withColumn("conn_ids", F.transform("conn_ids", lambda x: F.shiftleft(F.shiftright(x, 40) + F.col("_base"), 40).bitwiseOR(x.bitwiseAND(F.lit(LOW40)))))
        return df.drop("_base")

    # Materialised where a table feeds several steps.
    reused = {"flows", "connections", "capture_stats", "peers", "torrents"}
    t = {k: _cut(based(v)) if k in reused else based(v) for k, v in raw.items()}

    # 2. Flows and connections.
    flows = join_pieces(t["flows"], "flows", gap, None)
    flows, fseg = combine_segments(flows, "flows")
    flows, fseg = _cut(flows), _cut(fseg)
    flows, fseg2 = dedupe_sensors(flows, "flows", tol)
    flows, fseg2 = _cut(flows), _cut(fseg2)
    flow_end = t["flows"].select(G, "_ds", F.col("conn_id").alias("flow_id"), F.col("end_reason").alias("_end"))
    conns = join_pieces(t["connections"], "connections", gap, flow_end)
    conns_j = _cut(conns)
    conns, cseg = combine_segments(conns_j, "connections")
    conns, cseg = _cut(conns), _cut(cseg)
    conns, cseg2 = dedupe_sensors(conns, "connections", tol)
    cseg2 = _cut(cseg2)

    def chain(seg1: DataFrame, seg2: DataFrame) -> DataFrame:
        s2 = seg2.select(G, F.col("_old_ds").alias("_ds0"), F.col("_old_id").alias("_id0"),
                         F.col("_id0").alias("_final"))
        return seg1.join(s2, [G, "_ds0", "_id0"], "left").select(
            G, F.col("_old_ds").alias("_ds"), F.col("_old_id").alias("_old"), F.coalesce("_final", "_id0").alias("_new"))

    fmap = chain(fseg, fseg2)
    cmap = chain(cseg, cseg2)
    idmap = _cut(cmap.unionByName(fmap.join(cmap.select(G, "_ds", "_old"), [G, "_ds", "_old"], "left_anti")))

    def remap(df: DataFrame, col: str = "conn_id", m: Optional[DataFrame] = None) -> DataFrame:
        m = (idmap if m is None else m).withColumnRenamed("_old", col)
        return df.join(m, [G, "_ds", col], "left").withColumn(col, F.coalesce("_new", col)).drop("_new")

    flows = flows.drop("_ds")
    conns = remap(conns, "flow_id", fmap).drop("_ds")
    # A TCP connection spans its joined flow: a later piece may hold only
    # the flow's last packets (a FIN) with no connection row of its own.
    fspan = flows.select(G, F.col("conn_id").alias("flow_id"), F.col("first_ts").alias("_ff"),
                         F.col("last_ts").alias("_fl"))
    tcp = F.col("transport") == "tcp"
    conns = _cut(conns.join(fspan, [G, "flow_id"], "left")
                 .withColumn("first_ts", F.when(tcp & F.col("_ff").isNotNull(), F.least("first_ts", "_ff")).otherwise(F.col("first_ts")))
                 .withColumn("last_ts", F.when(tcp & F.col("_fl").isNotNull(), F.greatest("last_ts", "_fl")).otherwise(F.col("last_ts")))
                 .drop("_ff", "_fl"))

    # 3.1 Peer renames: a later piece's end port differing from the first piece's.
    c2 = conns_j.withColumn("_op", F.when(F.col("_rev"), F.col("resp_peer_port")).otherwise(F.col("orig_peer_port"))) \
        .withColumn("_rp", F.when(F.col("_rev"), F.col("orig_peer_port")).otherwise(F.col("resp_peer_port")))
    gw = Window.partitionBy(G, "sensor", "transport", "community_id", "_grp").orderBy("first_ts", "_ds", "conn_id") \
        .rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    c2 = c2.withColumn("_op0", F.first("_op", ignorenulls=True).over(gw)).withColumn("_rp0", F.first("_rp", ignorenulls=True).over(gw))
    rn1 = c2.where("_op is not null and _op0 is not null and _op != _op0 and info_hash is not null").select(
        G, "_ds", "info_hash", F.when(F.col("_rev"), F.col("resp_ip")).otherwise(F.col("orig_ip")).alias("peer_ip"),
        F.col("_op").alias("peer_port"), F.col("_op0").alias("_to"))
    rn2 = c2.where("_rp is not null and _rp0 is not null and _rp != _rp0 and info_hash is not null").select(
        G, "_ds", "info_hash", F.when(F.col("_rev"), F.col("orig_ip")).otherwise(F.col("resp_ip")).alias("peer_ip"),
        F.col("_rp").alias("peer_port"), F.col("_rp0").alias("_to"))
    renames = F.broadcast(_cut(rn1.unionByName(rn2).dropDuplicates([G, "_ds", "info_hash", "peer_ip", "peer_port"])))

    def rename(df: DataFrame) -> DataFrame:
        return df.join(renames, [G, "_ds", "info_hash", "peer_ip", "peer_port"], "left") \
            .withColumn("peer_port", F.coalesce("_to", "peer_port")).drop("_to")

    # 1. Event tables.
    ev = {}
    for name in EVENT_KEYS:
        if name not in t:
            continue
        df = t[name]
        if "conn_id" in df.columns:
            df = remap(df)
        df = dedupe_events(df, name, tol, multi)
        ev[name] = _cut(df) if name in ("peer_progress", "peer_messages", "tracker_announces", "dht_messages") else df
    caps = t["capture_stats"]

    # Torrents: metadata from the best dataset, counts recomputed below.
    tor = t["torrents"]
    pref = F.when(F.col("metadata_source") == "torrent_file", 0).when(F.col("metadata_source") == "ut_metadata", 1).otherwise(2)
    nsrc = F.when(F.col("n_pieces_source").isin("torrent_file", "ut_metadata"), 0).otherwise(1)
    tw = Window.partitionBy(G, "info_hash")
    tor = (
        tor.withColumn("_pref", pref)
        .withColumn("_np", F.first(F.struct("n_pieces", "n_pieces_source")).over(
            tw.orderBy(nsrc, F.col("n_pieces").desc_nulls_last()).rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)))
        .withColumn("_ft", F.min("first_ts").over(tw)).withColumn("_lt", F.max("last_ts").over(tw))
        .withColumn("_sens", sensor_set(F.collect_list("sensor").over(tw)))
        .withColumn("_rk", F.row_number().over(tw.orderBy("_pref", "_ds")))
        .where("_rk = 1")
        .withColumn("n_pieces", F.col("_np.n_pieces")).withColumn("n_pieces_source", F.col("_np.n_pieces_source"))
        .withColumn("first_ts", F.col("_ft")).withColumn("last_ts", F.col("_lt")).withColumn("sensor", F.col("_sens"))
        .drop("_pref", "_np", "_ft", "_lt", "_sens", "_rk", "_ds")
    )
    tor = _cut(tor)

    # 3. Peers.
    peers = rename(t["peers"])
    eph = F.broadcast(_cut(ephemeral_renames(peers, conns)))

    def eph_apply(df: DataFrame, ip: str = "peer_ip", port: str = "peer_port") -> DataFrame:
        m = eph.withColumnRenamed("peer_ip", ip).withColumnRenamed("peer_port", port)
        return df.join(m, [G, "info_hash", ip, port], "left").withColumn(port, F.coalesce("_to", port)).drop("_to")

    peers = eph_apply(peers)
    conns = _cut(eph_apply(eph_apply(conns, "orig_ip", "orig_peer_port"), "resp_ip", "resp_peer_port"))
    pw = Window.partitionBy(G, "info_hash", "peer_ip", "peer_port")
    pall = pw.orderBy("last_ts").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)

    def tri(c):  # true if any true, else false if any false, else null
        return F.when(F.max(F.col(c).cast("int")).over(pw) == 1, True).when(F.min(F.col(c).cast("int")).over(pw) == 0, False)

    peers = (
        peers.withColumn("_ft", F.min("first_ts").over(pw)).withColumn("_lt", F.max("last_ts").over(pw))
        .withColumn("peer_id", F.last("peer_id", ignorenulls=True).over(pall))
        .withColumn("client", F.last("client", ignorenulls=True).over(pall))
        .withColumn("_fp0", F.first("first_pieces").over(pw.orderBy("first_ts").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)))
        .withColumn("_lp0", F.last("last_pieces").over(pall))
        .withColumn("_src0", F.last("completion_source").over(pall))
        .withColumn("_cts0", F.min("completed_ts").over(pw))
        .withColumn("_conf0", F.max(F.col("confirmed_download").cast("int")).over(pw) == 1)
        .withColumn("sources", F.array_sort(F.array_distinct(F.flatten(F.collect_list("sources").over(pw)))))
        .withColumn("_ids", F.array_distinct(F.flatten(F.collect_list("conn_ids").over(pw))))
        .withColumn("prefers_encryption", tri("prefers_encryption"))
        .withColumn("utp", tri("utp"))
        .withColumn("max_rate_bps", F.max("max_rate_bps").over(pw))
        .withColumn("max_upload_rate_bps", F.max("max_upload_rate_bps").over(pw))
        .withColumn("_sens", sensor_set(F.collect_list("sensor").over(pw)))
    )
    for c in ("country", "city", "latitude", "longitude", "asn", "as_org"):
        if c in peers.columns:
            peers = peers.withColumn(c, F.first(c, ignorenulls=True).over(pall))
    peers = peers.withColumn("_rk", F.row_number().over(pw.orderBy("first_ts", "_ds"))).where("_rk = 1") \
        .withColumn("first_ts", F.col("_ft")).withColumn("last_ts", F.col("_lt")).withColumn("sensor", F.col("_sens")) \
        .drop("_ft", "_lt", "_sens", "_rk")
    # Map conn_ids (rebased) to merged ids.
    ids = peers.select(G, "_ds", "info_hash", "peer_ip", "peer_port", F.explode("_ids").alias("conn_id"))
    # conn_ids lists were collected over several datasets: map through every dataset's ids.
    ids = ids.join(idmap.withColumnRenamed("_old", "conn_id").drop("_ds"), [G, "conn_id"], "left") \
        .withColumn("conn_id", F.coalesce("_new", "conn_id")).drop("_new").drop("_ds").distinct()
    cside = conns.select(G, "conn_id", "orig_ip", "orig_peer_port", "resp_ip", "resp_peer_port", "encrypted",
                         "piece_bytes_orig", "piece_bytes_resp", "payload_bytes_orig", "payload_bytes_resp")
    pc = ids.join(cside, [G, "conn_id"], "left")
    # Which end the peer is (src/merge/entities.rs ConnInfo::side).
    oside = F.coalesce((F.col("orig_ip") == F.col("peer_ip")) & (F.col("orig_peer_port") == F.col("peer_port")), F.lit(False))
    rside = F.coalesce((F.col("resp_ip") == F.col("peer_ip")) & (F.col("resp_peer_port") == F.col("peer_port")), F.lit(False))
    oip = F.coalesce(F.col("orig_ip") == F.col("peer_ip"), F.lit(False))
    rip = F.coalesce(F.col("resp_ip") == F.col("peer_ip"), F.lit(False))
    is_orig = oside | (~rside & oip & ~rip)
    side_ok = oside | rside | (oip != rip)
    sent = F.when(is_orig, F.col("piece_bytes_orig")).otherwise(F.col("piece_bytes_resp"))
    recv = F.when(is_orig, F.col("piece_bytes_resp")).otherwise(F.col("piece_bytes_orig"))
    esent = F.when(is_orig, F.col("payload_bytes_orig")).otherwise(F.col("payload_bytes_resp"))
    erecv = F.when(is_orig, F.col("payload_bytes_resp")).otherwise(F.col("payload_bytes_orig"))
    enc = F.coalesce(F.col("encrypted"), F.lit(False))
    plain, encd = side_ok & ~enc, side_ok & enc
    pbytes = pc.groupBy(G, "info_hash", "peer_ip", "peer_port").agg(
        F.sum(F.when(plain, sent).otherwise(0)).alias("_up"),
        F.sum(F.when(plain, recv).otherwise(0)).alias("_down"),
        F.sum(F.when(encd, esent).otherwise(0)).alias("_esent"),
        F.sum(F.when(encd, erecv).otherwise(0)).alias("_erecv"),
        F.count(F.lit(1)).alias("_nc"),
        F.array_sort(F.collect_list("conn_id")).alias("_cids"),
    )
    # Progress fusion over the merged peer_progress rows.
    tn = tor.select(G, "info_hash", F.col("n_pieces").alias("_n"))
    pp = ev["peer_progress"]
    for c in ("piece", "bitfield"):
        if c not in pp.columns:
            pp = pp.withColumn(c, F.lit(None).cast("long" if c == "piece" else "string"))
    # A row keyed by its connection's source port goes to the peer the
    # connection names (its listen port), then through the renames.
    cp = conns.select(G, "conn_id", F.col("orig_ip").alias("_oi"), F.col("orig_port").alias("_op"),
                      F.col("orig_peer_port").alias("_opp"), F.col("resp_ip").alias("_ri"),
                      F.col("resp_port").alias("_rp"), F.col("resp_peer_port").alias("_rpp"))
    pp = pp.join(cp, [G, "conn_id"], "left").withColumn(
        "peer_port",
        F.when((F.col("_oi") == F.col("peer_ip")) & (F.col("_op") == F.col("peer_port")),
               F.coalesce("_opp", "peer_port"))
        .when((F.col("_ri") == F.col("peer_ip")) & (F.col("_rp") == F.col("peer_port")),
              F.coalesce("_rpp", "peer_port"))
        .otherwise(F.col("peer_port")))
    pp = eph_apply(rename(pp)).select(G, "_ds", "info_hash", "peer_ip", "peer_port", "cause", "n_pieces_have", "piece",
                           "bitfield", F.unix_micros("ts").alias("_t")).join(tn, [G, "info_hash"], "left")
    fused = pp.groupBy(G, "info_hash", "peer_ip", "peer_port").applyInPandas(progress_fn(threshold), PROGRESS_OUT)
    peers = peers.join(pbytes, [G, "info_hash", "peer_ip", "peer_port"], "left") \
        .join(fused, [G, "info_hash", "peer_ip", "peer_port"], "left").join(tn, [G, "info_hash"], "left")
    has = F.col("_src").isNotNull() | F.col("_fp").isNotNull()
    peers = (
        peers.withColumn("uploaded_bytes", F.coalesce("_up", F.lit(0)).cast("long"))
        .withColumn("downloaded_bytes", F.coalesce("_down", F.lit(0)).cast("long"))
        .withColumn("encrypted_bytes_sent", F.coalesce("_esent", F.lit(0)).cast("long"))
        .withColumn("encrypted_bytes_received", F.coalesce("_erecv", F.lit(0)).cast("long"))
        .withColumn("n_connections", F.coalesce("_nc", F.lit(0)).cast("long"))
        .withColumn("conn_ids", F.coalesce("_cids", F.array().cast("array<long>")))
        .withColumn("n_pieces", F.col("_n"))
        .withColumn("first_pieces", F.when(has, F.col("_fp")).otherwise(F.col("_fp0")))
        .withColumn("last_pieces", F.when(has, F.col("_lp")).otherwise(F.col("_lp0")))
        .withColumn("completed_ts", F.when(has, F.timestamp_micros("_cts")).otherwise(F.col("_cts0")))
        .withColumn("confirmed_download", F.when(has, F.coalesce("_conf", F.lit(False))).otherwise(F.col("_conf0")))
        .withColumn("completion_source", F.when(has, F.col("_src")).otherwise(F.col("_src0")))
    )
    peers = _cut(peers.select(*[c for c in peers.columns if not c.startswith("_") or c == G]))

    # Torrents: counts from the merged peers, connections and pieces.
    pt = peers.groupBy(G, "info_hash").agg(
        F.count(F.lit(1)).alias("n_peers"),
        F.sum(F.col("confirmed_download").cast("long")).alias("n_confirmed_downloads"),
        F.sum(F.col("prefers_encryption").isNotNull().cast("long")).alias("n_peers_encryption_known"),
        F.sum(F.coalesce(F.col("prefers_encryption"), F.lit(False)).cast("long")).alias("n_peers_prefer_encryption"),
        F.sum(F.col("utp").isNotNull().cast("long")).alias("n_peers_utp_known"),
        F.sum(F.coalesce(F.col("utp"), F.lit(False)).cast("long")).alias("n_peers_utp"),
    )
    ct = conns.where("info_hash is not null").groupBy(G, "info_hash").agg(
        F.sum(F.col("piece_bytes_orig") + F.col("piece_bytes_resp")).alias("piece_bytes"))
    pv = ev["pieces"].groupBy(G, "info_hash").agg(
        F.sum(F.col("verified").cast("long")).alias("n_pieces_verified"),
        F.sum((~F.col("verified")).cast("long")).alias("n_pieces_failed"))
    recount = ["n_peers", "n_confirmed_downloads", "n_peers_encryption_known", "n_peers_prefer_encryption",
               "n_peers_utp_known", "n_peers_utp", "piece_bytes", "n_pieces_verified", "n_pieces_failed"]
    tcols = tor.columns
    tor = tor.drop(*recount).join(pt, [G, "info_hash"], "left").join(ct, [G, "info_hash"], "left") \
        .join(pv, [G, "info_hash"], "left").fillna(0, recount).select(*tcols)

    # announce_audit: replayed over the merged events; without any piece
    # message rows (--no-messages inputs) the datasets' rows are combined.
    acols = [c for c in t["announce_audit"].columns if c != "_ds"]
    if ev["peer_messages"].limit(1).count() > 0 or t["announce_audit"].limit(1).count() == 0:
        au = audit(spark, conns, flows, ev, caps, max_link_bps)
        for c in acols:
            if c not in au.columns:
                au = au.withColumn(c, F.lit(None))
        au = au.select(*acols)
    else:
        au = combine_audit(t["announce_audit"], acols)

    # dht_nodes, dht_infohashes.
    dm = ev["dht_messages"]
    nodes = t["dht_nodes"]
    nk = [G, "node_id", "node_ip", "node_port"]
    nw = Window.partitionBy(*nk)
    ncols = nodes.columns
    rep = nodes.groupBy(*(nk + ["sensor"])).agg(F.sum("n_reported").alias("_r")).groupBy(*nk).agg(F.max("_r").alias("_rep"))
    cnt = dm.where("node_id is not null").groupBy(G, F.col("node_id"), F.col("src_ip").alias("node_ip"),
                                                  F.col("src_port").alias("node_port")).agg(
        F.sum((F.col("kind") == "query").cast("long")).alias("_q"),
        F.sum((F.col("kind") == "response").cast("long")).alias("_r2"),
        F.sum((F.col("kind") == "error").cast("long")).alias("_e"))
    nodes = (
        nodes.withColumn("_ft", F.min("first_ts").over(nw)).withColumn("_lt", F.max("last_ts").over(nw))
        .withColumn("version", F.last("version", ignorenulls=True).over(nw.orderBy("last_ts").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)))
        .withColumn("version_raw", F.last("version_raw", ignorenulls=True).over(nw.orderBy("last_ts").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)))
        .withColumn("bep42_valid", F.max(F.col("bep42_valid").cast("int")).over(nw) == 1)
        .withColumn("bep42_exempt", F.max(F.col("bep42_exempt").cast("int")).over(nw) == 1)
        .withColumn("read_only", F.max(F.col("read_only").cast("int")).over(nw) == 1)
        .withColumn("_sens", sensor_set(F.collect_list("sensor").over(nw)))
        .withColumn("_rk", F.row_number().over(nw.orderBy("first_ts", "_ds"))).where("_rk = 1")
        .withColumn("first_ts", F.col("_ft")).withColumn("last_ts", F.col("_lt")).withColumn("sensor", F.col("_sens"))
        .join(rep, nk, "left").join(cnt, nk, "left").fillna(0, ["_q", "_r2", "_e"])
        .withColumn("n_queries", F.col("_q")).withColumn("n_responses", F.col("_r2")).withColumn("n_errors", F.col("_e"))
        .withColumn("n_messages", F.col("_q") + F.col("_r2") + F.col("_e")).withColumn("n_reported", F.col("_rep"))
        .select(*[c for c in ncols if c != "_ds"])
    )
    ih = t["dht_infohashes"]
    ik = [G, "info_hash"]
    iw = Window.partitionBy(*ik)
    icols = ih.columns
    isum = ih.groupBy(*(ik + ["sensor"])).agg(F.sum("n_values").alias("_v"), F.sum("n_samples").alias("_s")) \
        .groupBy(*ik).agg(F.max("_v").alias("_v"), F.max("_s").alias("_s"))
    icnt = dm.where("kind = 'query' and info_hash is not null").groupBy(G, "info_hash").agg(
        F.sum((F.col("method") == "get_peers").cast("long")).alias("_g"),
        F.sum((F.col("method") == "announce_peer").cast("long")).alias("_a"))
    ih = (
        ih.withColumn("_ft", F.min("first_ts").over(iw)).withColumn("_lt", F.max("last_ts").over(iw))
        .withColumn("name", F.first("name", ignorenulls=True).over(iw.orderBy("first_ts").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)))
        .withColumn("_sens", sensor_set(F.collect_list("sensor").over(iw)))
        .withColumn("_rk", F.row_number().over(iw.orderBy("first_ts", "_ds"))).where("_rk = 1")
        .withColumn("first_ts", F.col("_ft")).withColumn("last_ts", F.col("_lt")).withColumn("sensor", F.col("_sens"))
        .join(isum, ik, "left").join(icnt, ik, "left").fillna(0, ["_g", "_a"])
        .withColumn("n_get_peers", F.col("_g")).withColumn("n_announce_peer", F.col("_a"))
        .withColumn("n_values", F.col("_v")).withColumn("n_samples", F.col("_s"))
        .select(*[c for c in icols if c != "_ds"])
    )

    out = {
        "flows": flows,
        "connections": conns,
        "peers": peers,
        "torrents": tor,
        "announce_audit": au,
        "dht_nodes": nodes,
        "dht_infohashes": ih,
        "capture_stats": caps.drop("_ds"),
    }
    for name, df in ev.items():
        out[name] = df.drop("_ds")
    # Column order and types of the inputs.
    for name, df in list(out.items()):
        src = raw[name]
        want = [c for c in src.columns if c not in ("_ds", "interval_start", "date", "hour") or
                (name == "capture_stats" and c == "interval_start")]
        types = dict(src.dtypes)
        out[name] = df.select(*[F.col(c).cast(types[c]) if c != G else F.col(c) for c in want])
    return out


def combine_audit(au: DataFrame, acols: List[str]) -> DataFrame:
    """The datasets' announce_audit rows combined per series (MERGE.md's
    rule for inputs without peer_messages)."""
    akey = [G, "tracker_ip", "tracker_port", "transport", "info_hash", "client_ip", "peer_id"]
    aw = Window.partitionBy(*akey)
    aall = aw.orderBy("first_ts", "_ds").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    au = au.withColumn("_pid", F.coalesce("peer_id", F.lit("")))
    aw = Window.partitionBy(*[c if c != "peer_id" else "_pid" for c in akey])
    aall = aw.orderBy("first_ts", "_ds").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    sums = ["n_announces", "n_intervals", "reported_uploaded", "observed_uploaded", "opaque_sent_bytes",
            "reported_downloaded", "observed_downloaded", "opaque_received_bytes", "tolerance_bytes", "excess_uploaded"]
    for c in sums:
        au = au.withColumn(c, F.sum(c).over(aw))
    au = (
        au.withColumn("first_uploaded", F.first("first_uploaded").over(aall))
        .withColumn("last_uploaded", F.last("last_uploaded").over(aall))
        .withColumn("_ft", F.min("first_ts").over(aw)).withColumn("_lt", F.max("last_ts").over(aw))
        .withColumn("started_seen", F.max(F.col("started_seen").cast("int")).over(aw) == 1)
        .withColumn("max_upload_bps", F.max("max_upload_bps").over(aw))
        .withColumn("coverage", F.first("coverage").over(aw.orderBy(
            F.when(F.col("coverage") == "client", 0).when(F.col("coverage") == "swarm", 1)
            .when(F.col("coverage") == "none", 2).otherwise(3)).rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)))
        .withColumn("flags", F.array_sort(F.array_distinct(F.flatten(F.collect_list("flags").over(aw)))))
        .withColumn("_sens", sensor_set(F.collect_list("sensor").over(aw)))
        .withColumn("_rk", F.row_number().over(aw.orderBy("first_ts", "_ds"))).where("_rk = 1")
        .withColumn("first_ts", F.col("_ft")).withColumn("last_ts", F.col("_lt")).withColumn("sensor", F.col("_sens"))
        .withColumn("suspicious", F.size("flags") > 0)
        .select(*acols)
    )

    return au


def write(out: Dict[str, DataFrame], dest: str) -> None:
    """OUT/<table>/date=YYYY-MM-DD/part-*.parquet."""
    for name, df in out.items():
        tcol = "ts" if "ts" in df.columns else ("first_ts" if "first_ts" in df.columns else None)
        df = df.drop(G)
        if tcol is not None:
            df = df.withColumn("date", F.date_format(F.col(tcol), "yyyy-MM-dd"))
        else:
            df = df.withColumn("date", F.lit(None).cast("string"))
        sort = [c for c in (tcol,) if c] or []
        df = df.repartition("date")
        if sort:
            df = df.sortWithinPartitions(*sort)
        df.write.mode("overwrite").partitionBy("date").parquet(f"{dest.rstrip('/')}/{name}")


def session(app: str = "swarmtap-merge", master: Optional[str] = None) -> SparkSession:
    """A session with UTC time and µs Parquet timestamps. Python workers
    run this interpreter unless PYSPARK_PYTHON says otherwise (they need
    pandas and pyarrow for the progress fusion)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    b = SparkSession.builder.appName(app)
    if master:
        b = b.master(master)
    spark = (
        b.config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.ui.enabled", os.environ.get("SWARMTAP_SPARK_UI", "false"))
        .config("spark.driver.memory", os.environ.get("SWARMTAP_SPARK_DRIVER_MEMORY", "2g"))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel(os.environ.get("SWARMTAP_SPARK_LOG", "WARN"))
    return spark


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="+", help="swarmtap datasets (analyze or live), any path Spark reads")
    ap.add_argument("-o", "--output", required=True, help="output directory (tables partitioned by date)")
    ap.add_argument("--tolerance", type=float, default=2.0, help="seconds two sensors' copies of a packet may differ")
    ap.add_argument("--join-gap", type=float, default=120.0, help="seconds between a connection's end in one piece and its continuation")
    ap.add_argument("--threshold", type=float, default=0.98, help="completion threshold (as analyze --threshold)")
    ap.add_argument("--master", default=None, help="Spark master when not set by spark-submit (e.g. local[2])")
    a = ap.parse_args(argv)
    spark = session(master=a.master)
    out = merge(spark, [a.datasets], a.tolerance, a.join_gap, a.threshold)
    write(out, a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
