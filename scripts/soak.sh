#!/usr/bin/env bash
# Soak run: a bounded allocation churn against a fresh turnpike, sampling the server's RSS,
# open file descriptors, relay ports in use and active allocations every SAMPLE seconds, then
# a verdict: each figure at the end of the churn within TOLERANCE % of the first sample
# after WARMUP, and everything back to the idle baseline once the churn has deleted its
# allocations. Results: docs/SECURITY.md ("Soak").
#
#   scripts/soak.sh                 # 600 s, ~1,000 concurrent allocations
#   SOAK_SECONDS=60 scripts/soak.sh # shorter
#
# Environment (defaults): SOAK_SECONDS (600), ALLOCATIONS (1000), CYCLE (20: mean allocation
# life in seconds, so ~ALLOCATIONS/CYCLE allocations are created and deleted per second),
# PACKETS (4 ChannelData packets per allocation, echoed back by the peer), SAMPLE (10),
# WARMUP (60), TOLERANCE (10 %), MIN_PORT/MAX_PORT (24000/26999: the relay range, kept clear
# of other servers and of the kernel's ephemeral ports), WORKERS (0 = one per core),
# NO_BUILD=1 to skip `cargo build --release`, OUT (a directory for logs; default a temp dir).
#
# It starts exactly two processes (turnpike and turnpike-bench churn) and stops only those.
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS=${SOAK_SECONDS:-600}
ALLOCATIONS=${ALLOCATIONS:-1000}
CYCLE=${CYCLE:-20}
PACKETS=${PACKETS:-4}
SAMPLE=${SAMPLE:-10}
WARMUP=${WARMUP:-60}
TOLERANCE=${TOLERANCE:-10}
MIN_PORT=${MIN_PORT:-24000}
MAX_PORT=${MAX_PORT:-26999}
WORKERS=${WORKERS:-0}
SECRET=soak-secret-$$
if (( WARMUP >= SOAK_SECONDS )); then WARMUP=$(( SOAK_SECONDS / 4 )); fi

if [[ -z ${NO_BUILD:-} ]]; then
  cargo build --release --locked --bin turnpike --bin turnpike-bench >&2
fi
target=${CARGO_TARGET_DIR:-target}
TURNPIKE=$target/release/turnpike
BENCH=$target/release/turnpike-bench

OUT=${OUT:-$(mktemp -d /tmp/turnpike-soak.XXXXXX)}
mkdir -p "$OUT"
# 1,000 relay sockets plus the churn's client sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

server_pid=""
churn_pid=""
cleanup() {
  [[ -n $churn_pid ]] && kill -TERM "$churn_pid" 2>/dev/null || true
  [[ -n $server_pid ]] && kill -TERM "$server_pid" 2>/dev/null || true
  [[ -n $server_pid ]] && wait "$server_pid" 2>/dev/null || true
}
trap cleanup EXIT

"$TURNPIKE" run --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --relay-ip 127.0.0.1 \
  --min-port "$MIN_PORT" --max-port "$MAX_PORT" --allow-peer 127.0.0.1/32 \
  --auth-secret "$SECRET" --realm soak.test --workers "$WORKERS" \
  >"$OUT/turnpike.out" 2>"$OUT/turnpike.err" &
server_pid=$!

ready=""
for _ in $(seq 1 200); do
  ready=$(grep -m1 '"event":"ready"' "$OUT/turnpike.out" 2>/dev/null || true)
  [[ -n $ready ]] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$OUT/turnpike.err" >&2; exit 1; }
  sleep 0.1
done
[[ -n $ready ]] || { echo "turnpike printed no ready line" >&2; exit 1; }
udp=$(sed -E 's/.*"udp":\["([^"]+)".*/\1/' <<<"$ready")
api=$(sed -E 's/.*"api":"([^"]+)".*/\1/' <<<"$ready")
echo "turnpike pid $server_pid, udp $udp, api $api, relay ports $MIN_PORT-$MAX_PORT, logs in $OUT" >&2

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status"; }
fds() { ls "/proc/$server_pid/fd" | wc -l; }
# UDP sockets of the server bound in the relay range.
relay_ports() {
  ss -Huanp "( sport >= :$MIN_PORT and sport <= :$MAX_PORT )" 2>/dev/null |
    grep -c "pid=$server_pid," || true
}
allocations() {
  curl -s --max-time 2 "http://$api/metrics" |
    awk '/^turnpike_allocations_active/ {s += $NF} END {print s + 0}'
}
sample() { # elapsed
  printf '%6s %10s %6s %7s %7s\n' "$1" "$(rss_kib)" "$(fds)" "$(relay_ports)" "$(allocations)"
}

