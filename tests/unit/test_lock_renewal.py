"""The training watch renews the run's checkpoint-folder lease while the job lives, and a lost lease is
reported, never answered with scancel. The Slurm seam is a fake; the lock commands run for real (a real
shell on a real folder); the clock the trigger reads is a fake that jumps, so a long run is a few polls.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred
from airflow.sdk.execution_time.context import OutletEventAccessors

from neoxflow.neox.watch_state import WatchState
from neoxflow.operators.training import NeoXTrainOperator
from neoxflow.pipeline import lock
from neoxflow.slurm.parse import JobStatus, TaskState
from neoxflow.triggers import training as training_trigger
from neoxflow.triggers.training import LOCK_RETRY_S, NeoXTrainingTrigger, lock_renewal_due

LEASE = 3000
OWNER = "pythia_pretrain:manual__run1"


def status(state: str, exit_code: str = "") -> JobStatus:
    task = TaskState("42", state, exit_code=exit_code, nodes="node1", source="squeue")
    return JobStatus("42", task.outcome, (task,))


def record(lock_dir: Path) -> tuple[str, int]:
    holder, until, version = (lock_dir / "owner").read_text().split()
    while (lock_dir / f"next.{version}").exists():
        holder, until, version = (lock_dir / f"next.{version}").read_text().split()
    return holder, int(until)


class Clock:
    """time.time() for the trigger: each poll moves it on by ``step`` seconds."""

    def __init__(self, step: float):
        self.now, self.step = 1_800_000_000.0, step

    def __call__(self) -> float:
        return self.now


class FakeHook:
    """probe() answers ``states[poll]`` (and moves the clock); run() runs the command in a real shell."""

    def __init__(self, states: list[str], clock: Clock, fail_runs: int = 0):
        self.states, self.clock, self.fail_runs = states, clock, fail_runs
        self.polls = 0
        self.commands: list[str] = []
        self.cancelled: list[str] = []
        self.connections_opened = 1

    async def probe(self, request, expected_tasks=None, finished=None):
        state = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        self.clock.now += self.clock.step
        return status(state, "0:0" if state == "COMPLETED" else ""), b""

    async def run(self, command: str):
        self.commands.append(command)
        if self.fail_runs:
            self.fail_runs -= 1
            raise OSError("connection reset")
        done = subprocess.run(["sh", "-c", command], capture_output=True, timeout=20)
        return done.returncode, done.stdout, done.stderr

    async def cancel(self, job_id):
        self.cancelled.append(job_id)

    async def close(self):
        pass

    def renewals(self, lock_dir: Path) -> int:
        return self.commands.count(lock.renew_command(str(lock_dir), OWNER, LEASE))


def trigger(lock_dir: Path, **kwargs) -> NeoXTrainingTrigger:
    defaults = dict(
        ssh_conn_id="neoxflow_cluster",
        job_id="42",
        start_day="2026-01-01",
        log_path=None,
        save_dir=None,
        train_iters=20,
        poll_interval=0,
        lock_dir=str(lock_dir),
        lock_owner=OWNER,
        lock_lease_s=LEASE,
    )
    return NeoXTrainingTrigger(**{**defaults, **kwargs})


async def events(trig: NeoXTrainingTrigger, hook: FakeHook) -> list[dict]:
    trig._hook = lambda: hook
    return [e.payload async for e in trig.run()]


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock(step=250)  # 12 polls = one lease
    monkeypatch.setattr(training_trigger.time, "time", c)
    return c


def acquire(lock_dir: Path, owner: str = OWNER, lease: int = LEASE) -> str:
    done = subprocess.run(
        ["sh", "-c", lock.acquire_command(str(lock_dir), owner, lease)], capture_output=True
    )
    return done.stdout.decode().strip()


# ---------------------------------------------------------------------------------------------- schedule
def test_renewal_is_due_at_the_start_then_every_third_of_the_lease():
    w = WatchState()
    assert lock_renewal_due(w, 1000.0, 3000)
    w.lock_renewed_at = 1000.0
    assert not lock_renewal_due(w, 1999.0, 3000)
    assert lock_renewal_due(w, 2000.0, 3000)
    w.lock_retry_at = 2030.0  # a failed try: not before the retry time
    assert not lock_renewal_due(w, 2010.0, 3000) and lock_renewal_due(w, 2030.0, 3000)
    w.lock_lost = "lost dag:other 5"
    assert not lock_renewal_due(w, 99999.0, 3000)  # once lost, never again (no fight over the lease)


def test_the_lease_travels_through_serialize_and_watch_state(tmp_path):
    trig = trigger(tmp_path / "ckpt.lock")
    path, kwargs = trig.serialize()
    assert (kwargs["lock_dir"], kwargs["lock_owner"], kwargs["lock_lease_s"]) == (
        str(tmp_path / "ckpt.lock"),
        OWNER,
        LEASE,
    )
    again = NeoXTrainingTrigger(**kwargs)
    assert (again.lock_dir, again.lock_owner, again.lock_lease_s) == (trig.lock_dir, OWNER, LEASE)
    w = WatchState(lock_renewed_at=5.0, lock_until=9, lock_retry_at=7.0, lock_lost="lost x 1")
    assert WatchState.from_dict(w.to_dict()) == w
    with pytest.raises(ValueError):
        trigger(tmp_path / "x.lock", lock_owner="a b")  # checked when built, not in the loop


# ------------------------------------------------------------------------------------------------ watch
async def test_a_long_watch_renews_the_lease_while_the_job_lives(tmp_path, clock, capsys):
    d = tmp_path / "ckpt.lock"
    assert acquire(d) == "acquired"
    _, first_until = record(d)
    # pending for 2 polls, running for 34 (about three leases of fake time), then done
    hook = FakeHook(["PENDING"] * 2 + ["RUNNING"] * 34 + ["COMPLETED"], clock)
    (event,) = await events(trigger(d), hook)
    assert event["event"] == "final" and hook.cancelled == []
    # at the first poll (while PENDING), then every LEASE/3 s of the 36 polls x 250 s = 9000 s: 9 times
    assert hook.renewals(d) == 9
    holder, until = record(d)
    assert holder == OWNER and until >= first_until  # the real expiry moved on (real clock, real shell)
    watch = WatchState.from_dict(event["watch"])
    assert watch.lock_until == until and watch.lock_lost is None
    assert capsys.readouterr().out.count("Renewed lock") == 9  # the trigger's log (structlog, stdout)
    # nobody else can take the folder meanwhile: the renewed lease has not run out
    assert acquire(d, "pythia_pretrain_continue:scheduled__x").startswith("held " + OWNER)


async def test_no_renewal_once_the_job_is_final(tmp_path, clock):
    d = tmp_path / "ckpt.lock"
    acquire(d)
    hook = FakeHook(["COMPLETED"], clock)
    (event,) = await events(trigger(d), hook)
    assert event["event"] == "final" and hook.renewals(d) == 0


async def test_a_watch_without_a_lease_never_runs_a_lock_command(tmp_path, clock):
    hook = FakeHook(["RUNNING"] * 20 + ["COMPLETED"], clock)
    (event,) = await events(trigger(tmp_path / "ckpt.lock", lock_owner=None), hook)
    assert event["event"] == "final" and hook.commands == []


async def test_a_lease_taken_by_another_run_is_reported_and_the_job_is_not_cancelled(tmp_path, clock):
    d = tmp_path / "ckpt.lock"
    acquire(d, lease=-10)  # our lease ran out (say the triggerer was down for longer than the lease)
    assert acquire(d, "pythia_pretrain:other_run", 600).startswith("taken-over " + OWNER)
    hook = FakeHook(["RUNNING"] * 5 + ["COMPLETED"], clock)
    (event,) = await events(trigger(d), hook)
    assert event["event"] == "lock_lost" and event["holder"] == "pythia_pretrain:other_run"
    assert "NOT cancelled" in event["message"] and event["status"]["state"] == "RUNNING"
    assert hook.cancelled == [] and not any("scancel" in c for c in hook.commands)
    assert record(d)[0] == "pythia_pretrain:other_run"  # the other run's lease is untouched
    # the next watch (the operator re-defers with the watch state) never renews again and goes on
    hook2 = FakeHook(["RUNNING"] * 30 + ["COMPLETED"], clock)
    (final,) = await events(trigger(d, watch=event["watch"]), hook2)
    assert final["event"] == "final" and hook2.commands == [] and hook2.cancelled == []


async def test_a_failed_renewal_command_is_retried_later_and_cancels_nothing(tmp_path, clock, capsys):
    d = tmp_path / "ckpt.lock"
    acquire(d)
    clock.step = 10  # polls 10 s apart: the retry waits LOCK_RETRY_S, not one poll
    hook = FakeHook(["RUNNING"] * 20 + ["COMPLETED"], clock, fail_runs=2)
    (event,) = await events(trigger(d), hook)
    assert event["event"] == "final" and hook.cancelled == []
    tries = hook.renewals(d)
    assert tries == 3  # fail at 10 s, fail at >= 10 + 60 s, succeed at >= 130 s; then not due again
    assert LOCK_RETRY_S == 60
    assert capsys.readouterr().out.count("trying again in 60s") == 2
    assert WatchState.from_dict(event["watch"]).lock_until == record(d)[1]


# --------------------------------------------------------------------------------------------- operator
class FakeTI:
    def __init__(self, xcoms: dict[str, object] | None = None):
        self.xcom: dict[str, object] = {}
        self.pulled = xcoms or {}

    def xcom_push(self, key, value):
        self.xcom[key] = value

    def xcom_pull(self, task_ids=None, key="return_value"):
        return self.pulled.get(task_ids)


class FakeSyncHook:
    def __init__(self):
        self.cancelled: list[str] = []

    def cancel(self, job_id):
        self.cancelled.append(job_id)


RECORD = {"job_id": "42", "job_name": "nxf-train", "start_day": "2026-01-01", "log_path": "/fsx/r/j.out"}


@pytest.fixture
def op():
    operator = NeoXTrainOperator(
        task_id="train",
        script="#!/bin/bash\ntrue\n",
        remote_dir="/fsx/runs",
        save_dir="/fsx/ckpt/run1",
        train_iters=20,
        listing_script="/fsx/code/ckpt_listing.py",
        lock_task_id="prepare.lock",
    )
    operator.__dict__["hook"] = FakeSyncHook()
    return operator


def context(owner: str | None = OWNER) -> dict:
    ti = FakeTI({"prepare.lock": owner})
    return {"ti": ti, "outlet_events": OutletEventAccessors(), "run_id": "r1"}


def test_the_operator_hands_the_lock_task_s_owner_to_the_watch(op, monkeypatch):
    ctx = context()
    monkeypatch.setattr(op, "_newest_complete", lambda: None)
    with pytest.raises(TaskDeferred) as deferred:
        op._watch(ctx, dict(RECORD))
    trig = deferred.value.trigger
    assert (trig.lock_dir, trig.lock_owner, trig.lock_lease_s) == (
        "/fsx/ckpt/run1.lock",  # the plan's rule: <checkpoint folder>.lock
        OWNER,
        lock.DEFAULT_LEASE_S,
    )
    # a skipped lock task (no owner): the watch runs without renewing
    with pytest.raises(TaskDeferred) as none:
        op._watch(context(None), dict(RECORD))
    assert none.value.trigger.lock_owner is None


def test_lock_lost_alerts_and_watches_on_without_cancelling(op, monkeypatch):
    sent: list[tuple] = []
    monkeypatch.setattr(
        "neoxflow.notifiers.factory.send_alert", lambda kind, ctx, **facts: sent.append((kind, facts))
    )
    ctx = context()
    watch = WatchState(lock_lost="lost pythia_pretrain:other 99").to_dict()
    event = {
        "event": "lock_lost",
        "job_id": "42",
        "holder": "pythia_pretrain:other",
        "until": 99,
        "message": "lock /fsx/ckpt/run1.lock is no longer ours",
        "status": status("RUNNING").to_dict(),
        "watch": watch,
        "log_offset": 7,
        "carry": {"record": RECORD, "checkpoints": []},
    }
    with pytest.raises(TaskDeferred) as deferred:
        op.execute_complete(ctx, event)
    assert op.hook.cancelled == []  # the job goes on
    assert sent and sent[0][0] == "lock_lost" and "no longer ours" in sent[0][1]["detail"]
    assert ctx["ti"].xcom["lock_lost"]["holder"] == "pythia_pretrain:other"
    trig = deferred.value.trigger
    assert trig.log_offset == 7 and WatchState.from_dict(trig.watch).lock_lost  # renewal stays off
