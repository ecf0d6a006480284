#!/usr/bin/env bash
# The browser side (web/): @push/client's tests from Node and in Debian's chromium
# (headless, driven by npm playwright-core), and the operator console's, against a real
# system on loopback (redis-server and the three services' debug binaries, on free
# ports). Installs what is missing: redis-server, nodejs, npm and chromium from Debian's
# packages; the npm packages pinned in web/package-lock.json. Fails when the code
# generated from proto/push/v1/push.proto or the console bundle (both committed: the
# gateway embeds the bundle) is not what the sources give.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
. scripts/ensure-redis.sh
chromium=${CHROMIUM_PATH:-/usr/bin/chromium}
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x "$chromium" ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "${missing[*]} not found: installing from Debian's packages" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "FAILED: web/ needs Node 20 or later (node:test, fetch streams); this is $(node --version)" >&2
  exit 1
fi

(cd web && npm ci --no-audit --no-fund --loglevel=error)

# Regenerate and rebuild; what is committed must not change.
(cd web && npm run --silent generate && npm run --silent build)
stale=$(git status --porcelain -- web/client/src/gen web/console/dist)
if [ -n "$stale" ]; then
  git --no-pager diff --stat -- web/client/src/gen web/console/dist >&2
  echo "$stale" >&2
  echo "FAILED: web/client/src/gen or web/console/dist is stale: run 'npm run generate && npm run build' in web/ and commit them" >&2
  exit 1
fi

cargo build --locked -p presence-svc -p profile-svc -p push-gateway
(cd web && npm test)
echo "test-web.sh: passed in $(($(date +%s) - started)) s"
