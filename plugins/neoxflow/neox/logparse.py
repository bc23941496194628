"""Read GPT-NeoX's real training output into typed events.

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

What the events add up to lives elsewhere: the run's state in :mod:`neoxflow.neox.logstate`, the
training watch's bounded memory in :mod:`neoxflow.neox.watch_state`, how a run ended in
:mod:`neoxflow.neox.verdict`.
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
    "ResumeInfo",
    "TrainStep",
    "Validation",
    "clean_line",
    "event_from_dict",
    "event_to_dict",
    "parse_line",
    "parse_lines",
    "parse_text",
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
