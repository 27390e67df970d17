#!/usr/bin/env python3
"""Add two cross-checks to a truth file, computed from its capture:

  tshark_counts   what tshark 4.0 sees (verify.py): a view, not the reference
  wire_reference  an independent reassembly of every plaintext peer-wire
                  connection in the capture (TCP by sequence number, uTP by
                  seq_nr), then a plain walk of the length-prefixed messages:
                  piece payload bytes and message counts per direction.

    python3 sample-pcaps/generate/annotate.py sample-pcaps/http.truth.json [...]

Limits, written into the output: encrypted (MSE) streams are not decrypted
(`encrypted: true`, no byte counts); connections whose start is not in the
capture (`midstream: true`) are walked only from the first handshake found,
otherwise left out; a stream is walked up to its first hole (`gap_bytes`).
Standard library only.
"""
import json
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import verify  # noqa: E402

HS = b"\x13BitTorrent protocol"
MSG_NAMES = {0: "choke", 1: "unchoke", 2: "interested", 3: "not_interested", 4: "have", 5: "bitfield",
             6: "request", 7: "piece", 8: "cancel", 9: "port", 13: "suggest", 14: "have_all",
             15: "have_none", 16: "reject", 17: "allowed_fast", 20: "extended",
             21: "hash_request", 22: "hashes", 23: "hash_reject"}


