#!/usr/bin/python3
"""Build a private BitTorrent swarm of real clients in network namespaces,
capture every packet on its bridge, and write ground truth.

    sudo sample-pcaps/generate/run.sh SCENARIO [--out DIR] [--keep-workdir]

SCENARIO is one of: http udp mse utp magnet midstream lossy two ipv6 cheat (or `all`).
Writes OUT/SCENARIO.pcap, OUT/SCENARIO.torrent (and OUT/SCENARIO-*.torrent when
there are several), OUT/SCENARIO.truth.json.  OUT defaults to sample-pcaps/.

Safety: the swarm lives in namespaces created here (swt-*), addresses
10.99.0.0/24 and fd00:99::/64 only, no default route anywhere, so no packet
can leave; clients' DHT router names resolve (via /etc/netns/NS/hosts) to a
swarm host; every process is started here and stopped by PID on exit.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns import Net, Procs, sh, http_request, wait_port, BR_NS  # noqa: E402
from clients import KINDS, now_iso  # noqa: E402
import scenarios  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DEFAULT = os.path.dirname(HERE)
TRACKER_IP = "10.99.0.1"
TRACKER_PORT = 6969


# ---------------------------------------------------------------- bencode
def bdecode(data, i=0):
    c = data[i:i + 1]
    if c == b"i":
        j = data.index(b"e", i)
        return int(data[i + 1:j]), j + 1
    if c == b"l":
        i += 1
        out = []
        while data[i:i + 1] != b"e":
            v, i = bdecode(data, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        i += 1
        out = {}
        while data[i:i + 1] != b"e":
            k, i = bdecode(data, i)
            v, i = bdecode(data, i)
            out[k] = v
        return out, i + 1
    j = data.index(b":", i)
    n = int(data[i:j])
    return data[j + 1:j + 1 + n], j + 1 + n


def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, str):
        return bencode(v.encode())
    if isinstance(v, list):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        return b"d" + b"".join(bencode(k) + bencode(v[k]) for k in sorted(v)) + b"e"
    raise TypeError(type(v))


def info_span(data):
    """Byte range of the raw `info` value in a metainfo file (hash what is on disk)."""
    assert data[:1] == b"d"
    i = 1
    while data[i:i + 1] != b"e":
        k, j = bdecode(data, i)
        _, end = bdecode(data, j)
        if k == b"info":
            return j, end
        i = end
    raise ValueError("no info dict")


def torrent_facts(path):
    data = open(path, "rb").read()
    meta, _ = bdecode(data)
    a, b = info_span(data)
    raw = data[a:b]
    info = meta[b"info"]
    v1 = hashlib.sha1(raw).hexdigest() if b"pieces" in info else None
    v2 = hashlib.sha256(raw).hexdigest() if info.get(b"meta version") == 2 else None
    plen = info[b"piece length"]
    if b"length" in info:
        total = info[b"length"]
    elif b"files" in info:
        total = sum(f[b"length"] for f in info[b"files"])
    else:  # v2-only: sum the lengths in the file tree (BEP 52)
        def walk(d):
            tot = 0
            for k, v in d.items():
                if k == b"":
                    tot += v.get(b"length", 0)
                elif isinstance(v, dict):
                    tot += walk(v)
            return tot
        total = walk(info[b"file tree"])
    n = (total + plen - 1) // plen
    if b"pieces" in info:
        assert len(info[b"pieces"]) == 20 * n
    return {"name": info[b"name"].decode(), "info_hash": v1, "info_hash_v2": v2,
            "piece_length": plen, "n_pieces": n, "total_bytes": total,
            "announce": meta.get(b"announce", b"").decode() or None,
            "private": bool(info.get(b"private", 0))}


# ---------------------------------------------------------------- torrents
def make_payload(path, n_bytes, seed):
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.write(rnd.randbytes(n_bytes))


def make_torrent_mktorrent(payload, out, announce, piece_log2=15):
    # mktorrent 1.1 accepts 2^15 (32 KiB) as its smallest piece length.
    if os.path.exists(out):
        os.unlink(out)
    sh("mktorrent", "-l", str(piece_log2), "-d", "-a", announce or "http://127.0.0.1:1/none",
       "-c", "swarmtap sample capture", "-o", out, payload)
    if not announce:
        # Trackerless: drop the announce key (the info dict, hence the info hash, is unchanged).
        data = open(out, "rb").read()
        meta, _ = bdecode(data)
        meta.pop(b"announce", None)
        meta.pop(b"announce-list", None)
        a, b = info_span(data)
        rest = {k: v for k, v in meta.items() if k != b"info"}
        enc = b"d" + b"".join(bencode(k) + bencode(rest[k]) for k in sorted(rest) if k < b"info")
        enc += bencode(b"info") + data[a:b]
        enc += b"".join(bencode(k) + bencode(rest[k]) for k in sorted(rest) if k > b"info") + b"e"
        open(out, "wb").write(enc)


def make_torrent_hybrid(payload, out, announce, piece_size=16384):
    """A hybrid v1+v2 torrent made by libtorrent (Debian python3-libtorrent)."""
    code = r"""
