#!/usr/bin/env python3
"""Print the README's capture table and the counter-vs-wire comparison from the truth files.

    python3 sample-pcaps/generate/readme_table.py sample-pcaps/
"""
import json
import os
import sys

ORDER = ["http", "udp", "mse", "utp", "magnet", "midstream", "lossy", "two", "ipv6", "cheat", "suppressed"]
TITLES = {"http": "HTTP tracker, plain TCP peer wire", "udp": "UDP tracker (BEP 15)",
          "mse": "MSE/PE required everywhere", "utp": "uTP peer wire (BEP 29)",
          "magnet": "magnet links, DHT, ut_metadata", "midstream": "capture starts mid-transfer",
          "lossy": "loss, reordering, delay, htb limits", "two": "two torrents, one hybrid v1+v2",
          "ipv6": "IPv6-only, DHT over IPv6",
          "cheat": "ratio cheat: announces through an uploaded x4 proxy",
          "suppressed": "leechers among seeds: `have`s sent to no one"}


def load(d, n):
    p = os.path.join(d, "%s.truth.json" % n)
    return json.load(open(p)) if os.path.exists(p) else None


def fmt_hosts(t):
    out = []
    for h in t["hosts"]:
        if h["client"] == "libtorrent-dht-node":
            out.append("8 DHT nodes")
            continue
        out.append("%s %s (%s)" % (h["client"], h["version"].split()[0], "S" if h["role"] == "seeder" else "L"))
    return ", ".join(out)


def table(d):
    print("| capture | shows | torrent(s) | hosts (S seeder, L leecher) | size | tshark: frames / bittorrent / have / piece / bt-dht / bt-utp / HTTP announces / udp:6969 / retrans / out-of-order | wire reference: connections (encrypted) |")
    print("|---|---|---|---|---|---|---|")
    for n in ORDER:
        t = load(d, n)
        if not t:
            print("| %s.pcap | NOT GENERATED | | | | | |" % n)
            continue
        tors = "; ".join("%s %s%s, %d × %d KiB = %d B" % (
            x["torrent_file"], x["info_hash"][:8] if x["info_hash"] else "-",
            " / v2 %s" % x["info_hash_v2"][:8] if x["info_hash_v2"] else "",
            x["n_pieces"], x["piece_length"] // 1024, x["total_bytes"]) for x in t["torrents"])
        c = t.get("tshark_counts", {})
        w = t.get("wire_reference", {})
        print("| `%s` | %s | %s | %s | %.2f MB | %s / %s / %s / %s / %s / %s / %s / %s / %s / %s | %s (%s) |" % (
            t["capture"], TITLES.get(n, n), tors, fmt_hosts(t),
            os.path.getsize(os.path.join(d, t["capture"])) / 1e6,
            c.get("frames"), c.get("bittorrent"), c.get("bt_have"), c.get("bt_piece"), c.get("bt_dht"),
            c.get("bt_utp"), c.get("http_announce"), c.get("udp_6969"), c.get("tcp_retransmission"),
            c.get("tcp_out_of_order"), w.get("n_connections"), w.get("n_encrypted")))


def compare(d):
    print("| capture | host | client | info_hash | counter up | wire sent | counter down | wire received | encrypted conns (not decoded) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in ORDER:
        t = load(d, n)
        if not t:
            continue
        w = t.get("wire_reference", {}).get("per_host", {})
        for h in t["hosts"]:
            if h["client"] == "libtorrent-dht-node":
                continue
            ip = h["ip"] or h["ipv6"]
            for ih, c in h["counters"].items():
                wh = w.get(ip, {})
                wv = None
                for k, v in wh.items():
                    if not isinstance(v, dict):
                        continue
                    tor = [x for x in t["torrents"] if x["info_hash"] == ih or x["info_hash_v2"] == ih][0]
                    if k in (tor["info_hash"], (tor["info_hash_v2"] or "")[:40]):
                        if wv is None:
                            wv = {"piece_bytes_sent": 0, "piece_bytes_received": 0}
                        wv["piece_bytes_sent"] += v["piece_bytes_sent"] + v.get("partial_piece_bytes_sent", 0)
                        wv["piece_bytes_received"] += v["piece_bytes_received"] + v.get("partial_piece_bytes_received", 0)
                print("| %s | %s %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    n, h["name"], ip, h["client"], ih[:8], c.get("uploaded_bytes"),
                    wv["piece_bytes_sent"] if wv else "-", c.get("downloaded_bytes"),
                    wv["piece_bytes_received"] if wv else "-", wh.get("encrypted_connections", 0)))


if __name__ == "__main__":
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    table(d)
    print()
    compare(d)
