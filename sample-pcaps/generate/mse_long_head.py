#!/usr/bin/env python3
"""Writes tests/captures/mse-long-head.pcap and its truth file: MSE key
exchanges that selected plaintext, where the originator sends more than the
analyzer's 2 KiB MSE scan window (`MSE_SCAN_BYTES` in src/analyze/stream.rs)
before the responder's plaintext handshake arrives.

    python3 sample-pcaps/generate/mse_long_head.py [OUT_DIR]

No client produces this on its own in our swarms (a responder answers within
the 608-byte flights), so the frames are built here, with real TCP and uTP
framing (handshakes, sequence numbers, ACKs, FINs); the answer is known by
construction and checked against annotate.py's independent reassembly
(`wire_reference`) where that reassembly applies.

Each connection, from the originator A (10.98.0.1) to the responder B
(10.98.0.2):

  A: Ya + PadA (296 random bytes: the MSE first flight)
  B: Yb + PadB (396 random bytes)
  A: HASH(req1), HASH(req2)^HASH(req3), ENCRYPT(VC, crypto_provide =
     plaintext only, len(PadC)=0, len(IA)=68), ENCRYPT(IA) (124 random
     bytes), then, knowing that only plaintext can be selected, pipelined
     plaintext messages: bitfield (none of 200 pieces), interested, 300
     requests (5,100 bytes): 5,535 bytes before B's step 4
  B: ENCRYPT(VC, crypto_select, len(PadD)=50, PadD) (64 random bytes), its
     plaintext handshake, bitfield (all 200), unchoke, 4 piece messages of
     16 KiB (65,536 piece bytes), have 7
  A: have 0, have 1, not_interested
  both: FIN

Connections (the first four select plaintext):
  tcp 50001 -> 6881   no loss
  tcp 50002 -> 6881   A's 4th pipelined segment (1,000 bytes, inside what
                      lies past the 2 KiB scan head) never captured; B's ACKs
                      cover it (the capture missed it, the receiver did not)
  utp 50003 -> 6882   as 50001, over uTP
  utp 50004 -> 6882   as 50002, over uTP: the missing packet is 1,000 bytes
                      between two 1,000-byte packets, so the analyzer's
                      estimate of a lost uTP packet's size is exact
  utp 50006 -> 6882   a gap inside the scan window: A sends 1,920 bytes
                      before B's handshake (296, 124, 3 x 500), the middle
                      500-byte packet missing
  utp 50005 -> 6882   an exchange that stays encrypted (RC4 selected): the
                      same 296/396/124-byte opening, then 3,000 random bytes
                      from A and 2,000 from B; no plaintext handshake, so the
                      row is the MSE scan's own count (over uTP the
                      transport gives none)

Standard library only; payloads from random.Random(21), so the output is the
same on every run.
"""
import json
import os
import random
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import annotate  # noqa: E402

A_IP, B_IP = "10.98.0.1", "10.98.0.2"
INFO_HASH = bytes(range(1, 21))
N_PIECES = 200
BLOCK = 16384
SEG = 1000  # bytes per segment of A's pipelined messages


def ip4(s):
    return bytes(int(x) for x in s.split("."))


def eth_ip(proto, src, dst, l4):
    total = 20 + len(l4)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, proto, 0, ip4(src), ip4(dst))
    return b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00" + ip + l4


def tcp(src, sport, dst, dport, seq, ack, flags, payload=b""):
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xffffffff, ack & 0xffffffff, 0x50, flags, 65535, 0, 0)
    return eth_ip(6, src, dst, hdr + payload)


