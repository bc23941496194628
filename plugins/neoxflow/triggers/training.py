"""Watch a GPT-NeoX training job from the triggerer: Slurm state, the NeoX log, and its checkpoints.

Each poll is the Slurm layer's ONE probe command (squeue + scontrol + sacct + the next chunk of the log
by byte offset), on one reused asyncssh connection. The chunk is parsed by `LogFollower` (NeoX's line
format); its lines (bounded per poll, :mod:`neoxflow.slurm.logstream`) and a progress line for each NeoX
logging interval go to the task log. Every ``list_every`` polls, and at once when a
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

import asyncio
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.triggers.base import TriggerEvent

from neoxflow.hooks.slurm import is_host_key_error
from neoxflow.neox.checkpoint_listing import (
    checkpoint_to_dict,
    expectation_from_dict,
    new_complete_checkpoints,
)
from neoxflow.neox.logparse import CheckpointCommitted, Event, LogFollower, LogState, TrainStep
from neoxflow.neox.progress import stall_reason, summary_line
from neoxflow.pipeline.lock import DEFAULT_LEASE_S, parse_renew, renew_command
from neoxflow.slurm.commands import ProbeRequest
from neoxflow.slurm.logstream import LogStream
from neoxflow.slurm.states import Outcome
from neoxflow.triggers.checkpoint import fetch_listing
from neoxflow.triggers.event_state import event_status, offload_event
from neoxflow.triggers.slurm_job import SlurmJobTrigger
from neoxflow.triggers.watch_state import MAX_ERRORS, MAX_LOSS_POINTS, RECENT_STEPS, WatchState

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

    def serialize(self) -> tuple[str, dict[str, Any]]:
        classpath, kwargs = super().serialize()
        kwargs.update(
            {name: getattr(self, name) for name in WATCH_SETTINGS},
            watch=self.watch,
            carry=self.carry,
            lock_dir=self.lock_dir,
            lock_owner=self.lock_owner,
            lock_lease_s=self.lock_lease_s,
        )
        return classpath, kwargs

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

    def _lines(self, stream: LogStream, lines: list[str], watch: WatchState) -> None:
        """Log one poll's complete lines (bounded by the stream), remember the slice-end marker."""
        for line in lines:
            if SLICE_END_MARKER in line:
                watch.slice_end = line.strip()[-300:]
        for line in stream.to_log(lines):
            self.log.info("[slurm %s] %s", self.job_id, line)

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

    def _payload(self, kind: str, watch: WatchState, offset: int, **extra: Any) -> dict[str, Any]:
        progress = watch.progress(self.train_iters, self.seq_length)
        return self._event(
            kind,
            log_start=self.log_offset,
            log_offset=offset,
            watch=watch.to_dict(),
            progress=summary_line(progress),
            carry=self.carry,
            **extra,
        )

    async def _fire(self, hook, payload: dict[str, Any]) -> TriggerEvent:
        """The event, its bulky state written beside the log (Airflow logs each event whole); an
        ``error`` event (the cluster unreachable, a host key refused) goes out as it is."""
        if payload.get("event") == "error":
            return TriggerEvent(payload)
        return TriggerEvent(await offload_event(hook, self.log_path, payload, self.log))

    # -- the loop --------------------------------------------------------------------------------------
    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self._hook()
        watch = WatchState.from_dict(self.watch)
        follower = LogFollower(offset=self.log_offset)
        stream = LogStream(self.log_path)
        last_progress = watch.last_progress_at or time.time()
        unknown_since: float | None = None
        silent_since: float | None = None
        unreachable_since: float | None = None
        failures = polls = since_listing = 0
        try:
            while True:
                request = ProbeRequest(
                    self.job_id,
                    self.start_day,
                    log_path=self.log_path,
                    log_offset=follower.offset + follower.pending,
                    use_sacct=self.use_sacct,
                )
                try:
                    status, chunk = await hook.probe(request, self.expected_tasks)
                    polls += 1
                    failures, unreachable_since = 0, None
                except Exception as err:
                    if is_host_key_error(err):
                        yield await self._fire(
                            hook,
                            self._payload(
                                "error", watch, follower.offset, message=f"SSH host key rejected: {err}"
                            ),
                        )
                        return
                    failures += 1
                    unreachable_since = unreachable_since or time.monotonic()
                    if time.monotonic() - unreachable_since > self.unreachable_timeout:
                        message = f"cluster unreachable for {self.unreachable_timeout:.0f}s: {err}"
                        yield await self._fire(
                            hook, self._payload("error", watch, follower.offset, message=message)
                        )
                        return
                    wait = min(60.0, self.poll_interval * 2 ** min(failures, 6)) * random.uniform(0.5, 1.5)
                    self.log.warning("Poll of job %s failed (%s); retrying in %.1fs", self.job_id, err, wait)
                    await asyncio.sleep(wait)
                    continue

                now = time.time()
                commit_seen = False
                if chunk:
                    self._lines(stream, stream.feed(chunk), watch)
                    before = follower.lines
                    events = follower.feed(chunk)
                    follower.state = LogState()  # the watch keeps what matters, bounded
                    if follower.lines > before:
                        watch.lines += follower.lines - before
                        last_progress = now
                    self._absorb(watch, events)
                    commit_seen = any(isinstance(e, CheckpointCommitted) for e in events)
                more_log = len(chunk) >= request.max_log_bytes

                if status.final:
                    if more_log:
                        continue  # read the rest of the log before the verdict
                    self._lines(stream, stream.flush(), watch)
                    watch.absorb(follower.flush())
                    extra: dict[str, Any] = {}
                    try:
                        found = await self._list(hook, watch)
                    except Exception as err:  # the operator lists again itself
                        found, extra["listing_error"] = [], f"{type(err).__name__}: {err}"
                    if found:
                        watch.last_checkpoint = found[-1]["iteration"]
                    watch.last_progress_at = last_progress
                    yield await self._fire(
                        hook,
                        self._payload(
                            "final",
                            watch,
                            follower.offset,
                            status=event_status(status),
                            checkpoints=found,
                            tail=list(stream.tail),
                            polls=polls,
                            connections=hook.connections_opened,
                            **extra,
                        ),
                    )
                    return
                if status.outcome is Outcome.HELD:
                    watch.last_progress_at = last_progress
                    yield await self._fire(
                        hook,
                        self._payload(
                            "held",
                            watch,
                            follower.offset,
                            status=event_status(status),
                            tail=list(stream.tail),
                        ),
                    )
                    return
                silent_since, silent = self._silence(status, silent_since)
                if silent:
                    watch.last_progress_at = last_progress
                    yield await self._fire(
                        hook,
                        self._payload(
                            "controller_silent",
                            watch,
                            follower.offset,
                            status=event_status(status),
                            message=silent,
                        ),
                    )
                    return
                if status.outcome is Outcome.UNKNOWN and not status.controller_silent:
                    unknown_since = unknown_since or time.monotonic()
                    waited = time.monotonic() - unknown_since
                    if waited > self.unknown_timeout:
                        message = f"no Slurm source knew job {self.job_id} for {waited:.0f}s ({status.note})"
                        yield await self._fire(
                            hook,
                            self._payload(
                                "lost",
                                watch,
                                follower.offset,
                                status=event_status(status),
                                tail=list(stream.tail),
                                message=message,
                            ),
                        )
                        return
                else:
                    unknown_since = None

                if status.outcome is Outcome.ACTIVE:  # the job lives: keep its folder's lease
                    lost = await self._renew_lock(hook, watch, now)
                    if lost is not None:
                        watch.last_progress_at = last_progress
                        yield await self._fire(
                            hook,
                            self._payload(
                                "lock_lost", watch, follower.offset, status=event_status(status), **lost
                            ),
                        )
                        return

                running = status.state == "RUNNING"
                if not running and status.outcome is Outcome.ACTIVE:
                    last_progress = now  # queued or starting: the stall window counts from RUNNING

                since_listing += 1
                if self.save_dir and (commit_seen or since_listing >= self.list_every):
                    since_listing = 0
                    try:
                        found = await self._list(hook, watch)
                    except Exception as err:  # a failed listing is not a verdict: try next time
                        self.log.warning("Listing %s failed: %s", self.save_dir, err)
                        found = []
                    if found:
                        newest = found[-1]
                        watch.last_checkpoint = newest["iteration"]
                        watch.last_progress_at = now
                        self.log.info(
                            "Complete checkpoint %s (%d new); %s",
                            newest["tag"],
                            len(found),
                            summary_line(watch.progress(self.train_iters, self.seq_length)),
                        )
                        yield await self._fire(
                            hook,
                            self._payload(
                                "checkpoint",
                                watch,
                                follower.offset,
                                iteration=newest["iteration"],
                                path=newest["path"],
                                tag=newest["tag"],
                                checkpoints=found,
                                status=event_status(status),
                            ),
                        )
                        return

                if running and self.stall_window and not more_log and now - last_progress > self.stall_window:
                    watch.last_progress_at = last_progress
                    reason = stall_reason(last_progress, now, self.stall_window)
                    yield await self._fire(
                        hook,
                        self._payload(
                            "stalled",
                            watch,
                            follower.offset,
                            reason=reason,
                            status=event_status(status),
                            tail=list(stream.tail),
                        ),
                    )
                    return
                if not more_log:
                    await asyncio.sleep(self.poll_interval)
        finally:
            await hook.close()
