#!/usr/bin/env bash
# Runs the whole test suite: unit tests and the end-to-end suites, which spawn their
# own redis-server (one per test, on a unix socket) and the services on 127.0.0.1:0.
# Extra arguments go to cargo test (e.g. ./scripts/test.sh -p push-tests presence).
# Then the Kubernetes manifests are rendered, validated and policy-scanned offline
# (scripts/check-deploy.sh; tools from PyPI into .run/, once).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ensure-redis.sh
cargo test --workspace --locked "$@"
./scripts/check-deploy.sh
