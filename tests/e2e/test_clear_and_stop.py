"""A person stopping or clearing a deferred ``train.train_slice``, in real services on the local cluster.

Airflow 3.3.2 runs the trigger's ``on_kill`` for both, without saying which. Marking the task failed
must cancel the training job (squeue shows it leave) and fail the run with an alert; clearing it must
not end the run: the new try waits for the cancelled job to leave, resumes from the latest complete
checkpoint and trains on to ``train_iters``.
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import pytest

from tests.e2e.conftest import DAG_ID, demo_run, task_instance, task_states
from tests.e2e.monitor import RunMonitor, logged_job_ids, squeue_jobs, wait_for

pytestmark = [pytest.mark.e2e]
TASK = "train.train_slice"


def trigger(api, run_name: str, train_iters: int, interval: int) -> str:
    conf = {"profile": "local", "run_name": run_name, "train_iters": train_iters}
    conf["checkpoint_interval"] = interval
    return api.trigger(DAG_ID, conf)["dag_run_id"]


def deferred(api, run_id: str):
    return lambda: task_instance(api, run_id, TASK)["state"] == "deferred"


def reached(files: demo_run.RunFiles, iteration: int):
    def check():
        step = files.latest_step()
        return step if step and step.iteration >= iteration else None

    return check


def test_marking_a_deferred_train_slice_failed_cancels_the_job_and_fails_the_run(api, fsx, run_name):
    t0 = time.monotonic()
    run_id = trigger(api, run_name, train_iters=2000, interval=20)
    files = demo_run.RunFiles(fsx, run_name)
    with RunMonitor(fsx, run_name) as monitor:
        wait_for(reached(files, 10), 300, "the training job to log iteration 10")
        job_id = wait_for(monitor.running_job, 30, "a RUNNING training job")
        wait_for(deferred(api, run_id), 60, "train_slice deferred")
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{TASK}"
        api.call("PATCH", path, {"new_state": "failed"})
        wait_for(lambda: not squeue_jobs(f"nxf-train-{run_name}"), 120, "the training job to leave squeue")
        final = api.wait_run(DAG_ID, run_id, timeout=300)
    train = task_instance(api, run_id, TASK)
    assert train["state"] == "failed", train
    assert final["state"] == "failed", task_states(api, run_id)
    assert set(monitor.jobs) | logged_job_ids(fsx, run_name) == {job_id}, monitor.jobs
    log = "\n".join(api.task_log(DAG_ID, run_id, TASK, train["try_number"]))
    assert f"cancelled Slurm job {job_id}, owned by this try" in log, log[-3000:]
    assert "cancelled alert published" in log, log[-3000:]  # a human is told (SNS on moto here)
    print(f"[e2e] mark failed: {time.monotonic() - t0:.0f}s")


def test_clearing_a_deferred_train_slice_resumes_and_trains_to_the_end(api, fsx, run_name):
    t0 = time.monotonic()
    target = 60
    run_id = trigger(api, run_name, train_iters=target, interval=20)
    files = demo_run.RunFiles(fsx, run_name)
    with RunMonitor(fsx, run_name) as monitor:
        wait_for(lambda: "global_step20" in monitor.ever_complete, 360, "checkpoint global_step20 complete")
        first = wait_for(monitor.running_job, 30, "a RUNNING training job")
        # past the checkpoint event of step 20, so the task has deferred again (a clear that lands while
        # the task runs between two deferrals reaches no trigger: the new try then adopts the job)
        wait_for(reached(files, 26), 120, "the training job to log iteration 26")
        wait_for(deferred(api, run_id), 60, "train_slice deferred")
        api.call(
            "POST",
            f"/api/v2/dags/{DAG_ID}/clearTaskInstances",
            {"dry_run": False, "task_ids": [TASK], "dag_run_id": run_id, "reset_dag_runs": True},
        )
        final = api.wait_run(DAG_ID, run_id, timeout=600)
    states = task_states(api, run_id)
    assert final["state"] == "success", states
    assert monitor.max_active <= 1, f"two training jobs active at once: {monitor.active_overlaps}"
    jobs = sorted(set(monitor.jobs) | logged_job_ids(fsx, run_name), key=int)
    assert jobs[0] == first and len(jobs) in (1, 2), (jobs, monitor.jobs)
    if len(jobs) == 2:  # on_kill cancelled the job it owned; the new try resumed after it had left
        log = (files.logs / f"nxf-train-{run_name}-{jobs[1]}.out").read_text()
        m = re.search(r"starting from iteration (\d+)", log)
        assert m and int(m.group(1)) >= 20, log[-2000:]
    print(f"[e2e] clear: {len(jobs)} job(s): {'cancelled and resumed' if len(jobs) == 2 else 'adopted'}")
    assert files.latest_step().iteration == target
    assert f"global_step{target}" in monitor.ever_complete
    print(f"[e2e] clear: {time.monotonic() - t0:.0f}s")
