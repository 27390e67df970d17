#!/usr/bin/env python3
"""Compares two swarmtap output directories table by table.

    python3 bench/compare_outputs.py DIR_A DIR_B

Every `*.parquet` file in either directory must exist in both, with the same
schema (column names, order and dtypes) and the same rows in the same order
(nulls and floats compared exactly). Exits 1 and names the first differing
row of each differing table, 0 when every table is equal.

COMPARE_NEW_COLUMNS=table.column,... names columns the second directory
may have and the first lacks (columns a change adds): they are left out
of the comparison, everything else must still be equal.

COMPARE_IGNORE=table.column,... names columns left out of the comparison in
both directories: figures of the program's own memory that a change to its
data structures moves (capture_stats.max_flow_memory sums `size_of` of the
flows' state). Say so when you use it.
"""

import os
import sys
from pathlib import Path

import polars as pl


def first_difference(a: pl.DataFrame, b: pl.DataFrame) -> str:
    if a.schema != b.schema:
        return f"schema differs: {a.schema} vs {b.schema}"
    if a.height != b.height:
        return f"{a.height} vs {b.height} rows"
    for col in a.columns:
        ca, cb = a[col], b[col]
        same = (ca == cb) | (ca.is_null() & cb.is_null())
        # NaN == NaN is false in polars; treat bit-equal NaNs as equal.
        if ca.dtype in (pl.Float32, pl.Float64):
            same = same | (ca.is_nan() & cb.is_nan())
        same = same.fill_null(False)
        if not same.all():
            i = int((~same).arg_max())
            return f"column {col}, row {i}: {ca[i]!r} vs {cb[i]!r}"
    return ""


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    da, db = Path(sys.argv[1]), Path(sys.argv[2])
    names = sorted({p.name for p in da.glob("*.parquet")} | {p.name for p in db.glob("*.parquet")})
    if not names:
        print(f"no Parquet files in {da} or {db}", file=sys.stderr)
        return 2
    bad = 0
    rows = 0
    for n in names:
        pa, pb = da / n, db / n
        if not pa.exists() or not pb.exists():
            print(f"{n}: only in {'the first' if pa.exists() else 'the second'} directory")
            bad += 1
            continue
        a, b = pl.read_parquet(pa), pl.read_parquet(pb)
        table = n.removesuffix(".parquet")
        for spec in filter(None, os.environ.get("COMPARE_NEW_COLUMNS", "").split(",")):
            t, _, col = spec.partition(".")
            if t == table and col in b.columns and col not in a.columns:
                b = b.drop(col)
        for spec in filter(None, os.environ.get("COMPARE_IGNORE", "").split(",")):
            t, _, col = spec.partition(".")
            if t == table:
                a = a.drop(col, strict=False)
                b = b.drop(col, strict=False)
        diff = first_difference(a, b)
        if diff:
            print(f"{n}: {diff}")
            bad += 1
        rows += a.height
    if bad:
        print(f"{bad} of {len(names)} tables differ")
        return 1
    print(f"{len(names)} tables equal ({rows} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
