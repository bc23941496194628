"""What the training watch remembers between deferrals (:class:`WatchState`), bounded whatever the run's
length: the recent NeoX logging intervals (throughput medians), a down-sampled loss curve, the newest
complete checkpoint, the errors seen, the lease renewal's timing. The trigger
(:mod:`neoxflow.triggers.training`) folds each poll's parsed log events in; the operator reads progress,
the verdict's log state and the loss curve from it.

A `WatchState` is a :class:`~neoxflow.neox.logstate.LogState` with small bounds: the events are folded
by `LogState.update`, the one fold, and only what a watch adds (the loss curve, the highest iteration,
the lease) is kept here. Its dict keeps the keys of earlier releases (``recent`` for the steps), since it
travels in serialised triggers and event state files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from neoxflow.neox.logparse import Event, TrainStep, event_from_dict, event_to_dict
from neoxflow.neox.logstate import LogState
from neoxflow.neox.progress import Progress, compute_progress
from neoxflow.neox.report import downsample

__all__ = ["MAX_ERRORS", "MAX_LOSS_POINTS", "RECENT_STEPS", "WatchState"]

RECENT_STEPS = 10  # log intervals kept for the throughput medians (progress.compute_progress window)
MAX_LOSS_POINTS = 500  # loss-curve points carried between deferrals (down-sampled beyond that)
MAX_ERRORS = 5


@dataclass
class WatchState(LogState):
    """What the watch remembers between deferrals; bounded whatever the run's length.

    ``steps`` (also ``recent``) are the last RECENT_STEPS logging intervals; ``last_iteration`` is the
    highest iteration ever logged (the steps behind it are gone). ``last_checkpoint`` is the newest
    COMPLETE checkpoint reported so far; ``last_progress_at`` (epoch seconds) the last time a new log
    line or checkpoint arrived, for stall detection.
    """

    max_steps = RECENT_STEPS
    max_validations = 0  # the watch does not report validations
    max_committed = MAX_ERRORS
    max_errors = MAX_ERRORS

    loss_points: list[tuple[int, float]] = field(default_factory=list)
    last_iteration: int | None = None
    total: int | None = None
    slice_end: str | None = None
    last_checkpoint: int | None = None
    last_progress_at: float | None = None
    lines: int = 0
    lock_renewed_at: float | None = None  # epoch s of this run's last lease renewal by the watch
    lock_until: int | None = None  # the lease's expiry that renewal set
    lock_retry_at: float | None = None  # after a failed renewal command: not before this
    lock_lost: str | None = None  # the lock command's answer once someone else holds the lease

    @property
    def recent(self) -> list[TrainStep]:
        """The recent logging intervals (the name the watch's dict has always used)."""
        return self.steps

    def absorb(self, events: Iterable[Event]) -> bool:
        """Fold parsed events in; True when a training step was among them (worth a progress line)."""
        stepped = False
        for event in events:
            self.update(event)
            if isinstance(event, TrainStep):
                stepped = True
                self.last_iteration = max(self.last_iteration or 0, event.iteration)
                self.total = event.total
                if event.lm_loss is not None:
                    # a resumed attempt re-logs iterations: keep the newest value of each
                    self.loss_points = [p for p in self.loss_points if p[0] < event.iteration]
                    self.loss_points.append((event.iteration, event.lm_loss))
                    if len(self.loss_points) > 2 * MAX_LOSS_POINTS:
                        self.loss_points = downsample(self.loss_points, MAX_LOSS_POINTS)
        return stepped

    def loss_at(self, iteration: int) -> float | None:
        """The last lm_loss NeoX logged at or before ``iteration`` (None if none is remembered)."""
        known = [(i, v) for i, v in self.loss_points if i <= iteration]
        known += [
            (s.iteration, s.lm_loss) for s in self.steps if s.iteration <= iteration and s.lm_loss is not None
        ]
        return max(known)[1] if known else None

    def log_state(self) -> LogState:
        """A `LogState` good enough for `training_verdict` and `compute_progress`."""
        return LogState(
            steps=list(self.steps),
            committed=list(self.committed),
            resumed_from=self.resumed_from,
            latest_missing=self.latest_missing,
            errors=list(self.errors),
        )

    def progress(self, train_iters: int | None = None, seq_length: int | None = None) -> Progress:
        return compute_progress(
            self.log_state(),
            train_iters=train_iters,
            seq_length=seq_length,
            last_checkpoint=self.last_checkpoint,
            window=RECENT_STEPS,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "recent": [event_to_dict(s) for s in self.steps],
            "loss_points": [[i, v] for i, v in self.loss_points],
            "last_iteration": self.last_iteration,
            "total": self.total,
            "resumed_from": self.resumed_from,
            "latest_missing": self.latest_missing,
            "committed": list(self.committed),
            "errors": [event_to_dict(e) for e in self.errors],
            "slice_end": self.slice_end,
            "last_checkpoint": self.last_checkpoint,
            "last_progress_at": self.last_progress_at,
            "lines": self.lines,
            "lock_renewed_at": self.lock_renewed_at,
            "lock_until": self.lock_until,
            "lock_retry_at": self.lock_retry_at,
            "lock_lost": self.lock_lost,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> WatchState:
        data = data or {}
        return cls(
            steps=[event_from_dict(s) for s in data.get("recent", [])],
            loss_points=[(int(i), float(v)) for i, v in data.get("loss_points", [])],
            last_iteration=data.get("last_iteration"),
            total=data.get("total"),
            resumed_from=data.get("resumed_from"),
            latest_missing=bool(data.get("latest_missing", False)),
            committed=list(data.get("committed", [])),
            errors=[event_from_dict(e) for e in data.get("errors", [])],
            slice_end=data.get("slice_end"),
            last_checkpoint=data.get("last_checkpoint"),
            last_progress_at=data.get("last_progress_at"),
            lines=int(data.get("lines", 0)),
            lock_renewed_at=data.get("lock_renewed_at"),
            lock_until=data.get("lock_until"),
            lock_retry_at=data.get("lock_retry_at"),
            lock_lost=data.get("lock_lost"),
        )
