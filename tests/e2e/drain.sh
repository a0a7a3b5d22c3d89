#!/usr/bin/env bash
# drain.sh - two turnpike instances sharing a secret in the NAT lab; A drains during a call.
#
# Usage (as root): tests/e2e/drain.sh          run the case (about a minute)
#                  tests/e2e/drain.sh --down   remove a leftover lab
#
#   PREFIX-srv  A 203.0.113.1 (:3478, API :8080, drains to B)   B 203.0.113.2 (:3478, API :8080)
#   PREFIX-c1 behind a symmetric NAT        PREFIX-c2 behind another symmetric NAT
#
# 1. An aiortc call (long_call.py, relay only through A) runs, one message every 50 ms.
# 2. `turnpike drain` on A: it reports the call's 2 allocations and B as the alternate.
# 3. A new call: two Chromiums (c1, c2) on A's /test/call page, relay only, iceServers from
#    A's /api/v1/ice (A's URIs). Their Allocates at A get 300 Try Alternate; libwebrtc
#    follows it to B, and the call connects relay/relay through B's relay address, video
#    decoded and a 1 MiB file moved with a matching SHA-256.
# 4. The first call is still flowing: every message sent came back, many of them after the
#    drain began. It ends (aioice deletes its allocations), and `turnpike drain --wait` on A
#    returns "drained: no allocations left".
# Prints "drain-e2e: 1 passed, 0 failed" (or "0 passed, 1 failed") last.
#
# The lab is ../shared/harness/natlab.sh with prefix $DRAIN_PREFIX (default "tpd"), built
# here and removed on exit; nothing leaves its namespaces. Env: TURNPIKE_BIN (default
# target/debug/turnpike), TURNPIKE_HARNESS_DIR, HARNESS_HOME, DRAIN_KEEP_LOGS=1.
# Needs the harness's setup.sh (aiortc venv, nftables), chromium, node + `npm ci` here.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
H=${TURNPIKE_HARNESS_DIR:-$ROOT/../shared/harness}
HARNESS_HOME=${HARNESS_HOME:-/var/tmp/turn-harness}
PY=${PYTHON:-$HARNESS_HOME/venv/bin/python}
PREFIX=${DRAIN_PREFIX:-tpd}
BIN=${TURNPIKE_BIN:-$ROOT/target/debug/turnpike}
SECRET=turnpike-drain-e2e-secret
A=203.0.113.1 B=203.0.113.2

