"""Where a slice stops (plugins/neoxflow/neox/slices.py): after a complete checkpoint, before the limit.

The plan is checked against a model of GPT-NeoX's loop (megatron/training.py ``train`` + ``pretrain`` at
ea7aefd8): exit_interval is a modulus tested after the save, and the exit skips the post-training save.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path

import pytest

from neoxflow.neox import slices as sl

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "neox-run"


def neox_slice(resume: int, cfg: dict) -> tuple[int, list[int]]:
    """(last iteration, iterations saved) of a NeoX run resumed at ``resume`` with config ``cfg``."""
    factor, extra, exit_interval = cfg.get("checkpoint_factor"), cfg.get("extra_save_iters") or [], None
    exit_interval = cfg.get("exit_interval")
    saved, i = [], resume
    while i < cfg["train_iters"]:
        i += 1
        if (factor and i % factor == 0) or i in extra:
            saved.append(i)
        if exit_interval and i % exit_interval == 0:
            return i, saved  # sys.exit(): no post-training save
    saved.append(i)  # pretrain(): save after the loop
    return i, saved


def times(it=1.0, save=10.0, startup=60.0) -> sl.SliceTimes:
    return sl.SliceTimes(seconds_per_iteration=it, seconds_per_save=save, startup_s=startup)


def plan(resume=0, train_iters=1000, factor=100, extra=None, t=None, limit=600.0, margin=60.0, **kw):
    return sl.plan_slice(
        resume_iteration=resume,
        train_iters=train_iters,
        checkpoint_factor=factor,
        extra_save_iters=extra,
        times=times() if t is None else t,
        time_limit_s=limit,
        stop_before_limit_s=margin,
        slack=kw.get("slack", 0.0),
    )


def test_stops_at_the_last_natural_save_that_completes_before_the_stop_signal():
    # 60 s start-up + 1 s/iteration + 10 s per save; 540 s until USR1: 400 (+4 saves = 500 s) fits, 500 not
    p = plan()
    assert (p.kind, p.stop_iteration, p.extra_save) == (sl.STOP_AT, 400, None)
    assert p.config_overrides == {"exit_interval": 400, "extra_save_iters": None}
    assert p.expected_end_s == 500.0 and p.deadline_s == 540.0 and p.submit
    assert neox_slice(0, {"train_iters": 1000, "checkpoint_factor": 100, **p.config_overrides}) == (
        400,
        [100, 200, 300, 400],
    )


def test_an_end_exactly_at_the_deadline_fits():
    assert plan(limit=560.0).stop_iteration == 400  # 500 s of 500 s
    assert plan(limit=559.9, margin=59.9).stop_iteration == 400
    assert plan(limit=559.0).stop_iteration != 400


def test_resume_at_a_save_iteration_stops_at_a_later_one_and_exit_interval_is_the_stop_itself():
    p = plan(resume=400, t=times(it=1.0, save=10.0, startup=60.0))  # 800: 60 + 400 + 40 = 500 <= 540; 900 no
    assert p.stop_iteration == 800 and p.config_overrides["exit_interval"] == 800
    # a modulus: from 400 the first multiple of 800 is 800 (the first multiple of S above R < S is S)
    assert neox_slice(400, {"train_iters": 1000, "checkpoint_factor": 100, **p.config_overrides})[0] == 800


def test_near_train_iters_the_last_slice_gets_no_exit_interval():
    """exit_interval == train_iters would exit before pretrain()'s post-training save."""
    p = plan(resume=990, train_iters=995, factor=100)
    assert (p.kind, p.stop_iteration) == (sl.STOP_AT, 995)
    assert p.config_overrides == {"exit_interval": None, "extra_save_iters": None}
    assert neox_slice(990, {"train_iters": 995, "checkpoint_factor": 100, **p.config_overrides}) == (
        995,
        [995],
    )
    bad = {"train_iters": 995, "checkpoint_factor": 100, "exit_interval": 995}
    assert neox_slice(990, bad) == (995, [])  # what the rule avoids: nothing saved at all


