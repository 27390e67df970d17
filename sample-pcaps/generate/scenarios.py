"""The sample-capture scenarios: hosts, clients, torrents, rates.

Addresses: tracker 10.99.0.1; peers 10.99.0.11-.29 (fd00:99::11-29 in the IPv6
scenario); DHT-only helper nodes 10.99.0.51-.58.  Rates are bytes/s and are
chosen so that each transfer lasts tens of seconds (many `have` messages,
several announces) while the capture stays under 5 MB.
"""

KiB = 1024
SEED_UP = 64 * KiB
LEECH_UP = 16 * KiB
LEECH_DOWN = 32 * KiB
REANN = 10  # seconds between forced re-announces (clients' own knobs)

PORTS = {"transmission": 51413, "libtorrent": 6881, "aria2": 6882, "qbittorrent": 8999,
         "rtorrent": 6890, "ctorrent": 2706}


def host(name, kind, n, role="leecher", **opts):
    o = {"port": PORTS.get(kind, 6881)}
    if role == "seeder":
        o["up"] = SEED_UP
    else:
        o["up"] = LEECH_UP
        o["down"] = LEECH_DOWN
    if kind in ("libtorrent", "rtorrent", "aria2"):
        o["reannounce_s"] = REANN
    o.update(opts)
    h = {"name": name, "kind": kind, "ip": "10.99.0.%d" % n, "ip6": "fd00:99::%d" % n, "role": role,
         "opts": o}
    for k in ("torrents", "htb_kbit"):
        if k in o:
            h[k] = o.pop(k)
    return h


def one_torrent(label, n_bytes, seed, **kw):
    d = {"label": label, "file_name": "swarmtap-%s.bin" % label, "bytes": n_bytes, "seed": seed}
    d.update(kw)
    return d


MiB = 1024 * 1024

SCENARIOS = {}

SCENARIOS["http"] = {
    "name": "http",
    "description": "HTTP tracker (opentracker), plain TCP peer wire; one Transmission seeder and four "
                   "leechers of different clients (libtorrent, aria2, qBittorrent, rTorrent). DHT and LSD off, "
                   "PEX on. Clients re-announce every 10 s where they can.",
    "tracker": "http",
    "torrents": [one_torrent("http", 768 * KiB, 1001)],
    "hosts": [
        host("seed1", "transmission", 11, "seeder", enc="plain", utp=False),
        host("lt1", "libtorrent", 12, enc="plain", utp=False),
        host("ar1", "aria2", 13),
        host("qb1", "qbittorrent", 14, enc="plain", utp=False),
        host("rt1", "rtorrent", 15, enc="plain"),
    ],
    "reannounce_s": REANN,
    "notes": ["aria2 opens outgoing peer connections with MSE even in a plaintext swarm: expect a few "
              "encrypted streams from 10.99.0.13"],
}

SCENARIOS["udp"] = {
    "name": "udp",
    "description": "UDP tracker (BEP 15, opentracker); libtorrent seeder; leechers Transmission, "
                   "qBittorrent, rTorrent, aria2 (aria2 sends UDP-tracker packets from its DHT socket).",
    "tracker": "udp",
    "torrents": [one_torrent("udp", 768 * KiB, 1002)],
    "hosts": [
        host("seed1", "libtorrent", 11, "seeder", enc="plain", utp=False),
        host("tr1", "transmission", 12, enc="plain", utp=False),
        host("qb1", "qbittorrent", 13, enc="plain", utp=False),
        host("rt1", "rtorrent", 14, enc="plain"),
        host("ar1", "aria2", 15, dht=True),
    ],
    "reannounce_s": REANN,
    "notes": ["uTP disabled where the client allows it, so the peer wire is TCP"],
}

