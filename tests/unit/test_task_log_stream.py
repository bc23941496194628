"""The job's output in the task log (issue 20 item 2): streamed by offset and bounded per poll, a progress
line at every NeoX logging interval, the output of earlier deferrals kept in the worker's log, small trigger
events (no dict dumps) and no big return values logged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred

from neoxflow.neox.logparse import TrainStep
from neoxflow.neox.watch_state import WatchState
from neoxflow.slurm.logstream import MAX_LINES, LogStream, bounded_lines, copy_segment
from neoxflow.slurm.parse import JobStatus, TaskState
from neoxflow.slurm.states import Outcome
from neoxflow.triggers.event_state import (
    MAX_EVENT_TASKS,
    EventStateError,
    event_status,
    offload_event,
    restore_event,
)
from neoxflow.triggers.slurm_job import SlurmJobTrigger
from neoxflow.triggers.training import MAX_PROGRESS_LINES
from tests.unit.test_training_watch import (
    RECORD,
    FakeHook,
    context,
    final_event,
    first_event,
    status,
    step_line,
    train_operator,
    training_trigger,
)

REPO = Path(__file__).resolve().parents[2]


def slurm_lines(text: str, job: str = "42") -> list[str]:
    """The job's lines in captured log output (structlog appends the logger's name after two spaces)."""
    marker = f"[slurm {job}] "
    return [line.split(marker, 1)[1].split("  [neoxflow.")[0] for line in text.splitlines() if marker in line]


# ------------------------------------------------------------------------------------------ the bound
def test_a_poll_that_fits_is_logged_whole():
    lines = [f"line {i}" for i in range(50)]
    assert bounded_lines(lines, "/fsx/job.out") == lines


def test_a_chatty_poll_logs_its_head_a_marker_naming_the_file_and_its_newest_lines():
    lines = [f"line {i}" for i in range(5000)]
    shown = bounded_lines(lines, "/fsx/job.out")
    assert len(shown) == MAX_LINES
    markers = [s for s in shown if s.startswith("... ")]
    assert markers == [
        f"... {5000 - MAX_LINES + 1} lines ({sum(len(x) + 1 for x in lines[189:4990])} "
        "bytes) skipped, see /fsx/job.out"
    ]
    assert shown[0] == "line 0" and shown[-1] == "line 4999"  # where the job is now is always shown


def test_the_byte_bound_holds_for_long_lines_and_one_huge_line_is_cut():
    lines = ["x" * 1500] * 100  # 150 kB in 100 lines: under the line bound, over the byte bound
    shown = bounded_lines(lines, None, max_bytes=64 * 1024)
    assert sum(len(s) + 1 for s in shown) <= 64 * 1024 + 100
    assert any(s.startswith("... ") and "skipped" in s for s in shown)
    (cut,) = bounded_lines(["y" * 10_000])
    assert len(cut) < 2100 and cut.endswith("[8000 more characters]")


def test_the_stream_holds_an_unfinished_line_until_it_is_complete():
    stream = LogStream("/p")
    assert stream.feed(b"first\nsec") == ["first"]
    assert stream.feed(b"ond\nthi") == ["second"]
    assert stream.flush() == ["thi"] and list(stream.tail) == ["first", "second", "thi"]


async def test_the_data_job_watch_logs_a_chatty_job_bounded(tmp_path, capsys):
    log = tmp_path / "job.out"
    log.write_text("".join(f"tokenized doc {i}\n" for i in range(3000)))
    hook = FakeHook(log, lambda poll: status("COMPLETED", "0:0"))
    trigger = SlurmJobTrigger(
        ssh_conn_id="c", job_id="42", start_day="2026-01-01", log_path=str(log), poll_interval=0
    )
    event = await first_event(trigger, hook)
    logged = slurm_lines(capsys.readouterr().out)
    assert event["event"] == "final" and event["log_offset"] == log.stat().st_size
    assert len(logged) <= MAX_LINES and f"see {log}" in "\n".join(logged)
    assert logged[-1] == "tokenized doc 2999" and event["tail"][-1] == "tokenized doc 2999"


# ------------------------------------------------------------------------------- progress at each interval
async def test_a_progress_line_for_every_neox_logging_interval(tmp_path, capsys):
    log = tmp_path / "job.out"
    log.write_text("".join(step_line(i, total=20, loss=6.0 - i / 10) for i in range(1, 8)))
    hook = FakeHook(log, lambda poll: status("COMPLETED", "0:0"))
    await first_event(training_trigger(tmp_path, save_dir=None, listing_script=None), hook)
    progress = [line for line in capsys.readouterr().out.splitlines() if "[progress]" in line]
    # one poll brought seven intervals: seven progress lines (was one per poll, and only at checkpoints)
    assert [p.split("[progress] ")[1].split(" (")[0] for p in progress] == [
        f"iteration {i}/20" for i in range(1, 8)
    ]
    assert "lm_loss 5.3" in progress[-1]


async def test_progress_lines_are_bounded_per_poll_too(tmp_path, capsys):
    log = tmp_path / "job.out"
    log.write_text("".join(step_line(i, total=500) for i in range(1, 301)))
    hook = FakeHook(log, lambda poll: status("COMPLETED", "0:0"))
    await first_event(training_trigger(tmp_path, save_dir=None, listing_script=None, train_iters=500), hook)
    progress = [line for line in capsys.readouterr().out.splitlines() if "[progress]" in line]
    assert len(progress) == MAX_PROGRESS_LINES and "iteration 300/500" in progress[-1]


# ----------------------------------------------------------------------------------- small events
def long_run_watch() -> dict:
    watch = WatchState()
    watch.absorb(
        [TrainStep(iteration=i, total=143_000, lm_loss=9.0 - i / 1e5) for i in range(10, 20_000, 10)]
    )
    return watch.to_dict()


class FakeRunHook:
    def __init__(self, fail: bool = False):
        self.fail, self.commands = fail, []

    async def run(self, command):
        import subprocess

        self.commands.append(command)
        if self.fail:
            raise OSError("connection reset")
        done = subprocess.run(command, shell=True, capture_output=True)
        return done.returncode, done.stdout, done.stderr


class Log:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, msg, *args):
        self.lines.append(msg % args)

    warning = info


async def test_a_long_runs_event_is_small_and_its_state_comes_back_whole(tmp_path):
    watch = long_run_watch()
    payload = {
        "event": "checkpoint",
        "job_id": "42",
        "log_offset": 123_456,
        "progress": "iteration 19990/143000",
        "watch": watch,
        "carry": {"record": dict(RECORD), "checkpoints": [{"iteration": i} for i in range(19)]},
        "tail": ["x" * 200] * 40,
    }
    assert len(repr(payload)) > 20_000  # what Airflow logged as "Trigger fired event ... TriggerEvent<...>"
    small = await offload_event(FakeRunHook(), str(tmp_path / "job.out"), payload, Log())
    assert len(repr(small)) < 400 and not {"watch", "carry", "tail"} & set(small)
    assert small["state"]["path"] == str(tmp_path / "job.out.event.json")
    assert restore_event(small, lambda p: Path(p).read_bytes()) == json.loads(json.dumps(payload))


async def test_an_event_whose_file_cannot_be_written_carries_its_state(tmp_path):
    payload = {"event": "final", "job_id": "42", "log_offset": 1, "watch": {"lines": 3}}
    log = Log()
    assert await offload_event(FakeRunHook(fail=True), str(tmp_path / "job.out"), payload, log) == payload
    assert "carries its state" in log.lines[0]


async def test_a_state_file_of_another_event_is_refused(tmp_path):
    small = await offload_event(
        FakeRunHook(), str(tmp_path / "job.out"), {"event": "final", "log_offset": 5, "watch": {}}, Log()
    )
    small["state"]["log_offset"] = 9  # an older event's pointer: the file now holds another state
    with pytest.raises(EventStateError, match="log offset 5"):
        restore_event(small, lambda p: Path(p).read_bytes())


async def test_the_training_trigger_event_points_to_its_state(tmp_path):
    log = tmp_path / "job.out"
    log.write_text("".join(step_line(i) for i in range(1, 21)))
    hook = FakeHook(log, lambda poll: status("COMPLETED", "0:0"))
    trigger = training_trigger(tmp_path, save_dir=None, listing_script=None)
    trigger._hook = lambda: hook
    raw = [e.payload async for e in trigger.run()][0]
    assert "watch" not in raw and "tail" not in raw and raw["state"]["path"] == f"{log}.event.json"
    assert len(repr(raw)) < 1500
    assert restore_event(raw, lambda p: Path(p).read_bytes())["watch"]["last_iteration"] == 20


def test_an_arrays_status_lists_few_tasks_failed_first_with_counts():
    tasks = [TaskState(f"7_{i}", "COMPLETED", exit_code="0:0", source="sacct") for i in range(1024)]
    tasks[500] = TaskState("7_500", "FAILED", exit_code="1:0", nodes="node2", source="sacct")
    status_ = JobStatus("7", Outcome.APP_FAILURE, tuple(tasks))
    data = event_status(status_)
    assert len(data["tasks"]) == MAX_EVENT_TASKS and data["tasks"][0]["job_id"] == "7_500"
    assert data["tasks_total"] == 1024 and data["tasks_by_state"] == {"COMPLETED": 1023, "FAILED": 1}
    assert "1/1024 array tasks" in data["summary"]
    one = JobStatus("8", Outcome.SUCCESS, (TaskState("8", "COMPLETED", exit_code="0:0"),))
    assert event_status(one) == one.to_dict()


# ------------------------------------------------------------- earlier deferrals' output stays in the log
def test_a_segment_is_copied_into_the_worker_log_bounded():
    text = "".join(f"out {i}\n" for i in range(3000)).encode()
    seen = []

    def run(command, check=True):
        seen.append(command)
        return 0, text, b""

    log = Log()
    assert copy_segment(run, "/fsx/logs/j-42.out", 100, 100 + len(text), "42", log) == 3000
    assert "tail -c +101" in seen[0] and f"head -c {len(text)}" in seen[0]
    assert "Airflow replaces a trigger's log at each deferral" in log.lines[0]
    body = [line for line in log.lines[1:]]
    assert body[0] == "[slurm 42] out 0" and body[-1] == "[slurm 42] out 2999"
    assert any("skipped, see /fsx/logs/j-42.out" in line for line in body) and len(body) <= 1000


class SyncHook:
    def __init__(self, files: dict[str, bytes]):
        self.files, self.commands = files, []

    def run(self, command, check=True, timeout=None):
        self.commands.append(command)
        return 0, b"0: iteration 5/20 | lm_loss: 5.0\n0: Checkpoint global_step10 is ready now!\n", b""

    def read_file(self, path):
        return self.files[path]


def test_the_operator_copies_the_streamed_output_before_it_defers_again(tmp_path, capsys):
    op = train_operator()
    event = {
        **final_event("RUNNING", "", [10], [10], kind="checkpoint"),
        "tag": "global_step10",
        "path": "/fsx/ckpt/run1/global_step10",
        "iteration": 10,
        "log_start": 0,
    }
    state = {"log_offset": event["log_offset"], "watch": event.pop("watch"), "tail": event.pop("tail")}
    event["state"] = {"path": "/fsx/runs/j/slurm-42.out.event.json", "log_offset": event["log_offset"]}
    hook = SyncHook({event["state"]["path"]: json.dumps(state).encode()})
    op.__dict__["hook"] = hook
    with pytest.raises(TaskDeferred) as deferred:
        op.execute_complete(context(), event, record=RECORD, checkpoints=[])
    assert deferred.value.trigger.watch == state["watch"]  # the watch came back from the state file
    assert "tail -c +1 /fsx/runs/j/slurm-42.out | head -c 100" in hook.commands[0]
    assert "[slurm 42] 0: Checkpoint global_step10 is ready now!" in capsys.readouterr().out


# ------------------------------------------------------------------------------ no big return values
def test_tasks_returning_big_dicts_log_a_line_not_the_dict():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pythia_pretrain_dag", REPO / "dags" / "pythia_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for task_id in (
        "prepare.plan",
        "data.data_summary",
        "train.resume_point",
        "export.plan_export",
        "report",
    ):
        assert module.pythia_pretrain.get_task(task_id).show_return_value_in_logs is False, task_id


def test_the_plan_is_summarised_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("NEOXFLOW_TOKENIZER_SOURCE", "http://127.0.0.1:18080/20B_tokenizer.json")
    monkeypatch.setenv("NEOXFLOW_FSX", str(tmp_path / "fsx"))
    from neoxflow.pipeline.plan import plan_run
    from neoxflow.pipeline.tasks import plan_summary

    line = plan_summary(plan_run({"run_name": "r1", "profile": "local", "dry_run": True}))
    assert "\n" not in line and len(line) < 400
    assert line.startswith("Plan of r1: Pythia ") and "DRY RUN" in line and "XCom" in line


def test_a_state_too_big_for_one_command_goes_inline():
    import os

    from neoxflow.triggers.event_state import write_command

    with pytest.raises(ValueError, match="do not fit"):
        write_command("/fsx/j.out.event.json", os.urandom(200_000))  # random bytes do not compress
    assert len(write_command("/fsx/j.out.event.json", json.dumps(long_run_watch()).encode())) < 20_000
