"""Real BitTorrent clients (Debian packages) run inside a host namespace.

Each class starts one client with its own config directory, adds the run's
torrents (seeders get the payload in their download directory, leechers start
empty or from a magnet link), polls the client's own counters through its
RPC/API/status channel, and stops it (by PID).  Polling happens throughout the
run because most clients forget a peer's counters when the connection closes;
the last value seen for each (ip, port) is kept, and `connected_at_end` says
whether it is the client's final figure for that connection.

Every channel used here stays off the bridge: RPC goes to 127.0.0.1 inside the
host's namespace or to a Unix socket, so the capture holds only swarm traffic.
"""
import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import xmlrpc.client

from netns import http_request, http_json, wait_port, InNetns

PY = "/usr/bin/python3"  # Debian's: it has python3-libtorrent
HERE = os.path.dirname(os.path.abspath(__file__))


def now_iso(ts=None):
    ts = time.time() if ts is None else ts
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%03dZ" % int((ts % 1) * 1000)


class Client:
    kind = "?"
    counter_source = ""

    def __init__(self, run, name, ns, ip, ip6, role, torrents, opts):
        self.run = run
        self.name = name
        self.ns = ns
        self.ip = ip
        self.ip6 = ip6
        self.role = role
        self.torrents = torrents  # list of dicts (see swarm.py)
        self.opts = opts
        self.dir = os.path.join(run.workdir, name)
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.data, exist_ok=True)
        self.proc = None
        self.version = None
        self.peer_id_prefix = None
        self.listen_port = opts.get("port")
        self.per_peer = {}  # ih -> {(ip,port): dict}
        self.completed_seen = {}  # ih -> ts first observed complete by the poller
        self.last = {}  # ih -> last counters
        self.notes = []
        self.start_ts = None
        self.extra = {}

    # -- helpers --
    def seeds(self, t):
        return self.role == "seeder" or t["name"] in self.opts.get("seed_torrents", ())

    def place_payload(self):
        for t in self.torrents:
            if self.seeds(t):
                dst = os.path.join(self.data, t["file_name"])
                if not os.path.exists(dst):
                    shutil.copyfile(t["payload_path"], dst)

    def log(self, what):
        return os.path.join(self.dir, what)

    def note_peer(self, ih, ip, port, up, down, **kw):
        d = self.per_peer.setdefault(ih, {})
        e = d.setdefault((ip, port), {"ip": ip, "port": port, "uploaded_bytes": 0, "downloaded_bytes": 0})
        if up is not None:
            e["uploaded_bytes"] = max(e["uploaded_bytes"] or 0, up)
        else:
            e["uploaded_bytes"] = None
        if down is not None:
            e["downloaded_bytes"] = max(e["downloaded_bytes"] or 0, down)
        else:
            e["downloaded_bytes"] = None
        e.update(kw)
        e["last_seen"] = now_iso()
        return e

    def finish_peers(self, ih, live):
        out = []
        for k, e in sorted(self.per_peer.get(ih, {}).items()):
            e = dict(e)
            e["connected_at_end"] = k in live
            out.append(e)
        return out

    def mark_complete(self, ih, complete):
        if complete and ih not in self.completed_seen:
            self.completed_seen[ih] = time.time()

    def all_complete(self):
        return all(self.last.get(t["key"], {}).get("completed") for t in self.torrents)

    def stop(self):
        if self.proc:
            self.run.procs.stop(self.proc, timeout=10)

    def truth(self):
        return {
            "name": self.name, "ip": self.ip, "ipv6": self.ip6, "client": self.kind,
            "version": self.version, "peer_id_prefix": self.peer_id_prefix,
            "listen_port": self.listen_port, "role": self.role,
            "torrents": [t["key"] for t in self.torrents],
            "counters": self.last, "counter_source": self.counter_source,
            "notes": self.notes, **self.extra,
        }


