"""Progress, throughput and ETA from parsed NeoX steps, in the words a task log and a run note need.

Pure: the watcher feeds the `LogState` it folded from the log and gets numbers and text back. NeoX
prints per-interval averages; the first interval after a (re)start includes warm-up (10x slower in
the real run: 229 ms/it vs 23 ms) and an interval with a checkpoint save is slower too, so rates are
the MEDIAN over the last few intervals, and the ETA follows from that median.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from neoxflow.neox.logparse import TrainStep
from neoxflow.neox.logstate import LogState

__all__ = [
    "Progress",
    "compute_progress",
    "format_duration",
    "is_stalled",
    "run_note_markdown",
    "stall_reason",
    "summary_line",
]

NOTE_MAX_CHARS = 1000  # Airflow's DagRun note column is 1000 characters


@dataclass(frozen=True)
class Progress:
    """A snapshot of training progress; fields are None until the log has shown them.

    ``samples_per_sec`` is NeoX's global rate (train_batch_size / iteration time); ``tokens_per_sec``
    = samples/s x seq_length; ``tflops`` is per GPU, as NeoX prints it (hardware FLOPs: recomputation
    counted); ``mfu`` is NeoX's model FLOPs utilisation in percent (recomputation not counted), when the
    profile names the GPU's peak (``cluster.gpu_peak_tflops``).
    """

    iteration: int | None
    total: int | None
    percent: float | None
    lm_loss: float | None
    samples_per_sec: float | None
    tokens_per_sec: float | None
    tflops: float | None
    iter_ms: float | None
    eta_seconds: float | None
    resumed_from: int | None = None
    last_checkpoint: int | None = None
    mfu: float | None = None


def _median(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None and v == v]
    return statistics.median(clean) if clean else None


def compute_progress(
    state: LogState | Sequence[TrainStep],
    *,
    train_iters: int | None = None,
    seq_length: int | None = None,
    last_checkpoint: int | None = None,
    window: int = 10,
) -> Progress:
    """Progress of a run from what its log showed.

    :param train_iters: the run's target; defaults to the total NeoX printed.
    :param seq_length: tokens per sample, for tokens/s (NeoX does not print it per step).
    :param last_checkpoint: iteration of the newest COMPLETE checkpoint, if the caller knows it.
    :param window: how many recent log intervals the medians cover.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if isinstance(state, LogState):
        steps, resumed_from = state.steps, state.resumed_from
    else:
        steps, resumed_from = list(state), None
    last = steps[-1] if steps else None
    total = train_iters if train_iters is not None else (last.total if last else None)
    if last is None:
        return Progress(None, total, None, None, None, None, None, None, None, resumed_from, last_checkpoint)
    recent = steps[-window:]
    samples = _median([s.samples_per_sec for s in recent])
    iter_ms = _median([s.elapsed_ms for s in recent])
    tflops = _median([s.tflops for s in recent])
    percent = 100.0 * min(last.iteration, total) / total if total else None
    eta = None
    if total is not None and iter_ms is not None:
        eta = max(total - last.iteration, 0) * iter_ms / 1000.0
    tokens = samples * seq_length if samples is not None and seq_length else None
    return Progress(
        iteration=last.iteration,
        total=total,
        percent=percent,
        lm_loss=last.lm_loss,
        samples_per_sec=samples,
        tokens_per_sec=tokens,
        tflops=tflops,
        iter_ms=iter_ms,
        eta_seconds=eta,
        resumed_from=resumed_from,
        last_checkpoint=last_checkpoint,
        mfu=_median([s.mfu for s in recent]),
    )


# ------------------------------------------------------------------------------------------ formatting
def format_duration(seconds: float | None) -> str:
    """``3725`` -> ``1:02:05``; days are spelled out (``2d 03:00:00``); None -> ``?``."""
    if seconds is None or seconds != seconds:
        return "?"
    whole = int(round(max(seconds, 0.0)))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}" if days else clock


def _si(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "?"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}f}{suffix}"
    return f"{value:.{digits}f}"


def _num(value: float | None, fmt: str) -> str:
    return "?" if value is None else format(value, fmt)


