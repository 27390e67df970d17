#!/usr/bin/python3
"""A private swarm of real clients for `swarmtap probe`'s integration test.

    tests/probe_swarm.py SWARMTAP_BIN OUT_DIR [--duration S]

Builds, with the sample-pcaps generator's helpers, namespaces named
swp<pid>-* (so it never collides with a generator run, which uses swt-*,
nor with another run of this script): opentracker
(HTTP + UDP) at 10.99.0.1, a libtorrent seeder of two torrents (plaintext
only, TCP and uTP), a Transmission leecher that *requires* encryption, a
libtorrent leecher (plaintext, TCP only), a libtorrent leecher speaking only
uTP (TCP disabled both ways), a second uTP-only libtorrent leecher with an
IPv6 address too (fd00:99::16: it downloads over IPv4, the probe is given
its IPv6 endpoint, denied its IPv4 one, and reaches it over uTP on IPv6), all rate-limited so the
leechers take tens of seconds, and a probe host 10.99.0.40 / fd00:99::40
with nothing but its veth. It captures the probe
host's interface with tcpdump, runs

    swarmtap probe --torrent A.torrent --magnet <B with a udp:// tracker> ...

in the probe namespace while the leechers download, then writes
OUT_DIR/manifest.json (torrents, hosts, completion times seen by the
clients' own counters, the probe's exit status) next to the probe's tables
(OUT_DIR/probe/) and capture (OUT_DIR/probe.pcap). The Rust test reads them.

Safety: every namespace has only its veth on one bridge, no default route;
addresses 10.99.0.0/24; every process is started here and stopped by PID.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GEN = os.path.join(os.path.dirname(HERE), "sample-pcaps", "generate")
sys.path.insert(0, GEN)

import netns  # noqa: E402

# Our own namespace names: a generator run (swt-*) may be going on, and
# so may another test run of this script (the suite run from a second
# checkout on the same machine): a fixed prefix made the second run fail
# at its first `ip netns add` ("namespace swp-br already exists") before
# the probe started. The process id keeps runs apart; namespace names are
# file names under /run/netns, so the length is no concern (interface
# names, limited to 15 bytes, do not carry the prefix).
# SWARMTAP_PROBE_NETNS: a prefix of one's own.
netns.PREFIX = os.environ.get("SWARMTAP_PROBE_NETNS", "swp%d-" % os.getpid())
netns.BR_NS = netns.PREFIX + "br"

import swarm  # noqa: E402
from scenarios import host, one_torrent, KiB  # noqa: E402

PROBE_IP = "10.99.0.40"
PROBE_IP6 = "fd00:99::40"
DHT_NODE_IP = "10.99.0.51"
# libtorrent's DHT inside the swarm only (no public routers: nothing to
# resolve, no route out), announcing every 10 s instead of 15 min.
DHT_OPTS = {"dht": True, "dht_bootstrap": DHT_NODE_IP + ":6881", "lt_settings": {"dht_announce_interval": 10}}


def main():
    binary, out = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    duration = 70
    if "--duration" in sys.argv:
        duration = int(sys.argv[sys.argv.index("--duration") + 1])
    os.makedirs(out, exist_ok=True)
    scen = {
        "name": "probe",
        "description": "swarmtap probe integration test",
        "tracker": "http",
        "torrents": [one_torrent("pa", 640 * KiB, 2001), one_torrent("pb", 192 * KiB, 2002),
                     one_torrent("pc", 256 * KiB, 2003)],
        "hosts": [
            # Accepts plaintext and MSE: the probe's plaintext contact works, and
            # the leecher requiring encryption can download from it.
            # A DHT-only libtorrent node, started first, from which the
            # DHT clients bootstrap (libtorrent answers find_node with
            # confirmed nodes only: two clients bootstrapping off each other
            # would wait for a routing-table refresh to learn each other).
            {"name": "dht", "kind": "dhtnodes", "ip": DHT_NODE_IP, "role": "dht-node",
             "opts": {"addrs": [DHT_NODE_IP], "port": 6881, "wait_listening": True}},
            # TCP and uTP: the uTP-only leecher downloads from it over uTP.
            host("seed1", "libtorrent", 11, "seeder", enc="prefer", utp=True, up=96 * KiB, **DHT_OPTS),
            # Encryption required: a plaintext handshake is dropped.
            host("tr1", "transmission", 12, enc="require", utp=False, torrents=["pa"], down=20 * KiB),
            host("lt1", "libtorrent", 13, enc="plain", utp=False, torrents=["pa"], down=24 * KiB),
            # uTP only (enable_{incoming,outgoing}_tcp False): the probe
            # reaches it over uTP, and it connects to the probe's listen port
            # over uTP.
            host("lu1", "libtorrent", 14, enc="plain", tcp=False, utp=True, torrents=["pa"], down=24 * KiB),
            # uTP only, IPv4 and IPv6: the probe reaches it over uTP on
            # IPv6 at the endpoint it is given (--peer [fd00:99::16]:PORT).
            host("lu6", "libtorrent", 16, enc="plain", tcp=False, utp=True, dual=True, torrents=["pa"],
                 down=24 * KiB),
            # DHT only (pc is given to the probe as a bare info hash): the
            # probe must find it and seed1 through the DHT.
            host("lt2", "libtorrent", 15, enc="plain", utp=False, torrents=["pc"], down=8 * KiB, **DHT_OPTS),
        ],
        "stagger_s": 0.2,
    }
    run = swarm.Run(scen, out, keep=False)
    manifest = {"hosts": [], "torrents": [], "probe_ip": PROBE_IP}

    def on_sig(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_sig)
    try:
        run.build_torrents()
        run.build_net()
        probe_ns = run.net.add_host("probe", [PROBE_IP], [PROBE_IP6])
        run.net.assert_no_route_out()
        pcap = os.path.join(out, "probe.pcap")
        tcpdump = run.procs.start("tcpdump", ["tcpdump", "-i", "eth0", "-s", "0", "-U", "-n", "-w", pcap],
                                  ns=probe_ns, log=os.path.join(out, "tcpdump.log"))
        for _ in range(50):
            if "listening" in open(os.path.join(out, "tcpdump.log")).read():
                break
            time.sleep(0.1)
        run.tracker = swarm.OpenTracker(run, run.tracker_ns)
        run.tracker.start([t["info_hash"] for t in run.torrents])
        run.start_clients()
        ta, tb, tc = run.torrents
        magnet = "magnet:?xt=urn:btih:%s&dn=%s&tr=udp%%3A%%2F%%2F%s%%3A%d" % (
            tb["info_hash"], tb["file_name"], swarm.TRACKER_IP, swarm.TRACKER_PORT)
        # Let the leechers announce first, so the tracker lists them to us.
        time.sleep(3.0)
        probe_out = os.path.join(out, "probe")
        argv = [binary, "probe", "--torrent", ta["torrent_file"], "--magnet", magnet,
                "--allow-private", "--allow", "10.99.0.0/24", "--allow", "fd00:99::/64", "--listen", "6881",
                "--info-hash", tc["info_hash"], "--dht-bootstrap", "10.99.0.11:6881", "--dht-interval", "8s",
                # Visits on the default schedule (--revisit 5m, --min-revisit
                # 10s, --idle-timeout 6s, --max-contact 2m): the crossing must
                # be caught by planning, not by short fixed revisits.
                "--duration", "%ds" % duration, "-o", probe_out]
        for c in run.clients:
            if c.opts.get("dual"):
                # Reached over IPv6 only: libtorrent drops a second
                # connection with the same peer id, so contacts over both
                # families to one client would cut each other.
                argv += ["--peer", "[%s]:%d" % (c.ip6, c.listen_port), "--deny", "%s/32" % c.ip]
        t0 = time.time()
        p = run.procs.start("probe", argv, ns=probe_ns, log=os.path.join(out, "probe.log"))
        while p.poll() is None:
            for c in run.clients:
                run.safe_poll(c)
            time.sleep(0.5)
        manifest["probe_exit"] = p.returncode
        manifest["probe_argv"] = argv
        manifest["probe_started"] = t0
        manifest["probe_ended"] = time.time()
        time.sleep(0.5)
        run.procs.stop(tcpdump, sig=signal.SIGINT)
        for c in run.clients:
            run.safe_poll(c)
        for t in run.torrents:
            manifest["torrents"].append({k: t[k] for k in ("label", "name", "info_hash", "n_pieces",
                                                            "piece_length", "total_bytes", "magnet")})
            shutil.copyfile(t["torrent_file"], os.path.join(out, "%s.torrent" % t["label"]))
        for c in run.clients:
            manifest["hosts"].append({
                "name": c.name, "kind": c.kind, "ip": c.ip, "ip6": c.ip6, "port": c.listen_port, "role": c.role,
                "enc": c.opts.get("enc"), "tcp": c.opts.get("tcp", True), "utp": c.opts.get("utp", True),
                "torrents": [t["info_hash"] for t in c.torrents],
                "dht": bool(c.opts.get("dht")),
                "completed_seen": {k: v for k, v in c.completed_seen.items()},
                "completed_at": {k: v.get("completed_at") for k, v in c.last.items()},
            })
        manifest["swarm_ips"] = [swarm.TRACKER_IP] + [c.ip for c in run.clients] + [PROBE_IP, PROBE_IP6] + \
            [c.ip6 for c in run.clients if c.ip6]
        with open(os.path.join(out, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
    finally:
        run.cleanup()


if __name__ == "__main__":
    main()
