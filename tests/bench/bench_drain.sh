#!/bin/bash
# Draining a backlog: MESSAGES messages are queued while the upstream is down (each tried once
# and deferred for an hour), then smtp-sink comes up on the upstream's port and `posternctl
# flush` makes them all due. Printed: the drain rate over the first and the last 10 % of the
# messages (sampled from `posternctl stats`), the whole drain, and the latency of accepts made
# meanwhile (p50, p99 of 200 sequential submissions). Not part of the suite; figures go to
# BENCHMARKS.md.
#
#   MESSAGES=10000 tests/bench/bench_drain.sh       # binaries from $POSTERN_BUILDDIR
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
builddir=$(cd "${POSTERN_BUILDDIR:-$src}" && pwd)
POSTERN=$builddir/postern
POSTERNCTL=$builddir/posternctl
SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
MESSAGES=${MESSAGES:-10000}
SIZE=${SIZE:-2048}
for b in "$POSTERN" "$POSTERNCTL" "$SOURCE" "$SINK"; do
  [ -x "$b" ] || { echo "bench: $b not found" >&2; exit 1; }
done
work=$(mktemp -d -p "$builddir" drain.XXXXXX)
sink_pid= postern_pid=
cleanup() {
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
mkdir -p "$work/data"
cat >"$work/postern.conf" <<CONF
[postern]
user =
hostname = bench.test.example
data_dir = $work/data
max_clients = 500
retry_min = 1h
retry_max = 1h
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
CONF
"$POSTERN" -c "$work/postern.conf" -f 2>"$work/postern.log" &
postern_pid=$!
wait_port "$port"

count() {   # count STATE (0 when the daemon is too busy to answer this time)
  "$POSTERNCTL" -c "$work/postern.conf" stats --json 2>/dev/null |
    /usr/bin/python3 -c "
import json,sys
try: print(json.load(sys.stdin)[0]['by_state'].get('$1', 0))
except ValueError: print(0)"
}
t0=$(date +%s.%N)
"$SOURCE" -s 10 -l "$SIZE" -m "$MESSAGES" -f bench@clinic.test -t rcpt@example.test \
  -M bench.client.test "127.0.0.1:$port" >"$work/source.log" 2>&1
t1=$(date +%s.%N)
while [ "$(count deferred)" -lt "$MESSAGES" ]; do sleep 0.5; done
echo "queued $MESSAGES messages of $SIZE bytes in $(/usr/bin/python3 -c "print('%.1f' % ($t1 - $t0))") s; all deferred"

sink_user=()
[ "$(id -u)" = 0 ] && sink_user=(-u nobody)
"$SINK" "${sink_user[@]}" -m 1000 "127.0.0.1:$sink_port" 1024 2>"$work/sink.log" &
sink_pid=$!
wait_port "$sink_port"
"$POSTERNCTL" -c "$work/postern.conf" flush >/dev/null

/usr/bin/python3 - "$port" "$MESSAGES" "$POSTERNCTL" "$work/postern.conf" <<'PY'
import json, smtplib, statistics, subprocess, sys, threading, time
port, n, ctl, conf = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
samples, lat, done = [], [], threading.Event()

def sent():
    try:
        o = json.loads(subprocess.run([ctl, "-c", conf, "stats", "--json"],
                                      capture_output=True).stdout)[0]
    except ValueError:       # too busy to answer this time: the sample is skipped
        return samples[-1][1] if samples else 0
    return o["by_state"].get("sent", 0)

def accepts():
    msg = b"From: a@clinic.test\r\nTo: b@example.test\r\nSubject: during\r\n\r\nx\r\n"
    for i in range(200):
        if done.is_set():
            break
        t = time.monotonic()
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.sendmail("a@clinic.test", ["b@example.test"], msg)
        lat.append(time.monotonic() - t)
        time.sleep(0.02)

th = threading.Thread(target=accepts)
th.start()
while True:
    s = sent()
    samples.append((time.monotonic(), s))
    if s >= n:
        break
    time.sleep(0.25)
done.set()
th.join()

def at(k):   # the time the k-th message was sent (linear between samples)
    for (t0, s0), (t1, s1) in zip(samples, samples[1:]):
        if s1 >= k:
            return t0 + (t1 - t0) * (k - s0) / max(1, s1 - s0)
    return samples[-1][0]
tenth = n // 10
first = tenth / (at(tenth) - at(0) or 1e-9)
last = tenth / (at(n) - at(n - tenth) or 1e-9)
whole = n / (at(n) - samples[0][0])
lat.sort()
print(f"drain: first 10 % {first:.0f} msg/s, last 10 % {last:.0f} msg/s, whole {whole:.0f} msg/s")
if lat:
    print(f"accepts during the drain: {len(lat)}, p50 {statistics.median(lat) * 1000:.1f} ms,"
          f" p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000:.1f} ms")
PY
