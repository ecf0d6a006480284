#!/usr/bin/env bash
# Formatting, clippy with warnings as errors, and buf lint of the protos.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if command -v buf >/dev/null 2>&1; then buf lint; else npx --yes @bufbuild/buf@1 lint; fi
