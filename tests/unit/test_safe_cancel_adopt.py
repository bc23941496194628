"""Safe cancel and adopt (issue 17, item 7), without a cluster.

The owner-file commands run for real in a local shell (flock included) with a fake ``scancel`` on PATH;
the Slurm answers come from fakes. What is checked: only the owning try's ``on_kill`` cancels; a new try
never adopts a cancelled job (it waits for it to leave, then submits), but adopts a healthy one; a
controller outage is never a verdict; ``prepare_resume`` does not count COMPLETING as active; Asset
events owed from before a re-attach are still emitted.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from airflow.sdk import AssetAlias
from airflow.sdk.exceptions import AirflowSkipException, TaskDeferred
from airflow.sdk.execution_time.context import OutletEventAccessors

from neoxflow.operators.slurm import SlurmOperator
from neoxflow.operators.training import NeoXTrainOperator
from neoxflow.operators.training_checkpoints import ASSET_WATERMARK_KEY
from neoxflow.pipeline import connections, resume_task
from neoxflow.pipeline.plan import plan_run
from neoxflow.slurm import ownership
from neoxflow.slurm.commands import ProbeAnswer
from neoxflow.slurm.ownership import Adoption, OwnerRecord, adoption
from neoxflow.slurm.parse import JobStatus, TaskState
from neoxflow.slurm.states import Outcome
from neoxflow.slurm.status import status_from_probe
from neoxflow.triggers.slurm_job import SlurmJobTrigger
from neoxflow.triggers.training import NeoXTrainingTrigger
from tests.unit.test_training_watch import LISTING, PY, save_checkpoint


def status(state: str, job: str = "42") -> JobStatus:
    task = TaskState(job, state, source="squeue")
    return JobStatus(job, task.outcome, (task,))


# ------------------------------------------------------------------------------- the owner file, for real
@pytest.fixture
def shell(tmp_path, monkeypatch):
    """Run a command line like the login node would, with a ``scancel`` that only records its call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scancel.calls"
    (bin_dir / "scancel").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scancel").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run(command: str) -> tuple[int, str]:
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=30)
        return done.returncode, done.stdout

    run.cancelled = lambda: calls.read_text().split() if calls.exists() else []
    return run


def test_only_the_owning_try_cancels_and_a_newer_claim_takes_the_job_away(tmp_path, shell):
    path = ownership.owner_path(str(tmp_path / "jobs" / "nxf-train-r"), "127")
    try1 = ownership.owner_token("d", "manual__2026-01-01T00:00:00+00:00", "train.train_slice", -1, 1)
    try2 = ownership.owner_token("d", "manual__2026-01-01T00:00:00+00:00", "train.train_slice", -1, 2)
    assert try1 != try2 and " " not in try1

    assert ownership.parse_claim(*shell(ownership.claim_command(path, "127", try1, 100))).claimed
    assert ownership.parse_claim(*shell(ownership.claim_command(path, "127", try2, 101))).claimed
    # the stale trigger of try 1 (its id reused, or it acted late) must not cancel try 2's job
    stale = ownership.parse_cancel(*shell(ownership.cancel_if_owner_command(path, "127", try1, 102)))
    assert stale.state == "not-owner" and stale.owner == try2
    assert shell.cancelled() == []
    owner = ownership.parse_owner(Path(path).read_text())
    assert owner == OwnerRecord("127", try2) and not owner.cancel_requested

    mine = ownership.parse_cancel(*shell(ownership.cancel_if_owner_command(path, "127", try2, 103)))
    assert mine.state == "cancelled" and shell.cancelled() == ["127"]
    owner = ownership.parse_owner(Path(path).read_text())
    assert owner.cancel_requested and owner.cancel_by == try2 and owner.owner == try2

    # the cleared task's new try: its claim is refused, so it never adopts the cancelled job
    try3 = ownership.owner_token("d", "r", "train.train_slice", -1, 3)
    refused = ownership.parse_claim(*shell(ownership.claim_command(path, "127", try3, 104)))
    assert not refused.claimed and refused.cancel_by == try2


