#!/usr/bin/env bash
# Where swarmtap's time goes: perf profile of one `swarmtap analyze` run on a
# benchmark capture (built by bench/captures.sh, swarmtap by bench/run.sh).
#
#   bash bench/profile.sh [bulk-250m|bulk-1g|dht-500k|dht-125k] [extra swarmtap args...]
#
# Needs perf (apt-get install linux-perf). Writes $BENCH_DIR/perf-CAPTURE.data
# and prints the hottest symbols (self time) and the hottest call chains.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench}
CAP=${1:-bulk-250m}; shift || true
SWARMTAP=${BENCH_SWARMTAP:-$BENCH_DIR/bin/swarmtap}

die() { printf '[profile] error: %s\n' "$*" >&2; exit 1; }
command -v perf >/dev/null 2>&1 || die "perf not found (apt-get install linux-perf)"
[[ -x $SWARMTAP ]] || die "no swarmtap binary at $SWARMTAP (run bench/run.sh first, or set BENCH_SWARMTAP)"
[[ -s $BENCH_DIR/captures/$CAP.pcap ]] || die "no capture $BENCH_DIR/captures/$CAP.pcap (run bash bench/captures.sh)"

DATA=$BENCH_DIR/perf-$CAP.data
# report lines only, without perf's padding, at most 150 characters
clean() { grep -E '^ +[0-9]' | sed -E 's/[ -]+$//' | cut -c1-150; }
OUT=$BENCH_DIR/out/profile
rm -rf "$OUT"
# DWARF unwinding: the release build has line tables but no frame pointers
perf record -F 1999 --call-graph dwarf,16384 -o "$DATA" -- \
    "$SWARMTAP" analyze "$BENCH_DIR/captures/$CAP.pcap" -o "$OUT" "$@" >/dev/null 2>"$BENCH_DIR/perf-$CAP.stderr"

echo "== self time by symbol ($CAP)"
perf report -i "$DATA" --no-children --stdio --sort dso,symbol --percent-limit 0.7 -g none 2>/dev/null |
    clean | head -45
echo
echo "== self time by thread"
perf report -i "$DATA" --no-children --stdio --sort comm --percent-limit 0.5 -g none 2>/dev/null | clean | head -10
echo
echo "== inclusive time (children) by symbol"
perf report -i "$DATA" --children --stdio --sort symbol --percent-limit 3 -g none 2>/dev/null |
    clean | grep -v -e 'clone3' -e 'start_thread' -e 'thread_start' -e 'call_once' | head -40
