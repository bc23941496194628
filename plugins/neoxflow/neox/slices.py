"""Where a training slice stops: just after a complete checkpoint, before the Slurm time limit.

Why this exists (issue 17, item 5, "no lost work at a slice end"): GPT-NeoX has no time-budget stop and no
signal handler, so a slice killed at its time limit loses every iteration since its last checkpoint.
The only clean stop NeoX offers is ``exit_interval`` (GPT-NeoX ea7aefd8, megatron/training.py, ``train``):

- it is a MODULUS: after each iteration ``i`` (counted from 0 across the whole run, not from the resume
  point), NeoX exits when ``i % exit_interval == 0``;
- it is tested after that iteration's save and evaluation; it saves nothing itself, and the exit skips
  the post-training code of ``pretrain`` (including the end-of-training save): every rank passes a
  barrier and calls ``sys.exit()``, exit code 0. So the stop iteration must be a save iteration
  (``i % checkpoint_factor == 0`` or ``i in extra_save_iters``, ``is_save_iter``).

A slice that resumes at iteration R and must stop at S > R therefore gets ``exit_interval = S``: the first
multiple of S above R is S itself (R < S < 2S), whatever R is. The last slice (S == train_iters) gets no
exit_interval: the loop ends at train_iters by itself and NeoX's post-training save runs, whereas
``exit_interval = train_iters`` would exit before that save. ``train_iters`` never changes per slice: NeoX
sizes (and names) its sample index by ``train_iters x train_batch_size`` (megatron/data/data_utils.py), so
another value can mean another data order.

Choosing S: from the measured pace (seconds per iteration, per checkpoint save, start-up), the last save
iteration whose save completes before ``time limit - stop_before_limit_s`` (the batch script's USR1, kept
as the safety net). A natural save iteration of the run is preferred; when none fits, one extra save is
added at the last iteration that fits (``extra_save_iters`` is per slice: the run's own list plus it).
When not even one iteration and its save fit, the slice cannot end cleanly: the plan says so
(``kind == CANNOT_FIT``) and the caller must not submit it, since all its work would be lost. Before any
measurement exists (the first slice) and without a profile hint, there is no pace to plan with: the plan
is ``RUN_TO_LIMIT`` (no exit_interval; the USR1 net stops it, losing the iterations since its last
natural save), and the first slice's log provides the pace for every later one.

Pure: no I/O. ``measure_slice`` reads a job log's text with neoxflow.neox.logparse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from neoxflow.neox.logparse import CheckpointCommitted, ResumeInfo, TrainStep, clean_line, parse_line

STOP_AT = "stop_at"  # exit_interval = stop_iteration (or the end of training): the slice ends after a save
RUN_TO_LIMIT = "run_to_limit"  # no pace known: no exit_interval, the USR1 safety net ends the slice
CANNOT_FIT = "cannot_fit"  # not even one iteration and a save fit in the slice: do not submit it

#: NeoX start-up before the first iteration when none was measured: container start, imports, index maps,
#: model build and checkpoint load take minutes on a multi-node job; ten minutes is on the safe side.
DEFAULT_STARTUP_S = 600.0
#: Measured times are stretched by this fraction: iteration and save times vary from slice to slice.
DEFAULT_SLACK = 0.05


@dataclass(frozen=True)
class SliceTimes:
    """How long things take on this run's cluster shape; None = not known.

    :param seconds_per_iteration: steady training pace, averaged over log intervals (NeoX's "elapsed
        time per iteration" includes the saves and evaluations inside an interval, so it errs long).
    :param seconds_per_save: one checkpoint save, "is about to be saved!" to "is ready now!".
    :param startup_s: job start to the first iteration (only measurable with the job's start time).
    :param source: where the numbers come from, for the log and the run record.
    """

    seconds_per_iteration: float | None = None
    seconds_per_save: float | None = None
    startup_s: float | None = None
    source: str = ""

    def filled_from(self, other: SliceTimes | None) -> SliceTimes:
        """These times, each unknown one taken from ``other``."""
        if other is None:
            return self
        picked = {
            name: getattr(self, name) if getattr(self, name) is not None else getattr(other, name)
            for name in ("seconds_per_iteration", "seconds_per_save", "startup_s")
        }
        sources = " + ".join(s for s in (self.source, other.source) if s)
        return SliceTimes(**picked, source=sources)


@dataclass(frozen=True)
class SlicePlan:
    """Where one slice stops and what to write into its NeoX config.

    ``config_overrides`` is merged over the run's config for this slice only (``exit_interval`` is always
    present, None for the last slice or without a plan, so a value from an earlier slice never leaks).
    """

    kind: str
    resume_iteration: int
    train_iters: int
    stop_iteration: int | None
    extra_save: int | None
    config_overrides: dict[str, Any]
    deadline_s: float
    expected_end_s: float | None
    reason: str

    @property
    def submit(self) -> bool:
        """False only for CANNOT_FIT: the slice would end at the time limit with nothing saved."""
        return self.kind != CANNOT_FIT


def save_iterations(
    resume_iteration: int,
    train_iters: int,
    checkpoint_factor: int | None,
    extra_save_iters: Iterable[int] | None = (),
) -> list[int]:
    """NeoX's save iterations in ``(resume_iteration, train_iters]`` (linear checkpoint_scale), plus
    ``train_iters`` itself (the post-training save of ``pretrain``)."""
    found = {i for i in (extra_save_iters or ()) if resume_iteration < i <= train_iters}
    if checkpoint_factor:
        first = (resume_iteration // checkpoint_factor + 1) * checkpoint_factor
        found.update(range(first, train_iters + 1, checkpoint_factor))
    found.add(train_iters)
    return sorted(found)


def _saves_up_to(stop: int, natural: list[int], train_iters: int) -> int:
    """Saves a slice performs through ``stop``: natural saves, plus the post-training one at the end."""
    count = sum(1 for i in natural if i <= stop)
    if stop == train_iters:
        count += 1  # pretrain() saves after the loop even when train_iters was a save iteration too
    return count


def plan_slice(
    *,
    resume_iteration: int,
    train_iters: int,
    checkpoint_factor: int | None,
    extra_save_iters: Iterable[int] | None,
    times: SliceTimes | None,
    time_limit_s: float,
    stop_before_limit_s: float,
    slack: float = DEFAULT_SLACK,
) -> SlicePlan:
    """The stop iteration of a slice resuming at ``resume_iteration`` and its config overrides.

    ``times`` with no ``seconds_per_iteration`` gives RUN_TO_LIMIT; unknown save or start-up times fall
    back to ``stop_before_limit_s`` (the profile budgets that long to drain a save) and
    DEFAULT_STARTUP_S. Raises ValueError when nothing is left to train or the inputs are inconsistent.
    """
    if train_iters < 1 or not 0 <= resume_iteration < train_iters:
        raise ValueError(f"resume iteration {resume_iteration} leaves nothing to train of {train_iters}")
    if checkpoint_factor is not None and checkpoint_factor < 1:
        raise ValueError(f"checkpoint_factor must be a positive integer, got {checkpoint_factor!r}")
    extra = sorted({int(i) for i in (extra_save_iters or ())})
    deadline = float(time_limit_s) - float(stop_before_limit_s)
    base = {"exit_interval": None, "extra_save_iters": extra or None}

    def plan(kind, stop, added, end, reason, overrides=None) -> SlicePlan:
        return SlicePlan(
            kind=kind,
            resume_iteration=resume_iteration,
            train_iters=train_iters,
            stop_iteration=stop,
            extra_save=added,
            config_overrides={**base, **(overrides or {})},
            deadline_s=deadline,
            expected_end_s=end,
            reason=reason,
        )

    pace = times.seconds_per_iteration if times else None
    if not pace or pace <= 0:
        return plan(
            RUN_TO_LIMIT,
            None,
            None,
            None,
            "no measured pace yet: no exit_interval; the USR1 safety net ends this slice and the "
            "iterations since its last checkpoint are lost",
        )
    stretch = 1.0 + max(0.0, slack)
    per_iter = pace * stretch
    per_save = (
        times.seconds_per_save if times.seconds_per_save is not None else stop_before_limit_s
    ) * stretch
    startup = (times.startup_s if times.startup_s is not None else DEFAULT_STARTUP_S) * stretch
    natural = save_iterations(resume_iteration, train_iters, checkpoint_factor, extra)
    real_saves = [i for i in natural if i != train_iters or _is_save_iter(i, checkpoint_factor, extra)]

    def end_at(stop: int, saves: int) -> float:
        return startup + (stop - resume_iteration) * per_iter + saves * per_save

    fitting = [s for s in natural if end_at(s, _saves_up_to(s, real_saves, train_iters)) <= deadline]
    if fitting:
        stop = fitting[-1]
        end = end_at(stop, _saves_up_to(stop, real_saves, train_iters))
        if stop == train_iters:
            return plan(STOP_AT, stop, None, end, f"the slice reaches train_iters {train_iters}")
        return plan(
            STOP_AT,
            stop,
            None,
            end,
            f"stop after the save of iteration {stop} (expected at {end:.0f}s of {deadline:.0f}s)",
            {"exit_interval": stop},
        )
    # no natural save fits, so none lies below the last iteration that fits: add one save there
    room = deadline - startup - per_save
    stop = resume_iteration + (math.floor(room / per_iter) if room > 0 else 0)
    stop = min(stop, natural[0] - 1)  # below the first natural save (train_iters saves twice if natural)
    if stop <= resume_iteration:
        need = startup + per_iter + per_save
        return plan(
            CANNOT_FIT,
            None,
            None,
            None,
            f"one iteration and its save need about {need:.0f}s after start-up but the slice has "
            f"{deadline:.0f}s before its stop signal: raise the time limit or lower stop_before_limit_s",
        )
    end = end_at(stop, 1)
    return plan(
        STOP_AT,
        stop,
        stop,
        end,
        f"no save iteration fits; an extra save at {stop} (expected at {end:.0f}s of {deadline:.0f}s)",
        {"exit_interval": stop, "extra_save_iters": sorted({*extra, stop})},
    )


def _is_save_iter(iteration: int, checkpoint_factor: int | None, extra: list[int]) -> bool:
    return bool(checkpoint_factor and iteration % checkpoint_factor == 0) or iteration in extra


def plan_slice_for_config(
    cfg: Mapping[str, Any],
    *,
    resume_iteration: int,
    times: SliceTimes | None,
    time_limit_s: float,
    stop_before_limit_s: float,
    slack: float = DEFAULT_SLACK,
) -> SlicePlan:
    """:func:`plan_slice` with train_iters, checkpoint_factor and extra_save_iters from the run's merged
    NeoX config (the run's, never a previous slice's: its extra_save_iters would accumulate)."""
    scale = cfg.get("checkpoint_scale") or "linear"
    if scale != "linear":
        raise ValueError(f"checkpoint_scale {scale!r}: only 'linear' save iterations can be planned")
    factor = cfg.get("checkpoint_factor")
    if factor is not None and float(factor) != int(factor):
        raise ValueError(f"checkpoint_factor must be a whole number, got {factor!r}")
    return plan_slice(
        resume_iteration=resume_iteration,
        train_iters=int(cfg["train_iters"]),
        checkpoint_factor=int(factor) if factor else None,
        extra_save_iters=cfg.get("extra_save_iters"),
        times=times,
        time_limit_s=time_limit_s,
        stop_before_limit_s=stop_before_limit_s,
        slack=slack,
    )


def profile_times(profile_raw: Mapping[str, Any] | None) -> SliceTimes | None:
    """Hints for a run's first slice from an optional profile section ``slices`` with the optional keys
    ``seconds_per_iteration`` (e.g. from a previous run of the same model on this cluster),
    ``seconds_per_save`` and ``startup_s``; None when the section gives none of them."""
    section = (profile_raw or {}).get("slices") or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"profile section slices must be a mapping, got {section!r}")
    values = {}
    for key in ("seconds_per_iteration", "seconds_per_save", "startup_s"):
        value = section.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        ):
            raise ValueError(f"profile slices.{key} must be a non-negative number, got {value!r}")
        values[key] = float(value) if value is not None else None
    if not any(v is not None for v in values.values()):
        return None
    return SliceTimes(**values, source="profile slices")


def profile_slack(profile_raw: Mapping[str, Any] | None) -> float:
    """The fraction every measured time is stretched by when planning (profile ``slices.slack``, default
    DEFAULT_SLACK). A shared or noisy cluster, whose pace moves more from slice to slice, needs more: a
    slice that overruns its plan is stopped by the USR1 net and loses the iterations since its last save."""
    section = (profile_raw or {}).get("slices") or {}
    value = section.get("slack") if isinstance(section, Mapping) else None
    if value is None:
        return DEFAULT_SLACK
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"profile slices.slack must be a fraction in [0, 1), got {value!r}")
    return float(value)


_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]")
_ABOUT_TO_SAVE = re.compile(r"Checkpoint (global_step(\d+)) is about to be saved!")
_EXITED = re.compile(r"exiting the program at iteration (\d+)")
#: the batch script's first line (include/templates/train*.sbatch) and its last, stamped in the cluster's
#: local time like DeepSpeed's own lines
_JOB_STARTED = re.compile(r"neoxflow: job (\d+) started=(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
_JOB_ENDED = re.compile(r"(?:training step ended with exit code -?\d+|NEOXFLOW slice_end .*) ended=(\S+ \S+)")


def _stamp(text: str) -> datetime | None:
    m = _STAMP.match(text)
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(microsecond=int(m.group(2)) * 1000)


def job_started(text: str) -> datetime | None:
    """When the batch script started (its ``neoxflow: job N started=...`` line), naive local time."""
    for raw in text.splitlines():
        m = _JOB_STARTED.search(clean_line(raw)[1])
        if m:
            return datetime.strptime(m.group(2), "%Y-%m-%d %H:%M:%S")
    return None


def job_ended(text: str) -> datetime | None:
    """When the batch script ended (its last line: the step's exit code or the slice_end marker)."""
    found = None
    for raw in text.splitlines():
        m = _JOB_ENDED.search(clean_line(raw)[1])
        if m:
            found = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
    return found


@dataclass(frozen=True)
class SaveSpan:
    """One checkpoint save in a job log: "is about to be saved!" to "is ready now!" (DeepSpeed's stamps,
    the cluster's local time). Saves never completed in the log are left out."""

    iteration: int
    begun: datetime
    done: datetime

    @property
    def seconds(self) -> float:
        return max(0.0, (self.done - self.begun).total_seconds())


def save_spans(text: str) -> list[SaveSpan]:
    """The job's completed saves, in log order."""
    begun: dict[str, tuple[int, datetime]] = {}
    spans = []
    for raw in text.splitlines():
        event = parse_line(raw)
        _, line = clean_line(raw)
        when = _stamp(line)
        if when is None:
            continue
        m = _ABOUT_TO_SAVE.search(line)
        if m:
            begun.setdefault(m.group(1), (int(m.group(2)), when))
        elif isinstance(event, CheckpointCommitted) and event.tag in begun:
            iteration, start = begun.pop(event.tag)
            spans.append(SaveSpan(iteration, start, when))
    return spans


def measure_slice(text: str, *, job_start: datetime | None = None, source: str = "") -> SliceTimes | None:
    """Pace, save and start-up times of one finished (or running) slice from its job log text.

    Pace: NeoX prints, every log_interval, the mean seconds per iteration since its previous line; the
    first line of a job (warm-up) is left out when later ones exist and the rest are weighted by the
    iterations they cover. Save: the longest "about to be saved!" -> "ready now!" of the job (DeepSpeed's
    timestamps). Start-up: from the job's start (``job_start``, else the batch script's stamped first line;
    naive, in the cluster's local time like the log's timestamps), the first save's start minus the
    iterations before it at the measured pace.
    None when the log holds no training line.
    """
    steps: dict[int, float] = {}
    resumed_from = 0
    for raw in text.splitlines():
        event = parse_line(raw)
        if isinstance(event, TrainStep):
            if event.elapsed_ms is not None and event.iteration not in steps:
                steps[event.iteration] = event.elapsed_ms / 1000.0
        elif isinstance(event, ResumeInfo):
            resumed_from = event.iteration
    spans = save_spans(text)
    first_save = (spans[0].iteration, spans[0].begun) if spans else None
    durations = [span.seconds for span in spans]
    if not steps:
        return None
    iterations = sorted(steps)
    intervals = []
    previous = resumed_from
    for i in iterations:
        intervals.append((i - previous, steps[i]))
        previous = i
    if len(intervals) > 1:
        intervals = intervals[1:]
    covered = sum(n for n, _ in intervals if n > 0)
    pace = sum(n * s for n, s in intervals if n > 0) / covered if covered else None
    startup = None
    job_start = job_start or job_started(text)
    if job_start is not None and first_save is not None and pace is not None:
        iteration, when = first_save
        startup = max(0.0, (when - job_start).total_seconds() - (iteration - resumed_from) * pace)
    return SliceTimes(
        seconds_per_iteration=pace,
        seconds_per_save=max(durations) if durations else None,
        startup_s=startup,
        source=source or "measured",
    )


def exited_at(text: str) -> int | None:
    """The iteration NeoX's exit_interval stop printed ("exiting the program at iteration N"), if any."""
    found = None
    for raw in text.splitlines():
        m = _EXITED.search(clean_line(raw)[1])
        if m:
            found = int(m.group(1))
    return found


def slice_times(
    measured: Iterable[SliceTimes | None], profile_raw: Mapping[str, Any] | None = None
) -> SliceTimes | None:
    """The times to plan the next slice with: the newest measurement first, each unknown value from an
    older one, then from the profile's hints (``measured`` newest first, e.g. one per earlier slice)."""
    result: SliceTimes | None = None
    for times in [*measured, profile_times(profile_raw)]:
        if times is None:
            continue
        result = times if result is None else result.filled_from(times)
    return None if result is None else replace(result, source=result.source or "measured")
