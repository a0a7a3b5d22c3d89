#!/usr/bin/env bash
# benches/compare.sh - the same load against coturn and turnpike, alternating, plus a bare
# batched UDP forwarder as the floor; prints (and saves) the tables of docs/PERFORMANCE.md.
#
# Usage (from the project root, as root, after ../shared/harness/setup.sh):
#   benches/compare.sh                    # full pass, about 8-10 minutes
#   QUICK=1 benches/compare.sh            # 2 s runs, fewer ramp steps (smoke test)
#   benches/compare.sh --splice           # also rewrite the results section of docs/PERFORMANCE.md
#
# Environment (all optional):
#   DURATION=4          seconds of traffic per measured run
#   RATES="10000 30000 60000"   packet rates (packets/s, total) for the CPU-per-packet table
#   RAMP="80000 100000 130000 160000 200000 250000"  further rates tried (pinned) until loss >= 0.1%
#   MODES="oneway echo" PINNINGS="pinned unpinned" REPS=1
#   ALLOCS=10 SIZE=200 BURST=10        allocations carrying the load, payload bytes, burst size
#   IDLE_ALLOCS=10000   allocations for allocations/s and RSS per idle allocation
#   TARGETS="coturn1 turnpike coturn forwarder"   which servers (coturn1 = --relay-threads 1)
#   TURNPIKE_BIN / BENCH_BIN   use these binaries instead of `cargo build --release`
#   TURNPIKE_REV        how to describe the turnpike binary in machine.txt (default: git HEAD)
#   OUT=target/bench-results/<timestamp>   where results.jsonl, report.md and logs go
#   TIME_BUDGET=720     seconds; runs that would start later are skipped (and reported)
#
# Pinned = every thread of the server and the load generator on CPU 0 (`taskset`), the
# comparable setting; unpinned = both free to use every CPU. Server CPU time comes from
# /proc/PID/task/*/schedstat over the measurement window, divided by packets relayed (both
# directions in echo mode). Only processes this script started are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
H=${HARNESS:-$ROOT/../shared/harness}
SPLICE=0
for a in "$@"; do
  case "$a" in
    --splice) SPLICE=1 ;;
    -h|--help) sed -n '2,/^set -e/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
if [ "${QUICK:-0}" = 1 ]; then
  : "${DURATION:=2}" "${RAMP:=100000 160000}" "${IDLE_ALLOCS:=2000}"
