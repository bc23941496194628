#!/usr/bin/env bash
# `make demo`: the whole pipeline on the embedded local cluster, in real Airflow services.
#   1. install what is missing (scripts/bootstrap.sh)
#   2. start the local cluster: slurm node1+node2, sshd, moto S3, the C4 stand-in HTTP source
#   3. start Airflow: scheduler, dag-processor, triggerer, api-server (scripts/airflow_services.sh)
#   4. trigger pythia_pretrain through the REST API, show progress, print a summary (scripts/demo_run.py)
# Exit status 0 only when the run succeeded. `scripts/demo.sh down` (make demo-down) stops it all.
#
# Knobs: NEOXFLOW_DEMO_ITERS (200), NEOXFLOW_DEMO_CKPT_INTERVAL (50), NEOXFLOW_DEMO_TIMEOUT (1200 s),
# NEOXFLOW_API_PORT (18793), NEOXFLOW_DEMO_RUN_NAME (demo-<timestamp>).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

if [[ ${1:-} == down ]]; then
  scripts/airflow_services.sh down
  scripts/localcluster.sh down
  exit 0
fi
[[ $# -eq 0 ]] || { echo "usage: $0 [down]" >&2; exit 2; }

t0=$SECONDS
step() { printf '\n[demo %02d:%02d] %s\n' $(((SECONDS - t0) / 60)) $(((SECONDS - t0) % 60)) "$*"; }

step "1/4 installing what is missing (Debian packages, .venv)"
scripts/bootstrap.sh
step "2/4 starting the local cluster (slurm node1+node2, sshd, moto S3, C4 source)"
scripts/localcluster.sh up
step "3/4 starting Airflow (scheduler, dag-processor, triggerer, api-server)"
scripts/airflow_services.sh up
step "4/4 running pythia_pretrain"
rc=0
.venv/bin/python scripts/demo_run.py \
  --env .state/airflow/api.env --cluster-env "${NEOXFLOW_STATE:-.state/cluster}/env.sh" \
  --run-name "${NEOXFLOW_DEMO_RUN_NAME:-demo-$(date +%Y%m%d-%H%M%S)}" \
  --train-iters "${NEOXFLOW_DEMO_ITERS:-200}" --checkpoint-interval "${NEOXFLOW_DEMO_CKPT_INTERVAL:-50}" \
  --timeout "${NEOXFLOW_DEMO_TIMEOUT:-1200}" || rc=$?

elapsed=$((SECONDS - t0))
echo
if ((rc == 0)); then
  echo "Demo succeeded in $((elapsed / 60))m$((elapsed % 60))s. Services keep running for the UI; stop everything with: make demo-down"
else
  echo "Demo FAILED (exit $rc) after $((elapsed / 60))m$((elapsed % 60))s. Service logs: .state/airflow/logs/services/," \
    "task logs: .state/airflow/logs/dag_id=pythia_pretrain/. Stop everything with: make demo-down"
fi
exit "$rc"
