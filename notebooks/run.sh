#!/usr/bin/env bash
# Executes every notebook in notebooks/ (nbclient, through notebooks/run_notebooks.py) against:
#   sample      the bundled captures' output, written to target/nb-sample-out by
#               `swarmtap analyze` (no input = sample-pcaps/), where the notebooks' truth
#               checks run — or `dataset`: $SWARMTAP_DATASET when set, instead;
#   sample-hive the same dataset rewritten in the hive-partitioned layout of `swarmtap live`;
#   empty       the output for a capture without BitTorrent traffic (every table empty);
#   corpus      the output for other captures: ../shared/corpus/public with its .torrent
#               files (when ../shared is absent: a failure under SWARMTAP_REQUIRE_ALL,
#               else a skip recorded for tests/run-all.sh's list).
# The committed notebooks stay free of outputs: executed copies with their figures (also as
# PNG files) go to target/notebooks-out/<dataset>/. Prints one line per notebook × dataset
# and a closing `N passed, M failed`; exits non-zero on any failure.
#
#   bash notebooks/run.sh                 # everything above
#   SWARMTAP_DATASET=out bash notebooks/run.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
given=""
if [ -n "${SWARMTAP_DATASET:-}" ]; then  # made absolute before the cd below
  given="$(cd "$(dirname "$SWARMTAP_DATASET")" 2>/dev/null && pwd)/$(basename "$SWARMTAP_DATASET")" || given="$SWARMTAP_DATASET"
fi
cd "$here"

venv="$here/target/nb-venv"
py="$venv/bin/python"
if [ ! -x "$py" ]; then
  python3 -m venv "$venv"
fi
if ! "$py" -c 'import polars, numpy, matplotlib, nbclient, nbformat, ipykernel' 2>/dev/null; then
  "$venv/bin/pip" install -q -r notebooks/requirements.txt
fi

# The binary of this checkout: SWARMTAP_BIN when set, else the dev binary,
# brought up to date first (a no-op after the test suite built it). A
# release binary left from an earlier build is not used: it may be stale.
if [ -z "${SWARMTAP_BIN:-}" ]; then
  cargo build --quiet --bin swarmtap
  SWARMTAP_BIN="$here/target/debug/swarmtap"
fi
swarmtap() {
  "$SWARMTAP_BIN" "$@"
}

# analyze OUT [ARGS...]: runs `swarmtap analyze ARGS -o OUT`, its messages in OUT.log. On
# failure OUT is left absent and every notebook counts as failed on that dataset.
analyze() {
  local out="$1"
  shift
  rm -rf "$out"
  mkdir -p "$(dirname "$out")"
  # stdin from /dev/null: without inputs swarmtap reads a piped stdin.
  if swarmtap analyze "$@" -o "$out" >"$out.log" 2>&1 </dev/null; then
    echo "run.sh: wrote $out (swarmtap analyze ${*:-[bundled sample-pcaps/]})"
  else
    echo "run.sh: swarmtap analyze $* failed; see $out.log:" >&2
    tail -n 5 "$out.log" >&2 || true
    rm -rf "$out"
  fi
}

datasets=()
hive=()
if [ -n "$given" ]; then
  main="$given"
  label=dataset
else
  main="$here/target/nb-sample-out"
  label=sample
  analyze "$main"
fi
datasets+=("$label=$main")
if [ -f "$main/peers.parquet" ]; then
  hive+=(--hive-copy "$label-hive=$main")
fi

shared="$here/../shared/corpus/public"
empty_in="$shared/ntop__nDPI/bt-dns.pcap"
if [ ! -f "$empty_in" ]; then
  # No ../shared: a one-packet capture (a DNS query) made here.
  empty_in="$here/target/nb-empty-input.pcap"
  "$py" - "$empty_in" <<'EOF'
import struct, sys
dns = struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x08utorrent\x03com\x00" + struct.pack("!HH", 1, 1)
udp = struct.pack("!HHHH", 53000, 53, 8 + len(dns), 0) + dns
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
s = sum(struct.unpack("!10H", ip))
s = (s & 0xFFFF) + (s >> 16)
ip = ip[:10] + struct.pack("!H", ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF) + ip[12:]
frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip + udp
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    f.write(struct.pack("<IIII", 1700000000, 0, len(frame), len(frame)) + frame)
EOF
fi
analyze "$here/target/nb-empty-out" "$empty_in"
datasets+=("empty=$here/target/nb-empty-out")

# A missing prerequisite follows the test suite's rule (tests/support/require.rs): a
# failure under SWARMTAP_REQUIRE_ALL (CI), else a skip written to the skip list that
# tests/run-all.sh prints at the end.
skipped() {
  if [ -n "${SWARMTAP_REQUIRE_ALL:-}" ] && [ "${SWARMTAP_REQUIRE_ALL}" != 0 ]; then
    echo "run.sh: needs $1: $2 (SWARMTAP_REQUIRE_ALL is set)" >&2
    exit 1
  fi
  echo "run.sh: SKIPPED: $1: $2"
  local dir="${SWARMTAP_SKIP_DIR:-$here/target/test-skips}"
  mkdir -p "$dir"
  echo "notebooks notebooks/run.sh: $1: $2" >>"$dir/notebooks--$(echo "$1" | tr -c 'A-Za-z0-9_-' _).txt"
}

if [ -d "$shared" ]; then
  geoip=()
  if [ -f "$here/target/geoip/GeoLite2-City.mmdb" ]; then  # fetched by tests/setup.sh
    geoip=(--geoip "$here/target/geoip/GeoLite2-City.mmdb")
  else
    skipped "geolocation" "target/geoip/GeoLite2-City.mmdb is absent: the corpus dataset has no geography (tests/setup.sh fetches it)"
  fi
  analyze "$here/target/nb-corpus-out" "$shared" --torrents "$shared/tcoppi__BittorrentReconstituter" "${geoip[@]}"
  datasets+=("corpus=$here/target/nb-corpus-out")
else
  skipped "../shared/corpus/public" "$shared not found: no dataset of other captures"
fi

# The sample output is made afresh above: a capture named like a truth file's but recorded at
# another time is a timestamp error here, not a stale dataset (see swarmtap_nb.sample_truths).
# The same run writes the datasets: their schema must be the notebooks' (--strict-schema).
strict=()
if [ -z "${SWARMTAP_DATASET:-}" ]; then
  export SWARMTAP_TRUTH_STRICT=1
  strict=(--strict-schema)
fi
exec "$py" notebooks/run_notebooks.py --out "$here/target/notebooks-out" "${strict[@]}" "${hive[@]}" "${datasets[@]}"
