#!/usr/bin/env bash
# Releases the public contract (proto/push/v1) as VERSION: snapshots it under
# contract/VERSION and tags the commit contract/VERSION. From then on
# scripts/lint.sh (and so CI) fails on any change that breaks it (`buf breaking`,
# FILE rules: wire, JSON and generated code). Usage: scripts/release-contract.sh v1.1.0
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: $0 vMAJOR.MINOR.PATCH}
[[ $version =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "version must look like v1.2.3" >&2; exit 2; }
[ ! -e "contract/$version" ] || { echo "contract/$version exists" >&2; exit 1; }
mkdir -p "contract/$version"
cp -r proto/push "contract/$version/"
git add "contract/$version"
git commit -q -m "Release the public contract $version"
git tag "contract/$version"
echo "released contract/$version; push the tag with: git push origin contract/$version"
