#!/usr/bin/env bash
# The Spark merge's time on 100 hourly datasets of one day's tap, local[2]
# (issue 19), beside `swarmtap merge` on the same input when the binary has
# it.
#
# Input (built once, cached in target/bench/merge-input/, or taken from
# BENCH_MERGE_INPUT=DIR whose subdirectories are the datasets, e.g. the one
# bench/merge.sh builds): one hour of a tap is the sample captures
# (sample-pcaps/*.pcap, 11 swarms, 42 MB) laid one after another; hour k is
# that hour moved k hours later (`editcap -t`), analysed on its own
# (`swarmtap analyze --sensor tap`), so the 100 datasets are what a tap
# rotating hourly writes (one dataset per hour; the same hosts every hour).
#
# Runs BENCH_RUNS (default 3) rounds; prints wall and CPU time (user+sys of
# the whole process tree: the Python driver, the JVM it starts and does not
# wait for, and the Python workers, all reaped by bench/reap.py) per round
# and the median, and the load average. Figures go in bench/README.md
# ("Merge on Spark"). bulk-1g in 100 hourly datasets: run bench/merge.sh
# first, then BENCH_MERGE_INPUT=target/bench/merge/datasets.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
runs="${BENCH_RUNS:-3}"
hours="${BENCH_HOURS:-100}"
bin="${BENCH_SWARMTAP:-$here/target/release/swarmtap}"
[ -x "$bin" ] || bin="$here/target/debug/swarmtap"
[ -x "$bin" ] || { echo "spark_merge bench: build swarmtap first (cargo build --release)" >&2; exit 1; }
venv="${SWARMTAP_ENGINES_VENV:-$here/target/engines-venv}"
[ -x "$venv/bin/python" ] || { echo "spark_merge bench: run tests/engines.sh once (its venv has pyspark)" >&2; exit 1; }
export PYSPARK_PYTHON="$venv/bin/python"
work="${BENCH_DIR:-$here/target/bench}"
input="${BENCH_MERGE_INPUT:-$work/merge-input}"

if [ -z "${BENCH_MERGE_INPUT:-}" ] && [ ! -f "$input/.done-$hours" ]; then
  rm -rf "$input"
  mkdir -p "$input/hour"
  # One hour: the samples one after another (each moved to start where the
  # previous ended), concatenated.
  t=0
  parts=()
  for f in sample-pcaps/*.pcap; do
    read -r a b < <(capinfos -T -r -S -a -e "$f" | cut -f2,3 | tr '\t' ' ')
    if [ "${#parts[@]}" = 0 ]; then start="$a"; t="$a"; fi
    shift_s=$(python3 -c "print(f'{$t - $a:.6f}')")
    editcap -t "$shift_s" "$f" "$input/hour/$(basename "$f")"
    parts+=("$input/hour/$(basename "$f")")
    t=$(python3 -c "print(f'{$t + ($b - $a) + 1:.6f}')")
  done
  mergecap -a -w "$input/hour.pcap" "${parts[@]}"
  rm -rf "$input/hour"
  for k in $(seq 0 $((hours - 1))); do
    d=$(printf '%03d' "$k")
    editcap -t $((k * 3600)) "$input/hour.pcap" "$input/h$d.pcap"
    nice -n 19 "$bin" analyze "$input/h$d.pcap" --torrents sample-pcaps --sensor tap -o "$input/ds/h$d" \
      --threads 1 2>/dev/null
    rm -f "$input/h$d.pcap"
  done
  touch "$input/.done-$hours"
fi
dsroot="$input/ds"
[ -d "$dsroot" ] || dsroot="$input"
mapfile -t dirs < <(find "$dsroot" -mindepth 1 -maxdepth 1 -type d | sort)
echo "spark_merge bench: ${#dirs[@]} datasets, $(du -sh "$dsroot" | cut -f1) of Parquet; load $(cut -d' ' -f1-3 /proc/loadavg)"

measure() { # label cmd...
  local out="$work/merge-$1.time"
  /usr/bin/time -f '%e %U %S' -o "$out" "${@:2}" >/dev/null 2>"$work/merge-$1.log" || {
    tail -20 "$work/merge-$1.log" >&2
    return 1
  }
  awk '{printf "%.1f %.1f\n", $1, $2 + $3}' "$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

spark_w=()
spark_c=()
emb_w=()
emb_c=()
has_merge=0
"$bin" merge --help >/dev/null 2>&1 && has_merge=1
for r in $(seq 1 "$runs"); do
  rm -rf "$work/merge-spark-out"
  # bench/reap.py: the driver does not wait for its JVM; as a subreaper it
  # reaps the JVM and every Python worker, so their CPU time is counted.
  read -r w c < <(measure spark python3 bench/reap.py nice -n 10 "$venv/bin/python" spark/merge.py \
    --master 'local[2]' -o "$work/merge-spark-out" "${dirs[@]}")
  spark_w+=("$w")
  spark_c+=("$c")
  echo "round $r: spark local[2] ${w} s wall, ${c} s CPU; load $(cut -d' ' -f1 /proc/loadavg)"
  if [ "$has_merge" = 1 ]; then
    rm -rf "$work/merge-emb-out"
    read -r w c < <(measure embedded nice -n 10 "$bin" merge "${dirs[@]}" -o "$work/merge-emb-out")
    emb_w+=("$w")
    emb_c+=("$c")
    echo "round $r: swarmtap merge ${w} s wall, ${c} s CPU"
  fi
done
echo "spark local[2]: median $(printf '%s\n' "${spark_w[@]}" | median) s wall, $(printf '%s\n' "${spark_c[@]}" | median) s CPU over $runs runs"
if [ "$has_merge" = 1 ]; then
  echo "swarmtap merge: median $(printf '%s\n' "${emb_w[@]}" | median) s wall, $(printf '%s\n' "${emb_c[@]}" | median) s CPU"
else
  echo "swarmtap merge: $bin has no merge subcommand"
fi
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
