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
    """Every table of every dataset, with `_set` (merge group), `_ds` (the
    dataset's number in the merge's order: by first capture time, then
    command-line order, as MERGE.md 0.1; unique over all groups), `_base`
    (its capture offset) and `_o` (the row's place in the union of the
    group's datasets: `_ds << 40 | row index`, the order `swarmtap merge`
    breaks ties by). Snapshot tables of live datasets keep their latest
    row per key."""
    info = []  # (set, command-line index, dir, live)
    for s, dirs in enumerate(sets):
        for k, d in enumerate(dirs):
            d = d.rstrip("/")
            live = not _fs_exists(spark, d + "/capture_stats.parquet") and _fs_exists(spark, d + "/capture_stats")
            info.append((s, k, d, live))
    uniq = sorted({(d, live) for _, _, d, live in info})
    part = {d: _path_part(spark=spark, path=d) for d, _ in uniq}

    def load(table: str) -> Optional[DataFrame]:
        parts = []
        offline = [d + f"/{table}.parquet" for d, live in uniq if not live and _fs_exists(spark, d + f"/{table}.parquet")]
        livep = [d + f"/{table}" for d, live in uniq if live and _fs_exists(spark, d + f"/{table}")]
        if offline:
            parts.append(spark.read.option("mergeSchema", "true").parquet(*offline))
        if livep:
            parts.append(spark.read.option("mergeSchema", "true").option("recursiveFileLookup", "true")
                         .option("pathGlobFilter", "*.parquet").parquet(*livep))
        if not parts:
            return None
        parts = [p.withColumn("_dir", _file_dir(table)).withColumn("_ri", F.col("_metadata.row_index")) for p in parts]
        df = parts[0]
        for p in parts[1:]:
            df = df.unionByName(p, allowMissingColumns=True)
        return df

    # MERGE.md 0.1-0.2: the datasets' order and capture offsets.
    cs = load("capture_stats")
    per_dir = {}
    if cs is not None:
        for r in cs.groupBy("_dir").agg(F.min(F.unix_micros("first_ts")).alias("_t0"),
                                         F.count(F.lit(1)).alias("_n")).collect():
            per_dir[r["_dir"]] = (r["_t0"], r["_n"])
    rows = []
    n = 0
    for s in range(len(sets)):
        mine = [(per_dir.get(part[d], (None, 0)), k, d) for s2, k, d, _ in info if s2 == s]
        mine.sort(key=lambda x: (x[0][0] is None, x[0][0] or 0, x[1]))
        base = 0
        for (_, cnt), _, d in mine:
            rows.append((s, n, part[d], base))
            n += 1
            base += max(cnt, 1)
    dsmap = spark.createDataFrame(rows, f"{G} int, _ds int, _dir string, _base long")
    out: Dict[str, DataFrame] = {}
    for table in TABLES:
        df = cs if table == "capture_stats" else load(table)
        if df is None:
            continue
        df = df.join(_bc(dsmap), "_dir").drop("_dir")
        df = df.withColumn("_o", F.shiftleft(F.col("_ds").cast("long"), 40).bitwiseOR(F.col("_ri"))).drop("_ri")
        if table in SNAPSHOT_KEYS and "interval_start" in df.columns:
            keys = [G, "_ds"] + SNAPSHOT_KEYS[table]
            w = Window.partitionBy(*keys).orderBy(F.col("interval_start").desc_nulls_last(), F.col("_o"))
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
    return F.array_join(F.array_sort(F.array_distinct(F.filter(F.flatten(F.transform(col, lambda s: F.split(s, ","))),
                                                               lambda x: x != ""))), ",")


def _sensor_set_py(names) -> str:
    return ",".join(sorted({p for s in names for p in (s or "").split(",") if p}))


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


def _bc(df: DataFrame) -> DataFrame:
    """A broadcast hint for a small side, unless SWARMTAP_SPARK_BROADCAST=0:
    each broadcast is a Spark job of its own, which on small local data
    costs more than the shuffle it saves."""
    return df if os.environ.get("SWARMTAP_SPARK_BROADCAST", "1") == "0" else F.broadcast(df)


def _ts_us(c: str) -> "F.Column":
    return F.unix_micros(F.col(c))


# ---------------------------------------------------------------- events

# Buckets of one merge group's event keys, each sorted and scanned by one
# pandas call (a key's rows are all in one bucket).
KEY_BUCKETS = 4
BIG = 1 << 40


def _dedupe_fn(tol_us: int):
    """src/merge/mod.rs `Ctx::events`, line for line, over one bucket of
    keys: rows sorted by key, time, sensor, order; equal events of one
    sensor at one instant numbered (`occ`) so the n-th pairs with the other
    sensor's n-th; then clusters of one key, times within T of the
    cluster's first, one row per sensor. Returns the kept rows' `_o` and
    the clusters' sensor sets."""
    import pandas as pd

    def run(pdf: "pd.DataFrame") -> "pd.DataFrame":
        pdf = pdf.assign(_tn=pdf["_t"].notna().astype(int), _tv=pdf["_t"].fillna(0).astype("int64"))
        pdf = pdf.sort_values(["_k", "_tn", "_tv", "sensor", "_o"], kind="stable")
        pdf["_occ"] = pdf.groupby(["_k", "_tn", "_tv", "sensor"], sort=False).cumcount()
        pdf = pdf.sort_values(["_k", "_tn", "_tv", "_occ", "sensor", "_o"], kind="stable")
        k, tn, tv = pdf["_k"].tolist(), pdf["_tn"].tolist(), pdf["_tv"].tolist()
        s, o = pdf["sensor"].tolist(), pdf["_o"].tolist()
        h = len(k)
        out_o, out_s = [], []
        i = 0
        while i < h:
            members = [i]
            seen = {s[i]}
            j = i + 1
            while j < h:
                same = k[j] == k[i] and (
                    (tn[i] and tn[j] and tv[j] - tv[i] <= tol_us) or (not tn[i] and not tn[j])) and s[j] not in seen
                if not same:
                    break
                members.append(j)
                seen.add(s[j])
                j += 1
            first = min(members, key=lambda m: s[m])
            out_o.append(o[first])
            out_s.append(_sensor_set_py(s[m] for m in members))
            i = j
        return pd.DataFrame({G: [int(pdf[G].iloc[0])] * len(out_o), "_o": out_o, "_sens": out_s})

    return run


def dedupe_events(df: DataFrame, table: str, tol_us: int, multi: DataFrame) -> DataFrame:
    """MERGE.md section 1: copies of one event seen by different sensors
    (same key, ts within T, equal events of one instant paired one to one)
    become one row, the first sensor's, with the group's sensor set. Only
    groups with more than one sensor are looked at."""
    key = [c for c in EVENT_KEYS.get(table, []) if c in df.columns and c != "ts"]
    if "ts" not in df.columns or not key:
        return df
    df = df.join(_bc(multi), G, "left").fillna(False, ["_multi"])
    single = df.where(~F.col("_multi")).drop("_multi")
    many = df.where(F.col("_multi")).drop("_multi")
    k = F.concat_ws("\x1f", *[F.coalesce(F.col(c).cast("string"), F.lit("\x00")) for c in key])
    slim = many.select(G, "_o", "sensor", k.alias("_k"), F.unix_micros("ts").alias("_t")) \
        .withColumn("_b", F.pmod(F.hash("_k"), F.lit(KEY_BUCKETS)))
    kept = slim.groupBy(G, "_b").applyInPandas(_dedupe_fn(tol_us), f"{G} int, _o long, _sens string")
    many = many.join(kept, [G, "_o"]).withColumn("sensor", F.col("_sens")).drop("_sens")
    return single.unionByName(many)


# ---------------------------------------------------------------- flows, connections

