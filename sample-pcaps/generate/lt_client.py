#!/usr/bin/python3
"""One or more libtorrent sessions inside a network namespace, driven by a JSON config.

Run by swarm.py as `ip netns exec NS /usr/bin/python3 lt_client.py CONFIG.json`
(Debian's python3-libtorrent; the pyenv python3 has no libtorrent).

Every 0.25 s it writes each session's status to its status file (written aside,
then renamed), with per-peer counters accumulated over the whole run: libtorrent
forgets a peer's counters when the connection closes, so the last value seen is
kept (`connected_at_end` says whether it is the final value).

Config: {"sessions": [{"name", "listen": ["10.99.0.12:6881"], "dht": bool,
  "dht_bootstrap": "ip:port,...", "tcp": bool, "utp": bool,
  "enc": "plain"|"prefer"|"require", "upload_limit": B/s, "download_limit": B/s,
  "reannounce_s": 0|N, "status_file": path, "log_file": path,
  "settings": {settings_pack name: value} (applied last),
  "proxy": {"host", "port"} (HTTP proxy for tracker connections only),
  "torrents": [{"torrent_file" | "magnet", "save_path", "seed": bool}]}]}
"""
import json
import os
import signal
import sys
import time

import libtorrent as lt

STOP = False
UTP_SOCKET = 1 << 17  # peer_info::utp_socket (not exported by the Python binding)


def peer_id_prefix(p):
    try:
        b = p.pid.to_bytes()
        if isinstance(b, str):
            b = b.encode("latin-1")
        return b[:8].decode("latin-1")
    except Exception:
        return None


def on_term(signum, frame):
    global STOP
    STOP = True


def make_session(cfg):
    s = {
        "listen_interfaces": ",".join(cfg["listen"]),
        "enable_dht": bool(cfg.get("dht", False)),
        "dht_bootstrap_nodes": cfg.get("dht_bootstrap", ""),
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_ip_notifier": False,
        "enable_incoming_tcp": cfg.get("tcp", True),
        "enable_outgoing_tcp": cfg.get("tcp", True),
        "enable_incoming_utp": cfg.get("utp", True),
        "enable_outgoing_utp": cfg.get("utp", True),
        "close_redundant_connections": False,
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_ignore_dark_internet": False,
        "dht_prefer_verified_node_ids": False,
        "allow_multiple_connections_per_ip": True,
        "stop_tracker_timeout": 2,
        "min_announce_interval": 5,
        "alert_mask": lt.alert.category_t.all_categories,
        "listen_system_port_fallback": False,
        "announce_to_all_trackers": True,
        "auto_scrape_min_interval": 5,
        "tracker_backoff": 10,
    }
    enc = cfg.get("enc", "prefer")
    if enc == "plain":
        s["out_enc_policy"] = int(lt.enc_policy.disabled)
        s["in_enc_policy"] = int(lt.enc_policy.disabled)
        s["allowed_enc_level"] = int(lt.enc_level.plaintext)
    elif enc == "require":
        s["out_enc_policy"] = int(lt.enc_policy.forced)
        s["in_enc_policy"] = int(lt.enc_policy.forced)
        s["allowed_enc_level"] = int(lt.enc_level.rc4)
        s["prefer_rc4"] = True
    else:
        s["out_enc_policy"] = int(lt.enc_policy.enabled)
        s["in_enc_policy"] = int(lt.enc_policy.enabled)
        s["allowed_enc_level"] = int(lt.enc_level.both)
    if cfg.get("proxy"):
        # Tracker requests through an HTTP proxy (absolute-form GET), peer
        # connections direct: how a ratio-cheating proxy is set up.
        s["proxy_type"] = int(lt.proxy_type_t.http)
        s["proxy_hostname"] = cfg["proxy"]["host"]
        s["proxy_port"] = int(cfg["proxy"]["port"])
        s["proxy_tracker_connections"] = True
        s["proxy_peer_connections"] = False
        s["proxy_hostnames"] = True
        # The own-address IP filter below must not refuse the proxy, which
        # listens on this host's address.
        s["apply_ip_filter_to_trackers"] = False
    # Extra settings_pack values from the config (e.g. a short
    # dht_announce_interval for a test that cannot wait 15 minutes).
    s.update(cfg.get("settings", {}))
    ses = lt.session(s)
    # Peers on private networks fall into libtorrent's "local" peer class,
    # which ignores rate limits: put every address in the global class.
    f = lt.ip_filter()
    f.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
    f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 << lt.session.global_peer_class_id)
    ses.set_peer_class_filter(f)
    # libtorrent 2.0.8 can hang or crash connecting to its own address (the
    # tracker hands it back): block our own addresses.
    own = lt.ip_filter()
    for ep in cfg["listen"]:
        ip = ep.rsplit(":", 1)[0].strip("[]")
        own.add_rule(ip, ip, 1)
    ses.set_ip_filter(own)
    if cfg.get("upload_limit"):
        ses.apply_settings({"upload_rate_limit": int(cfg["upload_limit"])})
    if cfg.get("download_limit"):
        ses.apply_settings({"download_rate_limit": int(cfg["download_limit"])})
    for node in cfg.get("dht_nodes", []):
        ses.add_dht_node((node[0], int(node[1])))
    handles = []
    for t in cfg.get("torrents", []):
        if "torrent_file" in t:
            atp = lt.add_torrent_params()
            atp.ti = lt.torrent_info(t["torrent_file"])
        else:
            atp = lt.parse_magnet_uri(t["magnet"])
        atp.save_path = t["save_path"]
        h = ses.add_torrent(atp)
        if t.get("upload_limit"):
            h.set_upload_limit(int(t["upload_limit"]))
        if t.get("download_limit"):
            h.set_download_limit(int(t["download_limit"]))
        handles.append(h)
    return ses, handles


