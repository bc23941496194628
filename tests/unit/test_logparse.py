"""The NeoX log parser and verdict, against lines and logs from a real GPT-NeoX run.

tests/fixtures/neox-run/ holds the output of real GPT-NeoX (fresh run to 60 iterations, then resumed
to 80); values asserted below are read from those files, and most expectations are cross-checked
against an independent count over the raw text.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from neoxflow.neox.logparse import (
    CheckpointCommitted,
    ErrorLine,
    LatestMissing,
    ResumeInfo,
    TrainStep,
    Validation,
    clean_line,
    event_from_dict,
    event_to_dict,
    parse_line,
    parse_text,
)
from neoxflow.neox.logstate import LogFollower, LogState
from neoxflow.neox.verdict import training_verdict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "neox-run"
DOC_LINE = (
    " samples/sec: 13.340 | iteration     1000/   10000 | elapsed time per iteration (ms): 9595.6 |"
    " learning rate: 2.989E-05 | approx flops per GPU: 193.1TFLOPS | lm_loss: 8.667910E-01 |"
    " loss scale: 256.0 | number of skipped iterations:   0 | number of nan iterations:   0 |"
)


def _log(name: str) -> str:
    return (FIXTURES / name).read_text()


def _raw_step_lines(text: str) -> list[str]:
    """Independent of the parser: the lines that carry NeoX's per-interval training log."""
    return [line for line in text.splitlines() if re.search(r"\| iteration +\d+/", line)]


# ------------------------------------------------------------------------------------------ parse_line
def test_documented_training_line_all_fields():
    step = parse_line(DOC_LINE)
    assert isinstance(step, TrainStep)
    assert (step.iteration, step.total) == (1000, 10000)
    assert step.samples_per_sec == pytest.approx(13.34)
    assert step.elapsed_ms == pytest.approx(9595.6)
    assert step.lr == pytest.approx(2.989e-05)
    assert step.tflops == pytest.approx(193.1)
    assert step.lm_loss == pytest.approx(0.866791)
    assert step.loss_scale == pytest.approx(256.0)
    assert (step.skipped, step.nan) == (0, 0)
    assert step.rank is None and step.extra == {}


@pytest.mark.parametrize("label", ["0: ", "12: ", "  3: ", "127: "])
def test_srun_label_is_stripped_and_recorded(label):
    step = parse_line(label + DOC_LINE)
    assert step == TrainStep(**{**parse_line(DOC_LINE).__dict__, "rank": int(label.strip(" :"))})


def test_ansi_colours_and_carriage_returns_are_ignored():
    coloured = "\x1b[32m0: \x1b[0m" + DOC_LINE.replace("lm_loss", "\x1b[1mlm_loss\x1b[0m") + "\r\n"
    step = parse_line(coloured)
    assert step.lm_loss == pytest.approx(0.866791) and step.rank == 0
    assert clean_line("progress 10%\rprogress 100%") == (None, "progress 100%")


def test_gflops_is_converted_to_tflops_from_real_line():
    line = next(raw for raw in _raw_step_lines(_log("run1.log")) if "GFLOPS" in raw)
    printed = float(re.search(r"([\d.]+)GFLOPS", line).group(1))
    assert parse_line(line).tflops == pytest.approx(printed / 1000)


@pytest.mark.parametrize(
    "printed, tflops",
    [
        ("512.0", 512e-12),
        ("1.5KFLOPS", 1.5e-9),
        ("766.2GFLOPS", 0.7662),
        ("2.9TFLOPS", 2.9),
        ("1.2PFLOPS", 1200.0),
    ],
)
def test_every_flops_unit_of_megatron_human_readable_flops(printed, tflops):
    step = parse_line(DOC_LINE.replace("193.1TFLOPS", printed))
    assert step.tflops == pytest.approx(tflops)


