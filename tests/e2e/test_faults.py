"""Faults injected while a real training run is in flight, in real services on the local cluster.

Cheapest first. Each test watches the run from outside (squeue, the FSx folder) and asserts, besides its
own expectation: at most one training job of the run active at any time, and no checkpoint that was
once complete lost (unless a verified S3 copy of it exists).
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from tests.e2e.conftest import DAG_ID, demo_run, task_instance, task_states, verified_s3_tags
from tests.e2e.monitor import RunMonitor, highest, logged_job_ids, lost_checkpoints, squeue_jobs, wait_for

pytestmark = [pytest.mark.e2e]


def slurm(*args: str) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=60, env={**os.environ})
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


def trigger(api, run_name: str, train_iters: int, interval: int) -> str:
    conf = {"profile": "local", "run_name": run_name, "train_iters": train_iters}
    conf["checkpoint_interval"] = interval
    return api.trigger(DAG_ID, conf)["dag_run_id"]


def training_reached(files: demo_run.RunFiles, iteration: int):
    def check():
        step = files.latest_step()
        return step if step and step.iteration >= iteration else None

    return check


def assert_safety(api, monitor: RunMonitor, cluster_env, run_id: str, run_name: str) -> None:
    assert monitor.max_active <= 1, f"two training jobs active at once: {monitor.active_overlaps}"
    plan = api.xcom(DAG_ID, run_id, "prepare.plan")
    lost = lost_checkpoints(monitor, verified_s3_tags(cluster_env, plan, run_name))
    assert not lost, f"complete checkpoints lost: {sorted(lost)} (ever: {sorted(monitor.ever_complete)})"


def test_admin_scancel_fails_the_task_without_resubmitting(api, fsx, run_name, cluster_env):
    run_id = trigger(api, run_name, train_iters=2000, interval=20)
    files = demo_run.RunFiles(fsx, run_name)
    with RunMonitor(fsx, run_name) as monitor:
        wait_for(training_reached(files, 10), 300, "the training job to log iteration 10")
        job_id = wait_for(monitor.running_job, 30, "a RUNNING training job")
        slurm("scancel", job_id)  # what an admin does; Airflow did not ask for it
        final = api.wait_run(DAG_ID, run_id, timeout=180)
        # the retry delay is 5 s here: long enough to see a blind resubmit if there were one
        time.sleep(15)
    train = task_instance(api, run_id, "train.train_slice")
    assert train["state"] == "failed" and train["try_number"] == 1, train
    log = "\n".join(api.task_log(DAG_ID, run_id, "train.train_slice", 1))
    assert f"Slurm job {job_id}, state CANCELLED" in log, log[-2000:]
    assert "failure alert published" in log, log[-2000:]  # a human is told (SNS on moto here)
    assert set(monitor.jobs) | logged_job_ids(fsx, run_name) == {job_id}, monitor.jobs
    assert not squeue_jobs(f"nxf-train-{run_name}")
    assert_safety(api, monitor, cluster_env, run_id, run_name)
    # a run whose training was cancelled must not show as a green run in the UI and the API
    assert final["state"] == "failed", task_states(api, run_id)


def test_triggerer_restart_reattaches_to_the_same_job(api, services, fsx, run_name, cluster_env):
    target = 100  # the restart and the re-attach take ~35 s: the job must still be running then
    run_id = trigger(api, run_name, train_iters=target, interval=20)
    files = demo_run.RunFiles(fsx, run_name)
    with RunMonitor(fsx, run_name) as monitor:
        wait_for(training_reached(files, 10), 300, "the training job to log iteration 10")
        assert task_instance(api, run_id, "train.train_slice")["state"] == "deferred"
        job_id = wait_for(monitor.running_job, 30, "a RUNNING training job")
        services.script("restart", "triggerer")
        final = api.wait_run(DAG_ID, run_id, timeout=420)
    states = task_states(api, run_id)
    assert final["state"] == "success", states
    train = task_instance(api, run_id, "train.train_slice")
    assert train["state"] == "success" and train["try_number"] == 1, train  # re-attached, not retried
    assert set(monitor.jobs) | logged_job_ids(fsx, run_name) == {job_id}, monitor.jobs
    step = files.latest_step()
    assert step.iteration == target, step
    assert f"global_step{target}" in monitor.ever_complete
    assert_safety(api, monitor, cluster_env, run_id, run_name)


def test_node_down_resumes_from_latest_complete_checkpoint_on_node1(api, fsx, run_name, cluster_env):
    target = 60
    run_id = trigger(api, run_name, train_iters=target, interval=20)
    files = demo_run.RunFiles(fsx, run_name)
    try:
        with RunMonitor(fsx, run_name) as monitor:
            first_ckpt = lambda: "global_step20" in monitor.ever_complete  # noqa: E731
            wait_for(first_ckpt, 360, "checkpoint global_step20 complete")
            first_job = wait_for(monitor.running_job, 30, "a RUNNING training job")
            slurm("scontrol", "update", "nodename=node2", "state=down", "reason=neoxflow-e2e")
            final = api.wait_run(DAG_ID, run_id, timeout=480)
    finally:
        slurm("scontrol", "update", "nodename=node2", "state=resume")
    states = task_states(api, run_id)
    assert final["state"] == "success", states
    train = task_instance(api, run_id, "train.train_slice")
    assert train["try_number"] == 2, train  # the DAG's retry resumed it

    jobs = sorted(set(monitor.jobs) | logged_job_ids(fsx, run_name), key=int)
    assert len(jobs) == 2 and jobs[0] == first_job, (jobs, monitor.jobs)
    resumed = monitor.jobs[jobs[1]]
    assert resumed.nodes == {"node1"}, resumed
    log = (files.logs / f"nxf-train-{run_name}-{jobs[1]}.out").read_text()
    m = re.search(r"starting from iteration (\d+)", log)
    assert m, log[-2000:]
    assert int(m.group(1)) == highest(resumed.complete_when_seen) >= 20, (m.group(0), resumed)
    step = files.latest_step()
    assert step.iteration == target, step
    assert f"global_step{target}" in monitor.ever_complete
    assert_safety(api, monitor, cluster_env, run_id, run_name)
