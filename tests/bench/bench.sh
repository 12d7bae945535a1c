#!/bin/bash
# Throughput of the submission listener with durability on (capture route, SQLite with
# synchronous=FULL), measured with Postfix's smtp-source at 1, 10 and 50 concurrent sessions of
# 4 KB messages, next to smtp-sink alone (accepts and forgets: this machine's ceiling).
# Not part of the test suite; the figures go to BENCHMARKS.md.
#
#   tests/bench/bench.sh                 # binaries from $POSTERN_BUILDDIR, else ., else the source tree
#   MESSAGES=5000 SESSIONS="1 10 50" SIZE=4096 REPEAT=5 KEEP=1 tests/bench/bench.sh
#   UPSTREAM=0 (no relay tables)  DKIM=0 (no signing table)  LATENCY=0 (no accept-latency run)
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
# cpu_ticks PID: the process's user + system time so far, in clock ticks (/proc/PID/stat
# fields 14 and 15, counted after the command name, which may hold spaces)
cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
# records_settle DB: waits until the record builder has caught up (it works in batches behind
# the deliveries; its CPU belongs to the messages measured, not to the next run)
records_settle() {
  for _ in $(seq 6000); do
    [ "$(sqlite3 -readonly "$1" "select count(*) from messages where recorded = 0")" -eq 0 ] && return 0
    sleep 0.01
  done
}
# cpu_us TICKS MESSAGES: CPU microseconds per message
cpu_us() { /usr/bin/python3 -c "print('%.0f' % ($1 * 1e6 / $TICK / $2))"; }
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
user =
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
printf '%-10s %16s %16s %8s %10s %12s\n' sessions "smtp-sink msg/s" "postern msg/s" ratio stored \
  "CPU us/msg"
before=$(stored)
for s in $SESSIONS; do
  ceiling=$(median "$sink_port" "$s")
  c0=$(cpu_ticks "$postern_pid")
  ours=$(median "$port" "$s")
  records_settle "$work/data/postern.db"
  c1=$(cpu_ticks "$postern_pid")
  after=$(stored)
  ratio=$(/usr/bin/python3 -c "print('%.2f' % ($ours / $ceiling))")
  printf '%-10s %16s %16s %8s %10s %12s\n' "$s" "$ceiling" "$ours" "$ratio" "$((after - before))" \
    "$(cpu_us "$((c1 - c0))" "$((MESSAGES * REPEAT))")"
  if [ "$((after - before))" -ne "$((MESSAGES * REPEAT))" ]; then
    echo "bench: WARNING: $((after - before)) messages stored for $((MESSAGES * REPEAT)) sent" >&2
  fi
  before=$after
done

# ---- Upstream relay ---------------------------------------------------------------------------
# smtp-source -> relay -> smtp-sink, end to end: from smtp-source's first connection until the
# last message has left the relay for the sink. The relay is Postern (a route to the sink,
# tls = none, its default delivery_workers) and then Postfix configured as a relay to the same
# sink (relayhost = [127.0.0.1]:PORT; a private instance with its own config_directory and
# queue_directory, started with `postfix -c DIR start`; needs root). "Left" means: Postern's
# store has no recipient pending (read-only count with the sqlite3 shell), Postfix's
# incoming/active/deferred queues are empty. UPSTREAM=0 skips this part.
if [ "${UPSTREAM:-1}" = 1 ]; then
  relay_port=$(free_port)
  mkdir -p "$work/relay-data"
  cat >"$work/relay.conf" <<EOC
[postern]
user =
hostname = bench-relay.test.example
data_dir = $work/relay-data
max_clients = 500
retry_min = 1s

[listener submission]
address = 127.0.0.1:$relay_port
role = submission

[upstream sink]
type = smtp
host = 127.0.0.1
port = $sink_port
tls = none
auth = none

