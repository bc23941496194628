"""Waiting for an FSx data repository task in the triggerer."""

from __future__ import annotations

import asyncio
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from neoxflow.data.fsx import FAILED, UNKNOWN, DraTaskState, FsxTaskError
from neoxflow.hooks.fsx import FsxDataRepository


class FsxImportTaskTrigger(BaseTrigger):
    """Waits in the triggerer for a data repository task to end, holding no worker slot.

    Yields one event ``{"status": ..., "task_id": ..., "message": ..., ...}`` (see :class:`DraTaskState`)
    when the task is final, or ``status="unknown"`` after ``max_unknown`` answers in a row that were
    empty or failed - never a guessed success. The boto3 call runs in a thread (``asyncio.to_thread``)
    so the triggerer's event loop is never blocked; it is a short request, not a long poll.

    :param task_id: the data repository task id (``task-...``).
    :param aws_conn_id: Airflow AWS connection id.
    :param region_name: optional region override.
    :param poll_interval: seconds between describe calls.
    :param max_unknown: consecutive unknown answers before giving the decision back to the operator.
    """

    def __init__(
        self,
        *,
        task_id: str,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        poll_interval: float = 30.0,
        max_unknown: int = 10,
    ):
        super().__init__()
        self.task_id = task_id
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.poll_interval = poll_interval
        self.max_unknown = max_unknown

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "task_id": self.task_id,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "poll_interval": self.poll_interval,
                "max_unknown": self.max_unknown,
            },
        )

    async def run(self):
        repo = FsxDataRepository(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
        unknown = 0
        while True:
            try:
                state = await asyncio.to_thread(repo.describe, self.task_id)
            except FsxTaskError as exc:
                yield TriggerEvent({"status": FAILED, "task_id": self.task_id, "message": str(exc)})
                return
            except Exception as exc:  # noqa: BLE001 - a failed poll is not a verdict
                state = DraTaskState(self.task_id, "", UNKNOWN, f"describe {self.task_id} raised {exc!r}")
            if state.final:
                yield TriggerEvent(state.to_dict())
                return
            unknown = unknown + 1 if state.status == UNKNOWN else 0
            if unknown >= self.max_unknown:
                yield TriggerEvent(state.to_dict())
                return
            self.log.info("%s", state.message)
            await asyncio.sleep(self.poll_interval)
