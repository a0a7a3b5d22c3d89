#!/usr/bin/env bash
# build-xdp.sh - compile the XDP programs ebpf/*.bpf.c into ebpf/*.bpf.o: turnpike.bpf.c
# (the fast path the daemon loads) and xdp_pass.bpf.c (for the peer end of a veth pair in
# native mode).
#
# Usage:
#   scripts/build-xdp.sh           # rebuild the objects (commit the result)
#   scripts/build-xdp.sh --check   # rebuild into a temporary directory and fail if they
#                                  # differ from the committed objects
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
PROGRAMS="turnpike xdp_pass"
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

build() { # $1 = source, $2 = output file
  # -g makes clang emit BTF (the .maps definitions need it); -fdebug-prefix-map keeps the
  # checkout's path out; --strip-debug drops DWARF but keeps .BTF and .BTF.ext.
  "$CLANG" -O2 -g -target bpf -mcpu=v3 -std=gnu11 -Wall -Werror \
    -fdebug-prefix-map="$PWD"=. -fno-ident \
    -I/usr/include/x86_64-linux-gnu \
    -c "$1" -o "$2"
  "$STRIP" --strip-debug "$2"
}

if [ "$check" = 1 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  stale=0
  for p in $PROGRAMS; do
    build "ebpf/$p.bpf.c" "$tmp/$p.bpf.o"
    if cmp -s "$tmp/$p.bpf.o" "ebpf/$p.bpf.o"; then
      echo "build-xdp.sh: ebpf/$p.bpf.o is up to date"
    else
      echo "build-xdp.sh: ebpf/$p.bpf.o differs from a rebuild of ebpf/$p.bpf.c: run scripts/build-xdp.sh and commit it" >&2
      stale=1
    fi
  done
  exit "$stale"
else
  for p in $PROGRAMS; do
    build "ebpf/$p.bpf.c" "ebpf/$p.bpf.o"
    echo "build-xdp.sh: wrote ebpf/$p.bpf.o ($(wc -c <"ebpf/$p.bpf.o") bytes)"
  done
fi
