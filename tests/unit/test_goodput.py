"""The goodput arithmetic of bench/goodput.py on job logs written the way the batch script and NeoX
write them (the golden run records real ones; these are small enough to check by hand)."""

from __future__ import annotations

from datetime import datetime

import pytest

from bench.goodput import (
    FINISHED,
    INTERRUPTED,
    PLANNED,
    RealSchedule,
    analyse,
    extrapolate,
    job_facts,
    losses_by_iteration,
)


def stamp(second: float) -> str:
    whole = int(second)
    return f"2026-01-01 00:{whole // 60:02d}:{whole % 60:02d},{int(round((second - whole) * 1000)):03d}"


def log(job: int, start_s: int, resume: int, last: int, *, stop: str, saves=(), per_iteration=1.0) -> str:
    """A job that starts at ``start_s``, needs 5 s to start, trains ``per_iteration`` s per iteration,
    logs every 10 iterations and saves (0.5 s) at ``saves``."""
    lines = [f"neoxflow: job {job} started={stamp(start_s)[:19]} nodes=node[1-2] ranks=2 master=127.0.0.1:1"]
    lines.append(f"0: Loading checkpoint and starting from iteration {resume}")
    clock = start_s + 5.0
    for i in range(resume + 10, last + 1, 10):
        clock += 10 * per_iteration
        lines.append(
            f"0:  samples/sec: 8.0 | iteration {i:8d}/     100 | elapsed time per iteration (ms): "
            f"{per_iteration * 1000:.1f} | lm_loss: {10.0 - i / 100:.6E} |"
        )
        if i in saves:
            lines.append(
                f"0: [{stamp(clock)}] [INFO] [x] [Torch] Checkpoint global_step{i} is about to be saved!"
            )
            clock += 0.5
            lines.append(f"0: [{stamp(clock)}] [INFO] [x] [Torch] Checkpoint global_step{i} is ready now!")
    if stop == PLANNED:
        lines.append(f"0: rank: 0 | time: x | exiting the program at iteration {last}")
        lines.append(f"neoxflow: training step ended with exit code 0 ended={stamp(clock + 1)[:19]}")
    elif stop == FINISHED:
        lines.append(f"neoxflow: training step ended with exit code 0 ended={stamp(clock + 1)[:19]}")
    return "\n".join(lines) + "\n"


