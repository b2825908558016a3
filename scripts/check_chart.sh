#!/usr/bin/env bash
# Offline checks of the Helm chart, for each value set in helm/hami/ci/*.yaml:
#   helm lint --strict, helm template, and every rendered object validated against the
#   Kubernetes 1.33 OpenAPI schemas with kubernetes-validate --strict.
# Needs .tools/helm/helm (scripts/fetch_tools.sh) and kubernetes-validate (the dev extra).
# Usage: scripts/check_chart.sh [values-file ...]   (default: every helm/hami/ci/*.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."

HELM=${HELM:-.tools/helm/helm}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
KUBE_VERSION=${KUBE_VERSION:-1.33.0}
CHART=helm/hami
RELEASE=hami
NAMESPACE=hami-system

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# helm writes its cache/config under $HOME: keep it out of the user's.
export HOME="$work/home"
mkdir -p "$HOME"

if [ $# -gt 0 ]; then value_files=("$@"); else value_files=("$CHART"/ci/*.yaml); fi

for values in "${value_files[@]}"; do
  name=$(basename "$values" .yaml)
  echo "== $name"
  "$HELM" lint --strict "$CHART" -f "$values" --namespace "$NAMESPACE" >"$work/lint.txt" 2>&1 \
    || { cat "$work/lint.txt"; echo "helm lint failed for $values" >&2; exit 1; }
  "$HELM" template "$RELEASE" "$CHART" -f "$values" --namespace "$NAMESPACE" \
    --kube-version "$KUBE_VERSION" >"$work/$name.yaml"
  out="$work/$name"
  # Split the stream into one file per object, grouped by the schema version that validates it.
  "$PYTHON" - "$work/$name.yaml" "$out" "$KUBE_VERSION" <<'PY'
import os, sys, yaml

rendered, out, kube_version = sys.argv[1], sys.argv[2], sys.argv[3]
# Custom resources have no schema in kubernetes-validate's bundle: ServiceMonitor
# (prometheus-operator) and cert-manager's Issuer/Certificate are skipped, by name, here only.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("cert-manager.io/v1", "Issuer"),
             ("cert-manager.io/v1", "Certificate")}
# resource.k8s.io/v1 (DRA GA) first exists in 1.34: the DRA objects target 1.34+ clusters.
NEWER_API = {"resource.k8s.io/v1": "1.34.0"}
count = 0
for doc in yaml.safe_load_all(open(rendered)):
    if not doc:
        continue
    api, kind = doc["apiVersion"], doc["kind"]
    if (api, kind) in CRD_KINDS:
        print(f"   skip {kind} {doc['metadata']['name']} (custom resource, no bundled schema)")
        continue
    version = NEWER_API.get(api, kube_version)
    os.makedirs(os.path.join(out, version), exist_ok=True)
    count += 1
    path = os.path.join(out, version, f"{count:03d}-{kind}-{doc['metadata']['name']}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
print(f"   {count} objects to validate")
PY
  for dir in "$out"/*/; do
    version=$(basename "$dir")
    "$PYTHON" -m kubernetes_validate -k "$version" --strict --quiet "$dir"*.yaml
  done
done
echo "chart OK: ${#value_files[@]} value sets"
