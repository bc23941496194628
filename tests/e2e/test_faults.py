"""Faults injected while a real training run is in flight, in real services on the local cluster.

Cheapest first: an admin's scancel, a node going down, then one run that meets four restarts (moto/S3
during staging; scheduler, triggerer and sshd during training). Each test watches the run from outside
(squeue, the FSx folder) and asserts, besides its own expectation: at most one training job of the run
active at any time, and no checkpoint that was once complete lost (unless a verified S3 copy of it exists).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from neoxflow.pipeline.plan import plan_run
from tests.conftest import REPO
from tests.e2e.conftest import (
    DAG_ID,
    airflow_race_retries,
    demo_run,
    task_instance,
    task_states,
    verified_s3_tags,
)
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
    # the DAG's retry resumed it (plus any try Airflow's own defer race ended: see airflow_race_retries)
    assert train["try_number"] == 2 + airflow_race_retries(run_id, "train.train_slice"), train

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


# --------------------------------------------------------------------------- infrastructure restarts
# One pipeline run meets four restarts (one run instead of four keeps CI short): moto, standing in for S3,
# while the data is staged; then the scheduler, the triggerer and sshd while the training job runs.

LOCALCLUSTER = REPO / "scripts" / "localcluster.sh"
S3_RETRY = re.compile(r"S3 \w+ attempt \d+/\d+ failed")


def localcluster(*args: str) -> None:
    result = subprocess.run([str(LOCALCLUSTER), *args], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"localcluster.sh {' '.join(args)} failed:\n{result.stderr[-3000:]}"


def stage_logs(fsx: Path, run_name: str) -> dict[str, str]:
    folder = fsx / "runs" / run_name / "jobs" / f"nxf-stage-{run_name}"
    return {p.name: p.read_text(errors="replace") for p in sorted(folder.glob("slurm-*.out"))}


def note(text: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {text}", flush=True)


def component_pid(services, component: str) -> str:
    return (services.home / "run" / f"{component}.pid").read_text().strip()


def restart_component(services, component: str, monitor: RunMonitor, files, job_id: str):
    """Restart an Airflow component while the training job runs; the job must outlive the restart."""
    before, t0 = component_pid(services, component), time.monotonic()
    services.script("restart", component)
    assert component_pid(services, component) != before, f"[{component} phase] it was not restarted"
    step = files.latest_step()
    note(f"{component} restarted in {time.monotonic() - t0:.1f}s, training at iteration {step.iteration}")
    assert monitor.running_job() == job_id, f"[{component} phase] job {job_id} ended during it: {step}"
    return step


def test_moto_scheduler_triggerer_sshd_restarts_during_one_run(api, services, fsx, run_name, cluster_env):
    # The data stages must really run: the dataset is shared by every run of the profile and a valid one
    # is reused, so start from what a fresh cluster has (the S3 copies stay: fetch skips them).
    layout = plan_run({"profile": "local", "run_name": run_name})["layout"]
    for folder in (layout["raw_dir"], layout["tokens_dir"]):
        shutil.rmtree(folder, ignore_errors=True)
    for suffix in (".bin", ".idx", ".summary.json"):
        Path(layout["data_path"] + suffix).unlink(missing_ok=True)
    # the three restarts take ~15 + ~20 + ~8 s (measured: sshd done at iteration ~100) and each must fall
    # inside the one training job, with room to spare on a slower machine
    target = 160
    run_id = trigger(api, run_name, train_iters=target, interval=40)
    files = demo_run.RunFiles(fsx, run_name)
    fetch_job = f"nxf-fetch-{run_name}"
    seen_fetch: set[str] = set()

    def fetch_finished() -> bool:
        live = squeue_jobs(fetch_job)
        seen_fetch.update(job for job, _, _ in live)
        if seen_fetch and not live:
            return True
        return task_instance(api, run_id, "data.fetch")["state"] in ("success", "failed", "up_for_retry")

    def staging_met_outage() -> str | None:
        for name, text in stage_logs(fsx, run_name).items():
            if S3_RETRY.search(text) or "ERROR:" in text:
                return name
        stage = task_instance(api, run_id, "data.stage")
        return "airflow retry" if stage["try_number"] > 1 or stage["state"] == "up_for_retry" else None

    with RunMonitor(fsx, run_name) as monitor:
        # moto: S3 goes away once the fetch job is done, before the stage job starts (the stage task
        # starts within a second of fetch's success, its job a few seconds later), and comes back with
        # its data once staging has met the outage
        wait_for(fetch_finished, 240, "[moto phase] the fetch job to finish")
        assert task_instance(api, run_id, "data.fetch")["state"] != "failed", task_states(api, run_id)
        t0 = time.monotonic()
        localcluster("stop", "moto")  # snapshot S3, stop: unreachable from here on
        try:
            met = wait_for(staging_met_outage, 180, "[moto phase] staging to meet the S3 outage")
            note(f"moto down: staging met it ({met}) after {time.monotonic() - t0:.1f}s")
        finally:
            localcluster("start", "moto")  # same buckets and objects, same alert topic
        note(f"moto back after {time.monotonic() - t0:.1f}s")

        # scheduler, then triggerer: the training task is deferred, its job runs on
        wait_for(training_reached(files, 10), 420, "[scheduler phase] the training job to log iteration 10")
        job_id = wait_for(monitor.running_job, 30, "[scheduler phase] a RUNNING training job")
        assert task_instance(api, run_id, "train.train_slice")["state"] == "deferred"
        restart_component(services, "scheduler", monitor, files, job_id)
        step = restart_component(services, "triggerer", monitor, files, job_id)

        # sshd: every SSH session dropped, no SSH for 5 s, while the re-attached trigger watches the job
        wait_for(training_reached(files, step.iteration + 5), 120, "[sshd phase] 5 more iterations")
        t0 = time.monotonic()
        localcluster("restart", "sshd", "5")
        step = files.latest_step()
        note(f"sshd restarted in {time.monotonic() - t0:.1f}s, training at iteration {step.iteration}")
        assert monitor.running_job() == job_id, f"[sshd phase] job {job_id} ended during it: {step}"
        final = api.wait_run(DAG_ID, run_id, timeout=420)

    states = task_states(api, run_id)
    assert final["state"] == "success", states

    # moto: staging was retried (botocore's retries, logged in the job, or the task's retry) and ended
    # with every shard staged anew and verified against the sha256 that S3 (restored) still holds
    stage = task_instance(api, run_id, "data.stage")
    logs = stage_logs(fsx, run_name)
    retried = sorted(name for name, text in logs.items() if S3_RETRY.search(text))
    note(f"stage try {stage['try_number']}; S3 retries logged in {retried}")
    for name, text in logs.items():
        for line in text.splitlines():
            if S3_RETRY.search(line) or "ERROR" in line:
                note(f"  {name}: {line[:160]}")
    assert retried or stage["try_number"] == 2, f"[moto phase] no retry seen ({met}): {stage}, {logs}"
    assert stage["state"] == "success", stage
    plan = api.xcom(DAG_ID, run_id, "prepare.plan")
    s3 = demo_run.aws_client(cluster_env)
    names = plan["data"]["shards"]["names"]
    for name in names:
        path = Path(layout["raw_dir"]) / name
        key = f"{plan['s3']['prefix'].strip('/')}/c4/en/{name}"
        meta = s3.head_object(Bucket=plan["s3"]["bucket"], Key=key)["Metadata"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == meta["sha256"], f"[moto phase] {path} differs from s3://{key}"
        assert Path(f"{path}.sha256").read_text().split()[0] == digest, f"[moto phase] {path} sidecar"
    results = [
        json.loads(line[len("NEOXFLOW_RESULT ") :])
        for text in logs.values()
        for line in text.splitlines()
        if line.startswith("NEOXFLOW_RESULT ")
    ]
    staged = {r["name"] for r in results if r["status"] == "staged"}
    assert set(names) <= staged, f"[moto phase] shards not staged anew: {set(names) - staged}"

    # scheduler, triggerer, sshd: the same job carried on to the target iteration; the task re-attached
    # each time (no retry) and no second job was ever submitted
    train = task_instance(api, run_id, "train.train_slice")
    assert train["state"] == "success", train
    assert train["try_number"] == 1 + airflow_race_retries(run_id, "train.train_slice"), train
    assert set(monitor.jobs) | logged_job_ids(fsx, run_name) == {job_id}, monitor.jobs
    step = files.latest_step()
    assert step.iteration == target, step
    assert f"global_step{target}" in monitor.ever_complete
    assert_safety(api, monitor, cluster_env, run_id, run_name)