def test_train_iters_on_a_save_iteration_is_saved_twice_and_budgeted_so():
    # 900 -> 1000: 60 + 100 + 2 saves x 10 = 180 s
    assert plan(resume=900, limit=240.0).stop_iteration == 1000
    assert (
        plan(resume=900, limit=239.0).kind == sl.STOP_AT
        and plan(resume=900, limit=239.0).stop_iteration < 1000
    )


def test_when_no_natural_save_fits_one_extra_save_is_added_at_the_last_iteration_that_fits():
    p = plan(resume=100, factor=1000, extra=[5, 2000], limit=600.0)  # 540 - 60 - 10 = 470 iterations
    assert (p.stop_iteration, p.extra_save) == (570, 570)
    assert p.config_overrides == {"exit_interval": 570, "extra_save_iters": [5, 570, 2000]}
    cfg = {"train_iters": 5000, "checkpoint_factor": 1000, **p.config_overrides}
    assert neox_slice(100, cfg) == (570, [570])


def test_too_short_for_one_iteration_and_a_save_is_not_submitted():
    p = plan(t=times(it=100.0, save=400.0, startup=60.0))  # 60 + 100 + 400 > 540
    assert (p.kind, p.stop_iteration, p.submit) == (sl.CANNOT_FIT, None, False)
    assert "raise the time limit" in p.reason
    assert plan(limit=100.0, margin=60.0).kind == sl.CANNOT_FIT  # the start-up alone eats the slice


def test_without_a_measured_pace_the_slice_runs_to_the_safety_net():
    for t in (None, sl.SliceTimes(seconds_per_save=5.0)):
        p = sl.plan_slice(
            resume_iteration=0,
            train_iters=100,
            checkpoint_factor=10,
            extra_save_iters=None,
            times=t,
            time_limit_s=600,
            stop_before_limit_s=60,
        )
        assert (p.kind, p.stop_iteration, p.submit) == (sl.RUN_TO_LIMIT, None, True)
        assert p.config_overrides == {"exit_interval": None, "extra_save_iters": None}


def test_unknown_save_and_start_up_times_default_conservatively():
    p = plan(
        t=sl.SliceTimes(seconds_per_iteration=0.1), limit=3600.0, margin=300.0, factor=1000, train_iters=10**6
    )
    # 600 s start-up by default, 300 s (stop_before_limit_s) per save, 3300 s to USR1: k x 1000 fits while
    # 600 + 100 k + 300 k <= 3300, so k = 6
    assert p.stop_iteration == 6000
    assert p.expected_end_s <= p.deadline_s


def test_slack_stretches_the_measured_times():
    assert plan(slack=0.0).stop_iteration == 400
    assert plan(slack=0.2).stop_iteration == 300  # 1.2 x 500 = 600 > 540; 1.2 x 390 = 468


def test_every_plan_stops_neox_exactly_after_a_complete_save_before_the_deadline():
    """Property over resume points, factors, extra saves, paces and limits (exhaustive on a small grid)."""
    for resume, factor, extra, it, limit in itertools.product(
        (0, 7, 50, 99, 100, 455, 990),
        (None, 1, 50, 100, 333),
        (None, [3, 120, 777]),
        (0.5, 1.0, 3.0),
        (200, 600, 2000),
    ):
        if factor is None and extra is None:
            continue
        p = plan(resume=resume, train_iters=1000, factor=factor, extra=extra, t=times(it=it), limit=limit)
        if p.kind != sl.STOP_AT:
            assert p.kind == sl.CANNOT_FIT
            continue
        cfg = {"train_iters": 1000, "checkpoint_factor": factor, **p.config_overrides}
        last, saved = neox_slice(resume, cfg)
        assert last == p.stop_iteration and saved and saved[-1] == last, (resume, factor, extra, it, limit, p)
        cost = 60 + (last - resume) * it + 10 * len(saved)
        assert cost <= limit - 60 + 1e-9
        assert cfg["extra_save_iters"] in (None, sorted(set(cfg["extra_save_iters"] or [])))


