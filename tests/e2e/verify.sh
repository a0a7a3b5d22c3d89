#!/usr/bin/env bash
# verify.sh - "verify a deployment": the relay check against any running turnpike, from a
# client machine. Two aiortc peers on this machine connect relay-only (iceTransportPolicy
# "relay") through the server, one TURN URL at a time, and echo 1 MiB over a data channel
# with a SHA-256 check: it passes only if turnpike allocates, authenticates and relays.
#
# Usage:
#   verify.sh --api URL [--token T] [--ca PEM] [--bytes N]
#       every TURN URL that URL/api/v1/ice hands out, with the credential it mints
#   verify.sh --turn URL [--turn URL ...] (--secret S | --username U --credential C) [--ca PEM]
#       the given URLs (turn:HOST:PORT?transport=udp|tcp, turns:HOST:PORT?transport=tcp)
#   --ca PEM   trust this CA for turns: (e.g. a self-signed test certificate); default: the
#              system's CAs. aiortc checks the certificate against the URL's host.
#
# Needs the aiortc venv of ../shared/harness (run its setup.sh once; it installs aiortc
# 1.16.0 into ${HARNESS_HOME:-/var/tmp/turn-harness}/venv). Exit 0 only if every URL passed.
# Both peers reach the server from this machine, so the server relays to its own relay
# address: a server that denies its own relay IP as a peer fails here (turnpike's default
# deny list covers private and documentation ranges, so a lab server needs --allow-peer).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
H=${TURNPIKE_HARNESS_DIR:-$HERE/../../../shared/harness}
API="" TOKEN="" CA="" SECRET="" USERNAME="" CREDENTIAL="" BYTES=1048576
TURNS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --api) API=$2; shift 2 ;;
    --token) TOKEN=$2; shift 2 ;;
    --turn) TURNS+=("$2"); shift 2 ;;
    --secret) SECRET=$2; shift 2 ;;
    --username) USERNAME=$2; shift 2 ;;
    --credential) CREDENTIAL=$2; shift 2 ;;
    --ca) CA=$2; shift 2 ;;
    --bytes) BYTES=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "verify.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -x "$H/run_pair.sh" ] || [ -f "$H/run_pair.sh" ] || { echo "verify.sh: $H/run_pair.sh not found (set TURNPIKE_HARNESS_DIR)" >&2; exit 1; }
if [ -n "$CA" ]; then export SSL_CERT_FILE; SSL_CERT_FILE=$(cd "$(dirname "$CA")" && pwd)/$(basename "$CA"); fi

if [ -n "$API" ]; then
  # One credential for all URLs: {"iceServers":[...,{"urls":[...],"username","credential"}]}
  ICE=$(API=$API TOKEN=$TOKEN python3 -c '
import json, os, urllib.request
req = urllib.request.Request(os.environ["API"].rstrip("/") + "/api/v1/ice?username=verify",
                             headers={"Authorization": "Bearer " + os.environ["TOKEN"]} if os.environ["TOKEN"] else {})
ice = json.load(urllib.request.urlopen(req, timeout=10))
for s in ice["iceServers"]:
    if "username" in s:
        print(s["username"]); print(s["credential"])
        for u in ([s["urls"]] if isinstance(s["urls"], str) else s["urls"]):
            print(u)
        break
') || { echo "verify.sh: GET $API/api/v1/ice failed" >&2; exit 1; }
  mapfile -t lines <<<"$ICE"
  [ "${#lines[@]}" -ge 3 ] || { echo "verify.sh: no TURN server in $API/api/v1/ice" >&2; exit 1; }
  USERNAME=${lines[0]} CREDENTIAL=${lines[1]} TURNS=("${lines[@]:2}")
fi
[ "${#TURNS[@]}" -gt 0 ] || { echo "verify.sh: give --api URL or --turn URL" >&2; exit 2; }
if [ -n "$SECRET" ]; then AUTH=(--secret "$SECRET" --user verify)
elif [ -n "$USERNAME" ]; then AUTH=(--username "$USERNAME" --credential "$CREDENTIAL")
else echo "verify.sh: --turn needs --secret or --username/--credential" >&2; exit 2; fi

failed=0
for url in "${TURNS[@]}"; do
  proto=udp tls=0
  case "$url" in turns:*) proto=tcp tls=1 ;; *transport=tcp*) proto=tcp ;; esac
  rc=0
  out=$(bash "$H/run_pair.sh" -- --turn "$url" "${AUTH[@]}" --policy relay --bytes "$BYTES" --timeout 30 2>/dev/null) || rc=$?
  python3 "$HERE/check.py" relay "relay via $url" "$rc" "proto=$proto" "tls=$tls" "bytes=$BYTES" <<<"$out" || failed=$((failed + 1))
done
echo "verify: ${#TURNS[@]} URL(s), $failed failed"
[ "$failed" = 0 ]