def test_standin_trainer_lines_parse_like_neox():
    """Contract with include/cluster/standin/standin_log.py: the stand-in trainer's log line is read by the
    same parser."""
    standin_log = pytest.importorskip("standin_log")
    line = standin_log.format_train_line(
        iteration=40,
        train_iters=100,
        elapsed_ms=812.5,
        samples_per_sec=9.846,
        lr=6.0e-4,
        flops_per_gpu=3.2e9,
        lm_loss=5.4321,
        skipped=0,
        nans=1,
    )
    step = parse_line("1: " + line)
    assert (step.iteration, step.total, step.rank) == (40, 100, 1)
    assert (step.elapsed_ms, step.samples_per_sec, step.lr) == (812.5, 9.846, pytest.approx(6.0e-4))
    assert step.tflops == pytest.approx(3.2e-3) and step.lm_loss == pytest.approx(5.4321)
    assert (step.skipped, step.nan, step.loss_scale) == (0, 1, None)


def test_bf16_line_has_no_loss_scale_and_keeps_extra_fields():
    line = DOC_LINE.replace(" loss scale: 256.0 |", " MFU: 41.25% | HFU: 55.00% | moe_loss: 1.5E-02 |")
    step = parse_line(line)
    assert step.loss_scale is None
    assert (step.mfu, step.hfu) == (pytest.approx(41.25), pytest.approx(55.0))  # NeoX's own, in percent
    assert step.extra == {"moe_loss": pytest.approx(0.015)}


def test_truncated_line_keeps_what_it_has():
    step = parse_line(DOC_LINE[: DOC_LINE.index("elapsed") + 20])
    assert (step.iteration, step.total, step.samples_per_sec) == (1000, 10000, pytest.approx(13.34))
    assert step.elapsed_ms is None and step.lm_loss is None and step.tflops is None


def test_validation_lines():
    val = parse_line(
        " validation results at iteration 500 | lm_loss value: 3.125000E+00 | lm_loss_ppl value: 22.76 |"
    )
    assert val == Validation(iteration=500, lm_loss=3.125, ppl=pytest.approx(22.76), split="validation")
    end = parse_line("4:  test results at the end of training for test data | lm_loss value: 2.5E+00 |")
    assert (end.iteration, end.split, end.lm_loss, end.ppl, end.rank) == (None, "test", 2.5, None, 4)


@pytest.mark.parametrize(
    "line",
    [
        "steps: 45 loss: 7.0345 iter time (s): 0.024 samples/sec: 327.469",  # DeepSpeed's own print
        "setting training data start iteration to 60",
        "  train_iters ..................... 60..........................updated",
        "after 65 iterations memory (MB) | allocated: 243.04 | max allocated: 1152.47 |",
        "[2026-11-27 20:54:16,113] [INFO] [logging.py:107:log_dist] [Rank 0] [Torch] Checkpoint global_step40"
        " is about to be saved!",
        "     0: EmbeddingPipe",
        "",
        "\x00\x00garbage | | :: |",
    ],
)
def test_other_lines_are_not_events(line):
    assert parse_line(line) is None


def test_commit_resume_and_missing_latest_real_lines():
    text = _log("run1.log")
    commit_line = next(line for line in text.splitlines() if "is ready now!" in line)
    assert parse_line(commit_line) == CheckpointCommitted(iteration=20, tag="global_step20")
    missing = next(line for line in text.splitlines() if "Unable to find latest" in line)
    assert parse_line(missing) == LatestMissing(path="/fsx/checkpoints/tiny/latest")
    assert parse_line("7: Loading checkpoint and starting from iteration 60") == ResumeInfo(60, rank=7)


