#!/usr/bin/env bash
# Merge benchmark (issue 19): a day of a tap as 100 hourly datasets, merged.
#
# bulk-1g (bench/captures.sh) is cut into 100 time pieces (editcap -i), each
# piece analysed alone (as an hourly rotation would be) and laid out as a
# live dataset (DIR/<table>/date=…/hour=…/part-0.parquet), then
# `swarmtap merge` of the 100 datasets is timed (wall, user+sys CPU, peak
# RSS from /usr/bin/time -v; median of BENCH_RUNS). The merged dataset is
# compared with one analyze of the whole capture (peers, confirmed
# downloads, connections).
#
#   bash bench/merge.sh
#   BENCH_CAPTURE=path/to/bulk-1g.pcap BENCH_SWARMTAP=target/release/swarmtap bash bench/merge.sh
#
# Settings: BENCH_PIECES (default 100), BENCH_RUNS (default 3), BENCH_DIR
# (default target/bench), BENCH_CAPTURE (default $BENCH_DIR/captures/bulk-1g.pcap,
# built by bench/captures.sh when missing), BENCH_SWARMTAP (skip the build).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-target/bench}
PIECES=${BENCH_PIECES:-100}
RUNS=${BENCH_RUNS:-3}
CAP=${BENCH_CAPTURE:-$BENCH_DIR/captures/bulk-1g.pcap}
log() { echo "merge-bench: $*" >&2; }
for t in editcap capinfos /usr/bin/time; do
    command -v "$t" >/dev/null || { log "needs $t"; exit 1; }
done
if [[ ! -r $CAP ]]; then
    log "building the captures (bench/captures.sh)"
    bash bench/captures.sh
fi
if [[ -n ${BENCH_SWARMTAP:-} ]]; then
    BIN=$BENCH_SWARMTAP
else
    log "release build"
    nice -n 19 cargo build --release -q
    BIN=target/release/swarmtap
fi
WORK=$BENCH_DIR/merge
rm -rf "$WORK"
mkdir -p "$WORK/pieces" "$WORK/datasets"

# Cut into PIECES time pieces of equal duration.
read -r first last < <(capinfos -a -e -S -T -r "$CAP" | awk -F'\t' '{print $2, $3}')
span=$(awk -v a="$first" -v b="$last" 'BEGIN{printf "%.6f", b - a}')
interval=$(awk -v s="$span" -v n="$PIECES" 'BEGIN{printf "%.6f", s / n + 0.000001}')
log "cutting $CAP (${span} s) into $PIECES pieces of ${interval} s"
editcap -i "$interval" "$CAP" "$WORK/pieces/p.pcap" >/dev/null
mapfile -t files < <(ls "$WORK/pieces/"*.pcap | sort)
log "${#files[@]} pieces"

# Analyse each piece; lay it out as an hourly live dataset.
t0=$SECONDS
k=0
for f in "${files[@]}"; do
    d=$WORK/datasets/h$(printf %03d "$k")
    "$BIN" analyze "$f" -o "$d.tmp" --sensor tap --threads 1 2>/dev/null
    day=$((6 + k / 24)); hour=$((k % 24))
    mkdir -p "$d"
    for p in "$d.tmp"/*.parquet; do
        t=$(basename "$p" .parquet)
        part="$d/$t/date=2026-12-$(printf %02d "$day")/hour=$(printf %02d "$hour")"
        mkdir -p "$part"
        mv "$p" "$part/part-0.parquet"
    done
    rm -rf "$d.tmp"
    k=$((k + 1))
done
log "analysed ${#files[@]} pieces in $((SECONDS - t0)) s"
rm -rf "$WORK/pieces"

# Merge, timed.
results=()
for ((r = 1; r <= RUNS; r++)); do
    rm -rf "$WORK/merged"
    /usr/bin/time -v -o "$WORK/time.txt" "$BIN" merge "$WORK"/datasets/h* -o "$WORK/merged" 2>"$WORK/merge.log"
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$WORK/time.txt")
    cpu=$(awk -F': ' '/User time/{u=$2} /System time/{s=$2} END{printf "%.2f", u+s}' "$WORK/time.txt")
    rss=$(awk -F': ' '/Maximum resident/{printf "%.0f", $2/1024}' "$WORK/time.txt")
    log "run $r: wall ${wall} s, cpu ${cpu} s, peak RSS ${rss} MiB"
    results+=("$wall $cpu $rss")
done
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
mw=$(printf '%s\n' "${results[@]}" | awk '{print $1}' | median)
mc=$(printf '%s\n' "${results[@]}" | awk '{print $2}' | median)
mr=$(printf '%s\n' "${results[@]}" | awk '{print $3}' | median)
tail -1 "$WORK/merge.log" >&2

# Against one run over the whole capture.
"$BIN" analyze "$CAP" -o "$WORK/whole" --sensor tap 2>/dev/null
count() { "$BIN" summary "$1" --format json | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['$2'])"; }
echo "pieces=${#files[@]} merge_wall_s=$mw merge_cpu_s=$mc peak_rss_mib=$mr load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
"$BIN" summary "$WORK/whole" --format json >"$WORK/whole.json"
"$BIN" summary "$WORK/merged" --format json >"$WORK/merged.json"
python3 - "$WORK/whole.json" "$WORK/merged.json" <<'EOF'
import json, sys
w, m = (json.load(open(p)) for p in sys.argv[1:3])
def flat(d, pre=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, pre + k + "."))
        elif isinstance(v, (int, float)):
            out[pre + k] = v
    return out
fw, fm = flat(w), flat(m)
for k in sorted(set(fw) & set(fm)):
    if any(s in k for s in ("peers", "connections", "confirmed", "torrents", "flagged", "rows.")):
        print(f"{k}: whole={fw[k]} merged={fm[k]}")
EOF
