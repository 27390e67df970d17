"""Shared helpers for the swarmtap notebooks.

Loading a dataset
-----------------
``open_dataset(path)`` accepts both layouts swarmtap writes:

* a single run (``swarmtap analyze -o DIR``): ``DIR/<table>.parquet``;
* live, hive-partitioned output (``swarmtap live -o DIR``):
  ``DIR/<table>/date=YYYY-MM-DD/hour=HH/part-*.parquet``.

``Dataset.table(name)`` returns a polars DataFrame in both cases. A table that
is absent (a dataset written by an older swarmtap) comes back empty with the
columns listed in ``SCHEMA`` below, and a column that a table lacks is added as
nulls, so the notebooks run on old datasets too. The files' own schema always
wins: ``SCHEMA`` is only used to fill what is missing. Columns beyond
``SCHEMA`` (for example ``country``/``latitude`` from ``--geoip``) are kept as
the files have them and never invented.

Truth files
-----------
The bundled captures in ``sample-pcaps/`` come with ``<scenario>.truth.json``
files written by the capture generator (see sample-pcaps/README.md).
``sample_truths(ds)`` returns the truth files whose ``capture`` appears in the
dataset's ``capture_stats``, so cells assert facts only on datasets made from
those captures.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

# The environment variable every notebook reads its dataset from.
DATASET_ENV = "SWARMTAP_DATASET"
# Default dataset: the main job's output (tests/main-job.sh) at the repository root.
DEFAULT_DATASET = "swarmtap-out"
# Completion threshold for confirmed downloads: swarmtap's --threshold default.
THRESHOLD = float(os.environ.get("SWARMTAP_THRESHOLD") or 0.98)
# Peak-rate window: swarmtap's --rate-window default (seconds).
RATE_WINDOW_S = float(os.environ.get("SWARMTAP_RATE_WINDOW") or 5)

TS = pl.Datetime("us", "UTC")

# Column types of every table, from docs/schema.json, which the test suite
# generates from src/sink/tables.rs and keeps current. Used only to give a
# missing table or column its type; the files' own schema wins wherever they
# have a column.
_TYPES = {
    "int64": pl.Int64,
    "int32": pl.Int32,
    "float64": pl.Float64,
    "bool": pl.Boolean,
    "string": pl.String,
    "timestamp[us, UTC]": TS,
    "list<string>": pl.List(pl.String),
    "list<int64>": pl.List(pl.Int64),
}


def _load_schema() -> dict:
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    for base in (here.parent, Path.cwd(), Path.cwd().parent):
        p = base / "docs" / "schema.json"
        if p.exists():
            raw = json.loads(p.read_text())
            return {t: {c: _TYPES[ty.rstrip("?")] for c, ty in cols} for t, cols in raw.items()}
    raise FileNotFoundError("docs/schema.json not found next to the notebooks")


SCHEMA: dict[str, dict[str, pl.DataType]] = _load_schema()

# Tables that hold one row per entity (not per event). In live (hive) output a
# rotation may write a fresh row for the same entity; `Dataset.table` keeps the
# latest one (by the time column) so both layouts read the same way.
ENTITY_KEYS = {
    # Live output writes these at every rotation (snapshots) and when a
    # flow ends; the latest row of each key wins (by interval_start, then
    # last_ts). first_ts is part of the flow key because conn_id (a frame
    # number) starts again when swarmtap live restarts.
    "flows": (["conn_id", "first_ts"], "last_ts"),
    "connections": (["conn_id", "first_ts"], "last_ts"),
    "peers": (["info_hash", "peer_ip", "peer_port"], "last_ts"),
    "torrents": (["info_hash"], "last_ts"),
    "announce_audit": (["tracker_ip", "tracker_port", "transport", "info_hash", "client_ip", "peer_id"], "last_ts"),
    "dht_nodes": (["node_id", "node_ip", "node_port"], "last_ts"),
    "dht_infohashes": (["info_hash"], "last_ts"),
}


# --------------------------------------------------------------------------
# Locating and loading a dataset


def dataset_path(value: str | os.PathLike | None = None) -> Path:
    """The dataset directory: `value`, else $SWARMTAP_DATASET, else ./swarmtap-out.

    A relative path is taken from the working directory; when that does not
    exist and the working directory is notebooks/ (Jupyter started there), the
    repository root is tried too.
    """
    raw = value if value not in (None, "") else (os.environ.get(DATASET_ENV) or DEFAULT_DATASET)
    p = Path(raw).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve() if p.exists() else p
    cwd = Path.cwd()
    for base in (cwd.parent, cwd.parent.parent):
        if (base / p).exists():
            return (base / p).resolve()
    return p


class Dataset:
    """One swarmtap output directory (single run or hive-partitioned live output)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(
                f"no swarmtap dataset at {self.path}: run `bash tests/main-job.sh` (writes ./swarmtap-out) "
                f"or `swarmtap analyze CAPTURES -o DIR`, then set {DATASET_ENV}=DIR"
            )
        self._cache: dict[str, pl.DataFrame] = {}
        self.status: dict[str, str] = {}  # table -> "rows" | "empty" | "missing"
        self.layouts: dict[str, str] = {}  # table -> "single" | "hive" | "single+hive" | "none"
        self.filled_columns: dict[str, list[str]] = {}

    # -- discovery --
    def _files(self, name: str) -> tuple[list[Path], str]:
        single = self.path / f"{name}.parquet"
        files: list[Path] = []
        kinds = []
        if single.is_file():
            files.append(single)
            kinds.append("single")
        d = self.path / name
        if d.is_dir():
            parts = sorted(
                f for f in d.rglob("*.parquet")
                if f.is_file() and not f.name.startswith((".", "_")) and not any(
                    seg.startswith((".", "_")) for seg in f.relative_to(d).parts[:-1])
            )
            if parts:
                files.extend(parts)
                kinds.append("hive")
        return files, "+".join(kinds) or "none"

    def table_names(self) -> list[str]:
        """Known tables first (schema order), then any other table found on disk."""
        names = list(SCHEMA)
        extra = set()
        for f in self.path.glob("*.parquet"):
            extra.add(f.stem)
        for d in self.path.iterdir():
            if d.is_dir() and any(d.rglob("*.parquet")):
                extra.add(d.name)
        return names + sorted(extra - set(names))

    @property
    def layout(self) -> str:
        """single, hive, mixed or empty (no table files at all)."""
        kinds = {self._files(n)[1] for n in self.table_names()} - {"none"}
        if not kinds:
            return "empty"
        if kinds == {"single"}:
            return "single"
        if kinds == {"hive"}:
            return "hive"
        return "mixed"

    # -- loading --
    @staticmethod
    def _read_many(files: list[Path]) -> pl.DataFrame:
        frames = [pl.read_parquet(f) for f in files]
        if len(frames) == 1:
            return frames[0]
        nonempty = [f for f in frames if f.height] or frames[:1]
        try:
            return pl.concat(nonempty, how="vertical")
        except Exception:
            return pl.concat(nonempty, how="diagonal_relaxed")

    def table(self, name: str, dedupe: bool = True) -> pl.DataFrame:
        """The table as a DataFrame (cached). Missing tables and columns are filled from SCHEMA."""
        key = f"{name}|{dedupe}"
        if key in self._cache:
            return self._cache[key]
        files, kinds = self._files(name)
        self.layouts[name] = kinds
        if files:
            df = self._read_many(files)
        else:
            df = pl.DataFrame(schema=SCHEMA.get(name, {}))
        filled = []
        for col, dt in SCHEMA.get(name, {}).items():
            if col not in df.columns:
                df = df.with_columns(pl.lit(None, dtype=dt).alias(col))
                filled.append(col)
        self.filled_columns[name] = filled
        if dedupe and "hive" in kinds and name in ENTITY_KEYS and df.height:
            keys, order = ENTITY_KEYS[name]
            keys = [k for k in keys if k in df.columns]
            order = (["interval_start"] if "interval_start" in df.columns else []) + [order]
            df = df.sort(order, nulls_last=False).unique(subset=keys, keep="last", maintain_order=True)
        self.status[name] = "missing" if not files else ("rows" if df.height else "empty")
        self._cache[key] = df
        return df

    __getitem__ = table

    def has_rows(self, name: str) -> bool:
        return self.table(name).height > 0

    def counts(self) -> pl.DataFrame:
        """Row count, file count, bytes on disk and layout of every table."""
        rows = []
        for n in self.table_names():
            files, kinds = self._files(n)
            df = self.table(n)
            rows.append({
                "table": n, "rows": df.height, "status": self.status[n], "layout": kinds,
                "files": len(files), "mib_on_disk": round(sum(f.stat().st_size for f in files) / 2**20, 3),
                "filled_columns": ", ".join(self.filled_columns.get(n, [])) or None,
            })
        return pl.DataFrame(rows, schema={"table": pl.String, "rows": pl.Int64, "status": pl.String,
                                          "layout": pl.String, "files": pl.Int64, "mib_on_disk": pl.Float64,
                                          "filled_columns": pl.String})

    def __repr__(self):
        return f"Dataset({str(self.path)!r}, layout={self.layout})"


