"""The plan renders the export job too (issue 18 item 1): every check the export runs has run when the
plan passes, a dry run shows its script, and what ``export.plan_export`` submits after a slice is the
plan's rendering with the complete checkpoints found then as its ``--tag`` arguments.

Real plans from the real profiles; only the cluster (the checkpoint listing, the run record) is replaced.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from neoxflow.pipeline import plan as plan_module
from neoxflow.pipeline import report_task, tasks
from neoxflow.ui import story

FORM = {"profile": "local", "run_name": "exp", "shards": "0-1", "train_iters": 40, "checkpoint_interval": 20}


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("NEOXFLOW_TOKENIZER_SOURCE", "http://127.0.0.1:18080/20B_tokenizer.json")
    monkeypatch.setenv("NEOXFLOW_FSX", str(tmp_path / "fsx"))


def profile_with(monkeypatch, **fields):
    """The plan's profile with ``fields`` replaced (``cluster`` fields under ``cluster=``)."""
    real = plan_module.load_profile

    def changed(name, *args, **kwargs):
        return dataclasses.replace(real(name, *args, **kwargs), **fields)

    monkeypatch.setattr(plan_module, "load_profile", changed)


def listing(save_dir: str, *iterations: int) -> dict:
    """A ckpt_listing.py listing holding complete stand-in checkpoints (configs/ + model states)."""
    complete = {
        "dirs": ["configs"],
        "files": {"configs/c.json": [9, 0.0], "mp_rank_00_model_states.pt": [9, 0.0]},
    }
    return {
        "format": 1,
        "save_dir": save_dir,
        "latest": None,
        "tags": {f"global_step{i}": complete for i in iterations},
    }


def test_the_plan_renders_the_export_job_for_the_runs_last_checkpoint():
    p = plan_module.plan_run(FORM)
    script = p["export"]["script"]
    assert script.startswith("#!/bin/bash") and "#SBATCH --job-name=nxf-export-exp\n" in script
    assert "TAGS=(--tag global_step40)\n" in script and p["export"]["tags"] == ["global_step40"]
    assert f"SAVE_DIR={p['layout']['checkpoint_dir']}\n" in script


@pytest.mark.parametrize("complete", [(40,), (20, 40)])
def test_what_export_submits_is_what_the_plan_rendered_but_for_the_tags(monkeypatch, complete):
    p = plan_module.plan_run(FORM)
    monkeypatch.setattr(
        report_task, "checkpoint_listing", lambda run: listing(run.layout.checkpoint_dir, *complete)
    )
    submitted = report_task.plan_export(p)
    tags = " ".join(f"--tag global_step{i}" for i in complete)
    assert submitted["tags"] == [f"global_step{i}" for i in complete]
    assert (
        submitted["script"].replace(f"TAGS=({tags})", "TAGS=(--tag global_step40)") == p["export"]["script"]
    )
    planned = {k: v for k, v in p["export"].items() if k not in ("tags", "script", "tags_at_export")}
    assert {k: v for k, v in submitted.items() if k not in ("tags", "script")} == planned


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        # the data jobs take these S3 prefixes; S3 object keys of checkpoints are held to stricter parts
        ({"s3_prefix": "team@x"}, "export job (s3.prefix): prefix: must be key parts"),
        ({"s3_prefix": "x/_tmp"}, "export job (s3.prefix): prefix: must be key parts"),
        ({"export_keep_last": 2_000_000}, "export job (export.keep_last): keep_last: must be an integer"),
    ],
)
def test_a_value_the_export_would_refuse_fails_the_plan_naming_the_profile_key(monkeypatch, fields, named):
    """Before: these plans passed and the run failed in export.plan_export, after training."""
    profile_with(monkeypatch, **fields)
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        plan_module.plan_run(FORM)


def test_more_checkpoints_than_one_export_names_fail_the_plan_unless_pruned(monkeypatch):
    form = {**FORM, "train_iters": 20_000, "checkpoint_interval": 1}
    with pytest.raises(ValueError, match=r"saves 20000 checkpoints and export.keep_last is 0"):
        plan_module.plan_run(form)
    profile_with(monkeypatch, export_keep_last=3)
    assert "--keep-last 3" in plan_module.plan_run(form)["export"]["script"]


def test_a_checkpoint_layout_the_rule_cannot_judge_fails_the_plan(monkeypatch):
    """ZeRO stage 3 (no pipeline) passes NeoX's checks, but resume, export and report judge checkpoints by
    a rule that does not cover it: before, the run failed at prepare_resume after the data stages."""
    real = plan_module.load_profile("aws")
    profile_with(monkeypatch, neox_overrides={**real.neox_overrides, "zero_optimization": {"stage": 3}})
    with pytest.raises(ValueError, match=r"checkpoint layout: Expectation.zero_stage 3"):
        plan_module.plan_run({"profile": "aws", "run_name": "z3", "shards": "0-1", "model_size": "160M"})


def test_a_save_schedule_the_slices_cannot_plan_fails_the_plan(monkeypatch):
    """Before: refused only by train_slice, after the data stages."""
    real = plan_module.load_profile("local")
    profile_with(monkeypatch, neox_overrides={**real.neox_overrides, "checkpoint_scale": "log"})
    with pytest.raises(ValueError, match=r"training slices: checkpoint_scale 'log'"):
        plan_module.plan_run(FORM)


def test_a_dry_run_shows_the_export_script_in_the_log_and_the_training_view(monkeypatch, caplog):
    monkeypatch.setattr(tasks, "read_record", lambda path: None)
    with caplog.at_level(logging.INFO, logger=tasks.log.name):
        p = tasks.make_plan({**FORM, "dry_run": True})
    shown = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--- export: ")]
    assert len(shown) == 1 and shown[0].endswith(p["export"]["script"])
    texts = {t["name"]: t["text"] for t in story.dry_run_texts(p)}
    assert texts["export"] == p["export"]["script"]
