"""Waiting for an FSx data repository task in the triggerer."""

from __future__ import annotations

import asyncio
from typing import Any

from neoxflow.data.fsx import FAILED, UNKNOWN, DraTaskState, FsxTaskError
from neoxflow.hooks.fsx import FsxDataRepository
from neoxflow.triggers.base import PollingTrigger


class FsxImportTaskTrigger(PollingTrigger):
    """Waits in the triggerer for a data repository task to end, holding no worker slot.

    Yields one event ``{"status": ..., "task_id": ..., "message": ..., ...}`` (see :class:`DraTaskState`)
    when the task is final, or ``status="unknown"`` after ``max_unknown`` answers in a row that were
    empty or failed - never a guessed success. The boto3 call runs in a thread (``asyncio.to_thread``)
    so the triggerer's event loop is never blocked; it is a short request, not a long poll. The loop is
    :class:`~neoxflow.triggers.base.PollingTrigger`'s; a failed describe counts as an unknown answer here
    (the AWS client retries its own connection), so it never reaches the loop's SSH-style backoff.

    :param task_id: the data repository task id (``task-...``).
    :param aws_conn_id: Airflow AWS connection id.
    :param region_name: optional region override.
    :param poll_interval: seconds between describe calls.
    :param max_unknown: consecutive unknown answers before giving the decision back to the operator.
    """

    SERIALIZED = ("task_id", "aws_conn_id", "region_name", "poll_interval", "max_unknown")
    unreachable_timeout = None

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

    def _hook(self) -> FsxDataRepository:
        return FsxDataRepository(aws_conn_id=self.aws_conn_id, region_name=self.region_name)

    async def _close(self, hook: FsxDataRepository) -> None:
        """The boto3 client holds no connection worth closing."""

    def _subject(self) -> str:
        return f"FSx task {self.task_id}"

    async def _probe(self, hook: FsxDataRepository) -> DraTaskState:
        try:
            return await asyncio.to_thread(hook.describe, self.task_id)
        except FsxTaskError as exc:
            return DraTaskState(self.task_id, "", FAILED, str(exc))
        except Exception as exc:  # noqa: BLE001 - a failed poll is not a verdict
            return DraTaskState(self.task_id, "", UNKNOWN, f"describe {self.task_id} raised {exc!r}")

    async def _judge(self, hook: FsxDataRepository, answer: DraTaskState) -> dict[str, Any] | None:
        if answer.final:
            return answer.to_dict()
        unknown = self._unknown_for(answer.status == UNKNOWN)
        if unknown is not None and unknown[0] >= self.max_unknown:
            return answer.to_dict()
        self.log.info("%s", answer.message)
        return None
