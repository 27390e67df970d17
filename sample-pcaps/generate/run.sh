#!/bin/bash
# Regenerate sample captures (needs root for network namespaces):
#   sudo sample-pcaps/generate/run.sh SCENARIO|all [--out DIR] [--keep-workdir]
# SCENARIO: http udp mse utp magnet midstream lossy two ipv6 cheat suppressed
# Writes OUT/SCENARIO.pcap, .torrent, .truth.json (OUT defaults to sample-pcaps/),
# then adds tshark's counts and an independent wire reassembly to each truth file.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ "$(id -u)" -ne 0 ]; then echo "run as root" >&2; exit 1; fi
scen="${1:?usage: run.sh SCENARIO|all [--out DIR] [--keep-workdir]}"
out="$(dirname "$here")"
args=("$@")
for ((i = 1; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = --out ] && out="${args[$((i + 1))]}"
done
# Hard outer bound; swarm.py bounds each phase itself and removes its
# namespaces and processes on exit (also on SIGTERM).
limit=600
[ "$scen" = all ] && limit=3600
timeout -k 20 "$limit" /usr/bin/python3 "$here/swarm.py" "$@"
if [ "$scen" = all ]; then
  names=(http udp mse utp magnet midstream lossy two ipv6 cheat suppressed)
else
  names=("$scen")
fi
for n in "${names[@]}"; do
  /usr/bin/python3 "$here/annotate.py" "$out/$n.truth.json" > /dev/null
done
