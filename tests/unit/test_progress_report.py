"""Progress/ETA text and the end-of-run report, computed from the real NeoX logs in tests/fixtures."""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from neoxflow.neox.checkpoints import Checkpoint
from neoxflow.neox.logparse import parse_text
from neoxflow.neox.logstate import LogState
from neoxflow.neox.progress import (
    NOTE_MAX_CHARS,
    compute_progress,
    format_duration,
    is_stalled,
    run_note_markdown,
    stall_reason,
    summary_line,
)
from neoxflow.neox.report import (
    build_summary,
    downsample,
    iterations_lost,
    loss_curve_png,
    merge_loss_curves,
    summary_json,
    write_loss_curve_png,
)
from neoxflow.neox.verdict import training_verdict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "neox-run"
SEQ = json.loads((FIXTURES / "tiny-config.json").read_text())["seq_length"]


def _state(name: str) -> LogState:
    return LogState.from_events(parse_text((FIXTURES / name).read_text()))


# ------------------------------------------------------------------------------------------- progress
def test_progress_midway_through_run1():
    state = _state("run1.log")
    state.steps = state.steps[:9]  # the log as the watcher saw it at iteration 45
    p = compute_progress(state, seq_length=SEQ, last_checkpoint=40, window=4)
    recent = state.steps[-4:]
    assert (p.iteration, p.total, p.percent) == (45, 60, pytest.approx(75.0))
    assert p.lm_loss == pytest.approx(7.26797)
    assert p.samples_per_sec == pytest.approx(statistics.median(s.samples_per_sec for s in recent))
    assert p.tokens_per_sec == pytest.approx(p.samples_per_sec * SEQ)
    assert p.iter_ms == pytest.approx(statistics.median(s.elapsed_ms for s in recent))
    assert p.eta_seconds == pytest.approx(15 * p.iter_ms / 1000)
    assert p.resumed_from == 0


def test_median_ignores_warmup_and_checkpoint_intervals():
    p = compute_progress(_state("run1.log"))
    slowest = max(s.elapsed_ms for s in _state("run1.log").steps[-10:])
    assert p.iter_ms < slowest / 3  # 86 ms checkpoint intervals do not drive the rate (~24 ms)
    assert p.eta_seconds == 0 and p.percent == 100.0


def test_progress_of_resumed_run_and_of_nothing():
    p = compute_progress(_state("run2.log"), train_iters=100)
    assert (p.iteration, p.total, p.percent, p.resumed_from) == (80, 100, 80.0, 60)
    empty = compute_progress(LogState(resumed_from=60), train_iters=80)
    assert (empty.iteration, empty.total, empty.eta_seconds) == (None, 80, None)
    assert summary_line(empty) == "no training iteration logged yet (resuming from 60)"
    with pytest.raises(ValueError, match="window"):
        compute_progress(LogState(), window=0)


def test_summary_line_and_note():
    state = _state("run2.log")
    p = compute_progress(state, seq_length=SEQ, last_checkpoint=80)
    line = summary_line(p)
    assert line.startswith("iteration 80/80 (100.0%) | lm_loss 6.936 |")
    assert f"{p.samples_per_sec:.1f} samples/s" in line
    assert f"{p.tokens_per_sec / 1000:.1f}k tokens/s" in line
    assert "ETA 0:00:00" in line and line.endswith("checkpoint global_step80")
    note = run_note_markdown(p, lines=["attempt 2", "job 4242"])
    assert note.startswith("**Training**: iteration 80/80 (100.0%)")
    assert "| 6.936 |" in note and "global_step80 |" in note
    assert "- resumed from iteration 60\n- attempt 2\n- job 4242" in note
    long = run_note_markdown(p, lines=["x" * 2000])
    assert len(long) == NOTE_MAX_CHARS and long.endswith("…")
    assert "waiting" in run_note_markdown(compute_progress(LogState()))


def test_format_duration():
    assert format_duration(3725) == "1:02:05"
    assert format_duration(2 * 86400 + 3 * 3600) == "2d 03:00:00"
    assert format_duration(None) == "?" and format_duration(float("nan")) == "?"
    assert format_duration(-5) == "0:00:00"