def open_dataset(path: str | os.PathLike | None = None) -> Dataset:
    """Opens the dataset at `path` (default: $SWARMTAP_DATASET, else ./swarmtap-out)."""
    return Dataset(dataset_path(path))


def load_table(path: str | os.PathLike, name: str) -> pl.DataFrame:
    """One table of a dataset directory in either layout (single run or hive-partitioned live output)."""
    return Dataset(path).table(name)


# --------------------------------------------------------------------------
# Small formatting and plotting helpers


def say(msg: str) -> None:
    """A message in the notebook output (used where a table is empty)."""
    print(msg)


def short(ih: str | None, n: int = 10) -> str:
    return "?" if ih is None else ih[:n]


def torrent_labels(ds: Dataset) -> dict[str, str]:
    """info_hash -> 'name (abcdef1234)' for plot legends."""
    t = ds.table("torrents")
    out = {}
    for ih, name in t.select("info_hash", "name").iter_rows():
        out[ih] = f"{name} ({short(ih, 8)})" if name else short(ih, 12)
    return out


def client_family(client: str | None) -> str:
    """The client's name without its version: 'qBittorrent 4.5.2' -> 'qBittorrent', 'aria2/1.36.0' -> 'aria2'."""
    if not client:
        return "(unknown)"
    words = []
    for w in client.replace("/", " ").split():
        if re.match(r"^v?\d", w):
            break
        words.append(w)
    return " ".join(words) or client


