#!/usr/bin/env bash
# The reliability tier N times in a row (default 20), outside CI:
#
#   bash scripts/reliability-loop.sh [N] [pytest args...]
#
# Each round runs the fault tests (tests/integration/test_reliability.py,
# test_containment.py, test_hard_faults.py) through scripts/test.sh, so Kafka and Redis are
# started fresh when not already running. The round's pytest exit code, duration and
# summary line go to scripts/results/reliability-loop.json as each round ends (written from
# the runs themselves, never edited by hand); a failed round keeps its log in
# test-artifacts/reliability-loop/round-K.log. Exits non-zero if any round failed.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
n="${1:-20}"
[[ $# -gt 0 ]] && shift
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
  echo "reliability-loop.sh: the number of rounds must be a positive integer, got '$n'" >&2
  exit 2
fi
TESTS=(tests/integration/test_reliability.py tests/integration/test_containment.py
  tests/integration/test_hard_faults.py)
logs="$REPO/test-artifacts/reliability-loop"
mkdir -p "$logs" scripts/results
out=scripts/results/reliability-loop.json
if command -v python >/dev/null 2>&1; then PY=python; else PY=python3; fi
rounds=()
failed=0
for ((k = 1; k <= n; k++)); do
  started=$(date +%s)
  log="$logs/round-$k.log"
  # install once (first round), then reuse the environment
  if ((k == 1)); then skip=0; else skip=1; fi
  NEARLINE_SKIP_INSTALL=$skip bash scripts/test.sh "${TESTS[@]}" -q -p no:cacheprovider "$@" >"$log" 2>&1
  rc=$?
  if ((k == 1)) && [[ -z "${VIRTUAL_ENV:-}" && -x "$REPO/.venv/bin/python" ]]; then
    export VIRTUAL_ENV="$REPO/.venv" PATH="$REPO/.venv/bin:$PATH" PYTHON="$REPO/.venv/bin/python"
  fi
  secs=$(($(date +%s) - started))
  summary=$(grep -E '^[0-9]+ (passed|failed)|[0-9]+ (passed|failed)( |,).* in [0-9.]+s' "$log" | tail -1)
  ((rc == 0)) || failed=$((failed + 1))
  ((rc == 0)) && rm -f "$log"
  echo "reliability-loop.sh: round $k/$n exit $rc in ${secs}s: ${summary:-no summary}"
  rounds+=("$k,$rc,$secs,${summary//,/;}")
  "$PY" - "$out" "$n" "$(git rev-parse HEAD 2>/dev/null || echo unknown)" "${rounds[@]}" <<'PY'
import json, sys, time
out, planned, commit, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
runs = []
for row in rows:
    k, rc, secs, summary = row.split(",", 3)
    runs.append({"round": int(k), "exit": int(rc), "seconds": int(secs), "summary": summary})
doc = {
    "tests": ["tests/integration/test_reliability.py", "tests/integration/test_containment.py",
              "tests/integration/test_hard_faults.py"],
    "commit": commit,
    "rounds_planned": planned,
    "rounds_run": len(runs),
    "rounds_passed": sum(r["exit"] == 0 for r in runs),
    "rounds_failed": sum(r["exit"] != 0 for r in runs),
    "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "runs": runs,
}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
PY
done
echo "reliability-loop.sh: $((n - failed)) of $n rounds passed (scripts/results/reliability-loop.json)"
((failed == 0))
