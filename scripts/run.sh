#!/usr/bin/env bash
# Runs the whole system locally: its own redis-server, presence-svc, profile-svc and
# push-gateway, all on 127.0.0.1. Stays in the foreground; Ctrl-C or SIGTERM stops
# everything it started. Ports can be changed with the variables below.
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_PORT=${REDIS_PORT:-6390}
GATEWAY_PORT=${GATEWAY_PORT:-50051}
PRESENCE_PORT=${PRESENCE_PORT:-50061}
PROFILE_PORT=${PROFILE_PORT:-50062}
PROFILE_BUILD=${PROFILE_BUILD:-release}

. scripts/ensure-redis.sh

cargo build --locked --profile "$PROFILE_BUILD" -p presence-svc -p profile-svc -p push-gateway
bin="target/$PROFILE_BUILD"
[ "$PROFILE_BUILD" = dev ] && bin=target/debug

run_dir=$(pwd)/.run
mkdir -p "$run_dir"
pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  # Services first (they drain), Redis last.
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped"
  exit 0
}
trap stop INT TERM EXIT

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$run_dir" \
  --save "" --appendonly yes --appendfsync everysec \
  --logfile "$run_dir/redis.log" &
pids+=($!)
for _ in $(seq 100); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping >/dev/null || { echo "redis-server did not start; see $run_dir/redis.log" >&2; exit 1; }

export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
. scripts/dev-credentials.sh
"$bin/presence-svc" --listen "127.0.0.1:$PRESENCE_PORT" & pids+=($!)
"$bin/profile-svc" --listen "127.0.0.1:$PROFILE_PORT" & pids+=($!)
"$bin/push-gateway" --listen "127.0.0.1:$GATEWAY_PORT" \
  --presence-url "http://127.0.0.1:$PRESENCE_PORT" \
  --profile-url "http://127.0.0.1:$PROFILE_PORT" & pids+=($!)

sleep 1
cat <<MSG

push system running (Ctrl-C to stop):
  push-gateway  127.0.0.1:$GATEWAY_PORT   (public: push.v1.PushGateway)
  presence-svc  127.0.0.1:$PRESENCE_PORT   (internal: presence.v1.Presence)
  profile-svc   127.0.0.1:$PROFILE_PORT   (internal: profile.v1.Profile)
  redis-server  127.0.0.1:$REDIS_PORT    (data and AOF in $run_dir)

credentials (made once, kept in $run_dir; see docs/SECURITY.md):
  admin API key   $run_dir/admin.key
  device tokens   HS256, kid "dev", secret in $run_dir/device-hs256.secret

try: grpcurl -plaintext 127.0.0.1:$GATEWAY_PORT list
     A="authorization: Bearer \$(cat .run/admin.key)"
     grpcurl -plaintext -H "\$A" 127.0.0.1:$GATEWAY_PORT push.v1.PushGateway/CountOnlineUsers

MSG
# Stay in the foreground until a child exits or we are told to stop.
wait -n "${pids[@]}" || true
echo "a process exited; stopping the rest" >&2