def test_stall_detection():
    assert not is_stalled(1000.0, 1500.0, 600)
    assert is_stalled(1000.0, 1601.0, 600)
    t0 = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
    assert is_stalled(t0, t0 + timedelta(minutes=31), timedelta(minutes=30))
    assert not is_stalled(t0, t0 + timedelta(minutes=30), timedelta(minutes=30))
    with pytest.raises(TypeError, match="both"):
        is_stalled(t0, 1000.0, 10)
    with pytest.raises(ValueError, match="positive"):
        is_stalled(0.0, 1.0, 0)
    reason = stall_reason(t0, t0 + timedelta(hours=1, seconds=5), timedelta(minutes=30))
    assert "for 1:00:05" in reason and "stall window 0:30:00" in reason


# --------------------------------------------------------------------------------------------- report
def test_merge_loss_curves_across_attempts():
    first = _state("run1.log").loss_curve()  # 5..60
    failed = [(65, 7.0), (70, 6.9)]  # an attempt that died at 70 after resuming from 60
    resumed = _state("run2.log").loss_curve()  # 65..80, resumed from 60 again
    merged = merge_loss_curves([(0, first), (60, failed), (60, resumed)])
    assert [i for i, _ in merged] == list(range(5, 81, 5))
    assert dict(merged)[70] == pytest.approx(7.050995)  # the value of the attempt that kept it
    assert iterations_lost(70, 60) == 10 and iterations_lost(None, 60) == 0


def test_downsample_keeps_ends():
    points = [(i, float(i)) for i in range(1, 1001)]
    small = downsample(points, 10)
    assert len(small) == 10 and small[0] == (1, 1.0) and small[-1] == (1000, 1000.0)
    assert downsample(points[:5], 10) == points[:5]
    with pytest.raises(ValueError):
        downsample(points, 1)


def test_summary_of_the_resumed_real_run():
    state = _state("run2.log")
    ckpts = [Checkpoint(i, f"global_step{i}", f"/fsx/checkpoints/tiny/global_step{i}", 1) for i in (60, 80)]
    verdict = training_verdict(state, 80, 1, [c.iteration for c in ckpts])
    curve = merge_loss_curves([(0, _state("run1.log").loss_curve()), (60, state.loss_curve())])
    summary = build_summary(
        state,
        ckpts,
        train_iters=80,
        seq_length=SEQ,
        verdict=verdict,
        loss_curve=curve,
        attempts=2,
        failed_nodes=["node2", "node2"],
        iterations_lost=0,
        extra={"run_id": "manual__1"},
    )
    assert summary["status"] == "finished" and "exit code 1" in summary["reason"]
    assert summary["iterations"] == {
        "train_iters": 80,
        "last_logged": 80,
        "last_checkpoint": 80,
        "resumed_from": 60,
    }
    assert summary["final_loss"] == pytest.approx(6.93611)
    assert summary["loss_curve"][0] == [5, pytest.approx(10.60809)] and len(summary["loss_curve"]) == 16
    assert [c["tag"] for c in summary["checkpoints"]] == ["global_step60", "global_step80"]
    samples = statistics.median(s.samples_per_sec for s in state.steps)
    assert summary["throughput"]["samples_per_sec"] == pytest.approx(samples)
    assert summary["throughput"]["tokens_per_sec"] == pytest.approx(samples * SEQ)
    assert summary["failed_nodes"] == ["node2"] and summary["attempts"] == 2
    assert summary["extra"] == {"run_id": "manual__1"}
    assert json.loads(summary_json(summary)) == json.loads(json.dumps(summary))


def test_summary_json_has_no_nan():
    state = LogState.from_events(
        parse_text(" samples/sec: nan | iteration 5/ 10 | lm_loss: nan | approx flops per GPU: nanTFLOPS |")
    )
    summary = build_summary(state, [], train_iters=10)
    text = summary_json(summary)
    assert "NaN" not in text and summary["final_loss"] is None
    assert summary["status"] is None and summary["checkpoints"] == []