def test_inputs_that_cannot_be_planned_are_refused():
    with pytest.raises(ValueError, match="nothing to train"):
        plan(resume=1000, train_iters=1000)
    with pytest.raises(ValueError, match="only 'linear'"):
        sl.plan_slice_for_config(
            {"train_iters": 10, "checkpoint_factor": 2, "checkpoint_scale": "log"},
            resume_iteration=0,
            times=times(),
            time_limit_s=600,
            stop_before_limit_s=60,
        )


def test_plan_from_the_runs_config_keeps_its_extra_saves():
    cfg = {"train_iters": 1000, "checkpoint_factor": 100, "extra_save_iters": [150], "exit_interval": None}
    p = sl.plan_slice_for_config(
        cfg, resume_iteration=0, times=times(), time_limit_s=600, stop_before_limit_s=60
    )
    assert p.stop_iteration == 400 and p.config_overrides == {"exit_interval": 400, "extra_save_iters": [150]}


def test_measures_pace_and_save_time_from_real_neox_logs():
    run1 = (FIXTURES / "run1.log").read_text()
    m = sl.measure_slice(run1, source="job 1")
    # lines at 5..60 every 5; the first (warm-up) left out; the 0.3 s saves from DeepSpeed's timestamps
    assert m.source == "job 1" and 0.01 < m.seconds_per_iteration < 0.2
    assert m.seconds_per_save == pytest.approx(0.302) or m.seconds_per_save == pytest.approx(0.303)
    assert m.startup_s is None
    run2 = (FIXTURES / "run2.log").read_text()  # resumed at 60: lines 65..80
    m2 = sl.measure_slice(run2)
    assert m2.seconds_per_iteration == pytest.approx((27.5 + 24.4 + 24.7) / 3 / 1000)
    assert m2.seconds_per_save == pytest.approx(0.324)
    start = datetime(2026, 11, 27, 20, 55, 0)
    with_start = sl.measure_slice(run2, job_start=start)  # first save (80) began at 20:55:23.972
    assert with_start.startup_s == pytest.approx(23.972 - 20 * m2.seconds_per_iteration)
    assert sl.measure_slice("nothing here\n") is None


def test_measure_reads_srun_labelled_lines_and_the_exit_line():
    log = "\n".join(
        [
            "0: Loading checkpoint and starting from iteration 10",
            "0:  samples/sec: 1.0 | iteration       20/     100 | elapsed time per iteration (ms): 900.0 |",
            "0:  samples/sec: 1.0 | iteration       30/     100 | elapsed time per iteration (ms): 1000.0 |",
            "0:  samples/sec: 1.0 | iteration       40/     100 | elapsed time per iteration (ms): 2000.0 |",
            "0: [2026-01-01 00:00:10,000] [INFO] [x] [Torch] Checkpoint global_step40 is about to be saved!",
            "0: [2026-01-01 00:00:12,500] [INFO] [x] [Torch] Checkpoint global_step40 is ready now!",
            "0: rank: 0 | time: 2026-01-01 00:00:13 | exiting the program at iteration 40",
        ]
    )
    m = sl.measure_slice(log)
    assert m.seconds_per_iteration == pytest.approx(1.5) and m.seconds_per_save == pytest.approx(2.5)
    assert sl.exited_at(log) == 40 and sl.exited_at("no exit\n") is None