# --------------------------------------------------------------------------
class LibtorrentClient(Client):
    kind = "libtorrent"
    counter_source = ("python3-libtorrent torrent_status.total_payload_upload / "
                      "total_payload_download, completed_time; per peer peer_info.total_upload / "
                      "total_download (payload only), polled every 0.25 s inside the client process")

    def start(self):
        self.place_payload()
        o = self.opts
        port = o.get("port", 6881)
        listen = []
        if self.ip:
            listen.append("%s:%d" % (self.ip, port))
        if self.ip6:
            listen.append("[%s]:%d" % (self.ip6, port))
        sess = {
            "name": self.name, "listen": listen, "dht": o.get("dht", False),
            "dht_bootstrap": o.get("dht_bootstrap", ""), "dht_nodes": o.get("dht_nodes", []),
            "tcp": o.get("tcp", True), "utp": o.get("utp", True), "enc": o.get("enc", "prefer"),
            "reannounce_s": o.get("reannounce_s", 0),
            "settings": o.get("lt_settings", {}),
            "status_file": self.log("status.json"), "log_file": self.log("alerts.log"),
            "torrents": [],
        }
        rp = o.get("ratio_proxy")
        if rp:
            # A BittOratio-style proxy on this host: tracker requests go
            # through it, `uploaded` multiplied by rp["factor"]. It listens on
            # the host's own address (libtorrent binds its tracker sockets to
            # the listen interface, which cannot reach 127.0.0.1); traffic
            # between two sockets of one host stays on its loopback, so the
            # bridge sees only the proxy's requests to the tracker.
            self.proxy = self.run.procs.start(
                self.name + "-ratio-proxy",
                [PY, os.path.join(HERE, "ratio_proxy.py"), "--listen", "%s:%d" % (self.ip, rp["port"]),
                 "--source", self.ip, "--factor", str(rp["factor"]), "--log", self.log("ratio_proxy.jsonl")],
                ns=self.ns, log=self.log("ratio_proxy.log"))
            if not wait_port(self.ns, self.ip, rp["port"], timeout=10):
                raise RuntimeError("ratio proxy did not start")
            sess["proxy"] = {"host": self.ip, "port": rp["port"]}
            self.notes.append("CHEATS: tracker requests go through ratio_proxy.py on this host (port %d), which "
                              "multiplies `uploaded` by %d (BittOratio-style); its counters above are the "
                              "true ones, `ratio_proxy.announces` what the tracker was told"
                              % (rp["port"], rp["factor"]))
        for t in self.torrents:
            tt = {"save_path": self.data, "upload_limit": o.get("up"), "download_limit": o.get("down")}
            if t.get("magnet_only") and not self.seeds(t):
                tt["magnet"] = t["magnet"]
            else:
                tt["torrent_file"] = t["torrent_file"]
            sess["torrents"].append(tt)
        cfg = {"sessions": [sess]}
        for extra in o.get("extra_sessions", []):
            cfg["sessions"].append(extra)
        with open(self.log("lt.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        self.start_ts = time.time()
        self.proc = self.run.procs.start(self.name, [PY, os.path.join(HERE, "lt_client.py"), self.log("lt.json")],
                                         ns=self.ns, log=self.log("stdout.log"))
        self.listen_port = port
        self.version = "2.0.8.0"
        self.peer_id_prefix = "-LT2080-"

    def truth(self):
        d = super().truth()
        rp = self.opts.get("ratio_proxy")
        if rp:
            recs = []
            try:
                with open(self.log("ratio_proxy.jsonl")) as f:
                    recs = [json.loads(line) for line in f if line.strip()]
            except FileNotFoundError:
                pass
            for r in recs:
                r["t"] = now_iso(r["t"])
            d["ratio_proxy"] = {"factor": rp["factor"], "listen": "%s:%d" % (self.ip, rp["port"]),
                                "announces": recs}
        return d

    def read_status(self):
        try:
            with open(self.log("status.json")) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def poll(self):
        st = self.read_status()
        if not st:
            return
        self.version = st["version"]
        for t in self.torrents:
            ts = None
            for k, v in st["torrents"].items():
                if k in (t["info_hash"], t.get("info_hash_v2")):
                    ts = v
            if ts is None:
                continue
            completed = ts["completed"] and ts["progress"] >= 1.0
            self.mark_complete(t["key"], completed)
            comp_at = ts.get("completed_time")
            if self.seeds(t):
                comp_at = None
            self.last[t["key"]] = {
                "uploaded_bytes": ts["uploaded_bytes"], "downloaded_bytes": ts["downloaded_bytes"],
                "completed": completed,
                "completed_at": now_iso(comp_at) if comp_at else None,
                "finished_alert_at": now_iso(ts["finished_alert_at"]) if ts.get("finished_alert_at") and not self.seeds(t) else None,
                "metadata_received_at": now_iso(ts["metadata_received_at"]) if ts.get("metadata_received_at") else None,
                "progress": ts["progress"],
                "total_redundant_bytes": ts["total_redundant_bytes"],
                "total_failed_bytes": ts["total_failed_bytes"],
                "upload_with_overhead_bytes": ts["total_upload_with_overhead"],
                "download_with_overhead_bytes": ts["total_download_with_overhead"],
                "per_peer": ts["per_peer"],
            }


class DhtNodes(LibtorrentClient):
    """Several DHT-only libtorrent sessions in one process, one address each
    (Transmission will not search the DHT with 8 nodes or fewer)."""
    kind = "libtorrent-dht-node"

    def start(self):
        o = self.opts
        sessions = []
        for i, a in enumerate(o["addrs"]):
            listen = ["[%s]:%d" % (a, o["port"])] if ":" in a else ["%s:%d" % (a, o["port"])]
            sessions.append({"name": "%s-%d" % (self.name, i), "listen": listen, "dht": True,
                             "dht_bootstrap": o.get("dht_bootstrap", ""), "dht_nodes": o.get("dht_nodes", []),
                             "tcp": True, "utp": False, "enc": "prefer", "torrents": [],
                             "status_file": self.log("status%d.json" % i)})
        with open(self.log("lt.json"), "w") as f:
            json.dump({"sessions": sessions}, f, indent=1)
        self.proc = self.run.procs.start(self.name, [PY, os.path.join(HERE, "lt_client.py"), self.log("lt.json")],
                                         ns=self.ns, log=self.log("stdout.log"))
        self.listen_port = o["port"]
        self.version = "2.0.8.0"
        self.peer_id_prefix = "-LT2080-"
        if o.get("wait_listening"):
            # Clients started next bootstrap from these nodes: a bootstrap
            # sent before they listen is lost.
            wait_port(self.ns, o["addrs"][0], o["port"], timeout=15, udp=True)

    def poll(self):
        n = []
        for i in range(len(self.opts["addrs"])):
            try:
                with open(self.log("status%d.json" % i)) as f:
                    n.append(json.load(f)["dht_nodes"])
            except Exception:
                n.append(None)
        self.extra["dht_routing_table_sizes"] = n

    def all_complete(self):
        return True

    def truth(self):
        d = super().truth()
        d["ips"] = self.opts["addrs"]
        d["counter_source"] = "none: DHT-only nodes, no torrents"
        return d


# --------------------------------------------------------------------------
class Transmission(Client):
    kind = "transmission"
    counter_source = ("transmission-daemon RPC torrent-get: uploadedEver, downloadedEver, doneDate, "
                      "percentDone; peers[] has rates only (no per-peer byte totals)")
    RPC_PORT = 9091

    def start(self):
        self.place_payload()
        o = self.opts
        port = o.get("port", 51413)
        cfgdir = os.path.join(self.dir, "config")
        os.makedirs(cfgdir, exist_ok=True)
        enc = {"plain": 0, "prefer": 1, "require": 2}[o.get("enc", "plain")]
        s = {
            "bind-address-ipv4": self.ip or "0.0.0.0",
            "bind-address-ipv6": self.ip6 or "::",
            "peer-port": port, "peer-port-random-on-start": False,
            "port-forwarding-enabled": False, "lpd-enabled": False,
            "dht-enabled": o.get("dht", False), "pex-enabled": True,
            "utp-enabled": o.get("utp", True), "encryption": enc,
            "rpc-enabled": True, "rpc-bind-address": "127.0.0.1", "rpc-port": self.RPC_PORT,
            "rpc-whitelist-enabled": False, "rpc-authentication-required": False,
            "rpc-host-whitelist-enabled": False,
            "download-dir": self.data, "incomplete-dir-enabled": False,
            "speed-limit-up": o.get("up", 0) // 1000 or 1, "speed-limit-up-enabled": bool(o.get("up")),
            "speed-limit-down": o.get("down", 0) // 1000 or 1, "speed-limit-down-enabled": bool(o.get("down")),
            "ratio-limit-enabled": False, "idle-seeding-limit-enabled": False,
            "blocklist-enabled": False, "start-added-torrents": True,
            "message-level": 3, "cache-size-mb": 4, "rename-partial-files": False,
            "scrape-paused-torrents-enabled": False, "peer-limit-global": 200,
            "peer-limit-per-torrent": 50, "queue-stalled-enabled": False,
            "download-queue-enabled": False, "seed-queue-enabled": False,
            "alt-speed-enabled": False, "prefetch-enabled": True,
        }
        with open(os.path.join(cfgdir, "settings.json"), "w") as f:
            json.dump(s, f, indent=1)
        if o.get("dht_bootstrap_list"):
            # Transmission reads CONFIG/dht.bootstrap ("host port" lines) before
            # falling back to its hard-wired router name (mapped in /etc/netns hosts).
            with open(os.path.join(cfgdir, "dht.bootstrap"), "w") as f:
                for h, p in o["dht_bootstrap_list"]:
                    f.write("%s %d\n" % (h, p))
        self.start_ts = time.time()
        self.proc = self.run.procs.start(self.name, ["transmission-daemon", "-f", "-g", cfgdir,
                                                     "--logfile", self.log("transmission.log")],
                                         ns=self.ns, log=self.log("stdout.log"))
        self.listen_port = port
        self.sid = ""
        for _ in range(100):
            try:
                r = self.rpc("session-get")
                self.version = r["arguments"]["version"]
                break
            except Exception:
                time.sleep(0.2)
        v = (self.version or "3.00").split()[0]
        self.peer_id_prefix = "-TR%s0-" % v.replace(".", "")[:3]
        for t in self.torrents:
            if t.get("magnet_only") and not self.seeds(t):
                args = {"filename": t["magnet"]}
            else:
                args = {"metainfo": base64.b64encode(open(t["torrent_file"], "rb").read()).decode()}
            args["download-dir"] = self.data
            r = self.rpc("torrent-add", args)
            if r.get("result") != "success":
                self.notes.append("torrent-add %s: %s" % (t["name"], r.get("result")))

    def rpc(self, method, args=None):
        body = {"method": method, "arguments": args or {}}
        for _ in range(3):
            st, hd, data = http_json(self.ns, "POST", "127.0.0.1", self.RPC_PORT, "/transmission/rpc",
                                     body, {"X-Transmission-Session-Id": self.sid})
            if st == 409:
                self.sid = hd.get("X-Transmission-Session-Id", "")
                continue
            return json.loads(data)
        raise RuntimeError("transmission rpc: session id")

    def poll(self):
        r = self.rpc("torrent-get", {"fields": [
            "hashString", "name", "uploadedEver", "downloadedEver", "corruptEver", "doneDate",
            "addedDate", "percentDone", "leftUntilDone", "haveValid", "status", "error", "errorString",
            "peers", "peersFrom", "trackerStats", "metadataPercentComplete"]})
        for tt in r["arguments"]["torrents"]:
            t = self.run.torrent_by_hash(tt["hashString"])
            if not t:
                continue
            ih = t["key"]
            live = set()
            for p in tt.get("peers", []):
                live.add((p["address"], p["port"]))
                self.note_peer(ih, p["address"], p["port"], None, None, client=p.get("clientName"),
                               utp=p.get("isUTP"), encrypted=p.get("isEncrypted"),
                               outgoing=not p.get("isIncoming"))
            completed = tt["percentDone"] >= 1.0 and tt["leftUntilDone"] == 0 and tt.get("metadataPercentComplete", 1) >= 1
            self.mark_complete(ih, completed)
            done = tt.get("doneDate") or 0
            self.last[ih] = {
                "uploaded_bytes": tt["uploadedEver"], "downloaded_bytes": tt["downloadedEver"],
                "corrupt_bytes": tt["corruptEver"], "completed": completed, "progress": tt["percentDone"],
                "completed_at": now_iso(done) if done and not self.seeds(t) else None,
                "per_peer": self.finish_peers(ih, live),
                "tracker_stats": [{k: ts.get(k) for k in ("announce", "lastAnnounceTime", "lastAnnounceResult",
                                                          "lastAnnouncePeerCount", "seederCount", "leecherCount",
                                                          "downloadCount", "nextAnnounceTime")}
                                  for ts in tt.get("trackerStats", [])],
                "error": tt.get("errorString") or None,
            }

    def stop(self):
        # Transmission skips the `stopped` announce on session close unless the
        # torrent is stopped first.
        try:
            self.rpc("torrent-stop", {})
            time.sleep(1.5)
        except Exception:
            pass
        super().stop()


# --------------------------------------------------------------------------
class Aria2(Client):
    kind = "aria2"
    counter_source = ("aria2c JSON-RPC aria2.tellStatus: uploadLength, completedLength (bytes of "
                      "verified pieces, NOT downloaded bytes); aria2.getPeers gives speeds only")
    RPC_PORT = 6800

    def start(self):
        self.place_payload()
        o = self.opts
        port = o.get("port", 6882)
        self.listen_port = port
        args = ["aria2c", "--enable-rpc", "--rpc-listen-port=%d" % self.RPC_PORT, "--rpc-listen-all=false",
                "--dir=" + self.data, "--listen-port=%d" % port,
                "--dht-listen-port=%d" % o.get("dht_port", port + 1),
                "--enable-dht=%s" % ("true" if o.get("dht") else "false"),
                "--enable-dht6=%s" % ("true" if o.get("dht6") else "false"),
                "--bt-enable-lpd=false", "--enable-peer-exchange=true",
                "--seed-ratio=0.0", "--check-integrity=true", "--bt-hash-check-seed=true",
                "--bt-seed-unverified=false", "--follow-torrent=mem", "--bt-save-metadata=false",
                "--summary-interval=0", "--console-log-level=warn",
                "--log=" + self.log("aria2.log"), "--log-level=info",
                "--auto-save-interval=0", "--file-allocation=none",
                "--dht-file-path=" + self.log("dht.dat"), "--dht-file-path6=" + self.log("dht6.dat"),
                "--bt-tracker-interval=%d" % o.get("reannounce_s", 0),
                "--max-overall-upload-limit=%d" % o.get("up", 0),
                "--max-overall-download-limit=%d" % o.get("down", 0),
                "--disable-ipv6=%s" % ("false" if self.ip6 else "true"),
                "--bt-stop-timeout=0", "--bt-max-peers=55", "--no-netrc=true", "--rpc-save-upload-metadata=false"]
        if o.get("enc") == "require":
            args += ["--bt-require-crypto=true", "--bt-min-crypto-level=arc4"]
        if o.get("dht_entry"):
            args.append("--dht-entry-point=%s:%d" % tuple(o["dht_entry"]))
        if o.get("dht_entry6"):
            args.append("--dht-entry-point6=%s:%d" % tuple(o["dht_entry6"]))
            args.append("--dht-listen-addr6=%s" % self.ip6)
        self.start_ts = time.time()
        self.proc = self.run.procs.start(self.name, args, ns=self.ns, log=self.log("stdout.log"))
        wait_port(self.ns, "127.0.0.1", self.RPC_PORT, timeout=15)
        r = self.rpc("aria2.getVersion")
        self.version = r["result"]["version"]
        self.peer_id_prefix = "A2-%s-" % self.version.replace(".", "-")
        self.gids = {}
        for t in self.torrents:
            if t.get("magnet_only") and not self.seeds(t):
                r = self.rpc("aria2.addUri", [[t["magnet"]], {}])
            else:
                data = base64.b64encode(open(t["torrent_file"], "rb").read()).decode()
                r = self.rpc("aria2.addTorrent", [data, [], {}])
            if "result" not in r:
                self.notes.append("add %s: %s" % (t["name"], r))
                continue
            self.gids[t["key"]] = r["result"]

    def rpc(self, method, params=None):
        # With no IPv4 address configured (IPv6-only host), aria2 binds its RPC to ::1 only.
        host = "127.0.0.1" if self.ip else "::1"
        st, hd, data = http_json(self.ns, "POST", host, self.RPC_PORT, "/jsonrpc",
                                 {"jsonrpc": "2.0", "id": "s", "method": method, "params": params or []})
        return json.loads(data)

    def poll(self):
        for ih, gid in list(self.gids.items()):
            r = self.rpc("aria2.tellStatus", [gid])
            s = r.get("result")
            if not s:
                continue
            if s.get("followedBy"):
                # a magnet download is followed by the real one once metadata is in
                self.gids[ih] = s["followedBy"][0]
                self.extra.setdefault("metadata_gids", []).append(gid)
                continue
            live = set()
            pr = self.rpc("aria2.getPeers", [gid]).get("result", [])
            for p in pr:
                port = int(p["port"])
                live.add((p["ip"], port))
                self.note_peer(ih, p["ip"], port, None, None, seeder=p.get("seeder") == "true")
            total = int(s["totalLength"])
            done = int(s["completedLength"])
            completed = total > 0 and done == total
            t = self.run.torrent_by_key(ih)
            self.mark_complete(ih, completed)
            self.last[ih] = {
                "uploaded_bytes": int(s["uploadLength"]), "downloaded_bytes": None,
                "completed_length_bytes": done, "completed": completed,
                "progress": done / total if total else 0.0,
                "completed_at": now_iso(self.completed_seen[ih]) if ih in self.completed_seen and not self.seeds(t) else None,
                "status": s.get("status"), "per_peer": self.finish_peers(ih, live),
            }

    def stop(self):
        # aria2.shutdown is the graceful path (sends `stopped` announces);
        # SIGTERM (by PID) follows if it is still running after 10 s.
        try:
            self.rpc("aria2.shutdown")
            self.proc.wait(10)
        except Exception:
            pass
        super().stop()

    def truth(self):
        d = super().truth()
        if self.role != "seeder":
            d["notes"] = d["notes"] + ["aria2 reports no downloaded-bytes counter (downloaded_bytes=null); "
                                       "completed_at is when the generator's 1 s poll first saw completedLength == totalLength"]
        return d


# --------------------------------------------------------------------------
class QBittorrent(Client):
    kind = "qbittorrent"
    counter_source = ("qbittorrent-nox WebUI API v2 torrents/info: uploaded, downloaded, completion_on; "
                      "sync/torrentPeers: per-peer uploaded/downloaded (libtorrent peer_info payload totals)")
    WEB_PORT = 8080

    def start(self):
        self.place_payload()
        o = self.opts
        port = o.get("port", 8999)
        self.listen_port = port
        prof = os.path.join(self.dir, "profile")
        cdir = os.path.join(prof, "qBittorrent", "config")
        os.makedirs(cdir, exist_ok=True)
        enc = {"prefer": 0, "plain": 2, "require": 1}[o.get("enc", "prefer")]
        proto = {(True, True): "Both", (True, False): "TCP", (False, True): "UTP"}[(o.get("tcp", True), o.get("utp", True))]
        conf = """[LegalNotice]
Accepted=true

[BitTorrent]
Session\\Port={port}
Session\\Interface=eth0
Session\\InterfaceName=eth0
Session\\InterfaceAddress={addr}
Session\\DHTEnabled={dht}
Session\\LSDEnabled=false
Session\\PeXEnabled=true
Session\\Encryption={enc}
Session\\BTProtocol={proto}
Session\\GlobalUPSpeedLimit={up}
Session\\GlobalDLSpeedLimit={down}
Session\\IgnoreLimitsOnLAN=false
Session\\IncludeOverheadInLimits=false
Session\\uTPRateLimited=true
Session\\DefaultSavePath={data}
Session\\TempPathEnabled=false
Session\\QueueingSystemEnabled=false
Session\\GlobalMaxRatio=-1
Session\\AnonymousModeEnabled=false
Session\\AnnounceToAllTrackers=true
Session\\AddTorrentPaused=false
Session\\ReannounceWhenAddressChanged=false
Session\\AddExtensionToIncompleteFiles=false
Session\\Preallocation=false

[Preferences]
Connection\\UPnP=false
Connection\\ResolvePeerCountries=false
General\\CheckForUpdates=false
General\\Locale=en
WebUI\\Enabled=true
WebUI\\Address=127.0.0.1
WebUI\\Port={web}
WebUI\\LocalHostAuth=false
WebUI\\CSRFProtection=false
WebUI\\HostHeaderValidation=false
WebUI\\ClickjackingProtection=false
""".format(port=port, addr=self.ip6 if (self.ip6 and not self.ip) else (self.ip or ""),
           dht="true" if o.get("dht") else "false", enc=enc, proto=proto,
           up=o.get("up", 0) // 1024, down=o.get("down", 0) // 1024, data=self.data, web=self.WEB_PORT)
        with open(os.path.join(cdir, "qBittorrent.conf"), "w") as f:
            f.write(conf)
        self.start_ts = time.time()
        env = dict(os.environ, HOME=self.dir, XDG_CONFIG_HOME=os.path.join(self.dir, "xdg"))
        self.proc = self.run.procs.start(self.name, ["qbittorrent-nox", "--profile=" + prof,
                                                     "--webui-port=%d" % self.WEB_PORT],
                                         ns=self.ns, log=self.log("stdout.log"), env=env)
        if not wait_port(self.ns, "127.0.0.1", self.WEB_PORT, timeout=20):
            raise RuntimeError("qbittorrent WebUI did not come up")
        st, _, data = self.api("GET", "/api/v2/app/version")
        self.version = data.decode().strip().lstrip("v")
        self.peer_id_prefix = "-qB%s0-" % self.version.replace(".", "")[:3]
        for t in self.torrents:
            fields = {"savepath": self.data, "paused": "false", "skip_checking": "false",
                      "root_folder": "false", "contentLayout": "NoSubfolder"}
            if o.get("up"):
                fields["upLimit"] = str(o["up"])
            if o.get("down"):
                fields["dlLimit"] = str(o["down"])
            files = {}
            if t.get("magnet_only") and not self.seeds(t):
                fields["urls"] = t["magnet"]
            else:
                files["torrents"] = (os.path.basename(t["torrent_file"]), open(t["torrent_file"], "rb").read())
            body, ctype = multipart(fields, files)
            st, _, data = self.api("POST", "/api/v2/torrents/add", body, {"Content-Type": ctype})
            if st != 200 or data.strip() != b"Ok.":
                self.notes.append("add %s: %s %s" % (t["name"], st, data[:100]))

    def api(self, method, path, body=None, headers=None):
        return http_request(self.ns, method, "127.0.0.1", self.WEB_PORT, path, body, headers)

    def reannounce(self):
        self.api("POST", "/api/v2/torrents/reannounce", b"hashes=all",
                 {"Content-Type": "application/x-www-form-urlencoded"})

    def poll(self):
        st, _, data = self.api("GET", "/api/v2/torrents/info")
        if st != 200:
            return
        for tt in json.loads(data):
            t = None
            for h in (tt.get("infohash_v1"), tt.get("infohash_v2"), tt.get("hash")):
                if h:
                    t = t or self.run.torrent_by_hash(h)
            if not t:
                continue
            ih = t["key"]
            st2, _, pdata = self.api("GET", "/api/v2/sync/torrentPeers?hash=%s&rid=0" % tt["hash"])
            live = set()
            if st2 == 200:
                for k, p in (json.loads(pdata).get("peers") or {}).items():
                    live.add((p["ip"], p["port"]))
                    self.note_peer(ih, p["ip"], p["port"], p.get("uploaded"), p.get("downloaded"),
                                   client=p.get("client"), connection=p.get("connection"), flags=p.get("flags"))
            completed = tt["progress"] >= 1.0 and tt.get("amount_left", 0) == 0 and tt.get("total_size", 0) > 0
            self.mark_complete(ih, completed)
            comp = tt.get("completion_on") or 0
            self.last[ih] = {
                "uploaded_bytes": tt["uploaded"], "downloaded_bytes": tt["downloaded"],
                "completed": completed,
                "completed_at": now_iso(comp) if comp > 0 and not self.seeds(t) else None,
                "progress": tt["progress"], "state": tt.get("state"), "per_peer": self.finish_peers(ih, live),
            }


def multipart(fields, files):
    b = "----swarmtap%d" % int(time.time() * 1000)
    out = []
    for k, v in fields.items():
        out.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (b, k, v)).encode())
    for k, (fn, data) in files.items():
        out.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                    "Content-Type: application/x-bittorrent\r\n\r\n" % (b, k, fn)).encode() + data + b"\r\n")
    out.append(("--%s--\r\n" % b).encode())
    return b"".join(out), "multipart/form-data; boundary=%s" % b