SCENARIOS["mse"] = {
    "name": "mse",
    "description": "MSE/PE (RC4) required by every client; HTTP tracker. libtorrent seeder; leechers "
                   "Transmission, qBittorrent, rTorrent, aria2.",
    "tracker": "http",
    "torrents": [one_torrent("mse", 768 * KiB, 1005)],
    "hosts": [
        host("seed1", "libtorrent", 11, "seeder", enc="require", utp=False),
        host("tr1", "transmission", 12, enc="require", utp=False),
        host("qb1", "qbittorrent", 13, enc="require", utp=False),
        host("rt1", "rtorrent", 14, enc="require"),
        host("ar1", "aria2", 15, enc="require"),
    ],
    "reannounce_s": REANN,
    "notes": ["every peer-wire stream should be encrypted (RC4); the tracker traffic is plain HTTP"],
}

SCENARIOS["utp"] = {
    "name": "utp",
    "description": "uTP peer wire (BEP 29): libtorrent seeder and leecher with TCP disabled, qBittorrent "
                   "with protocol uTP only, Transmission with uTP enabled (it tries uTP first); HTTP tracker.",
    "tracker": "http",
    "torrents": [one_torrent("utp", 1 * MiB, 1004)],
    "hosts": [
        host("seed1", "libtorrent", 11, "seeder", enc="plain", tcp=False, utp=True),
        host("lt1", "libtorrent", 12, enc="plain", tcp=False, utp=True),
        host("qb1", "qbittorrent", 13, enc="plain", tcp=False, utp=True),
        host("tr1", "transmission", 14, enc="plain", utp=True),
    ],
    "reannounce_s": REANN,
    "notes": ["libtorrent with TCP off still opens its TCP listen socket only if enabled; the seeder and lt1 "
              "accept/initiate uTP only"],
}

_DHT_NODES = ["10.99.0.%d" % i for i in range(51, 59)]
_DHT_NODES6 = ["fd00:99::%d" % i for i in range(51, 59)]

SCENARIOS["magnet"] = {
    "name": "magnet",
    "description": "Trackerless: the libtorrent seeder has the .torrent; leechers start from a magnet "
                   "link (libtorrent, Transmission, aria2, qBittorrent), find peers through the DHT "
                   "(8 extra DHT-only libtorrent nodes, the seeder as bootstrap) and fetch the metadata "
                   "with ut_metadata (BEP 9).",
    "tracker": None,
    "dht_router": ("10.99.0.51", 6881),
    "torrents": [one_torrent("magnet", 768 * KiB, 1003, magnet=True)],
    "hosts": [
        {"name": "dht", "kind": "dhtnodes", "ip": _DHT_NODES[0], "role": "dht-node",
         "opts": {"addrs": _DHT_NODES, "port": 6881, "dht_bootstrap": "10.99.0.11:6881"}},
        host("seed1", "libtorrent", 11, "seeder", enc="plain", dht=True, utp=False,
             dht_bootstrap="10.99.0.51:6881"),
        host("lt1", "libtorrent", 12, enc="plain", dht=True, utp=False, dht_bootstrap="10.99.0.51:6881"),
        host("tr1", "transmission", 13, enc="plain", dht=True, utp=False,
             dht_bootstrap_list=[(a, 6881) for a in _DHT_NODES]),
        host("ar1", "aria2", 14, dht=True, dht_entry=("10.99.0.51", 6881)),
        host("qb1", "qbittorrent", 15, enc="plain", dht=True, utp=False),
    ],
    "warmup_s": 8,
    "stagger_s": 1.0,
    "max_transfer_s": 240,
    "notes": ["qBittorrent 4.5 has no DHT bootstrap setting: its hard-wired router names resolve "
              "(netns hosts file) to 10.99.0.51, whose DHT port is 6881",
              "the DHT-only helper nodes (10.99.0.51-58) exist because Transmission 3.00 does not search "
              "the DHT while it knows 8 nodes or fewer"],
}

