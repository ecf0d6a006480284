#!/usr/bin/env bash
# Runs the whole system locally: its own redis-server, presence-svc, profile-svc and
# push-gateway, all on 127.0.0.1. Stays in the foreground; Ctrl-C or SIGTERM stops
# everything it started (exit status 0). When Redis does not start, or a service fails
# to start or exits, it says which one, stops the rest and exits with status 1.
# Ports can be changed with the variables below; binaries are taken from
# $CARGO_TARGET_DIR when it is set.
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_PORT=${REDIS_PORT:-6390}
GATEWAY_PORT=${GATEWAY_PORT:-50051}
PRESENCE_PORT=${PRESENCE_PORT:-50061}
PROFILE_PORT=${PROFILE_PORT:-50062}
CONSOLE_PORT=${CONSOLE_PORT:-9052}
PROFILE_BUILD=${PROFILE_BUILD:-release}

. scripts/ensure-redis.sh

cargo build --locked --profile "$PROFILE_BUILD" -p presence-svc -p profile-svc -p push-gateway
target_dir=${CARGO_TARGET_DIR:-target}
bin="$target_dir/$PROFILE_BUILD"
[ "$PROFILE_BUILD" = dev ] && bin=$target_dir/debug

run_dir=$(pwd)/.run
mkdir -p "$run_dir"
pids=()
declare -A names=()
# start NAME COMMAND...: runs COMMAND in the background, remembered as NAME.
start() {
  local name=$1
  shift
  "$@" &
  pids+=($!)
  names[$!]=$name
}
# stop [STATUS]: stops everything started (services first, they drain; Redis last) and
# exits with STATUS (default: the status the script was exiting with, so a failure is
# never reported as success).
stop() {
  local status=${1:-$?}
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" = 0 ]; then echo "stopped"; else echo "stopped (exit status $status)" >&2; fi
  exit "$status"
}
# Ctrl-C and SIGTERM are the normal way to stop: exit 0. Anything else that ends the
# script (a failed build, `exit 1`) keeps its status.
trap 'stop 0' INT TERM
trap stop EXIT
# find_dead: sets `failed` to the started processes that are no longer running, with
# their exit status ("" when all run). In this shell, not a subshell: only the parent
# can collect a child's status.
find_dead() {
  failed=""
  local pid status
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      status=0
      wait "$pid" 2>/dev/null || status=$?
      failed+="${failed:+, }${names[$pid]} (exit status $status)"
    fi
  done
}

# What the system needs of Redis (docs/OPERATIONS.md): AOF for the histories, no
# eviction, and room in the gateway hubs' Pub/Sub output buffers above
# --max-publish-bytes, so one large push never disconnects a replica's subscriber.
start redis-server redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$run_dir" \
  --save "" --appendonly yes --appendfsync everysec --maxmemory-policy noeviction \
  --client-output-buffer-limit "pubsub 256mb 64mb 60" \
  --logfile "$run_dir/redis.log"
# Ours answers (not another server already on the port): its process id is ours.
ours() { redis-cli -p "$REDIS_PORT" info server 2>/dev/null | tr -d '\r' | grep -qx "process_id:${pids[0]}"; }
for _ in $(seq 100); do
  ours && break
  kill -0 "${pids[0]}" 2>/dev/null || break
  sleep 0.1
done
if ! ours; then
  find_dead
  echo "FAILED: redis-server did not start on 127.0.0.1:$REDIS_PORT${failed:+ ($failed)}; see $run_dir/redis.log:" >&2
  tail -n 5 "$run_dir/redis.log" >&2 2>/dev/null || true
  exit 1
fi

export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
# No load balancer in front of a local run: Ctrl-C stops at once instead of draining
# as a pod would (docs/OPERATIONS.md, "Health and shutdown").
export DRAIN_DELAY=${DRAIN_DELAY:-0s} GATEWAY_STREAM_DRAIN_WINDOW=${GATEWAY_STREAM_DRAIN_WINDOW:-1s}
. scripts/dev-credentials.sh
start presence-svc "$bin/presence-svc" --metrics-listen "127.0.0.1:9061" --listen "127.0.0.1:$PRESENCE_PORT"
start profile-svc "$bin/profile-svc" --metrics-listen "127.0.0.1:9062" --listen "127.0.0.1:$PROFILE_PORT"
start push-gateway "$bin/push-gateway" --metrics-listen "127.0.0.1:9051" --listen "127.0.0.1:$GATEWAY_PORT" \
  --presence-url "http://127.0.0.1:$PRESENCE_PORT" \
  --profile-url "http://127.0.0.1:$PROFILE_PORT" \
  --console-listen "127.0.0.1:$CONSOLE_PORT"

sleep 1
find_dead
if [ -n "$failed" ]; then
  echo "FAILED to start: $failed; its error is above" >&2
  exit 1
fi
cat <<MSG

push system running (Ctrl-C to stop):
  push-gateway  127.0.0.1:$GATEWAY_PORT   (public: push.v1.PushGateway)
  presence-svc  127.0.0.1:$PRESENCE_PORT   (internal: presence.v1.Presence)
  profile-svc   127.0.0.1:$PROFILE_PORT   (internal: profile.v1.Profile)
  redis-server  127.0.0.1:$REDIS_PORT    (data and AOF in $run_dir)
  console       http://127.0.0.1:$CONSOLE_PORT  (operator console; sign in with the admin API key)
  metrics       http://127.0.0.1:9051/metrics (gateway), :9061 (presence), :9062 (profile)

credentials (made once, kept in $run_dir; see docs/SECURITY.md):
  admin API key   $run_dir/admin.key
  device tokens   HS256, kid "dev", secret in $run_dir/device-hs256.secret

try: grpcurl -plaintext 127.0.0.1:$GATEWAY_PORT list
     A="authorization: Bearer \$(cat .run/admin.key)"
     grpcurl -plaintext -H "\$A" 127.0.0.1:$GATEWAY_PORT push.v1.PushGateway/CountOnlineUsers

MSG
# Stay in the foreground until a process exits (any exit is a failure: they run until
# stopped) or we are told to stop.
status=0 exited=""
wait -n -p exited "${pids[@]}" || status=$?
echo "FAILED: ${names[$exited]:-a process} exited (exit status $status); stopping the rest" >&2
exit 1
