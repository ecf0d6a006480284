#!/usr/bin/env bash
# Runs the whole test suite: unit tests and the end-to-end suites, which spawn their
# own redis-server (one per test, on a unix socket) and the services on 127.0.0.1:0;
# then the end-to-end suite once more, each test on its own Redis Cluster.
# Extra arguments go to cargo test (e.g. ./scripts/test.sh -p push-tests presence).
# Then the Kubernetes manifests are rendered, validated and policy-scanned offline
# (scripts/check-deploy.sh; tools from PyPI into .run/, once). Last, without arguments,
# the browser side: scripts/test-web.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/ensure-redis.sh
cargo test --workspace --locked "$@"
# The end-to-end suite again on a Redis Cluster (3 masters with replicas, per test),
# unless a narrower run was asked for. One test at a time: two tests' six servers and
# services each overload two cores, and the suite has load-sensitive tests (about 6
# minutes here).
if [ $# -eq 0 ]; then
  PUSH_TEST_REDIS=cluster cargo test -p push-tests --test api --locked -- --test-threads 1
fi
./scripts/check-deploy.sh
# The browser side (web/: the TypeScript client and the console, in Node and chromium).
if [ $# -eq 0 ]; then ./scripts/test-web.sh; fi