fi
DURATION=${DURATION:-4}
RATES=${RATES:-"10000 30000 60000"}
RAMP=${RAMP:-"80000 100000 130000 160000 200000 250000"}
MODES=${MODES:-"oneway echo"}
PINNINGS=${PINNINGS:-"pinned unpinned"}
REPS=${REPS:-1}
ALLOCS=${ALLOCS:-10}
SIZE=${SIZE:-200}
BURST=${BURST:-10}
IDLE_ALLOCS=${IDLE_ALLOCS:-10000}
TARGETS=${TARGETS:-"coturn1 turnpike coturn forwarder"}
TIME_BUDGET=${TIME_BUDGET:-720}
SECRET=turnpike-bench-secret
OUT=${OUT:-$ROOT/target/bench-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RES=$OUT/results.jsonl
: >"$RES"
T0=$(date +%s)
NCPU=$(nproc)
ALLCPUS=0-$((NCPU - 1))
log() { echo "[$(( $(date +%s) - T0 ))s] $*" >&2; }

# ---- binaries -------------------------------------------------------------------------
if [ -z "${TURNPIKE_BIN:-}" ] || [ -z "${BENCH_BIN:-}" ]; then
  log "building release binaries"
  cargo build --release --bin turnpike --bin turnpike-bench >&2
fi
# Copies, so that a rebuild during the run cannot swap the binaries under us.
cp "${TURNPIKE_BIN:-target/release/turnpike}" "$OUT/turnpike"
cp "${BENCH_BIN:-target/release/turnpike-bench}" "$OUT/turnpike-bench"
TP=$OUT/turnpike
B=$OUT/turnpike-bench
command -v turnserver >/dev/null || { echo "compare.sh: turnserver missing (run $H/setup.sh)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- process bookkeeping: only what we started ----------------------------------------
declare -A PID=()
COTURN_NAMES=()
cleanup() {
  for k in "${!PID[@]}"; do
    p=${PID[$k]}
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for n in ${COTURN_NAMES[@]+"${COTURN_NAMES[@]}"}; do "$H/coturn_reference.sh" stop --name "$n" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { [ -z "$(ss -Hlnut "sport = :$1")" ]; }
NEXT_PORT=${BASE_PORT:-34780}
free_port() { # sets FREE to a port free on UDP and TCP, from NEXT_PORT up (no subshell)
  while ! port_free "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
  FREE=$NEXT_PORT; NEXT_PORT=$((NEXT_PORT + 1))
}
wait_listen() { # pid port proto(u|t)...
  local pid=$1 port=$2; shift 2
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 1
    local ok=1
    for p in "$@"; do [[ "$(ss -Hl${p}np "sport = :$port")" == *"pid=$pid,"* ]] || ok=0; done
    [ $ok = 1 ] && return 0
    sleep 0.1
  done
  return 1
}

declare -A PORT=()
# start_server TARGET MINPORT MAXPORT: starts it, records PID[TARGET] and PORT[TARGET].
start_server() {
  local t=$1 lo=$2 hi=$3 port; free_port; port=$FREE
  case "$t" in
    turnpike)
      "$TP" run --listen "127.0.0.1:$port" --relay-ip 127.0.0.1 --allow-peer 127.0.0.0/8 \
        --auth-secret "$SECRET" --workers 1 --min-port "$lo" --max-port "$hi" \
        --max-allocations 20000 >"$OUT/turnpike-$port.log" 2>&1 &
      PID[$t]=$!
      wait_listen "${PID[$t]}" "$port" u t || { tail "$OUT/turnpike-$port.log" >&2; return 1; } ;;
    coturn)
      local name="tpbench-$port"
      COTURN_NAMES+=("$name")
      PID[$t]=$("$H/coturn_reference.sh" start --name "$name" --port "$port" --secret "$SECRET" \
        --allow-loopback-peers --min-port "$lo" --max-port "$hi" 2>>"$OUT/coturn-start.log") ;;
    coturn1)
      # The harness script has no option for extra turnserver flags: let it write (and
      # validate) the config, stop that server, and run turnserver on the same config with
      # --relay-threads 1 ourselves.
      local name="tpbench1-$port"
      "$H/coturn_reference.sh" start --name "$name" --port "$port" --secret "$SECRET" \
        --allow-loopback-peers --min-port "$lo" --max-port "$hi" >/dev/null 2>>"$OUT/coturn-start.log"
      "$H/coturn_reference.sh" stop --name "$name" 2>>"$OUT/coturn-start.log"
      local conf="$OUT/coturn1-$port.conf"
      sed -e "s|^pidfile=.*|pidfile=$OUT/coturn1-$port.pid|" \
          -e "s|^log-file=.*|log-file=$OUT/coturn1-$port.log|" \
          "${HARNESS_HOME:-/var/tmp/turn-harness}/coturn/$name/turnserver.conf" >"$conf"
      echo "relay-threads=1" >>"$conf"
      turnserver -c "$conf" >/dev/null 2>&1 &
      PID[$t]=$!
      wait_listen "${PID[$t]}" "$port" u t || { tail "$OUT/coturn1-$port.log" >&2; return 1; } ;;
    forwarder)
      local peer; free_port; peer=$FREE
      PORT[forwarder-peer]=$peer
      "$B" forwarder --listen "127.0.0.1:$port" --to "127.0.0.1:$peer" --max-seconds 3600 \
        2>"$OUT/forwarder.log" &
      PID[$t]=$!
      wait_listen "${PID[$t]}" "$port" u || return 1 ;;
  esac
  PORT[$t]=$port
  log "started $t pid ${PID[$t]} on 127.0.0.1:$port (relay ports $lo-$hi), $(ls /proc/${PID[$t]}/task | wc -l) threads"
}
stop_server() {
  local t=$1 p=${PID[$1]:-}
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  unset "PID[$t]"
}
pin() { # pinned|unpinned: moves every thread of every running server
  local cpus=$ALLCPUS; [ "$1" = pinned ] && cpus=0
  for t in "${!PID[@]}"; do taskset -a -cp "$cpus" "${PID[$t]}" >/dev/null; done
}
over_budget() { [ $(( $(date +%s) - T0 )) -ge "$TIME_BUDGET" ]; }

# bench LABEL TARGET PINNING [turnpike-bench args...]: one measured run, JSON to results.jsonl
bench() {
  local label=$1 t=$2 pinning=$3; shift 3
  if over_budget; then log "SKIP (time budget) $label"; echo "{\"kind\":\"skipped\",\"label\":\"$label\"}" >>"$RES"; return 0; fi
  local pre=(); [ "$pinning" = pinned ] && pre=(taskset -c 0)
  local target=(--server "127.0.0.1:${PORT[$t]}" --secret "$SECRET")
  [ "$t" = forwarder ] && target=(--raw --server "127.0.0.1:${PORT[$t]}" --peer-bind "127.0.0.1:${PORT[forwarder-peer]}")
  local line
  if line=$("${pre[@]}" "$B" "${target[@]}" --server-pid "${PID[$t]}" --json --label "$label" "$@" 2>>"$OUT/bench.log"); then
    echo "$line" >>"$RES"
    log "$label: $(python3 "$ROOT/benches/report.py" --line "$line")"
  else
    log "FAILED $label (see $OUT/bench.log)"
    echo "{\"kind\":\"failed\",\"label\":\"$label\"}" >>"$RES"
  fi
}

