#!/usr/bin/env bash
# Installs redis-server from Debian's packages when it is missing. Sourced by the
# other scripts; safe to run on its own.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found: installing it from Debian's packages" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  # Debian starts a system-wide instance on 6379; we start our own, so stop it.
  $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
