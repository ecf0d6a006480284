#!/usr/bin/env bash
# Formatting, clippy with warnings as errors, buf lint of the protos, and buf breaking
# against the last released public contract (contract/).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if command -v buf >/dev/null 2>&1; then buf=(buf); else buf=(npx --yes @bufbuild/buf@1); fi
"${buf[@]}" lint
# No change may break the last released public contract (contract/README.md).
released=$(ls -d contract/v*/ | sort -V | tail -n 1)
"${buf[@]}" breaking --against "$released"
