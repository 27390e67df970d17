#!/usr/bin/env python3
"""Regenerates the committed fuzz seed corpus (fuzz/seeds/<target>/) from the
project's own captures in sample-pcaps/, plus a few synthetic inputs where no
capture has the protocol (LSD is off in every sample client).

Every seed is small: a few frames, one message, or a few KB of one stream,
written in the input format of its target (see each target's doc comment).
Standard library only; run from anywhere: python3 fuzz/seeds/make_seeds.py
"""
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PCAPS = os.path.join(REPO, "sample-pcaps")
HANDSHAKE = b"\x13BitTorrent protocol"


# ------------------------------------------------------------ capture reading

def frames(name):
    """(index, raw frame) of a little-endian Ethernet pcap."""
    with open(os.path.join(PCAPS, name), "rb") as f:
        data = f.read()
    magic, = struct.unpack_from("<I", data, 0)
    assert magic == 0xA1B2C3D4, name
    at, i = 24, 0
    while at + 16 <= len(data):
        incl, = struct.unpack_from("<I", data, at + 8)
        yield i, data[at:at + 16 + incl]
        at += 16 + incl
        i += 1


def decode(rec):
    """(proto, src, sport, dst, dport, seq, ack, flags, payload) or None."""
    eth = rec[16:]
    etype, = struct.unpack_from(">H", eth, 12)
    ip = eth[14:]
    if etype == 0x0800:
        ihl = (ip[0] & 15) * 4
        total, = struct.unpack_from(">H", ip, 2)
        proto, src, dst, l4 = ip[9], ip[12:16], ip[16:20], ip[ihl:total]
    elif etype == 0x86DD:
        plen, = struct.unpack_from(">H", ip, 4)
        proto, src, dst, l4 = ip[6], ip[8:24], ip[24:40], ip[40:40 + plen]
    else:
        return None
    if proto == 6:
        sport, dport, seq, ack = struct.unpack_from(">HHII", l4, 0)
        off = (l4[12] >> 4) * 4
        return ("tcp", src, sport, dst, dport, seq, ack, l4[13], l4[off:])
    if proto == 17:
        sport, dport = struct.unpack_from(">HH", l4, 0)
        return ("udp", src, sport, dst, dport, 0, 0, 0, l4[8:])
    return None


def packets(name):
    for i, rec in frames(name):
        p = decode(rec)
        if p:
            yield i, rec, p


def tcp_streams(name):
    """{(src, sport, dst, dport): [(seq, ack, flags, payload)]} in capture order."""
    out = {}
    for _, _, p in packets(name):
        if p[0] == "tcp":
            out.setdefault(p[1:5], []).append(p[5:9])
    return out


def stream_bytes(segs, limit):
    """The first `limit` bytes of one direction, naively in sequence order."""
    data = [s for s in segs if s[3]]
    if not data:
        return b""
    isn = data[0][0]
    buf = {}
    for seq, _, _, pl in data:
        o = (seq - isn) & 0xFFFFFFFF
        if o < limit:
            buf.setdefault(o, pl)
    out = b""
    for o in sorted(buf):
        if o == len(out):
            out += buf[o]
        elif o < len(out) < o + len(buf[o]):
            out += buf[o][len(out) - o:]
    return out[:limit]


def udp_payloads(name):
    for _, _, p in packets(name):
        if p[0] == "udp":
            yield p


def peer_messages(stream):
    """Peer-wire messages (id, body) after the handshake of a plaintext stream."""
    if not stream.startswith(HANDSHAKE):
        return
    at = 68
    while at + 4 <= len(stream):
        n, = struct.unpack_from(">I", stream, at)
        if at + 4 + n > len(stream):
            return
        if n:
            yield stream[at + 4], stream[at + 5:at + 4 + n]
        at += 4 + n


def bencode_end(b, at=0):
    """Index after the bencoded value starting at `at`."""
    c = b[at:at + 1]
    if c == b"i":
        return b.index(b"e", at) + 1
    if c in (b"l", b"d"):
        at += 1
        while b[at:at + 1] != b"e":
            at = bencode_end(b, at)
        return at + 1
    colon = b.index(b":", at)
    return colon + 1 + int(b[at:colon])


def info_dict(torrent):
    at = torrent.index(b"4:info") + 6
    return torrent[at:bencode_end(torrent, at)]


# --------------------------------------------------------------------- output

written = {}


def seed(target, name, data):
    assert data, (target, name)
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    written[target] = written.get(target, 0) + len(data)


