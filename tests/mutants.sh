#!/usr/bin/env bash
# Mutation check of the analysis code with cargo-mutants (crates.io:
# `cargo install cargo-mutants --locked`): each mutant (an operator swapped,
# a function body replaced) is built and the analysis tests are run against
# it; a mutant no test catches is "missed" and needs a test.
#
#   bash tests/mutants.sh                 # byte and piece counting (352 mutants, tests/mutants_counting.py)
#   bash tests/mutants.sh all             # every mutant of src/analyze (~1,600), shuffled
#   bash tests/mutants.sh sample 16       # a fair 1/16 of them: every 16th mutant in
#                                         # source order (round-robin shard 0/16), shuffled
#   bash tests/mutants.sh counting --list # what would run
#   MUTANTS_MINUTES=60 bash tests/mutants.sh sample 16   # stop after 60 min
#   bash tests/mutants.sh all --re 'session.rs:396:.*-= with \+='  # one mutant again
#   MUTANTS_STAGE=unit bash tests/mutants.sh; MUTANTS_STAGE=integration bash tests/mutants.sh counting --iterate
#
# Results: target/mutants/mutants.out/{caught,missed,timeout,unviable}.txt
# and outcomes.json; the script ends with the counts per file. Tests in
# tests/MUTANTS.md what a run found and which tests kill the missed ones.
#
# What one mutant costs, and why it is this cheap (tests/MUTANTS.md has the
# measurements):
# - Mutants are tested in place in a throw-away git worktree of HEAD holding
#   a copy of target/debug made with `cp -a`: cargo-mutants' own copy does
#   not keep file times, and then every dependency (polars) rebuilds, ~15 min
#   before the first mutant. `--cap-lints false` keeps RUSTFLAGS as they are
#   for the same reason. Each mutant then rebuilds only the swarmtap crate,
#   incrementally (the copy keeps target/debug/incremental).
# - mold links the three polars-sized executables (lib tests, integration
#   tests, the binary) through a RUSTC_WRAPPER (tests/mutants-rustc.sh).
#   Setting the linker with CARGO_TARGET_<triple>_LINKER or
#   `target.<triple>.linker` in .cargo/config.toml would not do: cargo
#   hashes the linker into every unit's fingerprint, and all 248 dependency
#   units turn dirty ("ConfigSettingsChanged"); a wrapper is not hashed.
# - The dev profile already has debug = 0 (Cargo.toml), so a separate
#   mutants profile (its own target dir, every dependency built again) would
#   buy nothing.
# - The targets are chosen with --cargo-arg, which cargo-mutants passes to
#   the build (`cargo test --no-run`) as well as to the test run; arguments
#   after `--` reach only the test run, and the build would also make and
#   link the binary's own unit-test executable. The test names go after a
#   second `--` (to the test binaries): cargo itself takes only one, and a
#   usage error would count as a caught mutant.
# - Only tests that exercise src/analyze run (below): the lib's capture,
#   flow and probe tests take ~65 s and never reach analyze. cargo stops at
#   the first failing binary, so a mutant the unit tests catch costs no
#   integration run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scope="${1:-counting}"
shift || true
files=(--file src/analyze/session.rs --file src/analyze/swarm.rs --file src/analyze/pieces.rs)
filter=()
order=(--no-shuffle)
case "$scope" in
  counting)
    # The mutants in byte and piece counting: tests/mutants_counting.py
    # holds the rule (functions, and counting lines of mixed functions) and
    # turns it into a diff of those lines for --in-diff (cargo-mutants 27
    # lets struct-literal field deletions through every --re). Shuffled, so
    # that a run cut short by MUTANTS_MINUTES is a fair sample of the set.
    files=(--file 'src/analyze/*.rs')
    sel="$(mktemp)"
    (cd "$here" && cargo mutants --list --json "${files[@]}" >"$sel.json" &&
      python3 tests/mutants_counting.py "$sel.json" --diff >"$sel")
    filter=(--in-diff "$sel")
    order=(--shuffle)
    ;;
  all)
    files=(--file 'src/analyze/*.rs')
    order=(--shuffle)
    ;;
  sample)
    k="${1:?usage: $0 sample K}"
    shift
    files=(--file 'src/analyze/*.rs')
    order=(--shuffle --sharding round-robin --shard "0/$k")
    ;;
  *)
    echo "usage: $0 [counting|all|sample K] [cargo-mutants options]" >&2
    exit 2
    ;;
