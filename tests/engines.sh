#!/usr/bin/env bash
# Engine tests (issue 17): the sample dataset and a live (hive) dataset
# loaded in pandas 3 and 2 (NumPy and pyarrow dtypes), pyarrow, DuckDB and
# PySpark in local mode, with three real queries each (tests/engines.py).
# Venvs: target/engines-venv (pandas 3 + every engine) and
# target/engines-pandas2-venv (pandas 2); Java from tests/setup.sh.
# The live dataset needs root (a network namespace of its own, tcpreplay
# onto its loopback); without root it is skipped and said so.
# Prints "N passed, M failed" and exits 1 when anything failed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bin="${SWARMTAP_BIN:-$here/target/debug/swarmtap}"
[ -x "$bin" ] || cargo build --quiet
venv() { # dir requirements
  if [ ! -x "$1/bin/python" ]; then
    python3 -m venv "$1"
  fi
  "$1/bin/pip" install -q -r "$2"
}
v3="${SWARMTAP_ENGINES_VENV:-$here/target/engines-venv}"
v2="${SWARMTAP_ENGINES_PANDAS2_VENV:-$here/target/engines-pandas2-venv}"
venv "$v3" tests/engines-requirements.txt
venv "$v2" tests/engines-pandas2-requirements.txt

tmp="$(mktemp -d)"
ns=""
cleanup() {
  [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# The bundled samples (no input named, stdin not a pipe).
"$bin" analyze -o "$tmp/samples" </dev/null 2>"$tmp/analyze.log" || { cat "$tmp/analyze.log" >&2; exit 1; }
live=()
if [ "$(id -u)" = 0 ] && command -v tcpreplay >/dev/null && ip netns add "swt-eng-$$" 2>/dev/null; then
  ns="swt-eng-$$"
  ip -n "$ns" link set lo up
  ip netns exec "$ns" "$bin" live -i lo --rotate 1s --duration 6s --torrents sample-pcaps \
    --sensor engines -o "$tmp/live" 2>"$tmp/live.log" &
  pid=$!
  sleep 1.5
  for f in http.pcap magnet.pcap udp.pcap; do
    ip netns exec "$ns" tcpreplay -q -i lo --mbps 20 "sample-pcaps/$f" >/dev/null 2>&1
  done
  wait "$pid" || { cat "$tmp/live.log" >&2; exit 1; }
  live=("$tmp/live")
else
  echo "engines: not root (or no tcpreplay/netns): the live (hive) dataset is skipped"
fi

total_p=0
total_f=0
tally() { # log
  local line p f
  line="$(tail -n 1 "$1")"
  p="${line%% passed*}"
  f="${line#*passed, }"
  f="${f%% failed*}"
  if [[ "$p" =~ ^[0-9]+$ && "$f" =~ ^[0-9]+$ ]]; then
    total_p=$((total_p + p))
    total_f=$((total_f + f))
  else
    total_f=$((total_f + 1))
  fi
}
set +e
"$v3/bin/python" tests/engines.py --expect-rows "$tmp/samples" | tee "$tmp/r1"
tally "$tmp/r1"
"$v2/bin/python" tests/engines.py --engines pyarrow,pandas --expect-rows "$tmp/samples" | tee "$tmp/r2"
tally "$tmp/r2"
if [ "${#live[@]}" -gt 0 ]; then
  "$v3/bin/python" tests/engines.py "${live[@]}" | tee "$tmp/r3"
  tally "$tmp/r3"
  "$v2/bin/python" tests/engines.py --engines pyarrow,pandas "${live[@]}" | tee "$tmp/r4"
  tally "$tmp/r4"
fi
set -e
echo "engines: $total_p passed, $total_f failed"
[ "$total_f" = 0 ]
