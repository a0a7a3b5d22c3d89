#!/usr/bin/env bash
# benches/xdp_lab.sh - the kernel fast path against userspace, in a lab of two network
# namespaces: turnpike with XDP, turnpike in userspace, coturn and the bare batched forwarder
# under the same load, one after the other in one run. Prints (and saves) the tables of
# docs/PERFORMANCE.md, "Kernel fast path".
#
# Usage (from the project root, as root, after ../shared/harness/setup.sh; needs ethtool
# and iproute2, and no clang: the committed ebpf/*.bpf.o are loaded):
#   benches/xdp_lab.sh              # full pass, about 4 minutes
#   QUICK=1 benches/xdp_lab.sh      # 2 s runs, fewer steps (smoke test)
#
#   tpxb-l  eth0 198.18.0.2 (clients)  ──veth──  eth0 198.18.0.1  tpxb-s (the server)
#           eth0 198.18.0.3 (peers)
#
# 198.18.0.0/15 is the benchmarking range (RFC 2544); the namespaces have no other link, so
# no packet leaves them. The load generator (turnpike-bench) runs in tpxb-l, each server in
# tpxb-s. XDP runs in driver mode on the server's eth0, with ebpf/xdp_pass.bpf.o on the
# load end (a veth reads its peer's XDP_TX frames only then; README, "Kernel fast path").
# Offloads are off on the load end, so frames carry full checksums, as from a real NIC.
#
# CPU: XDP runs in softirq, outside any process, so the figure is machine-wide: all CPUs'
# wall time over the measurement window less their idle time (/proc/stat), divided by the
# packets relayed (both directions in echo mode). The load generator's own process time is
# reported beside it; how busy the machine was without load is measured first and
# reported, not subtracted.
#
# SPLIT=1 (the default) gives the server side one CPU and the load side the other, so that
# the server's cost can be read off its own CPU: the server process and the NAPI thread of
# the server's veth (where XDP runs, or the stack receives for a userspace server) on CPU 0;
# the load generator and the load end's NAPI thread on CPU 1. A veth has NAPI only with an
# XDP program, so the userspace servers' end gets ebpf/xdp_pass.bpf.o too, and the NAPI
# threads are made with /sys/class/net/eth0/threaded (as a NIC's interrupts would be given
# to the server's CPUs). SPLIT=0 pins nothing.
#
# Environment (all optional):
#   DURATION=3          seconds of traffic per run
#   RAMP="10000 20000 30000 ... 200000"  echo rates (packets/s
#                       sent by the clients; relayed = twice that) tried until loss >= 0.1%
#   WORK_RATE=30000     echo rate for the work table
#   CHANNELS="10 1000 10000" SIZES="100 200 1200"   the work table's axes (200 B / 10 ch fixed)
#   TARGETS="xdp userspace coturn forwarder"
#   SPLIT=1             server on CPU 0, load on CPU 1 (see below); SPLIT=0: nothing pinned
#   THREADS             load generator threads (default 1 with SPLIT=1, else 2)
#   TURNPIKE_BIN / BENCH_BIN   use these binaries instead of `cargo build --release`
#   OUT=target/bench-results/xdp-<timestamp>
#   TIME_BUDGET=1200    seconds; runs that would start later are skipped (and reported)
# Only processes and namespaces this script made are stopped and removed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
H=${HARNESS:-$ROOT/../shared/harness}
case "${1:-}" in
  -h|--help) sed -n '2,/^set -e/s/^# \{0,1\}//p' "$0"; exit 0 ;;
  "") ;;
  *) echo "xdp_lab.sh: unknown argument $1" >&2; exit 2 ;;
esac
if [ "${QUICK:-0}" = 1 ]; then
  : "${DURATION:=2}" "${RAMP:=20000 80000 200000}" "${CHANNELS:=10 1000}" "${SIZES:=100 1200}"
