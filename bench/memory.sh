#!/usr/bin/env bash
# Peak memory under hostile and huge flow counts (issues 15 and 16): peak
# RSS (/usr/bin/time -v, median of BENCH_RUNS) and the flows' accounted
# memory (capture_stats.max_flow_memory) for each case, for one or more
# swarmtap binaries. Captures are built by bench/hostile_gen.py
# (deterministic but for the dht case) and cached.
#
#   bash bench/memory.sh BIN [BIN...]
#
# Cases (default limits unless said):
#   synpartial-260k  260,000 x (SYN + 67-byte partial handshake), 54 MB
#   synpartial-600k  600,000 of them, 124 MB
#   syn1-200k        200,000 x (SYN + 1 byte)
#   established-1m   1,000,000 concurrent idle connections (SYN, SYN-ACK,
#                    ACK), all open at the end, with --max-flows 2000000
#                    --max-memory 4G so that none is evicted; per-flow cost
#                    = (its RSS - established-1k's RSS) / 1,000,000
#                    (target: <= 1 KiB)
#   established-1k   the baseline for that: 1,000 of them
#
# Environment: BENCH_RUNS=3, BENCH_DIR=<repo>/target/bench.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench}
RUNS=${BENCH_RUNS:-3}
CAPDIR=$BENCH_DIR/captures
WORK=$BENCH_DIR/memory
mkdir -p "$CAPDIR" "$WORK"
(($# > 0)) || { echo "usage: bench/memory.sh BIN [BIN...]" >&2; exit 2; }

cap() { # cap NAME KIND N
    local f=$CAPDIR/$1.pcap
    [[ -s $f ]] || python3 "$ROOT/bench/hostile_gen.py" "$2" "$3" "$f"
    echo "$f"
}
declare -A FILE ARGS
FILE[synpartial-260k]=$(cap synpartial-260k synpartial 260000)
FILE[synpartial-600k]=$(cap synpartial-600k synpartial 600000)
FILE[syn1-200k]=$(cap syn1-200k syn1 200000)
FILE[established-1k]=$(cap established-1k established 1000)
FILE[established-1m]=$(cap established-1m established 1000000)
# (--max-memory exists from session 5 on; older binaries get --max-flows only)
ARGS[established-1k]="--max-flows 2000000"
ARGS[established-1m]="--max-flows 2000000"
CASES=(synpartial-260k synpartial-600k syn1-200k established-1k established-1m)

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

printf '%-10s %-16s %10s %12s %10s %8s\n' binary case rss_mib rss_kib account_mib evicted
for bin in "$@"; do
    name=$(basename "$bin")
    declare -A RSS=()
    big=""
    if "$bin" analyze --help 2>/dev/null | grep -q -- --max-memory; then big="--max-memory 4G"; fi
    for c in "${CASES[@]}"; do
        vals=()
        acc=-1 ev=-1
        for ((r = 1; r <= RUNS; r++)); do
            out=$WORK/out-$name-$c
            rm -rf "$out"
            # shellcheck disable=SC2086
            /usr/bin/time -v -o "$WORK/time.txt" "$bin" analyze "${FILE[$c]}" -o "$out" ${ARGS[$c]:-} \
                $([[ $c == established-* ]] && echo "$big") \
                >/dev/null 2>"$WORK/err.txt" || { cat "$WORK/err.txt" >&2; exit 1; }
            vals+=("$(awk -F': ' '/Maximum resident/{print $2}' "$WORK/time.txt")")
        done
        # the account and evictions, from capture_stats (columns absent in
        # binaries before session 5)
        rm -rf "$WORK/cs"
        if "$bin" export "$out" --format ndjson --table capture_stats -o "$WORK/cs" >/dev/null 2>&1; then
            read -r acc ev < <(python3 -c '
import json, pathlib, sys
r = json.loads(next(pathlib.Path(sys.argv[1]).glob("capture_stats*")).read_text().splitlines()[0])
print(r.get("max_flow_memory", -1), r.get("n_flows_evicted", -1))' "$WORK/cs" 2>/dev/null || echo "-1 -1")
        fi
        med=$(printf '%s\n' "${vals[@]}" | median)
        RSS[$c]=$med
        accm=$(awk -v a="$acc" 'BEGIN{ if (a < 0) print "-"; else printf "%.1f", a / 1048576 }')
        printf '%-10s %-16s %10.1f %12d %10s %8s\n' "$name" "$c" "$(awk -v k="$med" 'BEGIN{print k / 1024}')" "$med" "$accm" "$ev"
    done
    per=$(awk -v a="${RSS[established-1m]}" -v b="${RSS[established-1k]}" 'BEGIN{printf "%.0f", (a - b) * 1024 / 999000}')
    echo "$name: 1 M concurrent flows cost $per bytes each above the 1 k baseline (target <= 1024)"
done
