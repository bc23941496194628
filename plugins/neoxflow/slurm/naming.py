"""Deterministic Slurm job names: the same task instance always submits under the same name.

A retry, a worker crash or a scheduler restart re-runs ``execute``; finding a live job under this name
(squeue) is how it re-attaches instead of queueing a second copy.
"""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def job_name(dag_id: str, run_id: str, task_id: str, map_index: int = -1, prefix: str = "nxf") -> str:
    """``nxf-<task>-<hash of dag, run, task, map index>``: readable in squeue, unique per task instance."""
    digest = hashlib.sha256(f"{dag_id}\0{run_id}\0{task_id}\0{map_index}".encode()).hexdigest()[:12]
    readable = _UNSAFE.sub("-", task_id.split(".")[-1]).strip("-.")[:40] or "task"
    return f"{prefix}-{readable}-{digest}"


def job_comment(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """A human-readable back-reference for ``scontrol show job`` (no quotes, one line)."""
    text = f"neoxflow dag={dag_id} run={run_id} task={task_id} map={map_index}"
    return _UNSAFE.sub("_", text.replace(" ", "\x00")).replace("\x00", " ")[:500]
