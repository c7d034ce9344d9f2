#!/bin/bash
# User-space instructions per echoed message (callgrind's Ir over the whole server process), with
# and without the metrics counters: deterministic where CPU time on a shared machine is not.
#
# Usage: instructions.sh BINS [INFLIGHT]
# BINS holds ringside-base and ringside-wired (see cpu.py). For each build the server runs under
# callgrind twice on epoll (valgrind cannot follow io_uring): 100 connections with no messages,
# then 100 x 2,000 messages of 20 bytes, INFLIGHT (default 16) in flight per connection; the
# difference over 200,000 is the cost of one message, start-up and handshakes cancelled out.
set -euo pipefail
bins=$1; inflight=${2:-16}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=19400

total() { # BIN MSGS -> Ir of the whole run
  port=$((port + 1))
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bins/$1" --listen "127.0.0.1:$port" \
    --backend epoll --workers 1 --no-pin --idle-timeout 3600 --no-idle-ping > "$work/srv.log" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do grep -q "listening on" "$work/srv.log" && break; sleep 0.2; done
  python3 "$here/fixed_echo.py" "127.0.0.1:$port" 100 "$2" "$inflight" > /dev/null
  kill -TERM $pid; wait $pid || true
  grep -m1 "^summary:\|^totals:" "$work/cg.out" | awk '{print $2}'
}

for bin in ringside-base ringside-wired; do
  idle=$(total $bin 0)
  busy=$(total $bin 2000)
  echo "$bin: $(( (busy - idle) / 200000 )) instructions per message ($idle idle, $busy busy)"
done
