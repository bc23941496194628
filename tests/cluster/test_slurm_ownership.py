"""Ownership of a Slurm job on the real local cluster: a stale trigger's on_kill leaves a job that a newer
try adopted alone; the owning try's on_kill cancels and marks it; a new try then waits for it to leave
and submits afresh instead of adopting it."""

from __future__ import annotations

import asyncio

import pytest
from airflow.sdk.exceptions import TaskDeferred

from neoxflow.hooks.slurm import SlurmSSHHook
from neoxflow.operators.slurm import SlurmOperator
from neoxflow.slurm import ownership
from neoxflow.triggers.slurm_job import SlurmJobTrigger
from tests.cluster.slurm_helpers import job_state, slurm, unique_dir, wait_state

pytestmark = [pytest.mark.cluster]

TRY1 = "d/r/train/-1/try1"
TRY2 = "d/r/train/-1/try2"


@pytest.fixture
def owned_job(cluster_env):
    workdir = unique_dir(cluster_env["NEOXFLOW_FSX"])
    hook = SlurmSSHHook("neoxflow_cluster")
    hook.upload(b"#!/bin/bash\necho started\nsleep 300\n", f"{workdir}/long.sbatch")
    job = hook.submit(f"{workdir}/long.sbatch", job_name="owner-test", output=f"{workdir}/slurm-%j.out")
    wait_state(job, {"RUNNING"})
    yield hook, job, ownership.owner_path(workdir, job)
    hook.run(f"scancel {job}", check=False)


def claim(hook, path, job, token) -> bool:
    status, out, _ = hook.run(ownership.claim_command(path, job, token, 1), check=False)
    return ownership.parse_claim(status, out.decode()).claimed


def trigger(job, path, token):
    return SlurmJobTrigger(
        ssh_conn_id="neoxflow_cluster", job_id=job, start_day="2026-01-01", owner_token=token, owner_path=path
    )


async def test_a_stale_on_kill_does_not_cancel_a_job_a_newer_try_adopted(owned_job):
    hook, job, path = owned_job
    assert claim(hook, path, job, TRY1)
    assert claim(hook, path, job, TRY2)  # the newer try adopted the running job
    await trigger(job, path, TRY1).on_kill()
    assert job_state(job) == "RUNNING"
    await trigger(job, path, TRY2).on_kill()  # the owner's kill: cancelled, and marked
    assert wait_state(job, {"CANCELLED", "COMPLETING"}, timeout=30)
    owner = ownership.parse_owner(hook.read_file(path).decode())
    assert owner.cancel_requested and owner.cancel_by == TRY2
    assert not claim(hook, path, job, "d/r/train/-1/try3")  # never adopted again


class TI:
    dag_id, task_id, map_index = "d", "train", -1

    def __init__(self, try_number):
        self.try_number = try_number

    def xcom_push(self, key, value):
        pass


class Store(dict):
    def set(self, key, value):
        self[key] = value


def test_a_new_try_waits_for_a_cancelled_job_then_submits(cluster_env):
    workdir = unique_dir(cluster_env["NEOXFLOW_FSX"])
    op = SlurmOperator(
        task_id="train", script="#!/bin/bash\necho hi\nsleep 300\n", remote_dir=workdir, poll_interval=0.5
    )
    store = Store()
    ctx = {"ti": TI(1), "run_id": "r", "task_state_store": store}
    first = None
    try:
        with pytest.raises(TaskDeferred) as deferred:
            op.execute(ctx)
        first = store["slurm_job"]["job_id"]
        wait_state(first, {"RUNNING"})
        # the try-1 trigger's on_kill, as a person's "clear" runs it
        asyncio.run(deferred.value.trigger.on_kill())
        ctx = {"ti": TI(2), "run_id": "r", "task_state_store": store}
        op.deferrable = False  # follow the wait in this process (same code path as the trigger)
        op._watch = lambda context, record: record  # stop before watching the fresh job
        record = op.execute(ctx)
        assert record["job_id"] != first, "the cancelled job was adopted"
        assert job_state(first) in ("CANCELLED", ""), job_state(first)
        assert record["owner"].endswith("/try2")
    finally:
        for job in {first, store.get("slurm_job", {}).get("job_id")} - {None}:
            slurm("scancel", job, check=False)
