"""Watch a GPT-NeoX training job from the triggerer: Slurm state, the NeoX log, and its checkpoints.

Each poll is the Slurm layer's ONE probe command (squeue + scontrol + sacct + the next chunk of the log
by byte offset), on one reused asyncssh connection; the loop and the Slurm verdicts are
:class:`SlurmJobTrigger`'s, this class adds only the NeoX part. The chunk is cut into lines once (the
job watch's `LogStream`) and those lines are parsed (`neoxflow.neox.logparse.parse_lines`); the lines
(bounded per poll, :mod:`neoxflow.slurm.logstream`) and a progress line for each NeoX logging interval go
to the task log. Every ``list_every`` polls, and at once when a
``Checkpoint global_stepN is ready now!`` line shows up, one more command lists the save folder
(ckpt_listing.py) and the completeness rule decides which checkpoints are real.

The trigger returns (and the operator re-defers) at each new complete checkpoint, so the state carried
across deferrals must stay small: the byte offset and a `WatchState` (recent log intervals, a
down-sampled loss curve, the newest complete checkpoint) - never every step of a 143k-iteration run.

Events (payload dicts, JSON-serialisable, each with ``job_id``, ``log_start``/``log_offset`` (the bytes
this watch streamed), ``progress`` and ``watch``/``carry``/``tail``; those three travel in a file beside
the log and the event holds a ``state`` pointer instead, see :mod:`neoxflow.triggers.event_state`):

- ``checkpoint``: new complete checkpoint(s) appeared (``iteration``/``path`` of the newest,
  ``checkpoints`` all of them); the job is still running.
- ``stalled``: no new log line and no new checkpoint within ``stall_window`` while RUNNING (``reason``).
- ``final`` / ``held`` / ``lost`` / ``error``: as :class:`SlurmJobTrigger`, plus the checkpoints a last
  listing found (``checkpoints``) and ``listing_error`` if that listing failed.
- ``controller_silent``: squeue and scontrol have not answered for ``unknown_timeout`` (once per watch,
  ``silent_alerted``); an outage is not a verdict, the operator alerts and re-defers.
- ``lock_lost``: renewing the run's checkpoint-folder lease found it held by someone else (``holder``,
  ``until``, ``message``); the job is still running and is NOT cancelled (cancelling could kill the
  rightful run's job if ours is the stray one; a human decides). The operator alerts and re-defers; the
  watch then stops renewing (``watch.lock_lost``).

The lease (neoxflow.pipeline.lock) is renewed while the job lives (pending or running): at the first
poll of a watch and then every third of the lease, so a run outliving the 6 h lease (24 h slices) keeps
its folder, and a run whose watch is gone (triggerer down for more than the lease, DAG deleted) lets the
folder go once the lease runs out. A failed renewal command is retried a minute later.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from airflow.triggers.base import TriggerEvent

from neoxflow.neox.checkpoint_listing import (
    checkpoint_to_dict,
    expectation_from_dict,
    new_complete_checkpoints,
)
from neoxflow.neox.logparse import CheckpointCommitted, Event, TrainStep, parse_lines
from neoxflow.neox.progress import stall_reason, summary_line
from neoxflow.neox.watch_state import MAX_ERRORS, MAX_LOSS_POINTS, RECENT_STEPS, WatchState
from neoxflow.pipeline.lock import DEFAULT_LEASE_S, parse_renew, renew_command
from neoxflow.slurm.parse import JobStatus
from neoxflow.slurm.states import Outcome
from neoxflow.triggers.base import AGAIN
from neoxflow.triggers.checkpoint import fetch_listing
from neoxflow.triggers.event_state import offload_event
from neoxflow.triggers.slurm_job import JOB_ARGUMENTS, SlurmJobTrigger

__all__ = [
    "MAX_ERRORS",
    "MAX_LOSS_POINTS",
    "RECENT_STEPS",
    "SLICE_END_MARKER",
    "NeoXTrainingTrigger",
    "WatchState",
    "lock_renewal_due",
]

#: Printed by the batch templates after a clean stop before the time limit (train*.sbatch).
SLICE_END_MARKER = "NEOXFLOW slice_end"
MAX_PROGRESS_LINES = 20  # progress lines per poll: one per NeoX logging interval, the newest if more
LOCK_RETRY_S = 60.0  # a renewal that could not run (SSH error) is tried again this much later


def lock_renewal_due(watch: WatchState, now: float, lease_s: float) -> bool:
    """True when the lease should be renewed now: never renewed by this watch, or a third of the lease
    has passed since the last renewal (two thirds are still left, so two failed tries fit before expiry),
    and a failed try is at least LOCK_RETRY_S old."""
    if watch.lock_lost:
        return False
    if watch.lock_retry_at is not None and now < watch.lock_retry_at:
        return False
    return watch.lock_renewed_at is None or now - watch.lock_renewed_at >= lease_s / 3


def _utc(epoch: int | None) -> str:
    if epoch is None:
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


#: the watch's settings, the same attributes on the operator and the trigger: what the operator hands
#: over and what the trigger serializes
WATCH_SETTINGS = (
    "save_dir",
    "listing_script",
    "listing_python",
    "expectation",
    "list_every",
    "stall_window",
    "train_iters",
    "seq_length",
)


class NeoXTrainingTrigger(SlurmJobTrigger):
    """Follow a NeoX training job: Slurm state, log progress, complete checkpoints, stalls.

    :param log_path: the job's NeoX log (rank 0's output, ``srun -l`` labels allowed), read by offset.
    :param save_dir: NeoX ``save`` folder; None disables the checkpoint watch.
    :param listing_script: remote path of ckpt_listing.py (include/cluster shipped to the cluster).
    :param listing_python: interpreter on the login node for the listing.
    :param expectation: `Expectation` fields of a complete checkpoint (None = stand-in layout).
    :param list_every: list the save folder every N polls (and on each commit line).
    :param stall_window: seconds without a new log line or checkpoint while RUNNING -> ``stalled``.
    :param train_iters: the run's target (progress percentage and ETA).
    :param seq_length: tokens per sample (tokens/s in the progress line).
    :param watch: the `WatchState` dict carried from the previous deferral.
    :param lock_dir: the run's checkpoint-folder lock (``<save>.lock``); with ``lock_owner`` the watch
        renews that lease while the job lives. None: no renewal.
    :param lock_owner: the owner token the lock task acquired with.
    :param lock_lease_s: the lease each renewal grants (the acquisition's lease).
    :param carry: the operator's own small state (job record, checkpoints so far), returned untouched in
        every event: ``dag.test()`` in Airflow 3.3.2 resumes with ``{"event": ...}`` only, dropping the
        ``kwargs`` given to ``defer()``, so the operator must not rely on them.
    """

    SERIALIZED = (
        *JOB_ARGUMENTS,
        *WATCH_SETTINGS,
        "watch",
        "carry",
        "lock_dir",
        "lock_owner",
        "lock_lease_s",
    )

    def __init__(
        self,
        *,
        ssh_conn_id: str,
        job_id: str,
        start_day: str,
        log_path: str | None = None,
        log_offset: int = 0,
        save_dir: str | None = None,
        listing_script: str | None = None,
        listing_python: str = "python3",
        expectation: Mapping[str, Any] | None = None,
        list_every: int = 6,
        stall_window: float | None = None,
        train_iters: int | None = None,
        seq_length: int | None = None,
        watch: Mapping[str, Any] | None = None,
        carry: Mapping[str, Any] | None = None,
        lock_dir: str | None = None,
        lock_owner: str | None = None,
        lock_lease_s: int = DEFAULT_LEASE_S,
        poll_interval: float = 10.0,
        unknown_timeout: float = 900.0,
        unreachable_timeout: float = 3600.0,
        cancel_on_kill: bool = True,
        use_sacct: bool = True,
        expected_tasks: list[str] | None = None,
        owner_token: str | None = None,
        owner_path: str | None = None,
        silent_alerted: bool = False,
    ):
        super().__init__(
            ssh_conn_id=ssh_conn_id,
            job_id=job_id,
            start_day=start_day,
            expected_tasks=expected_tasks,
            log_path=log_path,
            log_offset=log_offset,
            poll_interval=poll_interval,
            unknown_timeout=unknown_timeout,
            unreachable_timeout=unreachable_timeout,
            cancel_on_kill=cancel_on_kill,
            use_sacct=use_sacct,
            owner_token=owner_token,
            owner_path=owner_path,
            silent_alerted=silent_alerted,
        )
        if save_dir and not listing_script:
            raise ValueError("listing_script (remote path of ckpt_listing.py) is required with save_dir")
        if list_every < 1:
            raise ValueError(f"list_every must be >= 1, got {list_every}")
        if stall_window is not None and stall_window <= 0:
            raise ValueError(f"stall_window must be positive, got {stall_window}")
        self.save_dir = save_dir
        self.listing_script = listing_script
        self.listing_python = listing_python
        self.expectation = dict(expectation) if expectation is not None else None
        self.list_every = list_every
        self.stall_window = stall_window
        self.train_iters = train_iters
        self.seq_length = seq_length
        self.watch = dict(watch) if watch is not None else None
        self.carry = dict(carry) if carry is not None else None
        if lock_owner and lock_dir:
            renew_command(lock_dir, lock_owner, lock_lease_s)  # refuse unsafe values now, not in the loop
            if lock_lease_s <= 0:
                raise ValueError(f"lock_lease_s must be positive, got {lock_lease_s}")
        self.lock_dir = lock_dir
        self.lock_owner = lock_owner
        self.lock_lease_s = lock_lease_s

    # -- helpers ---------------------------------------------------------------------------------------
    async def _list(self, hook, watch: WatchState) -> list[dict[str, Any]]:
        """New complete checkpoints (dicts, oldest first) since the last one reported."""
        if not self.save_dir:
            return []
        floor = watch.last_checkpoint
        listing = await fetch_listing(
            hook,
            self.listing_python,
            self.listing_script,
            self.save_dir,
            0 if floor is None else floor + 1,
        )
        found = new_complete_checkpoints(listing, expectation_from_dict(self.expectation), floor)
        # what the checkpoint's Asset event tells (operators/training.py): its loss and its job
        return [
            {**checkpoint_to_dict(c), "loss": watch.loss_at(c.iteration), "job_id": self.job_id}
            for c in found
        ]

    async def _renew_lock(self, hook, watch: WatchState, now: float) -> dict[str, Any] | None:
        """Renew the run's lease if due; the ``lock_lost`` event's fields when someone else holds it.

        Never cancels anything: a lost lease is reported, the job keeps running.
        """
        if not (self.lock_dir and self.lock_owner) or not lock_renewal_due(watch, now, self.lock_lease_s):
            return None
        try:
            status, out, _ = await hook.run(renew_command(self.lock_dir, self.lock_owner, self.lock_lease_s))
            answer = parse_renew(status, out.decode("utf-8", "replace"))
        except Exception as err:  # a failed renewal is not a verdict: the lease has time left, try later
            watch.lock_retry_at = now + LOCK_RETRY_S
            self.log.warning(
                "Renewing lock %s failed (%s: %s); trying again in %.0fs",
                self.lock_dir,
                type(err).__name__,
                err,
                LOCK_RETRY_S,
            )
            return None
        watch.lock_retry_at = None
        if answer.state == "renewed":
            watch.lock_renewed_at, watch.lock_until = now, answer.until
            self.log.info(
                "Renewed lock %s for %s until %s (job %s lives)",
                self.lock_dir,
                self.lock_owner,
                _utc(answer.until),
                self.job_id,
            )
            return None
        watch.lock_lost = answer.text
        message = (
            f"lock {self.lock_dir} is no longer ours ({self.lock_owner}): held by {answer.holder} until "
            f"{_utc(answer.until)}; job {self.job_id} keeps running and was NOT cancelled - check that "
            "two runs are not training into one checkpoint folder"
        )
        self.log.error("%s", message)
        return {"holder": answer.holder, "until": answer.until, "message": message}

    def _absorb(self, watch: WatchState, events: list[Event]) -> None:
        """Fold one poll's events into the watch, with a progress line at each NeoX logging interval
        (each ``iteration X/Y`` line; of a poll that brought more, the newest MAX_PROGRESS_LINES)."""
        steps = sum(isinstance(e, TrainStep) for e in events)
        seen = 0
        for event in events:
            if watch.absorb([event]):
                seen += 1
                if steps - seen < MAX_PROGRESS_LINES:
                    progress = summary_line(watch.progress(self.train_iters, self.seq_length))
                    self.log.info("[progress] %s", progress)

    async def _fire(self, hook, payload: dict[str, Any]) -> TriggerEvent:
        """The event, its bulky state written beside the log (Airflow logs each event whole); an
        ``error`` event (the cluster unreachable, a host key refused) goes out as it is."""
        if payload.get("event") == "error":
            return TriggerEvent(payload)
        return TriggerEvent(await offload_event(hook, self.log_path, payload, self.log))

    # -- what the training watch adds to the Slurm job watch -------------------------------------------
    def _begin(self) -> None:
        super()._begin()
        self._watch = WatchState.from_dict(self.watch)
        self._last_progress = self._watch.last_progress_at or time.time()
        self._since_listing = 0
        self._now = time.time()
        self._commit_seen = False

    async def _judge(self, hook, answer: tuple[JobStatus, bytes]) -> Any:
        self._now, self._commit_seen = time.time(), False
        return await super()._judge(hook, answer)

    def _on_lines(self, lines: list[str]) -> None:
        """Log one poll's complete lines (bounded by the stream), remember the slice-end marker, and fold
        the NeoX events of those same lines into the watch."""
        watch = self._watch
        for line in lines:
            if SLICE_END_MARKER in line:
                watch.slice_end = line.strip()[-300:]
        super()._on_lines(lines)
        if lines:
            watch.lines += len(lines)
            self._last_progress = self._now
        events = parse_lines(lines)
        self._absorb(watch, events)
        self._commit_seen = self._commit_seen or any(isinstance(e, CheckpointCommitted) for e in events)

    def _job_event(self, kind: str, status: JobStatus | None = None, **payload: Any) -> dict[str, Any]:
        """Every event carries the watch (moved to a file by `_fire`), the progress line and ``carry``."""
        watch = self._watch
        watch.last_progress_at = self._last_progress
        progress = watch.progress(self.train_iters, self.seq_length)
        return super()._job_event(
            kind,
            status,
            log_start=self.log_offset,
            watch=watch.to_dict(),
            progress=summary_line(progress),
            carry=self.carry,
            **payload,
        )

    async def _final_event(self, hook, status: JobStatus) -> dict[str, Any]:
        """The final event with the complete checkpoints a last listing found."""
        extra: dict[str, Any] = {}
        try:
            found = await self._list(hook, self._watch)
        except Exception as err:  # the operator lists again itself
            found, extra["listing_error"] = [], f"{type(err).__name__}: {err}"
        if found:
            self._watch.last_checkpoint = found[-1]["iteration"]
        return self._job_event(
            "final",
            status,
            checkpoints=found,
            tail=list(self._stream.tail),
            polls=self._polls,
            connections=hook.connections_opened,
            **extra,
        )

    async def _while_alive(self, hook, status: JobStatus) -> Any:
        """Renew the lease, look for new complete checkpoints, notice a stall; read on at once while
        more of the log is waiting."""
        now = self._now
        if status.outcome is Outcome.ACTIVE:  # the job lives: keep its folder's lease
            lost = await self._renew_lock(hook, self._watch, now)
            if lost is not None:
                return self._job_event("lock_lost", status, **lost)
        running = status.state == "RUNNING"
        if not running and status.outcome is Outcome.ACTIVE:
            self._last_progress = now  # queued or starting: the stall window counts from RUNNING
        checkpoint = await self._checkpoint_event(hook, status)
        if checkpoint is not None:
            return checkpoint
        quiet = now - self._last_progress
        if running and self.stall_window and not self._more_log and quiet > self.stall_window:
            reason = stall_reason(self._last_progress, now, self.stall_window)
            return self._job_event("stalled", status, reason=reason, tail=list(self._stream.tail))
        return AGAIN if self._more_log else None

    async def _checkpoint_event(self, hook, status: JobStatus) -> dict[str, Any] | None:
        """List the save folder every ``list_every`` polls and at each commit line; the ``checkpoint``
        event when new complete checkpoints are there. A failed listing is not a verdict."""
        self._since_listing += 1
        if not (self.save_dir and (self._commit_seen or self._since_listing >= self.list_every)):
            return None
        self._since_listing = 0
        try:
            found = await self._list(hook, self._watch)
        except Exception as err:  # try next time
            self.log.warning("Listing %s failed: %s", self.save_dir, err)
            return None
        if not found:
            return None
        newest = found[-1]
        self._watch.last_checkpoint = newest["iteration"]
        self._last_progress = self._now
        self.log.info(
            "Complete checkpoint %s (%d new); %s",
            newest["tag"],
            len(found),
            summary_line(self._watch.progress(self.train_iters, self.seq_length)),
        )
        return self._job_event(
            "checkpoint",
            status,
            iteration=newest["iteration"],
            path=newest["path"],
            tag=newest["tag"],
            checkpoints=found,
        )
