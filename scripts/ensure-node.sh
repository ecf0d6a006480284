#!/usr/bin/env bash
# Installs node and npm from Debian's packages when they are missing, then the peer's
# packages (loadgen/peer/socketio, exact versions from its package-lock.json) when
# node_modules is missing or older than the lock file. Sourced by scripts/bench.sh;
# safe to run on its own.
set -euo pipefail
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node or npm not found: installing them from Debian's packages" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi
peer_pkg="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/loadgen/peer/socketio"
# npm writes node_modules/.package-lock.json on every install: older than the lock file
# means the lock changed since.
if [ ! "$peer_pkg/node_modules/.package-lock.json" -nt "$peer_pkg/package-lock.json" ]; then
  (cd "$peer_pkg" && npm ci --no-audit --no-fund --loglevel=error)
fi
