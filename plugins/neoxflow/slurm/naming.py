"""Deterministic Slurm job names: the same task instance always submits under the same name.

A retry, a worker crash or a scheduler restart re-runs ``execute``; finding a live job under this name
(squeue) is how it re-attaches instead of queueing a second copy.
"""

from __future__ import annotations

import hashlib
import re

from neoxflow.slurm.validate import check_run_name

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")
#: The step of a run whose job carries the training (``nxf-train-<run>``).
TRAIN_STEP = "train"


def job_name(dag_id: str, run_id: str, task_id: str, map_index: int = -1, prefix: str = "nxf") -> str:
    """``nxf-<task>-<hash of dag, run, task, map index>``: readable in squeue, unique per task instance."""
    digest = hashlib.sha256(f"{dag_id}\0{run_id}\0{task_id}\0{map_index}".encode()).hexdigest()[:12]
    readable = _UNSAFE.sub("-", task_id.split(".")[-1]).strip("-.")[:40] or "task"
    return f"{prefix}-{readable}-{digest}"


def run_job_name(step: str, run_name: str) -> str:
    """``nxf-<step>-<run>``: the job of one step of a run of record, the same in every DAG run of it.

    Named by the run, not by the task instance (unlike :func:`job_name`), because a run lives through
    many DAG runs and each must find the run's live job: "a training job of this run is active" is a
    look-up of this name. Every place that submits or looks for a run's job takes its name from here;
    two spellings that drift apart would make that look-up miss without an error."""
    return f"nxf-{step}-{check_run_name(run_name)}"


def train_job_name(run_name: str) -> str:
    """The training job of a run (every slice of it carries this name)."""
    return run_job_name(TRAIN_STEP, run_name)


def job_comment(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """A human-readable back-reference for ``scontrol show job`` (no quotes, one line)."""
    text = f"neoxflow dag={dag_id} run={run_id} task={task_id} map={map_index}"
    return _UNSAFE.sub("_", text.replace(" ", "\x00")).replace("\x00", " ")[:500]
