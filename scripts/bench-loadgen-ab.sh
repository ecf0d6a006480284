#!/usr/bin/env bash
# Compares two load generators against the same gateway, side by side: the current
# tree's push-loadgen and the one of git revision REV (default d316857, the last before
# it moved onto push-client). Broadcast to 10,000 streams, 64 pushers, flat out, 10 s,
# alternating, ROUNDS times (default 3). Checks that a change to the measuring side did
# not make it the bottleneck (docs/BENCHMARKS.md). Run it alone on the machine.
#
#   ./scripts/bench-loadgen-ab.sh [REV]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:-d316857}
rounds=${ROUNDS:-3}
. scripts/ensure-redis.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --locked -p presence-svc -p profile-svc -p push-gateway -p push-loadgen --bins
old_tree=$(mktemp -d)
dir=$(mktemp -d)
pids=()
cleanup() {
  # The services first (the gateway logs its streams out), Redis last.
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done
  git worktree remove --force "$old_tree" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
git worktree add -f -q --detach "$old_tree" "$rev"
# Its own target directory (kept, so a rerun does not build it again).
old_target=$(pwd)/target/ab-$rev
(cd "$old_tree" && CARGO_TARGET_DIR="$old_target" cargo build --release --locked -p push-loadgen)
old_bin=$old_target/release/push-loadgen
bin=target/release
redis-server --bind 127.0.0.1 --port 6393 --save "" --appendonly no --dir "$dir" --logfile "$dir/redis.log" &
pids+=($!)
until redis-cli -p 6393 ping >/dev/null 2>&1; do sleep 0.1; done
export REDIS_URL=redis://127.0.0.1:6393 RUST_LOG=warn
creds_dir="$dir/creds" . scripts/dev-credentials.sh
export GATEWAY_API_KEY_RATE=0 PUSH_LOADGEN_BEARER="$ADMIN_KEY"
"$bin/presence-svc" --listen 127.0.0.1:51161 & pids+=($!)
"$bin/profile-svc" --listen 127.0.0.1:51162 & pids+=($!)
sleep 1
"$bin/push-gateway" --listen 127.0.0.1:51151 --worker-threads 1 --drain-delay 0s --stream-drain-window 0s \
  --redis-timeout 5s --presence-url http://127.0.0.1:51161 --profile-url http://127.0.0.1:51162 & pids+=($!)
sleep 2
echo "$(date -u +%FT%TZ)  $(nproc) cores  previous = $rev"
for round in $(seq "$rounds"); do
  for which in previous current; do
    lg=$bin/push-loadgen
    [ "$which" = previous ] && lg=$old_bin
    out=$("$lg" --target http://127.0.0.1:51151 --streams 10000 --mode all --pushers 64 --duration 10s --prefix "ab$round$which" 2>/dev/null)
    echo "round $round $which: $(grep -E '^deliveries' <<<"$out" | tr -s ' ' | tr '\n' ' ')"
  done
done
