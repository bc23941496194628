"""Parsers for what sbatch, squeue, scontrol and sacct print. Pure functions, no I/O.

Each parser takes the text one command printed and returns typed rows; the layered reader
(:func:`merge_sources`) then decides, per job or array task, which source to believe: the live queue
first, then the controller's memory (until MinJobAge), then accounting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from neoxflow.slurm.states import Outcome, classify, combine

_SBATCH_ID = re.compile(r"^\s*([0-9]+)(?:;[A-Za-z0-9_.-]+)?\s*$")


class SlurmParseError(ValueError):
    """Slurm printed something we cannot trust as an answer."""


def parse_sbatch_parsable(stdout: str) -> str:
    """``sbatch --parsable`` prints ``jobid`` or ``jobid;cluster`` (possibly after warnings)."""
    for line in reversed(stdout.strip().splitlines()):
        match = _SBATCH_ID.match(line)
        if match:
            return match.group(1)
    raise SlurmParseError(f"sbatch printed no job id: {stdout.strip()[:300]!r}")


@dataclass(frozen=True)
class TaskState:
    """The state of one job (or one array task) as one source saw it."""

    job_id: str  # "123" or "123_4" for an array task
    state: str  # normalised later by classify()
    reason: str = ""
    exit_code: str = ""  # "3:0" = exit code 3, signal 0
    nodes: str = ""
    restarts: int = 0
    stdout_path: str = ""
    source: str = ""

    @property
    def outcome(self) -> Outcome:
        return classify(self.state, self.reason)

    @property
    def exit_status(self) -> int | None:
        head = self.exit_code.split(":", 1)[0]
        return int(head) if head.isdigit() else None


def _expand_array_ids(job_id: str) -> list[str]:
    """``123_[0-2,5%2]`` -> 123_0, 123_1, 123_2, 123_5; other ids unchanged."""
    match = re.fullmatch(r"([0-9]+)_\[([0-9,\-]+)(?:%[0-9]+)?\]", job_id)
    if not match:
        return [job_id]
    base, spec = match.groups()
    ids: list[str] = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            ids.extend(f"{base}_{i}" for i in range(int(lo), int(hi) + 1))
        elif part:
            ids.append(f"{base}_{part}")
    return ids


def parse_squeue(stdout: str) -> list[TaskState]:
    """Rows of ``squeue -h -r -o '%i|%T|%r|%N|%o'``; pending array ranges are expanded."""
    rows: list[TaskState] = []
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        job_id, state = parts[0], parts[1]
        reason = parts[2] if len(parts) > 2 and parts[2] != "None" else ""
        nodes = parts[3] if len(parts) > 3 else ""
        for one in _expand_array_ids(job_id):
            rows.append(TaskState(one, state, reason=reason, nodes=nodes, source="squeue"))
    return rows


_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_scontrol_record(line: str) -> dict[str, str]:
    """One ``scontrol show job -o`` line -> {key: value}.

    Values may hold spaces (``Command=``, ``SubmitLine=``, ``Reason=``), so the line is cut at each
    `` Key=`` rather than at every space. The first occurrence of a key wins: the fields we read come
    before the free-text ones at the end of the line.
    """
    record: dict[str, str] = {}
    matches = list(_SCONTROL_KEY.finditer(line))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        record.setdefault(match.group(1), line[match.end() : end].strip())
    return record


def parse_scontrol(stdout: str) -> list[TaskState]:
    rows: list[TaskState] = []
    for line in stdout.splitlines():
        if "JobId=" not in line or "JobState=" not in line:
            continue
        rec = parse_scontrol_record(line)
        job_id = rec.get("JobId", "")
        if rec.get("ArrayTaskId") and rec.get("ArrayJobId"):
            ids = _expand_array_ids(f"{rec['ArrayJobId']}_[{rec['ArrayTaskId']}]")
        else:
            ids = [job_id]
        restarts = rec.get("Restarts", "0")
        for one in ids:
            rows.append(
                TaskState(
                    one,
                    rec.get("JobState", ""),
                    reason=rec.get("Reason", "").replace("None", ""),
                    exit_code=rec.get("ExitCode", ""),
                    nodes=rec.get("NodeList", "").replace("(null)", ""),
                    restarts=int(restarts) if restarts.isdigit() else 0,
                    stdout_path=rec.get("StdOut", ""),
                    source="scontrol",
                )
            )
    return rows


def parse_config_value(stdout: str, key: str) -> str | None:
    """One value of ``scontrol show config`` (``MaxArraySize             = 1001``), None when absent."""
    for line in stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    return None


SACCT_FORMAT = "JobID,JobName,State,ExitCode,Reason,NodeList,Start,End,Elapsed"


def parse_sacct(stdout: str) -> list[TaskState]:
    """Rows of ``sacct -n --parsable2 --format=SACCT_FORMAT``; step rows (``123.batch``) are skipped.

    A requeued job appears once per run in sacct with the same id; the last row is the current one.
    """
    latest: dict[str, TaskState] = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 6 or not parts[0] or "." in parts[0]:
            continue
        job_id, _name, state, exit_code, reason, nodes = parts[:6]
        for one in _expand_array_ids(job_id):
            latest[one] = TaskState(
                one,
                state,
                reason=reason.replace("None", ""),
                exit_code=exit_code,
                nodes=nodes.replace("None assigned", ""),
                source="sacct",
            )
    return list(latest.values())


@dataclass(frozen=True)
class JobStatus:
    """Everything the pipeline knows about one submitted job (all its array tasks, if any)."""

    job_id: str
    outcome: Outcome
    tasks: tuple[TaskState, ...] = field(default_factory=tuple)
    note: str = ""
    #: the sources whose command failed (not "no such job": no answer at all, e.g. controller down)
    unanswered: tuple[str, ...] = ()

    @property
    def controller_silent(self) -> bool:
        """UNKNOWN because the controller did not answer (squeue AND scontrol failed), not because it
        answered that it does not know the job: an outage says nothing about the job itself."""
        return self.outcome is Outcome.UNKNOWN and {"squeue", "scontrol"} <= set(self.unanswered)

    @property
    def final(self) -> bool:
        return self.outcome.final

    @property
    def state(self) -> str:
        """The headline Slurm state word (the first task with the deciding outcome)."""
        for task in self.tasks:
            if task.outcome == self.outcome:
                return task.state
        return self.outcome.value.upper()

    def summary(self) -> str:
        deciding = [t for t in self.tasks if t.outcome == self.outcome] or list(self.tasks)
        if not deciding:
            return f"job {self.job_id}: {self.outcome.value} ({self.note or 'no information'})"
        first = deciding[0]
        parts = [f"job {self.job_id}", f"state {first.state}"]
        if first.exit_code and self.final:
            parts.append(f"exit code {first.exit_code.split(':')[0]}")
            if ":" in first.exit_code and first.exit_code.split(":")[1] not in ("", "0"):
                parts.append(f"signal {first.exit_code.split(':')[1]}")
        if first.reason:
            parts.append(f"reason {first.reason}")
        if first.nodes:
            parts.append(f"nodes {first.nodes}")
        if len(self.tasks) > 1:
            parts.append(f"{len(deciding)}/{len(self.tasks)} array tasks {self.outcome.value}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {
            "job_id": self.job_id,
            "outcome": self.outcome.value,
            "state": self.state,
            "note": self.note,
            "summary": self.summary(),
            "tasks": [
                {
                    "job_id": t.job_id,
                    "state": t.state,
                    "reason": t.reason,
                    "exit_code": t.exit_code,
                    "nodes": t.nodes,
                    "restarts": t.restarts,
                    "source": t.source,
                }
                for t in self.tasks
            ],
        }


def merge_sources(
    job_id: str,
    squeue: list[TaskState],
    scontrol: list[TaskState],
    sacct: list[TaskState],
    expected_tasks: list[str] | None = None,
    finished: Mapping[str, TaskState] | None = None,
) -> JobStatus:
    """Layered state: per task, believe squeue, then scontrol, then sacct.

    ``expected_tasks`` lists the array task ids we submitted (``["123_0", "123_1"]``); a task none of the
    sources knows makes the whole job UNKNOWN, not finished. For a plain job it is ``[job_id]``.
    ``finished`` holds the final states earlier polls saw: an array task that ended leaves squeue and
    scontrol after ``MinJobAge`` (30-300 s), and without accounting nothing knows it then, while the
    array's last tasks may run for hours; its observed end stands in.
    """
    wanted = expected_tasks or None
    by_task: dict[str, TaskState] = {}
    for source in (sacct, scontrol, squeue):  # later sources overwrite earlier ones
        for row in source:
            if row.job_id == job_id or row.job_id.startswith(f"{job_id}_"):
                previous = by_task.get(row.job_id)
                if previous and not row.exit_code and previous.exit_code:
                    row = replace(row, exit_code=previous.exit_code)
                by_task[row.job_id] = row
    if wanted is None:
        # A plain job shows as its id; an array we did not describe shows as its tasks only.
        wanted = sorted(by_task, key=_task_sort_key) or [job_id]
    for task_id in wanted:
        seen = (finished or {}).get(task_id)
        if task_id not in by_task and seen is not None and seen.outcome.final:
            by_task[task_id] = replace(seen, source=f"{seen.source} (an earlier poll; gone since)")
    tasks = tuple(by_task[t] for t in wanted if t in by_task)
    missing = [t for t in wanted if t not in by_task]
    if missing:
        note = f"no source knows {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        return JobStatus(job_id, Outcome.UNKNOWN, tasks, note=note)
    return JobStatus(job_id, combine(t.outcome for t in tasks), tasks)


def _task_sort_key(task_id: str) -> tuple[int, int]:
    base, _, index = task_id.partition("_")
    return (int(base) if base.isdigit() else 0, int(index) if index.isdigit() else -1)