def ih_keys(st):
    ihs = st.info_hashes
    v1 = str(ihs.v1) if ihs.has_v1() else None
    v2 = str(ihs.v2) if ihs.has_v2() else None
    return v1, v2


class SessionState:
    def __init__(self, cfg):
        self.cfg = cfg
        self.ses, self.handles = make_session(cfg)
        self.peers = {}  # (ih, ip, port) -> dict
        self.finished_at = {}
        self.metadata_at = {}
        self.log = open(cfg["log_file"], "a") if cfg.get("log_file") else None
        self.last_reannounce = time.time()

    def pump_alerts(self):
        for a in self.ses.pop_alerts():
            if self.log:
                self.log.write("%.3f %s: %s\n" % (time.time(), type(a).__name__, a.message()))
            if isinstance(a, lt.torrent_finished_alert):
                v1, v2 = ih_keys(a.handle.status())
                self.finished_at.setdefault(v1 or v2, time.time())
            if isinstance(a, lt.metadata_received_alert):
                v1, v2 = ih_keys(a.handle.status())
                self.metadata_at.setdefault(v1 or v2, time.time())
        if self.log:
            self.log.flush()

    def poll(self, final=False):
        now = time.time()
        out = {"name": self.cfg["name"], "client": "libtorrent (python3-libtorrent)",
               "version": lt.__version__, "peer_id_prefix": "-LT2080-",
               "listen_port": self.ses.listen_port(), "ts": now,
               "dht_nodes": self.ses.status().dht_nodes, "torrents": {}}
        reann = self.cfg.get("reannounce_s", 0)
        do_reannounce = reann and now - self.last_reannounce >= reann and not final
        if do_reannounce:
            self.last_reannounce = now
        for h in self.handles:
            st = h.status()
            v1, v2 = ih_keys(st)
            key = v1 or v2
            if do_reannounce and st.has_metadata:
                h.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
            live = set()
            for p in h.get_peer_info():
                ip, port = p.ip[0], p.ip[1]
                k = (key, ip, port)
                live.add(k)
                e = self.peers.setdefault(k, {"ip": ip, "port": port, "first_seen": now})
                e.update({
                    "uploaded_bytes": max(e.get("uploaded_bytes", 0), p.total_upload),
                    "downloaded_bytes": max(e.get("downloaded_bytes", 0), p.total_download),
                    "client": p.client.decode("utf-8", "replace") if isinstance(p.client, bytes) else p.client,
                    "peer_id_prefix": peer_id_prefix(p),
                    "utp": bool(int(p.flags) & UTP_SOCKET),
                    "encrypted": bool(int(p.flags) & (int(lt.peer_info.rc4_encrypted) | int(lt.peer_info.plaintext_encrypted))),
                    "outgoing": bool(int(p.flags) & int(lt.peer_info.local_connection)),
                    "last_seen": now,
                })
            per_peer = []
            for k, e in self.peers.items():
                if k[0] != key:
                    continue
                d = dict(e)
                d["connected_at_end"] = k in live
                per_peer.append(d)
            completed = st.is_seeding or st.is_finished
            out["torrents"][key] = {
                "info_hash": v1, "info_hash_v2": v2, "name": st.name,
                "state": str(st.state), "progress": st.progress,
                "uploaded_bytes": st.total_payload_upload,
                "downloaded_bytes": st.total_payload_download,
                "all_time_upload": st.all_time_upload,
                "all_time_download": st.all_time_download,
                "total_upload_with_overhead": st.total_upload,
                "total_download_with_overhead": st.total_download,
                "total_done": st.total_done, "total_wanted": st.total_wanted,
                "total_redundant_bytes": st.total_redundant_bytes,
                "total_failed_bytes": st.total_failed_bytes,
                "completed": bool(completed),
                "completed_time": st.completed_time or None,
                "finished_alert_at": self.finished_at.get(key),
                "metadata_received_at": self.metadata_at.get(key),
                "num_pieces": st.num_pieces,
                "num_peers": st.num_peers,
                "per_peer": per_peer,
            }
        tmp = self.cfg["status_file"] + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(out, fh, indent=1)
        os.replace(tmp, self.cfg["status_file"])


def main():
    cfg = json.load(open(sys.argv[1]))
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    states = [SessionState(c) for c in cfg["sessions"]]
    while not STOP:
        for s in states:
            s.pump_alerts()
            s.poll()
        time.sleep(0.25)
    for s in states:
        s.pump_alerts()
        s.poll(final=True)
    # Pause so that `stopped` announces go out, then let the sessions close.
    for s in states:
        for h in s.handles:
            h.pause()
    t_end = time.time() + 2.5
    while time.time() < t_end:
        for s in states:
            s.pump_alerts()
        time.sleep(0.1)
    for s in states:
        del s.handles
        s.ses = None


if __name__ == "__main__":
    main()
