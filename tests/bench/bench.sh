#!/bin/bash
# Throughput of the submission listener with durability on (capture route, SQLite with
# synchronous=FULL), measured with Postfix's smtp-source at 1, 10 and 50 concurrent sessions of
# 4 KB messages, next to smtp-sink alone (accepts and forgets: this machine's ceiling).
# Not part of the test suite; the figures go to BENCHMARKS.md.
#
#   tests/bench/bench.sh                 # binaries from $POSTERN_BUILDDIR, else ., else the source tree
#   MESSAGES=5000 SESSIONS="1 10 50" SIZE=4096 REPEAT=5 KEEP=1 tests/bench/bench.sh
#
# Each run sends MESSAGES messages; smtp-source opens one connection per message unless
# REUSE=1 (smtp-source -d: all messages of a session over one connection). Each figure is the
# median of REPEAT runs (loopback figures are noisy).
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -z "${POSTERN_BUILDDIR:-}" ]; then
  if [ -x "$PWD/postern" ]; then POSTERN_BUILDDIR=$PWD; else POSTERN_BUILDDIR=$src; fi
fi
builddir=$(cd "$POSTERN_BUILDDIR" && pwd)
POSTERN=$builddir/postern
POSTERNCTL=$builddir/posternctl
SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
MESSAGES=${MESSAGES:-2000}
SIZE=${SIZE:-4096}
SESSIONS=${SESSIONS:-"1 10 50"}
REUSE=${REUSE:-0}
REPEAT=${REPEAT:-3}

for b in "$POSTERN" "$POSTERNCTL" "$SOURCE" "$SINK"; do
  [ -x "$b" ] || { echo "bench: $b not found (build Postern; apt-get install postfix for smtp-source/smtp-sink)" >&2; exit 1; }
done

# The data directory lives next to the build (a real disk, so fsync costs what it costs), not
# on a tmpfs.
work=$(mktemp -d -p "$builddir" bench.XXXXXX)
sink_pid= postern_pid=
cleanup() {
  [ -n "$postern_pid" ] && kill -TERM "$postern_pid" 2>/dev/null && wait "$postern_pid" 2>/dev/null || true
  [ -n "$sink_pid" ] && kill -TERM "$sink_pid" 2>/dev/null && wait "$sink_pid" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "bench: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {   # wait_port PORT PID
  for _ in $(seq 200); do
    kill -0 "$2" 2>/dev/null || { echo "bench: process $2 exited" >&2; return 1; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "bench: nothing listens on 127.0.0.1:$1" >&2; return 1
}
now() { date +%s.%N; }
stored() {
  "$POSTERNCTL" -c "$work/postern.conf" queue list --json |
    /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'
}

sink_port=$(free_port)
port=$(free_port)

# smtp-sink refuses to keep root privileges: give it an unprivileged user when run as root.
sink_user=()
[ "$(id -u)" = 0 ] && sink_user=(-u nobody)
"$SINK" "${sink_user[@]}" -m 1000 "127.0.0.1:$sink_port" 1024 2>"$work/sink.log" &
sink_pid=$!
wait_port "$sink_port" "$sink_pid"

mkdir -p "$work/data"
cat >"$work/postern.conf" <<EOF
[postern]
hostname = bench.test.example
data_dir = $work/data
max_message_size = 35M
max_recipients = 100
max_clients = 500
idle_timeout = 5m

[listener submission]
address = 127.0.0.1:$port
role = submission
EOF
"$POSTERN" -c "$work/postern.conf" -f 2>"$work/postern.log" &
postern_pid=$!
wait_port "$port" "$postern_pid"

median() {   # median PORT SESSIONS -> prints the median messages/s of REPEAT runs
  local i out=()
  for i in $(seq "$REPEAT"); do out+=("$(run "$1" "$2")") || return 1; done
  printf '%s\n' "${out[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

run() {   # run PORT SESSIONS -> prints messages/s
  local t0 t1 args=(-s "$2" -l "$SIZE" -m "$MESSAGES" -f bench@clinic.test -t rcpt@example.test
                    -M bench.client.test)
  [ "$REUSE" = 1 ] && args+=(-d)
  t0=$(now)
  "$SOURCE" "${args[@]}" "127.0.0.1:$1" >>"$work/source.log" 2>&1 || {
    echo "bench: smtp-source against port $1 failed:" >&2; tail -5 "$work/source.log" >&2; return 1; }
  t1=$(now)
  /usr/bin/python3 -c "print('%.0f' % ($MESSAGES / ($t1 - $t0)))"
}

echo "Postern $("$POSTERN" -V 2>&1 | head -1) on $(nproc) CPUs; $MESSAGES messages of $SIZE bytes per run, median of $REPEAT;" \
     "$([ "$REUSE" = 1 ] && echo "one connection per session" || echo "one connection per message")"
printf '%-10s %16s %16s %8s %10s\n' sessions "smtp-sink msg/s" "postern msg/s" ratio stored
before=$(stored)
for s in $SESSIONS; do
  ceiling=$(median "$sink_port" "$s")
  ours=$(median "$port" "$s")
  after=$(stored)
  ratio=$(/usr/bin/python3 -c "print('%.2f' % ($ours / $ceiling))")
  printf '%-10s %16s %16s %8s %10s\n' "$s" "$ceiling" "$ours" "$ratio" "$((after - before))"
  if [ "$((after - before))" -ne "$((MESSAGES * REPEAT))" ]; then
    echo "bench: WARNING: $((after - before)) messages stored for $((MESSAGES * REPEAT)) sent" >&2
  fi
  before=$after
done
