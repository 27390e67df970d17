#!/usr/bin/env bash
# The main job: set-up, a release build, then `swarmtap analyze` on the
# bundled sample-pcaps/ (the default input) into ./swarmtap-out, and a summary.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash tests/setup.sh
cargo build --release --quiet
# stdin from /dev/null: without inputs swarmtap would read a piped stdin.
./target/release/swarmtap analyze -o swarmtap-out "$@" </dev/null
./target/release/swarmtap summary swarmtap-out