def udp(src, sport, dst, dport, payload):
    return eth_ip(17, src, dst, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def msg(mid, body=b""):
    return struct.pack("!IB", len(body) + 1, mid) + body


def handshake(peer_id):
    return b"\x13BitTorrent protocol" + b"\0" * 8 + INFO_HASH + peer_id


def script(rnd):
    """The two directions as a list of (side, bytes) flights, in send order,
    plus the piece bytes and messages B sends in plaintext."""
    a1 = rnd.randbytes(296)
    b1 = rnd.randbytes(396)
    a2 = rnd.randbytes(124)
    pipelined = msg(5, bytes((N_PIECES + 7) // 8)) + msg(2)
    for i in range(300):
        pipelined += msg(6, struct.pack("!III", i // 2, (i % 2) * BLOCK, BLOCK))
    b2 = rnd.randbytes(64)
    b_plain = handshake(b"-SW0001-" + rnd.randbytes(12))
    b_plain += msg(5, b"\xff" * (N_PIECES // 8)) + msg(1)
    for i in range(4):
        b_plain += msg(7, struct.pack("!II", i // 2, (i % 2) * BLOCK) + rnd.randbytes(BLOCK))
    b_plain += msg(4, struct.pack("!I", 7))
    a3 = msg(4, struct.pack("!I", 0)) + msg(4, struct.pack("!I", 1)) + msg(3)
    flights = [("A", a1), ("B", b1), ("A", a2)]
    flights += [("A", pipelined[i:i + SEG]) for i in range(0, len(pipelined), SEG)]
    flights += [("B", b2 + b_plain), ("A", a3)]
    b_known = {"piece_bytes": 4 * BLOCK, "msgs": {"bitfield": 1, "unchoke": 1, "piece": 4, "have": 1},
               "mse_exchange_bytes": len(b1) + len(b2)}
    return flights, b_known


def encrypted_script(rnd):
    """An exchange that selected RC4: random bytes both ways, nothing to
    decode."""
    flights = [("A", rnd.randbytes(296)), ("B", rnd.randbytes(396)), ("A", rnd.randbytes(124)),
               ("A", rnd.randbytes(3000)), ("B", rnd.randbytes(2000))]
    return flights


def segments(flights, mss):
    """(side, bytes) per packet: a flight is cut at `mss`."""
    out = []
    for side, data in flights:
        for i in range(0, len(data), mss):
            out.append((side, data[i:i + mss]))
    return out


# The packet of A not captured in the lossy variants: A's 4th pipelined
# segment (index in the packet list; the first three packets of A are 296,
# 124 and 1,000 bytes, so A's scan head is full at 2,420 bytes after the 4th
# of A's packets and the lost one lies past it).
LOST_A_PACKET = 5


def tcp_conn(frames, ts, sport, dport, packets, lost):
    isn = {"A": 1000, "B": 900000}
    nxt = {"A": isn["A"] + 1, "B": isn["B"] + 1}
    ends = {"A": (A_IP, sport), "B": (B_IP, dport)}

    def put(side, seq, ack, flags, payload=b""):
        src, dst = ends[side], ends["B" if side == "A" else "A"]
        frames.append((ts[0], tcp(src[0], src[1], dst[0], dst[1], seq, ack, flags, payload)))
        ts[0] += 1000

    put("A", isn["A"], 0, 0x02)
    put("B", isn["B"], nxt["A"], 0x12)
    put("A", nxt["A"], nxt["B"], 0x10)
    n_a = 0
    for side, data in packets:
        other = "B" if side == "A" else "A"
        skip = side == "A" and n_a == lost
        if side == "A":
            n_a += 1
        if not skip:
            put(side, nxt[side], nxt[other], 0x18, data)
        nxt[side] += len(data)
        # the receiver's ACK (it got the packet, whether or not we did)
        put(other, nxt[other], nxt[side], 0x10)
    put("A", nxt["A"], nxt["B"], 0x11)
    put("B", nxt["B"], nxt["A"] + 1, 0x11)
    put("A", nxt["A"] + 1, nxt["B"] + 1, 0x10)


def utp_hdr(typ, conn_id, seq, ack, ts):
    return struct.pack("!BBHIIIHH", (typ << 4) | 1, 0, conn_id, ts & 0xffffffff, 0, 1 << 20, seq, ack)


def utp_conn(frames, ts, sport, dport, packets, lost):
    # A initiates with receive id X: its SYN carries X, A then sends X + 1,
    # B sends X (BEP 29). B's ST_STATE answer carries its first data seq_nr.
    x = 4000 + sport
    seq = {"A": 100, "B": 7000}
    ends = {"A": (A_IP, sport), "B": (B_IP, dport)}
    cid = {"A": x + 1, "B": x}

    def put(side, typ, seq_nr, ack, payload=b"", conn=None):
        src, dst = ends[side], ends["B" if side == "A" else "A"]
        hdr = utp_hdr(typ, cid[side] if conn is None else conn, seq_nr, ack, ts[0])
        frames.append((ts[0], udp(src[0], src[1], dst[0], dst[1], hdr + payload)))
        ts[0] += 1000

    put("A", 4, seq["A"], 0, conn=x)  # ST_SYN
    seq["A"] += 1
    put("B", 2, seq["B"], seq["A"] - 1)  # ST_STATE: B's next data seq_nr
    acked = {"A": seq["A"] - 1, "B": seq["B"] - 1}
    n_a = 0
    for side, data in packets:
        other = "B" if side == "A" else "A"
        skip = side == "A" and n_a == lost
        if side == "A":
            n_a += 1
        if not skip:
            put(side, 0, seq[side], acked[side], data)  # ST_DATA
        acked[other] = seq[side]
        seq[side] += 1
        put(other, 2, seq[other], acked[other])  # ST_STATE: the receiver's ACK
    put("A", 1, seq["A"], acked["A"])  # ST_FIN
    acked["B"] = seq["A"]
    put("B", 1, seq["B"], acked["B"])
    acked["A"] = seq["B"]
    put("A", 2, seq["A"] + 1, acked["A"])


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "tests", "captures")
    os.makedirs(out_dir, exist_ok=True)
    pcap = os.path.join(out_dir, "mse-long-head.pcap")
    rnd = random.Random(21)
    flights, b_known = script(rnd)
    frames = []
    ts = [1_800_000_000_000_000]
    conns = []
    encrypted = encrypted_script(random.Random(22))
    for transport, sport, dport, lost in (("tcp", 50001, 6881, False), ("tcp", 50002, 6881, True),
                                          ("utp", 50003, 6882, False), ("utp", 50004, 6882, True),
                                          ("utp", 50005, 6882, None), ("utp", 50006, 6882, "short")):
        if lost == "short":
            # A gap inside the scan window: A sends 1,920 bytes before B's
            # handshake, in 296, 124 and three 500-byte packets, of which
            # the middle one is missing.
            sflights, _ = script(random.Random(23))
            a_pipe = b"".join(d for s_, d in sflights[3:-2])[:1500]
            short = sflights[:3] + [("A", a_pipe[i:i + 500]) for i in range(0, 1500, 500)] + sflights[-2:]
            packets = segments(short, 1400)
            a_sizes = [len(d) for s_, d in packets if s_ == "A"]
            assert a_sizes[2:6] == [500, 500, 500, 23] and sum(a_sizes[:5]) < 2048, a_sizes
            utp_conn(frames, ts, sport, dport, packets, 3)
            ts[0] += 1_000_000
            conns.append({
                "transport": transport, "orig_ip": A_IP, "orig_port": sport, "resp_ip": B_IP, "resp_port": dport,
                "lost_orig_packet": True, "stays_encrypted": False, "gap_inside_window": True,
                "orig": {"payload_bytes": sum(a_sizes) - 500, "gap_bytes": 500,
                         "bytes_before_resp_handshake": sum(a_sizes[:5])},
                "resp": {"payload_bytes": sum(len(d) for s_, d in packets if s_ == "B"), "gap_bytes": 0, **b_known},
            })
            continue
        if lost is None:
            packets = segments(encrypted, 1400)
            (tcp_conn if transport == "tcp" else utp_conn)(frames, ts, sport, dport, packets, None)
            ts[0] += 1_000_000
            conns.append({
                "transport": transport, "orig_ip": A_IP, "orig_port": sport, "resp_ip": B_IP, "resp_port": dport,
                "lost_orig_packet": False, "stays_encrypted": True,
                "orig": {"payload_bytes": sum(len(d) for s, d in packets if s == "A"), "gap_bytes": 0},
                "resp": {"payload_bytes": sum(len(d) for s, d in packets if s == "B"), "gap_bytes": 0},
            })
            continue
        packets = segments(flights, 1400)
        a_sizes = [len(d) for s, d in packets if s == "A"]
        if lost:
            # the lost packet lies past the 2 KiB head and between two
            # packets of its own size
            assert sum(a_sizes[:LOST_A_PACKET]) >= 2048, a_sizes
            assert a_sizes[LOST_A_PACKET - 1:LOST_A_PACKET + 2] == [SEG] * 3, a_sizes
        lost_bytes = a_sizes[LOST_A_PACKET] if lost else 0
        (tcp_conn if transport == "tcp" else utp_conn)(frames, ts, sport, dport, packets,
                                                        LOST_A_PACKET if lost else None)
        ts[0] += 1_000_000
        a_total = sum(a_sizes)
        b_total = sum(len(d) for s, d in packets if s == "B")
        conns.append({
            "transport": transport, "orig_ip": A_IP, "orig_port": sport, "resp_ip": B_IP, "resp_port": dport,
            "lost_orig_packet": lost, "stays_encrypted": False,
            "orig": {"payload_bytes": a_total - lost_bytes, "gap_bytes": lost_bytes,
                     "bytes_before_resp_handshake": sum(len(d) for s, d in flights[:-2] if s == "A")},
            "resp": {"payload_bytes": b_total, "gap_bytes": 0, **b_known},
        })
    with open(pcap, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 65535, 1))
        for t, fr in frames:
            f.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(fr), len(fr)))
            f.write(fr)
    wire = annotate.wire_reference(pcap)
    # The independent reassembly agrees with the construction wherever it
    # applies: streams without a hole (it stops at the first hole).
    by_key = {(c["transport"], c["orig_port"]): c for c in wire["connections"]}
    for c in conns:
        w = by_key[(c["transport"], c["orig_port"])]
        assert w["encrypted"], w
        if not c["lost_orig_packet"]:
            for side in ("orig", "resp"):
                assert (w[side]["payload_bytes"], w[side]["gap_bytes"]) == \
                    (c[side]["payload_bytes"], c[side]["gap_bytes"]), (c, w)
    truth = {
        "capture": "mse-long-head.pcap",
        "generator": "sample-pcaps/generate/mse_long_head.py",
        "scan_window_bytes": 2048,
        "info_hash": INFO_HASH.hex(),
        "construction": conns,
        "wire_reference": wire,
    }
    with open(os.path.join(out_dir, "mse-long-head.truth.json"), "w") as f:
        json.dump(truth, f, indent=1)
        f.write("\n")
    print(pcap, len(frames), "frames")
    for c in conns:
        print(" ", c["transport"], c["orig_port"], "orig", c["orig"]["payload_bytes"], "gap", c["orig"]["gap_bytes"],
              "resp", c["resp"]["payload_bytes"])


if __name__ == "__main__":
    main()