fi
DURATION=${DURATION:-3}
RAMP=${RAMP:-"10000 20000 30000 40000 50000 60000 80000 100000 130000 160000 200000"}
WORK_RATE=${WORK_RATE:-30000}
CHANNELS=${CHANNELS:-"10 1000 10000"}
SIZES=${SIZES:-"100 200 1200"}
TARGETS=${TARGETS:-"xdp userspace coturn forwarder"}
SPLIT=${SPLIT:-1}
if [ "$SPLIT" = 1 ]; then THREADS=${THREADS:-1}; else THREADS=${THREADS:-2}; fi
SERVER_CPU=0 LOAD_CPU=1
TIME_BUDGET=${TIME_BUDGET:-1200}
SECRET=turnpike-bench-secret
OUT=${OUT:-$ROOT/target/bench-results/xdp-$(date +%Y%m%d-%H%M%S)}
NS_S=tpxb-s NS_L=tpxb-l
SERVER_IP=198.18.0.1 CLIENT_IP=198.18.0.2 PEER_IP=198.18.0.3
PORT=3478 MIN_PORT=40000 MAX_PORT=59999
mkdir -p "$OUT"
RES=$OUT/results.jsonl
: >"$RES"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*" >&2; }
[ "$(id -u)" = 0 ] || { echo "xdp_lab.sh: needs root (namespaces, XDP)" >&2; exit 1; }
for tool in ethtool ip turnserver; do
  command -v "$tool" >/dev/null || { echo "xdp_lab.sh: $tool missing (run $H/setup.sh; apt-get install ethtool)" >&2; exit 1; }
done

if [ -z "${TURNPIKE_BIN:-}" ] || [ -z "${BENCH_BIN:-}" ]; then
  log "building release binaries"
  cargo build --release --bin turnpike --bin turnpike-bench >&2
fi
# Copies, so that a rebuild during the run cannot swap the binaries under us.
cp "${TURNPIKE_BIN:-target/release/turnpike}" "$OUT/turnpike"
cp "${BENCH_BIN:-target/release/turnpike-bench}" "$OUT/turnpike-bench"
TP=$OUT/turnpike B=$OUT/turnpike-bench

# ---- the lab, and cleaning up only what we made ----------------------------------------
SERVER_PID="" COTURN_NAME=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "$COTURN_NAME" ] && "$H/coturn_reference.sh" stop --name "$COTURN_NAME" >/dev/null 2>&1 || true
  ip netns del "$NS_S" 2>/dev/null || true
  ip netns del "$NS_L" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for ns in "$NS_S" "$NS_L"; do
  if ip netns list | grep -qw "$ns"; then
    echo "xdp_lab.sh: namespace $ns exists (another run?); remove it with: ip netns del $ns" >&2
    trap - EXIT; exit 1
  fi
done
ip netns add "$NS_S"
ip netns add "$NS_L"
for ns in "$NS_S" "$NS_L"; do
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ip -n "$NS_S" link add eth0 type veth peer name eth0 netns "$NS_L"
ip -n "$NS_S" addr add "$SERVER_IP/24" dev eth0
ip -n "$NS_L" addr add "$CLIENT_IP/24" dev eth0
ip -n "$NS_L" addr add "$PEER_IP/24" dev eth0
ip -n "$NS_S" link set eth0 up
ip -n "$NS_L" link set eth0 up
ip netns exec "$NS_L" ethtool -K eth0 tx off >/dev/null
ip -n "$NS_L" link set dev eth0 xdpdrv obj "$ROOT/ebpf/xdp_pass.bpf.o" sec xdp
napi_threads() { ps -eo pid=,comm= | awk '$2 ~ /^napi\//{print $1}' | sort; }
# pin_new_napi BEFORE CPU: pins the NAPI threads that are not in BEFORE; says how many
pin_new_napi() {
  local n=0 p
  for p in $(comm -13 <(echo "$1") <(napi_threads)); do taskset -pc "$2" "$p" >/dev/null; n=$((n + 1)); done
  echo "$n"
}
if [ "$SPLIT" = 1 ]; then
  before=$(napi_threads)
  ip netns exec "$NS_L" sh -c 'echo 1 > /sys/class/net/eth0/threaded'
  [ "$(pin_new_napi "$before" "$LOAD_CPU")" -ge 1 ] || { echo "xdp_lab.sh: no NAPI thread for the load end" >&2; exit 1; }
