#!/usr/bin/env python3
"""Every engine reads swarmtap's output as-is (issue 17).

    python tests/engines.py [--engines pyarrow,pandas,duckdb,spark] DATASET...

For each dataset (an `analyze` folder of <table>.parquet files, or a `live`
folder of hive partitions) and each engine named, every table of
docs/schema.json is loaded without a cast and its column types are checked
against what docs/SCHEMA.md promises; then three real queries run in each
engine and must give the same answer as a plain-Python reference computed
from pyarrow's rows:

  q_join   peers -> connections -> torrents (peers.conn_ids exploded, joined
           on conn_id and info_hash, then torrents on info_hash), and
           connections -> peers of both ends (info_hash, ip, *_peer_port)
  q_hourly confirmed downloads per hour of completed_ts
  q_diff   sum and minimum of uploaded_bytes - downloaded_bytes (signed)

pandas runs twice, with the default (NumPy) dtypes and with
dtype_backend="pyarrow". The pandas major version is the venv's (the
harness runs this script in a pandas 3 venv with every engine, and in a
pandas 2 venv with --engines pyarrow,pandas). Prints one line per check and
"N passed, M failed"; exits 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA = json.loads((HERE.parent / "docs" / "schema.json").read_text())

# Partition columns a hive reader adds; not swarmtap's.
PARTITION_COLUMNS = {"date", "hour"}

passed = 0
failed = 0


def report(name: str, ok: bool, detail: str = "") -> None:
    global passed, failed
    if ok:
        passed += 1
        print(f"ok    {name}")
    else:
        failed += 1
        print(f"FAIL  {name}: {detail}")


def run(name: str, fn) -> object:
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported
        tb = traceback.format_exc(limit=3).strip().splitlines()
        report(name, False, f"{type(e).__name__}: {e} [{tb[-3] if len(tb) > 2 else ''}]")
        return None
    report(name, True)
    return out


class Dataset:
    def __init__(self, path: Path):
        self.path = path
        self.hive = not (path / "capture_stats.parquet").exists()
        self.name = f"{path.name}({'hive' if self.hive else 'single'})"

    def table_path(self, t: str) -> Path:
        return self.path / t if self.hive else self.path / f"{t}.parquet"

    def glob(self, t: str) -> str:
        """A path pattern for DuckDB."""
        return str(self.path / t / "**" / "*.parquet") if self.hive else str(self.table_path(t))


# --------------------------------------------------------------------------
# Types: what docs/SCHEMA.md promises, per engine


def expected_arrow(ty: str):
    import pyarrow as pa

    base = ty.rstrip("?")
    return {
        "int64": pa.int64(),
        "int32": pa.int32(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "string": pa.large_string(),
        "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
        "list<string>": pa.list_(pa.large_string()),
        "list<int64>": pa.list_(pa.int64()),
    }[base]


def columns(table: str, ds: Dataset) -> list[tuple[str, str]]:
    cols = [tuple(c) for c in SCHEMA[table]]
    if ds.hive and "interval_start" not in {c for c, _ in cols}:
        cols.append(("interval_start", "timestamp[us, UTC]"))
    return cols


def check_pyarrow(ds: Dataset, table: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(ds.table_path(table))
    bad = []
    for c, ty in columns(table, ds):
        f = t.schema.field(c)
        want = expected_arrow(ty)
        # A list's item field name and nullability are the writer's.
        same = f.type.equals(want) or (
            pa.types.is_list(f.type) and pa.types.is_list(want) and f.type.value_type == want.value_type
        )
        if not same:
            bad.append(f"{c}: {f.type} (want {want})")
        if not ds.hive and f.nullable != ty.endswith("?"):
            bad.append(f"{c}: nullable={f.nullable} (want {ty.endswith('?')})")
        if pa.types.is_string_view(f.type) or pa.types.is_unsigned_integer(f.type):
            bad.append(f"{c}: {f.type}")
    extra = set(t.schema.names) - {c for c, _ in columns(table, ds)} - PARTITION_COLUMNS
    if extra:
        bad.append(f"undocumented columns {sorted(extra)}")
    if bad:
        raise AssertionError("; ".join(bad))
    t.to_pandas()  # the conversion pandas users go through
    return t


def check_pandas(ds: Dataset, table: str, backend: str | None):
    import pandas as pd

    kw = {"dtype_backend": backend} if backend else {}
    df = pd.read_parquet(ds.table_path(table), **kw)
    bad = []
    for c, ty in columns(table, ds):
        dt = str(df[c].dtype)
        base = ty.rstrip("?")
        if backend == "pyarrow":
            ok = {
                "int64": dt == "int64[pyarrow]",
                "int32": dt == "int32[pyarrow]",
                "float64": dt == "double[pyarrow]",
                "bool": dt == "bool[pyarrow]",
                "string": dt in ("large_string[pyarrow]", "string[pyarrow]"),
                "timestamp[us, UTC]": dt == "timestamp[us, tz=UTC][pyarrow]",
            }.get(base, dt.startswith("list<"))
        else:
            nullable = ty.endswith("?")
            ok = {
                # NumPy integers have no null: pandas reads a nullable
                # integer column as float64 when it holds nulls.
                "int64": dt == "int64" or (nullable and dt == "float64"),
                "int32": dt == "int32" or (nullable and dt == "float64"),
                "float64": dt == "float64",
                "bool": dt == "bool" or (nullable and dt == "object"),
                "string": dt in ("object", "str", "string"),
                "timestamp[us, UTC]": dt in ("datetime64[us, UTC]", "datetime64[ns, UTC]"),
            }.get(base, dt == "object")
        if not ok:
            bad.append(f"{c}: {dt} ({ty})")
    if bad:
        raise AssertionError("; ".join(bad))
    return df


def check_duckdb(con, ds: Dataset, table: str):
    rows = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{ds.glob(table)}', hive_partitioning = {str(ds.hive).lower()})").fetchall()
    types = {r[0]: r[1] for r in rows}
    want = {
        "int64": "BIGINT",
        "int32": "INTEGER",
        "float64": "DOUBLE",
        "bool": "BOOLEAN",
        "string": "VARCHAR",
        "timestamp[us, UTC]": "TIMESTAMP WITH TIME ZONE",
        "list<string>": "VARCHAR[]",
        "list<int64>": "BIGINT[]",
    }
    bad = [f"{c}: {types.get(c)} ({ty})" for c, ty in columns(table, ds) if types.get(c) != want[ty.rstrip("?")]]
    if bad:
        raise AssertionError("; ".join(bad))
    return con.execute(f"SELECT count(*) FROM read_parquet('{ds.glob(table)}', hive_partitioning = {str(ds.hive).lower()})").fetchone()[0]


def check_spark(spark, ds: Dataset, table: str):
    df = spark.read.parquet(str(ds.table_path(table)))
    types = dict(df.dtypes)
    want = {
        "int64": "bigint",
        "int32": "int",
        "float64": "double",
        "bool": "boolean",
        "string": "string",
        "timestamp[us, UTC]": "timestamp",
        "list<string>": "array<string>",
        "list<int64>": "array<bigint>",
    }
    bad = [f"{c}: {types.get(c)} ({ty})" for c, ty in columns(table, ds) if types.get(c) != want[ty.rstrip("?")]]
    if bad:
        raise AssertionError("; ".join(bad))
    return df.count()


# --------------------------------------------------------------------------
# Queries


def reference(ds: Dataset) -> dict:
    """Plain Python over pyarrow's rows: what every engine must answer."""
    import pyarrow.parquet as pq

    rows = {t: pq.read_table(ds.table_path(t)).to_pylist() for t in ("peers", "connections", "torrents")}
    conns: dict = {}
    for c in rows["connections"]:
        k = (c["conn_id"], c["info_hash"])
        conns[k] = conns.get(k, 0) + 1
    torrents: dict = {}
    for t in rows["torrents"]:
        torrents[t["info_hash"]] = torrents.get(t["info_hash"], 0) + 1
    n_join = sum(
        conns.get((cid, p["info_hash"]), 0) * torrents.get(p["info_hash"], 0)
        for p in rows["peers"]
        for cid in p["conn_ids"]
    )
    peer_keys = {}
    for p in rows["peers"]:
        k = (p["info_hash"], p["peer_ip"], p["peer_port"])
        peer_keys[k] = peer_keys.get(k, 0) + 1
    n_ends = sum(
        peer_keys.get((c["info_hash"], c["orig_ip"], c["orig_peer_port"]), 0)
        + peer_keys.get((c["info_hash"], c["resp_ip"], c["resp_peer_port"]), 0)
        for c in rows["connections"]
    )
    hourly: dict[int, int] = {}
    for p in rows["peers"]:
        if p["confirmed_download"] and p["completed_ts"] is not None:
            h = int(p["completed_ts"].timestamp()) // 3600
            hourly[h] = hourly.get(h, 0) + 1
    diffs = [p["uploaded_bytes"] - p["downloaded_bytes"] for p in rows["peers"]]
    return {
        "q_join": (n_join, n_ends),
        "q_hourly": sorted(hourly.items()),
        "q_diff": (sum(diffs), min(diffs) if diffs else None),
    }


