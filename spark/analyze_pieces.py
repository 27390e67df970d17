#!/usr/bin/env python3
"""Analyse one huge capture set in parallel on Spark, then merge (issue 19).

    spark-submit --files /path/to/swarmtap spark/analyze_pieces.py \\
        CAPTURE_OR_DIR... -o OUT --work WORKDIR [--interval 3600 | --pieces N | --no-split] \\
        [--torrents PATH]... [--sensor NAME] [--swarmtap PATH] [-- ANALYZE_ARGS...]

1. Split: each capture is cut by time with `editcap -i SECONDS` (on the
   driver) into WORKDIR/pieces/; `--no-split` takes the files as they come
   (a tap's rotated files are pieces already).
2. Analyse: one Spark task per piece runs `swarmtap analyze PIECE -o
   WORKDIR/datasets/<piece>` (one thread each: Spark runs as many tasks at
   once as it has cores).
3. Merge: spark/merge.py over the piece datasets, written to OUT as its
   tables partitioned by date.

A connection that straddles a cut ends in one piece and is picked up
mid-stream in the next; the merge joins them back (docs/MERGE.md).

The pieces, datasets and the swarmtap binary must be where every executor
can read and write them: local mode, or a shared filesystem (NFS, a
cluster's common mount). The binary is found as --swarmtap, else a file
named `swarmtap` shipped with `spark-submit --files`, else `swarmtap` on
PATH. OUT may be any path Spark writes (hdfs://, s3a://).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import merge as M  # noqa: E402

CAPTURE_EXT = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".pcap.zst", ".pcapng.zst")


def captures(inputs: List[str]) -> List[str]:
    out = []
    for p in inputs:
        if os.path.isdir(p):
            out += sorted(f for f in glob.glob(os.path.join(p, "**", "*"), recursive=True)
                          if f.endswith(CAPTURE_EXT) and os.path.isfile(f))
        else:
            out.append(p)
    return out


def span(capture: str) -> tuple:
    """(first, last) packet time in seconds, from capinfos."""
    r = subprocess.run(["capinfos", "-T", "-r", "-S", "-a", "-e", capture], check=True, stdout=subprocess.PIPE,
                       text=True)
    f = r.stdout.strip().split("\t")
    return float(f[1]), float(f[2])


def split(capture: str, dest: str, interval: Optional[float], pieces: Optional[int]) -> List[str]:
    """`editcap -i` into `dest`: pieces of `interval` seconds, or `pieces`
    pieces of equal duration."""
    os.makedirs(dest, exist_ok=True)
    if pieces:
        a, b = span(capture)
        interval = max((b - a) / pieces * (1 + 1e-6), 1e-6)
    base = os.path.basename(capture)
    stem, ext = os.path.splitext(base)
    subprocess.run(["editcap", "-i", f"{interval:.6f}", capture, os.path.join(dest, base)], check=True)
    out = []
    for f in sorted(glob.glob(os.path.join(dest, f"{stem}_*{ext}"))):
        # editcap -i writes a file for an interval without packets too.
        c = subprocess.run(["capinfos", "-T", "-r", "-c", f], stdout=subprocess.PIPE, text=True).stdout.split("\t")
        if len(c) > 1 and c[1].strip() == "0":
            os.remove(f)
        else:
            out.append(f)
    return out


def find_binary(given: Optional[str]) -> str:
    if given:
        return given
    try:
        from pyspark import SparkFiles

        p = SparkFiles.get("swarmtap")
        if os.path.exists(p):
            return p
    except Exception:  # not inside a Spark task, or nothing shipped
        pass
    return shutil.which("swarmtap") or "swarmtap"


def analyze_task(args):
    """One Spark task: one piece in, one dataset out. Returns (piece,
    dataset, seconds, stderr tail) and raises on failure (Spark retries)."""
    import time

    piece, out, binary, extra = args
    t = time.time()
    b = find_binary(binary)
    cmd = [b, "analyze", piece, "-o", out, "--threads", "1", "--force", *extra]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return piece, out, time.time() - t, r.stderr.strip().splitlines()[-1:] or [""]


def run(spark, pieces: List[str], work: str, binary: Optional[str], extra: List[str]) -> List[str]:
    """Analyse every piece as one Spark task; the dataset directories, in
    piece order."""
    dsdir = os.path.join(work, "datasets")
    os.makedirs(dsdir, exist_ok=True)
    jobs = []
    for i, p in enumerate(pieces):
        name = f"{i:05d}-" + os.path.basename(p).split(".")[0]
        jobs.append((os.path.abspath(p), os.path.abspath(os.path.join(dsdir, name)), binary, extra))
    if not jobs:
        return []
    res = spark.sparkContext.parallelize(jobs, numSlices=len(jobs)).map(analyze_task).collect()
    for piece, out, secs, tail in res:
        print(f"analyze_pieces: {os.path.basename(piece)} -> {out} in {secs:.1f} s: {tail[0]}", file=sys.stderr)
    return [j[1] for j in jobs]


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description="Split captures by time, analyse each piece as a Spark task, merge.")
    ap.add_argument("inputs", nargs="+", help="captures or directories of captures")
    ap.add_argument("-o", "--output", required=True, help="merged dataset (tables partitioned by date)")
    ap.add_argument("--work", required=True, help="directory for pieces and piece datasets (shared by executors)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--interval", type=float, help="seconds per piece (editcap -i)")
    g.add_argument("--pieces", type=int, help="pieces per capture, of equal duration")
    g.add_argument("--no-split", action="store_true", help="the inputs are pieces already (rotated files)")
    ap.add_argument("--torrents", action="append", default=[], help="passed to analyze --torrents")
    ap.add_argument("--sensor", default=None, help="passed to analyze --sensor")
    ap.add_argument("--swarmtap", default=None, help="swarmtap binary on every executor")
    ap.add_argument("--master", default=None, help="Spark master when spark-submit does not set one")
    ap.add_argument("--tolerance", type=float, default=2.0)
    ap.add_argument("--join-gap", type=float, default=120.0)
    ap.add_argument("--threshold", type=float, default=0.98)
    a = ap.parse_args(argv)
    if not (a.interval or a.pieces or a.no_split):
        a.interval = 3600.0
    for t in a.torrents:
        extra += ["--torrents", os.path.abspath(t)]
    if a.sensor:
        extra += ["--sensor", a.sensor]
    if a.threshold != 0.98:
        extra += ["--threshold", str(a.threshold)]

    caps = captures(a.inputs)
    pieces: List[str] = []
    if a.no_split:
        pieces = caps
    else:
        for i, c in enumerate(caps):
            pieces += split(c, os.path.join(a.work, "pieces", f"{i:05d}"), a.interval, a.pieces)
    spark = M.session(app="swarmtap-analyze-pieces", master=a.master)
    dirs = run(spark, pieces, a.work, a.swarmtap, extra)
    out = M.merge(spark, [dirs], a.tolerance, a.join_gap, a.threshold)
    M.write(out, a.output)
    print(f"analyze_pieces: {len(caps)} capture(s), {len(pieces)} piece(s) merged into {a.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