def test_error_lines():
    assert parse_line("[rank0]: TypeError: iteration over a 0-d tensor") == ErrorLine(
        kind="exception", message="TypeError: iteration over a 0-d tensor", rank=0
    )
    oom = parse_line("3: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert oom.message.startswith("torch.OutOfMemoryError: CUDA out of memory") and oom.rank == 3
    srun = parse_line("srun: error: node7: task 12: Exited with exit code 1")
    assert (srun.kind, srun.node, srun.message) == ("srun", "node7", "task 12: Exited with exit code 1")
    stepd = parse_line(
        "slurmstepd: error: *** JOB 4242 ON node2 CANCELLED AT 2026-11-27T20:00:00 DUE TO TIME LIMIT ***"
    )
    assert stepd.kind == "slurmstepd" and stepd.node == "node2" and "DUE TO TIME LIMIT" in stepd.message


# ------------------------------------------------------------------------------------- real whole logs
def test_run1_fresh_run_events():
    text = _log("run1.log")
    state = LogState.from_events(parse_text(text))
    raw = _raw_step_lines(text)
    assert len(state.steps) == len(raw) == 12
    assert [s.iteration for s in state.steps] == list(range(5, 61, 5))
    assert {s.total for s in state.steps} == {60}
    assert state.steps[0].lm_loss == pytest.approx(10.60809)
    assert state.steps[-1].lm_loss == pytest.approx(7.221442)
    assert state.committed == [int(n) for n in re.findall(r"Checkpoint global_step(\d+) is ready now", text)]
    assert state.committed == [20, 40, 60]
    assert state.resumed_from == 0 and state.latest_missing
    assert [e.message for e in state.errors] == ["TypeError: iteration over a 0-d tensor"]
    assert all(s.loss_scale == 4096.0 and s.skipped == 0 and s.nan == 0 for s in state.steps)


def test_run2_resumed_run_events():
    state = LogState.from_events(parse_text(_log("run2.log")))
    assert state.resumed_from == 60 and not state.latest_missing
    assert [s.iteration for s in state.steps] == [65, 70, 75, 80]
    assert {s.total for s in state.steps} == {80}
    assert state.committed == [80]
    assert state.loss_curve()[-1] == (80, pytest.approx(6.93611))


def test_duplicate_lines_from_several_ranks_count_once():
    state = LogState.from_events(parse_text("\n".join(["0: " + DOC_LINE, "1: " + DOC_LINE])))
    assert len(state.steps) == 1


def test_loss_curve_prefers_the_newest_value_of_a_relogged_iteration():
    text = "\n".join([DOC_LINE, DOC_LINE.replace("8.667910E-01", "9.0E-01").replace("1000/", "1010/")])
    relogged = DOC_LINE.replace("8.667910E-01", "5.0E-01")  # iteration 1000 again, after a resume
    state = LogState.from_events(parse_text(text + "\n" + relogged))
    assert state.loss_curve() == [(1000, 0.5), (1010, 0.9)]


# ------------------------------------------------------------------------------------------ follower
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_follower_random_chunks_equal_whole_text(seed):
    data = _log("run1.log").encode() + "0: ünïcode ✓ line\n".encode()
    rng = random.Random(seed)
    follower, events, pos = LogFollower(), [], 0
    while pos < len(data):
        size = rng.choice([1, 2, 3, 7, 64, 4096])
        events += follower.feed(data[pos : pos + size])
        pos += size
    events += follower.flush()
    assert events == parse_text(data.decode())
    assert follower.offset == len(data) and follower.pending == 0
    assert follower.state.committed == [20, 40, 60]


def test_follower_waits_for_the_end_of_a_line():
    head, tail = DOC_LINE[:40], DOC_LINE[40:]
    follower = LogFollower(offset=100)
    assert follower.feed(head.encode()) == []
    assert follower.offset == 100 and follower.pending == len(head)
    (step,) = follower.feed((tail + "\n").encode())
    assert step.iteration == 1000 and step.lm_loss == pytest.approx(0.866791)
    assert follower.offset == 100 + len(DOC_LINE) + 1


def test_follower_flush_parses_an_unterminated_last_line():
    follower = LogFollower()
    assert follower.feed(b"Loading checkpoint and starting from iteration 20") == []
    assert follower.flush() == [ResumeInfo(20)]


def test_follower_restart_from_offset_loses_nothing():
    data = _log("run2.log").encode()
    cut = len(data) // 2 + 17  # mid-line
    first = LogFollower()
    events = first.feed(data[:cut])
    second = LogFollower(offset=first.offset)
    events += second.feed(data[second.offset :]) + second.flush()
    assert events == parse_text(data.decode())


def test_follower_survives_invalid_utf8_and_split_multibyte():
    euro = "€".encode()
    chunks = [b"\xff\xfe bad bytes \xc3\n", DOC_LINE.encode()[:10], DOC_LINE.encode()[10:] + b"\n", euro[:1]]
    follower = LogFollower()
    events = [ev for chunk in chunks for ev in follower.feed(chunk)]
    assert [type(e) for e in events] == [TrainStep]
    assert follower.feed(euro[1:] + b"\n") == [] and follower.lines == 3


def test_follower_drops_a_runaway_line():
    follower = LogFollower(max_line_bytes=64)
    assert follower.feed(b"x" * 200) == []
    assert follower.pending == 0
    assert follower.feed(b"still the same line | iteration 1/ 2 |\n") == []
    (step,) = follower.feed((DOC_LINE + "\n").encode())
    assert step.iteration == 1000


# --------------------------------------------------------------------------------------- serialising
def test_events_and_state_round_trip_through_json():
    events = parse_text(_log("run1.log"))
    assert [event_from_dict(json.loads(json.dumps(event_to_dict(e)))) for e in events] == events
    state = LogState.from_events(events)
    again = LogState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state
    with pytest.raises(ValueError, match="unknown type 'Bogus'"):
        event_from_dict({"type": "Bogus"})


# ------------------------------------------------------------------------------------------- verdict
def test_verdict_exit_1_after_finished_run_is_finished():
    """Regression: NeoX exits 1 after the final checkpoint (end-of-training eval bug); run1 and run2."""
    for log, iters, complete in (("run1.log", 60, [20, 40, 60]), ("run2.log", 80, [20, 40, 60, 80])):
        verdict = training_verdict(parse_text(_log(log)), iters, 1, complete)
        assert verdict.finished and verdict.status == "finished"
        assert verdict.last_iteration == iters and verdict.last_complete_iteration == iters
        assert "exit code 1" in verdict.reason and "TypeError" in verdict.reason


def test_verdict_clean_exit_is_finished():
    verdict = training_verdict(parse_text(_log("run1.log")), 60, 0, [60])
    assert verdict.finished and "exit code" not in verdict.reason


def test_verdict_needs_the_final_checkpoint_complete():
    verdict = training_verdict(parse_text(_log("run1.log")), 60, 1, [20, 40])
    assert not verdict.finished
    assert "no complete checkpoint at 60" in verdict.reason and "global_step40" in verdict.reason


def test_verdict_needs_the_log_to_reach_train_iters():
    text = _log("run1.log")
    killed = text[: text.index("| iteration       35/")]  # killed while logging iteration 35
    verdict = training_verdict(parse_text(killed), 60, 137, [20])
    assert not verdict.finished and verdict.last_iteration == 30
    assert "stopped at iteration 30 of 60 with exit code 137" in verdict.reason
    assert "global_step20" in verdict.reason and verdict.resume_from == 20
    with_ckpt = training_verdict(parse_text(killed), 60, 137, [20, 60])
    assert not with_ckpt.finished and "log does not show iteration 60" in with_ckpt.reason


def test_verdict_other_failures_name_their_cause():
    early = training_verdict(parse_text("srun: error: node3: task 1: Killed\n"), 10, 1, [])
    assert not early.finished
    assert "no training iteration was logged" in early.reason and "on node3" in early.reason
    short = training_verdict(parse_text(_log("run2.log")), 100, 0, [80])
    assert not short.finished and "exited 0 at iteration 80 of 100" in short.reason
    assert not training_verdict([], 10, None, []).finished


def test_verdict_resume_at_the_end_is_finished():
    """A retry that resumes from the final checkpoint trains nothing; it must not loop forever."""
    text = (
        "Loading checkpoint and starting from iteration 80\n[rank0]: TypeError: iteration over a 0-d tensor\n"
    )
    assert training_verdict(parse_text(text), 80, 1, [60, 80]).finished


def test_verdict_rejects_bad_train_iters():
    with pytest.raises(ValueError, match="train_iters"):
        training_verdict([], 0, 0, [])
