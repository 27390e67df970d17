#!/usr/bin/env bash
# Builds the benchmark captures from small real ones (see bench/README.md).
#
#   bash bench/captures.sh            # build what is missing, print the paths
#
# Everything goes under $BENCH_DIR (default: <repo>/target/bench/, ignored by
# git). A capture is rebuilt only when it, or its .meta file recording the
# recipe it was built with, is missing or out of date. The construction is
# deterministic: the same inputs always give byte-identical captures.
#
# Bulk peer wire ("bulk"): one "unit" = every tcoppi__BittorrentReconstituter
# capture (complete plaintext transfers between real clients, with their
# tracker announces) plus ntop__nDPI/bittorrent.pcap, each moved in time so
# they follow one another. Copy k of the unit gets its own addresses
# (tcprewrite --pnat: 10.0.0.0/24 -> 10.(1+k/256).(k%256).0/24 and
# 192.168.1.0/24 -> 172.(16+k/256).(k%256).0/24, checksums recomputed) and
# starts k*stride seconds later (editcap -t), stride = unit span / CONCURRENCY,
# so about CONCURRENCY copies are in flight at any moment. The copies are
# merged in time order (mergecap). bulk-1g has enough copies for >= 1 GiB,
# bulk-250m the first copies only, enough for >= 250 MB (same construction,
# fewer copies: its peak memory should be the same if memory is bounded by
# live flows).
#
# DHT ("dht"): one unit = the KRPC datagrams (what tshark's bt-dht heuristic
# dissector recognises) of camp0__incc/torrent-dht.pcap,
# terezaburianova__VUT-PDS/small.pcap and OISF__suricata-verify/input.pcap,
# one after another; copies moved to distinct addresses the same way
# (192.168.38.0/24, 192.168.1.0/24, 190.0.0.0/24 -> 10.(64+3*(k/256)+{0,1,2}).(k%256).0/24),
# enough copies for DHT_DATAGRAMS datagrams (default 500000); dht-125k is
# the same with a quarter of the copies.
#
# Mixed ("mixed", what is not ours): one unit = every Ethernet capture of
# the mixed corpus (Suricata's verification suite: hundreds of protocols,
# evasions, bad checksums) except the bittorrent-dht tests, in path order,
# each moved in time to follow the previous one (GAP seconds apart).
# Copies of the unit follow one another (copy k starts after copy k-1
# ends, so a 4-tuple that comes back is a new flow after the idle
# timeouts), enough for MIXED_BYTES (default 250 MB): mixed-250m.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench}
CORPUS=${BENCH_CORPUS:-$ROOT/../shared/corpus/public}
CONCURRENCY=${BENCH_CONCURRENCY:-8}
BULK_BIG_BYTES=${BENCH_BULK_BIG_BYTES:-1073741824}    # 1 GiB
BULK_SMALL_BYTES=${BENCH_BULK_SMALL_BYTES:-250000000} # 250 MB
DHT_DATAGRAMS=${BENCH_DHT_DATAGRAMS:-500000}
MIXED=${BENCH_MIXED:-$ROOT/../shared/corpus/mixed}
MIXED_BYTES=${BENCH_MIXED_BYTES:-250000000}
T0=1600000000   # fixed epoch the units start at (2020-09-13), for determinism
GAP=1.0         # seconds between the files of one unit
RECIPE_VERSION=2

CAPDIR=$BENCH_DIR/captures

log() { printf '[captures] %s\n' "$*" >&2; }
die() { printf '[captures] error: %s\n' "$*" >&2; exit 1; }

