#!/bin/sh
# Runs every fuzz target (tests/fuzz/fuzz_*.c, built by build.sh with libFuzzer, ASan and UBSan)
# for MINUTES minutes each, one after the other, and reports per target the inputs run, the
# corpus it grew to and the crashes found. Not part of the suite: with the default of 10 minutes
# a run takes 10 minutes per target. Exit 0 when no target crashed, 1 otherwise.
#   tests/fuzz/run-all.sh [MINUTES] [BUILDDIR]
# Each target starts from a copy of its corpus in tests/fuzz/corpus/NAME (the repository's is
# not changed); crash inputs and logs stay in the printed work directory: copy a crash into
# tests/fuzz/corpus/NAME once it is fixed, so the suite's replay keeps it fixed.
# FUZZ_SECONDS overrides MINUTES (a quick smoke run); FUZZ_ONLY=NAME runs one target.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
minutes=${1:-10}
build=${2:-$top/_build/fuzz}
case $minutes in ''|*[!0-9]*) echo "usage: $0 [MINUTES] [BUILDDIR]" >&2; exit 2 ;; esac
seconds=${FUZZ_SECONDS:-$((minutes * 60))}

"$top/tests/fuzz/build.sh" "$build" >/dev/null
work=$(mktemp -d "${TMPDIR:-/tmp}/postern-fuzz.XXXXXX")
echo "fuzzing each target for ${seconds}s; work directory $work"
printf '%-22s %12s %8s %8s  %s\n' target inputs corpus crashes result
crashed=0
for bin in "$build"/fuzz/fuzz_*; do
  name=${bin##*/fuzz_}
  [ -z "${FUZZ_ONLY:-}" ] || [ "$FUZZ_ONLY" = "$name" ] || continue
  dir=$work/$name
  mkdir -p "$dir/corpus" "$dir/artifacts"
  if [ -d "$top/tests/fuzz/corpus/$name" ]; then
    cp -R "$top/tests/fuzz/corpus/$name/." "$dir/corpus/"
  fi
  dict=
  [ -f "$top/tests/fuzz/$name.dict" ] && dict=-dict=$top/tests/fuzz/$name.dict
  rc=0
  # -close_fd_mask=3: the targets log to stderr (the daemon's log lines); libFuzzer's own
  # report still reaches the log. -timeout: an input running longer counts as a crash (a hang).
  # shellcheck disable=SC2086
  "$bin" -max_total_time="$seconds" -close_fd_mask=3 -timeout=30 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$dir/artifacts/" $dict "$dir/corpus" \
    >"$dir/log" 2>&1 || rc=$?
  inputs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -n 1)
  ncorpus=$(find "$dir/corpus" -type f | wc -l)
  ncrash=$(find "$dir/artifacts" -type f | wc -l)
  if [ "$rc" -ne 0 ] || [ "$ncrash" -ne 0 ]; then
    result="CRASH (exit $rc; see $dir/log and $dir/artifacts)"
    crashed=1
  else
    result=ok
  fi
  printf '%-22s %12s %8s %8s  %s\n' "$name" "${inputs:-?}" "$ncorpus" "$ncrash" "$result"
done
exit $crashed
