#!/usr/bin/env bash
# Redis Cluster benchmarks (docs/BENCHMARKS.md, "Redis Cluster"): the same pushes on a
# cluster of 1 shard and on one of 3 shards (masters without replicas), in one run,
# with redis-benchmark's PUBLISH on a plain server as the baseline. For each, the push
# rate from push-loadgen and, from INFO commandstats on every master, how many shards
# did work per push: the push script's history append (XADD, run inside the script, so
# counted where it ran) and its SPUBLISH (a script publishes in its own slot, so
# SPUBLISH calls per push are shards per push), counted only while pushing (the counters are
# reset once the streams are open; presence writes no XADD unless someone comes online
# or goes offline, and the hub's probe is off).
#
#   ./scripts/bench-cluster.sh            # users and groups, 1 and 3 shards (~3 minutes)
#   SHARDS="3" MODES="users" ./scripts/bench-cluster.sh
#   SHARDS="3" MODES="idle" ./scripts/bench-cluster.sh   # 10,000 idle streams, 5 minutes
#
# The idle mode is bench.sh idle on a cluster: 10,000 streams held open on one gateway
# (100 connections), nothing pushed, probes on; every command on every master over
# IDLE_SECONDS (300), counted from 30 s after the streams opened.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_PORT=${BASE_PORT:-7301}
GW_PORT=${GW_PORT:-51151}
PRESENCE_PORT=${PRESENCE_PORT:-51161}
PROFILE_PORT=${PROFILE_PORT:-51162}
SHARDS=${SHARDS:-"1 3"}
MODES=${MODES:-"users groups"}
STREAMS=${STREAMS:-1000}

. scripts/ensure-redis.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --locked -p presence-svc -p profile-svc -p push-gateway -p push-loadgen --bins
bin=target/release
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM
hr() { printf '\n=== %s ===\n' "$*"; }
# until_ok WHAT COMMAND...: retries COMMAND for up to 30 s.
until_ok() {
  local what=$1
  shift
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $what" >&2
  exit 1
}
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

creds_dir="$dir/creds" . scripts/dev-credentials.sh
export GATEWAY_API_KEY_RATE=0 PUSH_LOADGEN_BEARER="$ADMIN_KEY" RUST_LOG=warn

hr "machine"
echo "$(date -u +%FT%TZ)  $(nproc) cores  $(free -g | awk '/Mem/ {print $2}') GiB  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "redis $(redis-server --version | grep -o 'v=[0-9.]*')"

hr "baseline: redis-benchmark PUBLISH on a plain server, 50 clients, no pipelining"
redis-server --bind 127.0.0.1 --port "$BASE_PORT" --save "" --appendonly no --dir "$dir" --logfile "$dir/base.log" &
pids+=($!)
until_ok "redis on $BASE_PORT" redis-cli -p "$BASE_PORT" ping
redis-benchmark -p "$BASE_PORT" -c 50 -n 300000 -P 1 -q publish bench:ch "$(head -c 132 /dev/zero | tr '\0' x)" | tr '\r' '\n' | tail -1 | sed 's/x\{20,\}/<132 B>/'
stop_all

# start_cluster N: N masters on BASE_PORT.., all slots assigned, state ok.
start_cluster() {
  local n=$1 p ports=()
  for i in $(seq 0 $((n - 1))); do
    p=$((BASE_PORT + i))
    mkdir -p "$dir/n$p"
    redis-server --bind 127.0.0.1 --port "$p" --cluster-enabled yes --save "" --appendonly no \
      --dir "$dir/n$p" --logfile "$dir/n$p/log" &
    pids+=($!)
    ports+=("$p")
  done
  for p in "${ports[@]}"; do until_ok "redis on $p" redis-cli -p "$p" ping; done
  if [ "$n" -eq 1 ]; then
    redis-cli -p "$BASE_PORT" cluster addslotsrange 0 16383 >/dev/null
  else
    redis-cli --cluster create $(for p in "${ports[@]}"; do printf '127.0.0.1:%s ' "$p"; done) --cluster-replicas 0 --cluster-yes >/dev/null
  fi
  for p in "${ports[@]}"; do
    until_ok "the cluster state on $p" bash -c "redis-cli -p $p cluster info | grep -q cluster_state:ok"
  done
  REDIS_CLUSTER_NODES=$(for p in "${ports[@]}"; do printf 'redis://127.0.0.1:%s,' "$p"; done)
  export REDIS_CLUSTER_NODES=${REDIS_CLUSTER_NODES%,}
  masters=("${ports[@]}")
}

