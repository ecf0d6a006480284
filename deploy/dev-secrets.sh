#!/usr/bin/env bash
# Writes the development overlay's credentials into deploy/overlays/dev/.secrets/
# (git-ignored), once: the internal token, an admin API key (printed, for grpcurl) and
# its key-file line, and the HS256 secret that verifies device tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
creds_dir=deploy/overlays/dev/.secrets
. scripts/dev-credentials.sh
[ -s "$creds_dir/api-keys" ] || (umask 077; printf '%s\n' "${GATEWAY_API_KEYS}" > "$creds_dir/api-keys")
echo "dev credentials in $creds_dir; admin API key: $ADMIN_KEY"
