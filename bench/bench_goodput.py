"""Goodput of a long run on the local cluster, and what it means for a real schedule (issue 17, item 9).

    make bench-goodput                                  # runs the golden run, then reports
    .venv/bin/python bench/bench_goodput.py --timeline FILE   # reports on a recorded golden run

The run is the golden run of ``tests/e2e/test_golden_run.py`` (real Airflow services, the local cluster):
2-minute slices, a scheduler and a triggerer killed, a node failure resumed on the spare, a clear, a DAG
run marked failed and continued, compared with an uninterrupted run of the same request. It prints each
job (nodes, from -> to, how it stopped, start-up, saves), each gap between one job's end and the next
one's start with its cause, the iterations recomputed at each, the effective training time of the
compressed run, and the extrapolation to a real day (bench/goodput.py says how: the gaps and the work
lost at slice ends and failures as measured here, the model's start-up and save time from real GPT-NeoX,
``--startup-s`` / ``--save-s`` for another model). Gaps after a person's
action (the clear, the continuation this benchmark triggers by hand) are shown but are not slice gaps.

The last line is exactly
``GOODPUT effective=<extrapolated 0..1> max_gap_s=<largest gap after a slice end that no injected fault
disturbed> recomputed_at_slice_end=<n> parity=<identical|differs>``. A gap whose jobs saw a fault (a
killed scheduler, a node set DOWN, a person's action) is printed as a recovery. Targets: effective >= 0.98,
max_gap_s <= poll interval + 5 s, recomputed_at_slice_end = 0, parity identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

from bench.goodput import PLANNED, TIME_LIMIT, RealSchedule, analyse, extrapolate, job_facts  # noqa: E402

DEFAULT_TIMELINE = REPO / "bench" / "results" / "goodput-timeline.json"


def run_golden(timeline: Path) -> None:
    timeline.unlink(missing_ok=True)
    env = {**os.environ, "NEOXFLOW_GOODPUT_OUT": str(timeline)}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", "-m", "e2e"]
    cmd.append("tests/e2e/test_golden_run.py")
    print("running the golden run:", " ".join(cmd[2:]), flush=True)
    result = subprocess.run(cmd, cwd=REPO, env=env)
    if not timeline.exists():
        sys.exit(f"the golden run wrote no timeline (pytest exit {result.returncode})")
    if result.returncode != 0:
        print(f"note: the golden run's test failed (exit {result.returncode}); reporting what it recorded")


def report(timeline_path: Path, poll_s: float, schedule: RealSchedule) -> int:
    timeline = json.loads(timeline_path.read_text())
    train_iters, interval = int(timeline["train_iters"]), int(timeline["checkpoint_interval"])
    jobs = [job_facts(job_id, text, train_iters) for job_id, text in timeline["logs"].items()]
    seen = {k: datetime.fromisoformat(v) for k, v in timeline["last_seen"].items()}
    events = [(datetime.fromtimestamp(e["at"]), e["what"]) for e in timeline.get("events", [])]
    g = analyse(jobs, train_iters, seen, events)
    print(
        f"\nrun {timeline['run_name']}: train_iters {train_iters}, checkpoint every {interval}, "
        f"time limit {timeline['time_limit']}, {len(g.jobs)} jobs"
    )
    print(f"{'job':>6} {'nodes':<12} {'from':>5} {'to':>5} {'stop':<12} {'start-up s':>10} {'saves':>5}")
    for job in g.jobs:
        nodes = ",".join(timeline.get("nodes", {}).get(job.job_id, [])) or "?"
        startup = f"{job.startup_s:.1f}" if job.startup_s is not None else "-"
        print(
            f"{job.job_id:>6} {nodes:<12} {job.resumed_from:>5} {job.last_iteration or 0:>5} "
            f"{job.stop:<12} {startup:>10} {len(job.saves):>5}"
        )
    print("\ngaps (one job's end -> the next one's start)")
    for t in g.transitions:
        gap = f"{t.gap_s:.1f}s" if t.gap_s is not None else "?"
        lost = f"{t.lost_s:.1f}s" if t.lost_s is not None else "?"
        recovery = f"; a recovery from: {', '.join(t.disturbed_by)}" if t.disturbed_by else ""
        print(
            f"  {t.after_job} -> {t.next_job}: {gap:>8}  after a {t.cause} stop, "
            f"{t.recomputed} iterations recomputed, {lost} of training lost{recovery}"
        )
    for event in timeline.get("events", []):
        print(f"  event at {datetime.fromtimestamp(event['at']):%H:%M:%S}: {event['what']}")
    print(
        f"\npace {g.seconds_per_iteration:.3f} s/iteration, save {g.seconds_per_save or 0:.3f} s, "
        f"start-up {g.startup_s or 0:.1f} s (means over the jobs)"
    )
    print(
        f"compressed run: kept iterations {g.kept_s:.0f}s of {g.wall_s:.0f}s wall clock -> effective "
        f"{g.effective:.3f} (includes the faults and the hand-made pauses of the scenario)"
    )
    real = extrapolate(g, interval, schedule)
    print(
        f"real day (24 h slices, {schedule.failures_per_day:g} node failure, a checkpoint every "
        f"{schedule.checkpoint_every_s / 60:.0f} min; the model's start-up {real['startup_s']:.0f}s and save "
        f"{real['save_s']:.1f}s; measured here: {real['lost_share_per_failure']:.2f} of a checkpoint "
        f"interval lost per failure, {real['recomputed_share_per_slice_end']:.2f} per slice end):"
    )
    print(
        f"  saves {real['saves_s']:.0f}s + slice change {real['slice_change_s']:.0f}s + failure "
        f"{real['failure_s']:.0f}s lost per day -> effective {real['effective']:.4f}"
    )
    # the scenario's failures strike right after a checkpoint; a real one strikes at a random moment
    random_extra = schedule.failures_per_day * max(0.0, 0.5 - real["lost_share_per_failure"])
    random_effective = real["effective"] - random_extra * schedule.checkpoint_every_s / 86400
    print(
        f"  (a failure at a random moment loses half a checkpoint interval on average: effective "
        f"{random_effective:.4f})"
    )
    slice_gap = g.max_gap((PLANNED, TIME_LIMIT), undisturbed=True)
    recomputed = g.recomputed(PLANNED) + g.recomputed(TIME_LIMIT)
    targets = {
        "effective >= 0.98": real["effective"] >= 0.98,
        f"max_gap_s <= poll {poll_s:g} + 5": slice_gap is not None and slice_gap <= poll_s + 5,
        "recomputed_at_slice_end == 0": recomputed == 0,
        "parity identical": timeline["parity"] == "identical",
    }
    print("targets: " + ", ".join(f"{k}: {'met' if ok else 'NOT met'}" for k, ok in targets.items()))
    gap_text = "none" if slice_gap is None else f"{slice_gap:.1f}"
    print(
        f"GOODPUT effective={real['effective']:.4f} max_gap_s={gap_text} "
        f"recomputed_at_slice_end={recomputed} parity={timeline['parity']}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeline", type=Path, help="report on this recorded golden run, do not run one")
    parser.add_argument(
        "--poll-s",
        type=float,
        default=float(os.environ.get("NEOXFLOW_POLL_INTERVAL", "2")),
        help="the training watch's poll interval of the run (the e2e services use 2 s)",
    )
    defaults = RealSchedule()
    parser.add_argument(
        "--startup-s",
        type=float,
        default=defaults.startup_s,
        help="the model's start-up on the real cluster (default: Pythia-160M on one H200, docs/gpu-proof.md)",
    )
    parser.add_argument(
        "--save-s",
        type=float,
        default=defaults.save_s,
        help="one checkpoint save on the real cluster (default: Pythia-160M's 2.27 GB on one H200)",
    )
    args = parser.parse_args(argv)
    schedule = RealSchedule(startup_s=args.startup_s, save_s=args.save_s)
    timeline = args.timeline
    if timeline is None:
        timeline = DEFAULT_TIMELINE
        timeline.parent.mkdir(parents=True, exist_ok=True)
        run_golden(timeline)
    return report(timeline, args.poll_s, schedule)


if __name__ == "__main__":
    raise SystemExit(main())
