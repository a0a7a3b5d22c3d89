#!/usr/bin/env bash
# Per-packet cost with and without a stalled webhook sink: one allocation, 20k ChannelData
# datagrams (echo: 20k out, 20k back), 3 runs each, turnpike --workers 1, release build.
# Usage: benches/usage_sink.sh   (after cargo build --release --bin turnpike --bin turnpike-bench)
# Everything stays on 127.0.0.1; only the processes started here are stopped.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=${TURNPIKE_BIN:-$ROOT/target/release/turnpike}
B=${BENCH_BIN:-$ROOT/target/release/turnpike-bench}
D=$(mktemp -d /tmp/turnpike-usage-bench-XXXXXX)
STALL=
trap '[ -n "$STALL" ] && kill "$STALL" 2>/dev/null; rm -rf "$D"' EXIT
run_case() { # name toml
  local name=$1 toml=$2
  printf '%s' "$toml" > $D/$name.toml
  $T run --config $D/$name.toml --listen 127.0.0.1:0 --relay-ip 127.0.0.1 --allow-peer 127.0.0.0/8 \
     --auth-secret S --workers 1 --api-listen 127.0.0.1:0 > $D/$name.out 2> $D/$name.err &
  local pid=$!
  for _ in $(seq 100); do grep -q '"event":"ready"' $D/$name.out 2>/dev/null && break; sleep 0.1; done
  local port; port=$(python3 -c "import json,sys;print(json.loads(open('$D/$name.out').readline())['udp'][0].split(':')[1])")
  local api; api=$(python3 -c "import json,sys;print(json.loads(open('$D/$name.out').readline())['api'])")
  # Five allocations made and deleted first: with the stalled webhook, one record is in
  # flight, one queued, three dropped, so the runs below relay with the queue full.
  $B --server 127.0.0.1:$port --secret S --allocations-only 5 > $D/$name.prefill.txt
  for i in 1 2 3; do
    $B --server 127.0.0.1:$port --secret S --allocations 1 --size 200 --rate 20000 --burst 10 \
       --duration 1 --mode echo --server-pid $pid --json > $D/$name.$i.json
    python3 -c "import json;r=json.load(open('$D/$name.$i.json'));print('$name run $i: loss %.3f%%, server %.2f us/packet, rtt p50 %d us, p99 %d us' % (r['loss_pct'], r['server_us_per_pkt'], r['lat_us']['p50'], r['lat_us']['p99']))"
  done
  python3 -c "import urllib.request;print(urllib.request.urlopen('http://$api/metrics').read().decode())" | grep -E '^turnpike_usage_records(_dropped)?_total' | tr '\n' ' '; echo
  kill -TERM $pid; wait $pid || true
}
# A webhook receiver that accepts and never answers.
python3 -c "
import socket,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR,1); s.bind(('127.0.0.1',0)); s.listen(64)
open('$D/stall.port','w').write(str(s.getsockname()[1]))
c=[]
while True:
    a,_=s.accept(); c.append(a)
" & STALL=$!
sleep 0.5
SP=$(cat $D/stall.port)
# Pre-fill: queue_size 1, so after the first record the queue is full and every later record is dropped.
run_case nosink $'[usage]\nlog = false\n'
run_case stalled $'[usage]\nlog = false\nqueue_size = 1\nwebhook_timeout_secs = 60\nwebhook_url = "http://127.0.0.1:'$SP$'/usage"\n'
kill $STALL; STALL=
