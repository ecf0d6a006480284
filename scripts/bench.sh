#!/usr/bin/env bash
# Reproducible benchmarks of live push on this machine: starts its own redis-server and
# services on 127.0.0.1, runs redis-benchmark's PUBLISH as the baseline and push-loadgen
# scenarios right after it, and prints every result. See docs/BENCHMARKS.md.
#
#   ./scripts/bench.sh                 # everything (~8 minutes)
#   ./scripts/bench.sh broadcast       # one scenario: baseline floor broadcast users latency memory
#
# GATEWAY_THREADS sets the gateway's tokio workers (default 1; 0 = one per core).
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_PORT=${REDIS_PORT:-6391}
GW_PORT=${GW_PORT:-51051}
PRESENCE_PORT=${PRESENCE_PORT:-51061}
PROFILE_PORT=${PROFILE_PORT:-51062}
GATEWAY_THREADS=${GATEWAY_THREADS:-1}
GATEWAY_FLAGS=${GATEWAY_FLAGS:-}
ONLY=${1:-all}

. scripts/ensure-redis.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --locked -p presence-svc -p profile-svc -p push-gateway -p push-loadgen --bins --examples
bin=target/release
dir=$(mktemp -d)
pids=()
gw_pid=""
cleanup() {
  [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$dir" --logfile "$dir/redis.log" &
pids+=($!)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT" RUST_LOG=warn
# Authenticated as in production (fresh credentials in the temp dir), with the per-key
# rate limit off: the load generator is one admin key pushing as fast as it can.
creds_dir="$dir/creds" . scripts/dev-credentials.sh
export GATEWAY_API_KEY_RATE=0 PUSH_LOADGEN_BEARER="$ADMIN_KEY"
"$bin/presence-svc" --listen "127.0.0.1:$PRESENCE_PORT" & pids+=($!)
"$bin/profile-svc" --listen "127.0.0.1:$PROFILE_PORT" & pids+=($!)

start_gateway() {
  "$bin/push-gateway" --listen "127.0.0.1:$GW_PORT" --worker-threads "${THREADS:-$GATEWAY_THREADS}" \
    --presence-url "http://127.0.0.1:$PRESENCE_PORT" --profile-url "http://127.0.0.1:$PROFILE_PORT" $GATEWAY_FLAGS "$@" &
  gw_pid=$!
  for _ in $(seq 100); do
    grpcurl_ok=$(bash -c "exec 3<>/dev/tcp/127.0.0.1/$GW_PORT" 2>/dev/null && echo yes || true)
    [ "$grpcurl_ok" = yes ] && break
    sleep 0.1
  done
  sleep 1 # health probes settle
}
stop_gateway() { kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; gw_pid=""; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system, in 1/100 s
# Runs push-loadgen and prints the gateway's CPU time per delivery while it ran.
loadgen() {
  local before out
  before=$(cpu_ticks "$gw_pid")
  out=$("$bin/push-loadgen" --target "http://127.0.0.1:$GW_PORT" "$@")
  echo "$out"
  local used=$(( $(cpu_ticks "$gw_pid") - before )) n
  n=$(awk '/^deliveries / {print $2}' <<<"$out")
  [ "${n:-0}" -gt 0 ] && echo "gateway cpu   $((used * 10)) ms in all, $(( used * 10000000 / n / 1000 )).$(( used * 10000000 / n % 1000 / 100 )) µs per delivery (stream opening included)"
  return 0
}
want() { [ "$ONLY" = all ] || [ "$ONLY" = "$1" ]; }
hr() { printf '\n=== %s ===\n' "$*"; }

hr "machine"
echo "$(date -u +%FT%TZ)  $(nproc) cores  $(free -g | awk '/Mem/ {print $2}') GiB  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "redis $(redis-server --version | grep -o 'v=[0-9.]*')  gateway worker threads: $GATEWAY_THREADS"

if want baseline || want users || want floor; then
  hr "baseline: redis-benchmark PUBLISH, 50 clients, no pipelining, 132-byte payload"
  redis-benchmark -p "$REDIS_PORT" -c 50 -n 300000 -P 1 -q publish bench:ch "$(head -c 132 /dev/zero | tr '\0' x)" | tr '\r' '\n' | tail -1 | sed 's/x\{20,\}/<132 B>/'
  hr "baseline: redis-benchmark PUBLISH, 1 client, 50 pipelined"
  redis-benchmark -p "$REDIS_PORT" -c 1 -n 1000000 -P 50 -q publish bench:ch "$(head -c 132 /dev/zero | tr '\0' x)" | tr '\r' '\n' | tail -1 | sed 's/x\{20,\}/<132 B>/'
fi

if want floor || want users; then
  # What Redis alone does with the script every push runs (append to the user's inbox,
  # then publish), driven by redis-benchmark itself: the ceiling for single-user pushes.
  hr "floor: redis-benchmark running the push script, 50 clients, no pipelining"
  # The script as the gateway runs it: the shared helpers, then push.lua.
  script=$(cat push-gateway/src/lua/lib.lua; echo; cat push-gateway/src/lua/push.lua)
  sha=$(redis-cli -p "$REDIS_PORT" script load "$script")
  # One meta key for all (redis-benchmark draws every __rand_int__ separately; a shared
  # meta keeps ids growing in every stream), a random inbox and channel per call.
  redis-benchmark -p "$REDIS_PORT" -c 50 -n 200000 -P 1 -r 1000 -q evalsha "$sha" 2 'bench:inbox:{u:__rand_int__}' 'bench:meta:{u:0}' \
    1 0 100 86400000 604800000 "$(head -c 150 /dev/zero | tr '\0' x)" 'bench:ch:{u:__rand_int__}' | tr '\r' '\n' | tail -1 | sed 's/^.*: \([0-9.]* requests per second\)/push script: \1/'
  # A bare tonic unary call (grpc.health.v1 Check, nothing behind it) from 50 callers on
  # their own connections, one call in flight each: a push is such a call and more.
  hr "floor: bare tonic unary calls, 50 clients, no pipelining, server threads: $GATEWAY_THREADS"
  "$bin/examples/grpc-floor" --clients 50 --server-threads "$(( GATEWAY_THREADS > 0 ? GATEWAY_THREADS : $(nproc) ))" --seconds 10
fi

if want floor || want latency; then
  # Raw loopback TCP, no HTTP/2, gRPC or Redis: one write per connection per round,
  # read by one task per connection. The floor under the fan-out latency target.
  for w in 1 2; do
    hr "floor: raw TCP fan-out, 4 rounds/s to 5,000 connections, writer threads: $w"
    "$bin/examples/tcp-floor" --streams 5000 --writers "$w" --rounds 60
  done
fi

if want users; then
  hr "single-user pushes: 1,000 streams, 50 concurrent pushers (as redis-benchmark -c 50)"
  start_gateway
  loadgen --streams 1000 --mode users --pushers 50 --duration 10s --prefix users
  stop_gateway
fi

if want broadcast; then
  # Flat out, 64 pushes in flight: enough queued per stream that each write carries
  # several messages. The gateway's one worker thread is saturated, so a PUBLISH reply
  # can wait behind fan-out for over a second: --redis-timeout 5s keeps such pushes
  # from being answered DEADLINE_EXCEEDED although they were delivered.
  for n in 1000 10000; do
    hr "broadcast to $n streams, one connection per stream, as fast as possible"
    start_gateway --redis-timeout 5s
    loadgen --streams "$n" --mode all --pushers 64 --duration 10s --prefix "b$n"
    stop_gateway
  done
  hr "broadcast to 10000 streams over 100 shared connections"
  start_gateway --redis-timeout 5s
  loadgen --streams 10000 --connections 100 --mode all --pushers 64 --duration 10s --prefix bshared
  stop_gateway
  hr "group push: 10000 streams in 10 groups"
  start_gateway --redis-timeout 5s
  loadgen --streams 10000 --mode groups --groups 10 --pushers 64 --duration 10s --prefix grp
  stop_gateway
fi

if want latency; then
  for t in 1 2; do
    hr "fan-out latency: 20,000 deliveries/s (4 broadcasts/s) to 5,000 streams, gateway threads: $t"
    THREADS=$t start_gateway
    loadgen --streams 5000 --mode all --rate 4 --pushers 2 --duration 30s --prefix "lat$t"
    stop_gateway
  done
fi

if want memory; then
  for shape in "10000 0" "10000 100"; do
    set -- $shape
    hr "memory per idle stream: $1 streams, connections: ${2/#0/one per stream}"
    start_gateway
    before=$(rss_kib "$gw_pid")
    loadgen --streams "$1" --connections "$2" --hold 20s --duration 0s --drain 0s --prefix "mem$2" 2>"$dir/mem.log" &
    lg=$!
    until grep -q holding "$dir/mem.log" 2>/dev/null; do sleep 0.5; done
    sleep 5
    during=$(rss_kib "$gw_pid")
    cat "$dir/mem.log" | head -2
    echo "gateway RSS: before $before KiB, with $1 idle streams $during KiB: $(( (during - before) * 1024 / $1 )) bytes per stream"
    wait "$lg" >/dev/null || true
    stop_gateway
  done
fi