SCENARIOS["midstream"] = {
    "name": "midstream",
    "description": "Capture started in the middle of the transfer (connections already established, "
                   "bitfields already sent): libtorrent seeder, leechers Transmission, ctorrent, aria2; "
                   "HTTP tracker.",
    "tracker": "http",
    "midstream": {"after_s": 15},
    "torrents": [one_torrent("midstream", 1536 * KiB, 1007)],
    "hosts": [
        host("seed1", "libtorrent", 11, "seeder", enc="plain", utp=False),
        host("tr1", "transmission", 12, enc="plain", utp=False),
        host("ct1", "ctorrent", 13),
        host("ar1", "aria2", 14),
    ],
    "reannounce_s": REANN,
    "notes": ["clients' counters cover the whole transfer; `midstream.counters_at_capture_start` holds "
              "what each client reported just before the capture began (1 s poll, approximate)"],
}

SCENARIOS["lossy"] = {
    "name": "lossy",
    "description": "Impaired links: htb egress rate limits on the seeder and one leecher; user-space "
                   "NFQUEUE impairment (random loss, reordering by holding packets, delay) on the "
                   "seeder's and the leechers' TCP egress. libtorrent seeder; leechers Transmission, "
                   "rTorrent, qBittorrent; HTTP tracker.",
    "tracker": "http",
    "torrents": [one_torrent("lossy", 1 * MiB, 1006)],
    "hosts": [
        host("seed1", "libtorrent", 11, "seeder", enc="plain", utp=False, up=0, htb_kbit=512),
        host("tr1", "transmission", 12, enc="plain", utp=False, htb_kbit=200),
        host("rt1", "rtorrent", 13, enc="plain"),
        host("qb1", "qbittorrent", 14, enc="plain", utp=False),
    ],
    "impair": {"hosts": ["seed1", "tr1", "rt1", "qb1"], "loss": 0.02, "reorder": 0.03, "delay_ms": 20,
               "seed": 6},
    "reannounce_s": REANN,
    "max_transfer_s": 240,
}

SCENARIOS["two"] = {
    "name": "two",
    "description": "Two torrents at once: a v1 torrent (mktorrent) and a hybrid v1+v2 torrent "
                   "(libtorrent create_torrent). libtorrent seeds both; qBittorrent leeches both; "
                   "Transmission and rTorrent leech the v1 one (Transmission rejects hybrids); a second "
                   "libtorrent leeches the hybrid one. HTTP tracker (whitelist holds the v1 hashes and "
                   "the truncated v2 hash).",
    "tracker": "http",
    "torrents": [one_torrent("v1", 768 * KiB, 1091), one_torrent("hybrid", 512 * KiB, 1092, hybrid=True)],
    "hosts": [
        host("seed1", "libtorrent", 11, "seeder", enc="plain", utp=False),
        host("qb1", "qbittorrent", 12, enc="plain", utp=False),
        host("tr1", "transmission", 13, enc="plain", utp=False, torrents=["v1"]),
        host("rt1", "rtorrent", 14, enc="plain", torrents=["v1"]),
        host("lt1", "libtorrent", 15, enc="plain", utp=False, torrents=["hybrid"]),
    ],
    "reannounce_s": REANN,
}