header=$(printf '%6s %10s %6s %7s %7s' "t(s)" "RSS(KiB)" "fds" "relays" "allocs")
echo "$header" | tee "$OUT/samples.txt"
baseline=$(sample idle)
echo "$baseline" | tee -a "$OUT/samples.txt"

"$BENCH" churn --server "$udp" --secret "$SECRET" --allocations "$ALLOCATIONS" \
  --duration "$SOAK_SECONDS" --cycle "$CYCLE" --packets "$PACKETS" --report 60 --json \
  >"$OUT/churn.json" 2>"$OUT/churn.err" &
churn_pid=$!
start=$(date +%s)
while kill -0 "$churn_pid" 2>/dev/null; do
  sleep "$SAMPLE"
  t=$(( $(date +%s) - start ))
  kill -0 "$churn_pid" 2>/dev/null || break
  (( t > SOAK_SECONDS )) && continue # the churn is deleting its allocations
  sample "$t" | tee -a "$OUT/samples.txt"
done
churn_status=0
wait "$churn_pid" || churn_status=$?
churn_pid=""
sleep 2
final=$(sample end)
echo "$final" | tee -a "$OUT/samples.txt"
echo >&2
cat "$OUT/churn.err" >&2

# Verdict.
read -r _ _ base_fds _ _ <<<"$baseline"
first=$(awk -v w="$WARMUP" '$1 ~ /^[0-9]+$/ && $1 >= w {print; exit}' "$OUT/samples.txt")
last=$(awk '$1 ~ /^[0-9]+$/ {l = $0} END {print l}' "$OUT/samples.txt")
read -r _ end_rss end_fds end_relays end_allocs <<<"$final"
verdict=FLAT
check() { # name first last
  local name=$1 a=$2 b=$3
  local pct
  pct=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a == 0) print (b == 0 ? 0 : 100); else printf "%.1f", (b - a) * 100 / a }')
  local ok
  ok=$(awk -v p="$pct" -v t="$TOLERANCE" 'BEGIN { print (p <= t && p >= -t) ? "ok" : "GREW" }')
  printf '  %-7s first after warm-up %8s, last %8s: %+6s%% %s\n' "$name" "$a" "$b" "$pct" "$ok"
  [[ $ok == ok ]] || verdict=NOT-FLAT
}
echo
echo "verdict (tolerance ${TOLERANCE}%, warm-up ${WARMUP} s, churn exit status $churn_status):"
if [[ -z $first || $first == "$last" ]]; then
  echo "  too few samples after the warm-up"
  verdict=INCONCLUSIVE
else
  read -r t1 rss1 fds1 rel1 all1 <<<"$first"
  read -r t2 rss2 fds2 rel2 all2 <<<"$last"
  echo "  samples at t=${t1}s and t=${t2}s"
  check RSS "$rss1" "$rss2"
  check fds "$fds1" "$fds2"
  check relays "$rel1" "$rel2"
  check allocs "$all1" "$all2"
fi
printf '  after the churn: %s allocations, %s relay ports, %s fds (idle baseline %s), RSS %s KiB\n' \
  "$end_allocs" "$end_relays" "$end_fds" "$base_fds" "$end_rss"
if [[ $end_allocs != 0 || $end_relays != 0 || $end_fds != "$base_fds" ]]; then
  verdict=NOT-FLAT
  echo "  resources not freed after the churn"
fi
(( churn_status == 0 )) || verdict=NOT-FLAT
if grep -q panicked "$OUT/turnpike.err"; then verdict=NOT-FLAT; echo "  turnpike panicked"; fi
echo "VERDICT: $verdict"
[[ $verdict == FLAT ]]