def test_loss_curve_png(tmp_path):
    curve = merge_loss_curves([(0, _state("run1.log").loss_curve()), (60, _state("run2.log").loss_curve())])
    png = loss_curve_png(curve, resumes=[60], validation=[(60, 7.1)])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (800, 450)
    path = write_loss_curve_png([], tmp_path / "out" / "loss.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def _materialise_tree(root: Path, section: str) -> Path:
    """Rebuild a ckpt_tree.txt section as sparse files (real names and sizes) under ``root``."""
    text = (FIXTURES / "ckpt_tree.txt").read_text().split(f"## after {section}")[1].split("## after")[0]
    lines = [line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("/fsx/")]
    paths = {path for path, _ in lines}
    parents = {str(Path(p).parent) for p in paths}
    latest = text.split("latest:\n")[1].split()[0]
    for path, size in lines:
        target = root / Path(path).relative_to("/fsx/checkpoints/tiny")
        if path in parents:
            target.mkdir(parents=True, exist_ok=True)
        elif target.name == "latest":
            target.write_text(latest)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                fh.truncate(int(size))
    return root


def test_analyse_run_on_the_rebuilt_real_run(tmp_path):
    from neoxflow.neox.checkpoints import Expectation, scan_local
    from neoxflow.neox.report import analyse_run

    save = _materialise_tree(tmp_path / "tiny", "run2")
    (save / "global_step80" / "configs" / "tiny80.json").unlink()  # as if killed before configs/
    expect = Expectation.from_neox_config(json.loads((FIXTURES / "tiny-config.json").read_text()), 1)
    log = (FIXTURES / "run2.log").read_text()
    result = analyse_run(log, scan_local(save), expect, train_iters=80, exit_code=1, seq_length=SEQ)
    assert result["complete_checkpoints"] == ["global_step20", "global_step40", "global_step60"]
    assert list(result["partial_checkpoints"]) == ["global_step80"]
    assert (
        result["verdict"]["status"] == "failed"
        and "newest complete: global_step60" in result["verdict"]["reason"]
    )
    assert (
        result["resume"]
        == {
            "action": "write",
            "latest": "global_step60",
            "reason": result["resume"]["reason"],
        }
        and "incomplete" in result["resume"]["reason"]
    )
    assert result["progress"].startswith("iteration 80/80 (100.0%)")
    json.loads(summary_json(result["summary"]))

    (save / "global_step80" / "configs" / "tiny80.json").write_text("{}")
    healed = analyse_run(log, scan_local(save), expect, train_iters=80, exit_code=1, seq_length=SEQ)
    assert healed["verdict"]["status"] == "finished" and healed["resume"]["action"] == "keep"


def test_mfu_is_neoxs_own_figure_shown_beside_its_hardware_tflops():
    """NeoX prints MFU and HFU when the config sets peak_theoretical_tflops (issue 18 item 5): progress,
    the run note and the report carry NeoX's figure; none is computed a second way."""
    from neoxflow.neox.logparse import parse_line
    from neoxflow.neox.progress import compute_progress, run_note_markdown, summary_line

    line = (
        " samples/sec: 40.000 | iteration       20/     100 | elapsed time per iteration (ms): 800.0 |"
        " learning rate: 6.000E-04 | approx flops per GPU: 99.5TFLOPS | MFU: 7.54% | HFU: 10.06% |"
        " lm_loss: 7.000000E+00 | number of skipped iterations:   0 | number of nan iterations:   0 |"
    )
    step = parse_line(line)
    progress = compute_progress([step], seq_length=2048)
    assert progress.mfu == pytest.approx(7.54) and progress.tflops == pytest.approx(99.5)
    assert "99.50 TFLOPS/GPU | MFU 7.54%" in summary_line(progress)
    assert "| 99.50 | 7.54 |" in run_note_markdown(progress)
    without = compute_progress([parse_line(line.replace(" MFU: 7.54% | HFU: 10.06% |", ""))])
    assert without.mfu is None and "MFU" not in summary_line(without)
