#!/usr/bin/env bash
# The Spark merge in CI (issue 19): tests/spark_merge.py in PySpark local
# mode (local[2], one SparkSession for every case), Java from
# tests/setup.sh (default-jre-headless) and the engines venv of
# tests/engines.sh (target/engines-venv: pyspark, pandas, pyarrow).
# It cuts the sample captures and public-corpus captures (../shared, or
# SWARMTAP_SHARED) into 2, 3 and 7 time pieces, analyses every piece, merges
# them on Spark and compares with analyze of the whole capture (and with
# `swarmtap merge` when the binary has it). Without ../shared the corpus
# cases are skipped and listed, unless SWARMTAP_REQUIRE_ALL=1, which fails.
# Prints "N passed, M failed" and exits 1 when anything failed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bin="${SWARMTAP_BIN:-$here/target/debug/swarmtap}"
[ -x "$bin" ] || cargo build --quiet
for t in editcap capinfos java; do
  command -v "$t" >/dev/null || { echo "spark_merge: $t missing (run tests/setup.sh)" >&2; exit 1; }
done
v3="${SWARMTAP_ENGINES_VENV:-$here/target/engines-venv}"
if [ ! -x "$v3/bin/python" ]; then
  python3 -m venv "$v3"
fi
"$v3/bin/pip" install -q -r tests/engines-requirements.txt
export PYSPARK_PYTHON="$v3/bin/python"
exec nice -n 5 "$v3/bin/python" tests/spark_merge.py --bin "$bin" "$@"
