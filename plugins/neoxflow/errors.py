"""What a failed Slurm job raises and says, for the operators and the sensors alike (neither imports the
other: a sensor that watches a job fails the same way the operator that submitted it does)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk.exceptions import AirflowException

from neoxflow.slurm.states import Outcome

__all__ = ["SlurmJobFailed", "failure_message"]


class SlurmJobFailed(AirflowException):
    """The Slurm job ended in a state other than COMPLETED. ``record`` holds the job's final status."""

    def __init__(self, message: str, record: Mapping[str, Any]):
        super().__init__(message)
        self.record = dict(record)

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.record.get("status", {}).get("outcome", "unknown"))


def failure_message(event: Mapping[str, Any]) -> str:
    status = event.get("status") or {}
    summary = status.get("summary") or event.get("message") or f"job {event.get('job_id')}"
    kind = {
        "infra_failure": "infrastructure failure (resume from the latest checkpoint is safe)",
        "app_failure": "application failure (needs a human: no automatic resubmit)",
        "cancelled": "cancelled",
        "held": "held: a human must release or fix the job",
    }.get(status.get("outcome", ""), event.get("event", "failed"))
    tail = event.get("tail") or []
    lines = "\n".join(f"    {line}" for line in tail[-20:])
    return f"Slurm {summary} - {kind}" + (f"\n  last log lines:\n{lines}" if lines else "")
