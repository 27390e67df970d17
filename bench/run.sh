#!/usr/bin/env bash
# swarmtap benchmark: throughput and peak memory against tshark (and
# ndpiReader when installed) on large captures made of real BitTorrent
# traffic. See bench/README.md.
#
#   bash bench/run.sh
#
# Environment:
#   BENCH_RUNS=3          runs of each measurement (medians are reported)
#   BENCH_DIR=...         work/cache directory (default <repo>/target/bench)
#   BENCH_THREADS=N       pass --threads N to swarmtap (default: its own default)
#   BENCH_SWARMTAP=PATH   benchmark this binary instead of building one
#   BENCH_NO_SWARMTAP=1   measure the other tools only (e.g. while src/ does not build)
#   BENCH_NO_TSHARK=1     skip tshark (no ratios then)
#   BENCH_CORPUS=...      real captures (default <repo>/../shared/corpus/public)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench}
export BENCH_DIR
RUNS=${BENCH_RUNS:-3}
CAPDIR=$BENCH_DIR/captures
OUTDIR=$BENCH_DIR/out
RAW=$BENCH_DIR/raw.jsonl
RESULTS=$BENCH_DIR/results.json

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer (got '$RUNS')"

# ---- tools -----------------------------------------------------------------
missing=()
[[ -x /usr/bin/time ]] || missing+=("/usr/bin/time (apt-get install time)")
for t in tshark editcap mergecap capinfos tcprewrite python3; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
((${#missing[@]} == 0)) || die "missing: ${missing[*]} (apt-get install time tshark wireshark-common tcpreplay python3)"
NDPI=$(command -v ndpiReader || true)
[[ -n $NDPI ]] || log "ndpiReader not installed (apt-get install libndpi-bin): skipping nDPI"

# ---- 1. captures (cached) -----------------------------------------------------
t_cap=$SECONDS
bash "$ROOT/bench/captures.sh" all
log "captures ready ($((SECONDS - t_cap)) s)"
BULK_BIG=$CAPDIR/bulk-1g.pcap BULK_SMALL=$CAPDIR/bulk-250m.pcap
DHT_BIG=$CAPDIR/dht-500k.pcap DHT_SMALL=$CAPDIR/dht-125k.pcap
MIXED=$CAPDIR/mixed-250m.pcap

# ---- 2. swarmtap release build -----------------------------------------------------
SWARMTAP=""
if [[ ${BENCH_NO_SWARMTAP:-0} == 1 ]]; then
    log "BENCH_NO_SWARMTAP=1: not measuring swarmtap"
elif [[ -n ${BENCH_SWARMTAP:-} ]]; then
    [[ -x $BENCH_SWARMTAP ]] || die "BENCH_SWARMTAP=$BENCH_SWARMTAP is not an executable"
    SWARMTAP=$BENCH_SWARMTAP
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust, or set BENCH_SWARMTAP / BENCH_NO_SWARMTAP=1)"
    log "cargo build --release"
    if ! (cd "$ROOT" && cargo build --release --bin swarmtap) >"$BENCH_DIR/build.log" 2>&1; then
        tail -n 30 "$BENCH_DIR/build.log" >&2
        die "cargo build --release failed (log: $BENCH_DIR/build.log); rerun with BENCH_NO_SWARMTAP=1 to measure the other tools only"
    fi
    # benchmark a private copy: target/release/ may be rebuilt under us
    mkdir -p "$BENCH_DIR/bin"
    cp "$ROOT/target/release/swarmtap" "$BENCH_DIR/bin/swarmtap.tmp"
    mv "$BENCH_DIR/bin/swarmtap.tmp" "$BENCH_DIR/bin/swarmtap"
    SWARMTAP=$BENCH_DIR/bin/swarmtap
fi
THREAD_ARGS=()
if [[ -n ${BENCH_THREADS:-} ]]; then THREAD_ARGS=(--threads "$BENCH_THREADS"); fi

# ---- 3. measurements ---------------------------------------------------------------
# measure TOOL CAPTURE RUN CMD... : run CMD under /usr/bin/time -v, stdout to
# /dev/null, append one JSON line to $RAW. Wall time is taken with
# nanosecond clock reads around the run (time -v only has 10 ms resolution).
FAILED=0
measure() {
    local tool=$1 cap=$2 run=$3; shift 3
    local job; job=$tool@$(basename "$cap" .pcap)
    local tf=$BENCH_DIR/time.txt ef=$BENCH_DIR/logs/$job.$run.stderr
    local t0 t1 rc=0
    t0=$(date +%s%N)
    /usr/bin/time -v -o "$tf" "$@" >/dev/null 2>"$ef" || rc=$?
    t1=$(date +%s%N)
    local rss user sys
    rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$tf")
    user=$(awk -F': ' '/User time \(seconds\)/{print $2}' "$tf")
    sys=$(awk -F': ' '/System time \(seconds\)/{print $2}' "$tf")
    local wall; wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", (b - a) / 1e9}')
    printf '{"tool":"%s","capture":"%s","run":%d,"wall_s":%s,"user_s":%s,"sys_s":%s,"max_rss_kib":%s,"exit":%d}\n' \
        "$tool" "$(basename "$cap" .pcap)" "$run" "$wall" "${user:-0}" "${sys:-0}" "${rss:-0}" "$rc" >>"$RAW"
    if ((rc != 0)); then
        FAILED=1
        log "  $job run $run FAILED (exit $rc), stderr: $ef"
        tail -n 5 "$ef" >&2 || true
    else
        log "  $(printf '%-24s run %d: %8.3f s  %7d MiB' "$job" "$run" "$wall" "$((${rss:-0} / 1024))")"
    fi
}

st() { # st TOOL CAPTURE RUN [--no-messages]
    local tool=$1 cap=$2 run=$3; shift 3
    local out; out=$OUTDIR/$tool@$(basename "$cap" .pcap)
    rm -rf "$out"
    measure "$tool" "$cap" "$run" "$SWARMTAP" analyze "$cap" -o "$out" "${THREAD_ARGS[@]}" "$@"
}
ts_bulk() { measure "$1" "$2" "$3" tshark -n -r "$2" -Y bittorrent -T fields -e bittorrent.msg.type; }
ts_dht() {
    measure "$1" "$2" "$3" tshark -n -r "$2" --enable-heuristic bittorrent_dht_udp -Y bt-dht -T fields -e bt-dht.id
}
ndpi() { measure "$1" "$2" "$3" "$NDPI" -q -i "$2"; }
# Floors: what reading the capture costs before any analysis. floor-cat reads
# the file once from the page cache; floor-read is swarmtap with a BPF filter
# no packet passes (read, frame, filter; no decoding, flows or output rows).
# Their rates bound every ratio this machine can show against tshark.
floor_cat() { measure floor-cat "$1" "$2" cat "$1"; }
floor_read() {
    local out=$OUTDIR/floor-read@$(basename "$1" .pcap)
    rm -rf "$out"
    measure floor-read "$1" "$2" "$SWARMTAP" analyze "$1" -o "$out" -f "ip proto 255" "${THREAD_ARGS[@]}"
}

mkdir -p "$OUTDIR" "$BENCH_DIR/logs"
: >"$RAW"
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cores=$(nproc)"
    echo "cpu=$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
    echo "mem_gib=$(awk '/MemTotal/{printf "%.1f", $2 / 1048576}' /proc/meminfo)"
    echo "kernel=$(uname -r)"
    echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "runs=$RUNS"
    echo "threads=${BENCH_THREADS:-default}"
    echo "tshark=$(tshark -v 2>/dev/null | head -1)"
    if [[ -n $NDPI ]]; then echo "ndpi=$("$NDPI" -h 2>&1 | grep -m1 -o 'nDPI [0-9.]*' || true)"; fi
    if [[ -n $SWARMTAP ]]; then
        echo "swarmtap=$SWARMTAP"
        echo "swarmtap_rev=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo none)$(cd "$ROOT" && [[ -n $(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] && echo '+dirty' || true)"
        echo "rustc=$(rustc --version 2>/dev/null || echo unknown)"
    fi
} >"$BENCH_DIR/env.txt"

log "warming the page cache"
cat "$BULK_BIG" "$BULK_SMALL" "$DHT_BIG" "$DHT_SMALL" "$MIXED" >/dev/null

t_meas=$SECONDS
for ((r = 1; r <= RUNS; r++)); do
    log "round $r/$RUNS"
    if [[ -n $SWARMTAP ]]; then
        st swarmtap-nomsg "$BULK_BIG" "$r" --no-messages
        st swarmtap-msg "$BULK_BIG" "$r"
        floor_read "$BULK_BIG" "$r"
        floor_cat "$BULK_BIG" "$r"
        st swarmtap-nomsg "$BULK_SMALL" "$r" --no-messages
        st swarmtap-msg "$BULK_SMALL" "$r"
        floor_read "$BULK_SMALL" "$r"
        floor_cat "$BULK_SMALL" "$r"
    fi
    [[ ${BENCH_NO_TSHARK:-0} == 1 ]] || ts_bulk tshark "$BULK_SMALL" "$r"
    [[ -z $NDPI ]] || ndpi ndpi "$BULK_SMALL" "$r"
    if [[ -n $SWARMTAP ]]; then
        st swarmtap-nomsg "$DHT_BIG" "$r" --no-messages
        st swarmtap-msg "$DHT_BIG" "$r"
        floor_read "$DHT_BIG" "$r"
        floor_cat "$DHT_BIG" "$r"
        st swarmtap-nomsg "$DHT_SMALL" "$r" --no-messages
        st swarmtap-msg "$DHT_SMALL" "$r"
    fi
    [[ ${BENCH_NO_TSHARK:-0} == 1 ]] || ts_dht tshark "$DHT_BIG" "$r"
    [[ -z $NDPI ]] || ndpi ndpi "$DHT_BIG" "$r"
    # What is not ours: other protocols only (bench/captures.sh mixed).
    if [[ -n $SWARMTAP ]]; then
        st swarmtap-nomsg "$MIXED" "$r" --no-messages
        st swarmtap-msg "$MIXED" "$r"
    fi
    [[ -z $NDPI ]] || ndpi ndpi "$MIXED" "$r"
    # nDPI on the 1 GB file too (the issue's ratio is on the same file), and
    # the speed-up from a second worker thread (the output is the same).
    [[ -z $NDPI ]] || ndpi ndpi "$BULK_BIG" "$r"
    if [[ -n $SWARMTAP && -z ${BENCH_THREADS:-} ]]; then
        st swarmtap-t1 "$BULK_BIG" "$r" --no-messages --threads 1
        st swarmtap-t2 "$BULK_BIG" "$r" --no-messages --threads 2
    fi
done
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$BENCH_DIR/env.txt"

# what swarmtap wrote (rows per table of the last with-messages run), so the
# report can tell what work the timings cover
rm -f "$BENCH_DIR"/rows-*.txt
if [[ -n $SWARMTAP ]]; then
    for d in "$OUTDIR"/swarmtap-msg@*; do
        [[ -d $d ]] || continue
        "$SWARMTAP" summary "$d" 2>/dev/null |
            awk '/^table +rows$/ {on = 1; next} on && NF == 0 {on = 0} on && NF == 2 {print $1 "=" $2}' \
                >"$BENCH_DIR/rows-${d##*@}.txt" || true
    done
fi
log "measurements done ($((SECONDS - t_meas)) s)"

# ---- 4. medians, table, results.json ---------------------------------------------
python3 "$ROOT/bench/summarize.py" "$RAW" "$CAPDIR" "$BENCH_DIR/env.txt" "$RESULTS"
log "results: $RESULTS (raw runs: $RAW)"
((FAILED == 0)) || die "some runs failed (see above); their medians are left out"