need() { echo "drain.sh: $1" >&2; exit 1; }
[ "$(id -u)" = 0 ] || need "must run as root (network namespaces)"
[ -f "$H/natlab.sh" ] || need "$H/natlab.sh not found (set TURNPIKE_HARNESS_DIR)"
LOCK_DIR=/run/lock
[ -d "$LOCK_DIR" ] && [ -w "$LOCK_DIR" ] || LOCK_DIR=/tmp
exec 9>"$LOCK_DIR/turnpike-e2e-$PREFIX.lock"
flock -w 600 9 || need "another run with prefix $PREFIX holds the lock"
if [ "${1:-}" = --down ]; then bash "$H/natlab.sh" down --prefix "$PREFIX"; exit 0; fi
[ -x "$PY" ] || need "$PY missing: run ../shared/harness/setup.sh"
[ -x "$BIN" ] || need "$BIN missing: run cargo build (or set TURNPIKE_BIN)"
command -v chromium >/dev/null || need "chromium missing: apt-get install chromium"
[ -d "$HERE/node_modules/playwright-core" ] || need "playwright-core missing: (cd tests/e2e && npm ci)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/turnpike-drain-e2e.XXXXXX")
PIDS=()
cleanup() {
  local rc=$? p
  for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done
  bash "$H/natlab.sh" down --prefix "$PREFIX" 2>/dev/null || true  # also stops what ran inside
  if [ "$rc" != 0 ]; then
    for f in "$WORK"/*.err; do
      [ -s "$f" ] && { echo "---- $(basename "$f") (last 15 lines) ----"; tail -15 "$f"; } >&2
    done
  fi
  if [ "${DRAIN_KEEP_LOGS:-0}" = 1 ]; then echo "drain.sh: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

FAILED=0
problem() { echo "    problem: $*"; FAILED=1; }
verdict() {
  if [ "$FAILED" = 0 ]; then echo "PASS drain-webrtc"; echo "drain-e2e: 1 passed, 0 failed"; exit 0; fi
  echo "FAIL drain-webrtc"; echo "drain-e2e: 0 passed, 1 failed"; exit 1
}

T0=$SECONDS
bash "$H/natlab.sh" up --nat symmetric --prefix "$PREFIX" >/dev/null
eval "$(bash "$H/natlab.sh" env --prefix "$PREFIX")"
C1=$NATLAB_C1_NS C2=$NATLAB_C2_NS SRV=$NATLAB_SRV_NS
# Instance B gets its own address beside A's in the server namespace.
ip -n "$SRV" addr add "$B/24" dev eth0
TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')

# start NAME IP EXTRA...: one instance in the server namespace; waits for its ready line.
start() {
  local name=$1 ip=$2; shift 2
  ip netns exec "$SRV" "$BIN" run --listen "$ip:3478" --relay-ip "$ip" \
    --allow-peer 203.0.113.0/24 --auth-secret "$SECRET" --api-listen "$ip:8080" \
    --api-token "$TOKEN" --api-test-page "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  PIDS+=($!)
  for _ in $(seq 100); do
    grep -q '"event":"ready"' "$WORK/$name.out" 2>/dev/null && return 0
    sleep 0.2
  done
  need "instance $name printed no ready line: $(tail -3 "$WORK/$name.err")"
}
start a "$A" --drain-alternate-server "$B:3478"
start b "$B"

# metric IP NAME_WITH_LABELS: a sample's value from an instance's /metrics (0 if absent).
metric() {
  ip netns exec "$SRV" python3 - "http://$1:8080" "$2" "$TOKEN" <<'EOF'
import sys, urllib.request
api, name, token = sys.argv[1:4]
req = urllib.request.Request(api + "/metrics", headers={"Authorization": "Bearer " + token})
for line in urllib.request.urlopen(req, timeout=5).read().decode().splitlines():
    if line.startswith(name + " "):
        print(int(float(line.split()[1])))
        break
else:
    print(0)
EOF
}
drain_cli() { ip netns exec "$SRV" "$BIN" drain --api "http://$A:8080" --api-token "$TOKEN" "$@"; }

echo "== 1. a call through A"
CALL=$WORK/call1
mkdir "$CALL"
TURN_A="turn:$A:3478?transport=udp"
ip netns exec "$C2" "$PY" "$HERE/long_call.py" --dir "$CALL" --role answer --turn "$TURN_A" \
  --secret "$SECRET" >"$WORK/call1-answer.json" 2>"$WORK/call1-answer.err" &
ANSWER=$!
PIDS+=($ANSWER)
ip netns exec "$C1" "$PY" "$HERE/long_call.py" --dir "$CALL" --role offer --turn "$TURN_A" \
  --secret "$SECRET" >"$WORK/call1-offer.json" 2>"$WORK/call1-offer.err" &
OFFER=$!
PIDS+=($OFFER)
for _ in $(seq 150); do [ -e "$CALL/connected" ] && break; sleep 0.2; done
[ -e "$CALL/connected" ] || { problem "the first call did not connect through A within 30 s"; verdict; }
echo "    connected through A"

echo "== 2. drain A"
status=$(drain_cli --json)
echo "    $status"
grep -q '"allocations":2' <<<"$status" || problem "A should hold the call's 2 allocations"
grep -q "\"alternate_servers\":\[\"$B:3478\"\]" <<<"$status" || problem "A should drain to $B:3478"
touch "$CALL/mark"
b_before=$(metric "$B" 'turnpike_allocations_total{transport="udp"}')
a_created=$(metric "$A" 'turnpike_allocations_total{transport="udp"}')

echo "== 3. a new call: two Chromiums on A's /test/call, redirected to B"
room=$(ip netns exec "$C1" python3 -c '
import json, sys, urllib.request
api, token = sys.argv[1:3]
req = urllib.request.Request(api + "/api/v1/rooms", method="POST", headers={"Authorization": "Bearer " + token})
print(json.load(urllib.request.urlopen(req, timeout=5))["room"])' "http://$A:8080" "$TOKEN")
head -c 1048576 /dev/urandom >"$WORK/file.bin"
sha=$(sha256sum "$WORK/file.bin" | cut -d' ' -f1)
url="http://$A:8080/test/call#room=$room&token=$TOKEN"
ip netns exec "$C2" node "$HERE/testpage_peer.mjs" --case call --role receiver --url "$url" \
  --expect-sha256 "$sha" --timeout 60 >"$WORK/receiver.json" 2>"$WORK/receiver.err" &
RECEIVER=$!
PIDS+=($RECEIVER)
call2=0
ip netns exec "$C1" node "$HERE/testpage_peer.mjs" --case call --role sender --url "$url" \
  --file "$WORK/file.bin" --timeout 60 >"$WORK/sender.json" 2>"$WORK/sender.err" || call2=$?
wait "$RECEIVER" || call2=$?
python3 "$HERE/check.py" call drain-new-call "$call2" < <(cat "$WORK/sender.json" "$WORK/receiver.json") | sed 's/^/    /' ||
  problem "the new call did not work"
for side in sender receiver; do
  python3 - "$WORK/$side.json" "$B" <<'EOF' || problem "the $side's relay is not on B"
import json, sys
result = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
local = (result.get("pair") or {}).get("local") or {}
print(f"    {sys.argv[1].rsplit('/', 1)[-1]}: local relay {local.get('address')}")
sys.exit(0 if str(local.get("address", "")).startswith(sys.argv[2] + ":") else 1)
EOF
done
b_after=$(metric "$B" 'turnpike_allocations_total{transport="udp"}')
a_after=$(metric "$A" 'turnpike_allocations_total{transport="udp"}')
redirects=$(metric "$A" 'turnpike_error_responses_total{code="300"}')
echo "    B allocations (udp) $b_before -> $b_after; A allocations (udp) $a_created -> $a_after; A sent $redirects 300s"
[ "$b_after" -ge $((b_before + 2)) ] || problem "B should have made both Chromiums' allocations"
[ "$a_after" = "$a_created" ] || problem "A made allocations while draining"
[ "$redirects" -ge 2 ] || problem "A should have answered the Chromiums' Allocates with 300"

echo "== 4. the first call is still flowing; it ends, and A is drained"
touch "$CALL/stop"
wait "$OFFER" || problem "the first call's offerer: $(cat "$WORK/call1-offer.json")"
wait "$ANSWER" || problem "the first call's answerer: $(cat "$WORK/call1-answer.json")"
echo "    $(cat "$WORK/call1-offer.json")"
python3 - "$WORK/call1-offer.json" <<'EOF' || problem "the first call did not keep flowing through the drain"
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r.get("ok") and r.get("echoed_after_mark", 0) >= 20 else 1)
EOF
if out=$(drain_cli --wait --timeout 30 --interval 0.2 2>&1); then
  echo "    $(tail -1 <<<"$out")"
  [ "$(tail -1 <<<"$out")" = "drained: no allocations left" ] || problem "drain --wait: $out"
else
  problem "drain --wait did not see the last allocation go: $out"
fi
echo "    ($((SECONDS - T0)) s)"
verdict