FLOW_SUM_PAIRS = [("n_packets_orig", "n_packets_resp"), ("payload_bytes_orig", "payload_bytes_resp")]
FLOW_SUMS = ["n_packets", "gap_bytes", "retrans_bytes", "n_bad_checksums"]
CONN_SUM_PAIRS = [
    ("piece_bytes_orig", "piece_bytes_resp"),
    ("payload_bytes_orig", "payload_bytes_resp"),
    ("n_msgs_orig", "n_msgs_resp"),
]
CONN_SUMS = ["gap_bytes", "unframed_bytes", "n_resyncs"]
CONN_FILL_PAIRS = [("orig_peer_id", "resp_peer_id"), ("orig_client", "resp_client"),
                   ("orig_ltep_v", "resp_ltep_v"), ("orig_peer_port", "resp_peer_port"),
                   ("orig_listen_port", "resp_listen_port")]

JOIN_OUT = f"{G} int, _o long, _rep long, _pos int, _rev boolean, _new long, _sens string, _last boolean"


def _join_fn(gap_us: int, tol_us: int, is_conn: bool):
    """src/merge/entities.rs `join_inner`, line for line, over one merge
    group's rows of one (proto, community_id): the pieces of one connection
    per sensor (joined across cuts), then copies across sensors (clusters
    of overlapping groups). Per row: the kept row it is summed into (`_rep`,
    null when its group is not kept), its place in its group, whether it is
    reversed against the group's first row, the id it is rewritten to, the
    cluster's sensor set, and whether it is its group's last piece."""
    import pandas as pd

    def run(pdf: "pd.DataFrame") -> "pd.DataFrame":
        pdf = pdf.sort_values(["sensor", "_f", "_o"], kind="stable").reset_index(drop=True)
        r = pdf.to_dict("records")
        groups: List[List[int]] = []
        g_last = 0
        for i, x in enumerate(r):
            if groups:
                g = groups[-1]
                r0, prev = r[g[0]], r[g[-1]]
                # uTP connections share their UDP flow's community_id: two
                # uTP rows join only when their utp_conn_id are equal or one
                # is null (main d81103f).
                a, b = x.get("_uid"), prev.get("_uid")
                same_utp = a is None or b is None or pd.isna(a) or pd.isna(b) or int(a) == int(b)
                if (x["sensor"] == r0["sensor"] and same_utp and x["_ds"] != prev["_ds"]
                        and bool(x["_mid"]) and x["_f"] >= r0["_f"] and x["_f"] - g_last <= gap_us
                        and not bool(prev["_closed"])):
                    g.append(i)
                    g_last = max(g_last, x["_l"])
                    continue
            groups.append([i])
            g_last = x["_l"]

        def rev(a: int, i: int) -> bool:
            oi, ri = r[i], r[a]
            return (oi["oip"] == ri["rip"] and oi["oport"] == ri["rport"]
                    and not (oi["oip"] == ri["oip"] and oi["oport"] == ri["oport"]))

        gw = [sum(int(r[i]["_w"]) for i in g) for g in groups]
        gspan = [(min(r[i]["_f"] for i in g), max(r[i]["_l"] for i in g)) for g in groups]
        gorder = sorted(range(len(groups)), key=lambda g: (gspan[g][0], g))
        clusters: List[List[int]] = []
        c_last = 0
        for g in gorder:
            if clusters:
                c = clusters[-1]
                if gspan[g][0] <= c_last + tol_us and not any(r[groups[x][0]]["sensor"] == r[groups[g][0]]["sensor"]
                                                               for x in c):
                    c.append(g)
                    c_last = max(c_last, gspan[g][1])
                    continue
            clusters.append([g])
            c_last = gspan[g][1]
        n = len(r)
        rep = [None] * n
        pos = [0] * n
        rv = [False] * n
        new = [None] * n
        sens = [None] * n
        last = [False] * n
        for c in clusters:
            best = max(c, key=lambda g: (gw[g], -g))
            first = groups[best][0]
            rid = r[first]["conn_id"]
            ss = _sensor_set_py(r[groups[g][0]]["sensor"] for g in c)
            for g in c:
                for p, m in enumerate(groups[g]):
                    new[m] = rid
                    sens[m] = ss
                    pos[m] = p
                    rv[m] = rev(groups[g][0], m)
                    last[m] = p == len(groups[g]) - 1
                    if g == best:
                        rep[m] = r[first]["_o"]
        return pd.DataFrame({G: [int(r[0][G])] * n, "_o": [x["_o"] for x in r],
                             "_rep": pd.array(rep, dtype="Int64"), "_pos": pos, "_rev": rv,
                             "_new": pd.array(new, dtype="Int64"), "_sens": sens, "_last": last})

    return run


def join_rows(df: DataFrame, kind: str, gap_us: int, tol_us: int, closed: Optional[DataFrame]):
    """MERGE.md section 2 for `flows` or `connections`: returns the merged
    rows, the id rewrites (_set, _old, _new) and, for connections, the rows
    of the kept groups with their place (for the peer renames)."""
    is_conn = kind == "connections"
    proto = "transport" if is_conn else "proto"
    cols = [c for c in df.columns]
    if is_conn:
        df = df.join(closed, [G, "flow_id"], "left")
    else:
        df = df.withColumn("_closed", F.col("end_reason").isin("fin", "rst", "reused"))
    df = df.withColumn("_closed", F.coalesce("_closed", F.lit(False)))
    w = (F.coalesce(F.col("payload_bytes_orig"), F.lit(0)) + F.coalesce(F.col("payload_bytes_resp"), F.lit(0))) \
        if is_conn else F.coalesce(F.col("n_packets"), F.lit(0))
    slim = df.select(G, "_o", "_ds", "conn_id", F.coalesce("sensor", F.lit("")).alias("sensor"),
                     F.coalesce(proto, F.lit("")).alias("_p"), F.coalesce("community_id", F.lit("")).alias("_cid"),
                     F.unix_micros("first_ts").alias("_f"), F.unix_micros("last_ts").alias("_l"),
                     F.coalesce("midstream", F.lit(False)).alias("_mid"), "_closed",
                     F.coalesce("orig_ip", F.lit("")).alias("oip"), F.coalesce("orig_port", F.lit(0)).alias("oport"),
                     F.coalesce("resp_ip", F.lit("")).alias("rip"), F.coalesce("resp_port", F.lit(0)).alias("rport"),
                     w.alias("_w"),
                     (F.col("utp_conn_id") if is_conn and "utp_conn_id" in cols else F.lit(None).cast("long"))
                     .cast("long").alias("_uid")).fillna(0, ["_f", "_l"])
    dec = slim.where("_cid != ''").groupBy(G, "_p", "_cid").applyInPandas(_join_fn(gap_us, tol_us, is_conn), JOIN_OUT)
    alone = slim.where("_cid = ''").select(
        G, "_o", F.col("_o").alias("_rep"), F.lit(0).alias("_pos"), F.lit(False).alias("_rev"),
        F.col("conn_id").alias("_new"), sensor_set(F.array("sensor")).alias("_sens"), F.lit(True).alias("_last"))
    dec = dec.unionByName(alone)
    j = _cut(df.join(dec, [G, "_o"]))
    idmap = j.where("_new is not null and _new != conn_id").select(G, F.col("conn_id").alias("_old"), "_new")
    kept = j.where("_rep is not null")
    pairs = CONN_SUM_PAIRS if is_conn else FLOW_SUM_PAIRS
    sums = CONN_SUMS if is_conn else FLOW_SUMS
    aggs = [F.min("first_ts").alias("first_ts"), F.max("last_ts").alias("last_ts")]
    for c in sums:
        aggs.append(F.coalesce(F.sum(c), F.lit(0)).alias(c))
    for a, b in pairs:
        aggs.append(F.coalesce(F.sum(F.when(F.col("_rev"), F.col(b)).otherwise(F.col(a))), F.lit(0)).alias(a))
        aggs.append(F.coalesce(F.sum(F.when(F.col("_rev"), F.col(a)).otherwise(F.col(b))), F.lit(0)).alias(b))
    repl = ["first_ts", "last_ts"] + sums + [x for p in pairs for x in p]
    if is_conn:
        ih = F.col("info_hash")
        aggs.append(F.min_by(F.struct("info_hash", "info_hash_source", "attribution_confidence"),
                             F.when(ih.isNotNull(), F.col("_pos")).otherwise(F.col("_pos") + BIG)).alias("_ih"))
        for a, b in CONN_FILL_PAIRS:
            if a not in cols or b not in cols:
                continue  # datasets written before the column existed
            for x, y in ((a, b), (b, a)):
                v = F.when(F.col("_rev"), F.col(y)).otherwise(F.col(x))
                aggs.append(F.min_by(v, F.when(v.isNotNull(), F.col("_pos")).otherwise(F.col("_pos") + BIG)).alias(x))
                repl.append(x)
        repl += ["info_hash", "info_hash_source", "attribution_confidence"]
    else:
        aggs.append(F.max_by("end_reason", "_pos").alias("end_reason"))
        repl.append("end_reason")
    agg = kept.groupBy(G, "_rep").agg(*aggs)
    if is_conn:
        agg = agg.select("*", "_ih.*").drop("_ih")
    reps = kept.where("_o = _rep").select(*[c for c in cols if c not in repl], "_sens")
    rows = reps.join(agg.withColumnRenamed("_rep", "_o"), [G, "_o"]) \
        .withColumn("sensor", F.col("_sens")).drop("_sens").select(*cols)
    return _cut(rows), _cut(idmap), kept


