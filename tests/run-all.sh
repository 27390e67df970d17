#!/usr/bin/env bash
# The whole test suite: set-up on a fresh Debian machine, then every Rust
# test (unit and integration; corpus tests read ../shared) and, when the
# notebooks exist, every notebook executed against the sample-pcaps output.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash tests/setup.sh
# setup.sh fetched the geolocation databases: their tests must run, not skip.
SWARMTAP_REQUIRE_GEOIP=1 cargo test --workspace --all-targets
if [ -f notebooks/run.sh ]; then
  bash notebooks/run.sh
fi
