#!/usr/bin/env python3
"""`swarmtap report` in a real browser (issue 20).

Writes the report of four datasets and opens each in headless Chromium
(Debian's `chromium`), driven over the DevTools protocol:

* sample: `swarmtap analyze` of the bundled sample-pcaps/;
* empty: a capture with no packets (every table present, no rows);
* live: `swarmtap live` on a veth pair between two network namespaces this
  test creates, while tcpreplay sends sample-pcaps/cheat.pcap (hive output,
  snapshots per interval: needs root, ip, tcpreplay);
* geo: the public corpus (../shared/corpus/public or $SWARMTAP_SHARED) with
  --geoip target/geoip/GeoLite2-City.mmdb, for the map (skipped when either
  is absent, unless SWARMTAP_REQUIRE_ALL=1, as tests/support/require.rs).

For each page it asserts: no console error, no uncaught exception, no
request to anything but the file itself; every chart (svg.chart) has drawn
marks; the sections and tables the data calls for are there; sorting and
searching work. Full-page screenshots go to target/report-shots/.

    target/nb-venv/bin/python tests/report_browser.py      # after cargo build
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "target" / "report-shots"
BIN = Path(os.environ.get("SWARMTAP_BIN") or ROOT / "target" / "debug" / "swarmtap")
FAILURES: list[str] = []
PASSED = [0]


def check(cond: bool, what: str) -> None:
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    PASSED[0] += bool(cond)
    if not cond:
        FAILURES.append(what)


def require(ok: bool, what: str, reason: str) -> bool:
    """The rule of tests/support/require.rs: with SWARMTAP_REQUIRE_ALL=1 a
    missing prerequisite fails; otherwise the part is skipped, and the skip is
    written to $SWARMTAP_SKIP_DIR (default target/test-skips/) for
    tests/run-all.sh to list."""
    if ok:
        return True
    strict = os.environ.get("SWARMTAP_REQUIRE_ALL", "") not in ("", "0")
    if strict:
        check(False, f"needs {what}: {reason} (SWARMTAP_REQUIRE_ALL is set, so this is a failure, not a skip)")
        return False
    line = f"report_browser {what}: {reason} [tests/report_browser.py]"
    print("SKIPPED " + line, flush=True)
    d = Path(os.environ.get("SWARMTAP_SKIP_DIR") or ROOT / "target" / "test-skips")
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "report_browser.txt", "a") as f:
        f.write(line + "\n")
    return False


def run(*args: str | os.PathLike, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, **kw)


# --------------------------------------------------------------------------
# Datasets


def dataset_sample(tmp: Path) -> Path:
    out = tmp / "sample"
    run(BIN, "analyze", "-o", out)
    return out


def dataset_empty(tmp: Path) -> Path:
    pcap = tmp / "empty.pcap"
    # A pcap global header (microsecond, Ethernet) and no record.
    pcap.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    out = tmp / "empty"
    run(BIN, "analyze", pcap, "-o", out)
    return out


def dataset_live(tmp: Path) -> Path | None:
    if not require(os.geteuid() == 0 and bool(shutil.which("tcpreplay")) and bool(shutil.which("ip")),
                   "root, ip and tcpreplay", "the live dataset is written in network namespaces this test creates"):
        return None
    tag = f"{os.getpid() % 100000}"
    tx_ns, rx_ns, tx_if, rx_if = f"rptx{tag}", f"rprx{tag}", f"rpx{tag}", f"rpr{tag}"
    out = tmp / "live"
    procs: list[subprocess.Popen] = []
    try:
        run("ip", "netns", "add", tx_ns)
        run("ip", "netns", "add", rx_ns)
        run("ip", "link", "add", tx_if, "netns", tx_ns, "type", "veth", "peer", "name", rx_if, "netns", rx_ns)
        for ns, dev in ((tx_ns, tx_if), (rx_ns, rx_if)):
            for k in ("all", "default"):
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{k}.disable_ipv6=1"])
            run("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
            subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"],
                           capture_output=True)
        live = subprocess.Popen(
            ["ip", "netns", "exec", rx_ns, str(BIN), "live", "-i", rx_if, "-o", str(out), "--rotate", "1s",
             "--torrents", str(ROOT / "sample-pcaps" / "cheat.torrent")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(live)
        t0 = time.monotonic()
        while not (out / "capture_stats").is_dir():
            if time.monotonic() - t0 > 20 or live.poll() is not None:
                raise RuntimeError("swarmtap live did not start: " + (live.stderr.read().decode() if live.poll() is not None else ""))
            time.sleep(0.05)
        rep = subprocess.run(["ip", "netns", "exec", tx_ns, "tcpreplay", "-q", "-i", tx_if, "--pps", "4000",
                              str(ROOT / "sample-pcaps" / "cheat.pcap")], capture_output=True, timeout=120)
        if rep.returncode != 0:
            raise RuntimeError("tcpreplay failed: " + rep.stderr.decode())
        time.sleep(2.5)  # at least two more rotations: snapshots of the same entities
        live.send_signal(signal.SIGINT)
        live.wait(timeout=30)
        check(live.returncode == 0, f"live: swarmtap live exited {live.returncode}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["ip", "netns", "del", tx_ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", rx_ns], capture_output=True)
    return out


def dataset_geo(tmp: Path) -> Path | None:
    shared = Path(os.environ.get("SWARMTAP_SHARED") or ROOT.parent / "shared")
    corpus = shared / "corpus" / "public"
    mmdb = ROOT / "target" / "geoip" / "GeoLite2-City.mmdb"
    if not require(corpus.is_dir(), "../shared/corpus/public", "the shared corpus is absent (or set SWARMTAP_SHARED)"):
        return None
    if not require(mmdb.is_file(), "target/geoip/GeoLite2-City.mmdb", "tests/setup.sh fetches it"):
        return None
    out = tmp / "geo"
    run(BIN, "analyze", corpus, "--geoip", mmdb, "-o", out)
    return out


# --------------------------------------------------------------------------
# A small DevTools protocol client


class Browser:
    def __init__(self, tmp: Path):
        self.profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp))
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if not exe:
            raise SystemExit("chromium is not installed (tests/setup.sh installs it)")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        t0 = time.monotonic()
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if time.monotonic() - t0 > 30 or self.proc.poll() is not None:
                raise RuntimeError("chromium did not start")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        self._conn = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ws = self._conn.__enter__()
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, name: str, timeout: float = 60):
        t0 = time.monotonic()
        for i, e in enumerate(self.events):
            if e.get("method") == name:
                return self.events.pop(i)
        while time.monotonic() - t0 < timeout:
            msg = json.loads(self.ws.recv(timeout=timeout))
            if msg.get("method") == name:
                return msg
            self.events.append(msg)
        raise TimeoutError(name)

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self._conn.__exit__(None, None, None)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def open_report(b: Browser, html: Path, name: str) -> dict:
    b.events.clear()
    for d in ("Page", "Runtime", "Log", "Network"):
        b.call(f"{d}.enable")
    b.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    b.call("Page.navigate", url=html.as_uri())
    b.wait_event("Page.loadEventFired")
    time.sleep(0.2)
    # Drain what arrived with the load.
    b.js("1")
    errors = []
    requests = []
    for e in b.events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            errors.append(p["exceptionDetails"].get("text", "") + " " + json.dumps(p["exceptionDetails"].get("exception", {}).get("description", "")))
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console." + p["type"] + ": " + json.dumps(p.get("args")))
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            errors.append("log: " + p["entry"].get("text", ""))
        elif m == "Network.requestWillBeSent":
            requests.append(p["request"]["url"])
    check(not errors, f"{name}: no console error or exception ({errors[:3]})")
    others = [u for u in requests if u != html.as_uri()]
    check(not others, f"{name}: the page requests nothing but itself ({others[:3]})")
    info = b.js("""(() => {
        const charts = Array.from(document.querySelectorAll('svg.chart')).map(s => ({
            label: s.getAttribute('aria-label'), marks: s.querySelectorAll('.mark').length,
            width: s.getBoundingClientRect().width }));
        const sections = Array.from(document.querySelectorAll('section')).map(s => s.id);
        const tables = Array.from(document.querySelectorAll('table.sortable')).map(t => ({id: t.id, rows: t.tBodies[0].rows.length}));
        const overflow = Array.from(document.querySelectorAll('svg.chart text')).filter(t => {
            const r = t.getBoundingClientRect(), s = t.ownerSVGElement.getBoundingClientRect();
            return r.width > 0 && (r.left < s.left - 1 || r.right > s.right + 1);
        }).map(t => t.textContent);
        const overlaps = [];
        document.querySelectorAll('svg.chart').forEach(svg => {
            const boxes = Array.from(svg.querySelectorAll('text')).map(t => [t.textContent, t.getBoundingClientRect()])
                .filter(b => b[1].width > 0);
            for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
                const a = boxes[i][1], b = boxes[j][1];
                const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
                const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
                if (w > 1 && h > 3) overlaps.push(boxes[i][0] + ' / ' + boxes[j][0]);
            }
        });
        return {charts, sections, tables, overflow, overlaps, height: document.documentElement.scrollHeight};
    })()""")
    for c in info["charts"]:
        check(c["marks"] > 0, f"{name}: chart '{c['label']}' has drawn marks ({c['marks']})")
    check(not info["overflow"], f"{name}: no chart text outside its chart ({info['overflow'][:4]})")
    check(not info["overlaps"], f"{name}: no two chart labels overlap ({info['overlaps'][:4]})")
    # Full-page screenshot.
    h = min(int(info["height"]), 16000)
    b.call("Emulation.setDeviceMetricsOverride", width=1280, height=h, deviceScaleFactor=1, mobile=False)
    shot = b.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
    b.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    print(f"      {name}: {len(info['charts'])} charts, tables {info['tables']}, screenshot {SHOTS / (name + '.png')}")
    return info


def check_sort_and_search(b: Browser, name: str, table_id: str) -> None:
    r = b.js(f"""(() => {{
        const t = document.getElementById('{table_id}');
        const ths = Array.from(t.tHead.rows[0].cells);
        const i = ths.findIndex(th => th.dataset.type === 'num');
        ths[i].click();
        const vals = () => Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[i].dataset.v));
        const desc = vals();
        ths[i].click();
        const asc = vals();
        const inp = document.querySelector('input[data-table="{table_id}"]');
        const probe = t.tBodies[0].rows[0].cells[0].textContent;
        inp.value = probe; inp.dispatchEvent(new Event('input'));
        const shown = Array.from(t.tBodies[0].rows).filter(r => r.style.display !== 'none');
        const allMatch = shown.every(r => r.textContent.toLowerCase().includes(probe.toLowerCase()));
        inp.value = 'no row has this text zq'; inp.dispatchEvent(new Event('input'));
        const none = Array.from(t.tBodies[0].rows).filter(r => r.style.display !== 'none').length;
        const count = document.getElementById('{table_id}-count').textContent;
        inp.value = ''; inp.dispatchEvent(new Event('input'));
        return {{desc, asc, shown: shown.length, allMatch, none, count, total: t.tBodies[0].rows.length}};
    }})()""")
    desc, asc = r["desc"], r["asc"]
    check(desc == sorted(desc, reverse=True) and asc == sorted(asc), f"{name}: {table_id} sorts by a numeric column both ways")
    check(r["shown"] >= 1 and r["allMatch"], f"{name}: {table_id} search keeps only matching rows ({r['shown']})")
    check(r["none"] == 0 and r["count"] == f"0 of {r['total']} rows", f"{name}: {table_id} search with no match ({r['count']})")


def main() -> int:
    if not BIN.is_file():
        subprocess.run(["cargo", "build", "--bin", "swarmtap"], cwd=ROOT, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="swarmtap-report-"))
    try:
        datasets = {"sample": dataset_sample(tmp), "empty": dataset_empty(tmp)}
        live = dataset_live(tmp)
        if live is not None:
            datasets["live"] = live
            parts = list((live / "peers").rglob("*.parquet"))
            check(len(parts) >= 2, f"live: peers written as {len(parts)} snapshot files")
        geo = dataset_geo(tmp)
        if geo is not None:
            datasets["geo"] = geo
        b = Browser(tmp)
        try:
            for name, ds in datasets.items():
                html = tmp / f"{name}.html"
                r = subprocess.run([str(BIN), "report", str(ds), "-o", str(html)], capture_output=True, text=True)
                check(r.returncode == 0, f"{name}: swarmtap report exits 0 ({r.stderr.strip()[-300:]})")
                if r.returncode != 0:
                    continue
                size = html.stat().st_size
                check(size < 20_000_000, f"{name}: page is {size} bytes (< 20 MB)")
                info = open_report(b, html, name)
                labels = [c["label"] for c in info["charts"]]
                tables = {t["id"]: t["rows"] for t in info["tables"]}
                for s in ("overview", "torrents", "downloads", "audit", "discovery", "map", "tables"):
                    check(s in info["sections"], f"{name}: section {s}")
                if name == "empty":
                    check(labels == [], f"empty: no chart without data ({labels})")
                    check(tables == {}, f"empty: no table without rows ({tables})")
                if name in ("sample", "live"):
                    for want in ("flows by application", "confirmed downloads per hour", "download rate distribution",
                                 "download rate by client", "announce audit", "peers found per source over time",
                                 "peers by sources"):
                        check(want in labels, f"{name}: chart '{want}'")
                    check(any(l.startswith("swarm progress of") for l in labels), f"{name}: a swarm progress heatmap")
                    check(tables.get("t-peers", 0) > 0 and tables.get("t-conns", 0) > 0 and tables.get("t-audit", 0) > 0,
                          f"{name}: peers, connections and audit tables have rows ({tables})")
                    check_sort_and_search(b, name, "t-peers")
                if name == "sample":
                    # The page lists every torrent and announce series of the
                    # dataset, flagged ones as the audit flagged them
                    # (sample-pcaps/cheat.pcap's BittOratio client among them).
                    import polars as pl
                    tor = pl.read_parquet(ds / "torrents.parquet")
                    aud = pl.read_parquet(ds / "announce_audit.parquet")
                    n_flagged = int(aud["suspicious"].sum())
                    check(tor.height >= 12 and tables.get("t-torrents") == tor.height,
                          f"sample: {tor.height} torrents listed ({tables.get('t-torrents')})")
                    check(aud.height >= 39 and tables.get("t-audit") == aud.height,
                          f"sample: {aud.height} announce series ({tables.get('t-audit')})")
                    flagged = b.js("Array.from(document.querySelectorAll('#t-audit tbody tr')).filter(r => r.cells[0].textContent === 'yes').length")
                    check(n_flagged >= 1 and flagged == n_flagged, f"sample: {n_flagged} flagged series ({flagged})")
                if tables.get("t-audit"):
                    # The chart's band is the flag rule: upload_above_wire exactly
                    # where reported > observed + opaque + tolerance with coverage client.
                    rows = b.js("""Array.from(document.querySelectorAll('#t-audit tbody tr')).map(r => {
                        const h = Array.from(document.querySelectorAll('#t-audit thead th')).map(th => th.textContent.replace(/ [▲▼]$/, ''));
                        const c = k => r.cells[h.indexOf(k)];
                        return {flags: c('flags').textContent, cov: c('coverage').textContent,
                                rep: +c('reported up').dataset.v, obs: +c('observed up').dataset.v,
                                opq: +c('opaque sent').dataset.v, tol: +c('tolerance').dataset.v};
                    })""")
                    agree = [(r["rep"] > r["obs"] + r["opq"] + r["tol"] and r["cov"] == "client") == ("upload_above_wire" in r["flags"]) for r in rows]
                    check(all(agree), f"{name}: the audit band matches upload_above_wire on all {len(rows)} series")
                if name == "geo":
                    check("map of peers" in labels, "geo: the map is drawn")
                    marks = next(c["marks"] for c in info["charts"] if c["label"] == "map of peers")
                    check(marks >= 700, f"geo: the map shows the corpus' located peers ({marks})")
        finally:
            b.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"report_browser: {PASSED[0]} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
