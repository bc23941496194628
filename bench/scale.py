"""The arithmetic of the scale benchmark (bench/bench_scale.py): what a run's records say, and what they
mean for all of real C4 on a cluster of CPU nodes. Pure functions; the benchmark does the I/O.

Measured on the local cluster (the inputs):

* Slurm's job completion records (``JobCompType=jobcomp/filetxt``: one ``Key=value`` line per job and
  per array task, times to the second) give each stage's jobs, array tasks, their walls and the span
  from the first task's start to the last one's end;
* the array tasks' own logs give the work inside each task: ``fetch_to_s3.py`` and ``stage_to_fsx.py``
  print a ``NEOXFLOW_RESULT {json}`` line per manifest line (bytes, seconds of transfer), and
  ``preprocess_data.py`` a ``[preprocess_data] N documents, T tokens, ..., S s (done)`` line (seconds
  after the tokenizer is loaded);
* a calibration on one larger shard gives the per-worker rates (tiny shards measure start-up, not rate).

The model (:func:`extrapolate`), per array stage: each of the ``min(lines, MaxArraySize)`` array tasks
takes the manifest lines ``i, i+tasks, ...`` (the stride beyond MaxArraySize); a line costs its work
(its size over the per-worker rate) plus the per-line overhead measured here (the task's wall minus its
work: Python's start-up, imports, the tokenizer's load), and a task adds Slurm's dispatch gap measured
here (the slot's idle time between two tasks); the stage lasts ``max(sum of task durations / slots,
longest task)`` (the usual makespan bound: the cluster is either full or waiting for its slowest task),
slots being the CPUs (one per array task) or the array's ``%P`` when lower. Fetch cannot beat the
internet link: at least ``bytes / link``. Stage is optionally bounded by the file system's aggregate
throughput. Merge+validate is one process: its fixed part measured here (every shard file opened and
checked) plus the merged bytes over the measured merge rate. Airflow's own time between and around the
stages (plan, lock, ship_code, each submit and poll) is added as measured.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MB = 1024 * 1024
RESULT_PREFIX = "NEOXFLOW_RESULT "
ARRAY_STAGES = ("fetch", "stage", "tokenize")
_KEY_VALUE = re.compile(r"(\w+)=(\S*)")
_TOKENIZE_DONE = re.compile(
    r"\[preprocess_data\] (?P<documents>\d+) documents, (?P<tokens>\d+) tokens, "
    r".*?(?P<seconds>[0-9.]+) s \(done\)"
)


@dataclass(frozen=True)
class Corpus:
    """What is moved and tokenized. Defaults: allenai/c4 ``en`` train, tokenized with the GPT-NeoX-20B
    tokenizer (issue 19): 1024 shards, 364.9M documents, ~156B tokens, ~305 GB of gzip."""

    shards: int = 1024
    documents: float = 364.9e6
    tokens: float = 156e9
    gzip_bytes: float = 305e9
    token_bytes: int = 2  # uint16: the 20B tokenizer's 50k vocabulary fits
    tokenizer_bytes: float = 2.1e6  # the extra line of the fetch and stage manifests

    @property
    def merged_bytes(self) -> float:
        """The merged ``.bin`` plus ``.idx`` (per document: int32 size, int64 pointer, int64 doc_idx)."""
        return self.tokens * self.token_bytes + self.documents * 20


REAL_C4 = Corpus()


# --- records --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobRecord:
    """One line of Slurm's jobcomp/filetxt log: a job, or one task of an array job."""

    job_id: int
    name: str
    state: str
    start: datetime | None
    end: datetime | None
    array_job_id: int | None = None
    array_task_id: int | None = None

    @property
    def job(self) -> int:
        """The submitted job this record belongs to (an array's id for each of its tasks)."""
        return self.array_job_id if self.array_job_id is not None else self.job_id

    @property
    def wall_s(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return (self.end - self.start).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "name": self.name,
            "state": self.state,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "array_job_id": self.array_job_id,
            "array_task_id": self.array_task_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobRecord:
        return cls(
            job_id=int(d["job_id"]),
            name=d["name"],
            state=d["state"],
            start=_time(d.get("start")),
            end=_time(d.get("end")),
            array_job_id=d.get("array_job_id"),
            array_task_id=d.get("array_task_id"),
        )


def _time(value: str | None) -> datetime | None:
    if not value or value in ("Unknown", "None"):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def parse_jobcomp(text: str, names: Iterable[str] | None = None) -> list[JobRecord]:
    """The records of a jobcomp/filetxt log, optionally only those whose job name is in ``names``."""
    wanted = set(names) if names is not None else None
    records = []
    for line in text.splitlines():
        fields = dict(_KEY_VALUE.findall(line))
        if "JobId" not in fields or "Name" not in fields:
            continue
        if wanted is not None and fields["Name"] not in wanted:
            continue
        records.append(
            JobRecord(
                job_id=int(fields["JobId"]),
                name=fields["Name"],
                state=fields.get("JobState", ""),
                start=_time(fields.get("StartTime")),
                end=_time(fields.get("EndTime")),
                array_job_id=_int(fields.get("ArrayJobId")),
                array_task_id=_int(fields.get("ArrayTaskId")),
            )
        )
    return records


@dataclass(frozen=True)
class SlurmUse:
    """What one stage asked of Slurm: submitted jobs, array tasks, their states, walls and span."""

    jobs: int
    array_tasks: int
    records: int
    states: dict[str, int]
    task_wall_s: float  # sum over the records of end - start
    span_s: float  # first start -> last end over the records

    @property
    def mean_wall_s(self) -> float:
        return self.task_wall_s / self.records if self.records else 0.0

    @property
    def all_completed(self) -> bool:
        return self.records > 0 and set(self.states) == {"COMPLETED"}


def slurm_use(records: Sequence[JobRecord]) -> SlurmUse:
    starts = [r.start for r in records if r.start]
    ends = [r.end for r in records if r.end]
    states: dict[str, int] = {}
    for r in records:
        states[r.state] = states.get(r.state, 0) + 1
    return SlurmUse(
        jobs=len({r.job for r in records}),
        array_tasks=sum(1 for r in records if r.array_task_id is not None),
        records=len(records),
        states=states,
        task_wall_s=sum(r.wall_s or 0.0 for r in records),
        span_s=(max(ends) - min(starts)).total_seconds() if starts and ends else 0.0,
    )


def parse_results(text: str) -> list[dict[str, Any]]:
    """The ``NEOXFLOW_RESULT {json}`` lines of a data mover's log (one per manifest line it handled)."""
    out = []
    for line in text.splitlines():
        if line.startswith(RESULT_PREFIX):
            try:
                out.append(json.loads(line[len(RESULT_PREFIX) :]))
            except ValueError:
                continue
    return out


def parse_tokenize_done(text: str) -> list[dict[str, float]]:
    """``preprocess_data.py``'s final line per shard it tokenized: documents, tokens, seconds."""
    return [
        {"documents": int(m["documents"]), "tokens": int(m["tokens"]), "seconds": float(m["seconds"])}
        for m in _TOKENIZE_DONE.finditer(text)
    ]


# --- what the run measured ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageMeasure:
    """One array stage as measured: ``lines`` manifest lines in ``slurm.records`` array tasks run
    ``slots`` at a time, ``work_units`` (bytes or tokens) done in ``work_s`` seconds of the movers' own
    clocks; the rest of each task's slot time is overhead."""

    name: str
    slurm: SlurmUse
    slots: int
    lines: int
    work_units: float
    work_s: float

    @property
    def work_per_task_s(self) -> float:
        return self.work_s / self.slurm.records if self.slurm.records else 0.0

    @property
    def in_task_overhead_s(self) -> float:
        """A task's wall minus its work: Python's start-up, imports, the tokenizer's load, bash."""
        return self.slurm.mean_wall_s - self.work_per_task_s

    @property
    def line_overhead_s(self) -> float:
        """The in-task overhead per manifest line (each line starts its own Python process)."""
        return self.line_overhead_at(None)

    def line_overhead_at(self, rate: float | None) -> float:
        """The fixed cost of one manifest line: the tasks' walls minus what their units take at ``rate``
        (units per second; None: minus the movers' own clocks), per line. With a rate measured on a large
        shard, everything a line costs whatever its size (Python, imports, the tokenizer's load, the
        requests' latency) is fixed cost."""
        if not self.lines:
            return 0.0
        work = self.work_units / rate if rate else self.work_s
        return max(0.0, (self.slurm.task_wall_s - work) / self.lines)

    @property
    def slot_s_per_task(self) -> float:
        """Slot time per task: the span times the slots over the tasks (a slot idles between tasks
        while Slurm dispatches the next)."""
        return self.slurm.span_s * self.slots / self.slurm.records if self.slurm.records else 0.0

    @property
    def dispatch_gap_s(self) -> float:
        """Slot time per task beyond the task's wall (never below 0: walls are whole seconds)."""
        return max(0.0, self.slot_s_per_task - self.slurm.mean_wall_s)

    @property
    def overhead_per_task_s(self) -> float:
        """Fixed cost of one array task: its slot time minus its work (never below 0)."""
        return max(0.0, self.slot_s_per_task - self.work_per_task_s)

    @property
    def rate(self) -> float | None:
        """Units per second of work, per worker (one array task is one worker)."""
        return self.work_units / self.work_s if self.work_s > 0 else None


def projected_span_s(span_s: float, done: int, planned: int) -> float | None:
    """A stage cut short: its span if the remaining lines go at the pace of the done ones."""
    return span_s * planned / done if done else None


# --- the model ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cluster:
    """The cluster the extrapolation is for: ``nodes`` x ``cpus_per_node`` CPUs, one per array task
    (the data templates ask ``--cpus-per-task=1``); ``parallelism`` caps the tasks at once (the array's
    ``%P``; None: every CPU); ``link_mb_s`` the internet link the fetch shares (MiB/s); ``storage_mb_s``
    the file system's aggregate write throughput for the stage step (None: no cap)."""

    nodes: int = 16
    cpus_per_node: int = 96
    max_array_size: int = 1001
    parallelism: int | None = None
    link_mb_s: float = 10e9 / 8 / MB  # 10 Gbit/s
    storage_mb_s: float | None = None

    @property
    def slots(self) -> int:
        cpus = self.nodes * self.cpus_per_node
        return max(1, min(cpus, self.parallelism) if self.parallelism else cpus)


@dataclass(frozen=True)
class Rates:
    """Per-worker rates (fetch and stage MiB/s, tokenizer tokens/s, merge MiB/s of merged output); per
    stage the overhead of one manifest line and Slurm's dispatch gap per array task; merge's fixed part;
    Airflow's time around the stages."""

    fetch_mb_s: float
    stage_mb_s: float
    tokens_per_s: float
    merge_mb_s: float
    line_overhead_s: dict[str, float] = field(default_factory=dict)
    task_overhead_s: dict[str, float] = field(default_factory=dict)
    merge_fixed_s: float = 0.0
    airflow_s: float = 0.0


def task_loads(line_work_s: Sequence[float], max_array_size: int) -> list[float]:
    """Work per array task when ``len(line_work_s)`` lines run as ``min(lines, max_array_size)`` tasks,
    task i taking lines i, i+tasks, i+2*tasks, ... (include/templates/each_manifest_line.sh)."""
    if max_array_size < 1:
        raise ValueError(f"max_array_size must be >= 1, got {max_array_size}")
    tasks = min(len(line_work_s), max_array_size)
    return [sum(line_work_s[i::tasks]) for i in range(tasks)]


def makespan(durations: Sequence[float], slots: int) -> float:
    """How long ``durations`` take on ``slots`` workers: the cluster is full, or waits for the longest."""
    if not durations:
        return 0.0
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    return max(sum(durations) / slots, max(durations))


def array_stage_s(
    line_work_s: Sequence[float], line_overhead_s: float, task_overhead_s: float, cluster: Cluster
) -> float:
    """One array stage on ``cluster``: each line's work and overhead, each task's dispatch."""
    loads = task_loads([w + line_overhead_s for w in line_work_s], cluster.max_array_size)
    return makespan([load + task_overhead_s for load in loads], cluster.slots)


def extrapolate(corpus: Corpus, cluster: Cluster, rates: Rates) -> dict[str, float]:
    """Seconds per stage (fetch, stage, tokenize, merge_validate, airflow) and ``total`` for ``corpus``."""
    for name in ("fetch_mb_s", "stage_mb_s", "tokens_per_s", "merge_mb_s"):
        if not getattr(rates, name) or getattr(rates, name) <= 0:
            raise ValueError(f"rate {name} must be positive, got {getattr(rates, name)!r}")
    shard_mb = corpus.gzip_bytes / corpus.shards / MB
    moved_mb = [shard_mb] * corpus.shards + [corpus.tokenizer_bytes / MB]  # the tokenizer is the last line
    total_mb = sum(moved_mb)

    def stage_s(stage: str, line_work_s: list[float]) -> float:
        line, task = rates.line_overhead_s.get(stage, 0.0), rates.task_overhead_s.get(stage, 0.0)
        return array_stage_s(line_work_s, line, task, cluster)

    fetch = max(stage_s("fetch", [mb / rates.fetch_mb_s for mb in moved_mb]), total_mb / cluster.link_mb_s)
    stage = stage_s("stage", [mb / rates.stage_mb_s for mb in moved_mb])
    if cluster.storage_mb_s:
        stage = max(stage, total_mb / cluster.storage_mb_s)
    tokenize = stage_s("tokenize", [corpus.tokens / corpus.shards / rates.tokens_per_s] * corpus.shards)
    merge = rates.merge_fixed_s + corpus.merged_bytes / MB / rates.merge_mb_s
    out = {
        "fetch": fetch,
        "stage": stage,
        "tokenize": tokenize,
        "merge_validate": merge,
        "airflow": rates.airflow_s,
    }
    out["total"] = sum(out.values())
    return out


def linear_rate(small: tuple[float, float], large: tuple[float, float]) -> tuple[float, float]:
    """(rate, fixed seconds) of a process timed at two sizes: ``(units, seconds)`` each. The fixed part
    (start-up, opening files) cancels in the difference; the rate is units per second of the rest."""
    (u1, s1), (u2, s2) = small, large
    if u2 <= u1:
        raise ValueError(f"the large run must do more work: {u1} then {u2} units")
    if s2 <= s1:
        raise ValueError(f"the large run ({s2:.3f}s) was not slower than the small one ({s1:.3f}s)")
    rate = (u2 - u1) / (s2 - s1)
    return rate, max(0.0, s1 - u1 / rate)


def human_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"