def test_start_up_is_measured_from_the_batch_scripts_stamped_lines_without_accounting():
    """No sacct on the cluster: the batch script's own first line dates the job (train*.sbatch)."""
    log = "\n".join(
        [
            "neoxflow: job 7 started=2026-01-01 00:00:00 nodes=node[1-2] ranks=2 master=127.0.0.1:20007",
            "0: Loading checkpoint and starting from iteration 10",
            "0:  samples/sec: 1.0 | iteration       20/     100 | elapsed time per iteration (ms): 1000.0 |",
            "0:  samples/sec: 1.0 | iteration       30/     100 | elapsed time per iteration (ms): 1000.0 |",
            "0: [2026-01-01 00:00:40,000] [INFO] [x] [Torch] Checkpoint global_step30 is about to be saved!",
            "0: [2026-01-01 00:00:41,000] [INFO] [x] [Torch] Checkpoint global_step30 is ready now!",
            "neoxflow: training step ended with exit code 0 ended=2026-01-01 00:00:45",
        ]
    )
    m = sl.measure_slice(log)
    # the first save began 40 s after the start, 20 iterations of 1 s after the resume at 10
    assert m.startup_s == pytest.approx(20.0)
    assert sl.job_started(log) == datetime(2026, 1, 1, 0, 0, 0)
    assert sl.job_ended(log) == datetime(2026, 1, 1, 0, 0, 45)
    # an explicit start (from accounting) wins over the stamped line
    assert sl.measure_slice(log, job_start=datetime(2026, 1, 1, 0, 0, 10)).startup_s == pytest.approx(10.0)
    stopped = log.replace(
        "neoxflow: training step ended with exit code 0 ended=2026-01-01 00:00:45",
        "NEOXFLOW slice_end reason=time_limit step_exit=143 ended=2026-01-01 00:00:50",
    )
    assert sl.job_ended(stopped) == datetime(2026, 1, 1, 0, 0, 50)
    unstamped = "\n".join(line for line in log.splitlines() if "neoxflow:" not in line)
    assert sl.measure_slice(unstamped).startup_s is None
    assert sl.job_started(unstamped) is None and sl.job_ended(unstamped) is None


def test_times_for_the_next_slice_prefer_the_newest_measurement_then_older_ones_then_the_profile():
    newest = sl.SliceTimes(seconds_per_iteration=2.0, source="job 3")
    older = sl.SliceTimes(seconds_per_iteration=1.0, seconds_per_save=30.0, source="job 2")
    profile = {"slices": {"seconds_per_iteration": 5, "startup_s": 300}}
    t = sl.slice_times([newest, None, older], profile)
    assert (t.seconds_per_iteration, t.seconds_per_save, t.startup_s) == (2.0, 30.0, 300.0)
    assert t.source == "job 3 + job 2 + profile slices"
    assert sl.slice_times([], {"slices": {"seconds_per_iteration": 1.5}}).seconds_per_iteration == 1.5
    assert sl.slice_times([], {}) is None
    with pytest.raises(ValueError, match="slices.startup_s"):
        sl.profile_times({"slices": {"startup_s": "soon"}})


def test_profile_slack_stretches_the_plan_and_defaults_to_five_percent():
    assert sl.profile_slack({}) == sl.DEFAULT_SLACK == sl.profile_slack({"slices": {"startup_s": 1}})
    assert sl.profile_slack({"slices": {"slack": 0.3}}) == 0.3
    for bad in (-0.1, 1.0, True, "lots"):
        with pytest.raises(ValueError, match="slices.slack"):
            sl.profile_slack({"slices": {"slack": bad}})
    times = sl.SliceTimes(seconds_per_iteration=1.0, seconds_per_save=2.0, startup_s=10.0)
    common = dict(
        resume_iteration=0,
        train_iters=1000,
        checkpoint_factor=10,
        extra_save_iters=None,
        times=times,
        time_limit_s=220,
        stop_before_limit_s=20,
    )
    # 200 s for start-up, S iterations and S/10 saves, all stretched by the slack:
    # 5%: 10.5 + 1.05 S + 0.21 S <= 200 fits 150; 30%: 13 + 1.3 S + 0.26 S <= 200 fits 110 (120 needs 200.2)
    assert sl.plan_slice(**common).stop_iteration == 150
    assert sl.plan_slice(**common, slack=0.3).stop_iteration == 110
