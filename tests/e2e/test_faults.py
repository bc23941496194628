"""Faults injected while a real training run is in flight, in real services on the local cluster.

Cheapest first: an admin's scancel, a node going down, then one run that meets four faults (moto/S3
restarted during staging; during training a scheduler and a triggerer killed, out of two of each, and
sshd restarted). Each test watches the run from outside (squeue, the FSx folder) and asserts, besides its
own expectation: at most one training job of the run active at any time, and no checkpoint that was once
complete lost (unless a verified S3 copy of it exists).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from neoxflow.pipeline.plan import dataset_selection, plan_run
from tests.conftest import REPO
from tests.e2e.conftest import (
    DAG_ID,
    airflow_race_retries,
    demo_run,
    task_instance,
    task_states,
    train_trigger,
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


def test_node_down_resumes_from_latest_complete_checkpoint_on_the_spare(api, fsx, run_name, cluster_env):
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
    # the same world size on the healthy node and the spare (node3), never on node2
    assert resumed.nodes == {"node[1,3]"}, resumed
    log = (files.logs / f"nxf-train-{run_name}-{jobs[1]}.out").read_text()
    m = re.search(r"starting from iteration (\d+)", log)
    assert m, log[-2000:]
    assert int(m.group(1)) == highest(resumed.complete_when_seen) >= 20, (m.group(0), resumed)
    step = files.latest_step()
    assert step.iteration == target, step
    assert f"global_step{target}" in monitor.ever_complete
    assert_safety(api, monitor, cluster_env, run_id, run_name)


# --------------------------------------------------------------------------- infrastructure faults
# One pipeline run meets four faults (one run instead of four keeps CI short): moto, standing in for S3,
# restarted while the data is staged; then, while the training job runs, a scheduler and the triggerer
# that runs the training trigger killed (SIGKILL to the process group, a crash: no clean-up, no graceful
# hand-over) out of the two of each the e2e services run, and sshd restarted while the other triggerer
# watches the job. The killed ones stay down until the run has finished.

LOCALCLUSTER = REPO / "scripts" / "localcluster.sh"
S3_RETRY = re.compile(r"S3 \w+ attempt \d+/\d+ failed")
TRAIN = "train.train_slice"


def localcluster(*args: str) -> None:
    result = subprocess.run([str(LOCALCLUSTER), *args], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"localcluster.sh {' '.join(args)} failed:\n{result.stderr[-3000:]}"


def stage_logs(fsx: Path, run_name: str) -> dict[str, str]:
    folder = fsx / "runs" / run_name / "jobs" / f"nxf-stage-{run_name}"
    return {p.name: p.read_text(errors="replace") for p in sorted(folder.glob("slurm-*.out"))}


def note(text: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {text}", flush=True)


def trigger_cancels(home: Path, run_id: str) -> list[str]:
    """Lines of the training task's trigger logs where a trigger cancelled its Slurm job (on_kill)."""
    folder = home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={TRAIN}"
    return [
        line
        for path in sorted(folder.glob("*.trigger.*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if "cancelling Slurm job" in line
    ]


def test_moto_scheduler_triggerer_sshd_faults_during_one_run(api, services, fsx, run_name, cluster_env):
    # The data stages must really run: the dataset is shared by every run of the profile and a valid one
    # is reused, so start from what a fresh cluster has (the S3 copies stay: fetch skips them).
    layout = plan_run({"profile": "local", "run_name": run_name})["layout"]
    for folder in (layout["raw_dir"], layout["tokens_dir"]):
        shutil.rmtree(folder, ignore_errors=True)
    for suffix in (".bin", ".idx", ".summary.json"):
        Path(layout["data_path"] + suffix).unlink(missing_ok=True)
    # the kill phase (~25 s: the triggerer health check threshold) and sshd's restart (~8 s) must fall
    # inside the one training job, with room to spare on a slower machine
    target = 160
    # a triggerer job started from now on is triggerer-2's (the kill phase needs to know which one runs
    # the training trigger; the API names only the job); the Job table's clock is this machine's
    second_triggerer_since = datetime.now(UTC)
    services.script("restart", "triggerer-2")
    killed: list[str] = []
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

        # scheduler and triggerer: the training task is deferred, its job runs on. Which of the two
        # triggerers runs its trigger? The API names the triggerer job; triggerer-2 was restarted before
        # the run, so a job started since then is triggerer-2's.
        wait_for(training_reached(files, 10), 420, "[kill phase] the training job to log iteration 10")
        job_id = wait_for(monitor.running_job, 30, "[kill phase] a RUNNING training job")
        trigger_id, holder_job, holder_start = wait_for(
            lambda: train_trigger(api, run_id), 60, "[kill phase] the training trigger on a triggerer"
        )
        holder = "triggerer-2" if holder_start >= second_triggerer_since else "triggerer"
        try:
            t0 = time.monotonic()
            for component in ("scheduler", holder):
                killed.append(component)
                services.script("kill", component)
            note(f"killed scheduler and {holder} (trigger {trigger_id}, triggerer job {holder_job})")
            # the other triggerer takes the trigger over once the dead one's heartbeat is older than
            # [triggerer] triggerer_health_check_threshold (20 s here); it re-attaches to the same job
            taken = wait_for(
                lambda: (t := train_trigger(api, run_id)) and t[1] != holder_job and t,
                120,
                "[kill phase] the other triggerer to take the training trigger over",
            )
            step, took = files.latest_step(), time.monotonic() - t0
            note(f"trigger {taken[0]} taken over by triggerer job {taken[1]} after {took:.1f}s")
            note(f"training at iteration {step.iteration}")
            assert monitor.running_job() == job_id, f"[kill phase] job {job_id} ended during it: {step}"

            # sshd: every SSH session dropped, no SSH for 5 s, while the re-attached trigger watches the job
            wait_for(training_reached(files, step.iteration + 5), 120, "[sshd phase] 5 more iterations")
            t0 = time.monotonic()
            localcluster("restart", "sshd", "5")
            step = files.latest_step()
            note(f"sshd restarted in {time.monotonic() - t0:.1f}s, training at iteration {step.iteration}")
            assert monitor.running_job() == job_id, f"[sshd phase] job {job_id} ended during it: {step}"
            # the rest of the run (training, export, report) on one scheduler and one triggerer
            final = api.wait_run(DAG_ID, run_id, timeout=420)
        finally:
            for component in killed:  # the following tests get two of each again
                services.script("restart", component)

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
    names = dataset_selection(plan["dataset"]).names()
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
    # each time (no retry), no second job was ever submitted and no trigger cancelled the healthy one
    train = task_instance(api, run_id, TRAIN)
    assert train["state"] == "success", train
    assert train["try_number"] == 1 + airflow_race_retries(run_id, TRAIN), train
    assert set(monitor.jobs) | logged_job_ids(fsx, run_name) == {job_id}, monitor.jobs
    assert "CANCELLED" not in monitor.jobs[job_id].states, monitor.jobs[job_id]
    assert not trigger_cancels(services.home, run_id), trigger_cancels(services.home, run_id)
    step = files.latest_step()
    assert step.iteration == target, step
    assert f"global_step{target}" in monitor.ever_complete
    assert_safety(api, monitor, cluster_env, run_id, run_name)
