#!/usr/bin/env bash
# Builds the container image (the Dockerfile at the root) with podman, here:
#   ./scripts/build-image.sh [TAG]        default localhost/push:0.1.0
# Seeds the base images first when they are missing (scripts/seed-images.sh: nothing can
# be pulled here), and lends the build this machine's crate downloads, so it needs no
# network. Elsewhere `docker build .` or `podman build .` is all it takes.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/push:0.1.0}
./scripts/seed-images.sh
registry=${CARGO_HOME:-$HOME/.cargo}/registry
mkdir -p "$registry"
podman build --network host -v "$registry:/usr/local/cargo/registry" -t "$tag" .
podman image prune -f >/dev/null # the build stage left behind (its cache mount stays)
