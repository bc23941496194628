"""The demo DAG in real services: triggered through the REST API, it runs every stage on the local
cluster and ends with the target iteration's checkpoint, one training job, nothing lost."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import (
    DAG_ID,
    airflow_race_retries,
    demo_run,
    task_instance,
    task_states,
    verified_s3_tags,
)
from tests.e2e.monitor import RunMonitor, logged_job_ids, lost_checkpoints

pytestmark = [pytest.mark.e2e]


def test_demo_dag_triggered_by_rest_succeeds(api, fsx, run_name, cluster_env):
    conf = {"profile": "local", "run_name": run_name, "train_iters": 40, "checkpoint_interval": 20}
    run_id = api.trigger(DAG_ID, conf)["dag_run_id"]
    with RunMonitor(fsx, run_name) as monitor:
        final = api.wait_run(DAG_ID, run_id, timeout=480)
    states = task_states(api, run_id)
    assert final["state"] == "success", states
    assert states["train.train_slice"] == "success"
    # one try, unless Airflow's own defer race ended one (see airflow_race_retries; one job is checked below)
    tries = task_instance(api, run_id, "train.train_slice")["try_number"]
    assert tries == 1 + airflow_race_retries(run_id, "train.train_slice"), tries

    # every stage's outcome is visible through the API: the dataset numbers and the plan
    summary = api.xcom(DAG_ID, run_id, "data.data_summary")
    plan = api.xcom(DAG_ID, run_id, "prepare.plan")
    docs, tokens, parts = demo_run.dataset_numbers(summary, plan["layout"]["data_path"])
    assert docs > 0 and tokens > docs and parts >= 1, summary

    files = demo_run.RunFiles(fsx, run_name)
    step = files.latest_step()
    assert (step.iteration, step.total) == (40, 40)
    assert monitor.ever_complete >= {"global_step20", "global_step40"}
    assert (fsx / "checkpoints" / run_name / "latest").read_text().strip() == "global_step40"

    assert monitor.max_active <= 1, monitor.active_overlaps
    assert len(set(monitor.jobs) | logged_job_ids(fsx, run_name)) == 1, (monitor.jobs, files.train_logs())
    assert not lost_checkpoints(monitor, verified_s3_tags(cluster_env, plan, run_name))
    assert not monitor.errors[:3], monitor.errors
