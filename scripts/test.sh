#!/usr/bin/env bash
# The project's test command (see README):
#
#   bash scripts/test.sh [pytest args...]
#
# 1. installs the locked dependencies (scripts/requirements.lock) and the project (editable),
#    into the active virtual environment or else into .venv (made if missing);
# 2. starts Kafka and Redis with scripts/services.sh (fresh KRaft cluster);
# 3. runs `python -m pytest "$@"` with NEARLINE_REQUIRE_SERVICES=1, so integration
#    tests fail instead of skipping when a service is missing;
# 4. stops the services it started itself (also on failure or Ctrl-C) and exits with
#    pytest's exit code. Services that were already running are left running.
#
# Environment: PYTHON (default: python), NEARLINE_SKIP_INSTALL=1 to skip step 1 (PYTHON is
# then used as it is), and the NEARLINE_* port/state variables documented in scripts/services.sh.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

if command -v python >/dev/null 2>&1; then PYTHON="${PYTHON:-python}"; else PYTHON="${PYTHON:-python3}"; fi
export PYTHON
SERVICES=(bash "$REPO/scripts/services.sh")

if [[ "${NEARLINE_SKIP_INSTALL:-0}" != 1 ]]; then
  # Exact versions from the lock file (scripts/lock.sh), so a new machine runs what CI
  # tested. Outside a virtual environment one is made in .venv, so packages installed
  # earlier on the machine cannot stand in for the locked ones.
  if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    if [[ ! -x "$REPO/.venv/bin/python" ]]; then
      echo "test.sh: creating the virtual environment .venv"
      "$PYTHON" -m venv "$REPO/.venv"
    fi
    PYTHON="$REPO/.venv/bin/python"
    export VIRTUAL_ENV="$REPO/.venv" PATH="$REPO/.venv/bin:$PATH"  # `nearline` for the tests
  fi
  echo "test.sh: installing scripts/requirements.lock and the project into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
  "$PYTHON" -m pip install -q --disable-pip-version-check --require-hashes -r scripts/requirements.lock
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps -e .
fi

# Which services do we own? Only those not already running before we were called.
# The status page test drives Debian's headless Chromium.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "test.sh: installing chromium (apt-get) for the status page browser test"
  if [[ "$(id -u)" == 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  fi
fi

started=()
for svc in kafka redis; do
  if "${SERVICES[@]}" status "$svc" >/dev/null 2>&1; then
    echo "test.sh: $svc is already running; it will be left running"
  else
    started+=("$svc")
  fi
done

PYTEST_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local svc
  for svc in "${started[@]}"; do
    "${SERVICES[@]}" stop "$svc" || echo "test.sh: warning: could not stop $svc" >&2
  done
  exit "$rc"
}

# On INT (Ctrl-C reaches pytest too, it is in our process group) give pytest a few
# seconds to print its summary; on TERM pass the signal on. Then clean up.
on_signal() {  # on_signal SIGNAL EXIT_CODE
  trap - INT TERM
  if [[ -n "$PYTEST_PID" ]] && kill -0 "$PYTEST_PID" 2>/dev/null; then
    if [[ "$1" == TERM ]]; then kill -TERM "$PYTEST_PID" 2>/dev/null || true; fi
    local i
    for ((i = 0; i < 50; i++)); do
      kill -0 "$PYTEST_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -TERM "$PYTEST_PID" 2>/dev/null || true
    wait "$PYTEST_PID" 2>/dev/null || true
  fi
  echo "test.sh: interrupted (SIG$1)" >&2
  exit "$2"
}

trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

for svc in "${started[@]}"; do
  "${SERVICES[@]}" start "$svc"
done
"${SERVICES[@]}" wait all

export NEARLINE_REQUIRE_SERVICES=1
# Point the app at the services just started unless the caller chose otherwise.
export NEARLINE_KAFKA__BOOTSTRAP_SERVERS="${NEARLINE_KAFKA__BOOTSTRAP_SERVERS:-127.0.0.1:${NEARLINE_KAFKA_PORT:-9092}}"
export NEARLINE_REDIS__URL="${NEARLINE_REDIS__URL:-redis://127.0.0.1:${NEARLINE_REDIS_PORT:-6379}/0}"

# pytest runs as a background job (with the terminal's stdin and default SIGINT
# handling restored) so that a signal to this script is handled at once.
rc=0
(
  trap - INT QUIT
  exec "$PYTHON" -m pytest "$@"
) 0<&0 &
PYTEST_PID=$!
wait "$PYTEST_PID" || rc=$?
PYTEST_PID=""
echo "test.sh: pytest exited with $rc"
exit "$rc"