# start_services [PROBE_INTERVAL]
start_services() {
  "$bin/presence-svc" --listen "127.0.0.1:$PRESENCE_PORT" & pids+=($!)
  "$bin/profile-svc" --listen "127.0.0.1:$PROFILE_PORT" & pids+=($!)
  # No probe traffic in the push counts: the hub's probe is an SPUBLISH too.
  "$bin/push-gateway" --listen "127.0.0.1:$GW_PORT" --worker-threads 1 --drain-delay 0s --stream-drain-window 0s \
    --presence-url "http://127.0.0.1:$PRESENCE_PORT" --profile-url "http://127.0.0.1:$PROFILE_PORT" \
    --hub-probe-interval "${1:-1h}" --redis-timeout 5s &
  pids+=($!)
  until_ok "the gateway" bash -c "exec 3<>/dev/tcp/127.0.0.1/$GW_PORT"
  sleep 2 # health probes settle
}

# calls CMD PORT: how many times CMD ran on PORT since the last reset.
calls() { redis-cli -p "$2" info commandstats | tr -d '\r' | awk -F'[=,:]' -v c="cmdstat_$1" '$1 == c {print $3}' | grep . || echo 0; }

# all_commands: every command run on every master since the last reset (INFO and CONFIG aside).
all_commands() {
  for p in "${masters[@]}"; do redis-cli -p "$p" info commandstats | tr -d '\r'; done |
    awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_config" && $1 != "cmdstat_info" {n += $3} END {print n + 0}'
}

idle() {
  local shards=$1 idle_s=${IDLE_SECONDS:-300}
  hr "idle streams: 10,000 on one gateway, nothing pushed, on $shards shard(s), Redis work over ${idle_s} s"
  start_cluster "$shards"
  start_services 5s
  "$bin/push-loadgen" --target "http://127.0.0.1:$GW_PORT" --streams 10000 --connections 100 \
    --hold "$((idle_s + 60))s" --duration 0s --drain 0s --prefix "idle$shards" >/dev/null 2>"$dir/err" &
  local lg=$!
  until grep -q holding "$dir/err" 2>/dev/null; do
    kill -0 "$lg" 2>/dev/null || { cat "$dir/err"; echo "the load generator failed before holding" >&2; exit 1; }
    sleep 0.5
  done
  local open
  open=$(awk '/^holding / {print $2}' "$dir/err")
  sleep 30
  for p in "${masters[@]}"; do redis-cli -p "$p" config resetstat >/dev/null; done
  sleep "$idle_s"
  local n
  n=$(all_commands)
  for p in "${masters[@]}"; do
    echo "master $p: $(redis-cli -p "$p" info commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ {printf "%s=%s ", substr($1, 9), $3}')"
  done
  kill "$lg" 2>/dev/null || true
  wait "$lg" 2>/dev/null || true
  awk -v n="$n" -v k="$open" -v s="$idle_s" 'BEGIN {
    printf "%d streams open; all commands on all masters: %d in %d s = %.3f per stream per minute\n", k, n, s, n / k / (s / 60) }'
  stop_all
  rm -rf "$dir"/n*
}

for shards in $SHARDS; do
  for mode in $MODES; do
    if [ "$mode" = idle ]; then
      idle "$shards"
      continue
    fi
    hr "$mode pushes, $STREAMS streams, 50 concurrent pushers, on $shards shard(s)"
    start_cluster "$shards"
    start_services
    args=(--target "http://127.0.0.1:$GW_PORT" --streams "$STREAMS" --mode "$mode" --pushers 50 --duration 10s --hold 2s --prefix "c$shards$mode")
    [ "$mode" = groups ] && args+=(--groups 100)
    "$bin/push-loadgen" "${args[@]}" >"$dir/out" 2>"$dir/err" &
    lg=$!
    until grep -q holding "$dir/err" 2>/dev/null; do
      kill -0 "$lg" 2>/dev/null || { cat "$dir/err"; echo "the load generator failed before pushing" >&2; exit 1; }
      sleep 0.2
    done
    for p in "${masters[@]}"; do redis-cli -p "$p" config resetstat >/dev/null; done
    wait "$lg" || { cat "$dir/err"; exit 1; }
    grep -E '^(pushes|deliveries|latency|push errors)' "$dir/out"
    pushes=$(awk '/^pushes / {print $2}' "$dir/out")
    scripts=0 publishes=0 busy=0 line=""
    for p in "${masters[@]}"; do
      e=$(calls xadd "$p") s=$(calls spublish "$p")
      scripts=$((scripts + e)) publishes=$((publishes + s))
      [ "$s" -gt 0 ] && busy=$((busy + 1))
      line+=" $p: ${e} XADD, ${s} SPUBLISH;"
    done
    echo "per master:$line"
    awk -v n="$pushes" -v e="$scripts" -v s="$publishes" -v b="$busy" 'BEGIN {
      printf "per push: %.3f XADD, %.3f SPUBLISH (each on one shard: the shards that did work per push); %d of the masters took pushes\n", e / n, s / n, b }'
    stop_all
    rm -rf "$dir"/n*
  done
done
