#!/usr/bin/env bash
# CI's fuzz stage: builds every fuzz target with cargo-fuzz (nightly) and runs
# each for a bounded time from its committed seed corpus (fuzz/seeds/TARGET, made by fuzz/seeds/make_seeds.py).
# Any crash, panic, leak, per-input timeout or memory blow-up fails the stage
# (libFuzzer exits non-zero; the input is kept under fuzz/artifacts/ or
# fuzz/pipeline/artifacts/ and its path printed).
#
# Two cargo-fuzz projects:
#   fuzz/           parser targets; link only swarmtap-wire (build ~1.5 min)
#   fuzz/pipeline/  reassembly model, uTP tracker, whole pipeline; link
#                   swarmtap with polars (the long build)
#
# Times (seconds of fuzzing per target) can be overridden:
#   FUZZ_PARSER_SECS (default 20), FUZZ_REASSEMBLY_SECS (60),
#   FUZZ_UTP_TRACKER_SECS (30), FUZZ_PIPELINE_SECS (30).
# A summary line per target (executions, seconds) is printed at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

parser_secs="${FUZZ_PARSER_SECS:-20}"
declare -A secs=(
  [reassembly]="${FUZZ_REASSEMBLY_SECS:-60}"
  [utp_tracker]="${FUZZ_UTP_TRACKER_SECS:-30}"
  [pipeline]="${FUZZ_PIPELINE_SECS:-30}"
)
# Longest input per target: a few KB for datagram parsers, more for streams
# and captures (the largest committed seed must fit).
declare -A max_len=(
  [peer_wire]=16384 [tracker_http]=8192 [metainfo]=16384 [bencode]=8192
  [reassembly]=16384 [utp_tracker]=8192 [pipeline]=16384
)

# libFuzzer options for one target only. The pipeline target runs the whole
# analysis, so every input lights up tens of thousands of coverage features
# (ft: ~60,000): the entropic schedule's per-feature bookkeeping then took
# 38 % of its time (perf, vector inserts in UpdateFeatureFrequency); with
# the plain schedule it ran 1,244 inputs in 40 s against 159.
declare -A extra=(
  [pipeline]="-entropic=0"
)

start=$(date +%s)
# What a fresh machine lacks: the nightly toolchain and cargo-fuzz.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
echo "fuzz: tools ready after $(($(date +%s) - start)) s"

summary=()
# run DIR TARGET SECONDS [cargo-fuzz build options...]
run() {
  local dir="$1" t="$2" s="$3"
  shift 3
  local corpus="$dir/target/ci-corpus/$t" log
  mkdir -p "$corpus"
  log="$(mktemp)"
  local status=0
  # The fresh corpus directory comes first: new inputs go there, the
  # committed seeds stay as they are.
  cargo +nightly fuzz run --fuzz-dir "$dir" "$@" "$t" "$corpus" "fuzz/seeds/$t" -- \
    -max_total_time="$s" -max_len="${max_len[$t]:-4096}" -timeout=120 -rss_limit_mb=2048 \
    -print_final_stats=1 ${extra[$t]:-} >"$log" 2>&1 || status=$?
  local execs
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  summary+=("$(printf '%-16s %10s execs in %3s s' "$t" "${execs:-?}" "$s")")
  if [ "$status" != 0 ]; then
    tail -n 60 "$log"
    echo "fuzz: $t FAILED (exit $status); the input is in $dir/artifacts/$t/" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}

t0=$(date +%s)
cargo +nightly fuzz build --fuzz-dir fuzz
echo "fuzz: parser targets built in $(($(date +%s) - t0)) s"
for t in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
  run fuzz "$t" "$parser_secs"
done

# The swarmtap-linked targets: no sanitizer (swarmtap and its parsers forbid
# unsafe code; a panic, a leak of memory past the RSS limit or a hang is
# what these targets look for) and 16 codegen units, which together halve
# the polars build. No comparison tracing either: in the pipeline target
# it was half of the time left (perf: libFuzzer's HandleCmp, its table of
# recent compares and value map), spent on the comparisons of code the
# parser targets in fuzz/ already fuzz with tracing on; these targets look
# for what the layers do together, found by coverage alone.
pipeline_opts=(--sanitizer none --codegen-units 16 --no-trace-compares)
t0=$(date +%s)
cargo +nightly fuzz build --fuzz-dir fuzz/pipeline "${pipeline_opts[@]}"
echo "fuzz: pipeline targets built in $(($(date +%s) - t0)) s"
for t in $(cargo +nightly fuzz list --fuzz-dir fuzz/pipeline); do
  run fuzz/pipeline "$t" "${secs[$t]:-30}" "${pipeline_opts[@]}"
done

printf '%s\n' "${summary[@]}"
echo "fuzz: all targets passed in $(($(date +%s) - start)) s"
