"""A minimal BitTorrent peer for the probe benchmark: answers the handshake
for any info hash, sends a bitfield with half of N pieces set, closes.

    bench_peer.py PORT N_PIECES
"""
import asyncio, sys
N=int(sys.argv[2]) if len(sys.argv)>2 else 1000
BF=bytes([0x0f]*(N//8))
async def handle(r, w):
    try:
        hs = await r.readexactly(68)
        out = hs[:20] + bytes(8) + hs[28:48] + b"-TR3000-bench0000000"
        out += (len(BF)+1).to_bytes(4,"big") + b"\x05" + BF
        w.write(out); await w.drain()
    except Exception:
        pass
    w.close()
async def main():
    s = await asyncio.start_server(handle, "0.0.0.0", int(sys.argv[1]), backlog=4096)
    async with s: await s.serve_forever()
asyncio.run(main())