# --------------------------------------------------------------------------
class RTorrent(Client):
    kind = "rtorrent"
    counter_source = ("rtorrent XML-RPC over SCGI (Unix socket): d.up.total, d.down.total, d.complete, "
                      "d.timestamp.finished; per peer p.up_total / p.down_total (p.multicall)")

    def start(self):
        self.place_payload()
        o = self.opts
        port = o.get("port", 6890)
        self.listen_port = port
        self.sock = self.log("rpc.sock")
        sess = os.path.join(self.dir, "session")
        os.makedirs(sess, exist_ok=True)
        enc = {"plain": "none", "prefer": "allow_incoming,try_outgoing,enable_retry",
               "require": "allow_incoming,require,require_RC4"}[o.get("enc", "plain")]
        rc = [
            "directory.default.set = " + self.data,
            "session.path.set = " + sess,
            "network.bind_address.set = " + (self.ip or self.ip6),
            "network.port_range.set = %d-%d" % (port, port),
            "network.port_random.set = no",
            "network.scgi.open_local = " + self.sock,
            "dht.mode.set = %s" % ("on" if o.get("dht") else "disable"),
            "dht.port.set = %d" % o.get("dht_port", port + 1),
            "protocol.pex.set = yes",
            "trackers.use_udp.set = yes",
            "protocol.encryption.set = " + enc,
            "throttle.global_up.max_rate.set = %d" % o.get("up", 0),
            "throttle.global_down.max_rate.set = %d" % o.get("down", 0),
            "pieces.hash.on_completion.set = no",
            "system.daemon.set = true",
            "log.open_file = \"main\", " + self.log("rtorrent.log"),
            "log.add_output = \"info\", \"main\"",
            "log.add_output = \"tracker_info\", \"main\"",
        ]
        if o.get("reannounce_s"):
            rc.append('schedule2 = reannounce, %d, %d, "d.multicall2=,,d.tracker_announce="'
                      % (o["reannounce_s"], o["reannounce_s"]))
        for h, p in o.get("dht_nodes", []):
            rc.append('schedule2 = dhtnode%s, 2, 0, "dht.add_node=%s:%d"' % (h.replace(".", "").replace(":", ""), h, p))
        with open(self.log("rtorrent.rc"), "w") as f:
            f.write("\n".join(rc) + "\n")
        self.start_ts = time.time()
        env = dict(os.environ, HOME=self.dir, TERM="dumb")
        self.proc = self.run.procs.start(self.name, ["rtorrent", "-n", "-o", "import=" + self.log("rtorrent.rc")],
                                         ns=self.ns, log=self.log("stdout.log"), env=env)
        for _ in range(100):
            if os.path.exists(self.sock):
                try:
                    self.version = self.rpc("system.client_version")
                    break
                except Exception:
                    pass
            time.sleep(0.2)
        self.extra["library_version"] = self.rpc("system.library_version")
        lv = self.extra["library_version"].split(".")
        self.peer_id_prefix = "-lt%02X%s%s-" % (int(lv[1]), lv[2], "0") if len(lv) == 3 else None
        for t in self.torrents:
            if t.get("magnet_only") and not self.seeds(t):
                self.rpc("load.start", "", t["magnet"])
            else:
                self.rpc("load.start", "", t["torrent_file"])

    def rpc(self, method, *params):
        body = xmlrpc.client.dumps(params, method).encode()
        hdr = b"CONTENT_LENGTH\x00%d\x00SCGI\x001\x00REQUEST_METHOD\x00POST\x00REQUEST_URI\x00/RPC2\x00" % len(body)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(self.sock)
        s.sendall(b"%d:" % len(hdr) + hdr + b"," + body)
        buf = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            buf += c
        s.close()
        body = buf.split(b"\r\n\r\n", 1)[1]
        return xmlrpc.client.loads(body.decode())[0][0]

    def poll(self):
        rows = self.rpc("d.multicall2", "", "main", "d.hash=", "d.up.total=", "d.down.total=", "d.complete=",
                        "d.completed_bytes=", "d.size_bytes=", "d.timestamp.finished=", "d.is_meta=")
        for h, up, down, complete, cbytes, size, fin, is_meta in rows:
            t = self.run.torrent_by_hash(h.lower())
            if not t:
                continue
            ih = t["key"]
            live = set()
            try:
                peers = self.rpc("p.multicall", h, "", "p.address=", "p.port=", "p.up_total=", "p.down_total=",
                                 "p.client_version=", "p.is_encrypted=", "p.is_incoming=")
            except Exception:
                peers = []
            for ip, pport, pu, pd, cv, enc, inc in peers:
                live.add((ip, pport))
                self.note_peer(ih, ip, pport, pu, pd, client=cv, encrypted=bool(enc), outgoing=not inc)
            completed = bool(complete) and not is_meta
            self.mark_complete(ih, completed)
            self.last[ih] = {
                "uploaded_bytes": up, "downloaded_bytes": down, "completed": completed,
                "completed_at": now_iso(fin) if fin and not self.seeds(t) else None,
                "completed_bytes": cbytes, "progress": cbytes / size if size else 0.0, "per_peer": self.finish_peers(ih, live),
            }

    def stop(self):
        try:
            for t in self.torrents:
                h = (t["info_hash"]).upper()
                self.rpc("d.stop", h)
            time.sleep(1.5)
        except Exception:
            pass
        super().stop()


