#!/usr/bin/env python3
"""Executes the swarmtap notebooks against one or more datasets (used by notebooks/run.sh).

    run_notebooks.py [--out DIR] [--only NAME]... [--hive-copy LABEL=SRC] LABEL=DATASET...

Each notebook runs in a fresh kernel with the repository root as its working
directory and SWARMTAP_DATASET set to the dataset. The committed notebooks are
never modified: each is executed in memory and the executed copy (outputs and
figures included) is written to DIR/LABEL/<notebook>.ipynb, and every figure a
notebook shows through swarmtap_nb.show() is saved as DIR/LABEL/figures/<notebook>/<name>.png.

A dataset given as LABEL=PATH whose PATH does not exist counts as a failure of
every notebook (the analyzer could not produce it). `--hive-copy LABEL=SRC`
first rewrites the single-run dataset SRC into the hive-partitioned layout of
`swarmtap live` (DIR/<table>/date=…/hour=…/part-*.parquet, nothing for empty
tables) under DIR/LABEL-dataset and runs the notebooks on it too.

Prints one line per notebook × dataset and a closing `N passed, M failed`;
exits 1 when anything failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def hive_copy(src: Path, dst: Path) -> None:
    """Rewrites a single-run dataset into the live layout, partitioned by the rows' time."""
    import polars as pl

    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for f in sorted(src.glob("*.parquet")):
        df = pl.read_parquet(f)
        if df.height == 0:
            continue
        tcol = next((c for c in ("ts", "first_ts", "last_ts") if c in df.columns), None)
        if tcol is None:
            key = pl.lit("1970-01-01").alias("_date"), pl.lit("00").alias("_hour")
        else:
            t = pl.col(tcol).fill_null(pl.col(tcol).min())
            key = (t.dt.strftime("%Y-%m-%d").fill_null("1970-01-01").alias("_date"),
                   t.dt.strftime("%H").fill_null("00").alias("_hour"))
        df = df.with_columns(*key)
        for i, ((d, h), part) in enumerate(df.group_by(["_date", "_hour"], maintain_order=True)):
            p = dst / f.stem / f"date={d}" / f"hour={h}"
            p.mkdir(parents=True, exist_ok=True)
            part.drop("_date", "_hour").write_parquet(p / f"part-{i:05d}.parquet")


def schema_notes(dataset: Path) -> list[str]:
    """Differences between the dataset's files and swarmtap_nb.SCHEMA (a mirror of tables.rs)."""
    import polars as pl

    sys.path.insert(0, str(HERE))
    import swarmtap_nb as nb

    notes = []
    for name, cols in nb.SCHEMA.items():
        f = dataset / f"{name}.parquet"
        if not f.is_file():
            continue
        have = pl.read_parquet_schema(f)
        extra = [c for c in have if c not in cols]
        lacking = [c for c in cols if c not in have]
        differ = [f"{c} {have[c]} (SCHEMA: {dt})" for c, dt in cols.items() if c in have and have[c] != dt]
        if extra:
            notes.append(f"{name}: columns not in swarmtap_nb.SCHEMA: {', '.join(extra)}")
        if lacking:
            notes.append(f"{name}: SCHEMA columns absent from the file: {', '.join(lacking)}")
        if differ:
            notes.append(f"{name}: dtypes differ: {'; '.join(differ)}")
    for f in sorted(dataset.glob("*.parquet")):
        if f.stem not in nb.SCHEMA:
            notes.append(f"table {f.stem} is not in swarmtap_nb.SCHEMA")
    return notes


def run_one(nb_path: Path, label: str, dataset: Path, out: Path, timeout: int) -> tuple[bool, str]:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    nb = nbformat.read(nb_path, as_version=4)
    figdir = out / label / "figures" / nb_path.stem
    shutil.rmtree(figdir, ignore_errors=True)
    os.environ["SWARMTAP_DATASET"] = str(dataset)
    os.environ["SWARMTAP_NB_FIGDIR"] = str(figdir)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3", transport="ipc")  # local sockets, not TCP
    client = NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    ok, why = True, ""
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as e:
        ok = False
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        why = lines[-1] if lines else type(e).__name__
        for cell in nb.cells:  # name the failing cell
            for o in cell.get("outputs", []):
                if o.get("output_type") == "error":
                    first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                    why = f"{o.get('ename')}: {o.get('evalue')}  [cell starting {first[:70]!r}]"
    except Exception as e:  # kernel death, bad notebook, …
        ok = False
        why = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        try:
            if km.has_kernel:
                km.shutdown_kernel(now=True)
        except Exception:
            pass
    dest = out / label / nb_path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return ok, why


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*", metavar="LABEL=DATASET")
    ap.add_argument("--out", default=str(ROOT / "target" / "notebooks-out"))
    ap.add_argument("--only", action="append", default=[], help="run only these notebooks (stem or file name)")
    ap.add_argument("--hive-copy", action="append", default=[], metavar="LABEL=SRC")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    ap.add_argument("--strict-schema", action="store_true",
                    help="a difference between a dataset's files and swarmtap_nb.SCHEMA fails the run "
                         "(notebooks/run.sh sets it for the datasets it writes itself)")
    a = ap.parse_args()

    out = Path(a.out).resolve()
    notebooks = sorted(HERE.glob("*.ipynb"))
    if a.only:
        want = {Path(o).stem for o in a.only}
        notebooks = [n for n in notebooks if n.stem in want]
    if not notebooks:
        print("no notebooks to run", file=sys.stderr)
        return 1

    datasets: list[tuple[str, Path]] = []
    for spec in a.datasets:
        label, _, path = spec.partition("=")
        if not path:
            label, path = Path(spec).name, spec
        datasets.append((label, Path(path).resolve()))
    for spec in a.hive_copy:
        label, _, src = spec.partition("=")
        dst = out / f"{label}-dataset"
        if Path(src).is_dir():
            hive_copy(Path(src), dst)
        datasets.append((label, dst))
    if not datasets:
        print("no datasets given", file=sys.stderr)
        return 1

    passed = failed = 0
    failures = []
    for label, path in datasets:
        if path.is_dir():
            notes = schema_notes(path)
            for note in notes:
                print(f"{'FAIL' if a.strict_schema else 'note'} [{label}]: schema: {note}")
            if notes and a.strict_schema:
                # The datasets were written by this swarmtap: its schema and the
                # notebooks' mirror of it must agree.
                failed += 1
                failures.append(f"schema [{label}]: {len(notes)} difference(s) from swarmtap_nb.SCHEMA")
        for nbp in notebooks:
            t0 = time.time()
            if not path.is_dir():
                ok, why = False, f"dataset {path} was not produced"
            else:
                ok, why = run_one(nbp, label, path, out, a.timeout)
            dt = time.time() - t0
            if ok:
                passed += 1
                print(f"PASS  {nbp.stem:<16} [{label}]  {dt:5.1f} s", flush=True)
            else:
                failed += 1
                failures.append(f"{nbp.stem} [{label}]: {why}")
                print(f"FAIL  {nbp.stem:<16} [{label}]  {dt:5.1f} s  {why}", flush=True)
    print(f"executed notebooks and figures: {out}")
    for f in failures:
        print(f"failed: {f}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