def test_three_jobs_a_planned_stop_a_node_failure_and_the_end():
    jobs = [
        job_facts("11", log(11, 0, 0, 40, stop=PLANNED, saves=(20, 40)), 100),
        # next job starts 3 s after job 11's end line (0+5+40+1 s of saves+1 = 47 s)
        job_facts("12", log(12, 50, 40, 70, stop=INTERRUPTED, saves=(60,)), 100),
        job_facts("14", log(14, 100, 60, 100, stop=FINISHED, saves=(80, 100)), 100),
    ]
    assert [j.stop for j in jobs] == [PLANNED, INTERRUPTED, FINISHED]
    assert [j.resumed_from for j in jobs] == [0, 40, 60]
    g = analyse(jobs, 100, {"12": datetime(2026, 1, 1, 0, 1, 32)})  # job 12 last seen at 92 s
    assert [(t.cause, t.recomputed) for t in g.transitions] == [(PLANNED, 0), (INTERRUPTED, 10)]
    assert g.transitions[0].gap_s == pytest.approx(50 - 47)
    assert g.transitions[1].gap_s == pytest.approx(100 - 92)
    # kept: 0..40, 40..60, 60..100 at 1 s each, less the saves inside kept intervals (an interval line
    # counts the save after the line before it): 20 (in 20..30) and 80 (in 80..90); 40 and 60 fall in
    # intervals that are not kept, 100 in none
    assert g.kept_s == pytest.approx(100 - 2 * 0.5)
    # wall: the first job's start (0 s) to the save of iteration 100 being ready (100+5+40+1.0 s)
    assert g.wall_s == pytest.approx(146.0)
    assert g.effective == pytest.approx(99.0 / 146.0)
    assert g.seconds_per_save == pytest.approx(0.5) and g.seconds_per_iteration == pytest.approx(1.0)
    assert g.startup_s == pytest.approx(5.0, abs=0.01)
    assert g.recomputed(PLANNED) == 0 and g.recomputed(INTERRUPTED) == 10
    assert g.max_gap((PLANNED,)) == pytest.approx(3.0)
    # the failed job trained past the save of 60 (done at 75.5 s) until it was last seen at 92 s; the
    # planned stop lost only its exit, 1 s after the save of 40
    assert g.transitions[1].lost_s == pytest.approx(92 - 75.5)
    assert g.transitions[0].lost_s == pytest.approx(1.0)
    # a fault between a job's start and the next one's start makes that gap a recovery, not a relay
    kill = (datetime(2026, 1, 1, 0, 0, 30), "killed the scheduler")
    disturbed = analyse(jobs, 100, {"12": datetime(2026, 1, 1, 0, 1, 32)}, [kill])
    assert [t.disturbed_by for t in disturbed.transitions] == [["killed the scheduler"], []]
    assert disturbed.max_gap((PLANNED,), undisturbed=True) is None
    assert disturbed.max_gap((PLANNED, INTERRUPTED), undisturbed=True) == pytest.approx(8.0)
    losses = losses_by_iteration(jobs)
    assert losses[70] == [pytest.approx(9.3)] * 2 and len(losses[60]) == 1  # 70 was trained twice


def test_the_extrapolation_keeps_the_measured_gaps_and_lost_shares_and_the_schedule_s_model_times():
    jobs = [
        job_facts("1", log(1, 0, 0, 40, stop=PLANNED, saves=(20, 40)), 100),
        job_facts("2", log(2, 50, 40, 70, stop=INTERRUPTED, saves=(60,)), 100),
        job_facts("3", log(3, 100, 60, 100, stop=FINISHED, saves=(80, 100)), 100),
    ]
    g = analyse(jobs, 100, {"2": datetime(2026, 1, 1, 0, 1, 32)})
    schedule = RealSchedule(startup_s=300.0, save_s=20.0)
    real = extrapolate(g, checkpoint_interval=20, schedule=schedule)
    assert real["saves_s"] == pytest.approx(48 * 20.0)  # a save every 30 min
    # one slice change a day: the measured 3 s gap and a start-up; nothing recomputed at the planned stop
    assert real["recomputed_share_per_slice_end"] == 0.0
    assert real["slice_change_s"] == pytest.approx(3.0 + 300.0)
    # the failure lost 16.5 s of a 20 s checkpoint interval (from the save of 60 at 75.5 s to the job's
    # last sighting at 92 s), plus its 8 s gap and a start-up
    assert real["lost_share_per_failure"] == pytest.approx(16.5 / 20)
    assert real["failure_s"] == pytest.approx(16.5 / 20 * 1800 + 8.0 + 300.0)
    assert real["effective"] == pytest.approx(1 - (960.0 + 303.0 + real["failure_s"]) / 86400)
    # iterations recomputed at a slice end cost their share of 30 min once a day
    late = [job_facts("1", log(1, 0, 0, 50, stop=PLANNED, saves=(20, 40)), 100), *jobs[1:]]
    g_late = analyse(late, 100, {"2": datetime(2026, 1, 1, 0, 1, 32)})
    worse = extrapolate(g_late, 20, schedule)
    assert worse["recomputed_share_per_slice_end"] == pytest.approx(0.5)
    assert worse["slice_change_s"] == pytest.approx(g_late.max_gap((PLANNED,)) + 300.0 + 900.0)
    with pytest.raises(ValueError, match="pace"):
        extrapolate(analyse([], 100), checkpoint_interval=20)
