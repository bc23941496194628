"""Goodput of a long run, read from its training job logs: where the wall clock went.

Used by ``bench/bench_goodput.py`` (the figures) and by the golden run (``tests/e2e/test_golden_run.py``,
which records the run this reads). Pure: text in, numbers out. Every fact comes from what the batch
script and the trainer print (``neoxflow: job N started=...``, NeoX's interval lines, DeepSpeed's stamped
save lines, the exit line, ``ended=...``), parsed by neoxflow's own parsers (neoxflow.neox.slices,
neoxflow.neox.logparse), so the benchmark measures what the slice planner sees.

Definitions (issue 17, item 9):

- a job's **stop**: ``planned`` (NeoX's exit_interval line: a slice ended after its planned save),
  ``finished`` (train_iters reached), ``time_limit`` (the USR1 safety net stopped it), ``interrupted``
  (no end line: a node failure, a cancel);
- **kept** iterations: those the final model descends from; job k keeps ``(resume_k, resume_k+1]``, the
  last one ``(resume, train_iters]``. **Recomputed** at job k's end: the iterations it logged past the
  point the next job resumed from (a granularity of NeoX's ``log_interval``);
- **kept time**: the interval lines' seconds per iteration x iterations, for kept intervals, less the
  saves inside those intervals (an interval line's time includes the save after the previous line);
- **gap**: the next job's start minus this job's end (the end line's stamp, else when it was last seen
  in squeue); it holds Airflow's reaction, Slurm's queue and scheduling;
- **effective training time**: kept time / wall clock from the first job's start to the save of
  ``train_iters``: start-up, saves, gaps, queue and recomputed iterations all count against it.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from neoxflow.neox.logparse import ResumeInfo, TrainStep, parse_line
from neoxflow.neox.slices import exited_at, job_ended, job_started, measure_slice, save_spans

PLANNED, FINISHED, TIME_LIMIT, INTERRUPTED = "planned", "finished", "time_limit", "interrupted"


@dataclass
class JobFacts:
    """One training job as its log tells it."""

    job_id: str
    started: datetime | None
    ended: datetime | None
    resumed_from: int
    stop: str
    last_iteration: int | None
    #: (iteration, iterations covered, seconds per iteration) of each interval line
    steps: list[tuple[int, int, float]] = field(default_factory=list)
    losses: dict[int, float] = field(default_factory=dict)
    #: (iteration, seconds, when it became complete) of each save
    saves: list[tuple[int, float, datetime]] = field(default_factory=list)
    startup_s: float | None = None


def job_facts(job_id: str, text: str, train_iters: int) -> JobFacts:
    """Read one job log (``nxf-train-<run>-<job>.out``)."""
    resumed, previous = 0, None
    steps, losses = [], {}
    for raw in text.splitlines():
        event = parse_line(raw)
        if isinstance(event, ResumeInfo):
            resumed = previous = event.iteration
        elif isinstance(event, TrainStep):
            covered = event.iteration - (previous if previous is not None else resumed)
            previous = event.iteration
            if event.elapsed_ms is not None and covered > 0:
                steps.append((event.iteration, covered, event.elapsed_ms / 1000.0))
            if event.lm_loss is not None:
                losses[event.iteration] = event.lm_loss
    saves = [(span.iteration, span.seconds, span.done) for span in save_spans(text)]
    last = steps[-1][0] if steps else None
    exit_iteration = exited_at(text)
    if exit_iteration is not None:
        stop = PLANNED
    elif "NEOXFLOW slice_end" in text:
        stop = TIME_LIMIT
    elif last == train_iters and "training step ended with exit code 0" in text:
        stop = FINISHED
    else:
        stop = INTERRUPTED
    measured = measure_slice(text)
    return JobFacts(
        job_id=str(job_id),
        started=job_started(text),
        ended=job_ended(text),
        resumed_from=resumed,
        stop=stop,
        last_iteration=last,
        steps=steps,
        losses=losses,
        saves=saves,
        startup_s=measured.startup_s if measured else None,
    )


@dataclass
class Transition:
    after_job: str
    next_job: str
    cause: str  # the ended job's stop
    gap_s: float | None
    recomputed: int
    #: training time lost with the ended job: from the save the next job resumed from (or the job's
    #: first iteration) to the job's end; None without an end
    lost_s: float | None = None
    #: the scenario's faults between the ended job's start and the next job's start: such a gap is a
    #: recovery, not a slice relay
    disturbed_by: list[str] = field(default_factory=list)


@dataclass
class Goodput:
    train_iters: int
    jobs: list[JobFacts]
    transitions: list[Transition]
    kept_s: float
    wall_s: float | None
    effective: float | None
    seconds_per_iteration: float | None
    seconds_per_save: float | None
    startup_s: float | None

    def recomputed(self, cause: str) -> int:
        return sum(t.recomputed for t in self.transitions if t.cause == cause)

    def max_gap(self, causes: Sequence[str], undisturbed: bool = False) -> float | None:
        gaps = [
            t.gap_s
            for t in self.transitions
            if t.cause in causes and t.gap_s is not None and not (undisturbed and t.disturbed_by)
        ]
        return max(gaps) if gaps else None


def analyse(
    jobs: Sequence[JobFacts],
    train_iters: int,
    last_seen: Mapping[str, datetime] | None = None,
    events: Sequence[tuple[datetime, str]] = (),
) -> Goodput:
    """The run's goodput from its jobs (any order; sorted by job id here). ``last_seen``: when each job
    was last seen in squeue, the end of a job that printed no end line. ``events``: (when, what) of the
    faults the scenario injected, to tell a recovery from a slice relay."""
    ordered = sorted(jobs, key=lambda j: int(j.job_id))
    last_seen = last_seen or {}
    transitions, kept = [], 0.0
    for k, job in enumerate(ordered):
        upto = ordered[k + 1].resumed_from if k + 1 < len(ordered) else train_iters
        saves_in = {iteration: seconds for iteration, seconds, _ in job.saves}
        for iteration, covered, per_iteration in job.steps:
            if job.resumed_from < iteration <= upto:
                inside = sum(s for i, s in saves_in.items() if iteration - covered <= i < iteration)
                kept += max(0.0, covered * per_iteration - inside)
        if k + 1 < len(ordered):
            following = ordered[k + 1]
            end = job.ended or last_seen.get(job.job_id)
            gap = (following.started - end).total_seconds() if end and following.started else None
            transitions.append(
                Transition(
                    after_job=job.job_id,
                    next_job=following.job_id,
                    cause=job.stop,
                    gap_s=gap,
                    recomputed=max(0, (job.last_iteration or 0) - following.resumed_from),
                    lost_s=_lost_s(job, following.resumed_from, end),
                    disturbed_by=[
                        what
                        for when, what in events
                        if job.started and following.started and job.started <= when <= following.started
                    ],
                )
            )
    first = ordered[0].started if ordered else None
    final = next((when for job in reversed(ordered) for i, _, when in job.saves if i == train_iters), None)
    wall = (final - first).total_seconds() if first and final else None
    paces = [p for job in ordered for _, _, p in job.steps[1:]]  # each job's first line is warm-up
    saves = [s for job in ordered for _, s, _ in job.saves]
    startups = [job.startup_s for job in ordered if job.startup_s is not None]
    return Goodput(
        train_iters=train_iters,
        jobs=ordered,
        transitions=transitions,
        kept_s=kept,
        wall_s=wall,
        effective=kept / wall if wall else None,
        seconds_per_iteration=statistics.median(paces) if paces else None,
        seconds_per_save=statistics.mean(saves) if saves else None,
        startup_s=statistics.mean(startups) if startups else None,
    )


def _lost_s(job: JobFacts, kept_upto: int, end: datetime | None) -> float | None:
    """Seconds of the job's training after the point the next job resumed from: from that save being
    complete (or, when the job saved nothing the next one kept, its first iteration) to its end."""
    if end is None or job.started is None:
        return None
    kept_saves = [done for iteration, _, done in job.saves if iteration == kept_upto]
    since = kept_saves[-1] if kept_saves else job.started + timedelta(seconds=job.startup_s or 0.0)
    return max(0.0, (end - since).total_seconds())


def losses_by_iteration(jobs: Sequence[JobFacts]) -> dict[int, list[float]]:
    """Every logged lm_loss of the run by iteration (an iteration trained twice appears twice)."""
    found: dict[int, list[float]] = {}
    for job in sorted(jobs, key=lambda j: int(j.job_id)):
        for iteration, loss in job.losses.items():
            found.setdefault(iteration, []).append(loss)
    return found


@dataclass(frozen=True)
class RealSchedule:
    """The production day the compressed run is extrapolated to.

    ``startup_s`` and ``save_s`` are the model's own times on real hardware, measured on GPT-NeoX (not on
    the stand-in, whose 6.5M-parameter CPU model saves in a fraction of a second and starts in seconds: its
    ratios say nothing about a GPU run): Pythia-160M on one H200 logged its first interval 42 s after the
    batch script started and wrote its 2.27 GB checkpoint in 3.5 s (docs/gpu-proof.md). Pass a larger
    model's times to extrapolate to it.
    """

    slice_s: float = 24 * 3600.0
    failures_per_day: float = 1.0
    checkpoint_every_s: float = 1800.0
    startup_s: float = 42.0
    save_s: float = 3.5


def extrapolate(
    g: Goodput, checkpoint_interval: int, schedule: RealSchedule = RealSchedule()
) -> dict[str, float]:
    """Effective training time of a real day from the measured run.

    What neoxflow decides is taken from the compressed run as measured: the largest gap after a slice end
    that no injected fault disturbed, the mean gap after a failure (Airflow's and Slurm's reaction, the
    same seconds on any cluster), the iterations recomputed at a slice end and the training time lost per
    failure (after the checkpoint the next job resumed from, to the job's end), each as a share of a
    checkpoint interval (the compressed run saved every ``checkpoint_interval`` iterations, a real one
    every ``checkpoint_every_s``). What the model costs
    (start-up, a save) is the schedule's. Lost per day: every save; at each slice change the gap, a
    start-up and the recomputed share; at each failure the lost share, the gap and a start-up.
    """
    if not (g.seconds_per_iteration and checkpoint_interval):
        raise ValueError("no measured pace: nothing to extrapolate from")
    failures = [t for t in g.transitions if t.cause == INTERRUPTED]
    interval_s = checkpoint_interval * g.seconds_per_iteration
    lost = [
        t.lost_s / interval_s if t.lost_s is not None else t.recomputed / checkpoint_interval
        for t in failures
    ]
    lost_share = statistics.mean(lost) if lost else 0.5
    failure_gaps = [t.gap_s for t in failures if t.gap_s is not None]
    failure_gap = statistics.mean(failure_gaps) if failure_gaps else 0.0
    slice_ends = [t for t in g.transitions if t.cause in (PLANNED, TIME_LIMIT)]
    slice_share = (
        statistics.mean(t.recomputed for t in slice_ends) / checkpoint_interval if slice_ends else 0.0
    )
    slice_gap = g.max_gap((PLANNED, TIME_LIMIT), undisturbed=True) or 0.0
    day = 86400.0
    per_day = {
        "saves_s": day / schedule.checkpoint_every_s * schedule.save_s,
        "slice_change_s": day
        / schedule.slice_s
        * (slice_gap + schedule.startup_s + slice_share * schedule.checkpoint_every_s),
        "failure_s": schedule.failures_per_day
        * (lost_share * schedule.checkpoint_every_s + failure_gap + schedule.startup_s),
    }
    lost_per_day = sum(per_day.values())
    return {
        "save_s": schedule.save_s,
        "startup_s": schedule.startup_s,
        "lost_share_per_failure": lost_share,
        "recomputed_share_per_slice_end": slice_share,
        **per_day,
        "effective": max(0.0, (day - lost_per_day) / day),
    }
