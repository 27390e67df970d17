#!/usr/bin/env bash
# Installs what swarmtap's build and tests need on a fresh Debian machine:
# libpcap headers (live capture, BPF), tshark (the independent decoder the
# tests compare against), tcpreplay, ethtool and iproute2 (the live-capture
# tests replay captures across a veth pair between network namespaces), and
# a Python venv for the notebooks when present.
# Safe to run again: it installs only what is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sudo_=""
[ "$(id -u)" = 0 ] || sudo_="sudo"
need=()
for p in libpcap-dev tshark pkg-config tcpreplay ethtool iproute2; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi
if [ -f "$here/notebooks/requirements.txt" ]; then
  venv="$here/target/nb-venv"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q -r "$here/notebooks/requirements.txt"
fi
