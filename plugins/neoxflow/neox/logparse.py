"""Read GPT-NeoX's real training output into typed events, and judge how a run ended.

The watcher follows a job's log on the cluster by byte offset. What it reads is NeoX's rank-0 output
mixed with DeepSpeed's INFO lines, Python warnings, tracebacks and Slurm's own messages, often behind
`srun -l` task labels (``0: ``, ``12: ``), sometimes with ANSI colours, and always with a last line that
may still be half written. Everything here is pure: a line (or a byte chunk) goes in, events come out.
The formats were read from real runs (tests/fixtures/neox-run/) and megatron/logging.py:

    samples/sec: 13.340 | iteration     1000/   10000 | elapsed time per iteration (ms): 9595.6 |
      learning rate: 2.989E-05 | approx flops per GPU: 193.1TFLOPS | lm_loss: 8.667910E-01 |
      loss scale: 256.0 | number of skipped iterations:   0 | number of nan iterations:   0 |
    validation results at iteration N | lm_loss value: X | lm_loss_ppl value: Y |
    [Torch] Checkpoint global_step60 is ready now!
    Loading checkpoint and starting from iteration 60
    Unable to find latest file at /fsx/checkpoints/tiny/latest, ...

The exit code alone cannot say whether training finished: with pipe_parallel_size >= 1 NeoX exits 1
after committing the final checkpoint (its end-of-training evaluation crashes). `training_verdict`
therefore decides from the log and the complete checkpoints, and uses the exit code only as a hint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

__all__ = [
    "CheckpointCommitted",
    "ErrorLine",
    "Event",
    "LatestMissing",
    "LogFollower",
    "LogState",
    "ResumeInfo",
    "TrainStep",
    "Validation",
    "Verdict",
    "clean_line",
    "event_from_dict",
    "event_to_dict",
    "parse_line",
    "parse_lines",
    "parse_text",
    "training_verdict",
]


# --------------------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class TrainStep:
    """One NeoX training-log line (printed every ``log_interval`` iterations by rank 0).

    Values are averages over the last log interval, as NeoX prints them. ``tflops`` is NeoX's
    "approx flops per GPU" converted to TFLOPS whatever unit it printed (GFLOPS on slow steps).
    ``tflops`` counts what the GPUs computed, activation recomputation included (x4 instead of x3 when
    ``checkpoint_activations`` is on): hardware FLOPs. ``mfu`` and ``hfu`` are NeoX's own model and
    hardware FLOPs utilisation in percent, printed when the config sets ``peak_theoretical_tflops``.
    Fields NeoX did not print (``loss_scale`` outside fp16, a truncated line) are None.
    ``extra`` keeps any other numeric field (additional losses) by its printed name.
    """

    iteration: int
    total: int
    lm_loss: float | None = None
    samples_per_sec: float | None = None
    tflops: float | None = None
    lr: float | None = None
    elapsed_ms: float | None = None
    loss_scale: float | None = None
    skipped: int | None = None
    nan: int | None = None
    rank: int | None = None
    mfu: float | None = None
    hfu: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Validation:
    """A validation or test result line; ``iteration`` is None for the end-of-training evaluation."""

    iteration: int | None
    lm_loss: float | None
    ppl: float | None
    split: str = "validation"
    rank: int | None = None


@dataclass(frozen=True)
class CheckpointCommitted:
    """DeepSpeed's commit line: every file of ``tag`` was written by this rank's engine.

    It is evidence, not proof of completeness on shared storage (other ranks may still be writing);
    the completeness rule in ``checkpoints.py`` on the real folder is what the watcher trusts.
    """

    iteration: int
    tag: str
    rank: int | None = None


@dataclass(frozen=True)
class ResumeInfo:
    """``Loading checkpoint and starting from iteration N``: N = 0 is a fresh start."""

    iteration: int
    rank: int | None = None


@dataclass(frozen=True)
class LatestMissing:
    """``Unable to find latest file at P``: NeoX found no checkpoint to load and starts at iteration 0.

    Harmless on a first attempt; on a resume attempt it means the resume silently restarted training.
    """

    path: str
    rank: int | None = None


@dataclass(frozen=True)
class ErrorLine:
    """A line that explains a failure: a Python exception, or a Slurm error about a task or the job.

    ``kind`` is ``exception`` (``TypeError: ...``), ``srun`` (``srun: error: node3: task 5: ...``;
    ``node`` is set) or ``slurmstepd`` (``*** JOB 12 ON node1 CANCELLED AT ... DUE TO TIME LIMIT ***``).
    """

    kind: str
    message: str
    node: str | None = None
    rank: int | None = None


Event = TrainStep | Validation | CheckpointCommitted | ResumeInfo | LatestMissing | ErrorLine

_EVENT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (TrainStep, Validation, CheckpointCommitted, ResumeInfo, LatestMissing, ErrorLine)
}


def event_to_dict(event: Event) -> dict:
    """A JSON-serialisable dict with a ``type`` key, so a trigger can yield events in its payload."""
    return {"type": type(event).__name__, **asdict(event)}


def event_from_dict(data: dict) -> Event:
    """Inverse of `event_to_dict`; names the unknown type instead of guessing."""
    payload = dict(data)
    name = payload.pop("type", None)
    cls = _EVENT_TYPES.get(name)
    if cls is None:
        raise ValueError(f"event dict has unknown type {name!r} (expected one of {sorted(_EVENT_TYPES)})")
    return cls(**payload)


# ----------------------------------------------------------------------------------------- line parsing
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_SRUN_LABEL = re.compile(r"^\s*(\d{1,6}): ?")
_TORCH_RANK = re.compile(r"^\[rank(\d+)\]: ?")
_ITERATION = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)")
_FIELD = re.compile(r"^\s*([^:|]+?)\s*:\s*(\S+)\s*$")
# megatron/logging.py human_readable_flops: "%3.1f%s" with units "", KFLOPS ... ZFLOPS, then "Yi" (1e24).
_FLOPS = re.compile(r"^([0-9.+\-eE]+|nan|inf)\s*(?:([KMGTPEZ]?)FLOPS|(Yi))?$", re.IGNORECASE)
_FLOP_SCALE = {"": 1e-12, "K": 1e-9, "M": 1e-6, "G": 1e-3, "T": 1.0, "P": 1e3, "E": 1e6, "Z": 1e9, "YI": 1e12}
_VALIDATION = re.compile(r"\b(validation|test) results at (?:iteration\s+(\d+)|the end of training)")
_COMMIT = re.compile(r"Checkpoint (global_step(\d+)) is ready now!")
_RESUME = re.compile(r"Loading checkpoint and starting from iteration\s+(\d+)")
_LATEST_MISSING = re.compile(r"Unable to find latest file at (\S+?),?(?:\s|$)")
_EXCEPTION = re.compile(r"^((?:[A-Za-z_]\w*\.)*(?:[A-Za-z_]\w*(?:Error|Exception)|KeyboardInterrupt)): (.+)$")
_SRUN_ERROR = re.compile(r"^srun: error: ([\w.\-]+): (tasks? [\d\-,]+: .+)$")
_STEPD = re.compile(r"slurmstepd(?:-[\w.\-]+)?: error: \*\*\* ((?:JOB|STEP) .+?) \*\*\*")

# NeoX field names (as printed) -> TrainStep attribute; matched by suffix, so noise before a field's name
# (a timestamp, a label we did not strip) does not lose the value.
_STEP_FIELDS = (
    ("samples/sec", "samples_per_sec"),
    ("elapsed time per iteration (ms)", "elapsed_ms"),
    ("learning rate", "lr"),
    ("approx flops per gpu", "tflops"),
    ("mfu", "mfu"),
    ("hfu", "hfu"),
    ("lm_loss", "lm_loss"),
    ("loss scale", "loss_scale"),
    ("number of skipped iterations", "skipped"),
    ("number of nan iterations", "nan"),
)
_INT_FIELDS = {"skipped", "nan"}


def clean_line(raw: str) -> tuple[int | None, str]:
    """Strip what is not NeoX's text: ANSI escapes, carriage-return overwrites, the ``srun -l`` label.

    Returns ``(task label or None, text)``. A progress bar rewritten with ``\\r`` keeps its final state.
    """
    line = _ANSI.sub("", raw.rstrip("\r\n"))
    if "\r" in line:
        line = line.rsplit("\r", 1)[-1]
    rank = None
    m = _SRUN_LABEL.match(line)
    if m:
        rank = int(m.group(1))
        line = line[m.end() :]
    m = _TORCH_RANK.match(line)
    if m:
        rank = int(m.group(1)) if rank is None else rank
        line = line[m.end() :]
    return rank, line


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _tflops(text: str) -> float | None:
    m = _FLOPS.match(text)
    if not m:
        return None
    value = _number(m.group(1))
    unit = (m.group(2) or m.group(3) or "").upper()
    return None if value is None else value * _FLOP_SCALE[unit]


def _fields(line: str) -> dict[str, str]:
    out = {}
    for segment in line.split("|"):
        m = _FIELD.match(segment)
        if m:
            out[m.group(1).strip()] = m.group(2)
    return out


def _parse_step(line: str, m: re.Match, rank: int | None) -> TrainStep:
    values: dict = {}
    extra: dict[str, float] = {}
    for key, raw in _fields(line).items():
        lowered = key.lower()
        for printed, attr in _STEP_FIELDS:
            if lowered.endswith(printed):
                if attr == "tflops":
                    values[attr] = _tflops(raw)
                elif attr in _INT_FIELDS:
                    number = _number(raw)
                    values[attr] = int(number) if number is not None and number == number else None
                else:  # MFU and HFU are printed in percent: "7.54%"
                    values[attr] = _number(raw.rstrip("%"))
                break
        else:
            number = _number(raw.rstrip("%"))
            if number is not None:
                extra[key] = number
    return TrainStep(iteration=int(m.group(1)), total=int(m.group(2)), rank=rank, extra=extra, **values)


def _parse_validation(line: str, m: re.Match, rank: int | None) -> Validation:
    fields = _fields(line)
    loss = ppl = None
    for key, raw in fields.items():
        if key.endswith("lm_loss_ppl value"):
            ppl = _number(raw)
        elif key.endswith("lm_loss value"):
            loss = _number(raw)
    iteration = int(m.group(2)) if m.group(2) else None
    return Validation(iteration=iteration, lm_loss=loss, ppl=ppl, split=m.group(1), rank=rank)


def parse_line(line: str) -> Event | None:
    """One log line -> the event it carries, or None for everything else (most lines).

    Tolerant by design: a label, colour codes, a timestamp or a truncated tail never raise; a field
    that cannot be read is None. A line that is not NeoX's is ignored rather than guessed at.
    """
    rank, text = clean_line(line)
    if not text:
        return None
    if "|" in text:
        m = _ITERATION.search(text)
        if m:
            return _parse_step(text, m, rank)
        m = _VALIDATION.search(text)
        if m:
            return _parse_validation(text, m, rank)
    m = _COMMIT.search(text)
    if m:
        return CheckpointCommitted(iteration=int(m.group(2)), tag=m.group(1), rank=rank)
    m = _RESUME.search(text)
    if m:
        return ResumeInfo(iteration=int(m.group(1)), rank=rank)
    m = _LATEST_MISSING.search(text)
    if m:
        return LatestMissing(path=m.group(1), rank=rank)
    m = _EXCEPTION.match(text)
    if m:
        return ErrorLine(kind="exception", message=f"{m.group(1)}: {m.group(2).strip()}", rank=rank)
    m = _SRUN_ERROR.match(text)
    if m:
        return ErrorLine(kind="srun", message=m.group(2).strip(), node=m.group(1), rank=rank)
    m = _STEPD.search(text)
    if m:
        on = re.search(r"\bON (\S+)", m.group(1))
        node = on.group(1) if on else None
        return ErrorLine(kind="slurmstepd", message=m.group(1), node=node, rank=rank)
    return None


def parse_lines(lines: Iterable[str]) -> list[Event]:
    """The events of these lines, in order (the lines a poll read, split once by the log stream)."""
    return [ev for ev in map(parse_line, lines) if ev is not None]


def parse_text(text: str) -> list[Event]:
    """All events of a whole log text (a finished job's log, a fixture)."""
    return parse_lines(text.splitlines())


# ------------------------------------------------------------------------------------------ run state
_MAX_ERRORS = 20


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

    def update(self, event: Event) -> None:
        """Fold one event in; duplicate lines printed by several ranks count once."""
        if isinstance(event, TrainStep):
            if self.steps and self.steps[-1].iteration == event.iteration:
                self.steps[-1] = event
            else:
                self.steps.append(event)
        elif isinstance(event, Validation):
            self.validations.append(event)
        elif isinstance(event, CheckpointCommitted):
            if event.iteration not in self.committed:
                self.committed.append(event.iteration)
        elif isinstance(event, ResumeInfo):
            self.resumed_from = event.iteration
        elif isinstance(event, LatestMissing):
            self.latest_missing = True
        elif isinstance(event, ErrorLine):
            if len(self.errors) >= _MAX_ERRORS:
                del self.errors[1]
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


# ------------------------------------------------------------------------------------ incremental follow
class LogFollower:
    """Turns byte chunks of a growing log into events, one complete line at a time.

    The watcher reads the remote log from a byte offset; a chunk may end inside a line or inside a
    multi-byte UTF-8 character. Lines are split on bytes first and decoded whole (invalid bytes become
    U+FFFD), and the unfinished tail waits for the next chunk. `offset` is where a fresh follower
    should start after a restart: the end of the last complete line, so nothing is lost or read twice.
    A runaway line longer than ``max_line_bytes`` is dropped (config dumps are long, but not that long).
    """

    def __init__(self, offset: int = 0, max_line_bytes: int = 1 << 20) -> None:
        self._offset = offset
        self._buffer = bytearray()
        self._discarding = False
        self._max_line_bytes = max_line_bytes
        self.state = LogState()
        self.lines = 0

    @property
    def offset(self) -> int:
        """Byte offset just past the last complete line consumed."""
        return self._offset

    @property
    def pending(self) -> int:
        """Bytes received but not yet parsed (an unfinished last line)."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[Event]:
        """Consume the next bytes of the log; return the events of the lines it completed."""
        events: list[Event] = []
        self._buffer += chunk
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            else:
                self._emit(bytes(self._buffer[start:end]), events)
            self._offset += end + 1 - start
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self._max_line_bytes:
            self._offset += len(self._buffer)
            self._buffer.clear()
            self._discarding = True
        return events

    def flush(self) -> list[Event]:
        """The job has ended: parse the unfinished last line too (it will not grow any more)."""
        events: list[Event] = []
        if self._buffer and not self._discarding:
            self._emit(bytes(self._buffer), events)
        self._offset += len(self._buffer)
        self._buffer.clear()
        self._discarding = False
        return events

    def _emit(self, raw: bytes, events: list[Event]) -> None:
        self.lines += 1
        event = parse_line(raw.decode("utf-8", errors="replace"))
        if event is not None:
            self.state.update(event)
            events.append(event)


# -------------------------------------------------------------------------------------------- verdict
@dataclass(frozen=True)
class Verdict:
    """How a training job ended, decided from evidence rather than from the exit code alone."""

    finished: bool
    reason: str
    last_iteration: int | None
    last_complete_iteration: int | None
    exit_code: int | None
    #: the slice stopped where it was told to (exit_interval) after a complete checkpoint: not finished,
    #: not a failure either; the next slice resumes there with nothing recomputed
    planned_stop: bool = False

    @property
    def status(self) -> str:
        if self.finished:
            return "finished"
        return "slice_end" if self.planned_stop else "failed"

    @property
    def resume_from(self) -> int | None:
        """Where a retry would continue (the newest complete checkpoint); None = from scratch."""
        return None if self.finished else self.last_complete_iteration


def _error_summary(state: LogState) -> str:
    if not state.errors:
        return ""
    exceptions = [e for e in state.errors if e.kind == "exception"]
    chosen = exceptions[-1] if exceptions else state.errors[-1]
    where = f" on {chosen.node}" if chosen.node else ""
    return f"; last error{where}: {chosen.message}"


def training_verdict(
    state: LogState | Iterable[Event],
    train_iters: int,
    exit_code: int | None,
    committed_iters: Iterable[int],
    *,
    planned_stop: int | None = None,
    exited_at: int | None = None,
) -> Verdict:
    """Finished iff the log reached ``train_iters`` AND a complete checkpoint at ``train_iters`` exists.

    A planned stop (``planned_stop``: the slice's ``exit_interval``) is a clean slice end, not a failure:
    exit 0, NeoX printed that it exits at that iteration (``exited_at``, `slices.exited_at`) and the
    checkpoint there is complete. NeoX saves before it checks exit_interval, so nothing is lost and the
    next slice resumes from that checkpoint (``Verdict.planned_stop``, status ``slice_end``).

    ``committed_iters`` are the iterations of COMPLETE checkpoints (`checkpoints.complete_checkpoints`
    on the save folder), not the commit lines. A non-zero exit after both are true is still a finished
    run: NeoX's end-of-training evaluation crashes with pipe_parallel_size >= 1 after the final save
    (tests/fixtures/neox-run/README.md). Any other ending is a failure whose reason names the iteration
    reached, the newest complete checkpoint (what a resume would start from) and the last error seen.
    """
    if not isinstance(state, LogState):
        state = LogState.from_events(state)
    if train_iters <= 0:
        raise ValueError(f"train_iters must be positive, got {train_iters}")
    complete = sorted(set(committed_iters))
    last_complete = complete[-1] if complete else None
    last = state.last_iteration
    if state.resumed_from and (last is None or state.resumed_from > last):
        last = state.resumed_from  # resumed at (or past) the end: nothing left to train
    log_reached = last is not None and last >= train_iters
    saved_final = last_complete is not None and last_complete >= train_iters
    ckpt_text = f"global_step{last_complete}" if last_complete is not None else "none"
    errors = _error_summary(state)
    exit_text = "unknown" if exit_code is None else str(exit_code)

    if log_reached and saved_final:
        if exit_code == 0:
            reason = f"training reached {train_iters}/{train_iters} and checkpoint {ckpt_text} is complete"
        else:
            reason = (
                f"training reached {train_iters}/{train_iters} and checkpoint {ckpt_text} is complete; "
                f"exit code {exit_text} after the final checkpoint ignored "
                f"(NeoX's end-of-training evaluation fails after saving){errors}"
            )
        return Verdict(True, reason, last, last_complete, exit_code)

    if (
        planned_stop is not None
        and exit_code == 0
        and exited_at == planned_stop
        and planned_stop in complete
        and planned_stop < train_iters
    ):
        reason = (
            f"stopped as planned after the save of iteration {planned_stop} (exit_interval); checkpoint "
            f"global_step{planned_stop} is complete; {train_iters - planned_stop} iterations left{errors}"
        )
        return Verdict(False, reason, max(last or 0, planned_stop), last_complete, exit_code, True)

    if log_reached:
        reason = (
            f"log reached iteration {last}/{train_iters} but no complete checkpoint at {train_iters} "
            f"(newest complete: {ckpt_text}); exit code {exit_text}{errors}"
        )
    elif last is None:
        reason = f"no training iteration was logged; exit code {exit_text}{errors}"
        if exit_code == 0:
            reason = f"exited 0 before logging any training iteration{errors}"
    elif exit_code == 0:
        reason = (
            f"exited 0 at iteration {last} of {train_iters} (exit_interval or a clean stop?); "
            f"newest complete checkpoint: {ckpt_text}{errors}"
        )
    else:
        reason = (
            f"stopped at iteration {last} of {train_iters} with exit code {exit_text}; "
            f"newest complete checkpoint: {ckpt_text}{errors}"
        )
    if saved_final:
        reason += f" (checkpoint {ckpt_text} is complete, but the log does not show iteration {train_iters})"
    return Verdict(False, reason, last, last_complete, exit_code)
