#!/usr/bin/env bash
# Reproducible benchmarks of live push on this machine: starts its own redis-server and
# services on 127.0.0.1, runs redis-benchmark's PUBLISH as the baseline and push-loadgen
# scenarios right after it, and prints every result. See docs/BENCHMARKS.md.
#
#   ./scripts/bench.sh                 # everything (~15 minutes)
#   ./scripts/bench.sh broadcast       # one scenario: baseline floor broadcast users latency memory sizing
#   ./scripts/bench.sh idle            # what 10,000 idle streams cost Redis over 5 minutes (not in `all`)
#   ./scripts/bench.sh peer            # the peer's shapes alone (Socket.IO, loadgen/peer/socketio)
#   ./scripts/bench.sh compare         # each of those shapes, the peer then ours, and a summary
#
# GATEWAY_THREADS sets the gateway's tokio workers (default 1; 0 = one per core).
# PEER_STREAMS sets the connections of the peer's shapes and of compare (default 5000).
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_PORT=${REDIS_PORT:-6391}
GW_PORT=${GW_PORT:-51051}
PRESENCE_PORT=${PRESENCE_PORT:-51061}
PROFILE_PORT=${PROFILE_PORT:-51062}
GATEWAY_THREADS=${GATEWAY_THREADS:-1}
GATEWAY_FLAGS=${GATEWAY_FLAGS:-}
# The peer (Socket.IO): its own Redis and server, so neither shares anything with ours.
PEER_REDIS_PORT=${PEER_REDIS_PORT:-6392}
PEER_PORT=${PEER_PORT:-52051}
PEER_STREAMS=${PEER_STREAMS:-5000}
ONLY=${1:-all}

