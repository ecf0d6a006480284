#!/usr/bin/env bash
# Installs podman, runc and debootstrap from Debian's packages when missing, and makes
# podman use runc with the ulimits this kind of host allows (crun fails on its cgroups;
# raising rlimits is refused). Sourced by seed-images.sh and the image test.
set -euo pipefail
sudo=""
[ "$(id -u)" != 0 ] && sudo="sudo"
missing=()
for c in podman runc debootstrap; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian's packages" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq podman runc debootstrap uidmap >/dev/null
fi
conf=/etc/containers/containers.conf
if ! grep -q '^runtime *= *"runc"' "$conf" 2>/dev/null; then
  echo "configuring podman: runtime runc, default ulimits ($conf)" >&2
  $sudo mkdir -p /etc/containers
  {
    echo '[containers]'
    echo 'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]'
    echo '[engine]'
    echo 'runtime = "runc"'
  } | $sudo tee "$conf" >/dev/null
fi
