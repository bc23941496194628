"""No idle between slices, no lost work at a slice end (issue 17 items 4 and 5, the wiring), no cluster.

The real training operator of pythia_pretrain (`PretrainTrainOperator`) runs on a real plan of the local
profile, with a fake Slurm: owner-file commands, the checkpoint listing and uploads run for real under a
temporary FSx root; ``sbatch``, the job states and the job logs are fakes. What is checked: each slice's
config carries the planned ``exit_interval``; on a slice's final event the next one is submitted at once
(never while another job of the run is live) and the task defers again; the slice history is kept; the
task returns only at train_iters; a slice that cannot fit is not submitted; a new try in the middle of a
run re-attaches to the live slice instead of submitting a second one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.sdk import AssetAlias
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from airflow.sdk.execution_time.context import OutletEventAccessors

from neoxflow.neox import slices
from neoxflow.neox.logparse import TrainStep
from neoxflow.neox.verdict import training_verdict
from neoxflow.neox.watch_state import WatchState
from neoxflow.operators.pipeline import PretrainTrainOperator
from neoxflow.operators.training_slices import SLICES_KEY
from neoxflow.pipeline.plan import plan_run
from neoxflow.slurm.parse import JobStatus, TaskState
from neoxflow.triggers.training import NeoXTrainingTrigger
from tests.unit.test_training_watch import LISTING, save_checkpoint

TRAIN_ITERS = 60
FORM = {
    "profile": "local",
    "run_name": "r",
    "shards": "0-1",
    "train_iters": TRAIN_ITERS,
    "checkpoint_interval": 10,
}
PACE_S = 40.0  # seconds per iteration: with the local profile's 30 min slices, 20 iterations per slice


@pytest.fixture(autouse=True)
def _local_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NEOXFLOW_TOKENIZER_SOURCE", "http://127.0.0.1:18080/20B_tokenizer.json")
    monkeypatch.setenv("NEOXFLOW_FSX", str(tmp_path / "fsx"))
    monkeypatch.setenv("NEOXFLOW_CLUSTER_PYTHON", sys.executable)
    tokenizer = tmp_path / "fsx" / "tokenizers" / "20B_tokenizer.json"  # the vocab file is checked
    tokenizer.parent.mkdir(parents=True)
    tokenizer.write_text("{}")
    # the local profile stretches times by half (its CPU stand-in shares two cores); these paces are exact
    monkeypatch.setattr(slices, "profile_slack", lambda raw: 0.0)


class TI:
    dag_id, task_id, map_index = "pythia_pretrain", "train.train_slice", -1

    def __init__(self, plan, try_number=1):
        self.plan, self.try_number, self.xcom = plan, try_number, {}

    def xcom_push(self, key, value):
        self.xcom[key] = value

    def xcom_pull(self, task_ids=None, key="return_value"):
        return self.plan if task_ids == "prepare.plan" else None


class Store(dict):
    def set(self, key, value):
        self[key] = json.loads(json.dumps(value))  # what a real store keeps: JSON


class Cluster:
    """Slurm as the operator sees it: sbatch records the job (and checks none of the run is live),
    states are set by the test, the log is what the test wrote for the job; shell commands run for real
    (the listing with the repository's ckpt_listing.py), except sacct, which has no accounting here."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.states: dict[str, str] = {}
        self.logs: dict[str, str] = {}
        self.submitted: list[str] = []
        self.uploads: dict[str, bytes] = {}

    def live(self) -> list[str]:
        return [j for j, s in self.states.items() if s in ("PENDING", "RUNNING", "COMPLETING")]

    def probe(self, request, expected_tasks=None, finished=None):
        task = TaskState(request.job_id, self.states.get(request.job_id, "COMPLETED"), source="squeue")
        return JobStatus(request.job_id, task.outcome, (task,)), b""

    def active_jobs_named(self, name):
        return self.live()

    def accounting_states(self, job_id, start_day):
        return {}

    def run(self, command, check=True):
        if command.startswith("sacct"):
            return 1, b"", b"no accounting"
        if "ckpt_listing.py" in command:
            command = command.replace(command.split()[1], LISTING, 1)
        done = subprocess.run(["bash", "-c", command], capture_output=True, timeout=60)
        return done.returncode, done.stdout, done.stderr

    def upload(self, content, remote_path, mode=0o644):
        Path(remote_path).parent.mkdir(parents=True, exist_ok=True)
        Path(remote_path).write_bytes(content)
        self.uploads[remote_path] = content

    def read_file(self, remote_path):
        job_id = Path(remote_path).name.rsplit("-", 1)[-1].removesuffix(".out")
        return self.logs[job_id].encode()

    def submit(self, script_path, **kwargs):
        assert not self.live(), f"a second job of the run was submitted while {self.live()} lives"
        job_id = str(100 + len(self.submitted))
        self.submitted.append(script_path)
        self.states[job_id] = "RUNNING"
        return job_id


def new_operator(cluster: Cluster) -> PretrainTrainOperator:
    op = PretrainTrainOperator(task_id="train_slice", poll_interval=1)
    op.__dict__["hook"] = cluster
    return op


def slice_log(resume: int, stop: int, exit_line: bool) -> str:
    lines = [f"0: neoxflow: job started, resuming at {resume}"]
    for it in range(resume + 10, stop + 1, 10):
        lines.append(
            f"0:  samples/sec: 1.0 | iteration {it:8d}/{TRAIN_ITERS:8d} | elapsed time per iteration (ms): "
            f"{PACE_S * 1000:.1f} | learning rate: 1.0E-03 | lm_loss: 5.0E+00 |"
        )
    if exit_line:
        lines.append(f"0: rank: 0 | time: 2026-01-01 00:00:13 | exiting the program at iteration {stop}")
    return "\n".join(lines) + "\n"


def final_event(trigger: NeoXTrainingTrigger, resume: int, stop: int, save: Path) -> dict:
    """The trigger's final event for a job that trained resume..stop and saved at each 10th iteration."""
    watch = WatchState(last_checkpoint=resume or None)
    watch.absorb(
        TrainStep(iteration=i, total=TRAIN_ITERS, lm_loss=5.0) for i in range(resume + 10, stop + 1, 10)
    )
    new = [
        {"iteration": i, "tag": f"global_step{i}", "path": str(save / f"global_step{i}"), "size_bytes": 9}
        for i in range(resume + 10, stop + 1, 10)
    ]
    for c in new:
        save_checkpoint(save, c["iteration"])
    task = TaskState(trigger.job_id, "COMPLETED", exit_code="0:0", source="sacct")
    return {
        "event": "final",
        "job_id": trigger.job_id,
        "status": JobStatus(trigger.job_id, task.outcome, (task,)).to_dict(),
        "watch": watch.to_dict(),
        "checkpoints": new,
        "log_offset": 1000,
        "tail": [],
        "carry": trigger.serialize()[1]["carry"],
    }


def config_of(cluster: Cluster, trigger: NeoXTrainingTrigger) -> dict:
    path = trigger.serialize()[1]["carry"]["record"]["slice"]["config_path"]
    return json.loads(cluster.uploads[path])


def test_three_slices_each_stop_at_their_planned_save_and_the_next_is_submitted_at_once(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(
        slices, "profile_times", lambda raw: slices.SliceTimes(PACE_S, None, None, "profile slices")
    )
    plan = plan_run(FORM)
    cluster = Cluster(tmp_path)
    store = Store()
    ctx = {"ti": TI(plan), "run_id": "r1", "task_state_store": store, "outlet_events": OutletEventAccessors()}
    op = new_operator(cluster)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    save = Path(op.save_dir)
    stops = []
    resume = 0
    for index in range(3):
        trigger = deferred.value.trigger
        record = trigger.serialize()[1]["carry"]["record"]
        assert cluster.live() == [trigger.job_id] and len(cluster.submitted) == index + 1
        stop = record["slice"]["stop_iteration"]
        stops.append(stop)
        cfg = config_of(cluster, trigger)
        assert cfg["train_iters"] == TRAIN_ITERS  # never changed per slice
        assert cfg["exit_interval"] == (None if stop == TRAIN_ITERS else stop)
        # the job trains to its stop, saves there and exits (NeoX's exit_interval), then the final event
        cluster.logs[trigger.job_id] = slice_log(resume, stop, exit_line=stop != TRAIN_ITERS)
        cluster.states[trigger.job_id] = "COMPLETED"
        event = final_event(trigger, resume, stop, save)
        op = new_operator(cluster)  # a deferral does not keep the operator object
        if stop == TRAIN_ITERS:
            result = op.execute_complete(ctx, event)
            break
        with pytest.raises(TaskDeferred) as deferred:
            op.execute_complete(ctx, event)
        assert ctx["ti"].xcom["summary"]["status"] == "slice_end"
        resume = stop
    else:
        pytest.fail("the run did not reach train_iters in three slices")

    assert stops == [20, 40, 60] and len(cluster.submitted) == 3
    assert result["more_to_do"] is False and result["last_checkpoint"] == TRAIN_ITERS
    history = store[SLICES_KEY]
    assert ctx["ti"].xcom[SLICES_KEY] == history
    assert [(e["index"], e["planned_stop"], e["reached"], e["end"]) for e in history] == [
        (1, 20, 20, "planned_stop"),
        (2, 40, 40, "planned_stop"),
        (3, 60, 60, "finished"),
    ]
    assert [e["resume_iteration"] for e in history] == [0, 20, 40]
    assert history[1]["times"]["seconds_per_iteration"] == pytest.approx(PACE_S)
    assert all(e["submitted_at"] and e["ended_at"] for e in history)
    # one Asset event per checkpoint of the whole run, at its end
    events = ctx["outlet_events"][AssetAlias("neoxflow-checkpoints")].asset_alias_events
    assert [e.extra["iteration"] for e in events] == [10, 20, 30, 40, 50, 60]
    assert [c["iteration"] for c in result["checkpoints"]] == [10, 20, 30, 40, 50, 60]


def test_a_slice_that_cannot_fit_fails_without_a_submit(tmp_path, monkeypatch):
    monkeypatch.setattr(
        slices, "profile_times", lambda raw: slices.SliceTimes(3600.0, None, None, "profile slices")
    )
    cluster = Cluster(tmp_path)
    ctx = {"ti": TI(plan_run(FORM)), "run_id": "r1", "task_state_store": Store()}
    with pytest.raises(AirflowFailException, match="not submitted: one iteration and its save need"):
        new_operator(cluster).execute(ctx)
    assert cluster.submitted == []


def test_a_new_try_in_the_middle_of_a_run_re_attaches_to_the_live_slice(tmp_path, monkeypatch):
    monkeypatch.setattr(
        slices, "profile_times", lambda raw: slices.SliceTimes(PACE_S, None, None, "profile slices")
    )
    plan = plan_run(FORM)
    cluster = Cluster(tmp_path)
    store = Store()
    ctx = {"ti": TI(plan), "run_id": "r1", "task_state_store": store, "outlet_events": OutletEventAccessors()}
    op = new_operator(cluster)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    trigger = deferred.value.trigger
    cluster.logs[trigger.job_id] = slice_log(0, 20, exit_line=True)
    cluster.states[trigger.job_id] = "COMPLETED"
    with pytest.raises(TaskDeferred) as deferred:
        new_operator(cluster).execute_complete(ctx, final_event(trigger, 0, 20, Path(op.save_dir)))
    second = deferred.value.trigger.job_id
    assert len(cluster.submitted) == 2 and cluster.live() == [second]

    # the task is cleared (or its worker lost) while slice 2 runs: the new try follows slice 2
    ctx2 = {**ctx, "ti": TI(plan, try_number=2)}
    with pytest.raises(TaskDeferred) as again:
        new_operator(cluster).execute(ctx2)
    assert again.value.trigger.job_id == second and len(cluster.submitted) == 2
    assert again.value.trigger.owner_token.endswith("/try2")

    # slice 2 ended while nobody watched: a new try carries the run on instead of ending it there
    cluster.states[second] = "COMPLETED"
    cluster.logs[second] = slice_log(20, 40, exit_line=True)
    for it in (30, 40):
        save_checkpoint(Path(op.save_dir), it)
    ctx3 = {**ctx, "ti": TI(plan, try_number=3)}
    with pytest.raises(TaskDeferred) as third:
        new_operator(cluster).execute(ctx3)
    assert len(cluster.submitted) == 3 and cluster.live() == [third.value.trigger.job_id]
    assert third.value.trigger.serialize()[1]["carry"]["record"]["slice"]["resume_iteration"] == 40
    assert [e["end"] for e in store[SLICES_KEY]] == ["planned_stop", "ended_unwatched", None]
    unwatched = store[SLICES_KEY][1]
    assert unwatched["reached"] == 40 and unwatched["times"]["source"] == f"job {second}"


def test_a_planned_stop_is_a_clean_slice_end_only_with_its_checkpoint_and_exit_line():
    steps = [TrainStep(iteration=i, total=60) for i in (10, 20)]
    clean = training_verdict(steps, 60, 0, [10, 20], planned_stop=20, exited_at=20)
    assert not clean.finished and clean.planned_stop and clean.status == "slice_end"
    assert "stopped as planned after the save of iteration 20" in clean.reason
    assert training_verdict(steps, 60, 0, [10], planned_stop=20, exited_at=20).status == "failed"
    assert training_verdict(steps, 60, 0, [10, 20], planned_stop=20, exited_at=None).status == "failed"
    assert training_verdict(steps, 60, 1, [10, 20], planned_stop=20, exited_at=20).status == "failed"
