"""An array job's per-task output in the task log (issue 20 leftover): every task's file read by its own
byte offset inside the probe's one command, ONE bound per poll across all files (read and logged), the
offsets carried in the trigger's state so a re-deferral or a triggerer restart repeats and skips nothing.
The probe's task section runs for real in a local shell on real files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from neoxflow.slurm.commands import MARK, ProbeRequest, TaskLogsRequest, split_task_logs
from neoxflow.slurm.logstream import MAX_LINES, ArrayLogStream, array_log_pattern, job_log_files
from neoxflow.slurm.parse import JobStatus, TaskState
from neoxflow.slurm.states import Outcome
from neoxflow.slurm.validate import UnsafeValueError
from neoxflow.triggers.slurm_job import SlurmJobTrigger


def slurm_lines(text: str) -> list[str]:
    """The job's lines in captured log output, without structlog's padding and logger name."""
    return [
        line.split("[slurm 42] ", 1)[1].split(" [neoxflow.")[0].rstrip()
        for line in text.splitlines()
        if "[slurm 42] " in line
    ]


def test_the_pattern_of_an_arrays_task_files():
    assert array_log_pattern("/fsx/j/%x-%A_%a.out", "12", "fetch") == "/fsx/j/fetch-12_%a.out"
    assert array_log_pattern("/fsx/j/slurm-%A_%a.out", "12") == "/fsx/j/slurm-12_%a.out"
    assert array_log_pattern("/fsx/j/100%%-%A_%a.out", "12") == "/fsx/j/100%-12_%a.out"
    for unknown in ("/fsx/j/slurm-%j.out", "/fsx/j/%N-%a.out", "/fsx/j/%A.out", "/fsx/j/%a-%a.out"):
        assert array_log_pattern(unknown, "12") is None  # differs per task in ways not known here
    assert job_log_files("/fsx/j/slurm-%j.out", "12", "n", array=False) == {
        "log_path": "/fsx/j/slurm-12.out",
        "array_log": None,
    }
    assert (
        job_log_files("/fsx/j/slurm-%A_%a.out", "12", "n", array=True)["array_log"]
        == "/fsx/j/slurm-12_%a.out"
    )


def read(request: TaskLogsRequest) -> dict[int, bytes]:
    """The task section of a probe, run by a local shell as sshd would run it."""
    done = subprocess.run(request.command(), shell=True, capture_output=True, check=True)
    return split_task_logs(done.stdout, request.nonce)


def test_each_file_is_read_from_its_own_offset_within_one_budget(tmp_path):
    for task, text in {0: "a0\na1\n", 1: "b0\nb1\nb2\n", 3: "d0\n"}.items():
        (tmp_path / f"t-{task}.out").write_text(text)
    prefix = f"{tmp_path}/t-"
    everything = read(TaskLogsRequest(prefix, ".out", ((0, 0), (1, 3), (2, 0), (3, 0))))
    assert everything == {0: b"a0\na1\n", 1: b"b1\nb2\n", 3: b"d0\n"}  # task 2 has no file yet: skipped
    capped = read(TaskLogsRequest(prefix, ".out", ((1, 0), (0, 0), (3, 0)), max_bytes=8))
    assert capped == {1: b"b0\nb1\nb2"}  # 8 bytes in all: the files after the first wait for the next poll


def test_a_job_cannot_forge_a_section(tmp_path):
    forged = f"x\n{MARK} task 1\nnot task 1\n\n{MARK}0000 task 2\nnor task 2\n"
    (tmp_path / "t-0.out").write_text(forged)
    assert read(TaskLogsRequest(f"{tmp_path}/t-", ".out", ((0, 0),))) == {0: forged.encode()}


def test_the_request_refuses_unsafe_paths_and_rides_in_the_probe():
    with pytest.raises(UnsafeValueError):
        TaskLogsRequest("/fsx/$(reboot)/t-", ".out", ((0, 0),)).command()
    tasks = TaskLogsRequest("/fsx/j/t-", ".out", ((0, 0),), nonce="n1")
    command = ProbeRequest("12", "2026-01-01", task_logs=tasks).command()
    assert command.endswith(tasks.command()) and f"{MARK} log" in command


def test_one_bound_for_all_tasks_so_a_big_array_cannot_flood_the_log():
    stream = ArrayLogStream("/fsx/j/t-%a.out", range(1001))
    lines = stream.feed({task: b"".join(b"line %d\n" % i for i in range(5)) for task in range(1001)})
    assert len(lines) == 5005 and lines[0] == "[task 0] line 0" and lines[-1] == "[task 1000] line 4"
    shown = stream.to_log(lines)
    assert len(shown) == MAX_LINES and any("skipped, see /fsx/j/t-%a.out" in s for s in shown)
    assert shown[-1] == "[task 1000] line 4"  # where the array is now is always shown


def test_offsets_survive_a_restart_and_nothing_is_repeated_or_skipped(tmp_path):
    files = {task: tmp_path / f"t-{task}.out" for task in range(3)}
    written: dict[int, list[str]] = {task: [] for task in files}
    seen: list[str] = []
    stream = ArrayLogStream(f"{tmp_path}/t-%a.out", list(files))
    for poll in range(12):
        for task, path in files.items():  # the tasks write on, half lines included
            new = f"{task}:{poll}\n{task}:{poll}b-half" if poll % 2 else f"-end\n{task}:{poll}\n"
            with path.open("a") as handle:
                handle.write(new)
            written[task].append(new)
        reads = stream.reads()
        chunks = read(TaskLogsRequest(stream.prefix, stream.suffix, reads, max_bytes=40))
        seen += stream.feed(chunks)
        if poll == 5:  # the trigger is re-deferred (or the triggerer restarts): only the offsets travel
            stream = ArrayLogStream(f"{tmp_path}/t-%a.out", list(files), stream.offsets)
    for _ in range(20):  # the array has ended: read on until every file is drained
        chunks = read(TaskLogsRequest(stream.prefix, stream.suffix, stream.reads(), max_bytes=40))
        seen += stream.feed(chunks)
    seen += stream.flush()
    for task, path in files.items():
        expected = [f"[task {task}] {line}" for line in path.read_text().split("\n") if line]
        assert [line for line in seen if line.startswith(f"[task {task}] ")] == expected
    assert stream.offsets == {str(t): p.stat().st_size for t, p in files.items()}


# ------------------------------------------------------------------------------------------ the trigger
class ArrayHook:
    """The async hook's seam for an array: Slurm's answer per poll from ``world``, the task section of
    the probe run for real on local files."""

    connections_opened = 1

    def __init__(self, world):
        self.world, self.polls, self.requests = world, 0, []

    async def probe(self, request, expected_tasks=None, finished=None):
        self.polls += 1
        self.requests.append(request)
        section = b""
        if request.task_logs is not None:
            section = subprocess.run(request.task_logs.command(), shell=True, capture_output=True).stdout
        return self.world(self.polls), section

    async def close(self):
        pass


def array_status(*states: str) -> JobStatus:
    """The array's status, one state per task (``COMPLETED`` tasks exit 0); its outcome is the first
    unfinished task's, else the first task's."""
    tasks = tuple(
        TaskState(f"42_{i}", state, exit_code="0:0" if state == "COMPLETED" else "", source="squeue")
        for i, state in enumerate(states)
    )
    deciding = next((t for t in tasks if not t.outcome.final), tasks[0])
    return JobStatus("42", deciding.outcome, tasks)


def array_trigger(tmp_path: Path, **kwargs) -> SlurmJobTrigger:
    return SlurmJobTrigger(
        ssh_conn_id="c",
        job_id="42",
        start_day="2026-01-01",
        expected_tasks=["42_0", "42_1", "42_2"],
        array_log=f"{tmp_path}/fetch-42_%a.out",
        poll_interval=0,
        **kwargs,
    )


async def first_payload(trigger, hook) -> dict:
    trigger._hook = lambda: hook
    async for event in trigger.run():
        return event.payload
    raise AssertionError("no event")


async def test_the_array_watch_streams_every_tasks_output_and_carries_the_offsets(tmp_path, capsys):
    for task in range(3):
        (tmp_path / f"fetch-42_{task}.out").write_text(f"fetching shard {task}\nshard {task} done\n")
    hook = ArrayHook(
        lambda poll: (
            array_status("RUNNING", "RUNNING", "RUNNING")
            if poll == 1
            else array_status("COMPLETED", "COMPLETED", "COMPLETED")
        )
    )
    event = await first_payload(array_trigger(tmp_path), hook)
    assert event["event"] == "final" and event["status"]["outcome"] == Outcome.SUCCESS.value
    logged = slurm_lines(capsys.readouterr().out)
    assert sorted(logged) == sorted(
        f"[task {t}] {w}" for t in range(3) for w in (f"fetching shard {t}", f"shard {t} done")
    )
    assert event["task_offsets"] == {
        str(t): (tmp_path / f"fetch-42_{t}.out").stat().st_size for t in range(3)
    }
    assert event["tail"][-1].startswith("[task ")


async def test_a_finished_tasks_file_read_to_its_end_is_not_read_again(tmp_path):
    for task in range(3):
        (tmp_path / f"fetch-42_{task}.out").write_text(f"task {task}\n")
    states = {1: ("COMPLETED", "RUNNING", "RUNNING"), 2: ("COMPLETED", "RUNNING", "RUNNING")}
    hook = ArrayHook(lambda poll: array_status(*states.get(poll, ("COMPLETED",) * 3)))
    await first_payload(array_trigger(tmp_path), hook)
    read_tasks = [sorted(i for i, _ in r.task_logs.offsets) for r in hook.requests]
    # poll 2 reads task 0 to its end after it was seen final at poll 1; poll 3 asks only for 1 and 2
    assert read_tasks[:3] == [[0, 1, 2], [0, 1, 2], [1, 2]]


async def test_a_redeferred_array_watch_reads_on_where_the_last_one_stopped(tmp_path, capsys):
    (tmp_path / "fetch-42_0.out").write_text("old 0\nnew 0\n")
    (tmp_path / "fetch-42_1.out").write_text("old 1\n")
    trigger = array_trigger(
        tmp_path, task_offsets={"0": len("old 0\n"), "1": len("old 1\n")}, silent_alerted=True
    )
    _, kwargs = trigger.serialize()
    again = SlurmJobTrigger(**kwargs)  # what the triggerer builds from the trigger row
    event = await first_payload(
        again, ArrayHook(lambda poll: array_status("COMPLETED", "COMPLETED", "COMPLETED"))
    )
    assert slurm_lines(capsys.readouterr().out) == ["[task 0] new 0"]
    assert event["task_offsets"] == {"0": len("old 0\nnew 0\n"), "1": len("old 1\n")}
