"""The training watch without a cluster: NeoXTrainingTrigger / CheckpointTrigger with the SSH seam
replaced by a fake that serves a real local log file by offset and runs the real ckpt_listing.py on a
real local save folder; NeoXTrainOperator's verdict mapping on the events they yield; the export script
against an in-process moto S3, and its renderer.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.sdk import AssetAlias
from airflow.sdk.exceptions import TaskDeferred
from airflow.sdk.execution_time.context import OutletEventAccessors

from neoxflow.errors import SlurmJobFailed
from neoxflow.neox.checkpoints import Expectation
from neoxflow.neox.export import ExportSpec, export_tags, parse_export_result, render_export_job
from neoxflow.neox.logparse import TrainStep
from neoxflow.neox.watch_state import MAX_LOSS_POINTS, RECENT_STEPS, WatchState
from neoxflow.operators.training import NeoXTrainOperator, TrainingStalled, exit_code_of
from neoxflow.slurm.parse import JobStatus, TaskState
from neoxflow.slurm.states import Outcome
from neoxflow.slurm.validate import UnsafeValueError
from neoxflow.triggers.checkpoint import CheckpointTrigger
from neoxflow.triggers.event_state import restore_event
from neoxflow.triggers.training import NeoXTrainingTrigger

REPO = Path(__file__).resolve().parents[2]
LISTING = str(REPO / "include" / "cluster" / "ckpt_listing.py")
EXPORT = REPO / "include" / "cluster" / "export_checkpoints.py"
PY = sys.executable


def step_line(it: int, total: int = 20, loss: float = 5.0, label: str = "0: ") -> str:
    return (
        f"{label} samples/sec: 93.2 | iteration {it:8d}/{total:8d} | elapsed time per iteration (ms): 85.9 |"
        f" learning rate: 1.0E-03 | approx flops per GPU: 0.8TFLOPS | lm_loss: {loss:.6E} |"
        " number of skipped iterations:   0 | number of nan iterations:   0 |\n"
    )


def save_checkpoint(save: Path, it: int, complete: bool = True) -> Path:
    """The stand-in layout; ``complete=False`` is what a save killed before configs/ leaves."""
    tag = save / f"global_step{it}"
    tag.mkdir(parents=True, exist_ok=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(os.urandom(64) * (it % 7 + 1))
    if complete:
        (tag / "configs").mkdir(exist_ok=True)
        (tag / "configs" / "run.json").write_text('{"train_iters": 20}')
        (save / "latest").write_text(tag.name)
    return tag


def status(state: str, exit_code: str = "", job: str = "42") -> JobStatus:
    task = TaskState(job, state, exit_code=exit_code, nodes="node[1-2]", source="squeue")
    return JobStatus(job, task.outcome, (task,))


class FakeHook:
    """The async Slurm hook's seam: probe() serves ``log`` by offset, run() runs the command for real.

    ``world(poll_number)`` changes the files and returns the Slurm state for that poll.
    """

    def __init__(self, log: Path, world):
        self.log, self.world = log, world
        self.polls = 0
        self.commands: list[str] = []
        self.state_writes: list[str] = []
        self.offsets: list[int] = []
        self.connections_opened = 1
        self.cancelled: list[str] = []

    async def probe(self, request, expected_tasks=None, finished=None):
        self.polls += 1
        state = self.world(self.polls)
        self.offsets.append(request.log_offset)
        data = self.log.read_bytes() if self.log.exists() else b""
        return state, data[request.log_offset : request.log_offset + request.max_log_bytes]

    async def run(self, command: str):
        # the event's state file (triggers/event_state.py) is written beside the log: not a listing
        (self.state_writes if ".event.json" in command else self.commands).append(command)
        done = subprocess.run(command, shell=True, capture_output=True)
        return done.returncode, done.stdout, done.stderr

    async def cancel(self, job_id):
        self.cancelled.append(job_id)

    async def close(self):
        pass


def training_trigger(tmp_path: Path, **kwargs) -> NeoXTrainingTrigger:
    defaults = dict(
        ssh_conn_id="neoxflow_cluster",
        job_id="42",
        start_day="2026-01-01",
        log_path=str(tmp_path / "job.out"),
        save_dir=str(tmp_path / "save"),
        listing_script=LISTING,
        listing_python=PY,
        list_every=100,
        train_iters=20,
        poll_interval=0,
    )
    return NeoXTrainingTrigger(**{**defaults, **kwargs})


async def first_event(trigger, hook) -> dict:
    """The trigger's first event as the operator sees it: its state read back from the file."""
    trigger._hook = lambda: hook
    async for event in trigger.run():
        return restore_event(event.payload, lambda path: Path(path).read_bytes())
    raise AssertionError("no event")