need_tools() {
    local t missing=()
    for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
    if ((${#missing[@]})); then
        die "missing tools: ${missing[*]} (apt-get install tcpreplay wireshark-common tshark)"
    fi
}
need_tools tcprewrite editcap mergecap capinfos tshark awk sha256sum

BULK_FILES=(
    tcoppi__BittorrentReconstituter/codemonkey.pcap
    tcoppi__BittorrentReconstituter/codemonkey2.pcap
    tcoppi__BittorrentReconstituter/codemonkey_and_testtxt.pcap
    tcoppi__BittorrentReconstituter/lookaway.pcap
    tcoppi__BittorrentReconstituter/mippo.pcap
    tcoppi__BittorrentReconstituter/test.txt.pcap
    ntop__nDPI/bittorrent.pcap
)
DHT_FILES=(
    camp0__incc/torrent-dht.pcap
    terezaburianova__VUT-PDS/small.pcap
    OISF__suricata-verify/input.pcap
)

# first and last packet time of a capture, "FIRST LAST" (seconds, 6 decimals)
time_span() { capinfos -a -e -S -T -r "$1" | awk -F'\t' '{print $2, $3}'; }
packets() { capinfos -c -T -r "$1" | awk -F'\t' '{print $2}'; }
fsize() { stat -c %s "$1"; }

# make_unit OUT FILE... : shift each file so they follow one another from T0
# (GAP seconds apart) and concatenate. Prints the unit's span in seconds.
make_unit() {
    local out=$1; shift
    local work; work=$(dirname "$out")/unit-parts
    rm -rf "$work"; mkdir -p "$work"
    local off=0 i=0 f first last dt parts=()
    for f in "$@"; do
        read -r first last < <(time_span "$f")
        dt=$(awk -v t0="$T0" -v off="$off" -v first="$first" 'BEGIN{printf "%.6f", t0 + off - first}')
        editcap -F pcap -t "$dt" "$f" "$work/$i.pcap"
        parts+=("$work/$i.pcap")
        off=$(awk -v off="$off" -v first="$first" -v last="$last" -v gap="$GAP" 'BEGIN{printf "%.6f", off + (last - first) + gap}')
        i=$((i + 1))
    done
    mergecap -F pcap -a -w "$out" "${parts[@]}"
    rm -rf "$work"
    echo "$off"
}

# merge_chrono OUT FILE... : time-ordered merge, in chunks of 64 files
merge_chrono() {
    local out=$1; shift
    local files=("$@")
    if ((${#files[@]} <= 64)); then
        mergecap -F pcap -w "$out" "${files[@]}"
        return
    fi
    local tmp="$out.chunks" i=0 chunks=()
    rm -rf "$tmp"; mkdir -p "$tmp"
    while ((i < ${#files[@]})); do
        chunks+=("$tmp/$((i / 64)).pcap")
        mergecap -F pcap -w "${chunks[-1]}" "${files[@]:i:64}"
        i=$((i + 64))
    done
    merge_chrono "$out" "${chunks[@]}"
    rm -rf "$tmp"
}

# make_copies KIND UNIT N STRIDE OUTDIR : copy k on its own addresses, k*STRIDE later
make_copies() {
    local kind=$1 unit=$2 n=$3 stride=$4 dir=$5 k hi lo map dt
    # the address plan below gives every copy its own /24s up to this many copies
    ((n <= 256 * 63)) || die "$n copies: more than the address plan allows ($((256 * 63)))"
    mkdir -p "$dir"
    for ((k = 0; k < n; k++)); do
        hi=$((k / 256)); lo=$((k % 256))
        case $kind in
            bulk) map="10.0.0.0/24:10.$((1 + hi)).$lo.0/24,192.168.1.0/24:172.$((16 + hi)).$lo.0/24" ;;
            dht)  map="192.168.38.0/24:10.$((64 + 3 * hi)).$lo.0/24,192.168.1.0/24:10.$((65 + 3 * hi)).$lo.0/24,190.0.0.0/24:10.$((66 + 3 * hi)).$lo.0/24" ;;
        esac
        dt=$(awk -v k="$k" -v s="$stride" 'BEGIN{printf "%.6f", k * s}')
        tcprewrite --pnat="$map" --fixcsum -i "$unit" -o "$dir/$k.moved.pcap"
        editcap -F pcap -t "$dt" "$dir/$k.moved.pcap" "$dir/$k.pcap"
        rm -f "$dir/$k.moved.pcap"
    done
}

# up_to_date NAME RECIPE : capture and its meta exist and were built with RECIPE
up_to_date() {
    [[ -s $CAPDIR/$1.pcap && -s $CAPDIR/$1.meta ]] &&
        grep -qxF "recipe=$2" "$CAPDIR/$1.meta"
}

# write_meta NAME RECIPE COPIES UNIT_PACKETS [KEY=VALUE...]
write_meta() {
    local name=$1 recipe=$2 copies=$3; shift 3
    local f=$CAPDIR/$name.pcap
    {
        echo "recipe=$recipe"
        echo "file=$f"
        echo "bytes=$(fsize "$f")"
        echo "packets=$(packets "$f")"
        echo "copies=$copies"
        read -r first last < <(time_span "$f")
        echo "duration_s=$(awk -v a="$first" -v b="$last" 'BEGIN{printf "%.3f", b - a}')"
        local kv; for kv in "$@"; do echo "$kv"; done
        echo "sha256=$(sha256sum "$f" | cut -d' ' -f1)"
    } >"$CAPDIR/$name.meta.tmp"
    mv "$CAPDIR/$name.meta.tmp" "$CAPDIR/$name.meta"
}

check_inputs() {
    local f
    [[ -d $CORPUS ]] || die "corpus not found: $CORPUS (set BENCH_CORPUS)"
    for f in "$@"; do [[ -r $CORPUS/$f ]] || die "missing input capture: $CORPUS/$f"; done
}

build_bulk() {
    local recipe="v$RECIPE_VERSION bulk conc=$CONCURRENCY big=$BULK_BIG_BYTES small=$BULK_SMALL_BYTES"
    if up_to_date bulk-1g "$recipe" && up_to_date bulk-250m "$recipe"; then
        log "bulk captures up to date"
        return
    fi
    check_inputs "${BULK_FILES[@]}"
    local work=$BENCH_DIR/work-bulk t_start=$SECONDS
    rm -rf "$work"; mkdir -p "$work" "$CAPDIR"
    local inputs=() f; for f in "${BULK_FILES[@]}"; do inputs+=("$CORPUS/$f"); done
    log "bulk: building the unit from ${#inputs[@]} real captures"
    local span; span=$(make_unit "$work/unit.pcap" "${inputs[@]}")
    local ubytes=$(($(fsize "$work/unit.pcap") - 24)) upk; upk=$(packets "$work/unit.pcap")
    local n_big=$(((BULK_BIG_BYTES + ubytes - 1) / ubytes))
    local n_small=$(((BULK_SMALL_BYTES + ubytes - 1) / ubytes))
    local stride; stride=$(awk -v s="$span" -v c="$CONCURRENCY" 'BEGIN{printf "%.6f", s / c}')
    local tcp_convs; tcp_convs=$(tshark -n -q -r "$work/unit.pcap" -z conv,tcp 2>/dev/null | grep -c '<->' || true)
    log "bulk: unit = $upk packets, $ubytes bytes, span ${span}s, $tcp_convs TCP connections; $n_big copies (small: $n_small), stride ${stride}s"
    make_copies bulk "$work/unit.pcap" "$n_big" "$stride" "$work/copies"
    local copies=() k; for ((k = 0; k < n_big; k++)); do copies+=("$work/copies/$k.pcap"); done
    log "bulk: merging $n_small copies -> bulk-250m.pcap"
    merge_chrono "$CAPDIR/bulk-250m.pcap.tmp" "${copies[@]:0:n_small}"
    mv "$CAPDIR/bulk-250m.pcap.tmp" "$CAPDIR/bulk-250m.pcap"
    write_meta bulk-250m "$recipe" "$n_small" "tcp_connections=$((tcp_convs * n_small))" "unit_packets=$upk" "stride_s=$stride"
    log "bulk: merging $n_big copies -> bulk-1g.pcap"
    merge_chrono "$CAPDIR/bulk-1g.pcap.tmp" "${copies[@]}"
    mv "$CAPDIR/bulk-1g.pcap.tmp" "$CAPDIR/bulk-1g.pcap"
    write_meta bulk-1g "$recipe" "$n_big" "tcp_connections=$((tcp_convs * n_big))" "unit_packets=$upk" "stride_s=$stride"
    rm -rf "$work"
    log "bulk: done in $((SECONDS - t_start)) s"
}

build_dht() {
    local recipe="v$RECIPE_VERSION dht conc=$CONCURRENCY datagrams=$DHT_DATAGRAMS"
    if up_to_date dht-500k "$recipe" && up_to_date dht-125k "$recipe"; then
        log "DHT captures up to date"
        return
    fi
    check_inputs "${DHT_FILES[@]}"
    local work=$BENCH_DIR/work-dht t_start=$SECONDS
    rm -rf "$work"; mkdir -p "$work/krpc" "$CAPDIR"
    local inputs=() f i=0
    for f in "${DHT_FILES[@]}"; do
        # keep the KRPC datagrams only (tshark's bt-dht heuristic dissector)
        tshark -n -r "$CORPUS/$f" --enable-heuristic bittorrent_dht_udp -Y bt-dht \
            -F pcap -w "$work/krpc/$i.pcap" 2>/dev/null
        inputs+=("$work/krpc/$i.pcap"); i=$((i + 1))
    done
    local span; span=$(make_unit "$work/unit.pcap" "${inputs[@]}")
    local upk; upk=$(packets "$work/unit.pcap")
    local n_big=$(((DHT_DATAGRAMS + upk - 1) / upk))
    local n_small=$(((n_big + 3) / 4))
    local stride; stride=$(awk -v s="$span" -v c="$CONCURRENCY" 'BEGIN{printf "%.6f", s / c}')
    log "dht: unit = $upk KRPC datagrams, span ${span}s; $n_big copies (small: $n_small), stride ${stride}s"
    make_copies dht "$work/unit.pcap" "$n_big" "$stride" "$work/copies"
    local copies=() k; for ((k = 0; k < n_big; k++)); do copies+=("$work/copies/$k.pcap"); done
    merge_chrono "$CAPDIR/dht-125k.pcap.tmp" "${copies[@]:0:n_small}"
    mv "$CAPDIR/dht-125k.pcap.tmp" "$CAPDIR/dht-125k.pcap"
    write_meta dht-125k "$recipe" "$n_small" "krpc_datagrams=$((upk * n_small))" "unit_packets=$upk" "stride_s=$stride"
    merge_chrono "$CAPDIR/dht-500k.pcap.tmp" "${copies[@]}"
    mv "$CAPDIR/dht-500k.pcap.tmp" "$CAPDIR/dht-500k.pcap"
    write_meta dht-500k "$recipe" "$n_big" "krpc_datagrams=$((upk * n_big))" "unit_packets=$upk" "stride_s=$stride"
    rm -rf "$work"
    log "dht: done in $((SECONDS - t_start)) s"
}

build_mixed() {
    local recipe="v$RECIPE_VERSION mixed bytes=$MIXED_BYTES"
    if up_to_date mixed-250m "$recipe"; then
        log "mixed capture up to date"
        return
    fi
    [[ -d $MIXED ]] || die "mixed corpus not found: $MIXED (set BENCH_MIXED)"
    local work=$BENCH_DIR/work-mixed t_start=$SECONDS
    rm -rf "$work"; mkdir -p "$work/parts" "$CAPDIR"
    # Ethernet captures with at least one packet, outside the DHT tests,
    # spanning at most an hour (10 span years: clock jumps inside them);
    # one capinfos and one awk for all of them, then one editcap each.
    local list=$work/list.tsv f dt i=0 parts=() span
    find "$MIXED" -type f \( -name '*.pcap' -o -name '*.pcapng' \) | grep -v '/bittorrent-dht' | LC_ALL=C sort |
        tr '\n' '\0' | { xargs -0 capinfos -T -r -E -c -a -e -S 2>/dev/null || true; } |
        awk -F'\t' -v t0="$T0" -v gap="$GAP" '
            $2 == "ether" && $3 ~ /^[1-9][0-9]*$/ && $4 ~ /^[0-9.]+$/ && $5 ~ /^[0-9.]+$/ && $5 - $4 <= 3600 {
                printf "%s\t%.6f\n", $1, t0 + off - $4; off += ($5 - $4) + gap }
            END { printf "SPAN\t%.6f\n", off }' >"$list"
    while IFS=$'\t' read -r f dt; do
        [[ $f == SPAN ]] && { span=$dt; continue; }
        if editcap -F pcap -t "$dt" "$f" "$work/parts/$i.pcap" 2>/dev/null; then
            parts+=("$work/parts/$i.pcap")
        else
            rm -f "$work/parts/$i.pcap"
        fi
        i=$((i + 1))
    done <"$list"
    mergecap -F pcap -a -w "$work/unit.pcap" "${parts[@]}"
    rm -rf "$work/parts"
    local ubytes=$(($(fsize "$work/unit.pcap") - 24)) upk; upk=$(packets "$work/unit.pcap")
    local n_copies=$(((MIXED_BYTES + ubytes - 1) / ubytes)) k copies=()
    log "mixed: unit = ${#parts[@]} captures, $upk packets, $ubytes bytes, span ${span}s; $n_copies copies"
    for ((k = 0; k < n_copies; k++)); do
        dt=$(awk -v k="$k" -v s="$span" -v gap="$GAP" 'BEGIN{printf "%.6f", k * (s + gap)}')
        editcap -F pcap -t "$dt" "$work/unit.pcap" "$work/$k.pcap"
        copies+=("$work/$k.pcap")
    done
    mergecap -F pcap -a -w "$CAPDIR/mixed-250m.pcap.tmp" "${copies[@]}"
    mv "$CAPDIR/mixed-250m.pcap.tmp" "$CAPDIR/mixed-250m.pcap"
    write_meta mixed-250m "$recipe" "$n_copies" "unit_captures=${#parts[@]}" "unit_packets=$upk" "span_s=$span"
    rm -rf "$work"
    log "mixed: done in $((SECONDS - t_start)) s"
}

main() {
    mkdir -p "$CAPDIR"
    case ${1:-all} in
        bulk) build_bulk ;;
        dht) build_dht ;;
        mixed) build_mixed ;;
        all) build_bulk; build_dht; build_mixed ;;
        *) die "usage: $0 [all|bulk|dht|mixed]" ;;
    esac
    ls -l "$CAPDIR"/*.pcap >&2
}

# run main unless sourced
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
