#!/usr/bin/env python3
"""Hostile captures for issue 16's memory bounds (not committed: generated).

    hostile_gen.py synpartial N OUT   N connections: SYN + a 67-byte partial
                                      BitTorrent handshake (one byte short)
    hostile_gen.py syn1 N OUT         N connections: SYN + 1 payload byte
    hostile_gen.py dht N OUT          N KRPC get_peers queries, each from a
                                      fresh node id, address and port
    hostile_gen.py established N OUT  N concurrent TCP connections, each a
                                      SYN, SYN-ACK and ACK and no data, all
                                      open at the end (the 1 M concurrent
                                      flows case; deterministic, as the
                                      others but dht)

Classic little-endian pcap, Ethernet, IPv4, checksums left 0. Timestamps
advance 10 µs per frame, so no flow goes idle during the run.
"""
import os
import struct
import sys


def frame_tcp(src, sport, dst, dport, seq, flags, payload=b"", ack=0):
    ip_len = 40 + len(payload)
    eth = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0x4000, 64, 6, 0, src, dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 65535, 0, 0)
    return eth + ip + tcp + payload


def frame_udp(src, sport, dst, dport, payload):
    eth = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0, src, dst)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    return eth + ip + udp + payload


def addr(i):
    # 10.64.0.0/10 and up: distinct client addresses.
    return struct.pack("!I", (10 << 24) | (64 << 16) + (i >> 6))


def main():
    kind, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    server = bytes([10, 1, 0, 1])
    hs = b"\x13BitTorrent protocol" + bytes(8) + b"\x42" * 20 + b"-XX0000-" + b"a" * 11
    assert len(hs) == 67
    ts = 1_700_000_000 * 1_000_000
    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))

        def rec(fr):
            nonlocal ts
            f.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(fr), len(fr)))
            f.write(fr)
            ts += 10

        for i in range(n):
            src, sport = addr(i), 1024 + (i & 63) * 900 + 7
            if kind in ("synpartial", "syn1"):
                isn = (i * 2654435761) & 0xFFFFFFFF
                rec(frame_tcp(src, sport, server, 6881, isn, 0x02))
                data = hs if kind == "synpartial" else b"\x13"
                rec(frame_tcp(src, sport, server, 6881, (isn + 1) & 0xFFFFFFFF, 0x18, data))
            elif kind == "established":
                isn = (i * 2654435761) & 0xFFFFFFFF
                risn = (i * 40503 + 12345) & 0xFFFFFFFF
                rec(frame_tcp(src, sport, server, 6881, isn, 0x02))
                rec(frame_tcp(server, 6881, src, sport, risn, 0x12, ack=(isn + 1) & 0xFFFFFFFF))
                rec(frame_tcp(src, sport, server, 6881, (isn + 1) & 0xFFFFFFFF, 0x10, ack=(risn + 1) & 0xFFFFFFFF))
            elif kind == "dht":
                nid = os.urandom(20)
                ih = os.urandom(20)
                q = b"d1:ad2:id20:" + nid + b"9:info_hash20:" + ih + b"e1:q9:get_peers1:t2:" + struct.pack("!H", i & 0xFFFF) + b"1:y1:qe"
                rec(frame_udp(src, sport, server, 6881, q))
            else:
                sys.exit("kind: synpartial, syn1, dht or established")


main()