# ------------------------------------------------------------------------------------------ watch state
def test_watch_state_stays_small_and_round_trips():
    watch = WatchState()
    for it in range(1, 5001):
        watch.absorb([TrainStep(iteration=it, total=5000, lm_loss=10.0 - it / 1000, elapsed_ms=10.0)])
    assert len(watch.recent) == RECENT_STEPS
    assert len(watch.loss_points) <= 2 * MAX_LOSS_POINTS
    assert watch.loss_points[0][0] == 1 and watch.loss_points[-1] == (5000, 5.0)
    again = WatchState.from_dict(json.loads(json.dumps(watch.to_dict())))
    assert again == watch
    assert len(json.dumps(watch.to_dict())) < 40_000


def test_a_resumed_attempt_replaces_the_curve_after_its_start():
    watch = WatchState()
    watch.absorb([TrainStep(iteration=i, total=30, lm_loss=float(i)) for i in (10, 20, 30)])
    watch.absorb([TrainStep(iteration=20, total=30, lm_loss=99.0)])
    assert watch.loss_points == [(10, 10.0), (20, 99.0)]


def test_training_trigger_serialize_round_trip(tmp_path):
    trigger = training_trigger(
        tmp_path, stall_window=60.0, expectation={"pipe_parallel": 1}, watch={"lines": 3}
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "neoxflow.triggers.training.NeoXTrainingTrigger"
    json.dumps(kwargs)  # what the triggerer table stores
    assert NeoXTrainingTrigger(**kwargs).serialize() == (classpath, kwargs)
    with pytest.raises(ValueError, match="listing_script"):
        training_trigger(tmp_path, listing_script=None)


def test_checkpoint_trigger_serialize_round_trip():
    trigger = CheckpointTrigger(
        ssh_conn_id="c", save_dir="/fsx/c/run", listing_script="/fsx/code/ckpt_listing.py", after_iteration=50
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "neoxflow.triggers.checkpoint.CheckpointTrigger"
    assert CheckpointTrigger(**kwargs).serialize() == (classpath, kwargs)


# ------------------------------------------------------------------------------------- training trigger
async def test_commit_line_yields_the_complete_checkpoint_and_ignores_a_partial(tmp_path):
    log, save = tmp_path / "job.out", tmp_path / "save"

    def world(poll):
        if poll == 1:
            log.write_text("0: training ...\n" + step_line(5) + step_line(10))
        if poll == 2:
            save_checkpoint(save, 10)
            save_checkpoint(save, 15, complete=False)  # a save in progress: never reported
            with log.open("a") as fh:
                fh.write("0: [Torch] Checkpoint global_step10 is ready now!\n" + step_line(15)[:40])
        return status("RUNNING")

    hook = FakeHook(log, world)
    event = await first_event(training_trigger(tmp_path), hook)
    assert event["event"] == "checkpoint"
    assert (event["iteration"], event["tag"]) == (10, "global_step10")
    assert event["path"] == f"{save}/global_step10"
    assert [c["iteration"] for c in event["checkpoints"]] == [10]
    assert hook.polls == 2 and len(hook.commands) == 1  # listed once, because of the commit line
    # the offset carried to the next deferral ends at the last complete line: the half line is re-read
    assert event["log_offset"] == log.read_bytes().rindex(b"\n") + 1
    watch = WatchState.from_dict(event["watch"])
    assert (watch.last_iteration, watch.last_checkpoint) == (10, 10)
    assert event["progress"].startswith("iteration 10/20 (50.0%)")


async def test_next_deferral_starts_where_the_last_left_off_and_skips_reported_checkpoints(tmp_path):
    log, save = tmp_path / "job.out", tmp_path / "save"
    log.write_text(step_line(10) + "0: [Torch] Checkpoint global_step10 is ready now!\n")
    save_checkpoint(save, 10)
    offset = log.stat().st_size
    watch = WatchState(last_checkpoint=10, last_iteration=10).to_dict()

    def world(poll):
        if poll == 1:
            save_checkpoint(save, 20)
            with log.open("a") as fh:
                fh.write(step_line(20) + "0: [Torch] Checkpoint global_step20 is ready now!\n")
        return status("RUNNING")

    hook = FakeHook(log, world)
    event = await first_event(training_trigger(tmp_path, log_offset=offset, watch=watch), hook)
    assert hook.offsets[0] == offset
    assert [c["tag"] for c in event["checkpoints"]] == ["global_step20"]
    assert "--min-iteration=11" in hook.commands[0]


async def test_periodic_listing_finds_a_checkpoint_without_a_commit_line(tmp_path):
    log, save = tmp_path / "job.out", tmp_path / "save"

    def world(poll):
        if poll == 1:
            save_checkpoint(save, 50)
        return status("RUNNING")

    event = await first_event(training_trigger(tmp_path, list_every=3), FakeHook(log, world))
    assert event["event"] == "checkpoint" and event["iteration"] == 50


async def test_stall_while_running_is_reported_with_its_window(tmp_path):
    log = tmp_path / "job.out"

    def world(poll):
        if poll == 1:
            log.write_text(step_line(5))
        return status("RUNNING")

    trigger = training_trigger(tmp_path, stall_window=0.3, poll_interval=0.05)
    event = await asyncio.wait_for(first_event(trigger, FakeHook(log, world)), 10)
    assert event["event"] == "stalled"
    assert "no new log line or checkpoint" in event["reason"] and "stall window" in event["reason"]


async def test_no_stall_while_pending(tmp_path):
    log = tmp_path / "job.out"

    def world(poll):
        return status("PENDING") if poll < 15 else status("COMPLETED", "0:0")

    trigger = training_trigger(tmp_path, stall_window=0.05, poll_interval=0.01)
    event = await asyncio.wait_for(first_event(trigger, FakeHook(log, world)), 10)
    assert event["event"] == "final"


async def test_final_event_lists_once_more_and_carries_the_slice_end(tmp_path):
    log, save = tmp_path / "job.out", tmp_path / "save"

    def world(poll):
        if poll == 1:
            log.write_text(step_line(10) + step_line(12))
            save_checkpoint(save, 12)  # written during the clean stop, no listing since
            with log.open("a") as fh:
                fh.write("NEOXFLOW slice_end reason=time_limit step_exit=0")  # no newline: flushed
            return status("COMPLETED", "0:0")
        raise AssertionError("polled after the final state")

    event = await first_event(training_trigger(tmp_path), FakeHook(log, world))
    assert event["event"] == "final" and event["status"]["outcome"] == "success"
    assert [c["iteration"] for c in event["checkpoints"]] == [12]
    watch = WatchState.from_dict(event["watch"])
    assert watch.slice_end.startswith("NEOXFLOW slice_end reason=time_limit")
    assert event["log_offset"] == log.stat().st_size


# ----------------------------------------------------------------------------------- checkpoint trigger
async def test_checkpoint_trigger_waits_past_partial_and_old_checkpoints(tmp_path):
    save = tmp_path / "save"
    save_checkpoint(save, 10)
    polls = []

    class Hook(FakeHook):
        async def run(self, command):
            polls.append(command)
            if len(polls) == 2:
                save_checkpoint(save, 20, complete=False)
            if len(polls) == 4:
                save_checkpoint(save, 20)
            return await super().run(command)

    trigger = CheckpointTrigger(
        ssh_conn_id="c",
        save_dir=str(save),
        listing_script=LISTING,
        listing_python=PY,
        after_iteration=10,
        poll_interval=0,
    )
    event = await first_event(trigger, Hook(tmp_path / "none", None))
    assert event == {
        "event": "checkpoint",
        "iteration": 20,
        "tag": "global_step20",
        "path": f"{save}/global_step20",
        "size_bytes": event["size_bytes"],
    }
    assert len(polls) == 4 and event["size_bytes"] > 0


async def test_checkpoint_trigger_stall(tmp_path):
    trigger = CheckpointTrigger(
        ssh_conn_id="c",
        save_dir=str(tmp_path / "save"),
        listing_script=LISTING,
        listing_python=PY,
        poll_interval=0.05,
        stall_window=0.2,
    )
    event = await asyncio.wait_for(first_event(trigger, FakeHook(tmp_path / "none", None)), 10)
    assert event["event"] == "stalled" and "no new complete checkpoint" in event["reason"]


# --------------------------------------------------------------------------------------------- operator
class FakeTI:
    def __init__(self):
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


class FakeSyncHook:
    def __init__(self):
        self.cancelled = []

    def cancel(self, job_id):
        self.cancelled.append(job_id)


def train_operator(**kwargs) -> NeoXTrainOperator:
    """The training operator of run ``run1`` (20 iterations) on a fake sync hook; kwargs add or override."""
    operator = NeoXTrainOperator(
        **{
            "task_id": "train",
            "script": "#!/bin/bash\ntrue\n",
            "remote_dir": "/fsx/runs",
            "save_dir": "/fsx/ckpt/run1",
            "train_iters": 20,
            "listing_script": "/fsx/code/ckpt_listing.py",
            "run_name": "run1",
            **kwargs,
        }
    )
    operator.__dict__["hook"] = FakeSyncHook()
    return operator


@pytest.fixture
def op():
    return train_operator()


def context():
    return {"ti": FakeTI(), "outlet_events": OutletEventAccessors(), "run_id": "r1"}


RECORD = {
    "job_id": "42",
    "job_name": "nxf-train",
    "start_day": "2026-01-01",
    "log_path": "/fsx/runs/j/slurm-42.out",
}


def final_event(state: str, exit_code: str, steps, checkpoints, slice_end=None, kind="final"):
    watch = WatchState(slice_end=slice_end)
    watch.absorb([TrainStep(iteration=i, total=20, lm_loss=5.0 - i / 10) for i in steps])
    ckpts = [
        {"iteration": i, "tag": f"global_step{i}", "path": f"/fsx/ckpt/run1/global_step{i}", "size_bytes": 9}
        for i in checkpoints
    ]
    return {
        "event": kind,
        "job_id": "42",
        "status": status(state, exit_code).to_dict(),
        "watch": watch.to_dict(),
        "checkpoints": ckpts,
        "log_offset": 100,
        "tail": ["last line"],
        "progress": "iteration ...",
    }


def alias_events(ctx):
    return ctx["outlet_events"][AssetAlias("neoxflow-checkpoints")].asset_alias_events


def test_checkpoint_event_records_and_re_defers_with_the_carried_state(op):
    ctx = context()
    event = {
        **final_event("RUNNING", "", [10], [10], kind="checkpoint"),
        "tag": "global_step10",
        "path": "/fsx/ckpt/run1/global_step10",
        "iteration": 10,
    }
    with pytest.raises(TaskDeferred) as deferred:
        op.execute_complete(ctx, event, record=RECORD, checkpoints=[])
    trigger = deferred.value.trigger
    assert isinstance(trigger, NeoXTrainingTrigger)
    assert trigger.log_offset == 100 and trigger.watch == event["watch"]
    assert trigger.log_path == RECORD["log_path"] and trigger.save_dir == "/fsx/ckpt/run1"
    assert [c["iteration"] for c in deferred.value.kwargs["checkpoints"]] == [10]
    assert [c["iteration"] for c in ctx["ti"].xcom["checkpoints"]] == [10]
    # the same event twice (a trigger run twice in HA) records the checkpoint once
    with pytest.raises(TaskDeferred) as again:
        op.execute_complete(ctx, event, record=RECORD, checkpoints=deferred.value.kwargs["checkpoints"])
    assert len(again.value.kwargs["checkpoints"]) == 1


def test_finished_despite_exit_code_1_after_the_final_checkpoint(op):
    ctx = context()
    event = final_event("FAILED", "1:0", [10, 20], [20])
    result = op.execute_complete(
        ctx, event, record=RECORD, checkpoints=[final_event("X", "", [], [10])["checkpoints"][0]]
    )
    assert result["more_to_do"] is False and result["last_checkpoint"] == 20
    assert "exit code 1 after the final checkpoint ignored" in result["reason"]
    events = alias_events(ctx)
    assert [e.extra["iteration"] for e in events] == [10, 20]
    assert events[1].dest_asset_key.name == "neoxflow/run1/global_step20"
    assert events[1].extra["path"] == "/fsx/ckpt/run1/global_step20"
    summary = ctx["ti"].xcom["summary"]
    assert summary["status"] == "finished" and summary["loss_curve"][-1][0] == 20
    assert ctx["ti"].xcom["slurm_job"]["verdict"]["exit_code"] == 1


def test_clean_time_limit_stop_is_a_successful_slice_with_more_to_do(op):
    ctx = context()
    event = final_event(
        "COMPLETED", "0:0", [10, 12], [10, 12], slice_end="NEOXFLOW slice_end reason=time_limit"
    )
    result = op.execute_complete(ctx, event, record=RECORD, checkpoints=[])
    assert result["more_to_do"] is True and result["last_checkpoint"] == 12 and result["iteration"] == 12
    assert "time limit" in result["reason"]
    assert [e.extra["iteration"] for e in alias_events(ctx)] == [10, 12]


def test_app_failure_raises_slurm_job_failed_with_the_training_reason(op):
    ctx = context()
    event = final_event("FAILED", "1:0", [10, 14], [10])
    with pytest.raises(SlurmJobFailed) as failed:
        op.execute_complete(ctx, event, record=RECORD, checkpoints=[])
    assert failed.value.outcome is Outcome.APP_FAILURE
    assert "stopped at iteration 14 of 20" in str(failed.value) and "global_step10" in str(failed.value)
    assert ctx["ti"].xcom["slurm_job"]["status"]["outcome"] == "app_failure"
    assert not alias_events(ctx)  # no asset events from a failed task


def test_node_failure_is_an_infra_failure_for_the_resume_policy(op):
    ctx = context()
    with pytest.raises(SlurmJobFailed) as failed:
        op.execute_complete(ctx, final_event("NODE_FAIL", "0:9", [10], [10]), record=RECORD, checkpoints=[])
    assert failed.value.outcome is Outcome.INFRA_FAILURE
    assert "resume from the latest checkpoint is safe" in str(failed.value)


def test_stall_cancels_the_job_and_fails_with_the_reason(op):
    ctx = context()
    event = {
        **final_event("RUNNING", "", [10], [], kind="stalled"),
        "reason": "training stalled: no new log line",
    }
    with pytest.raises(TrainingStalled, match="training stalled: no new log line"):
        op.execute_complete(ctx, event, record=RECORD, checkpoints=[])
    assert op.hook.cancelled == ["42"]
    assert ctx["ti"].xcom["slurm_job"]["event"] == "stalled"


def test_exit_code_of():
    assert exit_code_of(status("FAILED", "1:0").to_dict()) == 1
    assert exit_code_of(status("RUNNING").to_dict()) is None
    assert exit_code_of(None) is None


# ----------------------------------------------------------------------------------------------- export
def test_export_tags_skip_partial_and_older(tmp_path):
    from neoxflow.neox.checkpoints import scan_local

    save = tmp_path / "save"
    for it in (10, 20, 30):
        save_checkpoint(save, it)
    save_checkpoint(save, 40, complete=False)
    assert export_tags(scan_local(save), Expectation.standin()) == (
        "global_step10",
        "global_step20",
        "global_step30",
    )
    assert export_tags(scan_local(save), Expectation.standin(), after_iteration=10) == (
        "global_step20",
        "global_step30",
    )


def export_spec(tmp_path: Path, **kw) -> ExportSpec:
    base = dict(
        job_name="nxf-export-run1",
        log_dir=str(tmp_path / "logs"),
        scripts_dir=str(EXPORT.parent),
        save_dir=str(tmp_path / "save"),
        bucket="neoxflow-test",
        prefix="neoxflow/ckpt",
        run="run1",
        tags=("global_step10", "global_step20"),
        keep_last=1,
        python=PY,
    )
    return ExportSpec(**{**base, **kw})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("save_dir", "/fsx/a b"),
        ("save_dir", "relative/path"),
        ("bucket", "Bad_Bucket"),
        ("prefix", "a/../b"),
        ("run", "x;rm"),
        ("tags", ("global_step1", "latest")),
        ("tags", ()),
        ("keep_last", -1),
        ("python", "-c"),
        ("part_size", 1024),
        ("env", {"A": "x\ny"}),
        ("sbatch", {"wrap": "rm -rf /"}),
    ],
)
def test_export_render_refuses_unsafe_values(tmp_path, field, value):
    with pytest.raises(UnsafeValueError) as err:
        render_export_job(export_spec(tmp_path, **{field: value}))
    assert field.split("_")[0] in str(err.value) or "tags[" in str(err.value)


