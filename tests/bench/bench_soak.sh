#!/bin/bash
# Soak: MESSAGES messages through Postern to smtp-sink (smtp-source, 10 sessions) with
# retention = 1m and records_retention = 1m (correspondence records are kept by default: they
# are the application's data, and would grow with every message). Every INTERVAL seconds one
# line: elapsed time, recipients sent so far and the rate since the line before (from
# /metrics), messages in the store (posternctl stats), the size of postern.db and of its WAL,
# and the daemon's RSS. After the first minutes (retention, then the pruner catching up) size
# and RSS should stay flat while the rate holds. Not part of the suite; figures go to
# BENCHMARKS.md.
#
#   MESSAGES=1000000 tests/bench/bench_soak.sh      # binaries from $POSTERN_BUILDDIR
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
builddir=$(cd "${POSTERN_BUILDDIR:-$src}" && pwd)
POSTERN=$builddir/postern
POSTERNCTL=$builddir/posternctl
SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
MESSAGES=${MESSAGES:-1000000}
SIZE=${SIZE:-2048}
INTERVAL=${INTERVAL:-10}
for b in "$POSTERN" "$POSTERNCTL" "$SOURCE" "$SINK"; do
  [ -x "$b" ] || { echo "bench: $b not found" >&2; exit 1; }
done
work=$(mktemp -d -p "$builddir" soak.XXXXXX)
sink_pid= postern_pid= source_pid=
cleanup() {
  [ -n "$source_pid" ] && kill -TERM "$source_pid" 2>/dev/null || true
  [ -n "$postern_pid" ] && kill -TERM "$postern_pid" 2>/dev/null && wait "$postern_pid" 2>/dev/null || true
  [ -n "$sink_pid" ] && kill -TERM "$sink_pid" 2>/dev/null && wait "$sink_pid" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "bench: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "bench: nothing listens on 127.0.0.1:$1" >&2; return 1
}
sink_port=$(free_port)
port=$(free_port)
http_port=$(free_port)
mkdir -p "$work/data"
cat >"$work/postern.conf" <<CONF
[postern]
user =
hostname = bench.test.example
data_dir = $work/data
max_clients = 500
retention = 1m
records_retention = 1m
delay_warning = 0

[listener submission]
address = 127.0.0.1:$port
role = submission

[upstream sink]
type = smtp
host = 127.0.0.1
port = $sink_port
tls = none

[route default]
upstream = sink

[inbound]
http_address = 127.0.0.1:$http_port
http_auth = none
CONF
sink_user=()
[ "$(id -u)" = 0 ] && sink_user=(-u nobody)
"$SINK" "${sink_user[@]}" -m 1000 "127.0.0.1:$sink_port" 1024 2>"$work/sink.log" &
sink_pid=$!
wait_port "$sink_port"
"$POSTERN" -c "$work/postern.conf" -f 2>"$work/postern.log" &
postern_pid=$!
wait_port "$port"
"$SOURCE" -s 10 -l "$SIZE" -m "$MESSAGES" -f bench@clinic.test -t rcpt@example.test \
  -M bench.client.test "127.0.0.1:$port" >"$work/source.log" 2>&1 &
source_pid=$!

/usr/bin/python3 - "$MESSAGES" "$INTERVAL" "$http_port" "$POSTERNCTL" "$work/postern.conf" \
  "$work/data" "$postern_pid" "$source_pid" <<'PY'
import json, os, subprocess, sys, time, urllib.request
n, interval, http_port, ctl, conf, data, pid, source = sys.argv[1:9]
n, interval = int(n), float(interval)

def sent():
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30).read()
    total = 0
    for line in text.decode().splitlines():
        if line.startswith("postern_recipients_total{") and 'result="sent"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total

def stored():
    p = subprocess.run([ctl, "-c", conf, "stats", "--json"], capture_output=True)
    return json.loads(p.stdout)[0]["messages"]

def size(name):
    try:
        return os.path.getsize(os.path.join(data, name))
    except OSError:
        return 0

def rss_mb():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0

print(f"{'time':>6} {'sent':>9} {'msg/s':>7} {'stored':>8} {'db MB':>7} {'wal MB':>7} {'RSS MB':>7}",
      flush=True)
t0 = last_t = time.monotonic()
last = 0
while True:
    time.sleep(interval)
    now, s = time.monotonic(), sent()
    print(f"{now - t0:6.0f} {s:9d} {(s - last) / (now - last_t):7.0f} {stored():8d} "
          f"{size('postern.db') / 1e6:7.1f} {size('postern.db-wal') / 1e6:7.1f} {rss_mb():7.1f}",
          flush=True)
    moved = s != last
    last, last_t = s, now
    if s >= n:
        break
    if not moved and subprocess.run(["kill", "-0", source], capture_output=True).returncode:
        break                      # smtp-source is done and nothing moves any more
PY
