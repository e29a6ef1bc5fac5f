#!/usr/bin/env bash
# The README's first command: install, then run the worker on the built-in sample
# (`nearline demo` starts local Kafka/Redis when none is configured and stops them after).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if command -v python >/dev/null 2>&1; then PYTHON="${PYTHON:-python}"; else PYTHON="${PYTHON:-python3}"; fi
if [[ "${NEARLINE_SKIP_INSTALL:-0}" != 1 ]]; then
  echo "demo.sh: installing scripts/requirements-runtime.lock and the project" >&2
  "$PYTHON" -m pip install -q --require-hashes -r scripts/requirements-runtime.lock
  "$PYTHON" -m pip install -q --no-deps -e .
fi
exec "$PYTHON" -m nearline_rec.tools.cli demo "$@"