fi
# bpf_fib_lookup answers only for an interface that forwards (README); nothing else is
# routed: the namespace has one link.
ip netns exec "$NS_S" sysctl -qw net.ipv4.conf.eth0.forwarding=1
# Sockets of many allocations: the defaults of a fresh namespace are small.
for ns in "$NS_S" "$NS_L"; do
  ip netns exec "$ns" sysctl -qw net.core.rmem_max=8388608 net.core.wmem_max=8388608 2>/dev/null || true
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# (not for commands put in the background: $! would be the subshell)
inS() { ip netns exec "$NS_S" "$@"; }
inL() { ip netns exec "$NS_L" "$@"; }
wait_udp() { # pid port: until the pid listens on udp PORT in the server namespace
  for _ in $(seq 100); do
    kill -0 "$1" 2>/dev/null || return 1
    [[ "$(inS ss -Hlunp "sport = :$2")" == *"pid=$1,"* ]] && return 0
    sleep 0.1
  done
  return 1
}

# start TARGET: starts it in the server namespace, sets SERVER_PID
start() {
  local t=$1 before
  before=$(napi_threads)
  if [ "$SPLIT" = 1 ] && [ "$t" != xdp ]; then
    ip -n "$NS_S" link set dev eth0 xdpdrv obj "$ROOT/ebpf/xdp_pass.bpf.o" sec xdp
  fi
  case "$t" in
    xdp|userspace)
      local extra=(); [ "$t" = xdp ] && extra=(--xdp-interface eth0 --xdp-mode driver)
      ip netns exec "$NS_S" "$TP" run --listen "$SERVER_IP:$PORT" --relay-ip "$SERVER_IP" --allow-peer "$PEER_IP/32" \
        --auth-secret "$SECRET" --workers 1 --min-port "$MIN_PORT" --max-port "$MAX_PORT" \
        --max-allocations 20000 --api-listen 127.0.0.1:8080 ${extra[@]+"${extra[@]}"} \
        >"$OUT/turnpike-$t.log" 2>&1 &
      SERVER_PID=$!
      wait_udp "$SERVER_PID" "$PORT" || { tail "$OUT/turnpike-$t.log" >&2; return 1; }
      if [ "$t" = xdp ]; then
        for _ in $(seq 20); do grep -q 'xdp: ' "$OUT/turnpike-$t.log" && break; sleep 0.1; done
        grep -q 'xdp: established UDP channels are relayed in the kernel' "$OUT/turnpike-$t.log" || {
          echo "xdp_lab.sh: the kernel path is not on:" >&2; grep 'xdp' "$OUT/turnpike-$t.log" >&2; return 1; }
      fi ;;
    coturn)
      COTURN_NAME=tpxb-coturn
      SERVER_PID=$("$H/coturn_reference.sh" start --name "$COTURN_NAME" --netns "$NS_S" \
        --listen "$SERVER_IP" --port "$PORT" --secret "$SECRET" --allow-peer "$PEER_IP" \
        --min-port "$MIN_PORT" --max-port "$MAX_PORT" 2>>"$OUT/coturn-start.log") ;;
    forwarder)
      ip netns exec "$NS_S" "$B" forwarder --listen "$SERVER_IP:$PORT" --to "$PEER_IP:$((PORT + 1))" \
        --max-seconds 3600 2>"$OUT/forwarder.log" &
      SERVER_PID=$!
      wait_udp "$SERVER_PID" "$PORT" || return 1 ;;
  esac
  if [ "$SPLIT" = 1 ]; then
    # The server end's NAPI exists once an XDP program is on it (ours or turnpike's).
    ip netns exec "$NS_S" sh -c 'echo 1 > /sys/class/net/eth0/threaded'
    [ "$(pin_new_napi "$before" "$SERVER_CPU")" -ge 1 ] || { echo "xdp_lab.sh: no NAPI thread for the server end" >&2; return 1; }
    taskset -a -cp "$SERVER_CPU" "$SERVER_PID" >/dev/null
  fi
  log "started $t, pid $SERVER_PID"
}
stop() {
  if [ -n "$COTURN_NAME" ]; then
    "$H/coturn_reference.sh" stop --name "$COTURN_NAME" >/dev/null 2>&1 || true
    COTURN_NAME=""
  elif [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
  if [ "$SPLIT" = 1 ]; then ip -n "$NS_S" link set dev eth0 xdpdrv off 2>/dev/null || true; fi
}
over_budget() { [ $(( $(date +%s) - T0 )) -ge "$TIME_BUDGET" ]; }

# bench LABEL TARGET [turnpike-bench args...]: one measured run, its JSON line to results.jsonl;
# returns 1 when it lost 0.1% or more (or failed)
bench() {
  local label=$1 t=$2; shift 2
  if over_budget; then log "SKIP (time budget) $label"; echo "{\"kind\":\"skipped\",\"label\":\"$label\"}" >>"$RES"; return 1; fi
  local target=(--server "$SERVER_IP:$PORT" --secret "$SECRET")
  [ "$t" = forwarder ] && target=(--raw --server "$SERVER_IP:$PORT" --peer-bind "$PEER_IP:$((PORT + 1))")
  local line
  local pre=(); [ "$SPLIT" = 1 ] && pre=(taskset -c "$LOAD_CPU")
  if line=$(inL ${pre[@]+"${pre[@]}"} "$B" "${target[@]}" --client-ip "$CLIENT_IP" --peer-ip "$PEER_IP" \
      --server-pid "$SERVER_PID" --json --label "$label" --mode echo --duration "$DURATION" --threads "$THREADS" \
      "$@" 2>>"$OUT/bench.log"); then
    echo "$line" >>"$RES"
    log "$label: $(python3 "$ROOT/benches/xdp_report.py" --line "$line")"
    python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["loss_pct"] < 0.1 else 1)' "$line"
  else
    log "FAILED $label (see $OUT/bench.log)"
    echo "{\"kind\":\"failed\",\"label\":\"$label\"}" >>"$RES"
    return 1
  fi
}