def queries_pandas(ds: Dataset, backend: str | None) -> dict:
    import pandas as pd

    kw = {"dtype_backend": backend} if backend else {}
    peers = pd.read_parquet(ds.table_path("peers"), **kw)
    conns = pd.read_parquet(ds.table_path("connections"), **kw)
    tor = pd.read_parquet(ds.table_path("torrents"), **kw)
    e = peers[["info_hash", "conn_ids"]].explode("conn_ids").dropna(subset=["conn_ids"])
    e = e.rename(columns={"conn_ids": "conn_id"})
    e["conn_id"] = e["conn_id"].astype(conns["conn_id"].dtype)
    j = e.merge(conns[["conn_id", "info_hash"]], on=["conn_id", "info_hash"]).merge(tor[["info_hash"]], on="info_hash")
    keys = peers[["info_hash", "peer_ip", "peer_port"]]
    n_ends = 0
    for side in ("orig", "resp"):
        c = conns[["info_hash", f"{side}_ip", f"{side}_peer_port"]].dropna()
        c = c.rename(columns={f"{side}_ip": "peer_ip", f"{side}_peer_port": "peer_port"})
        c["peer_port"] = c["peer_port"].astype(keys["peer_port"].dtype)
        n_ends += len(c.merge(keys, on=["info_hash", "peer_ip", "peer_port"]))
    done = peers[peers["confirmed_download"].fillna(False).astype(bool)]
    hours = done["completed_ts"].dropna().dt.floor("h")
    hourly = sorted((int(pd.Timestamp(k).timestamp()) // 3600, int(v)) for k, v in hours.value_counts().items())
    d = peers["uploaded_bytes"] - peers["downloaded_bytes"]
    return {
        "q_join": (len(j), n_ends),
        "q_hourly": hourly,
        "q_diff": (int(d.sum()), int(d.min()) if len(d) else None),
    }


def queries_duckdb(con, ds: Dataset) -> dict:
    hp = str(ds.hive).lower()
    for t in ("peers", "connections", "torrents"):
        con.execute(f"CREATE OR REPLACE VIEW {t} AS SELECT * FROM read_parquet('{ds.glob(t)}', hive_partitioning = {hp})")
    n_join = con.execute(
        """SELECT count(*) FROM (SELECT info_hash, unnest(conn_ids) AS conn_id FROM peers) p
           JOIN connections c ON c.conn_id = p.conn_id AND c.info_hash = p.info_hash
           JOIN torrents t ON t.info_hash = p.info_hash"""
    ).fetchone()[0]
    n_ends = con.execute(
        """SELECT (SELECT count(*) FROM connections c JOIN peers p
                   ON p.info_hash = c.info_hash AND p.peer_ip = c.orig_ip AND p.peer_port = c.orig_peer_port)
                + (SELECT count(*) FROM connections c JOIN peers p
                   ON p.info_hash = c.info_hash AND p.peer_ip = c.resp_ip AND p.peer_port = c.resp_peer_port)"""
    ).fetchone()[0]
    hourly = con.execute(
        """SELECT epoch_us(completed_ts) // 3600000000 AS h, count(*) FROM peers
           WHERE confirmed_download AND completed_ts IS NOT NULL GROUP BY h ORDER BY h"""
    ).fetchall()
    s, m = con.execute("SELECT sum(uploaded_bytes - downloaded_bytes), min(uploaded_bytes - downloaded_bytes) FROM peers").fetchone()
    return {
        "q_join": (n_join, n_ends),
        "q_hourly": [(int(h), int(n)) for h, n in hourly],
        "q_diff": (int(s) if s is not None else 0, int(m) if m is not None else None),
    }


def queries_spark(spark, ds: Dataset) -> dict:
    for t in ("peers", "connections", "torrents"):
        spark.read.parquet(str(ds.table_path(t))).createOrReplaceTempView(t)
    q = lambda s: spark.sql(s).collect()  # noqa: E731
    n_join = q(
        """SELECT count(*) FROM (SELECT info_hash, explode(conn_ids) AS conn_id FROM peers) p
           JOIN connections c ON c.conn_id = p.conn_id AND c.info_hash = p.info_hash
           JOIN torrents t ON t.info_hash = p.info_hash"""
    )[0][0]
    n_ends = sum(
        q(
            f"""SELECT count(*) FROM connections c JOIN peers p ON p.info_hash = c.info_hash
                AND p.peer_ip = c.{side}_ip AND p.peer_port = c.{side}_peer_port"""
        )[0][0]
        for side in ("orig", "resp")
    )
    hourly = q(
        """SELECT floor(unix_micros(completed_ts) / 3600000000) AS h, count(*) FROM peers
           WHERE confirmed_download AND completed_ts IS NOT NULL GROUP BY h ORDER BY h"""
    )
    s, m = q("SELECT sum(uploaded_bytes - downloaded_bytes), min(uploaded_bytes - downloaded_bytes) FROM peers")[0]
    return {
        "q_join": (int(n_join), int(n_ends)),
        "q_hourly": [(int(h), int(n)) for h, n in hourly],
        "q_diff": (int(s) if s is not None else 0, int(m) if m is not None else None),
    }


def compare(name: str, got: dict | None, want: dict) -> None:
    if got is None:
        return
    for k, v in want.items():
        g = got.get(k)
        g = [tuple(x) for x in g] if isinstance(g, list) else tuple(g) if isinstance(g, (list, tuple)) else g
        w = [tuple(x) for x in v] if isinstance(v, list) else tuple(v) if isinstance(v, (list, tuple)) else v
        report(f"{name} {k} = {w}", g == w, f"got {g}, want {w}")


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", type=Path)
    ap.add_argument("--engines", default="pyarrow,pandas,duckdb,spark")
    ap.add_argument(
        "--expect-rows",
        action="store_true",
        help="the datasets come from captures with peer-wire traffic: the join and the hourly query must find rows",
    )
    a = ap.parse_args()
    engines = a.engines.split(",")
    import pyarrow

    print(f"pyarrow {pyarrow.__version__}")
    spark = con = None
    if "pandas" in engines:
        import pandas as pd

        print(f"pandas {pd.__version__}")
    if "duckdb" in engines:
        import duckdb

        print(f"duckdb {duckdb.__version__}")
        con = duckdb.connect()
    if "spark" in engines:
        import pyspark
        from pyspark.sql import SparkSession

        print(f"pyspark {pyspark.__version__}")
        spark = (
            SparkSession.builder.master("local[1]")
            .appName("swarmtap-engines")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
    for path in a.datasets:
        ds = Dataset(path)
        want = run(f"{ds.name} reference", lambda: reference(ds))
        if want is None:
            continue
        if a.expect_rows:
            report(f"{ds.name} join finds rows", want["q_join"][0] > 0 and want["q_join"][1] > 0, str(want["q_join"]))
            report(f"{ds.name} confirmed downloads found", len(want["q_hourly"]) > 0, str(want["q_hourly"]))
        for t in SCHEMA:
            if "pyarrow" in engines:
                run(f"{ds.name} pyarrow {t}", lambda: check_pyarrow(ds, t))
            if "pandas" in engines:
                run(f"{ds.name} pandas {t}", lambda: check_pandas(ds, t, None))
                run(f"{ds.name} pandas[pyarrow] {t}", lambda: check_pandas(ds, t, "pyarrow"))
            if con is not None:
                run(f"{ds.name} duckdb {t}", lambda: check_duckdb(con, ds, t))
            if spark is not None:
                run(f"{ds.name} spark {t}", lambda: check_spark(spark, ds, t))
        if "pandas" in engines:
            compare(f"{ds.name} pandas", run(f"{ds.name} pandas queries", lambda: queries_pandas(ds, None)), want)
            compare(
                f"{ds.name} pandas[pyarrow]",
                run(f"{ds.name} pandas[pyarrow] queries", lambda: queries_pandas(ds, "pyarrow")),
                want,
            )
        if con is not None:
            compare(f"{ds.name} duckdb", run(f"{ds.name} duckdb queries", lambda: queries_duckdb(con, ds)), want)
        if spark is not None:
            compare(f"{ds.name} spark", run(f"{ds.name} spark queries", lambda: queries_spark(spark, ds)), want)
    if spark is not None:
        spark.stop()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