import sys, libtorrent as lt
payload, out, announce, psize = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fs = lt.file_storage()
lt.add_files(fs, payload)
ct = lt.create_torrent(fs, psize)          # flags 0: hybrid v1+v2 in libtorrent 2.0
if announce:
    ct.add_tracker(announce)
ct.set_creator("swarmtap sample-pcaps generator (libtorrent %s)" % lt.__version__)
import os
lt.set_piece_hashes(ct, os.path.dirname(payload))
open(out, "wb").write(lt.bencode(ct.generate()))
"""
    subprocess.run(["/usr/bin/python3", "-c", code, payload, out, announce or "", str(piece_size)], check=True)


# ---------------------------------------------------------------- tracker
class OpenTracker:
    def __init__(self, run, ns):
        self.run = run
        self.ns = ns
        self.dir = os.path.join(run.workdir, "tracker")
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)

    def start(self, hashes):
        with open(os.path.join(self.dir, "whitelist.txt"), "w") as f:
            for h in hashes:
                f.write(h + "\n")
        os.chmod(os.path.join(self.dir, "whitelist.txt"), 0o644)
        conf = os.path.join(self.dir, "opentracker.conf")
        with open(conf, "w") as f:
            f.write("listen.tcp %s:%d\nlisten.udp %s:%d\naccess.whitelist %s\n"
                    "access.stats %s\ntracker.rootdir %s\n"
                    % (TRACKER_IP, TRACKER_PORT, TRACKER_IP, TRACKER_PORT,
                       "whitelist.txt", TRACKER_IP, self.dir))  # relative: opentracker chroots to rootdir first
        self.proc = self.run.procs.start("opentracker", ["opentracker", "-f", conf],
                                         ns=self.ns, log=os.path.join(self.dir, "opentracker.log"))
        if not wait_port(self.ns, TRACKER_IP, TRACKER_PORT, 10):
            raise RuntimeError("opentracker did not start: " + open(os.path.join(self.dir, "opentracker.log")).read())

    def get(self, path):
        # From inside the tracker's namespace to its own address: loopback, not on the bridge.
        st, _, data = http_request(self.ns, "GET", TRACKER_IP, TRACKER_PORT, path, timeout=5)
        return st, data

    def stats(self, torrents):
        out = {}
        try:
            st, data = self.get("/stats?mode=everything")
            text = data.decode("utf-8", "replace")
            out["mode_everything_raw"] = text
            try:
                root = ET.fromstring(text)
                out["mode_everything"] = xml_to_dict(root)
            except ET.ParseError as e:
                out["mode_everything_parse_error"] = str(e)
        except Exception as e:  # noqa
            out["mode_everything_error"] = repr(e)
        out["scrape"] = {}
        for t in torrents:
            for h in filter(None, [t["info_hash"], (t.get("info_hash_v2") or "")[:40] or None]):
                try:
                    q = "".join("%%%02X" % b for b in bytes.fromhex(h))
                    st, data = self.get("/scrape?info_hash=" + q)
                    d, _ = bdecode(data)
                    files = d.get(b"files", {})
                    for k, v in files.items():
                        out["scrape"][k.hex()] = {kk.decode(): vv for kk, vv in v.items()}
                except Exception as e:  # noqa
                    out["scrape"][h] = {"error": repr(e)}
        return out


def xml_to_dict(el):
    d = {}
    for k, v in el.attrib.items():
        d["@" + k] = v
    children = list(el)
    if not children:
        t = (el.text or "").strip()
        if not d:
            try:
                return int(t)
            except ValueError:
                return t
        if t:
            d["#text"] = t
        return d
    for c in children:
        v = xml_to_dict(c)
        if c.tag in d:
            if not isinstance(d[c.tag], list):
                d[c.tag] = [d[c.tag]]
            d[c.tag].append(v)
        else:
            d[c.tag] = v
    return d


# ---------------------------------------------------------------- run
class Run:
    def __init__(self, scen, out_dir, keep):
        self.scen = scen
        self.name = scen["name"]
        self.out_dir = out_dir
        self.keep = keep
        self.workdir = tempfile.mkdtemp(prefix="swarmtap-gen-%s-" % self.name)
        os.chmod(self.workdir, 0o755)
        self.procs = Procs()
        self.net = Net()
        self.clients = []
        self.torrents = []
        self.timeline = []
        self.tracker = None
        self.tcpdump = None
        self.capture_progress = None

    def ev(self, what):
        self.timeline.append({"t": now_iso(), "event": what})
        print("[%s] %s" % (time.strftime("%H:%M:%S"), what), flush=True)

    def torrent_by_hash(self, h):
        h = h.lower()
        for t in self.torrents:
            if h in (t["info_hash"], t.get("info_hash_v2"), (t.get("info_hash_v2") or "")[:40]):
                return t
        return None

    def torrent_by_key(self, k):
        for t in self.torrents:
            if t["key"] == k:
                return t
        return None

    # -- build --
    def build_torrents(self):
        sc = self.scen
        announce = None
        if sc.get("tracker") == "http":
            announce = "http://%s:%d/announce" % (TRACKER_IP, TRACKER_PORT)
        elif sc.get("tracker") == "udp":
            announce = "udp://%s:%d/announce" % (TRACKER_IP, TRACKER_PORT)
        for i, tspec in enumerate(sc["torrents"]):
            fname = tspec["file_name"]
            pdir = os.path.join(self.workdir, "payload%d" % i)
            os.makedirs(pdir, exist_ok=True)
            payload = os.path.join(pdir, fname)
            make_payload(payload, tspec["bytes"], tspec["seed"])
            suffix = "" if len(sc["torrents"]) == 1 else "-" + tspec["label"]
            tfile = os.path.join(self.workdir, "%s%s.torrent" % (self.name, suffix))
            if tspec.get("hybrid"):
                make_torrent_hybrid(payload, tfile, announce)
            else:
                make_torrent_mktorrent(payload, tfile, announce)
            facts = torrent_facts(tfile)
            key = facts["info_hash"] or facts["info_hash_v2"]
            magnet = "magnet:?xt=urn:btih:%s" % facts["info_hash"] if facts["info_hash"] else "magnet:?"
            if facts["info_hash_v2"]:
                magnet += "&xt=urn:btmh:1220%s" % facts["info_hash_v2"]
            magnet += "&dn=%s" % fname
            t = dict(facts, key=key, label=tspec.get("label"), file_name=fname, payload_path=payload,
                     torrent_file=tfile, out_torrent="%s%s.torrent" % (self.name, suffix),
                     magnet=magnet, magnet_only=bool(tspec.get("magnet")))
            self.torrents.append(t)

    def build_net(self):
        sc = self.scen
        v6 = sc.get("ipv6", False)
        self.net.setup_bridge()
        hosts_lines = ""
        router = sc.get("dht_router")  # (ip, port) that the hard-wired DHT router names resolve to
        if router:
            for n in ("router.bittorrent.com", "router.utorrent.com", "dht.transmissionbt.com",
                      "dht.libtorrent.org", "router.bitcomet.com", "dht.aelitis.com"):
                hosts_lines += "%s %s\n" % (router[0], n)
        if sc.get("tracker"):
            self.tracker_ns = self.net.add_host("tracker", [TRACKER_IP], hosts_file=hosts_lines)
        for h in sc["hosts"]:
            # opts "dual": an IPv4 host that has its IPv6 address too.
            dual = h.get("opts", {}).get("dual", False)
            ipv4s = [] if v6 else ([h["ip"]] if h.get("ip") else [])
            ipv6s = [h["ip6"]] if ((v6 or dual) and h.get("ip6")) else []
            if h["kind"] == "dhtnodes":
                ipv4s = [] if v6 else h["opts"]["addrs"]
                ipv6s = h["opts"]["addrs"] if v6 else []
            ns = self.net.add_host(h["name"], ipv4s, ipv6s, hosts_file=hosts_lines,
                                   rate_kbit=h.get("htb_kbit"))
            h["_ns"] = ns
        self.net.assert_no_route_out()
        if sc.get("impair"):
            self.setup_impair(sc["impair"])

    def setup_impair(self, imp):
        """Loss / reordering / delay in user space: iptables NFQUEUE on the chosen
        hosts' egress, verdicts from impair.py (pure-stdlib netlink)."""
        for hname in imp["hosts"]:
            ns = [h["_ns"] for h in self.scen["hosts"] if h["name"] == hname][0]
            qnum = 7
            sh("iptables", "-A", "OUTPUT", "-o", "eth0", "-p", "tcp", "-j", "NFQUEUE", "--queue-num", str(qnum),
               "--queue-bypass", ns=ns)
            self.procs.start("impair-" + hname,
                             ["/usr/bin/python3", os.path.join(HERE, "impair.py"), "--queue", str(qnum),
                              "--loss", str(imp["loss"]), "--reorder", str(imp["reorder"]),
                              "--delay-ms", str(imp["delay_ms"]), "--seed", str(imp.get("seed", 1)),
                              "--stats", os.path.join(self.workdir, "impair-%s.json" % hname)],
                             ns=ns, log=os.path.join(self.workdir, "impair-%s.log" % hname))

    def start_capture(self):
        self.pcap_tmp = os.path.join(self.workdir, "%s.pcap" % self.name)
        self.tcpdump = self.procs.start("tcpdump", ["tcpdump", "-i", "br0", "-s", "0", "-U", "-n",
                                                    "-w", self.pcap_tmp],
                                        ns=BR_NS, log=os.path.join(self.workdir, "tcpdump.log"))
        for _ in range(50):
            if os.path.exists(self.pcap_tmp) and "listening" in open(os.path.join(self.workdir, "tcpdump.log")).read():
                break
            time.sleep(0.1)
        time.sleep(0.5)
        self.capture_started = now_iso()
        self.ev("capture started on br0")

    def stop_capture(self):
        time.sleep(0.5)
        self.procs.stop(self.tcpdump, sig=signal.SIGINT)
        self.capture_stopped = now_iso()
        self.ev("capture stopped")

    def start_clients(self):
        sc = self.scen
        for h in sc["hosts"]:
            tors = [t for t in self.torrents if (h.get("torrents") is None or t["label"] in h["torrents"])]
            if h["kind"] == "dhtnodes":
                tors = []
            cls = KINDS[h["kind"]]
            dual = h.get("opts", {}).get("dual", False)
            c = cls(self, h["name"], h["_ns"], h.get("ip") if not sc.get("ipv6") else None,
                    h.get("ip6") if (sc.get("ipv6") or dual) else None, h.get("role", "leecher"), tors,
                    h.get("opts", {}))
            self.clients.append(c)
        order = [c for c in self.clients if c.kind == "libtorrent-dht-node"] + \
                [c for c in self.clients if c.role == "seeder" and c.kind != "libtorrent-dht-node"]
        for c in order:
            c.start()
            self.ev("started %s (%s %s) as %s" % (c.name, c.kind, c.version, c.role))
        # Seeders verify their data before leechers arrive.
        t_end = time.time() + 40
        seeders = [c for c in order if c.role == "seeder"]
        while time.time() < t_end:
            for c in seeders:
                self.safe_poll(c)
            if all(c.all_complete() for c in seeders):
                break
            time.sleep(0.5)
        self.ev("seeders ready: %s" % ", ".join("%s=%s" % (c.name, c.all_complete()) for c in seeders))
        if sc.get("warmup_s"):
            time.sleep(sc["warmup_s"])
        for c in self.clients:
            if c in order:
                continue
            c.start()
            self.ev("started %s (%s %s) as %s" % (c.name, c.kind, c.version, c.role))
            time.sleep(sc.get("stagger_s", 0.5))
            if sc.get("sequential_leechers") and c.role == "leecher":
                # The next leecher meets only seeds: wait (bounded) until
                # this one is complete, re-announcing as wait_transfers does.
                t_end = time.time() + sc.get("max_transfer_s", 180) / 2
                last_reann = time.time()
                while time.time() < t_end:
                    for x in self.clients:
                        if x.proc is not None or x is c:
                            self.safe_poll(x)
                    if c.all_complete():
                        break
                    if sc.get("reannounce_s") and time.time() - last_reann >= sc["reannounce_s"]:
                        last_reann = time.time()
                        for x in self.clients:
                            if x.proc is not None and hasattr(x, "reannounce"):
                                try:
                                    x.reannounce()
                                except Exception:
                                    pass
                    time.sleep(0.5)
                self.ev("%s complete=%s; next leecher" % (c.name, c.all_complete()))

    def safe_poll(self, c):
        try:
            c.poll()
        except Exception as e:  # a client restarting its RPC must not end the run
            c.extra.setdefault("poll_errors", []).append("%s %r" % (now_iso(), e))
            c.extra["poll_errors"] = c.extra["poll_errors"][-5:]

    def progress(self, c):
        vals = []
        for t in c.torrents:
            d = c.last.get(t["key"])
            if not d:
                vals.append(0.0)
            elif d.get("completed"):
                vals.append(1.0)
            else:
                vals.append(d.get("progress", 0.0) or 0.0)
        return min(vals) if vals else 1.0

    def wait_transfers(self):
        sc = self.scen
        deadline = time.time() + sc.get("max_transfer_s", 180)
        last_reann = time.time()
        leechers = [c for c in self.clients if c.role == "leecher"]
        while time.time() < deadline:
            for c in self.clients:
                self.safe_poll(c)
            if sc.get("reannounce_s") and time.time() - last_reann >= sc["reannounce_s"]:
                last_reann = time.time()
                for c in self.clients:
                    if hasattr(c, "reannounce"):
                        try:
                            c.reannounce()
                        except Exception:
                            pass
            if sc.get("midstream") and self.tcpdump is None:
                done = sum(1 for c in leechers for t in c.torrents if c.last.get(t["key"], {}).get("completed"))
                elapsed = time.time() - self.leech_start
                if elapsed >= sc["midstream"]["after_s"] or done:
                    self.capture_progress = {c.name: {t["key"]: c.last.get(t["key"], {}).get("progress")
                                                      for t in c.torrents} for c in self.clients}
                    self.capture_counters = {c.name: {k: {kk: v.get(kk) for kk in ("uploaded_bytes", "downloaded_bytes",
                                                                                    "completed")}
                                                      for k, v in c.last.items()} for c in self.clients}
                    self.start_capture()
            dead = [c.name for c in self.clients if c.proc is not None and c.proc.poll() is not None]
            if dead:
                self.ev("client process exited early: %s" % dead)
                return False
            if all(c.all_complete() for c in leechers):
                self.ev("all leechers complete")
                return True
            time.sleep(1.0)
        self.ev("deadline reached; incomplete: %s" % [c.name for c in leechers if not c.all_complete()])
        return False

    def run(self):
        sc = self.scen
        self.ev("scenario %s: workdir %s" % (self.name, self.workdir))
        self.build_torrents()
        self.build_net()
        if not sc.get("midstream"):
            self.start_capture()
        if sc.get("tracker"):
            self.tracker = OpenTracker(self, self.tracker_ns)
            hashes = []
            for t in self.torrents:
                hashes += [h for h in (t["info_hash"], (t.get("info_hash_v2") or "")[:40]) if h]
            self.tracker.start(hashes)
            self.ev("opentracker up on %s:%d (tcp+udp)" % (TRACKER_IP, TRACKER_PORT))
        self.start_clients()
        self.leech_start = time.time()
        ok = self.wait_transfers()
        time.sleep(sc.get("tail_s", 4))
        for c in self.clients:
            self.safe_poll(c)
        self.ev("final counters collected")
        stats_before = self.tracker.stats(self.torrents) if self.tracker else None
        for c in self.clients:
            try:
                c.stop()
            except Exception as e:
                c.notes.append("stop: %r" % e)
        self.ev("clients stopped")
        time.sleep(1.0)
        stats_after = self.tracker.stats(self.torrents) if self.tracker else None
        if self.tcpdump:
            self.stop_capture()
        self.write_outputs(ok, stats_before, stats_after)

    def write_outputs(self, ok, stats_before, stats_after):
        sc = self.scen
        os.makedirs(self.out_dir, exist_ok=True)
        pcap_out = os.path.join(self.out_dir, "%s.pcap" % self.name)
        if self.tcpdump:
            shutil.copyfile(self.pcap_tmp, pcap_out)
        for t in self.torrents:
            shutil.copyfile(t["torrent_file"], os.path.join(self.out_dir, t["out_torrent"]))
        truth = {
            "scenario": self.name,
            "description": sc["description"],
            "generated_at": now_iso(),
            "generator": "sample-pcaps/generate/run.sh %s" % self.name,
            "capture": "%s.pcap" % self.name,
            "capture_started_at": getattr(self, "capture_started", None),
            "capture_stopped_at": getattr(self, "capture_stopped", None),
            "all_transfers_completed": ok,
            "torrents": [{
                "name": t["name"], "label": t["label"], "info_hash": t["info_hash"],
                "info_hash_v2": t["info_hash_v2"], "piece_length": t["piece_length"],
                "n_pieces": t["n_pieces"], "total_bytes": t["total_bytes"],
                "torrent_file": t["out_torrent"], "announce": t["announce"],
                "magnet": t["magnet"], "payload": "random.Random(%d).randbytes(%d)" % (
                    [s for s in sc["torrents"] if s["file_name"] == t["file_name"]][0]["seed"], t["total_bytes"]),
            } for t in self.torrents],
            "tracker": None,
            "hosts": [],
            "network": {"bridge": "br0 in netns %s (capture point)" % BR_NS, "ipv4": "10.99.0.0/24",
                        "ipv6": "fd00:99::/64", "default_route": None,
                        "offloads": "tso/gso/gro off on every veth",
                        "htb_kbit": {h["name"]: h["htb_kbit"] for h in sc["hosts"] if h.get("htb_kbit")} or None,
                        "impairment": self.impair_truth()},
            "timeline": self.timeline,
            "notes": list(sc.get("notes", [])),
        }
        if self.tracker:
            truth["tracker"] = {"kind": "opentracker", "version": dpkg_version("opentracker"), "ip": TRACKER_IP,
                                "http_port": TRACKER_PORT, "udp_port": TRACKER_PORT,
                                "announce_url": self.torrents[0]["announce"],
                                "interval_note": "opentracker's interval/min interval are compile-time "
                                                 "(Debian build: no config option); re-announces come from "
                                                 "the clients' own knobs",
                                "stats": stats_after, "stats_before_clients_stopped": stats_before}
        if self.capture_progress is not None:
            truth["midstream"] = {"progress_at_capture_start": self.capture_progress,
                                  "counters_at_capture_start": self.capture_counters}
        for c in self.clients:
            truth["hosts"].append(c.truth())
        with open(os.path.join(self.out_dir, "%s.truth.json" % self.name), "w") as f:
            json.dump(truth, f, indent=1, sort_keys=False)
            f.write("\n")
        self.ev("wrote %s (%d bytes)" % (pcap_out, os.path.getsize(pcap_out) if os.path.exists(pcap_out) else -1))

    def impair_truth(self):
        imp = self.scen.get("impair")
        if not imp:
            return None
        d = dict(imp)
        d["stats"] = {}
        for h in imp["hosts"]:
            try:
                d["stats"][h] = json.load(open(os.path.join(self.workdir, "impair-%s.json" % h)))
            except Exception as e:
                d["stats"][h] = repr(e)
        return d

    def cleanup(self):
        self.procs.stop_all()
        self.net.teardown()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def dpkg_version(pkg):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True).stdout
    except Exception:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=list(scenarios.SCENARIOS) + ["all"])
    ap.add_argument("--out", default=OUT_DEFAULT)
    ap.add_argument("--keep-workdir", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces)")
    names = list(scenarios.SCENARIOS) if a.scenario == "all" else [a.scenario]
    for n in names:
        r = Run(scenarios.SCENARIOS[n], os.path.abspath(a.out), a.keep_workdir)

        def on_sig(signum, frame):
            raise KeyboardInterrupt("signal %d" % signum)
        signal.signal(signal.SIGTERM, on_sig)
        signal.signal(signal.SIGHUP, on_sig)
        try:
            r.run()
        finally:
            r.cleanup()


if __name__ == "__main__":
    main()
