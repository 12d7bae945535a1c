#!/bin/sh
# Builds every fuzz target (tests/fuzz/fuzz_*.c) with libFuzzer, ASan and UBSan into
# BUILDDIR/fuzz/. The libraries come from a tree of their own, BUILDDIR/fuzz-build, configured
# with clang and --enable-fuzzing, so each target links exactly what the daemon links and a new
# target needs no list of sources here. Run one with e.g.
#   BUILDDIR/fuzz/fuzz_session -close_fd_mask=2 -max_total_time=60 tests/fuzz/corpus/session
set -eu
[ $# -eq 1 ] || { echo "usage: $0 BUILDDIR" >&2; exit 2; }
top=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)/fuzz
fb=$(cd "$1" && pwd)/fuzz-build
CC=${CC:-clang}
mkdir -p "$out" "$fb"
[ -f "$fb/Makefile" ] || (cd "$fb" && "$top/configure" -q CC="$CC" CFLAGS="-g -O1" --enable-fuzzing)
make -s -C "$fb" -j"$(nproc)" fuzz-libs
cflags=$(make -s -C "$fb" fuzz-compile-flags)
libs=$(make -s -C "$fb" fuzz-link-flags)
for src in "$top"/tests/fuzz/fuzz_*.c; do
  name=$(basename "$src" .c)
  echo "  FUZZ  $out/$name"
  # shellcheck disable=SC2086
  (cd "$fb" && $CC $cflags -fsanitize=fuzzer -o "$out/$name" "$src" $libs)
done