def fill_info_hash(df: DataFrame, conns: DataFrame) -> DataFrame:
    """Attribution by a later piece (entities.rs `fill_info_hash`): an event
    row of a connection takes the merged connection's info_hash when the
    row has none, or when the connection's came from a handshake and the
    row's differs."""
    c = conns.dropDuplicates([G, "conn_id"]).select(
        G, "conn_id", F.col("info_hash").alias("_cih"),
        F.coalesce(F.col("info_hash_source") == "handshake", F.lit(False)).alias("_exact"))
    df = df.join(c, [G, "conn_id"], "left")
    take = F.col("_cih").isNotNull() & (F.col("info_hash").isNull() | (F.col("_exact") & (F.col("info_hash") != F.col("_cih"))))
    return df.withColumn("info_hash", F.when(take, F.col("_cih")).otherwise(F.col("info_hash"))).drop("_cih", "_exact")


def rekey_misattributed(peers: DataFrame, hs: DataFrame) -> DataFrame:
    """entities.rs `rekey_misattributed` (main fce1f76): a peers row with
    sources only wire whose listed connections all have one other
    handshake info_hash (the merged connection's) moves to that torrent."""
    ex = peers.where(F.size("conn_ids") > 0).select(G, "_o", F.explode("conn_ids").alias("conn_id")) \
        .join(_bc(hs), [G, "conn_id"], "left") \
        .groupBy(G, "_o").agg(F.count(F.lit(1)).alias("_n"), F.count("_hih").alias("_nh"),
                              F.countDistinct("_hih").alias("_nd"), F.min("_hih").alias("_rh"))
    ex = ex.where("_n = _nh and _nd = 1").select(G, "_o", "_rh")
    only_wire = F.coalesce(~F.exists("sources", lambda x: x != "wire"), F.lit(True))
    df = peers.join(ex, [G, "_o"], "left")
    take = F.col("_rh").isNotNull() & only_wire & (F.col("_rh") != F.col("info_hash"))
    return df.withColumn("info_hash", F.when(take, F.col("_rh")).otherwise(F.col("info_hash"))).drop("_rh")


def join_renames(kept: DataFrame, rows: DataFrame) -> DataFrame:
    """The peer renames of joined connections (src/merge/entities.rs,
    `join_inner`'s last part): for each later piece's end whose peer port
    differs from the first piece's, the listen port wins over a source
    port, whichever piece knew it; else the first piece's. Keys are
    (_set, info_hash, ip, port) -> _to; a later rename of one key wins."""
    out = rows.select(G, F.col("_o").alias("_rep"), F.col("info_hash").alias("_h0"),
                      F.coalesce(F.col("info_hash_source") == "handshake", F.lit(False)).alias("_exact"),
                      F.col("orig_peer_port").alias("_opp_o"), F.col("resp_peer_port").alias("_rpp_o"),
                      F.col("orig_port").alias("_oport_r"), F.col("resp_port").alias("_rport_r"),
                      F.coalesce(F.col("midstream"), F.lit(False)).alias("_mid_r"),
                      F.unix_micros("first_ts").alias("_gf"))
    m = kept.where("_pos >= 1").join(out, [G, "_rep"]).where("_h0 is not null")
    # A later piece's own attribution gives way to the handshake's torrent.
    h = F.when(F.col("_exact"), F.col("_h0")).otherwise(F.coalesce("info_hash", "_h0"))
    parts = []
    for e, (ip, p, raw) in enumerate([("orig_ip", "orig_peer_port", "orig_port"), ("resp_ip", "resp_peer_port", "resp_port")]):
        own = ("_opp_o", "_oport_r") if e == 0 else ("_rpp_o", "_rport_r")
        oth = ("_rpp_o", "_rport_r") if e == 0 else ("_opp_o", "_oport_r")
        t = F.when(F.col("_rev"), F.col(oth[0])).otherwise(F.col(own[0]))
        traw = F.when(F.col("_rev"), F.col(oth[1])).otherwise(F.col(own[1]))
        x = m.select(G, h.alias("info_hash"), F.col(ip).alias("peer_ip"), F.col(p).cast("long").alias("_p"),
                     F.col(raw).cast("long").alias("_raw"), t.cast("long").alias("_t"), traw.cast("long").alias("_traw"),
                     F.struct("_gf", "_rep", "_pos", F.lit(e)).alias("_ord"),
                     # The first piece's responder of a connection whose
                     # start it saw is at the port it accepted on: a listen port.
                     ((F.col("_rev") if e == 0 else ~F.col("_rev")) & ~F.col("_mid_r")).alias("_acc"))
        x = x.where("_p is not null and _t is not null and _p != _t")
        listen_first = (F.col("_t") == F.col("_traw")) & (F.col("_p") != F.col("_raw")) & ~F.col("_acc")
        parts.append(x.select(G, "info_hash", "peer_ip",
                              F.when(listen_first, F.col("_t")).otherwise(F.col("_p")).alias("peer_port"),
                              F.when(listen_first, F.col("_p")).otherwise(F.col("_t")).alias("_to"), "_ord"))
    r = parts[0].unionByName(parts[1])
    return r.groupBy(G, "info_hash", "peer_ip", "peer_port").agg(F.max_by("_to", "_ord").alias("_to"))


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
        # The merged table's order: time, then the union's row order.
        pdf = pdf.sort_values(["_t", "_o"], kind="stable")
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


def hash_aliases(torrents: DataFrame) -> Optional[DataFrame]:
    """entities.rs `hash_aliases` (main fce1f76): a hybrid torrent's hashes
    paired in the torrents rows (info_hash_v2) -> the hash its audit series
    go by: the v1 hash (the member that is not the truncated v2 hash), else
    the truncated v2 hash. Returns (_set, info_hash, _canon)."""
    if "info_hash_v2" not in torrents.columns:
        return None
    fam = torrents.where("info_hash_v2 is not null").select(
        G, "info_hash", F.col("info_hash_v2").alias("_v")).distinct().withColumn("_tr", F.substring("_v", 1, 40))
    canon = fam.groupBy(G, "_v", "_tr").agg(
        F.min(F.when(F.col("info_hash") != F.col("_tr"), F.col("info_hash"))).alias("_c")) \
        .withColumn("_canon", F.coalesce("_c", "_tr"))
    mem = fam.select(G, "_v", "info_hash").unionByName(canon.select(G, "_v", F.col("_tr").alias("info_hash")))
    return mem.join(canon.select(G, "_v", "_canon"), [G, "_v"]).select(G, "info_hash", "_canon") \
        .dropDuplicates([G, "info_hash"])


