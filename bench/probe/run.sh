#!/usr/bin/env bash
# swarmtap probe: visits per CPU-minute and memory per tracked peer.
# Runs only inside network namespaces it creates (swp-bench, swp-mem), so
# nothing leaves the machine: the first has only its loopback, where a small
# Python peer (bench_peer.py) answers on 127.1.x.y:16881; the second has
# only a loopback, so every contact fails at once (no route) and memory
# reflects the tracked peers alone. Needs root, python3 with polars.
#
#   bash bench/probe/run.sh [SWARMTAP_BINARY]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${1:-$here/../../target/release/swarmtap}"
work="$(mktemp -d)"
trap 'ip netns del swp-bench 2>/dev/null || true; ip netns del swp-mem 2>/dev/null || true; kill "${peer:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import os, sys, polars as pl
w = sys.argv[1]
def ds(name, n, ip, port):
    d = os.path.join(w, name); os.makedirs(d)
    ih = "cd" * 20
    pl.DataFrame({"info_hash": [ih] * n, "peer_ip": [ip(i) for i in range(n)],
                  "peer_port": pl.Series([port] * n, dtype=pl.UInt32)}).write_parquet(d + "/peers.parquet")
    pl.DataFrame({"info_hash": [ih], "name": ["bench"], "n_pieces": pl.Series([1000], dtype=pl.UInt64),
                  "n_pieces_source": ["torrent_file"]}).write_parquet(d + "/torrents.parquet")
ds("visits", 5000, lambda i: "127.1.%d.%d" % (i >> 8, i & 255), 16881)
ds("mem1", 1, lambda i: "10.0.0.1", 6881)
ds("mem100k", 100000, lambda i: "10.%d.%d.%d" % (i >> 16, (i >> 8) & 255, i & 255), 6881)
PY

echo "== visits: 5000 peers on loopback, revisit 1 s, 20 s"
ip netns add swp-bench
ip netns exec swp-bench ip link set lo up
ip netns exec swp-bench python3 "$here/bench_peer.py" 16881 1000 & peer=$!
sleep 1
ip netns exec swp-bench "$bin" probe --from "$work/visits" --allow-private --rate 100000 \
  --concurrency 256 --revisit 1s --duration 20s --no-announce -o "$work/out-visits" 2>&1 | grep visits/min

echo "== memory: tracked peers not yet visited (--rate 1), RSS after 10 s"
ip netns add swp-mem
ip netns exec swp-mem ip link set lo up
for n in mem1 mem100k; do
  ip netns exec swp-mem "$bin" probe --from "$work/$n" --allow-private --rate 1 --retry 1h \
    --duration 12s --no-announce -o "$work/out-$n" 2>/dev/null & p=$!
  sleep 10
  echo "$n: $(grep VmRSS /proc/$p/status)"
  wait $p
done