def torrent(name):
    with open(os.path.join(PCAPS, name), "rb") as f:
        return f.read()


def all_peer_streams(names):
    for name in names:
        for key, segs in tcp_streams(name).items():
            s = stream_bytes(segs, 64 << 10)
            if s.startswith(HANDSHAKE):
                yield name, key, segs, s


# -------------------------------------------------------------------- targets

def parsers():
    # metainfo and bencode: our own .torrent files, v1 and hybrid v2.
    for t in sorted(f for f in os.listdir(PCAPS) if f.endswith(".torrent")):
        seed("metainfo", t.replace(".torrent", ""), torrent(t))
    seed("metainfo", "info-two-hybrid", info_dict(torrent("two-hybrid.torrent")))
    seed("bencode", "torrent-two-hybrid", torrent("two-hybrid.torrent"))
    seed("bencode", "torrent-magnet", torrent("magnet.torrent"))

    # HTTP tracker: the first announce and its answer, and a scrape if any.
    conv = None
    for key, segs in tcp_streams("http.pcap").items():
        req = stream_bytes(segs, 4096)
        if req.startswith(b"GET /announce"):
            back = tcp_streams("http.pcap").get((key[2], key[3], key[0], key[1]), [])
            conv = (req, stream_bytes(back, 4096))
            break
    req, resp = conv
    body = resp[resp.index(b"\r\n\r\n") + 4:]
    seed("bencode", "tracker-response", body)
    recs = b""
    for side, msg in ((0, req), (1, resp)):
        for at in range(0, len(msg), 200):
            piece = msg[at:at + 200]
            recs += bytes([side, len(piece)]) + piece
    seed("tracker_http", "announce", recs)
    # The same with a lost stretch of the response.
    seed("tracker_http", "announce-gap", recs[:len(recs) - 40] + bytes([3, 30]))

    # KRPC from the DHT scenarios (IPv4 and IPv6): one of each kind.
    kinds = {}
    for name in ("magnet.pcap", "ipv6.pcap"):
        for p in udp_payloads(name):
            pl = p[8]
            if not pl.startswith(b"d") or b"1:y1:" not in pl:
                continue
            y = pl[pl.index(b"1:y1:") + 5:][:1]
            q = b""
            if y == b"q" and b"1:q" in pl:
                at = pl.index(b"1:q") + 3
                q = pl[at:bencode_end(pl, at)]
            r = b"values" if b"6:values" in pl else b"nodes6" if b"6:nodes6" in pl else b"nodes" if b"5:nodes" in pl else b""
            k = (name, y, q, r)
            if k not in kinds:
                kinds[k] = pl
    for i, ((name, y, q, r), pl) in enumerate(sorted(kinds.items())):
        label = f"{name.split('.')[0]}-{y.decode()}-{(q or r or b'plain').decode(errors='replace').split(':')[-1]}"
        seed("dht", label, pl)
        if i < 2:
            seed("bencode", "krpc-" + label, pl)

    # UDP tracker: connect, announce, scrape and their answers.
    seen = set()
    for p in udp_payloads("udp.pcap"):
        pl = p[8]
        if p[3] == bytes([10, 99, 0, 1]) and len(pl) >= 16:
            action, = struct.unpack_from(">I", pl, 8)
            label = f"request-{action}"
        elif p[1] == bytes([10, 99, 0, 1]) and len(pl) >= 8:
            action, = struct.unpack_from(">I", pl, 0)
            label = f"response-{action}"
        else:
            continue
        if label not in seen:
            seen.add(label)
            seed("tracker_udp", label, pl)

    # Peer wire: the start of plaintext streams (handshake, bitfield,
    # extension handshake, requests) and a stretch from the middle.
    exts = {}
    ids = {}  # one peer id per client prefix
    vs = set()
    n_streams = 0
    for name, key, segs, s in all_peer_streams(("magnet.pcap", "http.pcap", "two.pcap", "udp.pcap")):
        ids.setdefault(s[48:56], s[48:68])
        for mid, body in peer_messages(s):
            if mid == 20 and body:
                ext = body[0]
                if ext == 0 and b"1:v" in body:
                    at = body.index(b"1:v") + 3
                    vs.add(body[body.index(b":", at) + 1:bencode_end(body, at)])
                mt = body.find(b"8:msg_typei")
                kind = ("hs" if ext == 0 else
                        f"metadata-{body[mt + 11:mt + 12].decode()}" if mt > 0 else
                        "pex" if b"added" in body[1:] or b"dropped" in body[1:] else None)
                if kind and (kind, ext == 0) not in exts and len(body) < 20000:
                    exts[(kind, ext == 0)] = body[1:]
        if n_streams < 2 and len(s) > 6000:
            seed("peer_wire", f"{name.split('.')[0]}-start-{n_streams}", bytes([0x40]) + s[:3000])
            seed("peer_wire", f"{name.split('.')[0]}-middle-{n_streams}", bytes([0xFF]) + s[len(s) // 2:len(s) // 2 + 3000])
            n_streams += 1
    for (kind, _), body in sorted(exts.items()):
        if kind == "hs":
            seed("bencode", "ext-handshake", body)
        else:
            seed("peer_extensions", kind, body)
    for i, pid in enumerate(sorted(ids.values())):
        seed("client_id", f"peer-id-{i}", pid)
    for i, v in enumerate(sorted(vs)):
        seed("client_id", f"v-{i}", v)

    # uTP headers: one datagram of each type/extension shape.
    shapes = {}
    for p in udp_payloads("utp.pcap"):
        pl = p[8]
        if len(pl) >= 20 and pl[0] & 15 == 1 and pl[0] >> 4 <= 4:
            k = (pl[0] >> 4, pl[1], len(pl) > 20 and pl[1] == 0)
            if k not in shapes:
                shapes[k] = pl[:400]
    for (ty, ext, data), pl in sorted(shapes.items()):
        seed("utp", f"type{ty}-ext{ext}{'-data' if data else ''}", pl)

    # LSD (BEP 14): synthetic, no sample client has it on.
    ih1, ih2 = "c0" * 20, "0123456789abcdef0123456789abcdef01234567"
    seed("lsd", "one", f"BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\nInfohash: {ih1}\r\ncookie: x1\r\n\r\n\r\n".encode())
    seed("lsd", "two-v6", f"BT-SEARCH * HTTP/1.1\r\nHost: [ff15::efc0:988f]:6771\r\nPort: 51413\r\nInfohash: {ih1}\r\nInfohash: {ih2}\r\n\r\n\r\n".encode())


def reassembly():
    # TCP: one direction of a peer connection in the lossy scenario (loss,
    # reordering, retransmission), its reverse direction's ACKs between,
    # cut into ops of at most 255 payload bytes, offsets 16-bit from the ISN.
    streams = tcp_streams("lossy.pcap")
    best = None
    for key, segs in streams.items():
        s = stream_bytes(segs, 1 << 20)
        if s.startswith(HANDSHAKE) and len(s) > 200000:
            best = key
            break
    # The direction carrying piece data is the other one, usually; take the
    # direction with more bytes.
    fwd, rev = best, (best[2], best[3], best[0], best[1])
    if sum(len(x[3]) for x in streams.get(rev, [])) > sum(len(x[3]) for x in streams[fwd]):
        fwd, rev = rev, fwd
    isn = None
    ops = []
    order = []
    for _, _, p in packets("lossy.pcap"):
        if p[0] != "tcp":
            continue
        k = p[1:5]
        if k == fwd and p[8]:
            if isn is None:
                isn = p[5]
            order.append(("seg", p[5], p[8]))
        elif k == rev and isn is not None and p[7] & 0x10:
            order.append(("ack", p[6], b""))
        if isn is not None and len(order) > 220:
            break
    for kind, num, pl in order:
        off = (num - isn + 0x1000) & 0xFFFFFFFF
        if off > 0xFFFF:
            continue
        if kind == "ack":
            ops.append(bytes([3]) + struct.pack(">H", off))
            continue
        for at in range(0, len(pl), 255):
            piece = pl[at:at + 255]
            o = off + at
            if o <= 0xFFFF:
                ops.append(bytes([0]) + struct.pack(">H", o) + bytes([len(piece)]) + piece)
    body = struct.pack(">I", isn) + b"".join(ops)[:12000]
    seed("reassembly", "tcp-lossy-small-limits", bytes([0]) + body)
    seed("reassembly", "tcp-lossy-default-limits", bytes([2 * (2 + 2 * 3 + 1 * 9)]) + body)

    # uTP: the start of one connection in the uTP scenario, both directions,
    # payloads cut to 255 bytes.
    conns = {}
    for _, _, p in packets("utp.pcap"):
        pl = p[8]
        if p[0] == "udp" and len(pl) >= 20 and pl[0] == 0x41:
            cid, = struct.unpack_from(">H", pl, 2)
            conns.setdefault((p[1:5], cid), [])
    for (addr, cid) in list(conns)[:1]:
        a_key = addr
        b_key = (addr[2], addr[3], addr[0], addr[1])
        syn_seq = None
        base = {0: None, 1: None}
        ops = []
        for _, _, p in packets("utp.pcap"):
            pl = p[8]
            if p[0] != "udp" or len(pl) < 20:
                continue
            side = 0 if p[1:5] == a_key else 1 if p[1:5] == b_key else None
            if side is None:
                continue
            ty = pl[0] >> 4
            c, seq, ack = struct.unpack_from(">H", pl, 2)[0], *struct.unpack_from(">HH", pl, 16)
            if ty == 4 and side == 0 and c == cid:
                syn_seq = seq
                base[0] = (seq + 1) & 0xFFFF
                continue
            if syn_seq is None or c != (cid + 1 if side == 0 else cid) & 0xFFFF:
                continue
            # Skip the extension chain.
            ext, at = pl[1], 20
            while ext and at + 2 <= len(pl):
                ext, at = pl[at], at + 2 + pl[at + 1]
            payload = pl[at:at + 255]
            kind = {0: 0, 2: 4, 1: 6 if not payload else 5, 3: 7}[ty]
            b = base[side] if base[side] is not None else syn_seq ^ 0x5555
            ob = base[1 - side] if base[1 - side] is not None else syn_seq
            op = bytes([kind | (0x10 if side else 0)]) + struct.pack(">HH", (seq - b) & 0xFFFF, (ack - ob) & 0xFFFF)
            if kind in (0, 5):
                op += bytes([len(payload)]) + payload
            ops.append(op)
            if base[side] is None and ty in (0, 1, 2) and (ty != 0 or payload):
                base[side] = seq
            if len(ops) >= 60:
                break
        body = struct.pack(">HH", cid, syn_seq) + b"".join(ops)
        seed("reassembly", "utp-start-small-limits", bytes([1]) + body)
        seed("reassembly", "utp-start-default-limits", bytes([1 | 2 * (2 + 2 * 3 + 9 + 18)]) + body)


def utp_tracker():
    # The first datagrams of the uTP scenario's flows, records [flags, len, bytes].
    flows = {}
    for _, _, p in packets("utp.pcap"):
        pl = p[8]
        if p[0] != "udp" or len(pl) < 20 or pl[0] & 15 != 1:
            continue
        key = tuple(sorted([(p[1], p[2]), (p[3], p[4])]))
        recs = flows.setdefault(key, [])
        if len(recs) < 40:
            side = 0 if (p[1], p[2]) == key[0] else 1
            d = pl[:255]
            recs.append(bytes([side, len(d)]) + d)
    for i, recs in enumerate(list(flows.values())[:2]):
        seed("utp_tracker", f"flow-{i}", b"".join(recs))


def pipeline():
    # Small captures: the pcap header and a few frames of each scenario: a
    # peer connection's first frames, tracker traffic, DHT, uTP, MSE, IPv6.
    for name, budget in (("http.pcap", 9000), ("udp.pcap", 6000), ("magnet.pcap", 8000),
                         ("utp.pcap", 8000), ("mse.pcap", 8000), ("ipv6.pcap", 8000),
                         ("midstream.pcap", 6000)):
        with open(os.path.join(PCAPS, name), "rb") as f:
            header = f.read(24)
        kept, size, per_flow = [], 0, {}
        for _, rec, p in packets(name):
            key = tuple(sorted([(p[1], p[2]), (p[3], p[4])]))
            per_flow[key] = per_flow.get(key, 0) + 1
            # At most 8 frames per flow, frames of at most 600 bytes, so that
            # many flows and protocols fit the budget.
            if per_flow[key] > 8 or len(rec) > 616 or size + len(rec) > budget:
                continue
            kept.append(rec)
            size += len(rec)
        seed("pipeline", name.replace(".pcap", ""), header + b"".join(kept))


def main():
    for t in os.listdir(HERE):
        if os.path.isdir(os.path.join(HERE, t)):
            shutil.rmtree(os.path.join(HERE, t))
    parsers()
    reassembly()
    utp_tracker()
    pipeline()
    for t in sorted(written):
        n = len(os.listdir(os.path.join(HERE, t)))
        print(f"{t:16} {n:3} seeds {written[t]:7} bytes")
    print(f"{'total':16} {sum(written.values()):15} bytes")


if __name__ == "__main__":
    sys.exit(main())