. scripts/ensure-redis.sh
# 5,000 connections need 5,000 descriptors in each server and as many in each load
# generator: the hard limit here is 20,000 (inside podman it is 1,024, too few).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# `peer` alone runs none of our binaries, so it builds none.
ours=yes
[ "$ONLY" = peer ] && ours=""
[ -n "$ours" ] && cargo build --release --locked -p presence-svc -p profile-svc -p push-gateway -p push-loadgen --bins --examples
bin=target/release
dir=$(mktemp -d)
pids=()
gw_pid=""
peer_pid=""
cleanup() {
  [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null || true
  [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$dir" --logfile "$dir/redis.log" &
redis_pid=$!
pids+=("$redis_pid")
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT" RUST_LOG=warn
# Authenticated as in production (fresh credentials in the temp dir), with the per-key
# rate limit off: the load generator is one admin key pushing as fast as it can.
creds_dir="$dir/creds" . scripts/dev-credentials.sh
export GATEWAY_API_KEY_RATE=0 PUSH_LOADGEN_BEARER="$ADMIN_KEY"
if [ -n "$ours" ]; then
  "$bin/presence-svc" --listen "127.0.0.1:$PRESENCE_PORT" & pids+=($!)
  "$bin/profile-svc" --listen "127.0.0.1:$PROFILE_PORT" & pids+=($!)
fi

start_gateway() {
  # No drain between scenarios: nothing balances in front of it.
  "$bin/push-gateway" --listen "127.0.0.1:$GW_PORT" --worker-threads "${THREADS:-$GATEWAY_THREADS}" --drain-delay 0s --stream-drain-window 0s \
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
# cpu_line LABEL PID TICKS_BEFORE OUTPUT: the server's CPU time per delivery (and per
# push) while a load generator that printed OUTPUT ran.
cpu_line() {
  local used=$(( $(cpu_ticks "$2") - $3 )) n p
  n=$(awk '/^deliveries / {print $2}' <<<"$4")
  p=$(awk '/^pushes / {print $2}' <<<"$4")
  [ "${n:-0}" -gt 0 ] && printf '%-13s %s\n' "$1 cpu" "$((used * 10)) ms in all, $(( used * 10000000 / n / 1000 )).$(( used * 10000000 / n % 1000 / 100 )) µs per delivery, $(( used * 10000 / p )) µs per push (stream opening included)"
  return 0
}
# Runs push-loadgen and prints the gateway's CPU time per delivery while it ran.
loadgen() {
  local before out
  before=$(cpu_ticks "$gw_pid")
  # --cpu-of: the gateway's and Redis's CPU per push while pushing (opening excluded).
  out=$("$bin/push-loadgen" --target "http://127.0.0.1:$GW_PORT" --cpu-of "gateway=$gw_pid" --cpu-of "redis=$redis_pid" "$@")
  echo "$out"
  cpu_line gateway "$gw_pid" "$before" "$out"
}
# idle_memory LABEL PID N COMMAND...: runs COMMAND (a load generator holding N idle
# streams, --hold 20s) in the background and prints PID's RSS growth per stream 5 s into
# the hold; the bytes per stream are left in $per_stream.
idle_memory() {
  local label=$1 pid=$2 n=$3 before during lg
  shift 3
  before=$(rss_kib "$pid")
  rm -f "$dir/mem.log"
  "$@" 2>"$dir/mem.log" &
  lg=$!
  until grep -q holding "$dir/mem.log" 2>/dev/null; do
    kill -0 "$lg" 2>/dev/null || break # it failed before holding: its log says why
    sleep 0.5
  done
  sleep 5
  during=$(rss_kib "$pid")
  grep -v '^\[' "$dir/mem.log" | head -4
  per_stream=$(( (during - before) * 1024 / n ))
  echo "$label RSS: before $before KiB, with $n idle streams $during KiB: $per_stream bytes per stream"
  wait "$lg" >/dev/null || true
}

# === the peer: Socket.IO 4.8, its Redis adapter and emitter (loadgen/peer/socketio) ===

peer_dir=loadgen/peer/socketio
peer_redis_url="redis://127.0.0.1:$PEER_REDIS_PORT"
peer_version() { node -p 'require(process.argv[1]).version' "$PWD/$peer_dir/node_modules/socket.io/package.json"; }
# Its own redis-server, started once, loopback only and configured as ours.
start_peer_redis() {
  . scripts/ensure-node.sh
  redis-server --bind 127.0.0.1 --port "$PEER_REDIS_PORT" --save "" --appendonly no --dir "$dir" --logfile "$dir/peer-redis.log" &
  pids+=($!)
  until redis-cli -p "$PEER_REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
  echo "peer: node $(node --version), socket.io $(peer_version), redis on port $PEER_REDIS_PORT"
}
# A fresh peer server per shape, as a fresh gateway per scenario: a flat-out run leaves
# a backlog behind (the emitter has no backpressure), which must not spill into the next.
start_peer() {
  node "$peer_dir/server.mjs" --port "$PEER_PORT" --redis "$peer_redis_url" 2>>"$dir/peer.log" &
  peer_pid=$!
  until bash -c "exec 3<>/dev/tcp/127.0.0.1/$PEER_PORT" 2>/dev/null; do
    kill -0 "$peer_pid" 2>/dev/null || { cat "$dir/peer.log"; return 1; }
    sleep 0.1
  done
  sleep 1
  # Still there: a port held by something else would have answered the probe above.
  kill -0 "$peer_pid" 2>/dev/null || { cat "$dir/peer.log"; return 1; }
}
stop_peer() {
  kill "$peer_pid" 2>/dev/null || true
  wait "$peer_pid" 2>/dev/null || true
  peer_pid=""
  # What the server said (Redis reconnects, connection errors), once per run.
  if [ -s "$dir/peer.log" ]; then grep -v 'listening on' "$dir/peer.log" | sed 's/^/peer server: /' || true; fi
  : >"$dir/peer.log"
}
peer_loadgen_cmd() { node "$peer_dir/loadgen.mjs" --target "http://127.0.0.1:$PEER_PORT" --redis "$peer_redis_url" "$@"; }
# Runs the peer's load generator and prints the peer server's CPU time per delivery.
peer_loadgen() {
  local before out
  before=$(cpu_ticks "$peer_pid")
  out=$(peer_loadgen_cmd "$@")
  echo "$out"
  cpu_line "peer server" "$peer_pid" "$before" "$out"
}
# The shapes of the peer's comparison: NAME|LOAD GENERATOR FLAGS, the same flags for
# both load generators (they take the same ones). Flat-out gateways get --redis-timeout
# 5s as in the broadcast scenario.
peer_shapes=(
  "broadcast 4/s|--mode all --rate 4 --pushers 2 --duration 30s"
  "one user 5,000/s|--mode users --rate 5000 --pushers 64 --duration 10s"
  "groups of 100 at 200/s|--mode groups --groups $(( PEER_STREAMS / 100 )) --rate 200 --pushers 8 --duration 10s"
  "broadcast flat out|--mode all --rate 0 --pushers 64 --duration 10s"
  "one user flat out|--mode users --rate 0 --pushers 64 --duration 10s"
  "groups of 100 flat out|--mode groups --groups $(( PEER_STREAMS / 100 )) --rate 0 --pushers 64 --duration 10s"
)
want() { [ "$ONLY" = all ] || [ "$ONLY" = "$1" ]; }
# push_script_floor CLIENTS PIPELINE: redis-benchmark running the push script as the
# gateway runs it (the shared helpers, then push.lua) on our Redis: what Redis alone does
# per push with the most efficient client there is. One meta key for all
# (redis-benchmark draws every __rand_int__ separately; a shared meta keeps ids growing
# in every stream), a random inbox and channel per call.
push_script_floor() {
  local script sha
  script=$(cat push-gateway/src/lua/lib.lua; echo; cat push-gateway/src/lua/push.lua)
  sha=$(redis-cli -p "$REDIS_PORT" script load "$script")
  redis-benchmark -p "$REDIS_PORT" -c "$1" -n 300000 -P "$2" -r 5000 -q evalsha "$sha" 2 'bench:inbox:{u:__rand_int__}' 'bench:meta:{u:0}' \
    1 0 100 86400000 604800000 "$(head -c 150 /dev/zero | tr '\0' x)" 'bench:ch:{u:__rand_int__}' | tr '\r' '\n' | tail -1 | sed 's/^.*: \([0-9.]* requests per second\)/push script: \1/'
}
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
  push_script_floor 50 1
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
    idle_memory gateway "$gw_pid" "$1" loadgen --streams "$1" --connections "$2" --hold 20s --duration 0s --drain 0s --prefix "mem$2"
    stop_gateway
  done
fi

if [ "$ONLY" = idle ]; then
  # What idle streams cost Redis (issue 14's target: at most 0.2 commands per stream per
  # minute): 10,000 streams held open on one gateway, nothing pushed; INFO commandstats
  # (commands run inside scripts count too) and Redis's CPU over IDLE_SECONDS (300),
  # counted from 30 s after the streams opened. Not in `all`: it takes ~6 minutes.
  idle_s=${IDLE_SECONDS:-300}
  base_s=${IDLE_BASELINE_SECONDS:-60}
  hr "idle streams: 10,000 on one gateway, nothing pushed, Redis work over ${idle_s} s"
  start_gateway
  # The baseline, same run: the same services with no stream open, over base_s.
  redis_work() {
    stats=$(redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r')
    echo "$stats" | awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_config" && $1 != "cmdstat_info" {n += $3} END {print n + 0}'
  }
  redis_cpu() {
    redis-cli -p "$REDIS_PORT" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {print s}'
  }
  sleep 10
  redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
  bcpu0=$(redis_cpu)
  sleep "$base_s"
  base_n=$(redis_work)
  bcpu1=$(redis_cpu)
  echo "$base_n $base_s $bcpu0 $bcpu1" | awk '{printf "baseline, no stream open: %d commands in %d s = %.1f per minute; Redis CPU %.3f s\n", $1, $2, $1 / ($2 / 60), $4 - $3}'
  "$bin/push-loadgen" --target "http://127.0.0.1:$GW_PORT" --streams 10000 --connections 100 \
    --hold "$((idle_s + 60))s" --duration 0s --drain 0s --prefix idle >/dev/null 2>"$dir/idle.log" &
  lg=$!
  until grep -q holding "$dir/idle.log" 2>/dev/null; do
    kill -0 "$lg" 2>/dev/null || { cat "$dir/idle.log"; echo "the load generator failed before holding" >&2; exit 1; }
    sleep 0.5
  done
  open=$(awk '/^holding / {print $2}' "$dir/idle.log")
  sleep 30
  redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
  cpu0=$(redis-cli -p "$REDIS_PORT" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {print s}')
  sleep "$idle_s"
  stats=$(redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r')
  cpu1=$(redis-cli -p "$REDIS_PORT" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {print s}')
  kill "$lg" 2>/dev/null || true
  wait "$lg" 2>/dev/null || true
  stop_gateway
  echo "$stats" | awk -F'[:=,]' '/^cmdstat_/ {print $3, $1}' | sort -rn | head -12 | sed 's/cmdstat_//'
  echo "$stats" | awk -F'[:=,]' -v s="$idle_s" -v c0="$cpu0" -v c1="$cpu1" -v k="$open" '/^cmdstat_/ && $1 != "cmdstat_config" && $1 != "cmdstat_info" {n += $3}
    END {printf "%d streams open; all commands: %d in %d s = %.3f per stream per minute; Redis CPU %.2f s = %.3f µs per stream per second\n",
      k, n, s, n / k / (s / 60), c1 - c0, (c1 - c0) * 1e6 / k / s}'
  echo "$stats" | awk -F'[:=,]' -v s="$idle_s" -v c0="$cpu0" -v c1="$cpu1" -v k="$open" \
    -v bn="$base_n" -v bs="$base_s" -v b0="$bcpu0" -v b1="$bcpu1" '/^cmdstat_/ && $1 != "cmdstat_config" && $1 != "cmdstat_info" {n += $3}
    END {printf "over the baseline: %.3f commands per stream per minute; %.3f µs of Redis CPU per stream per second; all commands %.2f× the baseline rate\n",
      (n / s - bn / bs) * 60 / k, ((c1 - c0) / s - (b1 - b0) / bs) * 1e6 / k, (n / s) / (bn / bs)}'
fi

if want sizing; then
  # Redis memory for sizing (docs/OPERATIONS.md, "Sizing"): per online user (its
  # presence lease, session and index entries, with one stream each) and per message
  # retained in inboxes (stream entry, meta, with 132-byte payloads).
  redis_mem() { redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ {print $2+0}'; }
  hr "sizing: Redis memory per online user, 5,000 users with a stream each"
  start_gateway
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  sleep 1
  m0=$(redis_mem)
  "$bin/push-loadgen" --target "http://127.0.0.1:$GW_PORT" --streams 5000 --hold 15s --duration 0s --drain 0s --prefix size >/dev/null 2>&1 &
  lg=$!
  sleep 12
  m1=$(redis_mem)
  wait "$lg" || true
  echo "online users 5000: used_memory $m0 -> $m1 B: $(( (m1 - m0) / 5000 )) B per online user"
  stop_gateway
  hr "sizing: Redis memory per retained inbox message, 1,000 users, 100 messages each"
  start_gateway
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  sleep 1
  m0=$(redis_mem)
  out=$("$bin/push-loadgen" --target "http://127.0.0.1:$GW_PORT" --streams 0 --offline-users 1000 --mode users --batch 100 --pushers 4 --rate 0 --duration 3s --max-pushes 100000 --prefix size 2>/dev/null)
  pushed=$(awk '/^pushes / {print $2}' <<<"$out")
  m1=$(redis_mem)
  entries=$(for k in $(redis-cli -p "$REDIS_PORT" --scan --pattern '*:inbox:*' | grep -v ':meta$'); do redis-cli -p "$REDIS_PORT" xlen "$k"; done | awk '{s += $1} END {print s + 0}')
  echo "pushed $pushed to 1000 users; $entries entries retained (inbox max length 100): used_memory $m0 -> $m1 B: $(( (m1 - m0) / (entries > 0 ? entries : 1) )) B per retained message"
  stop_gateway
fi

# The peer's shapes alone. `all` runs them inside compare, next to ours.
if [ "$ONLY" = peer ]; then
  start_peer_redis
  for shape in "${peer_shapes[@]}"; do
    hr "peer: ${shape%%|*} to $PEER_STREAMS connections"
    start_peer
    # shellcheck disable=SC2086 # the flags are words
    peer_loadgen --streams "$PEER_STREAMS" ${shape#*|}
    stop_peer
  done
  hr "peer: memory per idle connection, $PEER_STREAMS connections"
  start_peer
  idle_memory "peer server" "$peer_pid" "$PEER_STREAMS" peer_loadgen_cmd --streams "$PEER_STREAMS" --hold 20s --duration 0s --drain 0s
  stop_peer
fi

# Each of the peer's shapes, the peer then ours back to back (a fresh server each), then
# one table of both. Same flags for both load generators, one connection per stream.
if want compare; then
  start_peer_redis
  results=()
  for shape in "${peer_shapes[@]}"; do
    name=${shape%%|*} flags=${shape#*|}
    k=${#results[@]}
    hr "compare: ${name} to $PEER_STREAMS connections: the peer (Socket.IO)"
    start_peer
    # shellcheck disable=SC2086
    peer_loadgen --streams "$PEER_STREAMS" $flags | tee "$dir/cmp$k.peer"
    stop_peer
    hr "compare: ${name} to $PEER_STREAMS streams: ours"
    case $flags in *"--rate 0 "*) start_gateway --redis-timeout 5s ;; *) start_gateway ;; esac
    # shellcheck disable=SC2086
    loadgen --streams "$PEER_STREAMS" $flags --prefix "cmp$k" | tee "$dir/cmp$k.ours"
    stop_gateway
    results+=("$name|$flags|$k")
  done
  # Ours only: the same single-user pushes handed over in batches (PushBatch), and what
  # Redis alone does with the push script pipelined 16 deep (the batch targets).
  hr "compare: one user flat out through PushBatch, 100 pushes per call: ours"
  start_gateway --redis-timeout 5s
  loadgen --streams "$PEER_STREAMS" --mode users --rate 0 --batch 100 --pushers 8 --duration 10s --prefix cmpbatch | tee "$dir/cmpbatch.ours"
  stop_gateway
  # The same batches to users who have no stream: the push path alone, with no
  # deliveries (what redis-benchmark measures: its PUBLISHes reach no subscriber).
  hr "compare: PushBatch of 100 to users with no stream (no deliveries): ours"
  start_gateway --redis-timeout 5s
  loadgen --streams 0 --offline-users 5000 --mode users --rate 0 --batch 100 --pushers 8 --duration 10s --prefix cmpoff | tee "$dir/cmpoff.ours"
  stop_gateway
  hr "compare: the push script alone, redis-benchmark -c 8 -P 16"
  push_script_floor 8 16 | tee "$dir/cmpfloor"
  hr "compare: memory per idle connection, $PEER_STREAMS connections: the peer (Socket.IO)"
  start_peer
  idle_memory "peer server" "$peer_pid" "$PEER_STREAMS" peer_loadgen_cmd --streams "$PEER_STREAMS" --hold 20s --duration 0s --drain 0s
  peer_mem=$per_stream
  stop_peer
  hr "compare: memory per idle stream, $PEER_STREAMS streams, one connection each: ours"
  start_gateway
  idle_memory gateway "$gw_pid" "$PEER_STREAMS" loadgen --streams "$PEER_STREAMS" --hold 20s --duration 0s --drain 0s --prefix cmpmem
  ours_mem=$per_stream
  stop_gateway

  # field FILE WHAT: one number from a load generator's output (both print the same lines).
  field() {
    case $2 in
      rate) awk '/^deliveries\/s/ {print $2}' "$1" ;;
      p50) awk '/^latency / {print $3}' "$1" ;;
      p99) awk '/^latency / {print $6}' "$1" ;;
      fanout99) awk '/^fan-out / {print $6}' "$1" ;;
      got) awk '/^deliveries / {print $6}' "$1" | tr -d '()' ;;
      cpu) awk '/^(gateway|peer server) cpu / {for (i = 1; i < NF; i++) if ($(i + 1) == "µs") {print $i; exit}}' "$1" ;;
    esac
  }
  row() { # shape, metric, peer, ours, better, delivered peer/ours, server µs per delivery peer/ours
    local ratio
    ratio=$(awk -v p="$3" -v o="$4" 'BEGIN { if (p + 0 > 0 && o != "" && o != "-") printf "%.2f", o / p; else print "-" }')
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "${3:--}" "${4:--}" "$ratio" "$5" "$6" "$7"
  }
  hr "compare: summary, $PEER_STREAMS connections (the peer = Socket.IO $(peer_version) + Redis adapter/emitter, one Node process)"
  echo "ratio = ours ÷ peer: for /s above 1 means ours is better; for ms and bytes below 1 means ours is better."
  echo "delivered = deliveries of expected by the end of the drain (a flat-out peer run ends with a backlog: the emitter has no backpressure)."
  echo
  echo "| shape | metric | peer | ours | ratio ours÷peer | better | delivered peer / ours | server CPU µs per delivery peer / ours |"
  echo "|---|---|---|---|---|---|---|---|"
  for r in "${results[@]}"; do
    IFS='|' read -r name flags k <<<"$r"
    p=$dir/cmp$k.peer o=$dir/cmp$k.ours
    got="$(field "$p" got) / $(field "$o" got)" cpu="$(field "$p" cpu) / $(field "$o" cpu)"
    case $flags in
      *"--rate 0 "*) row "$name" "deliveries/s" "$(field "$p" rate)" "$(field "$o" rate)" higher "$got" "$cpu" ;;
      *"--mode users"*)
        row "$name" "latency p50, ms" "$(field "$p" p50)" "$(field "$o" p50)" lower "$got" "$cpu"
        row "$name" "latency p99, ms" "$(field "$p" p99)" "$(field "$o" p99)" lower "$got" "$cpu" ;;
      *) row "$name" "last receiver p99, ms" "$(field "$p" fanout99)" "$(field "$o" fanout99)" lower "$got" "$cpu" ;;
    esac
  done
  row "idle connections" "memory per connection, B" "$peer_mem" "$ours_mem" lower "" ""
  # The batch rows: against the peer's unary flat-out rate, and against the script floor.
  for r in "${results[@]}"; do
    IFS='|' read -r name flags k <<<"$r"
    [ "$name" = "one user flat out" ] || continue
    o=$dir/cmpbatch.ours
    row "one user flat out, PushBatch of 100" "deliveries/s" "$(field "$dir/cmp$k.peer" rate)" "$(field "$o" rate)" higher \
      "$(field "$dir/cmp$k.peer" got) / $(field "$o" got)" "$(field "$dir/cmp$k.peer" cpu) / $(field "$o" cpu)"
  done
  floor=$(awk '/push script:/ {print $3}' "$dir/cmpfloor")
  row "one user flat out, PushBatch of 100" "pushes/s vs the push script alone (-P 16)" "$floor" "$(field "$dir/cmpbatch.ours" rate)" higher "" ""
  row "PushBatch of 100, no stream to deliver to" "pushes/s vs the push script alone (-P 16)" "$floor" "$(awk '/^pushes / {print $5}' "$dir/cmpoff.ours" | tr -d '(/s)')" higher "" ""
fi
