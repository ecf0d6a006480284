# Sourced by run.sh and bench.sh: credentials for a local system, made once in .run/
# (never commit them). Exports what the services read:
#   INTERNAL_TOKEN_FILE   the shared internal token (presence-svc, profile-svc, gateway)
#   GATEWAY_API_KEYS      one admin API key, as its SHA-256 digest
#   GATEWAY_JWT_KEYS      an HS256 secret that verifies device tokens (kid "dev")
#   ADMIN_KEY             the admin key itself, for grpcurl and push-loadgen
creds_dir=${creds_dir:-$(pwd)/.run}
mkdir -p "$creds_dir"
chmod 700 "$creds_dir"
random_hex() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
for f in internal.token admin.key device-hs256.secret; do
  [ -s "$creds_dir/$f" ] || (umask 077; random_hex > "$creds_dir/$f")
done
export INTERNAL_TOKEN_FILE="$creds_dir/internal.token"
ADMIN_KEY=$(cat "$creds_dir/admin.key")
export ADMIN_KEY
export GATEWAY_API_KEYS="admin:$(printf %s "$ADMIN_KEY" | sha256sum | cut -d' ' -f1):admin"
export GATEWAY_JWT_KEYS="dev:HS256:$creds_dir/device-hs256.secret"
