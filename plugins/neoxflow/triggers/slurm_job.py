"""Follow a Slurm job to a final state from the triggerer, without holding a worker slot.

The loop, the retry of failed polls and the unknown timer are the base class's
(:class:`~neoxflow.triggers.base.PollingTrigger`); this class supplies the Slurm probe and the verdict.
Each poll is ONE remote command that asks squeue, scontrol and sacct and reads the next chunk of the
job's output by byte offset (streamed into the task log, :mod:`neoxflow.slurm.logstream`), on one
asyncssh connection reused for every poll. An answer nobody can give ("unknown") is asked again until
``unknown_timeout``.

A controller outage (squeue and scontrol both fail) is not an answer either: the trigger keeps waiting,
however long, and once it has lasted ``unknown_timeout`` it yields one ``controller_silent`` event so
that the operator alerts a human and re-defers (``silent_alerted``); only an observed final state
decides the job. "lost" stays for a controller that answers but knows the job nowhere for that long.

The training watch (:mod:`neoxflow.triggers.training`) extends this class: it overrides what it does
with the log's lines (``_on_lines``), the shape of its events (``_job_event``), the final event and what
happens while the job lives (``_while_alive``).

``on_kill`` cancels only a job this task instance's try still owns (see :mod:`neoxflow.slurm.ownership`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from neoxflow.hooks.slurm import AsyncSlurmSSHHook
from neoxflow.slurm.commands import ProbeRequest, TaskLogsRequest, split_task_logs
from neoxflow.slurm.logstream import TAIL_LINES, ArrayLogStream, LogStream
from neoxflow.slurm.ownership import cancel_if_owner_command, parse_cancel
from neoxflow.slurm.parse import JobStatus, TaskState
from neoxflow.slurm.states import Outcome
from neoxflow.triggers.base import AGAIN, PollingTrigger
from neoxflow.triggers.event_state import event_status

logging.getLogger("asyncssh").setLevel(logging.WARNING)

__all__ = ["JOB_ARGUMENTS", "TAIL_LINES", "SlurmJobTrigger"]


#: the arguments of any Slurm job watch (the training watch's too), serialised with the trigger
JOB_ARGUMENTS = (
    "ssh_conn_id",
    "job_id",
    "start_day",
    "expected_tasks",
    "log_path",
    "log_offset",
    "poll_interval",
    "unknown_timeout",
    "unreachable_timeout",
    "cancel_on_kill",
    "use_sacct",
    "owner_token",
    "owner_path",
    "silent_alerted",
)


def _task_index(job_id: str) -> int:
    """``123_7`` -> 7 (an array task's index)."""
    return int(job_id.rsplit("_", 1)[1])


class SlurmJobTrigger(PollingTrigger):
    """Yield one event when the job is final (``status: final``), held (``held``), lost (``lost``) or
    the cluster is unreachable for longer than ``unreachable_timeout`` (``error``).

    :param ssh_conn_id: SSH connection to the Slurm login node.
    :param job_id: the Slurm job id (array jobs: the array's id).
    :param start_day: submit day ``YYYY-MM-DD``, for sacct's ``--starttime``.
    :param expected_tasks: array task ids we submitted (``["12_0", "12_1"]``), None for a plain job.
    :param log_path: the job's output file to stream into the task log, read from ``log_offset`` on.
    :param cancel_on_kill: scancel when a user kills the task (never on a triggerer restart).
    :param owner_token: this try's owner token; with ``owner_path`` (the job's owner file) ``on_kill``
        cancels only while the file still names this try. Both None (a trigger serialised by an older
        release): cancel as before.
    :param silent_alerted: the ``controller_silent`` event was already sent for this job (no second one).
    :param array_log: an array's per-task output file, ``%a`` for the task index
        (:func:`~neoxflow.slurm.logstream.array_log_pattern`): every task's output is streamed into the
        task log, ``[task N]`` in front, one bound per poll for all of them.
    :param task_offsets: where each task's file is read on from (task index -> byte offset), from the
        event of an earlier deferral (``task_offsets``).
    """

    SERIALIZED = (*JOB_ARGUMENTS, "array_log", "task_offsets")

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
        owner_token: str | None = None,
        owner_path: str | None = None,
        silent_alerted: bool = False,
        array_log: str | None = None,
        task_offsets: Mapping[str, int] | None = None,
    ):
        super().__init__()
        self.array_log = array_log
        self.task_offsets = dict(task_offsets) if task_offsets else None
        self.owner_token = owner_token
        self.owner_path = owner_path
        self.silent_alerted = silent_alerted
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

    def _silence(self, status: JobStatus, silent_since: float | None) -> tuple[float | None, str | None]:
        """Track a controller outage; the ``controller_silent`` message once it has lasted
        ``unknown_timeout`` (and was not reported yet), else None. Never a verdict on the job."""
        if not status.controller_silent:
            return None, None
        silent_since = silent_since or time.monotonic()
        waited = time.monotonic() - silent_since
        self.log.warning(
            "Slurm controller did not answer about job %s for %.0fs (%s); still waiting",
            self.job_id,
            waited,
            status.note,
        )
        if waited > self.unknown_timeout and not self.silent_alerted:
            self.silent_alerted = True
            return silent_since, (
                f"the Slurm controller has not answered for {waited:.0f}s ({status.note}); job {self.job_id} "
                "is still being watched and was NOT failed or cancelled"
            )
        return silent_since, None

    def _hook(self) -> AsyncSlurmSSHHook:
        return AsyncSlurmSSHHook(self.ssh_conn_id)

    def _subject(self) -> str:
        return f"job {self.job_id}"

    def _begin(self) -> None:
        self._stream = LogStream(self.log_path, offset=self.log_offset)
        self._finished: dict[str, TaskState] = {}  # array tasks seen final: they leave squeue (MinJobAge)
        self._silent_since: float | None = None
        self._polls = 0
        self._more_log = False
        self._tasks: ArrayLogStream | None = None
        self._task_request: TaskLogsRequest | None = None
        if self.array_log and self.expected_tasks:
            indices = [int(t.rsplit("_", 1)[1]) for t in self.expected_tasks if "_" in t]
            self._tasks = ArrayLogStream(self.array_log, indices, self.task_offsets)
        self._output: LogStream | ArrayLogStream = self._tasks or self._stream

    async def _probe(self, hook: AsyncSlurmSSHHook) -> tuple[JobStatus, bytes | dict[int, bytes]]:
        """Slurm's answer and the output read since the last poll: the job's file's next bytes, or an
        array's bytes by task index."""
        self._task_request = None
        if self._tasks is not None and (reads := self._tasks.reads()):
            self._task_request = TaskLogsRequest(self._tasks.prefix, self._tasks.suffix, reads)
        request = ProbeRequest(
            self.job_id,
            self.start_day,
            log_path=self.log_path,
            log_offset=self._stream.offset + self._stream.pending,
            use_sacct=self.use_sacct,
            task_logs=self._task_request,
        )
        final_before = {_task_index(job) for job in self._finished if "_" in job}
        status, chunk = await hook.probe(request, self.expected_tasks, self._finished)
        self._more_log = len(chunk) >= request.max_log_bytes
        if self._task_request is not None:
            chunks = split_task_logs(chunk, self._task_request.nonce)
            self._more_log = sum(map(len, chunks.values())) >= self._task_request.max_bytes
            if not self._more_log:  # every file was read to its end: a task final before is done
                self._tasks.drained.update(final_before)
            return status, chunks
        return status, chunk

    async def _judge(self, hook: AsyncSlurmSSHHook, answer: tuple[JobStatus, Any]) -> Any:
        status, chunk = answer
        self._polls += 1
        self._finished.update((t.job_id, t) for t in status.tasks if t.outcome.final)
        if isinstance(chunk, dict):
            self._on_lines(self._tasks.feed(chunk))
        elif chunk:
            self._on_lines(self._stream.feed(chunk))
        if status.final:
            if self._more_log:
                return AGAIN  # more output to read before the verdict
            self._on_lines(self._output.flush())
            return await self._final_event(hook, status)
        if status.outcome is Outcome.HELD:
            return self._job_event("held", status, tail=list(self._output.tail))
        self._silent_since, silent = self._silence(status, self._silent_since)
        if silent:
            return self._job_event("controller_silent", status, message=silent)
        unknown = self._unknown_for(status.outcome is Outcome.UNKNOWN and not status.controller_silent)
        if unknown is not None:
            waited = unknown[1]
            self.log.info(
                "Job %s state unknown for %.0fs (%s); asking again", self.job_id, waited, status.note
            )
            if waited > self.unknown_timeout:
                return self._job_event(
                    "lost",
                    status,
                    tail=list(self._output.tail),
                    message=f"no Slurm source knew job {self.job_id} for {waited:.0f}s ({status.note})",
                )
        return await self._while_alive(hook, status)

    # -- what the training watch overrides -------------------------------------------------------------
    def _on_lines(self, lines: list[str]) -> None:
        """The job's output lines of one poll into the task log, bounded per poll by the stream."""
        for line in self._output.to_log(lines):
            self.log.info("[slurm %s] %s", self.job_id, line)

    async def _final_event(self, hook: AsyncSlurmSSHHook, status: JobStatus) -> dict[str, Any]:
        return self._job_event(
            "final",
            status,
            tail=list(self._output.tail),
            polls=self._polls,
            connections=hook.connections_opened,
        )

    async def _while_alive(self, hook: AsyncSlurmSSHHook, status: JobStatus) -> Any:
        """The verdict while the job is neither final nor held nor lost: none, wait for the next poll."""
        return None

    def _job_event(self, kind: str, status: JobStatus | None = None, **payload: Any) -> dict[str, Any]:
        """An event about the job: its id, the log offset streamed so far, its (cut) Slurm status."""
        if status is not None:
            payload["status"] = event_status(status)
        if self._tasks is not None:
            payload["task_offsets"] = self._tasks.offsets
        return {"event": kind, "job_id": self.job_id, "log_offset": self._stream.offset, **payload}

    def _error_event(self, message: str) -> dict[str, Any]:
        return self._job_event("error", message=message)

    async def on_kill(self) -> None:
        """A user acted on the deferred task (mark failed, mark success or clear; Airflow 3.3.2 does not
        say which): cancel the Slurm job, but only if this try still owns it.

        The ownership check and the scancel are one locked remote command, so a newer try that adopted
        the job (a stale trigger, a late triggerer) never has it cancelled under it. Not called on a
        triggerer restart, so a restart never cancels a healthy job. A cleared task's new try sees the
        cancel mark and waits for the job to leave before it submits again.
        """
        if not self.cancel_on_kill:
            return
        hook = self._hook()
        try:
            if not (self.owner_token and self.owner_path):
                self.log.info("Task killed by a user: cancelling Slurm job %s", self.job_id)
                await hook.cancel(self.job_id)
                return
            now = int(time.time())
            command = cancel_if_owner_command(self.owner_path, self.job_id, self.owner_token, now)
            status, out, err = await hook.run_with_retry(command, attempts=3, log=self.log)
            answer = parse_cancel(status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
            if answer.state == "cancelled":
                self.log.warning(
                    "Task stopped by a user (marked failed/success or cleared): cancelled Slurm job %s, "
                    "owned by this try (%s)",
                    self.job_id,
                    self.owner_token,
                )
                await self._alert_cancelled()
            elif answer.state == "not-owner":
                self.log.warning(
                    "Task stopped by a user, but Slurm job %s now belongs to %s, not to this try (%s): "
                    "NOT cancelled",
                    self.job_id,
                    answer.owner,
                    self.owner_token,
                )
            elif answer.state == "no-owner":
                self.log.error(
                    "Task stopped by a user, but job %s has no owner file %s: NOT cancelled (no proof this "
                    "try owns it); cancel it by hand if it should stop",
                    self.job_id,
                    self.owner_path,
                )
            else:
                self.log.error("Cancelling job %s failed: %s", self.job_id, answer.text)
        finally:
            await hook.close()

    async def _alert_cancelled(self) -> None:
        """Tell a human that the job was cancelled: Airflow 3.3.2 runs no failure callback when a person
        marks a deferred task failed, so without this the run would fail silently. Best effort, bounded
        (``on_kill`` has 30 s in all); a cleared task's new try resumes, which the alert says."""
        ti = getattr(self, "task_instance", None)
        facts = {
            "job_id": self.job_id,
            "detail": (
                f"Slurm job {self.job_id} was cancelled because a person marked the deferred task failed "
                "or successful, or cleared it; a cleared task resumes from the latest complete checkpoint"
            ),
        }
        for key in ("dag_id", "run_id", "task_id", "map_index", "try_number"):
            if getattr(ti, key, None) is not None:
                facts[key] = getattr(ti, key)

        def send() -> None:
            from neoxflow.notifiers.factory import send_alert

            send_alert("cancelled", None, **facts)

        try:
            from asgiref.sync import sync_to_async

            await asyncio.wait_for(sync_to_async(send, thread_sensitive=False)(), timeout=15)
        except Exception as err:  # the cancel is done; a failed alert must not hide it
            self.log.warning("Could not send the cancel alert: %s: %s", type(err).__name__, err)