def test_a_job_without_owner_file_is_not_cancelled_by_a_token_bearing_trigger(tmp_path, shell):
    path = ownership.owner_path(str(tmp_path / "jobs" / "x"), "9")
    answer = ownership.parse_cancel(*shell(ownership.cancel_if_owner_command(path, "9", "d/r/t/-1/try1", 1)))
    assert answer.state == "no-owner" and shell.cancelled() == []


def test_owner_commands_quote_everything_and_refuse_unsafe_tokens():
    with pytest.raises(ValueError):
        ownership.claim_command("/fsx/jobs/x/owner-1", "1", "a b; rm -rf /", 0)
    with pytest.raises(ValueError):
        ownership.cancel_if_owner_command("/fsx/jobs/x/owner-1", "1;reboot", "d/r/t/-1/try1", 0)
    assert ownership.owner_token("d", "r $(x)", "t", None, None) == "d/r_x_/t/-1/try0"


def test_parse_claim_refuses_an_unclear_answer():
    with pytest.raises(RuntimeError):
        ownership.parse_claim(75, "")
    assert ownership.parse_cancel(1, "", "scancel: error").state == "error"


# ------------------------------------------------------------------------------------- adoption rules
@pytest.mark.parametrize(
    "job, owner, accounting, expected",
    [
        (status("RUNNING"), OwnerRecord("42", "try1"), {}, Adoption.ADOPT),
        (status("PENDING"), None, {}, Adoption.ADOPT),
        (status("COMPLETING"), None, {}, Adoption.ADOPT),  # ending by itself: follow it to its end
        (status("COMPLETING"), OwnerRecord("42", "try1", 5, "try1"), {}, Adoption.WAIT_UNTIL_GONE),
        (status("RUNNING"), OwnerRecord("42", "try1", 5, "try1"), {}, Adoption.WAIT_UNTIL_GONE),
        (status("COMPLETING"), None, {"42": "CANCELLED by 0"}, Adoption.WAIT_UNTIL_GONE),
        (status("CANCELLED"), None, {}, Adoption.SUBMIT),
        (status("NODE_FAIL"), None, {}, Adoption.SUBMIT),
        (status("COMPLETED"), None, {}, Adoption.ADOPT_SUCCESS),
        (JobStatus("42", Outcome.UNKNOWN), None, {}, Adoption.UNKNOWN),
    ],
)
def test_adoption_never_adopts_a_cancelled_job(job, owner, accounting, expected):
    assert adoption(job, owner, accounting) is expected


def test_controller_silence_is_told_apart_from_a_job_nobody_knows():
    down = status_from_probe("42", ProbeAnswer(None, None, None, b"", {"squeue": "rc 1", "scontrol": "rc 1"}))
    assert down.outcome is Outcome.UNKNOWN and down.controller_silent
    forgotten = status_from_probe("42", ProbeAnswer("", "", None, b"", {"sacct": "rc 1"}))
    assert forgotten.outcome is Outcome.UNKNOWN and not forgotten.controller_silent


# ---------------------------------------------------------------------------------------- the triggers
class SilentHook:
    """The controller never answers; the log is not read."""

    connections_opened = 1

    async def probe(self, request, expected_tasks=None, finished=None):
        answer = ProbeAnswer(None, None, None, b"", {"squeue": "rc 1", "scontrol": "rc 1", "sacct": "rc 1"})
        return status_from_probe(request.job_id, answer), b""

    async def close(self):
        pass


@pytest.mark.parametrize("cls", [SlurmJobTrigger, NeoXTrainingTrigger])
async def test_an_outage_longer_than_unknown_timeout_alerts_once_and_is_never_lost(cls, monkeypatch):
    trigger = cls(
        ssh_conn_id="c", job_id="42", start_day="2026-01-01", poll_interval=0.01, unknown_timeout=0.1
    )
    monkeypatch.setattr(trigger, "_hook", SilentHook)
    event = await asyncio.wait_for(trigger.run().__anext__(), 5)
    assert event.payload["event"] == "controller_silent", event.payload
    assert "NOT failed or cancelled" in event.payload["message"]
    # re-deferred with the alert sent: it keeps waiting, with no second alert and no "lost"
    _, kwargs = trigger.serialize()
    assert kwargs["silent_alerted"] is True
    again = cls(**kwargs)
    monkeypatch.setattr(again, "_hook", SilentHook)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(again.run().__anext__(), 0.6)


