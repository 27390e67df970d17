#!/usr/bin/env bash
# Live-capture benchmark (issue 7): replays real BitTorrent traffic across a
# veth pair between two network namespaces at increasing packet rates and
# reports the highest rate at which `swarmtap live` lost nothing (none of
# ours, none of the kernel's, every packet sent counted), with swarmtap's
# CPU use at that rate. Not a test: the figures depend on the machine and
# on what else runs on it.
#
#   sudo bash bench/live.sh
#
# Environment:
#   LIVE_RATES="20000 40000 ..."  packet rates to try, in order (tcpreplay --pps)
#   LIVE_SECONDS=6                 replay length per rate (looped only when
#                                  the source is shorter than that)
#   LIVE_COPIES=8                  copies of sample-pcaps/ in the source
#   LIVE_SWARMTAP=PATH             binary to measure (default: release build)
#   LIVE_THREADS=N                 pass --threads N to swarmtap
#
# Traffic stays inside the two namespaces the script creates (no address,
# no route; deleted on exit). Needs root, iproute2, ethtool, tcpreplay
# (tests/setup.sh installs them), mergecap (tshark's package) and python3
# with polars (to read capture_stats).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RATES=${LIVE_RATES:-"20000 40000 60000 80000 100000 130000 160000 200000 250000 300000"}
SECONDS_PER_RATE=${LIVE_SECONDS:-6}
WORK=$(mktemp -d /tmp/swarmtap-live-bench.XXXXXX)
NS_TX=swbtx$$
NS_RX=swbrx$$
IF_TX=swbx$$
IF_RX=swbr$$

log() { printf '[live-bench] %s\n' "$*" >&2; }
die() { printf '[live-bench] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
for t in ip tcpreplay tcprewrite mergecap python3; do
  command -v "$t" >/dev/null || die "$t is missing (bash tests/setup.sh)"
done
python3 -c 'import polars' 2>/dev/null || die "python3 cannot import polars"

if [ -n "${LIVE_SWARMTAP:-}" ]; then
  BIN=$LIVE_SWARMTAP
else
  log "building the release binary"
  (cd "$ROOT" && cargo build --release --quiet)
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/swarmtap
fi
[ -x "$BIN" ] || die "no binary at $BIN"

cleanup() {
  [ -n "${LIVE_PID:-}" ] && kill -9 "$LIVE_PID" 2>/dev/null || true
  ip netns del "$NS_TX" 2>/dev/null || true
  ip netns del "$NS_RX" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NS_TX"
ip netns add "$NS_RX"
ip link add "$IF_TX" netns "$NS_TX" type veth peer name "$IF_RX" netns "$NS_RX"
for pair in "$NS_TX:$IF_TX" "$NS_RX:$IF_RX"; do
  ns=${pair%%:*} dev=${pair##*:}
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
  ip netns exec "$ns" ip link set "$dev" up
  ip netns exec "$ns" ethtool -K "$dev" tso off gso off gro off >/dev/null 2>&1 || true
done

# The replayed traffic: every bundled capture, one after another (peer wire
# over TCP and uTP, MSE, trackers, DHT), ~60,000 packets, then copies moved
# to other addresses (tcprewrite --pnat) so that each copy is new traffic
# (distinct flows, real reassembly and decoding; a looped replay would be
# retransmissions after the first pass). The IPv6 capture is not moved.
COPIES=${LIVE_COPIES:-8}
mergecap -a -F pcap -w "$WORK/one.pcap" "$ROOT"/sample-pcaps/*.pcap
parts=("$WORK/one.pcap")
for k in $(seq 1 $((COPIES - 1))); do
  tcprewrite --pnat=10.99.0.0/16:10.$((100 + k)).0.0/16 --fixcsum -i "$WORK/one.pcap" -o "$WORK/copy$k.pcap"
  parts+=("$WORK/copy$k.pcap")
done
mergecap -a -F pcap -w "$WORK/all.pcap" "${parts[@]}"
rm -f "${parts[@]}"
N_FILE=$(python3 - "$WORK/all.pcap" <<'EOF'
import struct, sys
d = open(sys.argv[1], "rb").read()
n, off = 0, 24
while off + 16 <= len(d):
    incl = struct.unpack_from("<I", d, off + 8)[0]
    off += 16 + incl
    n += 1
print(n)
EOF
)
log "replay source: $N_FILE packets ($(du -h "$WORK/all.pcap" | cut -f1)): sample-pcaps/ in $COPIES copies"

clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

printf '%-10s %-10s %-10s %-10s %-10s %-10s %-10s %-8s %-8s\n' pps actual_pps Mbit/s sent captured ours kernel ifdrop cpu%

best=""
for pps in $RATES; do
  out=$WORK/out-$pps
  loops=$(( (pps * SECONDS_PER_RATE + N_FILE - 1) / N_FILE ))
  [ "$loops" -ge 1 ] || loops=1
  threads=()
  [ -n "${LIVE_THREADS:-}" ] && threads=(--threads "$LIVE_THREADS")
  ip netns exec "$NS_RX" "$BIN" live -i "$IF_RX" -o "$out" --rotate 1h --no-messages "${threads[@]}" \
    2>"$WORK/live-$pps.log" &
  LIVE_PID=$!
  for _ in $(seq 200); do [ -d "$out/capture_stats" ] && break; sleep 0.05; done
  t0=$(date +%s.%N); c0=$(cpu_ticks "$LIVE_PID")
  ip netns exec "$NS_TX" tcpreplay -i "$IF_TX" --pps "$pps" --loop "$loops" "$WORK/all.pcap" \
    >"$WORK/replay-$pps.log" 2>&1 || true
  sent=$(awk '/Actual:/ {print $2; exit}' "$WORK/replay-$pps.log")
  # What tcpreplay achieved (it shares the CPUs and may fall short).
  real_pps=$(awk '/Rated:/ {for (i = 1; i < NF; i++) if ($(i + 1) ~ /^pps/) {print int($i); exit}}' "$WORK/replay-$pps.log")
  sleep 0.5
  t1=$(date +%s.%N); c1=$(cpu_ticks "$LIVE_PID")
  kill -INT "$LIVE_PID"
  wait "$LIVE_PID" || true
  LIVE_PID=""
  cpu=$(python3 -c "print(round(100 * ($c1 - $c0) / $clk / ($t1 - $t0), 1))")
  read -r captured ours kernel ifdrop < <(python3 - "$out" <<'EOF'
import sys, polars as pl
s = pl.read_parquet(f"{sys.argv[1]}/capture_stats/**/*.parquet")
print(*(int(s[c].sum()) for c in ["n_packets", "n_dropped_ours", "n_dropped_kernel", "n_dropped_ifdrop"]))
EOF
)
  mbps=$(awk '/Rated:/ {for (i = 1; i < NF; i++) if ($(i + 1) ~ /^Mbps/) {print $i; exit}}' "$WORK/replay-$pps.log")
  printf '%-10s %-10s %-10s %-10s %-10s %-10s %-10s %-8s %-8s\n' "$pps" "$real_pps" "$mbps" "$sent" "$captured" \
    "$ours" "$kernel" "$ifdrop" "$cpu"
  if [ "$ours" = 0 ] && [ "$kernel" = 0 ] && [ "$captured" = "$sent" ]; then
    best="$real_pps pps ($mbps Mbit/s; asked $pps) with ${cpu}% CPU"
  else
    break
  fi
  rm -rf "$out"
done
if [ -n "$best" ]; then
  log "highest rate with zero drops: $best (100% = one core)"
else
  log "drops at every rate tried"
fi
