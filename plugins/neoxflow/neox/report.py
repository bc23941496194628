"""The end-of-training report: a summary JSON and a loss-curve PNG, stored beside the checkpoints and in S3.

Pure builders: the DAG passes what the watcher gathered (log state, complete checkpoints, verdict)
plus what only the DAG knows (attempts, failed nodes, iterations lost to failures) and stores the
results. A run that was resumed spans several logs; `merge_loss_curves` joins them so that the
iterations a failed attempt trained past its last checkpoint (and which were trained again) count
once, with the values of the attempt that kept them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from neoxflow.neox.checkpoints import (
    Checkpoint,
    Expectation,
    complete_checkpoints,
    partial_checkpoints,
    resume_plan,
)
from neoxflow.neox.logparse import parse_text
from neoxflow.neox.logstate import LogState
from neoxflow.neox.progress import compute_progress, summary_line
from neoxflow.neox.verdict import Verdict, training_verdict

__all__ = [
    "SUMMARY_FORMAT",
    "analyse_run",
    "build_summary",
    "downsample",
    "iterations_lost",
    "loss_curve_png",
    "merge_loss_curves",
    "summary_json",
    "write_loss_curve_png",
]

SUMMARY_FORMAT = 1
Point = tuple[int, float]


def iterations_lost(last_iteration_reached: int | None, resumed_from: int | None) -> int:
    """Iterations trained by a failed attempt past the checkpoint the next attempt resumed from."""
    if last_iteration_reached is None:
        return 0
    return max(0, last_iteration_reached - (resumed_from or 0))


def merge_loss_curves(attempts: Iterable[tuple[int | None, Sequence[Point]]]) -> list[Point]:
    """Join the loss curves of successive attempts, oldest first: ``[(resumed_from, curve), ...]``.

    Each attempt replaces everything after the iteration it resumed from (None or 0 = a fresh
    start, which replaces everything).
    """
    merged: list[Point] = []
    for resumed_from, curve in attempts:
        cut = resumed_from or 0
        merged = [p for p in merged if p[0] <= cut]
        merged.extend((int(i), float(v)) for i, v in curve if i > cut)
    return merged


def downsample(points: Sequence[Point], max_points: int) -> list[Point]:
    """At most ``max_points`` evenly spaced points, always keeping the first and the last."""
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    if len(points) <= max_points:
        return list(points)
    step = (len(points) - 1) / (max_points - 1)
    return [points[round(k * step)] for k in range(max_points)]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _median(values: Iterable[float | None]) -> float | None:
    clean = sorted(v for v in values if _finite(v) is not None)
    if not clean:
        return None
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


def build_summary(
    state: LogState | None,
    checkpoints: Sequence[Checkpoint],
    *,
    train_iters: int,
    seq_length: int | None = None,
    verdict: Verdict | None = None,
    loss_curve: Sequence[Point] | None = None,
    attempts: int | None = None,
    failed_nodes: Iterable[str] = (),
    iterations_lost: int | None = None,
    max_points: int = 1000,
    extra: Mapping | None = None,
) -> dict:
    """The summary dict (JSON-ready; non-finite numbers become null).

    :param state: the log state of the last attempt (throughput, validation, resume point).
    :param checkpoints: the complete checkpoints (`checkpoints.complete_checkpoints`).
    :param loss_curve: a curve merged across attempts; defaults to the state's own curve.
    :param attempts, failed_nodes, iterations_lost: filled by the DAG across attempts.
    :param extra: anything else to record (run id, job ids, config name); must be JSON-serialisable.
    """
    state = state or LogState()
    curve = list(loss_curve) if loss_curve is not None else state.loss_curve()
    steps = state.steps
    samples = _median(s.samples_per_sec for s in steps)
    ckpts = sorted(checkpoints, key=lambda c: c.iteration)
    summary = {
        "format": SUMMARY_FORMAT,
        "status": verdict.status if verdict else None,
        "reason": verdict.reason if verdict else None,
        "iterations": {
            "train_iters": train_iters,
            "last_logged": state.last_iteration,
            "last_checkpoint": ckpts[-1].iteration if ckpts else None,
            "resumed_from": state.resumed_from,
        },
        "final_loss": _finite(curve[-1][1]) if curve else None,
        "loss_curve": [[i, _finite(v)] for i, v in downsample(curve, max_points)] if curve else [],
        "validation": [
            [v.iteration, _finite(v.lm_loss)] for v in state.validations if v.iteration is not None
        ],
        "checkpoints": [
            {"iteration": c.iteration, "tag": c.tag, "path": c.path, "size_bytes": c.size_bytes}
            for c in ckpts
        ],
        "throughput": {
            "samples_per_sec": samples,
            "tokens_per_sec": samples * seq_length if samples is not None and seq_length else None,
            # NeoX's "approx flops per GPU": hardware FLOPs (activation recomputation counted)
            "tflops_per_gpu": _median(s.tflops for s in steps),
            # NeoX's own MFU and HFU (percent), printed when the config sets peak_theoretical_tflops
            "mfu_percent": _median(s.mfu for s in steps),
            "hfu_percent": _median(s.hfu for s in steps),
            "iter_ms": _median(s.elapsed_ms for s in steps),
            "basis": "median over all logged intervals of the last attempt",
        },
        "attempts": attempts,
        "failed_nodes": sorted(set(failed_nodes)),
        "iterations_lost": iterations_lost,
    }
    if extra:
        summary["extra"] = dict(extra)
    return summary


def summary_json(summary: Mapping) -> str:
    """Strict JSON text (no NaN/Infinity), stable key order, for S3 and the save folder."""
    return json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n"


def loss_curve_png(
    points: Sequence[Point],
    *,
    title: str = "GPT-NeoX training loss",
    validation: Sequence[Point] = (),
    resumes: Sequence[int] = (),
    dpi: int = 100,
) -> bytes:
    """The loss curve as PNG bytes (ready for S3 or SFTP); resume points as dashed vertical lines.

    matplotlib is imported here, with the Agg canvas and no pyplot state, so importing this module
    stays cheap and the call is safe in any Airflow worker thread.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    finite = [(i, v) for i, v in points if _finite(v) is not None]
    if finite:
        ax.plot([p[0] for p in finite], [p[1] for p in finite], label="train lm_loss", linewidth=1.5)
    val = [(i, v) for i, v in validation if _finite(v) is not None]
    if val:
        ax.plot([p[0] for p in val], [p[1] for p in val], "o--", label="validation lm_loss", markersize=4)
    for k, it in enumerate(resumes):
        ax.axvline(it, color="grey", linestyle=":", linewidth=1, label="resumed" if k == 0 else None)
    if not finite and not val:
        ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("iteration")
    ax.set_ylabel("lm_loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if finite or val:
        ax.legend(loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_loss_curve_png(points: Sequence[Point], path: str | Path, **kwargs) -> Path:
    """`loss_curve_png` written to ``path`` (parent folders created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(loss_curve_png(points, **kwargs))
    return target


def analyse_run(
    log_text: str,
    listing: Mapping,
    expect: Expectation,
    *,
    train_iters: int,
    exit_code: int | None,
    seq_length: int | None = None,
) -> dict:
    """The whole watcher logic applied to one finished job: a log and its save folder's listing.

    For checks outside Airflow (the GPU proof, a post-mortem): parse the log, judge the checkpoints
    by the completeness rule, decide the verdict and what a resume would do, and build the summary.
    """
    state = LogState.from_events(parse_text(log_text))
    complete = complete_checkpoints(listing, expect)
    verdict = training_verdict(state, train_iters, exit_code, [c.iteration for c in complete])
    plan = resume_plan(listing, expect)
    last_ckpt = complete[-1].iteration if complete else None
    progress = compute_progress(
        state, train_iters=train_iters, seq_length=seq_length, last_checkpoint=last_ckpt
    )
    return {
        "verdict": {"status": verdict.status, "reason": verdict.reason, "exit_code": exit_code},
        "progress": summary_line(progress),
        "complete_checkpoints": [c.tag for c in complete],
        "partial_checkpoints": partial_checkpoints(listing, expect),
        "resume": {"action": plan.action, "latest": plan.content, "reason": plan.reason},
        "summary": build_summary(
            state, complete, train_iters=train_iters, seq_length=seq_length, verdict=verdict
        ),
    }