SCENARIOS["ipv6"] = {
    "name": "ipv6",
    "description": "IPv6-only swarm (fd00:99::/64), trackerless: peers found through the DHT over IPv6 "
                   "(BEP 32, nodes6); libtorrent seeder, leechers libtorrent, qBittorrent, aria2.",
    "tracker": None,
    "ipv6": True,
    "dht_router": ("fd00:99::51", 6881),
    "torrents": [one_torrent("ipv6", 1 * MiB, 1008)],
    "hosts": [
        {"name": "dht", "kind": "dhtnodes", "ip6": _DHT_NODES6[0], "role": "dht-node",
         "opts": {"addrs": _DHT_NODES6, "port": 6881, "dht_bootstrap": "[fd00:99::11]:6881"}},
        host("seed1", "libtorrent", 11, "seeder", enc="plain", dht=True, utp=False,
             dht_bootstrap="[fd00:99::51]:6881"),
        host("lt1", "libtorrent", 12, enc="plain", dht=True, utp=False, dht_bootstrap="[fd00:99::51]:6881"),
        host("qb1", "qbittorrent", 13, enc="plain", dht=True, utp=False),
        host("ar1", "aria2", 14, dht6=True, dht_entry6=("router.bittorrent.com", 6881)),  # aria2 rejects an IPv6 literal here; the netns hosts file maps the name
    ],
    "notes": ["Transmission 3.00 is left out: it runs its IPv6 DHT only with a global unicast "
              "address (2000::/3) found by routing towards a public IPv6 host; with ULA addresses and "
              "no default route its log says `DHT fd00:99::51:6881: Address family for hostname not "
              "supported` and it never joins the IPv6 DHT. rTorrent 0.9.8's DHT is IPv4-only."],
    "warmup_s": 8,
    "stagger_s": 1.0,
    "max_transfer_s": 240,
}

SCENARIOS["cheat"] = {
    "name": "cheat",
    "description": "Ratio cheating through a proxy, as BittOratio does it: leecher ch1 (libtorrent) sends "
                   "its tracker requests through an HTTP proxy on its own loopback that multiplies "
                   "`uploaded` by 4 and forwards everything else unchanged; the other clients are honest. "
                   "libtorrent seeder; leechers ch1 (cheating libtorrent), libtorrent, rTorrent, "
                   "Transmission; HTTP tracker (opentracker), plain TCP peer wire.",
    "tracker": "http",
    "torrents": [one_torrent("cheat", 768 * KiB, 1009)],
    "hosts": [
        host("seed1", "libtorrent", 11, "seeder", enc="plain", utp=False),
        host("ch1", "libtorrent", 12, enc="plain", utp=False, ratio_proxy={"port": 8080, "factor": 4}),
        host("lt1", "libtorrent", 13, enc="plain", utp=False),
        host("rt1", "rtorrent", 14, enc="plain"),
        host("tr1", "transmission", 15, enc="plain", utp=False),
    ],
    "reannounce_s": REANN,
    "notes": ["ch1 cheats: the capture shows its announces as the tracker got them (uploaded x4); its "
              "own counters in `hosts` are the true ones and `ratio_proxy.announces` pairs each "
              "announce's true and forwarded `uploaded`"],
}

SCENARIOS["suppressed"] = {
    "name": "suppressed",
    "description": "Suppressed `have`s: every leecher downloads alone among seeds, so no other peer needs "
                   "the pieces it gets. Seeders libtorrent and Transmission; leechers started one after "
                   "the other, each once the previous one is complete (so it is a seed too): rTorrent, "
                   "libtorrent with `send_redundant_have` off (its default is on), Transmission. A client "
                   "that sends no `have` to a peer holding the piece tells the wire nothing of its "
                   "progress; its tracker announces (`left`, `event=completed`) still do. HTTP tracker, "
                   "plain TCP.",
    "tracker": "http",
    "torrents": [one_torrent("suppressed", 384 * KiB, 1010)],
    "hosts": [
        host("seed1", "libtorrent", 11, "seeder", enc="plain", utp=False),
        host("seed2", "transmission", 12, "seeder", enc="plain", utp=False),
        host("rt1", "rtorrent", 13, enc="plain"),
        host("lt1", "libtorrent", 14, enc="plain", utp=False, lt_settings={"send_redundant_have": False}),
        host("tr1", "transmission", 15, enc="plain", utp=False),
    ],
    "sequential_leechers": True,
    "reannounce_s": REANN,
    "max_transfer_s": 240,
    "notes": ["leechers start one at a time, each after the previous one completed: every other peer "
              "a leecher meets is a seed",
              "lt1 runs libtorrent with settings_pack send_redundant_have=False (a documented libtorrent "
              "setting; the default True sends every have to every peer)"],
}
