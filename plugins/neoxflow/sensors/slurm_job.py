"""SlurmJobSensor: wait for a Slurm job submitted elsewhere (by id), deferrable by default.

Unlike :class:`~neoxflow.operators.slurm.SlurmOperator` it does not own the job: killing the sensor does
not cancel the job unless ``cancel_on_kill`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from airflow.sdk import BaseSensorOperator, Context

from neoxflow.errors import SlurmJobFailed, failure_message
from neoxflow.hooks.slurm import SlurmSSHHook
from neoxflow.slurm.commands import ProbeRequest
from neoxflow.slurm.states import Outcome
from neoxflow.slurm.validate import check_job_id
from neoxflow.triggers.slurm_job import SlurmJobTrigger


class SlurmJobSensor(BaseSensorOperator):
    """Succeed when job ``job_id`` COMPLETED; fail with state, exit code, reason and nodes otherwise.

    :param job_id: Slurm job id (templated, e.g. from another task's XCom).
    :param start_day: day the job was submitted (``YYYY-MM-DD``) so sacct looks back far enough.
    :param log_path: optional output file to stream into the task log.
    """

    template_fields: Sequence[str] = ("job_id", "start_day", "log_path")

    def __init__(
        self,
        *,
        job_id: str,
        ssh_conn_id: str = "neoxflow_cluster",
        start_day: str | None = None,
        log_path: str | None = None,
        deferrable: bool = True,
        cancel_on_kill: bool = False,
        unknown_timeout: float = 900.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.job_id = job_id
        self.ssh_conn_id = ssh_conn_id
        self.start_day = start_day
        self.log_path = log_path
        self.deferrable = deferrable
        self.cancel_on_kill = cancel_on_kill
        self.unknown_timeout = unknown_timeout

    @cached_property
    def hook(self) -> SlurmSSHHook:
        return SlurmSSHHook(self.ssh_conn_id)

    def _day(self) -> str:
        return self.start_day or datetime.now(UTC).strftime("%Y-%m-%d")

    def execute(self, context: Context) -> Any:
        check_job_id(str(self.job_id))
        if not self.deferrable:
            return super().execute(context)
        self.defer(
            trigger=SlurmJobTrigger(
                ssh_conn_id=self.ssh_conn_id,
                job_id=str(self.job_id),
                start_day=self._day(),
                log_path=self.log_path,
                poll_interval=self.poke_interval,
                unknown_timeout=self.unknown_timeout,
                cancel_on_kill=self.cancel_on_kill,
            ),
            method_name="execute_complete",
            timeout=self.execution_timeout,
        )

    def poke(self, context: Context) -> bool:
        status, _ = self.hook.probe(ProbeRequest(str(self.job_id), self._day()))
        self.log.info("Slurm %s", status.summary())
        if status.outcome is Outcome.SUCCESS:
            return True
        if status.final or status.outcome is Outcome.HELD:
            event = {"event": "final", "job_id": str(self.job_id), "status": status.to_dict()}
            raise SlurmJobFailed(failure_message(event), event)
        return False

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        status = event.get("status") or {}
        if event.get("event") == "final" and status.get("outcome") == Outcome.SUCCESS.value:
            self.log.info("Slurm %s", status.get("summary"))
            return status
        raise SlurmJobFailed(failure_message(event), event)
