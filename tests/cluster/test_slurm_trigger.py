"""SlurmJobTrigger against the real cluster: a user's kill cancels, a triggerer restart does not."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from neoxflow.hooks.slurm import SlurmSSHHook
from neoxflow.triggers.slurm_job import SlurmJobTrigger
from tests.cluster.slurm_helpers import job_state, unique_dir, wait_state

pytestmark = [pytest.mark.cluster]


@pytest.fixture
def running_job(cluster_env):
    workdir = unique_dir(cluster_env["NEOXFLOW_FSX"])
    hook = SlurmSSHHook("neoxflow_cluster")
    hook.upload(b"#!/bin/bash\necho started\nsleep 120\n", f"{workdir}/long.sbatch")
    job = hook.submit(f"{workdir}/long.sbatch", job_name="trigger-test", output=f"{workdir}/slurm-%j.out")
    wait_state(job, {"RUNNING"})
    yield job, f"{workdir}/slurm-{job}.out"
    hook.run(f"scancel {job}", check=False)


def make_trigger(job, log_path, **kwargs):
    return SlurmJobTrigger(
        ssh_conn_id="neoxflow_cluster",
        job_id=job,
        start_day="2026-01-01",
        log_path=log_path,
        poll_interval=0.5,
        **kwargs,
    )


def test_serialize_round_trip():
    trigger = make_trigger("12", "/fsx/x/slurm-12.out", expected_tasks=["12_0"])
    classpath, kwargs = trigger.serialize()
    assert classpath == "neoxflow.triggers.slurm_job.SlurmJobTrigger"
    again = SlurmJobTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)


async def _run_briefly(trigger, seconds: float):
    """Run the trigger like the triggerer does, then cancel it (what a triggerer shutdown does)."""
    task = asyncio.ensure_future(trigger.run().__anext__())
    await asyncio.sleep(seconds)
    assert not task.done(), "a running job must not produce an event"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_triggerer_restart_does_not_cancel_the_job(running_job):
    job, log = running_job
    await _run_briefly(make_trigger(job, log), 3)
    await asyncio.sleep(1)
    assert job_state(job) == "RUNNING"
    # a new triggerer picks the same trigger up again and keeps following the same job
    await _run_briefly(make_trigger(job, log), 2)
    assert job_state(job) == "RUNNING"


async def test_user_kill_cancels_the_job(running_job):
    job, log = running_job
    trigger = make_trigger(job, log)
    await _run_briefly(trigger, 2)
    await trigger.on_kill()
    assert await asyncio.to_thread(wait_state, job, {"CANCELLED"}, 30) == "CANCELLED"


async def test_sensor_style_trigger_does_not_cancel_on_kill(running_job):
    job, log = running_job
    trigger = make_trigger(job, log, cancel_on_kill=False)
    await trigger.on_kill()
    await asyncio.sleep(1)
    assert job_state(job) == "RUNNING"


async def test_cancelled_job_yields_a_final_cancelled_event(running_job):
    job, log = running_job
    SlurmSSHHook("neoxflow_cluster").cancel(job)
    event = await asyncio.wait_for(make_trigger(job, log).run().__anext__(), 60)
    assert event.payload["event"] == "final"
    assert event.payload["status"]["outcome"] == "cancelled"
    assert "started" in event.payload["tail"]
    assert Path(log).exists()


def _finished_job(cluster_env, script: bytes) -> tuple[SlurmSSHHook, str]:
    workdir = unique_dir(cluster_env["NEOXFLOW_FSX"])
    hook = SlurmSSHHook("neoxflow_cluster")
    hook.upload(script, f"{workdir}/x.sbatch")
    job = hook.submit(f"{workdir}/x.sbatch", job_name="acct-test", output=f"{workdir}/slurm-%j.out")
    wait_state(job, {"FAILED", "COMPLETED"})
    return hook, job


@pytest.mark.accounting_only
def test_with_accounting_sacct_answers_and_agrees(cluster_env):
    """slurmdbd up: the probe's sacct layer answers, and on its own gives the same verdict."""
    import time

    from neoxflow.slurm.commands import ProbeRequest, split_probe_output
    from neoxflow.slurm.parse import merge_sources, parse_sacct

    assert cluster_env["ACCOUNTING"] == "1"
    hook, job = _finished_job(cluster_env, b"#!/bin/bash\nexit 4\n")
    end = time.monotonic() + 30
    while True:  # accounting is written asynchronously: briefly empty is "unknown", never "gone"
        _, out, _ = hook.run(ProbeRequest(job, time.strftime("%Y-%m-%d")).command(), check=False)
        answer = split_probe_output(out)
        rows = parse_sacct(answer.sacct or "")
        if rows or time.monotonic() > end:
            break
        time.sleep(1)
    assert answer.sacct is not None and "sacct" not in answer.errors
    only_sacct = merge_sources(job, [], [], rows)  # as after MinJobAge: squeue/scontrol forgot the job
    assert only_sacct.outcome.value == "app_failure" and "exit code 4" in only_sacct.summary()


@pytest.mark.no_accounting_only
def test_without_accounting_sacct_is_no_answer_not_a_verdict(cluster_env):
    import time

    from neoxflow.slurm.commands import ProbeRequest, split_probe_output
    from neoxflow.slurm.status import status_from_probe

    assert cluster_env["ACCOUNTING"] == "0"
    hook, job = _finished_job(cluster_env, b"#!/bin/bash\nexit 0\n")
    _, out, _ = hook.run(ProbeRequest(job, time.strftime("%Y-%m-%d")).command(), check=False)
    answer = split_probe_output(out)
    assert answer.sacct is None and "accounting storage is disabled" in answer.errors["sacct"]
    assert status_from_probe(job, answer).outcome.value == "success"  # scontrol still knows it


async def test_an_arrays_task_output_streams_into_the_task_log(cluster_env, capsys):
    """Each array task's own output file, read by its own offset in the probe's one command: every task's
    lines reach the task log (``[task N]``) and the event; the offsets travel in the event."""
    import time

    from neoxflow.slurm.logstream import array_log_pattern
    from neoxflow.slurm.status import array_task_ids

    workdir = unique_dir(cluster_env["NEOXFLOW_FSX"])
    hook = SlurmSSHHook("neoxflow_cluster")
    script = b'#!/bin/bash\necho "shard $SLURM_ARRAY_TASK_ID fetched"\nsleep 1\n'
    script += b'echo "task $SLURM_ARRAY_TASK_ID done"\n'
    hook.upload(script, f"{workdir}/array.sbatch")
    output = f"{workdir}/%x-%A_%a.out"
    job = hook.submit(
        f"{workdir}/array.sbatch", job_name="array-log", output=output, options={"array": "0-2"}
    )
    trigger = SlurmJobTrigger(
        ssh_conn_id="neoxflow_cluster",
        job_id=job,
        start_day=time.strftime("%Y-%m-%d"),
        expected_tasks=array_task_ids(job, "0-2"),
        array_log=array_log_pattern(output, job, "array-log"),
        poll_interval=0.5,
    )
    event = (await asyncio.wait_for(trigger.run().__anext__(), 120)).payload
    assert event["event"] == "final" and event["status"]["outcome"] == "success", event
    logged = capsys.readouterr().out
    for task in range(3):
        assert f"[slurm {job}] [task {task}] shard {task} fetched" in logged
        assert f"[task {task}] task {task} done" in event["tail"]
        size = len(f"shard {task} fetched\ntask {task} done\n")
        assert event["task_offsets"][str(task)] == size  # where a re-deferral would read on
