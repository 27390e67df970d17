#!/usr/bin/python3
"""User-space link impairment with iptables NFQUEUE, standard library only.

The kernel here has no netem, and Debian 12 has no python3-netfilterqueue, so
this speaks the nfnetlink_queue protocol directly over an AF_NETLINK socket:
bind to a queue, receive packet ids (metadata only, no payload copy), and give
verdicts later, out of order on purpose:

  - drop a packet with probability --loss           (the sender retransmits)
  - hold a packet for an extra --hold-ms with probability --reorder
    (packets behind it overtake it: out-of-order segments on the wire)
  - delay every packet by --delay-ms

Run inside the namespace whose egress is queued, e.g.
  iptables -A OUTPUT -o eth0 -p tcp -j NFQUEUE --queue-num 7 --queue-bypass
(--queue-bypass: packets pass untouched when no program is bound).
"""
import argparse
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NF_DROP = 0
NF_ACCEPT = 1

STOP = False


def nlattr(atype, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * ((4 - n % 4) % 4)


def nlmsg(mtype, flags, seq, queue, attrs):
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 0) + body


def parse_attrs(buf):
    out = {}
    i = 0
    while i + 4 <= len(buf):
        n, t = struct.unpack_from("=HH", buf, i)
        if n < 4:
            break
        out[t & 0x7fff] = buf[i + 4:i + n]
        i += (n + 3) & ~3
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queue", type=int, default=7)
    ap.add_argument("--loss", type=float, default=0.02)
    ap.add_argument("--reorder", type=float, default=0.03)
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--hold-ms", type=float, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stats", default=None)
    a = ap.parse_args()
    rnd = random.Random(a.seed)

    def on_term(s, f):
        global STOP
        STOP = True
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    sk = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sk.bind((0, 0))
    sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    seq = 1
    cfg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
    sk.send(nlmsg(cfg_type, NLM_F_REQUEST | NLM_F_ACK, seq, a.queue,
                  nlattr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0))))
    seq += 1
    sk.send(nlmsg(cfg_type, NLM_F_REQUEST | NLM_F_ACK, seq, a.queue,
                  nlattr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))))
    seq += 1
    # read the two acks
    for _ in range(2):
        data = sk.recv(65536)
        ln, t = struct.unpack_from("=IH", data, 0)
        if t == NLMSG_ERROR:
            err = struct.unpack_from("=i", data, 16)[0]
            if err != 0:
                raise OSError(-err, "nfqueue config: %s" % os.strerror(-err))
    print("bound to queue %d: loss=%s reorder=%s delay_ms=%s hold_ms=%s" % (
        a.queue, a.loss, a.reorder, a.delay_ms, a.hold_ms), flush=True)

    verdict_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
    heap = []
    n = 0
    stats = {"packets": 0, "dropped": 0, "held_for_reorder": 0, "accepted": 0}
    last_dump = time.time()

    def verdict(pid, v):
        nonlocal seq
        sk.send(nlmsg(verdict_type, NLM_F_REQUEST, seq, a.queue,
                      nlattr(NFQA_VERDICT_HDR, struct.pack("!II", v, pid))))
        seq += 1

    def dump():
        if a.stats:
            with open(a.stats + ".tmp", "w") as f:
                json.dump(stats, f)
            os.replace(a.stats + ".tmp", a.stats)

    while not STOP:
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, pid = heapq.heappop(heap)
            verdict(pid, NF_ACCEPT)
            stats["accepted"] += 1
        timeout = max(0.0, heap[0][0] - now) if heap else 0.2
        r, _, _ = select.select([sk], [], [], min(timeout, 0.2))
        if not r:
            continue
        data = sk.recv(1 << 16)
        i = 0
        while i + 16 <= len(data):
            ln, t, fl, sq, pid_ = struct.unpack_from("=IHHII", data, i)
            if ln < 16:
                break
            if t == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                attrs = parse_attrs(data[i + 20:i + ln])
                hdr = attrs.get(NFQA_PACKET_HDR)
                if hdr:
                    pkt_id = struct.unpack("!I", hdr[:4])[0]
                    stats["packets"] += 1
                    x = rnd.random()
                    if x < a.loss:
                        verdict(pkt_id, NF_DROP)
                        stats["dropped"] += 1
                    else:
                        d = a.delay_ms
                        if rnd.random() < a.reorder:
                            d += a.hold_ms
                            stats["held_for_reorder"] += 1
                        n += 1
                        heapq.heappush(heap, (time.monotonic() + d / 1000.0, n, pkt_id))
            i += (ln + 3) & ~3
        if time.time() - last_dump > 1:
            dump()
            last_dump = time.time()
    while heap:
        _, _, pid = heapq.heappop(heap)
        verdict(pid, NF_ACCEPT)
        stats["accepted"] += 1
    dump()
    try:
        sk.send(nlmsg(cfg_type, NLM_F_REQUEST, seq, a.queue,
                      nlattr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_UNBIND, 0, 0))))
    except OSError:
        pass


if __name__ == "__main__":
    main()
