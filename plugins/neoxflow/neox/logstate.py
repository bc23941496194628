"""What a NeoX log has shown so far (:class:`LogState`), and following a growing log (:class:`LogFollower`).

`LogState.update` is the one fold of parsed events into a run's state: the whole-log readers (the report,
the run story, the GPU checks) use it unbounded, the training watch's :class:`~neoxflow.neox.watch_state.
WatchState` is a `LogState` with bounds. `LogFollower` turns byte chunks into events; it cuts lines with
the Slurm log stream (:class:`~neoxflow.slurm.logstream.LogStream`), the same splitter the triggers use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from neoxflow.neox.logparse import (
    CheckpointCommitted,
    ErrorLine,
    Event,
    LatestMissing,
    ResumeInfo,
    TrainStep,
    Validation,
    event_from_dict,
    event_to_dict,
    parse_lines,
)
from neoxflow.slurm.logstream import LogStream

__all__ = ["LogFollower", "LogState"]

_MAX_ERRORS = 20


def _keep_newest(items: list, limit: int | None) -> None:
    """Drop all but the newest ``limit`` items (in place); None keeps everything."""
    if limit is not None and len(items) > limit:
        del items[: len(items) - limit]


@dataclass
class LogState:
    """What the log has shown so far, folded from events; small enough to serialise between polls.

    ``steps`` keeps every training-log line (one per ``log_interval``); when a resumed attempt logs an
    iteration again, the later line wins in `loss_curve`. ``committed`` lists the commit lines seen,
    in order. ``errors`` keeps the last few failure lines (the first is usually the cause, the last
    the summary, so both ends are kept).
    """

    steps: list[TrainStep] = field(default_factory=list)
    validations: list[Validation] = field(default_factory=list)
    committed: list[int] = field(default_factory=list)
    resumed_from: int | None = None
    latest_missing: bool = False
    errors: list[ErrorLine] = field(default_factory=list)

    #: bounds of what is kept (None: everything); the training watch's `WatchState` sets small ones
    max_steps: ClassVar[int | None] = None
    max_validations: ClassVar[int | None] = None
    max_committed: ClassVar[int | None] = None
    max_errors: ClassVar[int] = _MAX_ERRORS

    def update(self, event: Event) -> None:
        """Fold one event in; duplicate lines printed by several ranks count once. The one fold of
        events into a run's state, bounded by the class's ``max_*`` limits."""
        if isinstance(event, TrainStep):
            if self.steps and self.steps[-1].iteration == event.iteration:
                self.steps[-1] = event
            else:
                self.steps.append(event)
            _keep_newest(self.steps, self.max_steps)
        elif isinstance(event, Validation):
            self.validations.append(event)
            _keep_newest(self.validations, self.max_validations)
        elif isinstance(event, CheckpointCommitted):
            if event.iteration not in self.committed:
                self.committed.append(event.iteration)
                _keep_newest(self.committed, self.max_committed)
        elif isinstance(event, ResumeInfo):
            self.resumed_from = event.iteration
        elif isinstance(event, LatestMissing):
            self.latest_missing = True
        elif isinstance(event, ErrorLine):
            if len(self.errors) >= self.max_errors:
                del self.errors[1]  # keep the first (usually the cause) and the newest
            self.errors.append(event)

    def extend(self, events: Iterable[Event]) -> LogState:
        for event in events:
            self.update(event)
        return self

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> LogState:
        return cls().extend(events)

    @property
    def last_step(self) -> TrainStep | None:
        return self.steps[-1] if self.steps else None

    @property
    def last_iteration(self) -> int | None:
        """The highest iteration the log reported (not necessarily saved)."""
        return max((s.iteration for s in self.steps), default=None)

    @property
    def total(self) -> int | None:
        """train_iters as NeoX printed it in the newest step line."""
        return self.steps[-1].total if self.steps else None

    def loss_curve(self) -> list[tuple[int, float]]:
        """``(iteration, lm_loss)`` sorted by iteration; a re-logged iteration keeps its newest value."""
        points: dict[int, float] = {}
        for step in self.steps:
            if step.lm_loss is not None:
                points[step.iteration] = step.lm_loss
        return sorted(points.items())

    def to_dict(self) -> dict:
        return {
            "steps": [event_to_dict(s) for s in self.steps],
            "validations": [event_to_dict(v) for v in self.validations],
            "committed": list(self.committed),
            "resumed_from": self.resumed_from,
            "latest_missing": self.latest_missing,
            "errors": [event_to_dict(e) for e in self.errors],
        }

    @classmethod
    def from_dict(cls, data: dict) -> LogState:
        return cls(
            steps=[event_from_dict(s) for s in data.get("steps", [])],
            validations=[event_from_dict(v) for v in data.get("validations", [])],
            committed=list(data.get("committed", [])),
            resumed_from=data.get("resumed_from"),
            latest_missing=bool(data.get("latest_missing", False)),
            errors=[event_from_dict(e) for e in data.get("errors", [])],
        )


class LogFollower:
    """Turns byte chunks of a growing log into events, one complete line at a time.

    The watcher reads the remote log from a byte offset; a chunk may end inside a line or inside a
    multi-byte UTF-8 character. The lines are cut by a `LogStream` (bytes first, decoded whole, the
    unfinished tail kept for the next chunk, a runaway line longer than ``max_line_bytes`` dropped),
    then parsed. `offset` is where a fresh follower should start after a restart: the end of the last
    complete line, so nothing is lost or read twice.
    """

    def __init__(self, offset: int = 0, max_line_bytes: int = 1 << 20) -> None:
        self.stream = LogStream(offset=offset, max_line_bytes=max_line_bytes)
        self.state = LogState()
        self.lines = 0

    @property
    def offset(self) -> int:
        """Byte offset just past the last complete line consumed."""
        return self.stream.offset

    @property
    def pending(self) -> int:
        """Bytes received but not yet parsed (an unfinished last line)."""
        return self.stream.pending

    def feed(self, chunk: bytes) -> list[Event]:
        """Consume the next bytes of the log; return the events of the lines it completed."""
        return self._parse(self.stream.feed(chunk))

    def flush(self) -> list[Event]:
        """The job has ended: parse the unfinished last line too (it will not grow any more)."""
        return self._parse(self.stream.flush())

    def _parse(self, lines: list[str]) -> list[Event]:
        self.lines += len(lines)
        events = parse_lines(lines)
        self.state.extend(events)
        return events