def summary_line(p: Progress) -> str:
    """One line for the task log, e.g.
    ``iteration 45/60 (75.0%) | lm_loss 7.268 | 93.2 samples/s | 23.9k tokens/s | 0.77 TFLOPS/GPU |
    85.9 ms/it | ETA 0:00:01 | checkpoint global_step40``.
    """
    if p.iteration is None:
        start = f" (resuming from {p.resumed_from})" if p.resumed_from else ""
        return f"no training iteration logged yet{start}"
    parts = [
        f"iteration {p.iteration}/{p.total if p.total is not None else '?'}"
        + (f" ({p.percent:.1f}%)" if p.percent is not None else ""),
        f"lm_loss {_num(p.lm_loss, '.4g')}",
        f"{_si(p.samples_per_sec)} samples/s",
    ]
    if p.tokens_per_sec is not None:
        parts.append(f"{_si(p.tokens_per_sec)} tokens/s")
    parts += [
        f"{_num(p.tflops, '.2f')} TFLOPS/GPU",
        *([f"MFU {p.mfu:.2f}%"] if p.mfu is not None else []),
        f"{_num(p.iter_ms, '.1f')} ms/it",
        f"ETA {format_duration(p.eta_seconds)}",
    ]
    if p.last_checkpoint is not None:
        parts.append(f"checkpoint global_step{p.last_checkpoint}")
    return " | ".join(parts)


def run_note_markdown(p: Progress, *, title: str = "Training", lines: Sequence[str] = ()) -> str:
    """A short markdown note for the DAG run (Airflow caps notes at 1000 characters).

    ``lines`` are extra bullet points the DAG adds (attempt number, job id, failed nodes).
    """
    if p.iteration is None:
        head = f"**{title}**: waiting for the first logged iteration"
        table = ""
    else:
        pct = f" ({p.percent:.1f}%)" if p.percent is not None else ""
        head = (
            f"**{title}**: iteration {p.iteration}/{p.total if p.total is not None else '?'}{pct}"
            f" · ETA {format_duration(p.eta_seconds)}"
        )
        ckpt = f"global_step{p.last_checkpoint}" if p.last_checkpoint is not None else "none yet"
        table = (
            "\n\n| lm_loss | samples/s | tokens/s | TFLOPS/GPU | MFU % | ms/it | last checkpoint |\n"
            "|---|---|---|---|---|---|---|\n"
            f"| {_num(p.lm_loss, '.4g')} | {_si(p.samples_per_sec)} | {_si(p.tokens_per_sec)} "
            f"| {_num(p.tflops, '.2f')} | {_num(p.mfu, '.2f')} | {_num(p.iter_ms, '.1f')} | {ckpt} |"
        )
    bullets = "".join(f"\n- {line}" for line in lines)
    if p.resumed_from:
        bullets = f"\n- resumed from iteration {p.resumed_from}" + bullets
    note = head + table + ("\n" + bullets if bullets else "")
    if len(note) > NOTE_MAX_CHARS:
        note = note[: NOTE_MAX_CHARS - 1] + "…"
    return note


# -------------------------------------------------------------------------------------------- stalls
def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _elapsed(last: float | datetime, now: float | datetime) -> float:
    if isinstance(last, datetime) != isinstance(now, datetime):
        raise TypeError("last_progress_time and now must both be datetimes or both be epoch seconds")
    return _seconds(now - last) if isinstance(now, datetime) else float(now) - float(last)


def is_stalled(
    last_progress_time: float | datetime, now: float | datetime, window: float | timedelta
) -> bool:
    """True when nothing new (log line or checkpoint) arrived for longer than ``window``.

    ``last_progress_time`` is the time of the last new log line or checkpoint, or the job's start
    time while nothing has arrived yet (start-up is part of the window: NeoX takes ~50 s to start
    on one GPU, minutes on many nodes, so size the window for it). Times are epoch seconds or
    aware datetimes (both the same kind); ``window`` is seconds or a timedelta.
    """
    limit = _seconds(window)
    if limit <= 0:
        raise ValueError(f"stall window must be positive, got {window!r}")
    return _elapsed(last_progress_time, now) > limit


def stall_reason(
    last_progress_time: float | datetime, now: float | datetime, window: float | timedelta
) -> str:
    """The failure message for a stall, naming how long it has been and the configured window."""
    quiet = _elapsed(last_progress_time, now)
    return (
        f"training stalled: no new log line or checkpoint for {format_duration(quiet)} "
        f"(stall window {format_duration(_seconds(window))}) while the job was RUNNING"
    )
