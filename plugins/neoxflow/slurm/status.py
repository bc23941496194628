"""Turn one probe's answer into a :class:`JobStatus` (layered: squeue, scontrol, sacct)."""

from __future__ import annotations

from collections.abc import Mapping

from neoxflow.slurm.commands import ProbeAnswer
from neoxflow.slurm.parse import (
    JobStatus,
    TaskState,
    merge_sources,
    parse_sacct,
    parse_scontrol,
    parse_squeue,
)
from neoxflow.slurm.states import Outcome


def status_from_probe(
    job_id: str,
    answer: ProbeAnswer,
    expected_tasks: list[str] | None = None,
    finished: Mapping[str, TaskState] | None = None,
) -> JobStatus:
    """``finished``: array tasks' final states seen by earlier polls (see :func:`merge_sources`)."""
    if answer.squeue is None and answer.scontrol is None and answer.sacct is None:
        detail = "; ".join(f"{k}: {v}" for k, v in answer.errors.items()) or "no answer"
        return JobStatus(
            job_id,
            Outcome.UNKNOWN,
            note=f"cluster did not answer ({detail})",
            unanswered=("squeue", "scontrol", "sacct"),
        )
    status = merge_sources(
        job_id,
        parse_squeue(answer.squeue or ""),
        parse_scontrol(answer.scontrol or ""),
        parse_sacct(answer.sacct or ""),
        expected_tasks=expected_tasks,
        finished=finished,
    )
    if status.outcome is Outcome.UNKNOWN and answer.errors:
        failed = ", ".join(sorted(answer.errors))
        return JobStatus(
            status.job_id,
            status.outcome,
            status.tasks,
            note=f"{status.note}; {failed} failed",
            unanswered=tuple(sorted(answer.errors)),
        )
    return status


def array_task_ids(job_id: str, array_spec: str | None) -> list[str] | None:
    """The task ids an ``--array`` spec creates (``0-3%2`` -> 123_0..123_3); None for a plain job."""
    if not array_spec:
        return None
    spec = array_spec.split("%", 1)[0]
    ids: list[str] = []
    for part in spec.split(","):
        step = 1
        if ":" in part:
            part, step_text = part.split(":", 1)
            step = int(step_text)
        if "-" in part:
            lo, hi = part.split("-", 1)
            ids.extend(f"{job_id}_{i}" for i in range(int(lo), int(hi) + 1, step))
        else:
            ids.append(f"{job_id}_{int(part)}")
    return ids