def test_export_render_quotes_every_value(tmp_path):
    script = render_export_job(
        export_spec(tmp_path, sbatch={"partition": "cpu"}, env={"AWS_ENDPOINT_URL": "http://h:1"})
    )
    assert "#SBATCH --partition=cpu" in script and "export AWS_ENDPOINT_URL=http://h:1" in script
    assert "TAGS=(--tag global_step10 --tag global_step20)" in script
    assert "@@" not in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


@pytest.fixture
def moto_s3(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import botocore.session

    client = botocore.session.get_session().create_client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{env['AWS_ENDPOINT_URL']}/moto-api/reset", method="POST"))
    client.create_bucket(Bucket="neoxflow-test")
    yield client
    server.stop()


def run_export_script(tmp_path: Path, spec: ExportSpec) -> tuple[int, dict | None, str]:
    """The rendered batch script, run by bash as sbatch would (no Slurm needed for the script itself)."""
    done = subprocess.run(
        ["bash", "-c", render_export_job(spec)], capture_output=True, text=True, timeout=120
    )
    try:
        result = parse_export_result(done.stdout)
    except ValueError:
        result = None
    return done.returncode, result, done.stderr


def keys(client, prefix="neoxflow/ckpt/run1/"):
    return sorted(
        o["Key"] for o in client.list_objects_v2(Bucket="neoxflow-test", Prefix=prefix).get("Contents", [])
    )


def test_export_verified_idempotent_and_pruning_keeps_what_has_no_copy(tmp_path, moto_s3):
    save = tmp_path / "save"
    for it in (10, 20, 30):
        save_checkpoint(save, it)
    save_checkpoint(save, 40, complete=False)
    rc, result, err = run_export_script(tmp_path, export_spec(tmp_path, keep_last=0))
    assert rc == 0, err
    assert result["exported"] == ["global_step10", "global_step20"] and result["bytes"] > 0
    manifest = json.loads(
        moto_s3.get_object(
            Bucket="neoxflow-test", Key="neoxflow/ckpt/run1/global_step10/neoxflow-export.json"
        )["Body"].read()
    )
    import hashlib

    local = (save / "global_step10" / "mp_rank_00_model_states.pt").read_bytes()
    assert manifest["files"]["mp_rank_00_model_states.pt"] == {
        "size": len(local),
        "sha256": hashlib.sha256(local).hexdigest(),
    }
    assert "neoxflow/ckpt/run1/global_step10/configs/run.json" in keys(moto_s3)

    # again: nothing uploaded, both skipped as verified
    rc, result, err = run_export_script(tmp_path, export_spec(tmp_path, keep_last=0))
    assert rc == 0 and result["skipped"] == ["global_step10", "global_step20"] and result["bytes"] == 0, err

    # a corrupted object (same size, other bytes) is no verified copy: it is uploaded again
    key = "neoxflow/ckpt/run1/global_step20/mp_rank_00_model_states.pt"
    size = moto_s3.head_object(Bucket="neoxflow-test", Key=key)["ContentLength"]
    moto_s3.put_object(Bucket="neoxflow-test", Key=key, Body=b"\0" * size)
    rc, result, err = run_export_script(tmp_path, export_spec(tmp_path, keep_last=0))
    assert rc == 0 and result["exported"] == ["global_step20"] and result["bytes"] == size, err

    # prune to 1: step10 and step20 have verified copies and go; step30 (newest complete, never exported
    # here) stays; the partial step40 has no copy and stays
    rc, result, err = run_export_script(tmp_path, export_spec(tmp_path, keep_last=1, tags=("global_step10",)))
    assert rc == 0, err
    assert result["pruned"] == ["global_step10", "global_step20"]
    assert sorted(p.name for p in save.iterdir() if p.is_dir()) == ["global_step30", "global_step40"]
    assert list(result["kept_unverified"]) == ["global_step40"]  # partial: no copy, never pruned


def test_pruning_never_deletes_without_a_verified_copy_nor_the_latest(tmp_path, moto_s3):
    save = tmp_path / "save"
    for it in (10, 20, 30):
        save_checkpoint(save, it)
    (save / "latest").write_text("global_step10")  # a resume pointed latest at an old tag
    rc, result, err = run_export_script(
        tmp_path, export_spec(tmp_path, keep_last=1, tags=("global_step10", "global_step20", "global_step30"))
    )
    assert rc == 0, err
    assert result["exported"] == ["global_step10", "global_step20", "global_step30"]
    assert result["pruned"] == ["global_step20"]  # 10 is named by latest, 30 is the newest
    assert sorted(p.name for p in save.iterdir() if p.is_dir()) == ["global_step10", "global_step30"]


def test_export_refuses_a_partial_tag(tmp_path, moto_s3):
    save = tmp_path / "save"
    save_checkpoint(save, 10, complete=False)
    rc, result, err = run_export_script(tmp_path, export_spec(tmp_path, tags=("global_step10",), keep_last=0))
    assert rc == 3 and "configs/ is missing" in result["refused"]["global_step10"][0], err
    assert keys(moto_s3) == []


def test_state_travels_in_the_event_when_resume_kwargs_are_dropped(op):
    """Regression: dag.test() (Airflow 3.3.2) resumes with ``{"event": ...}`` only, dropping defer()'s
    kwargs; the job record and the checkpoints so far must come back in the trigger's ``carry``."""
    trigger = op._training_trigger(RECORD, 7, None, [{"iteration": 5, "tag": "global_step5", "path": "/p5"}])
    event = final_event("FAILED", "1:0", [10, 20], [20])
    event["carry"] = trigger.serialize()[1]["carry"]
    ctx = context()
    result = op.execute_complete(ctx, event)  # no record=, no checkpoints=
    assert result["job_id"] == "42" and [c["iteration"] for c in result["checkpoints"]] == [5, 20]
    assert ctx["ti"].xcom["slurm_job"]["log_path"] == RECORD["log_path"]


def test_checkpoints_present_before_the_slice_are_a_baseline_not_new_events(op):
    ctx = context()
    record = {**RECORD, "baseline_checkpoint": 20}
    event = final_event("COMPLETED", "0:0", [], [])  # resumed at the end: nothing left, nothing new
    event["watch"]["resumed_from"] = 20
    result = op.execute_complete(ctx, event, record=record, checkpoints=[])
    assert result["more_to_do"] is False and result["baseline_checkpoint"] == 20
    assert not alias_events(ctx)


class StartOverHook:
    """The sync hook for a try that starts over: the earlier try's job is unknown to Slurm now (ended and
    aged out, no accounting), none is live; run() runs the real listing; submit() records the call."""

    def __init__(self):
        self.submitted: list[str] = []

    def probe(self, request, expected_tasks=None, finished=None):
        return JobStatus(request.job_id, Outcome.UNKNOWN, (), note="no source knows it"), b""

    def active_jobs_named(self, name):
        return []

    def run(self, command, check=True):
        done = subprocess.run(command, shell=True, capture_output=True)
        return done.returncode, done.stdout, done.stderr

    def upload(self, content, remote_path, mode=0o644):
        pass

    def submit(self, script_path, **kwargs):
        self.submitted.append(script_path)
        return "43"


class Store(dict):
    def set(self, key, value):
        self[key] = value


@pytest.mark.parametrize("saved, submits", [([10, 20], False), ([10], True)])
def test_a_try_that_starts_over_submits_no_job_once_train_iters_is_checkpointed(tmp_path, saved, submits):
    """Regression (e2e, scheduler restart): the task was rescheduled while job 301 trained; when it ran
    again the job had finished at train_iters and was unknown to Slurm, and a second job (302) of the
    finished run was submitted. Now a complete checkpoint at train_iters ends the slice without a job."""
    save = tmp_path / "save"
    for it in saved:
        save_checkpoint(save, it)
    operator = NeoXTrainOperator(
        task_id="train",
        script="#!/bin/bash\ntrue\n",
        remote_dir=str(tmp_path / "runs"),
        job_name="nxf-train-run1",
        save_dir=str(save),
        train_iters=20,
        listing_script=LISTING,
        listing_python=PY,
        run_name="run1",
    )
    hook = StartOverHook()
    operator.__dict__["hook"] = hook
    ctx = {**context(), "task_state_store": Store(slurm_job={**RECORD, "job_id": "41"})}
    ctx["ti"].dag_id, ctx["ti"].task_id = "pythia_pretrain", "train.train_slice"
    if submits:
        with pytest.raises(TaskDeferred):
            operator.execute(ctx)
        assert len(hook.submitted) == 1
        return
    result = operator.execute(ctx)
    assert hook.submitted == []
    assert result["more_to_do"] is False and result["last_checkpoint"] == 20 and result["job_id"] == "41"
    assert "no job submitted" in ctx["ti"].xcom["summary"]["reason"]
