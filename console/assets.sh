#!/bin/sh
# Writes console/assets.c: the files given (under SRCDIR) as byte arrays, so that the console
# needs nothing from outside the binary. Usage: assets.sh SRCDIR FILE...
set -eu
srcdir=$1
shift
echo '/* Generated from console/assets/ by console/assets.sh: do not edit. */'
echo '#include "console/console_int.h"'
i=0
for f in "$@"; do
  echo "static const unsigned char asset_$i[] = {"
  od -An -v -tx1 "$srcdir/$f" | sed -e 's/[0-9a-f][0-9a-f]/0x&,/g' -e 's/^ *//'
  echo "0x00 };"
  i=$((i + 1))
done
echo 'const struct console_asset console_assets[] = {'
i=0
for f in "$@"; do
  echo "  { \"$(basename "$f")\", asset_$i, sizeof(asset_$i) - 1 },"
  i=$((i + 1))
done
echo '};'
echo "const size_t console_nassets = $i;"
