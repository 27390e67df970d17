#!/usr/bin/env python3
"""tshark's view of a sample capture (a cross-check, not ground truth).

    python3 sample-pcaps/generate/verify.py sample-pcaps/http.pcap [...]

Prints one JSON object per capture with the counts quoted in the README.
tshark 4.0 misses some peer-wire messages, does not reassemble uTP, cannot
see inside MSE streams and has no UDP-tracker dissector (port 6969 is counted).
"""
import json
import os
import subprocess
import sys

FILTERS = {
    "frames": None,
    "bittorrent": "bittorrent",
    "bt_have": "bittorrent.msg.type == 4",
    "bt_piece": "bittorrent.msg.type == 7",
    "bt_handshake": "bittorrent.protocol.name",
    "bt_dht": "bt-dht",
    "bt_utp": ("bt-utp", ["--enable-heuristic", "bt_utp_udp"]),
    "http_announce": 'http.request.uri contains "/announce"',
    "http_scrape": 'http.request.uri contains "/scrape"',
    "udp_6969": "udp.port == 6969",
    "tcp_retransmission": "tcp.analysis.retransmission || tcp.analysis.fast_retransmission",
    "tcp_out_of_order": "tcp.analysis.out_of_order",
    "tcp_lost_segment": "tcp.analysis.lost_segment",
    "ipv6": "ipv6",
}


def count(pcap, flt, extra=()):
    cmd = ["tshark", "-r", pcap, "-n"] + list(extra)
    if flt:
        cmd += ["-Y", flt]
    cmd += ["-T", "fields", "-e", "frame.number"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return sum(1 for line in r.stdout.splitlines() if line.strip())


def counts(pcap):
    out = {"file": os.path.basename(pcap), "size_bytes": os.path.getsize(pcap)}
    for k, f in FILTERS.items():
        if isinstance(f, tuple):
            out[k] = count(pcap, f[0], f[1])
        else:
            out[k] = count(pcap, f)
    return out


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(json.dumps(counts(p)))
