#!/usr/bin/env bash
# Mutation check of the analysis code with cargo-mutants (crates.io:
# `cargo install cargo-mutants --locked`): each mutant (an operator swapped,
# a function body replaced) is built and the counting tests are run against
# it; a mutant no test catches is "missed" and needs a test.
#
#   bash tests/mutants.sh                 # the byte/piece counting functions (~120 mutants)
#   bash tests/mutants.sh all             # every mutant of src/analyze (~1,200: hours)
#   bash tests/mutants.sh counting --list # what would run
#
# Results: target/mutants/mutants.out/{caught,missed,timeout,unviable}.txt.
#
# Mutants are tested in place in a throw-away git worktree of HEAD holding a
# copy of target/ made with `cp -a`: cargo-mutants' own copy does not keep
# file times, and then every dependency (polars) rebuilds, ~15 min before the
# first mutant. `--cap-lints false` keeps RUSTFLAGS as they are for the same
# reason. Each mutant then rebuilds only the swarmtap crate (30–90 s here).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scope="${1:-counting}"
shift || true
files=(--file src/analyze/session.rs --file src/analyze/swarm.rs --file src/analyze/pieces.rs)
filter=()
case "$scope" in
  counting)
    # Where bytes and pieces are counted: block progress and ends (piece
    # bytes, gaps), the connection row's totals, piece-count estimates and
    # completion.
    # (cargo-mutants 27 lets the field deletions of row-building struct
    # literals through any --re: about 120 mutants, 1–2 h on a loaded
    # 2-core machine. The session-4 run took the 54 on the counting lines
    # themselves with --in-diff: 4 missed, since killed by tests.)
    filter=(--re '(State::block_progress|State::end_block|PeerSession::row|State::on_event|Swarm::completion|bitfield_top|TorrentState::count|piece_len)')
    ;;
  all) files=(--file 'src/analyze/*.rs') ;;
  *)
    echo "usage: $0 [counting|all] [cargo-mutants options]" >&2
    exit 2
    ;;
esac
shared="${SWARMTAP_SHARED:-$(dirname "$here")/shared}"
work="$(mktemp -d)/tree"
git -C "$here" worktree add --detach "$work" HEAD >/dev/null
cleanup() { git -C "$here" worktree remove --force "$work" || true; }
trap cleanup EXIT
if [ -d "$here/target" ]; then
  cp -a "$here/target" "$work/target"
fi
cd "$work"
mkdir -p "$here/target/mutants"
SWARMTAP_SHARED="$shared" nice -n 19 cargo mutants --in-place --cap-lints false --baseline skip --no-shuffle \
  "${files[@]}" "${filter[@]}" --timeout 240 --build-timeout 900 -o "$here/target/mutants" "$@" \
  -- --lib --test integration -- analyze:: counting:: samples:: complete_transfers