def audit(spark, conns, flows, ev, caps, max_link_bps: float, alias: Optional[DataFrame] = None) -> DataFrame:
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
    parts.append(shape(an, _k=F.lit(3), _t=F.unix_micros("ts"), _i=F.col("_o"), info_hash=F.col("info_hash"),
                       a_ip=F.col("client_ip"), peer_id=F.col("peer_id"), tracker_ip=F.col("tracker_ip"),
                       tracker_port=F.col("tracker_port"), transport=F.col("transport"),
                       declared_ip=F.col("declared_ip") if "declared_ip" in an.columns else F.lit(None),
                       uploaded=F.col("uploaded"), downloaded=F.col("downloaded"), event=F.col("event"),
                       interval=F.col("interval"), seeders=F.col("seeders"), leechers=F.col("leechers")))
    items = parts[0]
    for p in parts[1:]:
        items = items.unionByName(p)
    if alias is not None:
        # A hybrid torrent's hashes are audited as one (Audit::alias_hash).
        items = items.join(_bc(alias), [G, "info_hash"], "left") \
            .withColumn("info_hash", F.coalesce("_canon", "info_hash")).drop("_canon")
    # Only torrents somebody announced.
    items = items.join(items.where("_k = 3").select(G, "info_hash").distinct(), [G, "info_hash"], "left_semi")
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
    # client: a function of the peer id (as tracker_announces.client).
    cl = ev["tracker_announces"].where("peer_id is not null and client is not null").groupBy(G, "peer_id") \
        .agg(F.min("client").alias("client"))
    a = a.join(cl, [G, "peer_id"], "left")
    a = a.withColumn("suspicious", F.size("flags") > 0) \
        .withColumn("excess_uploaded", F.when(F.col("reported_uploaded").isNotNull(),
                                              F.col("reported_uploaded") - seen_b)) \
        .withColumn("first_ts", F.timestamp_micros("_first")).withColumn("last_ts", F.timestamp_micros("_last"))
    return a


def _ephemeral_fn():
    """src/merge/entities.rs `ephemeral_renames`, line for line, over one
    merge group's (info_hash, peer_ip): its peers rows (`_k` 0, in the
    union's row order) and its listen evidence from connections (`_k` 1).
    Returns the renames peer_port -> _to."""
    import pandas as pd

    def isnull(v):
        return v is None or (not isinstance(v, str) and pd.isna(v))

    def prefix(a):
        return a[:16] if len(a) >= 16 else None

    def run(pdf: "pd.DataFrame") -> "pd.DataFrame":
        pdf = pdf.sort_values(["_k", "_o"], kind="stable")
        r = pdf.to_dict("records")
        rows = [x for x in r if x["_k"] == 0]
        for x in r:
            x["peer_port"] = int(x["peer_port"])
            x["peer_id"] = None if isnull(x["peer_id"]) else x["peer_id"]
        # Listen port -> the peer ids seen at it: connection evidence (a
        # responder port unless mid-stream, a BEP 10 `p`), sightings outside
        # the peer wire (tracker, DHT, LSD; not PEX), then the peer ids of
        # every row at a listen port.
        ports: Dict[int, set] = {}
        for x in r:
            if x["_k"] == 1 or bool(x["_L"]):
                ids = ports.setdefault(x["peer_port"], set())
                if x["peer_id"] is not None:
                    ids.add(x["peer_id"])
        for x in rows:
            if x["peer_id"] is not None and x["peer_port"] in ports:
                ports[x["peer_port"]].add(x["peer_id"])
        out: Dict[int, int] = {}
        if ports:
            def one(f):
                m = [p for p in sorted(ports) if f(ports[p])]
                return m[0] if len(m) == 1 else None

            for x in rows:
                if x["peer_port"] in ports:
                    continue
                a = x["peer_id"]
                if a is not None:
                    t = one(lambda ids: a in ids)
                    if t is None:
                        pa = prefix(a)
                        t = one(lambda ids: pa is not None and any(prefix(b) == pa for b in ids))
                else:
                    t = one(lambda ids: True)
                if t is not None:
                    out[x["peer_port"]] = t
            # A tracker claim announced with port 0: the one listen port.
            if len(ports) == 1:
                out.setdefault(0, next(iter(ports)))
        # One peer id at ports that are not listen ports, with no listen
        # endpoint to join: the first key it was seen at (dataset, first_ts).
        by_id: Dict[str, tuple] = {}
        for x in rows:
            a = x["peer_id"]
            if a is None or x["peer_port"] in ports or x["peer_port"] in out:
                continue
            e = by_id.setdefault(a, (int(x["_ds"]), int(x["_f"]), x["peer_port"]))
            if (int(x["_ds"]), int(x["_f"])) < e[:2]:
                by_id[a] = (int(x["_ds"]), int(x["_f"]), x["peer_port"])
        for x in rows:
            a = x["peer_id"]
            if a is not None and a in by_id and by_id[a][2] != x["peer_port"]:
                out[x["peer_port"]] = by_id[a][2]
        g = r[0]
        return pd.DataFrame({G: [int(g[G])] * len(out), "info_hash": [g["info_hash"]] * len(out),
                             "peer_ip": [g["peer_ip"]] * len(out), "peer_port": list(out),
                             "_to": [out[p] for p in out]}).astype(
            {G: "int64", "info_hash": object, "peer_ip": object, "peer_port": "int64", "_to": "int64"})

    return run


def listen_evidence(conns: DataFrame, with_ids: bool) -> DataFrame:
    """The listen endpoints connections show (entities.rs): the port of an
    originator's BEP 10 `p` (`orig_listen_port`), and the responder port
    unless the connection was picked up mid-stream (then who connected is a
    guess and the responder's transport port may be ephemeral: the port of
    its `p`, `resp_listen_port`, when it sent one; entities.rs
    `resp_listen`). (_set, info_hash, peer_ip, peer_port[, peer_id])."""
    c = conns.where("info_hash is not null")
    lo = c.where("orig_listen_port is not null").select(
        G, "info_hash", F.col("orig_ip").alias("peer_ip"), F.col("orig_listen_port").cast("int").alias("peer_port"),
        F.col("orig_peer_id").alias("peer_id"))
    mid = F.coalesce(F.col("midstream"), F.lit(False))
    lr = c.where(~mid | F.col("resp_listen_port").isNotNull()).select(
        G, "info_hash", F.col("resp_ip").alias("peer_ip"),
        F.when(mid, F.col("resp_listen_port")).otherwise(F.col("resp_port")).cast("int").alias("peer_port"),
        F.col("resp_peer_id").alias("peer_id"))
    out = lo.unionByName(lr)
    return out if with_ids else out.drop("peer_id")


def _outside_wire() -> "F.Column":
    """A peers row seen outside the peer wire (tracker, DHT, LSD): PEX
    passes on connection ports and is no listen evidence."""
    return F.coalesce(F.exists("sources", lambda x: ~x.isin("wire", "pex")), F.lit(False))


def ephemeral_renames(peers: DataFrame, conns: DataFrame) -> DataFrame:
    """docs/MERGE.md peers 1 (src/merge/entities.rs `ephemeral_renames`,
    main f917a29): listen endpoints follow the analysis (a responder port
    unless mid-stream, BEP 10 `p`, tracker/DHT/LSD sightings); a peers row
    at another port joins the one listen port of its address carrying its
    peer id, else the one carrying a peer id with its 8-byte client prefix,
    else (no peer id) the address's only listen port; rows of one peer id
    with no listen port to join join the first (dataset, first_ts); a
    port-0 tracker claim goes to the address's only listen port. Returns
    (_set, info_hash, peer_ip, peer_port) -> _to."""
    cols = [G, "info_hash", "peer_ip", "peer_port", "peer_id", "_k", "_L", "_ds", "_f", "_o"]
    p = peers.select(G, "info_hash", "peer_ip", F.col("peer_port").cast("int").alias("peer_port"), "peer_id",
                     F.lit(0).alias("_k"), _outside_wire().alias("_L"), F.col("_ds").cast("long").alias("_ds"),
                     F.coalesce(F.unix_micros("first_ts"), F.lit(0)).alias("_f"), "_o")
    c = listen_evidence(conns, True).select(
        G, "info_hash", "peer_ip", "peer_port", "peer_id", F.lit(1).alias("_k"), F.lit(False).alias("_L"),
        F.lit(0).cast("long").alias("_ds"), F.lit(0).cast("long").alias("_f"), F.lit(0).cast("long").alias("_o"))
    return p.select(*cols).unionByName(c.select(*cols)).groupBy(G, "info_hash", "peer_ip").applyInPandas(
        _ephemeral_fn(), f"{G} int, info_hash string, peer_ip string, peer_port int, _to int")