[route default]
upstream = sink
EOC
  "$POSTERN" -c "$work/relay.conf" -f 2>"$work/relay.log" &
  relay_pid=$!
  wait_port "$relay_port" "$relay_pid"

  postern_pending() {
    sqlite3 -readonly "$work/relay-data/postern.db" \
      "select count(*) from recipients where status in ('queued','deferred')"
  }
  postern_sent() {
    sqlite3 -readonly "$work/relay-data/postern.db" "select count(*) from recipients where status = 'sent'"
  }

  pf= pf_port=
  if [ "$(id -u)" = 0 ] && command -v postfix >/dev/null; then
    pf=$work/postfix
    pf_port=$(free_port)
    mkdir -p "$pf/conf" "$pf/queue" "$pf/data"
    chmod 755 "$work" "$pf"
    chown postfix "$pf/data"
    cp /etc/postfix/master.cf "$pf/conf/master.cf"
    sed -i "s/^smtp      inet  n       -       y       -       -       smtpd/127.0.0.1:$pf_port inet n - n - - smtpd/" \
      "$pf/conf/master.cf"
    cat >"$pf/conf/main.cf" <<EOC
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench-postfix.test.example
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$sink_port
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtputf8_enable = no
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
EOC
    postfix -c "$pf/conf" start >/dev/null 2>&1 || { echo "bench: postfix did not start:" >&2; tail -5 "$pf/maillog" >&2; pf=; }
    [ -n "$pf" ] && wait_port "$pf_port" "$(cat "$pf/queue/pid/master.pid" | tr -d ' ')"
  else
    echo "bench: not root or no postfix: the Postfix relay column is skipped" >&2
  fi
  postfix_pending() {
    find "$pf/queue/incoming" "$pf/queue/active" "$pf/queue/deferred" "$pf/queue/maildrop" -type f 2>/dev/null | wc -l
  }
  postfix_sent() { grep -c 'status=sent' "$pf/maillog" 2>/dev/null || true; }
  cleanup_relays() {
    [ -n "$pf" ] && postfix -c "$pf/conf" stop >/dev/null 2>&1 || true
    kill -TERM "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null || true
    cleanup
  }
  trap cleanup_relays EXIT

  relay_run() {   # relay_run PORT SESSIONS PENDINGFN -> messages/s through to the sink
    local t0 t1 args=(-s "$2" -l "$SIZE" -m "$MESSAGES" -f bench@clinic.test -t rcpt@example.test
                      -M bench.client.test)
    [ "$REUSE" = 1 ] && args+=(-d)
    t0=$(now)
    "$SOURCE" "${args[@]}" "127.0.0.1:$1" >>"$work/source.log" 2>&1 || {
      echo "bench: smtp-source against port $1 failed:" >&2; tail -5 "$work/source.log" >&2; return 1; }
    for _ in $(seq 60000); do
      [ "$($3)" -eq 0 ] && break
      sleep 0.01
    done
    t1=$(now)
    /usr/bin/python3 -c "print('%.0f' % ($MESSAGES / ($t1 - $t0)))"
  }
  relay_median() {   # relay_median PORT SESSIONS PENDINGFN
    local i out=()
    for i in $(seq "$REPEAT"); do out+=("$(relay_run "$1" "$2" "$3")") || return 1; done
    printf '%s\n' "${out[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
  }

  # Accept latency: one more session next to smtp-source's, submitting 4 KB messages one after
  # the other (a new connection each, as smtp-source does) and timing each from connect to the
  # 250 after DATA, until smtp-source is done. An extra run, not one of the timed ones.
  latency_run() {   # latency_run PORT SESSIONS -> prints "p50 p99" in ms
    local stop=$work/latency.stop args=(-s "$2" -l "$SIZE" -m "$MESSAGES" -f bench@clinic.test
                                        -t rcpt@example.test -M bench.client.test)
    [ "$REUSE" = 1 ] && args+=(-d)
    rm -f "$stop"
    /usr/bin/python3 - "$1" "$SIZE" "$stop" >"$work/latency.out" <<'PY' &
import os, smtplib, sys, time
port, size, stop = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
body = b"Subject: latency probe\r\n\r\n" + b"x" * 76 + b"\r\n"
body = body * max(1, size // len(body))
lat = []
while not os.path.exists(stop) and len(lat) < 100000:
    t0 = time.monotonic()
    c = smtplib.SMTP("127.0.0.1", port, local_hostname="probe.test")
    c.sendmail("probe@clinic.test", ["rcpt@example.test"], body)
    lat.append(time.monotonic() - t0)
    c.quit()
lat.sort()
print("%.1f %.1f" % (lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000)
      if lat else "- -")
PY
    local probe=$!
    "$SOURCE" "${args[@]}" "127.0.0.1:$1" >>"$work/source.log" 2>&1 || true
    touch "$stop"
    wait "$probe" || true
    cat "$work/latency.out"
  }

  echo
  echo "Upstream relay: smtp-source -> relay -> smtp-sink, messages/s until the last one left the relay;"
  echo "CPU = the Postern relay's user + system time per message over its timed runs and until its"
  echo "      record builder has caught up;"
  echo "accept p50/p99 = connect to 250 after DATA of a probe session beside smtp-source (an extra run)"
  printf '%-10s %14s %14s %14s %8s %11s %8s %8s %10s %10s\n' sessions "smtp-sink alone" "postern relay" \
    "postfix relay" "ratio" "CPU us/msg" "p50 ms" "p99 ms" "postern ok" "postfix ok"
  for s in $SESSIONS; do
    ceiling=$(median "$sink_port" "$s")
    p0=$(postern_sent)
    c0=$(cpu_ticks "$relay_pid")
    ours=$(relay_median "$relay_port" "$s" postern_pending)
    records_settle "$work/relay-data/postern.db"
    c1=$(cpu_ticks "$relay_pid")
    p1=$(postern_sent)
    lat="- -"
    if [ "${LATENCY:-1}" = 1 ]; then
      lat=$(latency_run "$relay_port" "$s")
      for _ in $(seq 60000); do [ "$(postern_pending)" -eq 0 ] && break; sleep 0.01; done
    fi
    theirs=- f0=0 f1=0
    if [ -n "$pf" ]; then
      f0=$(postfix_sent)
      theirs=$(relay_median "$pf_port" "$s" postfix_pending)
      f1=$(postfix_sent)
    fi
    ratio=$(/usr/bin/python3 -c "print('%.2f' % ($ours / $ceiling))")
    read -r p50 p99 <<<"$lat"
    printf '%-10s %14s %14s %14s %8s %11s %8s %8s %10s %10s\n' "$s" "$ceiling" "$ours" "$theirs" \
      "$ratio" "$(cpu_us "$((c1 - c0))" "$((MESSAGES * REPEAT))")" "$p50" "$p99" "$((p1 - p0))" \
      "$([ -n "$pf" ] && echo "$((f1 - f0))" || echo -)"
  done
fi

# ---- DKIM signing on the relay ----------------------------------------------------------------
# The same end-to-end relay run through a second Postern whose [dkim] sections sign every message
# (RSA-2048, then RSA-2048 and Ed25519 together) next to the unsigned relay above.
# DKIM=0 skips this part.
if [ "${UPSTREAM:-1}" = 1 ] && [ "${DKIM:-1}" = 1 ]; then
  dkim_relay() {   # dkim_relay NAME SECTIONS -> starts a relay, prints its port
    local dport dir=$work/$1
    dport=$(free_port)
    mkdir -p "$dir/data"
    sed -e "s|^data_dir = .*|data_dir = $dir/data|" -e "s|^address = .*|address = 127.0.0.1:$dport|" \
      "$work/relay.conf" >"$dir/relay.conf"
    printf '%s\n' "$2" >>"$dir/relay.conf"
    "$POSTERN" -c "$dir/relay.conf" -f 2>"$dir/relay.log" &
    echo "$! $dport"
  }
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
  openssl genpkey -algorithm ed25519 -out "$work/ed.pem" 2>/dev/null
  chmod 600 "$work/rsa.pem" "$work/ed.pem"
  rsa_sec=$'[dkim rsa]\ndomain = clinic.test\nselector = r1\nkey_file = '"$work/rsa.pem"$'\nmatch = sender'
  ed_sec=$'[dkim ed]\ndomain = clinic.test\nselector = e1\nkey_file = '"$work/ed.pem"$'\nalgorithm = ed25519-sha256\nmatch = sender'
  read -r rsa_pid rsa_port < <(dkim_relay rsa "$rsa_sec")
  read -r both_pid both_port < <(dkim_relay both "$rsa_sec"$'\n'"$ed_sec")
  wait_port "$rsa_port" "$rsa_pid"
  wait_port "$both_port" "$both_pid"
  # (they are not this shell's children: no wait; errexit must not cut the trap short)
  trap 'kill -TERM $rsa_pid $both_pid 2>/dev/null || true; cleanup_relays' EXIT
  pending_in() { sqlite3 -readonly "$work/$1/data/postern.db" \
    "select count(*) from recipients where status in ('queued','deferred')"; }
  rsa_pending() { pending_in rsa; }
  both_pending() { pending_in both; }
  echo
  echo "DKIM signing: smtp-source -> relay -> smtp-sink, messages/s until the last one left the relay"
  printf '%-10s %16s %16s %16s\n' sessions "not signed" "RSA-2048" "RSA + Ed25519"
  for s in $SESSIONS; do
    off=$(relay_median "$relay_port" "$s" postern_pending)
    rsa=$(relay_median "$rsa_port" "$s" rsa_pending)
    both=$(relay_median "$both_port" "$s" both_pending)
    printf '%-10s %16s %16s %16s\n' "$s" "$off" "$rsa" "$both"
  done
  if ! grep -q . <(sqlite3 -readonly "$work/both/data/postern.db" "select 1 from recipients where status = 'sent' limit 1"); then
    echo "bench: WARNING: the signing relay sent nothing" >&2
  fi
fi