class KillHook:
    def __init__(self, answer: bytes):
        self.answer, self.commands, self.cancelled = answer, [], []

    async def run_with_retry(self, command, attempts=5, log=None):
        self.commands.append(command)
        return 0, self.answer, b""

    async def cancel(self, job_id):
        self.cancelled.append(job_id)

    async def close(self):
        pass


async def test_on_kill_of_a_try_that_no_longer_owns_the_job_cancels_nothing(monkeypatch):
    hook = KillHook(b"not-owner d/r/t/-1/try2\n")
    trigger = SlurmJobTrigger(
        ssh_conn_id="c",
        job_id="42",
        start_day="2026-01-01",
        owner_token="d/r/t/-1/try1",
        owner_path="/fsx/jobs/x/owner-42",
    )
    monkeypatch.setattr(trigger, "_hook", lambda: hook)
    await trigger.on_kill()
    assert hook.cancelled == [] and len(hook.commands) == 1
    assert "d/r/t/-1/try1" in hook.commands[0] and "scancel" in hook.commands[0]


async def test_on_kill_of_a_trigger_from_before_ownership_cancels_as_before(monkeypatch):
    hook = KillHook(b"")
    trigger = SlurmJobTrigger(ssh_conn_id="c", job_id="42", start_day="2026-01-01")
    monkeypatch.setattr(trigger, "_hook", lambda: hook)
    await trigger.on_kill()
    assert hook.cancelled == ["42"] and hook.commands == []


# ----------------------------------------------------------------------------- the operator's new try
class FakeTI:
    dag_id, task_id, map_index = "d", "train.train_slice", -1

    def __init__(self, try_number: int):
        self.try_number = try_number
        self.xcom: dict = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


class Store(dict):
    def set(self, key, value):
        self[key] = value


class ClusterHook:
    """Slurm as a new try sees it: one job with a state; owner-file commands run in a real shell."""

    def __init__(self, shell, state: str):
        self.shell, self.state, self.submitted = shell, state, []

    def probe(self, request, expected_tasks=None, finished=None):
        return status(self.state, request.job_id), b""

    def active_jobs_named(self, name):
        return ["42"] if not status(self.state).final else []

    def accounting_states(self, job_id, start_day):
        return {}

    def run(self, command, check=True):
        code, out = self.shell(command)
        return code, out.encode(), b""

    def upload(self, content, remote_path, mode=0o644):
        pass

    def submit(self, script_path, **kwargs):
        self.submitted.append(script_path)
        return "43"


def new_try(tmp_path, shell, state: str, try_number: int, store: Store):
    op = SlurmOperator(task_id="train", script="#!/bin/bash\ntrue\n", remote_dir=str(tmp_path / "jobs"))
    hook = ClusterHook(shell, state)
    op.__dict__["hook"] = hook
    ctx = {"ti": FakeTI(try_number), "run_id": "r", "task_state_store": store}
    return op, hook, ctx


RECORD = {"job_id": "42", "job_name": "nxf-x", "start_day": "2026-01-01", "log_path": None}


def test_a_cleared_try_waits_for_the_cancelled_job_to_leave_then_submits(tmp_path, shell):
    store = Store(slurm_job={**RECORD, "job_dir": str(tmp_path / "jobs" / "nxf-x")})
    op, hook, ctx = new_try(tmp_path, shell, "RUNNING", 1, store)
    assert op._claim(ctx, store["slurm_job"])
    path = ownership.owner_path(str(tmp_path / "jobs" / "nxf-x"), "42")
    # the cleared try's trigger on_kill: it owns the job, so it marks and cancels it
    shell(ownership.cancel_if_owner_command(path, "42", ownership.owner_token_of(ctx), 7))

    op, hook, ctx = new_try(tmp_path, shell, "COMPLETING", 2, store)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    assert deferred.value.method_name == "execute_after_gone" and hook.submitted == []
    waiting = deferred.value.trigger
    assert isinstance(waiting, SlurmJobTrigger) and waiting.job_id == "42" and not waiting.cancel_on_kill

    hook.state = "CANCELLED"  # it has left: the same try starts over and submits afresh
    with pytest.raises(TaskDeferred) as deferred:
        op.execute_after_gone(ctx, {"event": "final", "job_id": "42"})
    assert len(hook.submitted) == 1
    assert store["slurm_job"]["job_id"] == "43"
    assert store["slurm_job"]["owner"] == "d/r/train.train_slice/-1/try2"
    assert deferred.value.trigger.owner_token == "d/r/train.train_slice/-1/try2"