def encrypted_originators(peers: DataFrame, conns: DataFrame, eph: DataFrame) -> DataFrame:
    """entities.rs `encrypted_originators` (main f917a29): the originator of
    an MSE-encrypted connection (no readable handshake) is its address's
    one listen endpoint among its peers rows for the torrent, else the
    address's only peers row, else no peer. `peers` are the renamed rows,
    `eph` the ephemeral renames (connection evidence goes through them).
    Returns (_set, conn_id, _own) for every encrypted connection with an
    info_hash (_own null: no peer)."""
    k = [G, "info_hash", "peer_ip", "peer_port"]
    rows = peers.select(G, "info_hash", "peer_ip", F.col("peer_port").cast("int").alias("peer_port")).distinct()
    lc = listen_evidence(conns, False).join(_bc(eph), k, "left") \
        .withColumn("peer_port", F.coalesce("_to", "peer_port")).drop("_to")
    lp = peers.where(_outside_wire()).select(G, "info_hash", "peer_ip", F.col("peer_port").cast("int").alias("peer_port"))
    listen = lc.unionByName(lp).distinct().withColumn("_L", F.lit(True))
    addr = rows.join(listen, k, "left").groupBy(G, "info_hash", "peer_ip").agg(
        F.count(F.lit(1)).alias("_np"), F.collect_set(F.when(F.col("_L"), F.col("peer_port"))).alias("_lp"),
        F.min("peer_port").alias("_only"))
    own = F.when(F.size("_lp") == 1, F.col("_lp")[0]).when((F.size("_lp") == 0) & (F.col("_np") == 1), F.col("_only"))
    enc = conns.where(F.coalesce(F.col("encrypted"), F.lit(False)) & F.col("info_hash").isNotNull()) \
        .dropDuplicates([G, "conn_id"]).select(G, "conn_id", "info_hash", F.col("orig_ip").alias("peer_ip"))
    return enc.join(addr, [G, "info_hash", "peer_ip"], "left").select(G, "conn_id", own.cast("int").alias("_own"))


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
    with the `_set` column telling the groups apart. Follows src/merge/
    (`swarmtap merge`) step by step."""
    if __name__ != "__main__":
        # Workers unpickle the pandas functions by reference to this module.
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
    sens = cs.groupBy(G).agg(sensor_set(F.collect_list("sensor")).alias("_all"))
    multi = _bc(_cut(sens.select(G, F.col("_all").contains(",").alias("_multi"))))

    def based(df: DataFrame) -> DataFrame:
        for c in ("conn_id", "flow_id"):
            if c in df.columns:
                df = df.withColumn(c, rebase(F.col(c)))
        if "conn_ids" in df.columns:
            df = df.withColumn("conn_ids", F.transform("conn_ids", lambda x: F.shiftleft(
                F.shiftright(x, 40) + F.col("_base"), 40).bitwiseOR(x.bitwiseAND(F.lit(LOW40)))))
        return df.drop("_base")

    t = {k: based(v) for k, v in raw.items()}

    # 2. Flows and connections (src/merge/mod.rs `run`).
    closed = t["flows"].select(G, F.col("conn_id").alias("flow_id"),
                               F.col("end_reason").isin("fin", "rst", "reused").alias("_closed"))
    flows, fmap, _ = join_rows(t["flows"], "flows", gap, tol, None)
    conns, cmap, ckept = join_rows(t["connections"], "connections", gap, tol, closed)
    jren = join_renames(ckept, conns)
    # ids: the flows' rewrites, the connections' over them.
    ids = fmap.join(cmap.select(G, "_old"), [G, "_old"], "left_anti").unionByName(cmap)
    ids = _cut(ids)

    def remap(df: DataFrame, col: str, m: DataFrame) -> DataFrame:
        m = m.withColumnRenamed("_old", col)
        return df.join(_bc(m), [G, col], "left").withColumn(col, F.coalesce("_new", col)).drop("_new")

    flows = remap(flows, "conn_id", ids)
    conns = remap(remap(conns, "conn_id", ids), "flow_id", ids)
    # A TCP connection is its flow (entities.rs `align_tcp_connections`).
    # One row per flow id: a UDP flow a cut left in two rows keeps both ids
    # (its uTP connections, now joined, must not be doubled by this join).
    ff = flows.groupBy(G, F.col("conn_id").alias("flow_id")).agg(F.min("first_ts").alias("_ff"))
    conns = conns.join(ff, [G, "flow_id"], "left")
    shift = (F.col("transport") == "tcp") & F.col("_ff").isNotNull() & (F.col("_ff") < F.col("first_ts"))
    conns = conns.withColumn("_al", shift & (F.col("conn_id") != F.col("flow_id"))) \
        .withColumn("_aold", F.col("conn_id"))
    conns = _cut(conns.withColumn("conn_id", F.when(F.col("_al"), F.col("flow_id")).otherwise(F.col("conn_id")))
                 .withColumn("first_ts", F.when(shift, F.col("_ff")).otherwise(F.col("first_ts"))).drop("_ff"))
    aligned = conns.where("_al").select(G, F.col("_aold").alias("_old"), F.col("conn_id").alias("_new"))
    conns = conns.drop("_al", "_aold")
    al2 = aligned.select(G, F.col("_old").alias("_new"), F.col("_new").alias("_a"))
    ids = ids.join(al2, [G, "_new"], "left").withColumn("_new", F.coalesce("_a", "_new")).drop("_a")
    ids = _cut(ids.join(aligned.select(G, "_old"), [G, "_old"], "left_anti").unionByName(aligned))

    def remap_all(df: DataFrame) -> DataFrame:
        for c in ("conn_id", "flow_id"):
            if c in df.columns:
                df = remap(df, c, ids)
        if "conn_ids" in df.columns:
            ex = df.select(G, "_o", F.posexplode("conn_ids").alias("_i", "_old"))
            ex = ex.join(_bc(ids), [G, "_old"], "left").withColumn("_v", F.coalesce("_new", "_old")) \
                .groupBy(G, "_o").agg(F.array_sort(F.collect_list(F.struct("_i", "_v"))).alias("_l"))
            df = df.join(ex, [G, "_o"], "left").withColumn(
                "conn_ids", F.when(F.col("_l").isNull(), F.col("conn_ids")).otherwise(F.transform("_l", lambda x: x["_v"]))
            ).drop("_l")
        return df

    # 3.1 Peer keys: the joined connections' renames, then ephemeral ports.
    pk = [G, "info_hash", "peer_ip", "peer_port"]

    def rename(df: DataFrame, m: DataFrame, ip: str = "peer_ip", port: str = "peer_port") -> DataFrame:
        m = m.withColumnRenamed("peer_ip", ip).withColumnRenamed("peer_port", port)
        return df.join(_bc(m), [G, "info_hash", ip, port], "left") \
            .withColumn(port, F.coalesce(F.col("_to").cast(dict(df.dtypes)[port]), F.col(port))).drop("_to")

    jren = _cut(jren)
    # Handshake torrents of the merged connections (entities.rs `Conn.exact`).
    hs = _cut(conns.where((F.col("info_hash_source") == "handshake") & F.col("info_hash").isNotNull())
              .dropDuplicates([G, "conn_id"]).select(G, "conn_id", F.col("info_hash").alias("_hih")))
    peers_in = _cut(rekey_misattributed(remap_all(t["peers"]), hs))
    peers_in = _cut(rename(peers_in, jren))
    eph = _cut(ephemeral_renames(peers_in, conns))
    peers_in = rename(peers_in, eph)
    # The originators of MSE-encrypted connections (main f917a29): who they
    # are, as the analysis credits them; set after the renames below.
    enc = _cut(encrypted_originators(peers_in, conns, eph))
    # Hybrid torrents (main fce1f76): the hashes paired in the datasets'
    # torrents rows (info_hash_v2); a peer key none of whose rows has source
    # wire joins the wire's peer at that endpoint under the other hash.
    hyb = None
    if "info_hash_v2" in t["torrents"].columns:
        fam = t["torrents"].where("info_hash_v2 is not null").select(
            G, "info_hash", F.col("info_hash_v2").alias("_v")).distinct()
        wire = peers_in.groupBy(*pk).agg(F.max(F.exists("sources", lambda x: x == "wire")).alias("_w"))
        cand = wire.where("not _w").join(fam, [G, "info_hash"])
        oth = wire.where("_w").join(fam, [G, "info_hash"]).select(
            G, "_v", "peer_ip", "peer_port", F.col("info_hash").alias("_h"))
        hyb = _cut(cand.join(oth, [G, "_v", "peer_ip", "peer_port"]).where(F.col("_h") != F.col("info_hash"))
                   .groupBy(*pk).agg(F.min("_h").alias("_h")))

    def rehash(df: DataFrame) -> DataFrame:
        if hyb is None:
            return df
        return df.join(_bc(hyb), pk, "left").withColumn("info_hash", F.coalesce("_h", "info_hash")).drop("_h")

    peers_in = rehash(peers_in)
    # Listed connections (entities.rs `peers`): not those whose joined
    # row's handshake names another torrent than the row's (main fce1f76);
    # an encrypted connection's originator end only at the peer
    # `encrypted_originators` named, or at the connection's responder end
    # (main f917a29).
    encx = enc.join(conns.dropDuplicates([G, "conn_id"]).select(
        G, "conn_id", F.col("orig_ip").alias("_eoi"), F.col("resp_ip").alias("_eri"),
        F.col("resp_port").cast("int").alias("_erp")), [G, "conn_id"])
    ex = peers_in.select(G, "_o", "info_hash", "peer_ip", "peer_port", F.explode("conn_ids").alias("conn_id")) \
        .join(_bc(hs), [G, "conn_id"], "left").join(_bc(encx), [G, "conn_id"], "left")
    keep = (F.col("_hih").isNull() | (F.col("_hih") == F.col("info_hash"))) & (
        F.col("_eoi").isNull() | (F.col("_eoi") != F.col("peer_ip"))
        | F.coalesce(F.col("_own") == F.col("peer_port"), F.lit(False))
        | ((F.col("_eri") == F.col("peer_ip")) & (F.col("_erp") == F.col("peer_port"))))
    ex = ex.groupBy(G, "_o").agg(F.array_sort(F.collect_list(F.when(keep, F.col("conn_id")))).alias("_cf"))
    peers_in = _cut(peers_in.join(ex, [G, "_o"], "left")
                    .withColumn("_cf", F.coalesce("_cf", "conn_ids")))
    # Composed: a cut rename may land on an ephemeral key.
    comp = jren.join(eph.select(G, "info_hash", "peer_ip", F.col("peer_port").alias("_to"), F.col("_to").alias("_e")),
                     [G, "info_hash", "peer_ip", "_to"], "left") \
        .withColumn("_to", F.coalesce("_e", "_to")).drop("_e")
    allren = _cut(comp.unionByName(eph.join(comp.select(*pk), pk, "left_anti")))
    # Connection ends follow their peers rows through both renames
    # (mod.rs: a joined connection's first piece may name an end by the
    # source port a later piece's `p` renamed).
    conns = rename(rename(conns, allren, "orig_ip", "orig_peer_port"), allren, "resp_ip", "resp_peer_port")
    # entities.rs `set_orig_ports`: an encrypted connection's originator
    # end is the peer named above (null: none).
    conns = _cut(conns.join(_bc(enc.withColumn("_e", F.lit(True))), [G, "conn_id"], "left")
                 .withColumn("orig_peer_port", F.when(F.col("_e"), F.col("_own")).otherwise(F.col("orig_peer_port"))
                             .cast(dict(conns.dtypes)["orig_peer_port"]))
                 .drop("_e", "_own"))

    # 1. Event tables.
    ev = {}
    for name in EVENT_KEYS:
        if name not in t:
            continue
        df = remap_all(t[name])
        df = dedupe_events(df, name, tol, multi)
        if name in ("peer_messages", "peer_progress", "pex_peers"):
            df = fill_info_hash(df, conns)
        ev[name] = _cut(df) if name in ("peer_progress", "peer_messages", "tracker_announces", "dht_messages") else df
    caps = t["capture_stats"]

    # Torrents (entities.rs `torrents`, `torrent_pieces`).
    tor_in = _cut(t["torrents"])
    rank = F.when(F.col("n_pieces_source") == "torrent_file", 3).when(F.col("n_pieces_source") == "ut_metadata", 2) \
        .when(F.col("n_pieces_source") == "bitfield_estimate", 1).otherwise(0)
    npw = Window.partitionBy(G, "info_hash").orderBy(rank.desc(), F.when(rank <= 1, -F.col("n_pieces")), "_o")
    tn = tor_in.where("n_pieces is not null").withColumn("_rn", F.row_number().over(npw)).where("_rn = 1") \
        .select(G, "info_hash", F.col("n_pieces").alias("_n"), F.coalesce("n_pieces_source", F.lit("")).alias("_nsrc"))
    tn = _cut(tor_in.select(G, "info_hash").distinct().join(tn, [G, "info_hash"], "left")
              .fillna("none", ["_nsrc"]))

    # 3. Peers (entities.rs `peers`).
    pw = Window.partitionBy(*pk)
    pall = pw.orderBy(F.col("last_ts").desc(), "_o").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)

    def tri(c):  # true if any true, else false if any false, else null
        return F.when(F.max(F.col(c).cast("int")).over(pw) == 1, True).when(F.min(F.col(c).cast("int")).over(pw) == 0, False)

    order = ["wire", "tracker", "dht", "pex", "lsd", "probe"]
    srcs = F.array_distinct(F.flatten(F.collect_list("sources").over(pw)))
    known = F.filter(F.array(*[F.lit(x) for x in order]), lambda x: F.array_contains(srcs, x))
    other = F.array_sort(F.filter(srcs, lambda x: ~x.isin(*order)))
    peers = (
        peers_in.withColumn("_ft", F.min("first_ts").over(pw)).withColumn("_lt", F.max("last_ts").over(pw))
        .withColumn("_sens", sensor_set(F.collect_list("sensor").over(pw)))
        .withColumn("sources", F.concat(known, other))
        .withColumn("prefers_encryption", tri("prefers_encryption"))
        .withColumn("utp", tri("utp"))
        .withColumn("max_rate_bps", F.max("max_rate_bps").over(pw))
        .withColumn("max_upload_rate_bps", F.max("max_upload_rate_bps").over(pw))
        .withColumn("_ids", F.array_sort(F.array_distinct(F.flatten(F.collect_list("_cf").over(pw)))))
        .withColumn("_extra", F.sum(F.greatest(F.coalesce(F.col("n_connections"), F.lit(0)) - F.size("conn_ids"),
                                               F.lit(0))).over(pw))
        .withColumn("_sup", F.sum("uploaded_bytes").over(pw)).withColumn("_sdown", F.sum("downloaded_bytes").over(pw))
        .withColumn("_ses", F.sum("encrypted_bytes_sent").over(pw))
        .withColumn("_ser", F.sum("encrypted_bytes_received").over(pw))
        .withColumn("_fp0", F.first("first_pieces").over(pw.orderBy("first_ts", "_o").rowsBetween(
            Window.unboundedPreceding, Window.unboundedFollowing)))
        .withColumn("_l", F.first(F.struct("last_pieces", "completion_source")).over(
            pw.orderBy(F.col("last_ts").desc(), F.col("_o").desc()).rowsBetween(
                Window.unboundedPreceding, Window.unboundedFollowing)))
        .withColumn("_cts0", F.min("completed_ts").over(pw))
        .withColumn("_conf0", F.coalesce(F.max(F.col("confirmed_download").cast("int")).over(pw) == 1, F.lit(False)))
    )
    for c in ("peer_id", "client", "country", "city", "latitude", "longitude", "asn", "as_org"):
        if c in peers.columns:
            peers = peers.withColumn(c, F.first(c, ignorenulls=True).over(pall))
    peers = peers.withColumn("_rk", F.row_number().over(pw.orderBy(F.col("last_ts").desc(), "_o"))).where("_rk = 1") \
        .withColumn("first_ts", F.col("_ft")).withColumn("last_ts", F.col("_lt")).withColumn("sensor", F.col("_sens")) \
        .drop("_ft", "_lt", "_sens", "_rk")
    # An encrypted connection is listed at the peer its originator end was
    # credited to (entities.rs `peers`, `enc_by_owner`).
    eo = enc.where("_own is not null").join(conns.dropDuplicates([G, "conn_id"]).select(
        G, "conn_id", "info_hash", F.col("orig_ip").alias("peer_ip")), [G, "conn_id"]) \
        .groupBy(G, "info_hash", "peer_ip", F.col("_own").alias("peer_port")).agg(F.collect_list("conn_id").alias("_eids"))
    peers = peers.join(eo, pk, "left").withColumn(
        "_ids", F.when(F.col("_eids").isNull(), F.col("_ids"))
        .otherwise(F.array_sort(F.array_distinct(F.concat("_ids", "_eids"))))).drop("_eids")
    peers = _cut(peers)
    # Connections counted for bytes: listed, whose ends name the peer, and
    # the unnamed ends at an address with one peer for the torrent.
    cinfo = conns.where("info_hash is not null")
    ends = cinfo.select(G, "info_hash", F.col("orig_ip").alias("peer_ip"), F.col("orig_peer_port").alias("_pp"), "conn_id") \
        .unionByName(cinfo.select(G, "info_hash", F.col("resp_ip").alias("peer_ip"), F.col("resp_peer_port").alias("_pp"),
                                  "conn_id"))
    by_end = ends.where("_pp is not null").select(G, "info_hash", "peer_ip", F.col("_pp").cast("int").alias("peer_port"),
                                                  "conn_id")
    unnamed = ends.where("_pp is null").select(G, "info_hash", "peer_ip", "conn_id")
    one = peers.groupBy(G, "info_hash", "peer_ip").agg(F.count(F.lit(1)).alias("_na")).where("_na = 1").drop("_na")
    listed = peers.select(*pk, F.explode("_ids").alias("conn_id"))
    pkeys = peers.select(*pk)
    counted = listed.unionByName(pkeys.join(by_end, pk)).unionByName(
        pkeys.join(one, [G, "info_hash", "peer_ip"]).join(unnamed, [G, "info_hash", "peer_ip"])).distinct()
    cside = conns.dropDuplicates([G, "conn_id"]).select(
        G, "conn_id", F.col("orig_ip").alias("_oi"), F.col("orig_peer_port").alias("_opp"),
        F.col("resp_ip").alias("_ri"), F.col("resp_peer_port").alias("_rpp"), "encrypted",
        "piece_bytes_orig", "piece_bytes_resp", "payload_bytes_orig", "payload_bytes_resp")
    pc = counted.join(cside, [G, "conn_id"])
    # Which end the peer is (entities.rs ConnInfo::side).
    oside = F.coalesce((F.col("_oi") == F.col("peer_ip")) & (F.col("_opp") == F.col("peer_port")), F.lit(False))
    rside = F.coalesce((F.col("_ri") == F.col("peer_ip")) & (F.col("_rpp") == F.col("peer_port")), F.lit(False))
    oip = F.col("_oi") == F.col("peer_ip")
    rip = F.col("_ri") == F.col("peer_ip")
    is_orig = oside | (~rside & oip & ~rip)
    side_ok = oside | rside | (oip & ~rip) | (rip & ~oip)
    sent = F.when(is_orig, F.col("piece_bytes_orig")).otherwise(F.col("piece_bytes_resp"))
    recv = F.when(is_orig, F.col("piece_bytes_resp")).otherwise(F.col("piece_bytes_orig"))
    esent = F.when(is_orig, F.col("payload_bytes_orig")).otherwise(F.col("payload_bytes_resp"))
    erecv = F.when(is_orig, F.col("payload_bytes_resp")).otherwise(F.col("payload_bytes_orig"))
    enc = F.coalesce(F.col("encrypted"), F.lit(False))
    plain, encd = side_ok & ~enc, side_ok & enc
    pbytes = pc.groupBy(*pk).agg(
        F.sum(F.when(plain, sent).otherwise(0)).alias("_up"),
        F.sum(F.when(plain, recv).otherwise(0)).alias("_down"),
        F.sum(F.when(encd, esent).otherwise(0)).alias("_esent"),
        F.sum(F.when(encd, erecv).otherwise(0)).alias("_erecv"),
    )
    # Progress fusion over the merged peer_progress rows.
    pp = ev["peer_progress"]
    for c in ("piece", "bitfield"):
        if c not in pp.columns:
            pp = pp.withColumn(c, F.lit(None).cast("long" if c == "piece" else "string"))
    pp = pp.where(F.col("cause").isin(*(WIRE_CAUSES + list(CLAIM_SLOT))))
    # A row keyed by its connection's source port goes to the peer the
    # connection names (its listen port), then through the renames.
    cp = conns.dropDuplicates([G, "conn_id"]).select(
        G, "conn_id", F.col("orig_ip").alias("_oi"), F.col("orig_port").alias("_op"),
        F.col("orig_peer_port").alias("_opp"), F.col("resp_ip").alias("_ri"),
        F.col("resp_port").alias("_rp"), F.col("resp_peer_port").alias("_rpp"))
    pp = pp.join(cp, [G, "conn_id"], "left").withColumn(
        "peer_port",
        F.when((F.col("_oi") == F.col("peer_ip")) & (F.col("_op") == F.col("peer_port")),
               F.coalesce("_opp", "peer_port"))
        .when((F.col("_ri") == F.col("peer_ip")) & (F.col("_rp") == F.col("peer_port")),
              F.coalesce("_rpp", "peer_port"))
        .otherwise(F.col("peer_port")).cast("int"))
    pp = rehash(rename(pp, allren)).select(G, "_ds", "_o", "info_hash", "peer_ip", "peer_port", "cause", "n_pieces_have",
                                   "piece", "bitfield", F.unix_micros("ts").alias("_t")) \
        .join(tn.select(G, "info_hash", "_n"), [G, "info_hash"], "left")
    fused = pp.groupBy(*pk).applyInPandas(progress_fn(threshold), PROGRESS_OUT).withColumn("_has", F.lit(True))
    peers = peers.join(pbytes, pk, "left").join(fused, pk, "left").join(tn.select(G, "info_hash", "_n"),
                                                                        [G, "info_hash"], "left")
    has = F.col("_has").isNotNull()
    whole = F.col("_extra") == 0
    peers = (
        peers.withColumn("uploaded_bytes", F.when(whole, F.coalesce("_up", F.lit(0))).otherwise(F.col("_sup")))
        .withColumn("downloaded_bytes", F.when(whole, F.coalesce("_down", F.lit(0))).otherwise(F.col("_sdown")))
        .withColumn("encrypted_bytes_sent", F.when(whole, F.coalesce("_esent", F.lit(0))).otherwise(F.col("_ses")))
        .withColumn("encrypted_bytes_received", F.when(whole, F.coalesce("_erecv", F.lit(0))).otherwise(F.col("_ser")))
        .withColumn("n_connections", F.size("_ids") + F.col("_extra"))
        .withColumn("conn_ids", F.slice("_ids", 1, 1024))
        .withColumn("n_pieces", F.col("_n"))
        .withColumn("first_pieces", F.when(has, F.col("_fp")).otherwise(F.col("_fp0")))
        .withColumn("last_pieces", F.when(has, F.col("_lp")).otherwise(F.col("_l.last_pieces")))
        .withColumn("completed_ts", F.when(has, F.timestamp_micros("_cts")).otherwise(F.col("_cts0")))
        .withColumn("confirmed_download", F.when(has, F.coalesce("_conf", F.lit(False))).otherwise(F.col("_conf0")))
        .withColumn("completion_source", F.when(has, F.col("_src")).otherwise(F.col("_l.completion_source")))
    )
    peers = _cut(peers.select(*[c for c in peers.columns if not c.startswith("_") or c in (G, "_o")]))

    # Torrents: the best metadata's row, counts from the merged tables.
    mrank = F.when(F.col("metadata_source") == "torrent_file", 2).when(F.col("metadata_source") == "ut_metadata", 1) \
        .otherwise(0)
    tw = Window.partitionBy(G, "info_hash")
    tor = (
        tor_in.withColumn("_ft", F.min("first_ts").over(tw)).withColumn("_lt", F.max("last_ts").over(tw))
        .withColumn("_sens", sensor_set(F.collect_list("sensor").over(tw)))
        .withColumn("_rk", F.row_number().over(tw.orderBy(mrank.desc(), "_o"))).where("_rk = 1")
        .withColumn("first_ts", F.col("_ft")).withColumn("last_ts", F.col("_lt")).withColumn("sensor", F.col("_sens"))
        .join(tn, [G, "info_hash"], "left").withColumn("n_pieces", F.col("_n")).withColumn("n_pieces_source", F.col("_nsrc"))
    )
    pt = peers.groupBy(G, "info_hash").agg(
        F.count(F.lit(1)).alias("n_peers"),
        F.sum(F.coalesce(F.col("confirmed_download"), F.lit(False)).cast("long")).alias("n_confirmed_downloads"),
        F.sum(F.col("prefers_encryption").isNotNull().cast("long")).alias("n_peers_encryption_known"),
        F.sum(F.coalesce(F.col("prefers_encryption"), F.lit(False)).cast("long")).alias("n_peers_prefer_encryption"),
        F.sum(F.col("utp").isNotNull().cast("long")).alias("n_peers_utp_known"),
        F.sum(F.coalesce(F.col("utp"), F.lit(False)).cast("long")).alias("n_peers_utp"),
    )
    ct = conns.dropDuplicates([G, "conn_id"]).where("info_hash is not null and not coalesce(encrypted, false)") \
        .groupBy(G, "info_hash").agg(F.sum(F.col("piece_bytes_orig") + F.col("piece_bytes_resp")).alias("piece_bytes"))
    pv = ev["pieces"].groupBy(G, "info_hash").agg(
        F.sum(F.coalesce(F.col("verified"), F.lit(False)).cast("long")).alias("n_pieces_verified"),
        F.sum((~F.coalesce(F.col("verified"), F.lit(False))).cast("long")).alias("n_pieces_failed"))
    recount = ["n_peers", "n_confirmed_downloads", "n_peers_encryption_known", "n_peers_prefer_encryption",
               "n_peers_utp_known", "n_peers_utp", "piece_bytes", "n_pieces_verified", "n_pieces_failed"]
    tcols = tor_in.columns
    tor = tor.drop(*recount).join(pt, [G, "info_hash"], "left").join(ct, [G, "info_hash"], "left") \
        .join(pv, [G, "info_hash"], "left").fillna(0, recount).select(*tcols)

    # announce_audit: replayed over the merged events; without any piece
    # message rows (--no-messages inputs) the datasets' rows are combined.
    acols = [c for c in t["announce_audit"].columns if c not in ("_ds", "_o")]
    if ev["peer_messages"].limit(1).count() > 0 or t["announce_audit"].limit(1).count() == 0:
        au = audit(spark, conns, flows, ev, caps, max_link_bps, hash_aliases(t["torrents"]))
        for c in acols:
            if c not in au.columns:
                au = au.withColumn(c, F.lit(None))
        au = au.select(*acols)
    else:
        au = combine_audit(t["announce_audit"], acols)

    # dht_nodes, dht_infohashes (entities.rs `dht_nodes`, `dht_infohashes`).
    dm = ev["dht_messages"]

    def per_sensor_max(df, keys, c):
        return df.groupBy(*(keys + ["sensor"])).agg(F.sum(F.coalesce(F.col(c), F.lit(0))).alias("_v")) \
            .groupBy(*keys).agg(F.max("_v").alias(c))

    nodes = t["dht_nodes"]
    nk = [G, "node_id", "node_ip", "node_port"]
    nw = Window.partitionBy(*nk)
    ncols = nodes.columns
    cnt = dm.where("node_id is not null").groupBy(G, F.col("node_id"), F.col("src_ip").alias("node_ip"),
                                                  F.col("src_port").alias("node_port")).agg(
        F.sum((F.col("kind") == "query").cast("long")).alias("n_queries"),
        F.sum((F.col("kind") == "response").cast("long")).alias("n_responses"),
        F.sum((~F.col("kind").isin("query", "response")).cast("long")).alias("n_errors"))
    nodes = (
        nodes.withColumn("_ft", F.min("first_ts").over(nw)).withColumn("_lt", F.max("last_ts").over(nw))
        .withColumn("read_only", F.coalesce(F.max(F.col("read_only").cast("int")).over(nw) == 1, F.lit(False)))
        .withColumn("_sens", sensor_set(F.collect_list("sensor").over(nw)))
        .withColumn("_rk", F.row_number().over(nw.orderBy(F.col("last_ts").desc(), "_o"))).where("_rk = 1")
        .withColumn("first_ts", F.col("_ft")).withColumn("last_ts", F.col("_lt")).withColumn("sensor", F.col("_sens"))
        .drop("n_queries", "n_responses", "n_errors", "n_reported")
        .join(per_sensor_max(nodes, nk, "n_reported"), nk, "left").join(cnt, nk, "left")
        .fillna(0, ["n_queries", "n_responses", "n_errors"])
        .withColumn("n_messages", F.col("n_queries") + F.col("n_responses") + F.col("n_errors"))
        .select(*ncols)
    )
    ih = t["dht_infohashes"]
    ik = [G, "info_hash"]
    iw = Window.partitionBy(*ik)
    icols = ih.columns
    icnt = dm.where("kind = 'query' and info_hash is not null").groupBy(G, "info_hash").agg(
        F.sum((F.col("method") == "get_peers").cast("long")).alias("n_get_peers"),
        F.sum((F.col("method") == "announce_peer").cast("long")).alias("n_announce_peer"))
    ih = (
        ih.withColumn("_ft", F.min("first_ts").over(iw)).withColumn("_lt", F.max("last_ts").over(iw))
        .withColumn("_sens", sensor_set(F.collect_list("sensor").over(iw)))
        .withColumn("_rk", F.row_number().over(iw.orderBy(F.col("name").isNull(), "_o"))).where("_rk = 1")
        .withColumn("first_ts", F.col("_ft")).withColumn("last_ts", F.col("_lt")).withColumn("sensor", F.col("_sens"))
        .drop("n_get_peers", "n_announce_peer", "n_values", "n_samples")
        .join(per_sensor_max(ih, ik, "n_values"), ik, "left").join(per_sensor_max(ih, ik, "n_samples"), ik, "left")
        .join(icnt, ik, "left").fillna(0, ["n_get_peers", "n_announce_peer"])
        .select(*icols)
    )

    out = {
        "flows": flows,
        "connections": conns,
        "peers": peers,
        "torrents": tor,
        "announce_audit": au,
        "dht_nodes": nodes,
        "dht_infohashes": ih,
        "capture_stats": caps,
    }
    for name, df in ev.items():
        out[name] = df
    # Column order and types of the inputs.
    for name, df in list(out.items()):
        src = raw[name]
        want = [c for c in src.columns if c not in ("_ds", "_o", "_base", "interval_start", "date", "hour") or
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
        path = f"{dest.rstrip('/')}/{name}"
        if df.limit(1).count() == 0:
            # partitionBy writes no file for an empty table, so a reader
            # would find no schema: one empty file with the table's columns,
            # in no date partition (there is no date to name).
            df.drop("date").coalesce(1).write.mode("overwrite").parquet(path)
            continue
        df = df.repartition("date")
        if sort:
            df = df.sortWithinPartitions(*sort)
        df.write.mode("overwrite").partitionBy("date").parquet(path)


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
    )
    # Extra settings, "key=value,key=value" (measurements, tuning).
    for kv in filter(None, os.environ.get("SWARMTAP_SPARK_CONF", "").split(",")):
        k, v = kv.split("=", 1)
        spark = spark.config(k.strip(), v.strip())
    spark = spark.getOrCreate()
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
