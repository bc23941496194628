"""The typed run plan (issue 16, item 2): built once by the plan task, read by every task and operator
without parsing the form, loading the profile or deriving the config again.

Real plans from the real local profile; only the cluster is absent.
"""

from __future__ import annotations

import json

import pytest

import neoxflow.neox.profile_loader as neox_config
from neoxflow.neox.checkpoints import Expectation
from neoxflow.operators.pipeline import PretrainTrainOperator
from neoxflow.pipeline import plan as plan_module
from neoxflow.pipeline import request as request_module
from neoxflow.pipeline.run_plan import PLAN_SCHEMA, PlanSchemaError, RunPlan
from neoxflow.slurm import naming
from neoxflow.slurm.validate import RUN_NAME, UnsafeValueError, check_run_name

FORM = {
    "profile": "local",
    "run_name": "typed",
    "shards": "0-2,7",
    "train_iters": 40,
    "checkpoint_interval": 20,
}


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("NEOXFLOW_TOKENIZER_SOURCE", "http://127.0.0.1:18080/20B_tokenizer.json")
    monkeypatch.setenv("NEOXFLOW_FSX", str(tmp_path / "fsx"))


def test_the_plan_reads_back_as_it_was_written_and_stays_json():
    plan = plan_module.plan_run(FORM)
    assert plan["schema"] == PLAN_SCHEMA
    assert json.loads(json.dumps(plan)) == plan
    run = RunPlan.from_dict(plan)
    assert run.to_dict() == plan
    # the parsed request, not the raw form: the selection in the form's compact syntax
    assert run.request.run_name == "typed" and run.request.shards.train == (0, 1, 2, 7)
    # carried once, in the dataset (the same train indices), not again in the request
    assert plan["dataset"]["shards"] == "0-2,7-7" and "shards" not in plan["request"]
    assert run.fixed.train_iters == 40 and run.fixed.model_size == plan["config"]["size"]
    assert run.slice.nodes == plan["config"]["nodes"] and run.slice.world_size >= 1


def test_the_training_job_has_one_name_for_the_resume_task_and_the_operator():
    plan = plan_module.plan_run(FORM)
    run = RunPlan.from_dict(plan)
    assert run.fixed.jobs.train == naming.train_job_name("typed") == "nxf-train-typed"
    assert plan["train"]["job_name"] == run.fixed.jobs.train  # the script the plan rendered
    assert plan["export"]["job_name"] == run.fixed.jobs.export == "nxf-export-typed"


def test_stand_in_or_neox_is_decided_once_at_plan_time():
    run = RunPlan.from_dict(plan_module.plan_run(FORM))
    assert run.fixed.standin is True  # the local profile's stand-in trainer
    assert run.expectation() == Expectation.standin()
    assert run.expectation_at(run.slice.nodes) == run.expectation()


def test_a_plan_of_an_earlier_release_is_refused_naming_its_version():
    plan = plan_module.plan_run(FORM)
    old = {k: v for k, v in plan.items() if k not in ("schema", "fixed", "slice")}
    with pytest.raises(PlanSchemaError, match=r"schema version 1, this release reads version 2"):
        RunPlan.from_dict(old)


def test_the_operator_reads_the_plan_without_parsing_or_loading_anything(monkeypatch):
    """execute_complete runs after every deferral: it must not parse the form, load the profile or
    derive the config again (before, it did all three each time)."""
    plan = plan_module.plan_run(FORM)

    def refused(*args, **kwargs):
        raise AssertionError("re-derived after the plan")

    monkeypatch.setattr(neox_config, "load_profile", refused)
    monkeypatch.setattr(plan_module, "run_config", refused)
    monkeypatch.setattr(request_module, "parse_request", refused)

    class TI:
        def xcom_pull(self, task_ids=None, key="return_value"):
            return plan if task_ids == "prepare.plan" else None

    op = PretrainTrainOperator(task_id="train_slice", poll_interval=1)
    run = op._configure({"ti": TI(), "task_state_store": None})
    assert op.job_name == run.fixed.jobs.train
    assert op.save_dir == plan["layout"]["checkpoint_dir"] and op.train_iters == 40
    assert op.listing_script == plan["layout"]["code_dir"] + "/ckpt_listing.py"
    assert op.expectation == run.slice.expectation


def test_one_run_name_rule_for_the_form_the_folders_and_the_job_names():
    assert request_module.form_params()["run_name"].schema["pattern"] == f"^{RUN_NAME.pattern}$"
    for bad in ("Pythia", "a.b", "a_b", "-a", "x" * 64):
        with pytest.raises(UnsafeValueError):
            check_run_name(bad)
        with pytest.raises(ValueError):
            neox_config.load_profile("local").run_paths(bad)
        with pytest.raises(request_module.RequestError, match="run_name"):
            request_module.parse_request({"run_name": bad})
        with pytest.raises(UnsafeValueError):
            naming.train_job_name(bad)