def human_bytes(n: float | int | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def with_n_pieces(progress: pl.DataFrame, ds: Dataset) -> pl.DataFrame:
    """peer_progress with `n_total`: its own n_pieces, else torrents.n_pieces, and `fraction`."""
    t = ds.table("torrents").select("info_hash", pl.col("n_pieces").alias("_t_n_pieces")).unique("info_hash")
    return (progress.join(t, on="info_hash", how="left")
            .with_columns(n_total=pl.coalesce(pl.col("n_pieces"), pl.col("_t_n_pieces")))
            .drop("_t_n_pieces")
            .with_columns(fraction=pl.when(pl.col("n_total") > 0)
                          .then(pl.col("n_pieces_have").cast(pl.Float64) / pl.col("n_total").cast(pl.Float64))
                          .otherwise(None)))


def ip_prefix(ip: str | None, v4_bits: int = 16, v6_bits: int = 32) -> str | None:
    """The /16 (IPv4) or /32 (IPv6) network of an address, as text."""
    if not ip:
        return None
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return None
    bits = v4_bits if a.version == 4 else v6_bits
    return str(ipaddress.ip_network(f"{a}/{bits}", strict=False))


def ip_scope(ip: str | None) -> str:
    """private, loopback, multicast, link-local, reserved or global."""
    try:
        a = ipaddress.ip_address(ip)
    except (ValueError, TypeError):
        return "invalid"
    for attr in ("is_loopback", "is_multicast", "is_link_local", "is_private", "is_reserved", "is_unspecified"):
        if getattr(a, attr):
            return attr[3:].replace("_", "-")
    return "global"


def no_data(ax, msg: str) -> None:
    """Marks an axis as empty instead of leaving a blank plot."""
    ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


_fig_counter = [0]


def show(fig, name: str) -> None:
    """Shows a figure; also saves it as PNG into $SWARMTAP_NB_FIGDIR when set (notebooks/run.sh sets it)."""
    import matplotlib.pyplot as plt

    figdir = os.environ.get("SWARMTAP_NB_FIGDIR")
    if figdir:
        Path(figdir).mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        fig.savefig(Path(figdir) / f"{safe}.png", dpi=110, bbox_inches="tight")
    plt.show()


# --------------------------------------------------------------------------
# Truth files of the bundled sample captures


def find_truth_dir(ds: Dataset | None = None) -> Path | None:
    """sample-pcaps/ with its truth files: $SWARMTAP_TRUTH_DIR, else found upwards from
    the working directory or the dataset."""
    env = os.environ.get("SWARMTAP_TRUTH_DIR")
    if env:
        return Path(env) if Path(env).is_dir() else None
    starts = [Path.cwd()]
    if ds is not None:
        starts.append(ds.path.resolve())
    for start in starts:
        for d in (start, *start.parents):
            cand = d / "sample-pcaps"
            if cand.is_dir() and any(cand.glob("*.truth.json")):
                return cand
    return None


def parse_time(s: str | None) -> datetime | None:
    """An ISO 8601 time from a truth file (…Z) as an aware UTC datetime."""
    if not s:
        return None
    if isinstance(s, (int, float)):
        return datetime.fromtimestamp(s, timezone.utc)
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)