def read_pcap(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack_from("<I", data, 0)[0]
    if magic in (0xa1b2c3d4, 0xa1b23c4d):
        e = "<"
    else:
        e = ">"
    nsec = magic == 0xa1b23c4d
    linktype = struct.unpack_from(e + "I", data, 20)[0]
    assert linktype == 1, "Ethernet captures only"
    i = 24
    n = 0
    while i + 16 <= len(data):
        ts_s, ts_f, incl, orig = struct.unpack_from(e + "IIII", data, i)
        i += 16
        n += 1
        yield n, ts_s + ts_f / (1e9 if nsec else 1e6), data[i:i + incl]
        i += incl


def parse(frame):
    """-> (proto, src, sport, dst, dport, payload, tcp_info) or None"""
    if len(frame) < 14:
        return None
    et = struct.unpack_from("!H", frame, 12)[0]
    off = 14
    if et == 0x8100:
        et = struct.unpack_from("!H", frame, 16)[0]
        off = 18
    if et == 0x0800:
        ihl = (frame[off] & 0xf) * 4
        tot = struct.unpack_from("!H", frame, off + 2)[0]
        proto = frame[off + 9]
        src = socket.inet_ntop(socket.AF_INET, frame[off + 12:off + 16])
        dst = socket.inet_ntop(socket.AF_INET, frame[off + 16:off + 20])
        l4 = off + ihl
        end = off + tot
    elif et == 0x86dd:
        plen = struct.unpack_from("!H", frame, off + 4)[0]
        proto = frame[off + 6]
        src = socket.inet_ntop(socket.AF_INET6, frame[off + 8:off + 24])
        dst = socket.inet_ntop(socket.AF_INET6, frame[off + 24:off + 40])
        l4 = off + 40
        end = l4 + plen
    else:
        return None
    if proto == 6:
        sport, dport, seq, ack = struct.unpack_from("!HHII", frame, l4)
        doff = (frame[l4 + 12] >> 4) * 4
        flags = frame[l4 + 13]
        return ("tcp", src, sport, dst, dport, frame[l4 + doff:end], (seq, flags))
    if proto == 17:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        return ("udp", src, sport, dst, dport, frame[l4 + 8:end], None)
    return None


class Dir:
    def __init__(self):
        self.isn = None
        self.first_seq = None
        self.segs = {}  # rel offset -> bytes (TCP) / unwrapped seq_nr -> bytes (uTP)
        self.first_ts = None

    def add(self, rel, payload):
        if payload and (rel not in self.segs or len(payload) > len(self.segs[rel])):
            self.segs[rel] = payload

    def stream_tcp(self):
        out = bytearray()
        pos = 0
        for rel in sorted(self.segs):
            p = self.segs[rel]
            if rel > pos:
                return bytes(out), sum(len(v) for k, v in self.segs.items() if k >= pos) and (max(k + len(v) for k, v in self.segs.items()) - pos)
            if rel + len(p) > pos:
                out += p[pos - rel:]
                pos = rel + len(p)
        return bytes(out), 0

    def stream_utp(self):
        out = bytearray()
        if not self.segs:
            return b"", 0
        ks = sorted(self.segs)
        expect = ks[0]
        for k in ks:
            if k != expect:
                return bytes(out), sum(len(self.segs[x]) for x in ks if x >= k)
            out += self.segs[k]
            expect = k + 1
        return bytes(out), 0


def walk(stream, midstream):
    """Walk one direction of a peer-wire stream. Returns dict."""
    r = {"handshake": False, "info_hash": None, "peer_id": None, "piece_bytes": 0, "msgs": {},
         "ext_msgs": 0, "walked_bytes": 0, "truncated_tail_bytes": 0}
    i = 0
    if stream[:20] == HS:
        if len(stream) < 68:
            return r
        r["handshake"] = True
        r["info_hash"] = stream[28:48].hex()
        r["peer_id"] = stream[48:68].decode("latin-1")
        i = 68
    elif midstream:
        j = stream.find(HS)
        if 0 <= j < 65536:
            return walk(stream[j:], False)
        k = resync(stream)
        if k is None:
            r["undecoded"] = "midstream: no handshake and no run of plausible messages"
            return r
        r["resync_skipped_bytes"] = k
        i = k
    else:
        r["encrypted_or_other"] = True
        return r
    n = len(stream)
    while i + 4 <= n:
        ln = struct.unpack_from("!I", stream, i)[0]
        if ln > (1 << 20) + 64:
            r["framing_error_at"] = i
            break
        if i + 4 + ln > n:
            r["truncated_tail_bytes"] = n - i
            if n - i > 13 and stream[i + 4] == 7:
                # a piece message cut off (connection closed, or capture ended) mid-block
                r["partial_piece_bytes"] = n - i - 13
            break
        if ln == 0:
            name = "keepalive"
        else:
            mid = stream[i + 4]
            name = MSG_NAMES.get(mid, "unknown")
            if mid == 7:
                r["piece_bytes"] += ln - 9
        r["msgs"][name] = r["msgs"].get(name, 0) + 1
        i += 4 + ln
    r["walked_bytes"] = i
    return r


def plausible(stream, i):
    """Length and id at offset i look like a peer-wire message (used to pick up
    a stream whose start is not in the capture)."""
    if i + 5 > len(stream):
        return None
    ln = struct.unpack_from("!I", stream, i)[0]
    if ln == 0:
        return 4
    mid = stream[i + 4]
    if mid not in MSG_NAMES or ln > 16384 + 9 and mid != 20 or ln > (1 << 20):
        return None
    fixed = {0: 1, 1: 1, 2: 1, 3: 1, 4: 5, 6: 13, 7: None, 8: 13, 9: 3, 13: 5, 14: 1, 15: 1, 16: 13, 17: 5}
    if fixed.get(mid) is not None and ln != fixed[mid]:
        return None
    if mid == 7 and ln < 9:
        return None
    return 4 + ln


def resync(stream, need=4, window=1 << 17):
    """First offset from which `need` consecutive plausible messages parse."""
    for k in range(0, min(len(stream), window)):
        i = k
        ok = 0
        while ok < need:
            step = plausible(stream, i)
            if step is None:
                break
            i += step
            ok += 1
            if i == len(stream):
                ok = need
        if ok >= need:
            return k
    return None


def is_utp(payload):
    if len(payload) < 20:
        return False
    b0 = payload[0]
    return (b0 & 0x0f) == 1 and (b0 >> 4) <= 4 and payload[1] in (0, 1, 2, 3)


def wire_reference(pcap, single_ih=None):
    tcp = {}   # (a, ap, b, bp) direction -> Dir
    syn_from = {}  # canonical key -> orig endpoint
    utp = {}
    utp_syn = {}
    first_seen = {}
    for n, ts, fr in read_pcap(pcap):
        p = parse(fr)
        if not p:
            continue
        proto, src, sport, dst, dport, payload, info = p
        d = (src, sport, dst, dport)
        ck = tuple(sorted([(src, sport), (dst, dport)]))
        first_seen.setdefault((proto, ck), ((src, sport), ts))
        if proto == "tcp":
            seq, flags = info
            st = tcp.setdefault(d, Dir())
            if st.first_ts is None:
                st.first_ts = ts
            if flags & 0x02:  # SYN
                st.isn = seq
                if not flags & 0x10:
                    syn_from[ck] = (src, sport)
                continue
            if st.isn is None and st.first_seq is None:
                st.first_seq = seq
            base = (st.isn + 1) if st.isn is not None else st.first_seq
            rel = (seq - base) & 0xffffffff
            if rel > 0x7fffffff:  # before base (retransmitted SYN data etc.)
                continue
            st.add(rel, payload)
        elif proto == "udp" and 6969 not in (sport, dport) and is_utp(payload):
            typ = payload[0] >> 4
            ext = payload[1]
            seq_nr = struct.unpack_from("!H", payload, 16)[0]
            i = 20
            while ext and i + 2 <= len(payload):
                ext, ln = payload[i], payload[i + 1]
                i += 2 + ln
            st = utp.setdefault(d, Dir())
            if typ == 4:
                utp_syn[ck] = (src, sport)
                continue
            if typ != 0:
                continue
            if st.first_seq is None:
                st.first_seq = seq_nr
                st.last = 0
            rel = (seq_nr - st.first_seq) & 0xffff
            # unwrap around the last position seen
            cand = st.last - (st.last & 0xffff) + rel
            if cand < st.last - 0x8000:
                cand += 0x10000
            elif cand > st.last + 0x8000:
                cand -= 0x10000
            st.last = max(st.last, cand)
            st.add(cand, payload[i:])
    conns = []
    for transport, table, syns in (("tcp", tcp, syn_from), ("utp", utp, utp_syn)):
        done = set()
        for d in table:
            ck = tuple(sorted([(d[0], d[1]), (d[2], d[3])]))
            if ck in done:
                continue
            done.add(ck)
            if ck in syns:
                orig = syns[ck]
                midstream = False
            else:
                orig = first_seen[(transport if transport == "tcp" else "udp", ck)][0]
                midstream = True
            resp = ck[1] if ck[0] == orig else ck[0]
            res = {"transport": transport, "orig_ip": orig[0], "orig_port": orig[1],
                   "resp_ip": resp[0], "resp_port": resp[1], "midstream": midstream}
            total_payload = 0
            for side, a, b in (("orig", orig, resp), ("resp", resp, orig)):
                st = table.get((a[0], a[1], b[0], b[1]))
                if st is None:
                    stream, gap = b"", 0
                else:
                    if transport == "tcp":
                        if st.isn is None and not midstream:
                            stream, gap = b"", 0
                        else:
                            stream, gap = st.stream_tcp()
                    else:
                        stream, gap = st.stream_utp()
                total_payload += len(stream) + (gap or 0)
                w = walk(stream, midstream or (transport == "tcp" and st is not None and st.isn is None))
                res[side] = {"payload_bytes": len(stream), "gap_bytes": gap or 0, **w}
            if total_payload == 0:
                continue  # refused / empty connection, or not peer wire
            o, r = res["orig"], res["resp"]
            if transport == "tcp" and not (o["handshake"] or r["handshake"] or o.get("encrypted_or_other")
                                           or r.get("encrypted_or_other") or o["msgs"] or r["msgs"]):
                continue
            if 6969 in (orig[1], resp[1]) or 80 in (orig[1], resp[1]):
                continue  # HTTP tracker
            if o.get("encrypted_or_other") and o["payload_bytes"] >= 4 and o.get("walked_bytes", 0) == 0:
                head = b""
                st = table.get((orig[0], orig[1], resp[0], resp[1]))
                if st:
                    head = (st.stream_tcp() if transport == "tcp" else st.stream_utp())[0][:4]
                if head in (b"GET ", b"POST", b"HTTP"):
                    continue
            res["encrypted"] = bool(o.get("encrypted_or_other") or r.get("encrypted_or_other"))
            res["info_hash"] = o["info_hash"] or r["info_hash"]
            if not res["info_hash"] and not res["encrypted"] and single_ih:
                res["info_hash"] = single_ih
                res["info_hash_assumed"] = True  # picked up mid-stream: the capture's only torrent
            conns.append(res)
    conns.sort(key=lambda c: (c["transport"], c["orig_ip"], c["orig_port"], c["resp_ip"], c["resp_port"]))
    # Per host and info_hash: piece bytes sent / received over decoded connections.
    per_host = {}
    for c in conns:
        if c["encrypted"] or not c["info_hash"]:
            continue
        for side, me, other in (("orig", "orig_ip", "resp_ip"), ("resp", "resp_ip", "orig_ip")):
            ip = c[me]
            h = per_host.setdefault(ip, {}).setdefault(c["info_hash"], {
                "piece_bytes_sent": 0, "piece_bytes_received": 0, "partial_piece_bytes_sent": 0,
                "partial_piece_bytes_received": 0, "n_connections": 0, "per_peer": {}})
            other_side = "resp" if side == "orig" else "orig"
            sent = c[side]["piece_bytes"]
            recv = c[other_side]["piece_bytes"]
            h["piece_bytes_sent"] += sent
            h["piece_bytes_received"] += recv
            h["partial_piece_bytes_sent"] += c[side].get("partial_piece_bytes", 0)
            h["partial_piece_bytes_received"] += c[other_side].get("partial_piece_bytes", 0)
            h["n_connections"] += 1
            pp = h["per_peer"].setdefault(c[other], {"piece_bytes_sent": 0, "piece_bytes_received": 0})
            pp["piece_bytes_sent"] += sent
            pp["piece_bytes_received"] += recv
    for c in conns:
        if not c["encrypted"]:
            continue
        for ip in (c["orig_ip"], c["resp_ip"]):
            per_host.setdefault(ip, {}).setdefault("encrypted_connections", 0)
            per_host[ip]["encrypted_connections"] += 1
    n_enc = sum(1 for c in conns if c["encrypted"])
    return {
        "method": "sample-pcaps/generate/annotate.py: TCP reassembled by sequence number (retransmissions "
                  "and overlaps resolved, walk stops at the first hole), uTP by seq_nr of ST_DATA packets; "
                  "peer-wire messages walked after the 68-byte handshake; piece_bytes = sum of (length - 9) "
                  "of complete `piece` messages (partial_piece_bytes: payload of a piece message cut off at the "
                  "end of a stream). Encrypted (MSE) streams are listed but not decoded. Streams whose start "
                  "is not in the capture are picked up at the first offset where 4 plausible messages parse "
                  "(resync_skipped_bytes) and get the capture's only info_hash (info_hash_assumed).",
        "n_connections": len(conns), "n_encrypted": n_enc,
        "per_host": per_host, "connections": conns,
    }


def annotate(truth_path):
    d = os.path.dirname(os.path.abspath(truth_path))
    t = json.load(open(truth_path))
    pcap = os.path.join(d, t["capture"])
    c = verify.counts(pcap)
    c["tshark_version"] = os.popen("tshark -v 2>/dev/null | head -1").read().strip()
    t["tshark_counts"] = c
    single = t["torrents"][0]["info_hash"] if len(t["torrents"]) == 1 else None
    t["wire_reference"] = wire_reference(pcap, single)
    with open(truth_path, "w") as f:
        json.dump(t, f, indent=1)
        f.write("\n")
    return t


if __name__ == "__main__":
    for p in sys.argv[1:]:
        t = annotate(p)
        w = t["wire_reference"]
        print(p, json.dumps(t["tshark_counts"]))
        for ip, hs in sorted(w["per_host"].items()):
            for ih, v in hs.items():
                if not isinstance(v, dict):
                    continue
                print("  %-14s %s sent=%d recv=%d conns=%d" % (ip, ih[:8], v["piece_bytes_sent"],
                                                             v["piece_bytes_received"], v["n_connections"]))
        print("  connections=%d encrypted=%d" % (w["n_connections"], w["n_encrypted"]))
