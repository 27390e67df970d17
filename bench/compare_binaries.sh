#!/usr/bin/env bash
# Runs two swarmtap binaries over the same inputs and compares every output
# table with bench/compare_outputs.py (polars): the check that a performance
# change leaves the output unchanged.
#
#   bash bench/compare_binaries.sh OLD_BIN NEW_BIN [CAPTURE...]
#
# Without CAPTURE arguments: every capture in sample-pcaps/ and in
# ../shared/corpus/public, one run per file (with the .torrent files of
# its directory), plus each directory as one run. Every input is run with
# --threads 1 and --threads 2 for the new binary (the old one with its
# default), with and without --no-messages for the bulk captures.
# Set COMPARE_DIR to keep the outputs somewhere else (default: a temp dir).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
old="$1"; new="$2"; shift 2
work="${COMPARE_DIR:-$(mktemp -d)}"
mkdir -p "$work"
corpus="${BENCH_CORPUS:-$root/../shared/corpus/public}"

inputs=()
if [ $# -gt 0 ]; then
    inputs=("$@")
else
    while IFS= read -r f; do inputs+=("$f"); done < <(
        find "$root/sample-pcaps" "$corpus" -type f \( -name '*.pcap' -o -name '*.pcapng' \) | sort)
    inputs+=("$root/sample-pcaps" "$corpus")
fi

fail=0
n=0
for inp in "${inputs[@]}"; do
    torrents=()
    if [ -d "$inp" ]; then tdir="$inp"; else tdir="$(dirname "$inp")"; fi
    if compgen -G "$tdir/*.torrent" >/dev/null; then torrents=(--torrents "$tdir"); fi
    for extra in "" "--no-messages"; do
        n=$((n + 1))
        a="$work/$n-old"; rm -rf "$a"
        "$old" analyze "$inp" -o "$a" ${torrents[@]+"${torrents[@]}"} $extra >/dev/null 2>"$work/$n-old.err" || true
        for t in 1 2; do
            b="$work/$n-new-t$t"; rm -rf "$b"
            "$new" analyze "$inp" -o "$b" --threads "$t" ${torrents[@]+"${torrents[@]}"} $extra >/dev/null 2>"$work/$n-new-t$t.err" || true
            if out="$(python3 "$here/compare_outputs.py" "$a" "$b")"; then
                echo "ok    $inp $extra --threads $t: $out"
            else
                echo "DIFF  $inp $extra --threads $t:"; echo "$out" | sed 's/^/      /'
                fail=1
            fi
        done
        rm -rf "$a" "$work"/$n-new-t*
    done
done
[ -z "${COMPARE_DIR:-}" ] && rm -rf "$work"
exit $fail