# --------------------------------------------------------------------------
class CtcsServer(threading.Thread):
    """A minimal CTorrent Control Server on 127.0.0.1 inside ctorrent's namespace:
    it receives CTSTATUS (exact byte totals) and CTPEER lines."""

    def __init__(self, ns, port, logpath):
        super().__init__(daemon=True)
        with InNetns(ns):
            self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", port))
        self.srv.listen(1)
        self.srv.settimeout(0.5)
        self.status = None
        self.peers = []
        self._peers_tmp = []
        self.conn = None
        self.stop_flag = False
        self.logf = open(logpath, "a")

    def run(self):
        while not self.stop_flag:
            try:
                conn, _ = self.srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conn = conn
            conn.settimeout(0.5)
            conn.sendall(b"PROTOCOL 0003\r\n")
            buf = b""
            last_ask = 0
            while not self.stop_flag:
                if time.time() - last_ask > 0.5:
                    try:
                        conn.sendall(b"SENDSTATUS\r\nSENDPEERS\r\n")
                    except OSError:
                        break
                    last_ask = time.time()
                try:
                    c = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not c:
                    break
                buf += c
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self.handle(line.decode("latin-1").strip())
            conn.close()

    def handle(self, line):
        self.logf.write("%.3f %s\n" % (time.time(), line))
        self.logf.flush()
        w = line.split(" ", 1)
        if w[0] == "CTSTATUS":
            self.status = (time.time(), w[1] if len(w) > 1 else "")
        elif w[0] == "CTPEERSTART":
            self._peers_tmp = []
        elif w[0] == "CTPEER":
            self._peers_tmp.append(w[1] if len(w) > 1 else "")
        elif w[0] == "CTPEERSDONE":
            self.peers = self._peers_tmp