# ---- machine --------------------------------------------------------------------------
{
  echo "date: $(date -u +%FT%TZ)"
  echo "nproc: $NCPU"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "kernel: $(uname -r)"
  echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "coturn: $(turnserver --version 2>/dev/null | head -1)"
  echo "turnpike: ${TURNPIKE_REV:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+dirty')} (${TURNPIKE_BIN:-target/release/turnpike})"
  echo "settings: DURATION=$DURATION RATES='$RATES' RAMP='$RAMP' ALLOCS=$ALLOCS SIZE=$SIZE BURST=$BURST IDLE_ALLOCS=$IDLE_ALLOCS REPS=$REPS"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

# ---- 1. allocations/s and RSS per idle allocation (fresh servers, full port range) -----
for t in $TARGETS; do
  [ "$t" = forwarder ] && continue
  start_server "$t" 49152 65535
  sleep 0.5
  bench "allocs/$t" "$t" unpinned --allocations-only "$IDLE_ALLOCS" --hold 2 --client-ports 10000-32000 --concurrency 64
  stop_server "$t"
done

# ---- 2. CPU per packet, pinned and unpinned, alternating servers -----------------------
lo=20000
for t in $TARGETS; do start_server "$t" "$lo" $((lo + 999)); lo=$((lo + 1000)); done
sleep 0.5
COMMON=(--allocations "$ALLOCS" --size "$SIZE" --burst "$BURST")
# the load generator's own capacity (unpinned, oneway, against the forwarder)
if [[ " $TARGETS " == *" forwarder "* ]]; then
  pin unpinned
  bench "selftest/forwarder/unpinned/oneway/300000" forwarder unpinned "${COMMON[@]}" --duration 3 --rate 300000 --mode oneway
fi
for pinning in $PINNINGS; do
  pin "$pinning"
  for mode in $MODES; do
    for rate in $RATES; do
      for rep in $(seq "$REPS"); do
        order=($TARGETS)
        # alternate the order between repetitions so no server always runs first
        if [ $((rep % 2)) = 0 ]; then order=($(printf '%s\n' "${order[@]}" | tac)); fi
        for t in "${order[@]}"; do
          bench "cpu/$t/$pinning/$mode/$rate" "$t" "$pinning" "${COMMON[@]}" --duration "$DURATION" --rate "$rate" --mode "$mode"
        done
      done
    done
  done
done

# ---- 3. highest rate with < 0.1% loss (pinned): continue above RATES until a run loses --
pin pinned
for mode in $MODES; do
  declare -A alive=()
  for t in $TARGETS; do
    alive[$t]=$(python3 - "$RES" "$t" "$mode" <<'EOF'
import json, sys
res, t, mode = sys.argv[1:]
ok = 1
for l in open(res):
    d = json.loads(l)
    lab = d.get("label", "")
    if lab.startswith(f"cpu/{t}/pinned/{mode}/") and d.get("kind") == "load" and d["loss_pct"] >= 0.1:
        ok = 0
print(ok)
EOF
)
  done
  for rate in $RAMP; do
    for t in $TARGETS; do
      [ "${alive[$t]}" = 1 ] || continue
      bench "ramp/$t/pinned/$mode/$rate" "$t" pinned "${COMMON[@]}" --duration 3 --rate "$rate" --mode "$mode"
      if ! tail -1 "$RES" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); sys.exit(0 if d.get("kind")=="load" and d["loss_pct"]<0.1 else 1)'; then
        alive[$t]=0
      fi
    done
  done
  unset alive
done
pin unpinned
for t in "${!PID[@]}"; do stop_server "$t"; done

# ---- report -------------------------------------------------------------------------
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
echo "runtime: $(( $(date +%s) - T0 )) s" >>"$OUT/machine.txt"
python3 "$ROOT/benches/report.py" "$OUT" >"$OUT/report.md"
cat "$OUT/report.md"
if [ "$SPLICE" = 1 ]; then
  python3 "$ROOT/benches/report.py" "$OUT" --splice "$ROOT/docs/PERFORMANCE.md"
  log "rewrote the results section of docs/PERFORMANCE.md"
fi
log "done: $OUT"