# ---- machine ----------------------------------------------------------------------------
# Busy = wall time less idle (idle is exact under NO_HZ; busy ticks are sampled, see
# bench/src/sys.rs machine_cpu_ticks).
idle() { awk '/^cpu /{print $5+$6}' /proc/stat; }
busy_pct() { local a b; a=$(idle); sleep "$DURATION"; b=$(idle)
  echo $(( 100 - (b - a) * 100 / ($(nproc) * $(getconf CLK_TCK) * DURATION) )); }
{
  echo "date: $(date -u +%FT%TZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "kernel: $(uname -r)"
  echo "clock ticks: $(getconf CLK_TCK)/s"
  echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "machine busy before the runs: $(busy_pct)% of $(nproc) CPUs over $DURATION s"
  echo "coturn: $(turnserver --version 2>/dev/null | head -1)"
  echo "turnpike: ${TURNPIKE_REV:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+dirty')}"
  echo "settings: SPLIT=$SPLIT THREADS=$THREADS DURATION=$DURATION RAMP='$RAMP' WORK_RATE=$WORK_RATE CHANNELS='$CHANNELS' SIZES='$SIZES'"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

# ---- per target: the rate ramp (10 channels, 200 B), then the work table ---------------
# Each work run gets a fresh server: allocations whose deletes a lossy run lost would
# otherwise meet reused client ports (437).
maps_of() { # pid: the kernel memory of the program's maps (hash maps are preallocated:
  # this is what they hold whatever the load)
  for fd in /proc/"$1"/fd/*; do
    [ "$(readlink "$fd")" = "anon_inode:bpf-map" ] || continue
    grep -E '^(map_type|key_size|value_size|max_entries|memlock|map_id):' "/proc/$1/fdinfo/${fd##*/}" | tr '\n' ' '
    echo
  done
}
for t in $TARGETS; do
  start "$t"
  sleep 0.5
  for rate in $RAMP; do
    bench "ramp/$t/$rate" "$t" --allocations 10 --size 200 --rate "$rate" || break
  done
  stop
  for ch in $CHANNELS; do
    [ "$ch" = 10 ] && [[ " $SIZES " == *" 200 "* ]] && continue  # the size table has it
    start "$t"
    bench "work/$t/channels/$ch" "$t" --allocations "$ch" --size 200 --rate "$WORK_RATE" \
      --concurrency 256 || true
    if [ "$t" = xdp ]; then
      inS curl -s "http://127.0.0.1:8080/metrics" >"$OUT/metrics-xdp-$ch.txt" 2>/dev/null || true
      maps_of "$SERVER_PID" >"$OUT/maps-xdp.txt"
    fi
    stop
  done
  for size in $SIZES; do
    start "$t"
    bench "work/$t/size/$size" "$t" --allocations 10 --size "$size" --rate "$WORK_RATE" || true
    stop
  done
done

echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
echo "runtime: $(( $(date +%s) - T0 )) s" >>"$OUT/machine.txt"
python3 "$ROOT/benches/xdp_report.py" "$OUT" >"$OUT/report.md"
cat "$OUT/report.md"
log "done: $OUT"
