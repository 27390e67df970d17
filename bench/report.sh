#!/usr/bin/env bash
# Times `swarmtap report` on the dataset of the 1 GB bulk capture (issue 20:
# the page must be written in under 5 s and weigh under 20 MB).
#
#   bash bench/report.sh                 # capture (cached), release build, dataset, runs
#   BENCH_RUNS=9 bash bench/report.sh    # more runs (default 5; the median is reported)
#
# BENCH_SWARMTAP=PATH measures that binary instead of building one;
# BENCH_DIR (default target/bench) and BENCH_CORPUS as for bench/run.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench}
RUNS=${BENCH_RUNS:-5}
cd "$ROOT"

bash bench/captures.sh bulk
CAP=$BENCH_DIR/captures/bulk-1g.pcap
if [[ -n ${BENCH_SWARMTAP:-} ]]; then
    BIN=$BENCH_SWARMTAP
else
    cargo build --release --bin swarmtap >&2
    mkdir -p "$BENCH_DIR/bin"
    cp target/release/swarmtap "$BENCH_DIR/bin/swarmtap-report"
    BIN=$BENCH_DIR/bin/swarmtap-report
fi
DS=$BENCH_DIR/report/bulk-1g
OUT=$BENCH_DIR/report/bulk-1g.html
rm -rf "$DS"
mkdir -p "$BENCH_DIR/report"
# The default analysis (per-message table included), as a user runs it.
"$BIN" analyze "$CAP" -o "$DS" >&2
ds_bytes=$(du -sb "$DS" | cut -f1)

times=()
for ((i = 1; i <= RUNS; i++)); do
    t0=$(date +%s.%N)
    "$BIN" report "$DS" -o "$OUT" 2>/dev/null
    t1=$(date +%s.%N)
    times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')")
done
median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
page=$(stat -c %s "$OUT")
charts=$(grep -o '<svg class="chart"' "$OUT" | wc -l)
printf 'report of bulk-1g: dataset %s bytes (%s), %d runs: %s s\n' "$ds_bytes" "$DS" "$RUNS" "${times[*]}"
printf 'median %.3f s (limit 5 s), page %s bytes (limit 20000000), %s charts\n' "$median" "$page" "$charts"
awk -v m="$median" -v p="$page" 'BEGIN { exit !(m < 5 && p < 20000000) }' && echo "verdict: within both limits" || echo "verdict: OVER a limit"
