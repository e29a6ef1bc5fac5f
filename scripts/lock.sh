#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml's ranges (a deliberate change: commit the
# new files only after the whole suite passed on them, `bash scripts/test.sh`).
#
#   bash scripts/lock.sh [--upgrade]
#
# scripts/requirements.lock          runtime + every extra (dev, bench, learn, embeddings, rocksdb,
#                                    plot, progress, quality): what scripts/test.sh and CI install
# scripts/requirements-runtime.lock  runtime + rocksdb + quality (no plot, no progress): the
#                                    Docker image, scripts/demo.sh and the wheel test
#
# Exact versions with hashes (of every file of each pinned version), resolved for CPython 3.11
# on Linux x86_64.# uv does the resolving (installed into the current interpreter if missing); installing
# from the files needs only pip.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if command -v python >/dev/null 2>&1; then PYTHON="${PYTHON:-python}"; else PYTHON="${PYTHON:-python3}"; fi
if ! "$PYTHON" -m uv --version >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q 'uv==0.13.9'
fi
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes
  --no-header --annotation-style line --quiet "$@")
"$PYTHON" -m uv pip compile pyproject.toml --extra dev --extra bench --extra learn --extra embeddings \
  --extra rocksdb --extra plot --extra progress --extra quality -o scripts/requirements.lock "${common[@]}"
"$PYTHON" -m uv pip compile pyproject.toml --extra rocksdb --extra quality -o scripts/requirements-runtime.lock "${common[@]}"
echo "lock.sh: wrote scripts/requirements.lock and scripts/requirements-runtime.lock"
