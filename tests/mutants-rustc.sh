#!/bin/sh
# RUSTC_WRAPPER for tests/mutants.sh: links this project's own binaries with
# mold. A wrapper, unlike a linker setting or RUSTFLAGS, is not part of
# cargo's fingerprints, so the dependencies built without it (polars) stay
# fresh; only the swarmtap crates, which every mutant rebuilds anyway, get
# the extra flag.
rustc="$1"
shift
case " $* " in
  *" --crate-name swarmtap "* | *" --crate-name integration "*)
    exec "$rustc" "$@" -C link-arg=-fuse-ld=mold ;;
esac
exec "$rustc" "$@"