class CTorrent(Client):
    kind = "ctorrent"
    counter_source = ("Enhanced CTorrent status via its CTCS protocol (-S to a listener on 127.0.0.1 in "
                      "its namespace): CTSTATUS dl_total,ul_total; CTPEER per-peer totals")
    CTCS_PORT = 2780

    def start(self):
        self.place_payload()
        o = self.opts
        port = o.get("port", 2706)
        self.listen_port = port
        assert len(self.torrents) == 1
        t = self.torrents[0]
        self.ctcs = CtcsServer(self.ns, self.CTCS_PORT, self.log("ctcs.log"))
        self.ctcs.start()
        args = ["ctorrent", "-e", "1", "-p", str(port), "-i", self.ip,
                "-s", os.path.join(self.data, t["file_name"]), "-S", "127.0.0.1:%d" % self.CTCS_PORT,
                "-M", "20", "-C", "4", "-b", self.log("bitfield.bf")]
        if o.get("up"):
            args += ["-U", str(max(1, o["up"] // 1024))]
        if o.get("down"):
            args += ["-D", str(max(1, o["down"] // 1024))]
        args.append(t["torrent_file"])
        self.start_ts = time.time()
        self.proc = self.run.procs.start(self.name, args, ns=self.ns, log=self.log("stdout.log"),
                                         stdin=subprocess.DEVNULL)
        self.version = "dnh3.3.2"
        self.peer_id_prefix = "-CD0303-"

    def poll(self):
        t = self.torrents[0]
        ih = t["key"]
        st = self.ctcs.status
        if not st:
            return
        # Protocol 3 CTSTATUS: seeders:t_seeders/leechers:t_leechers/connecting
        #   have/total/avail dl_rate,ul_rate dl_total,ul_total dl_limit,ul_limit cache_used
        f = st[1].split()
        try:
            have, total = [int(x) for x in f[1].split("/")[:2]]
            dl_total, ul_total = [int(x) for x in f[3].split(",")[:2]]
        except (IndexError, ValueError):
            self.notes.append("unparsed CTSTATUS: %s" % st[1])
            return
        completed = have == total and total > 0
        self.mark_complete(ih, completed)
        live = set()
        for p in self.ctcs.peers:
            # CTPEER peerid ip direction status dl_rate ul_rate dl_total ul_total ...
            pf = p.split()
            try:
                ip = pf[1]
                dl, ul = int(pf[5]), int(pf[6])
            except (IndexError, ValueError):
                continue
            self.note_peer(ih, ip, None, ul, dl, raw=p)
            live.add((ip, None))
        self.last[ih] = {
            "uploaded_bytes": ul_total, "downloaded_bytes": dl_total, "completed": completed,
            "completed_at": now_iso(self.completed_seen[ih]) if ih in self.completed_seen and not self.seeds(t) else None,
            "progress": have / total if total else 0.0, "ctstatus_raw": st[1], "per_peer": self.finish_peers(ih, live),
        }

    def stop(self):
        super().stop()
        self.ctcs.stop_flag = True
        try:
            self.ctcs.srv.close()
        except OSError:
            pass


KINDS = {"libtorrent": LibtorrentClient, "transmission": Transmission, "aria2": Aria2,
         "qbittorrent": QBittorrent, "rtorrent": RTorrent, "ctorrent": CTorrent, "dhtnodes": DhtNodes}
