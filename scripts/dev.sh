#!/usr/bin/env bash
# The two entry points of README.md, for a fresh Debian 12 machine as root:
#   scripts/dev.sh run    install what is missing, build, run Postern in the foreground on its
#                         embedded default (127.0.0.1:587, capture route, ./postern-data)
#   scripts/dev.sh test   install what is missing, build, run the whole suite, then again on an
#                         ASan+UBSan build; ends with one "N passed, M failed" line
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD

BUILD_PKGS="build-essential autoconf automake pkg-config libssl-dev libcurl4-openssl-dev
  libsasl2-dev libsasl2-modules sasl2-bin libspf2-dev libsqlite3-dev libgmime-3.0-dev
  libjansson-dev libmicrohttpd-dev libinih-dev libsystemd-dev libopendkim-dev libopendmarc-dev
  publicsuffix libcrypt-dev"
TEST_PKGS="python3 python3-pytest python3-aiosmtpd swaks libnet-ssleay-perl curl openssl postfix
  sqlite3 iproute2 clang libclang-rt-14-dev python3-jsonschema dnsmasq-base systemd procps man-db
  groff-base mandoc nghttp2-server python3-prometheus-client python3-botocore python3-dkim
  python3-nacl opendkim-tools php-cli chromium chromium-driver python3-selenium"

need() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # postfix is only wanted for its smtp-sink/smtp-source tools: keep its service quiet
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

build() {   # build DIR [configure args...]
  local dir=$1; shift
  [ -x "$SRC/configure" ] && [ "$SRC/configure" -nt "$SRC/configure.ac" ] || (cd "$SRC" && autoreconf -fi >/dev/null)
  mkdir -p "$dir"
  if [ ! -f "$dir/Makefile" ] || [ "$SRC/configure" -nt "$dir/Makefile" ]; then
    (cd "$dir" && "$SRC/configure" -q "$@")
  fi
  make -C "$dir" -j"$(nproc)" all >/dev/null
  make -C "$dir" -j"$(nproc)" check TESTS= >/dev/null
}

suite() {   # suite BUILDDIR NAME
  local dir=$1 name=$2
  echo "== test suite: $name build"
  POSTERN_BUILDDIR=$dir PYTEST_ADDOPTS="--junitxml=$dir/junit.xml ${PYTEST_ADDOPTS:-}" \
    "$SRC/tests/run-pytest" || true
}

case "${1:-}" in
run)
  need $BUILD_PKGS
  build "$SRC/_build/release"
  echo "== Postern on its embedded default; Ctrl-C stops it"
  exec "$SRC/_build/release/postern" -f
  ;;
test)
  need $BUILD_PKGS $TEST_PKGS
  build "$SRC/_build/release"
  build "$SRC/_build/asan" --enable-sanitizers
  suite "$SRC/_build/release" release
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    suite "$SRC/_build/asan" asan+ubsan
  /usr/bin/python3 "$SRC/tests/junit-total" "$SRC/_build/release/junit.xml" "$SRC/_build/asan/junit.xml"
  ;;
*)
  echo "usage: scripts/dev.sh run|test" >&2
  exit 64
  ;;
esac
