"""Follow a Slurm job to a final state from the triggerer, without holding a worker slot.

One asyncssh connection per trigger, reused for every poll; each poll is ONE remote command that asks
squeue, scontrol and sacct and reads the next chunk of the job's output by byte offset (streamed into the
task log). A failed poll is not a verdict: connection errors reconnect with jittered backoff, and an
answer nobody can give ("unknown") is asked again until ``unknown_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from neoxflow.hooks.slurm import AsyncSlurmSSHHook, _is_host_key_error
from neoxflow.slurm.commands import ProbeRequest
from neoxflow.slurm.states import Outcome

logging.getLogger("asyncssh").setLevel(logging.WARNING)

TAIL_LINES = 40


class SlurmJobTrigger(BaseTrigger):
    """Yield one event when the job is final (``status: final``), held (``held``), lost (``lost``) or
    the cluster is unreachable for longer than ``unreachable_timeout`` (``error``).

    :param ssh_conn_id: SSH connection to the Slurm login node.
    :param job_id: the Slurm job id (array jobs: the array's id).
    :param start_day: submit day ``YYYY-MM-DD``, for sacct's ``--starttime``.
    :param expected_tasks: array task ids we submitted (``["12_0", "12_1"]``), None for a plain job.
    :param log_path: the job's output file to stream into the task log, read from ``log_offset`` on.
    :param cancel_on_kill: scancel when a user kills the task (never on a triggerer restart).
    """

    def __init__(
        self,
        *,
        ssh_conn_id: str,
        job_id: str,
        start_day: str,
        expected_tasks: list[str] | None = None,
        log_path: str | None = None,
        log_offset: int = 0,
        poll_interval: float = 10.0,
        unknown_timeout: float = 900.0,
        unreachable_timeout: float = 3600.0,
        cancel_on_kill: bool = True,
        use_sacct: bool = True,
    ):
        super().__init__()
        self.ssh_conn_id = ssh_conn_id
        self.job_id = job_id
        self.start_day = start_day
        self.expected_tasks = expected_tasks
        self.log_path = log_path
        self.log_offset = log_offset
        self.poll_interval = poll_interval
        self.unknown_timeout = unknown_timeout
        self.unreachable_timeout = unreachable_timeout
        self.cancel_on_kill = cancel_on_kill
        self.use_sacct = use_sacct

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "ssh_conn_id": self.ssh_conn_id,
                "job_id": self.job_id,
                "start_day": self.start_day,
                "expected_tasks": self.expected_tasks,
                "log_path": self.log_path,
                "log_offset": self.log_offset,
                "poll_interval": self.poll_interval,
                "unknown_timeout": self.unknown_timeout,
                "unreachable_timeout": self.unreachable_timeout,
                "cancel_on_kill": self.cancel_on_kill,
                "use_sacct": self.use_sacct,
            },
        )

    def _hook(self) -> AsyncSlurmSSHHook:
        return AsyncSlurmSSHHook(self.ssh_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self._hook()
        offset = self.log_offset
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        partial = b""
        unknown_since: float | None = None
        unreachable_since: float | None = None
        failures = 0
        polls = 0
        try:
            while True:
                request = ProbeRequest(
                    self.job_id,
                    self.start_day,
                    log_path=self.log_path,
                    log_offset=offset,
                    use_sacct=self.use_sacct,
                )
                try:
                    status, chunk = await hook.probe(request, self.expected_tasks)
                    polls += 1
                    failures, unreachable_since = 0, None
                except Exception as err:
                    if _is_host_key_error(err):
                        yield TriggerEvent(self._event("error", message=f"SSH host key rejected: {err}"))
                        return
                    failures += 1
                    unreachable_since = unreachable_since or time.monotonic()
                    if time.monotonic() - unreachable_since > self.unreachable_timeout:
                        yield TriggerEvent(
                            self._event(
                                "error",
                                message=f"cluster unreachable for {self.unreachable_timeout:.0f}s: {err}",
                                log_offset=offset,
                            )
                        )
                        return
                    wait = min(60.0, self.poll_interval * 2 ** min(failures, 6)) * random.uniform(0.5, 1.5)
                    self.log.warning(
                        "Poll of job %s failed (%s: %s); retrying in %.1fs",
                        self.job_id,
                        type(err).__name__,
                        err,
                        wait,
                    )
                    await asyncio.sleep(wait)
                    continue

                if chunk:
                    offset += len(chunk)
                    partial = self._stream(partial + chunk, tail)
                if status.final:
                    if len(chunk) >= request.max_log_bytes:
                        continue  # more output to read before the verdict
                    if partial:
                        tail.append(partial.decode("utf-8", "replace"))
                        self.log.info("%s", partial.decode("utf-8", "replace"))
                    yield TriggerEvent(
                        self._event(
                            "final",
                            status=status.to_dict(),
                            log_offset=offset,
                            tail=list(tail),
                            polls=polls,
                            connections=hook.connections_opened,
                        )
                    )
                    return
                if status.outcome is Outcome.HELD:
                    yield TriggerEvent(
                        self._event("held", status=status.to_dict(), log_offset=offset, tail=list(tail))
                    )
                    return
                if status.outcome is Outcome.UNKNOWN:
                    unknown_since = unknown_since or time.monotonic()
                    waited = time.monotonic() - unknown_since
                    self.log.info(
                        "Job %s state unknown for %.0fs (%s); asking again", self.job_id, waited, status.note
                    )
                    if waited > self.unknown_timeout:
                        yield TriggerEvent(
                            self._event(
                                "lost",
                                status=status.to_dict(),
                                log_offset=offset,
                                tail=list(tail),
                                message=f"no Slurm source knew job {self.job_id} for {waited:.0f}s "
                                f"({status.note})",
                            )
                        )
                        return
                else:
                    unknown_since = None
                await asyncio.sleep(self.poll_interval)
        finally:
            await hook.close()

    def _stream(self, data: bytes, tail: deque[str]) -> bytes:
        """Log complete lines of job output; return the unfinished last line for the next chunk."""
        *lines, rest = data.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            tail.append(line)
            self.log.info("[slurm %s] %s", self.job_id, line)
        return rest

    def _event(self, kind: str, **payload: Any) -> dict[str, Any]:
        return {"event": kind, "job_id": self.job_id, **payload}

    async def on_kill(self) -> None:
        """A user killed the deferred task (mark failed/success, clear): cancel the Slurm job.

        Not called on a triggerer restart, so a restart never cancels a healthy job.
        """
        if not self.cancel_on_kill:
            return
        hook = self._hook()
        try:
            self.log.info("Task killed by a user: cancelling Slurm job %s", self.job_id)
            await hook.cancel(self.job_id)
        finally:
            await hook.close()
