#!/usr/bin/env bash
# `make test`: lint, unit tests, then the integration suites on the embedded local cluster, without and
# with accounting (slurmdbd), then the end-to-end suite in real Airflow services. Each pytest run must run
# tests and pass: exit code 5 ("no tests collected") counts as a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
failed=()

pytest_run() {  # label, pytest args...
  local label=$1; shift
  echo "=== $label ==="
  "$PY" -m pytest -p no:cacheprovider "$@"
  local rc=$?
  if ((rc == 5)); then echo "!!! $label collected no tests"; failed+=("$label (no tests)");
  elif ((rc != 0)); then failed+=("$label"); fi
}

echo "=== ruff ==="
"$PY" -m ruff check . || failed+=("ruff")
echo "=== pylint duplicate-code ==="
"$PY" -m pylint plugins include || failed+=("pylint duplicate-code")

pytest_run "unit" -q tests/unit -m "not slow"

started_cluster=0
if ! scripts/localcluster.sh status >/dev/null 2>&1; then started_cluster=1; fi
scripts/localcluster.sh up || { echo "local cluster failed to start"; exit 1; }
pytest_run "cluster (no accounting)" -q --durations=10 -m "cluster and not accounting_only" tests/cluster
scripts/localcluster.sh up --accounting || { echo "accounting cluster failed to start"; exit 1; }
# With slurmdbd, the state layer also reads sacct: run the Slurm layer's suites again in that mode.
pytest_run "cluster (accounting)" -q -m "cluster and not no_accounting_only" \
  tests/cluster/test_slurm_operator.py tests/cluster/test_slurm_trigger.py \
  -k "${NEOXFLOW_ACCOUNTING_TESTS:-array or exit_code or node_fail or sensor or cancel or kill or accounting}"
scripts/localcluster.sh up  # leave it as most users run it

if [[ -d tests/e2e ]] && ls tests/e2e/test_*.py >/dev/null 2>&1; then
  pytest_run "end to end (real Airflow services)" -q --durations=10 -m e2e tests/e2e
fi

if ((started_cluster)) && [[ ${NEOXFLOW_KEEP_CLUSTER:-0} != 1 ]]; then scripts/localcluster.sh down; fi

if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all test suites passed"