def sample_truths(ds: Dataset) -> list[dict]:
    """Truth files of the bundled captures that this dataset was made from.

    A truth file applies when a capture of its name is in capture_stats and the frames fall
    in the truth's capture time span (±10 min). A capture of that name from another time is
    another recording — an unrelated file, or a dataset made before sample-pcaps/ was
    regenerated (the torrents are the same then): it is skipped with a message, unless
    $SWARMTAP_TRUTH_STRICT is set (notebooks/run.sh sets it, as it analyzes the captures
    afresh): then a mismatch is checked, and fails, as a timestamp error."""
    tdir = find_truth_dir(ds)
    if tdir is None:
        return []
    cs = ds.table("capture_stats").with_columns(name=capture_name())
    if cs.height == 0:
        return []
    strict = bool(os.environ.get("SWARMTAP_TRUTH_STRICT"))
    out = []
    for f in sorted(tdir.glob("*.truth.json")):
        try:
            t = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            print(f"warning: unreadable truth file {f}: {e}")
            continue
        rows = cs.filter(pl.col("name") == t.get("capture"))
        if rows.height == 0:
            continue
        t0, t1 = parse_time(t.get("capture_started_at")), parse_time(t.get("capture_stopped_at"))
        same = t0 is None or t1 is None
        slack = timedelta(minutes=10)
        for f0, f1 in rows.select("first_ts", "last_ts").iter_rows():
            if f0 is not None and f1 is not None and t0 and t1 and f0 >= t0 - slack and f1 <= t1 + slack:
                same = True
        if not same and not strict:
            print(f"note: {t.get('capture')} in this dataset was recorded at another time than {f.name} says "
                  f"(another file of that name, or sample-pcaps/ regenerated since): no truth checks for it")
            continue
        t["_file"] = str(f)
        out.append(t)
    return out


def capture_name() -> pl.Expr:
    """The `capture` column reduced to the file name (swarmtap may record the path it was given)."""
    return pl.col("capture").str.replace(r"^.*[/\\]", "")


def of_capture(df: pl.DataFrame, truth: dict) -> pl.DataFrame:
    """The rows of `df` (a table with a `capture` column) that come from a truth file's capture."""
    return df.filter(capture_name() == truth["capture"])


def host_addresses(host: dict) -> set[str]:
    """Every address a truth-file host may appear under."""
    out = set()
    for k in ("ip", "ipv6"):
        if host.get(k):
            out.add(str(ipaddress.ip_address(host[k])))
    for a in host.get("ips") or []:
        out.add(str(ipaddress.ip_address(a)))
    return out


def truth_torrent_keys(torrent: dict) -> set[str]:
    """The info_hash values a truth torrent may appear under (v1, v2, v2 truncated to 40)."""
    keys = {torrent.get("info_hash"), torrent.get("info_hash_v2")}
    if torrent.get("info_hash_v2"):
        keys.add(torrent["info_hash_v2"][:40])
    return {k.lower() for k in keys if k}


def wire_info_hash(torrent: dict) -> str:
    """The info_hash swarmtap keys the torrent by: v1, else the v2 hash truncated to 20 bytes."""
    return (torrent.get("info_hash") or torrent["info_hash_v2"][:40]).lower()


def dataset_key(peers: pl.DataFrame, torrent: dict) -> str:
    """The info_hash under which this dataset files a truth torrent's peers: of the torrent's
    hashes (v1, v2, v2 truncated), the one with the most peer rows; else the v1 hash."""
    keys = truth_torrent_keys(torrent)
    counts = peers.filter(pl.col("info_hash").is_in(list(keys))).group_by("info_hash").len().sort(
        ["len", "info_hash"], descending=True)
    return counts["info_hash"][0] if counts.height else wire_info_hash(torrent)


def host_counters(host: dict, torrent: dict) -> dict | None:
    """A host's final client counters for a torrent (truth `counters`, keyed by v1 or v2 hash)."""
    c = host.get("counters") or {}
    for k in truth_torrent_keys(torrent):
        if k in c:
            return c[k]
    return None


def clients_report_encryption(truth: dict, torrent: dict, host: dict) -> bool | None:
    """Whether the clients' own per-peer records (truth `per_peer`) show an encrypted (RC4)
    connection of `host` for `torrent`: True if any does, False if some say plaintext and
    none encrypted, None if no client records it."""
    mine = host_addresses(host)
    seen = []
    for h in truth.get("hosts", []):
        c = host_counters(h, torrent) or {}
        for pp in c.get("per_peer") or []:
            if pp.get("encrypted") is None:
                continue
            if h is host or (pp.get("ip") and str(pp["ip"]) in mine):
                seen.append(bool(pp["encrypted"]))
    if not seen:
        return None
    return any(seen)


def check(cond: bool, what: str, failures: list | None = None, excuse: str | None = None) -> bool:
    """Prints a check's outcome and collects failures (the cell asserts there are none at its end).
    `excuse`: a known, explained difference that the caller has itself verified from the data
    (e.g. swarmtap found the host's connections encrypted); a failed check with one is printed
    as `known` with the reason and not collected. Never pass an unverified excuse."""
    if cond:
        print("  ok    " + what)
    elif excuse:
        print(f"  known {what} — {excuse}")
    else:
        print("  FAIL  " + what)
        if failures is not None:
            failures.append(what)
    return bool(cond)