def test_a_new_try_adopts_a_healthy_job_and_takes_its_ownership(tmp_path, shell):
    store = Store(slurm_job={**RECORD, "job_dir": str(tmp_path / "jobs" / "nxf-x")})
    op, hook, ctx = new_try(tmp_path, shell, "RUNNING", 1, store)
    assert op._claim(ctx, store["slurm_job"])
    op, hook, ctx = new_try(tmp_path, shell, "RUNNING", 2, store)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    assert hook.submitted == [], "a second copy of a running job was submitted"
    assert deferred.value.trigger.job_id == "42"
    assert deferred.value.trigger.owner_token.endswith("/try2")
    owner = ownership.parse_owner(
        Path(ownership.owner_path(str(tmp_path / "jobs" / "nxf-x"), "42")).read_text()
    )
    assert owner.owner.endswith("/try2")


def test_a_job_found_by_name_with_a_cancel_mark_is_waited_for(tmp_path, shell):
    store = Store()
    op, hook, ctx = new_try(tmp_path, shell, "RUNNING", 1, store)
    name = op._name(
        {"ti": type("T", (), {"dag_id": "d", "task_id": "train", "map_index": -1})(), "run_id": "r"}
    )
    op.job_name = name
    path = ownership.owner_path(str(tmp_path / "jobs" / name), "42")
    shell(ownership.claim_command(path, "42", "d/r/train/-1/try1", 1))
    shell(ownership.cancel_if_owner_command(path, "42", "d/r/train/-1/try1", 2))
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    assert deferred.value.method_name == "execute_after_gone" and hook.submitted == []


def test_a_silent_controller_event_alerts_and_keeps_watching(tmp_path, shell, monkeypatch):
    sent = []
    monkeypatch.setattr(
        "neoxflow.notifiers.factory.send_alert", lambda kind, context, **facts: sent.append((kind, facts))
    )
    op, hook, ctx = new_try(tmp_path, shell, "RUNNING", 1, Store())
    record = {**RECORD, "owner": "d/r/t/-1/try1", "owner_path": "/fsx/jobs/x/owner-42"}
    with pytest.raises(TaskDeferred) as deferred:
        op.execute_complete(ctx, {"event": "controller_silent", "job_id": "42", "message": "down"}, record)
    assert [k for k, _ in sent] == ["controller_silent"]
    assert deferred.value.trigger.silent_alerted and deferred.value.trigger.owner_token == "d/r/t/-1/try1"


# ------------------------------------------------------------------------------------- prepare_resume
class ResumeHook:
    def __init__(self, snapshots, owner_text=""):
        self.snapshots, self.owner_text, self.uploads = list(snapshots), owner_text, []

    def jobs_named(self, name):
        rows = self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]
        return [TaskState(job, state, source="squeue") for job, state in rows]

    def run(self, command, check=True):
        if command.startswith("cat "):
            return 0, self.owner_text.encode(), b""
        return 0, b"", b""

    def upload(self, content, path, mode=0o644):
        self.uploads.append(path)


PLAN_FORM = {"profile": "local", "run_name": "r", "shards": "0-1", "train_iters": 600}
PLAN: dict = {}  # the run plan the prepare_resume tests read, made by plan_run (resume_env)


@pytest.fixture
def resume_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NEOXFLOW_TOKENIZER_SOURCE", "http://127.0.0.1:18080/20B_tokenizer.json")
    monkeypatch.setenv("NEOXFLOW_FSX", str(tmp_path / "fsx"))
    PLAN.clear()
    PLAN.update(plan_run(PLAN_FORM))

    def use(hook):
        monkeypatch.setattr(connections, "slurm_hook", lambda: hook)
        monkeypatch.setattr(resume_task, "checkpoint_listing", lambda run: {"tags": {}, "latest": None})
        monkeypatch.setattr(
            "neoxflow.neox.checkpoints.resume_plan",
            lambda listing, expect: type("P", (), {"action": "keep", "iteration": 76, "reason": "r"})(),
        )

    return use