esac
shared="${SWARMTAP_SHARED:-$(dirname "$here")/shared}"
out="${MUTANTS_OUT:-$here/target/mutants}"
work="$(mktemp -d)/tree"
git -C "$here" worktree add --detach "$work" HEAD >/dev/null
cleanup() {
  git -C "$here" worktree remove --force "$work" || true
  rm -rf "$(dirname "$work")"
}
trap cleanup EXIT
if [ -d "$here/target/debug" ]; then
  # The copy is of a build of exactly HEAD: the checkout is clean and is
  # built first (nothing to do when it already was). The worktree's files
  # are then dated back, so that cargo finds the copy fresh: only each
  # mutant's own change rebuilds, incrementally, and the first mutant does
  # not rebuild everything (6 min at nice 19 on the loaded machine).
  if [ -z "$(git -C "$here" status --porcelain --untracked-files=no)" ]; then
    (cd "$here" && nice -n 19 cargo test --no-run --lib --test integration -q)
    stamp=1
  fi
  mkdir -p "$work/target"
  cp -a "$here/target/debug" "$work/target/debug"
  if [ -n "${stamp:-}" ]; then
    find "$work" -path "$work/target" -prune -o -type f -exec touch -h -d '2000-01-01' {} +
  fi
fi
wrapper=()
if command -v mold >/dev/null; then
  wrapper=(env "RUSTC_WRAPPER=$here/tests/mutants-rustc.sh")
fi
deadline=()
if [ -n "${MUTANTS_MINUTES:-}" ]; then
  # cargo-mutants stops cleanly on SIGINT; what it tested so far is in
  # outcomes.json.
  deadline=(timeout --signal=INT --kill-after=60 "$((MUTANTS_MINUTES * 60))")
fi
cd "$work"
mkdir -p "$out"
# The tests: the lib's analyze:: unit tests (under 1 s), then the
# integration tests that run the engine on sample-pcaps/ and on captures
# built by construction (counting, samples, complete transfers), and one
# test each for the audit, the DHT and metadata. On a 2-core machine at
# load 14 they take ~60 s of wall time in all; the whole integration suite
# takes ~310 s. MUTANTS_TESTS replaces the list (a missed mutant is worth a
# run against every test: MUTANTS_TESTS=' ' runs them all).
unit="analyze::"
integration="counting:: samples:: complete_transfers bitfield_ handshake_info_hash_mismatch tracker::the_audit_raises_no_flag_on_honest_clients dht::issue5_dht_messages_equal_tshark metadata::pieces_are_verified_on_every_sample"
# MUTANTS_STAGE splits the run in two cheaper passes: `unit` builds and runs
# only the lib's analyze:: tests (one compile of the crate per mutant
# instead of two, and one link); `integration` builds the lib and the
# integration tests and runs those. Run `unit` first, then `integration`
# with --iterate on the same output: only what the unit tests missed (or
# never reached) is built again.
case "${MUTANTS_STAGE:-both}" in
  unit) targets=(--cargo-arg=--lib) && default_tests="$unit" ;;
  integration) targets=(--cargo-arg=--test --cargo-arg=integration) && default_tests="$integration" ;;
  *) targets=(--cargo-arg=--lib --cargo-arg=--test --cargo-arg=integration) && default_tests="$unit $integration" ;;
esac
read -r -a tests <<<"${MUTANTS_TESTS:-$default_tests}"
# MUTANTS_TOOL=nextest runs the tests with cargo-nextest (installed apart:
# `cargo install cargo-nextest --locked`), one process per test, and stops
# at the first failing test rather than at the end of the first failing
# binary: a mutant the integration tests catch costs the time to its first
# failure instead of the whole list (tests/MUTANTS.md, session 7).
tool=()
if [ "${MUTANTS_TOOL:-}" = nextest ]; then
  tool=(--test-tool=nextest)
fi
# The test timeout is for a loaded machine at nice 19: the selected tests
# take ~30 s of wall time on an idle one.
status=0
SWARMTAP_SHARED="$shared" "${deadline[@]}" "${wrapper[@]}" nice -n 19 \
  cargo mutants --in-place --cap-lints false --baseline skip "${order[@]}" \
  "${files[@]}" "${filter[@]}" --timeout 300 --build-timeout 900 -o "$out" \
  "${tool[@]}" "${targets[@]}" "$@" \
  -- -- "${tests[@]}" || status=$?
if [ -f "$out/mutants.out/outcomes.json" ]; then
  python3 "$here/tests/mutants_summary.py" "$out/mutants.out/outcomes.json"
fi
# cargo-mutants exits 2 when a mutant was missed, 3 on a timeout.
exit "$status"
