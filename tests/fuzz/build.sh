#!/bin/sh
# Builds every fuzz target with libFuzzer, ASan and UBSan into BUILDDIR/fuzz/, compiling the
# sources each one needs directly (no configure-time flags involved). Run one with e.g.
#   BUILDDIR/fuzz/fuzz_session -close_fd_mask=2 -max_total_time=60 tests/fuzz/corpus/session
set -eu
[ $# -eq 1 ] || { echo "usage: $0 BUILDDIR" >&2; exit 2; }
top=$(cd "$(dirname "$0")/../.." && pwd)
out="$1/fuzz"
mkdir -p "$out"
CC=${CC:-clang}
CFLAGS="-std=c11 -g -O1 -D_GNU_SOURCE -pthread -I$top -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
LIBS="-lsqlite3 -linih -pthread"

build() {
  name=$1
  shift
  echo "  FUZZ  $out/$name"
  # shellcheck disable=SC2086
  $CC $CFLAGS -o "$out/$name" "$top/tests/fuzz/$name.c" "$@" $LIBS
}

build fuzz_smtpgram "$top/lib/buf.c" "$top/lib/smtpgram.c"
# shellcheck disable=SC2046
build fuzz_sendgrid_json "$top/lib/buf.c" "$top/relay/sendgrid_json.c" \
  $(pkg-config --cflags --libs gmime-3.0 jansson)
build fuzz_session "$top/lib/buf.c" "$top/lib/log.c" "$top/lib/conn.c" "$top/lib/smtpgram.c" \
  "$top/lib/store.c" "$top/smtp/server.c"
# shellcheck disable=SC2046
build fuzz_inbound_events "$top/lib/buf.c" "$top/inbound/webhook.c" "$top/tls/digest.c" \
  "$top/tls/verify.c" $(pkg-config --cflags --libs jansson openssl)
# shellcheck disable=SC2046
build fuzz_inbound_envelope "$top/lib/buf.c" "$top/inbound/webhook.c" "$top/tls/digest.c" \
  "$top/tls/verify.c" $(pkg-config --cflags --libs jansson openssl)