def test_prepare_resume_waits_for_a_completing_job_then_decides(resume_env):
    hook = ResumeHook([[("127", "COMPLETING")], [("127", "COMPLETING")], []])
    resume_env(hook)
    result = resume_task.prepare_resume(PLAN, leave_timeout_s=10, poll_s=0)
    assert result["resume_from"] == 76 and hook.snapshots == [[]]


def test_prepare_resume_skips_for_a_running_job(resume_env):
    resume_env(ResumeHook([[("127", "RUNNING")]]))
    with pytest.raises(AirflowSkipException, match="127"):
        resume_task.prepare_resume(PLAN, leave_timeout_s=10, poll_s=0)


def test_prepare_resume_treats_a_running_job_with_a_cancel_mark_as_leaving(resume_env):
    mark = "job_id=127\nowner=a\ncancel_requested_at=5\ncancel_by=a\n"
    resume_env(ResumeHook([[("127", "RUNNING")], []], owner_text=mark))
    assert resume_task.prepare_resume(PLAN, leave_timeout_s=10, poll_s=0)["resume_from"] == 76


def test_prepare_resume_fails_retryably_when_a_job_never_leaves(resume_env):
    resume_env(ResumeHook([[("127", "COMPLETING")]]))
    with pytest.raises(RuntimeError, match="still COMPLETING"):
        resume_task.prepare_resume(PLAN, leave_timeout_s=0, poll_s=0)


# ----------------------------------------------------------------------------------- Asset watermark
class ListingHook:
    """Runs the real ckpt_listing.py on a local save folder."""

    def run(self, command, check=True):
        done = subprocess.run(command, shell=True, capture_output=True, timeout=60)
        return done.returncode, done.stdout, done.stderr


def train_op(save: Path, iterations):
    for it in iterations:
        save_checkpoint(save, it)
    op = NeoXTrainOperator(
        task_id="train",
        script="#!/bin/bash\ntrue\n",
        remote_dir="/fsx/runs",
        save_dir=str(save),
        train_iters=30,
        listing_script=LISTING,
        listing_python=PY,
        run_name="r",
    )
    op.__dict__["hook"] = ListingHook()
    return op


def test_a_re_attaching_try_starts_from_the_watermark_not_from_the_newest_checkpoint(tmp_path):
    store = Store()
    ctx = {"ti": FakeTI(1), "run_id": "r", "task_state_store": store, "outlet_events": OutletEventAccessors()}
    op = train_op(tmp_path / "save", [10])
    assert op._asset_floor(ctx) == 10 and store[ASSET_WATERMARK_KEY] == {"iteration": 10}
    # try 1 watched 20 and 30 complete, then was cleared; try 2 re-attaches: 20 and 30 are still owed
    op = train_op(tmp_path / "save", [20, 30])
    assert op._asset_floor(ctx) == 10
    op._emit_assets(ctx, "r", [{"iteration": 20, "tag": "global_step20", "path": "/p/20"}], "42")
    assert store[ASSET_WATERMARK_KEY] == {"iteration": 20}
    events = ctx["outlet_events"][AssetAlias("neoxflow-checkpoints")].asset_alias_events
    assert [e.extra["iteration"] for e in events] == [20]


def test_a_try_that_finds_training_finished_emits_the_events_still_owed(tmp_path):
    store = Store({ASSET_WATERMARK_KEY: {"iteration": 10}, "slurm_job": {"job_id": "42", "job_name": "n"}})
    ctx = {"ti": FakeTI(2), "run_id": "r", "task_state_store": store, "outlet_events": OutletEventAccessors()}
    op = train_op(tmp_path / "save", [10, 20, 30])
    result = op._done_without_a_job(ctx)
    assert result["more_to_do"] is False
    events = ctx["outlet_events"][AssetAlias("neoxflow-checkpoints")].asset_alias_events
    assert sorted(e.extra["iteration"] for e in events) == [20, 30]
    assert store[ASSET_WATERMARK_KEY] == {"iteration": 30}
