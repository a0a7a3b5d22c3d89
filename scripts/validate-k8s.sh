#!/usr/bin/env bash
# Validates deploy/kubernetes/ offline (scripts/validate-k8s.py says what is checked) with
# the pinned kubernetes-validate in its own venv. CI runs it (.ci/run).
#
#   scripts/validate-k8s.sh                # uses target/debug/turnpike for check-config
#   TURNPIKE=path/to/turnpike scripts/validate-k8s.sh
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
VENV=${K8S_VENV:-/var/tmp/turnpike-k8s-venv}
TURNPIKE=${TURNPIKE:-target/debug/turnpike}

[ -x "$TURNPIKE" ] || cargo build --locked --quiet --bin turnpike
if [ "$("$VENV/bin/kubernetes-validate" --version 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
"$VENV/bin/python" scripts/validate-k8s.py "$TURNPIKE"
