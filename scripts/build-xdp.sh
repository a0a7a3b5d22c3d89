#!/usr/bin/env bash
# build-xdp.sh - compile the XDP program ebpf/turnpike.bpf.c into ebpf/turnpike.bpf.o.
#
# Usage:
#   scripts/build-xdp.sh           # rebuild ebpf/turnpike.bpf.o (commit the result)
#   scripts/build-xdp.sh --check   # rebuild into a temporary file and fail if it differs
#                                  # from the committed object
#
# The object is committed so `cargo build` never needs clang. Needs Debian 12's clang 14 and
# libbpf-dev 1.1 (apt-get install -y clang llvm libbpf-dev); other versions produce other
# bytes, so --check names the compiler it expects.
#
# Reproducible: fixed flags, BTF kept (aya needs the map definitions in .BTF) but DWARF
# stripped, and the source path recorded as "ebpf/turnpike.bpf.c" whatever the checkout's
# directory, so two builds of the same source give the same bytes.
set -euo pipefail

cd "$(dirname "$0")/.."
SRC=ebpf/turnpike.bpf.c
OUT=ebpf/turnpike.bpf.o
CLANG=${CLANG:-clang}
STRIP=${LLVM_STRIP:-llvm-strip}
WANT_CLANG_MAJOR=14

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  -h|--help) sed -n '2,/^set -e/s/^# \{0,1\}//p' "$0"; exit 0 ;;
  *) echo "build-xdp.sh: unknown argument: $1" >&2; exit 2 ;;
esac

command -v "$CLANG" >/dev/null || { echo "build-xdp.sh: $CLANG not found (apt-get install -y clang llvm libbpf-dev)" >&2; exit 1; }
command -v "$STRIP" >/dev/null || STRIP=llvm-strip-$WANT_CLANG_MAJOR
command -v "$STRIP" >/dev/null || { echo "build-xdp.sh: llvm-strip not found (apt-get install -y llvm)" >&2; exit 1; }
[ -f /usr/include/bpf/bpf_helpers.h ] || { echo "build-xdp.sh: libbpf headers not found (apt-get install -y libbpf-dev)" >&2; exit 1; }
major=$("$CLANG" -dumpversion | cut -d. -f1)
if [ "$major" != "$WANT_CLANG_MAJOR" ]; then
  echo "build-xdp.sh: clang $major, the committed object is from clang $WANT_CLANG_MAJOR: the bytes will differ" >&2
  [ "$check" = 1 ] && exit 1
fi

build() { # $1 = output file
  # -g makes clang emit BTF (the .maps definitions need it); -fdebug-prefix-map keeps the
  # checkout's path out; --strip-debug drops DWARF but keeps .BTF and .BTF.ext.
  "$CLANG" -O2 -g -target bpf -mcpu=v3 -std=gnu11 -Wall -Werror \
    -fdebug-prefix-map="$PWD"=. -fno-ident \
    -I/usr/include/x86_64-linux-gnu \
    -c "$SRC" -o "$1"
  "$STRIP" --strip-debug "$1"
}

if [ "$check" = 1 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  build "$tmp/turnpike.bpf.o"
  if cmp -s "$tmp/turnpike.bpf.o" "$OUT"; then
    echo "build-xdp.sh: $OUT is up to date"
  else
    echo "build-xdp.sh: $OUT differs from a rebuild of $SRC: run scripts/build-xdp.sh and commit it" >&2
    exit 1
  fi
else
  build "$OUT"
  echo "build-xdp.sh: wrote $OUT ($(wc -c <"$OUT") bytes)"
fi
