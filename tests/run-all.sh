#!/usr/bin/env bash
# The whole test suite: set-up on a fresh Debian machine, then every Rust
# test (unit and integration; corpus tests read ../shared) and, when the
# notebooks exist, every notebook executed against the sample-pcaps output.
#
# Tests that need something outside the repository (../shared, tshark, root,
# network namespaces, the geolocation databases) follow one rule
# (tests/support/require.rs): with SWARMTAP_REQUIRE_ALL=1 (.ci/run sets it) a
# missing prerequisite fails the test; without it the test skips and writes
# a line to target/test-skips/, and the counted list is printed at the end.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash tests/setup.sh
skips="${SWARMTAP_SKIP_DIR:-$here/target/test-skips}"
export SWARMTAP_SKIP_DIR="$skips"
rm -rf "$skips"
mkdir -p "$skips"
report_skips() {
  # Keeps the suite's exit status; an empty skip list is not an error (with
  # pipefail, `cat` of no file would fail the trap and the whole run).
  local rc=$? n
  n=$(cat "$skips"/*.txt 2>/dev/null | sort -u | wc -l || true)
  if [ "$n" -gt 0 ]; then
    echo "== $n test(s) SKIPPED, checking nothing (set SWARMTAP_REQUIRE_ALL=1 to make them fail):"
    cat "$skips"/*.txt | sort -u | sed 's/^/  /'
  else
    echo "== 0 tests skipped"
  fi
  exit "$rc"
}
trap report_skips EXIT
cargo test --workspace --all-targets
# `swarmtap report` pages in headless Chromium; screenshots in target/report-shots/.
target/nb-venv/bin/python tests/report_browser.py
# Every engine reads the output as-is (pandas 2 and 3, pyarrow, DuckDB, PySpark).
bash tests/engines.sh
# The Spark merge (spark/merge.py, PySpark local[2]) equals `swarmtap merge`
# on every piece and two-sensor case of the merge tests.
bash tests/spark_merge.sh
if [ -f notebooks/run.sh ]; then
  bash notebooks/run.sh
fi
