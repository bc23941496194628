"""A profile's account, QoS, reservation and constraint reach every job it submits: the data arrays, the
training batch script and the export (issue 18 item 2)."""

from __future__ import annotations

import dataclasses

import pytest

from neoxflow.neox.profile_loader import load_profile
from neoxflow.pipeline import plan as plan_module

SCHEDULING = {"account": "proj-7", "qos": "high", "reservation": "pythia", "constraint": "h100"}


@pytest.fixture
def plan_with_scheduling(monkeypatch, tmp_path):
    monkeypatch.setenv("NEOXFLOW_TOKENIZER_SOURCE", "http://127.0.0.1:18080/20B_tokenizer.json")
    monkeypatch.setenv("NEOXFLOW_FSX", str(tmp_path / "fsx"))
    real = load_profile

    def with_scheduling(name, *args, **kwargs):
        profile = real(name, *args, **kwargs)
        return dataclasses.replace(profile, cluster=dataclasses.replace(profile.cluster, **SCHEDULING))

    monkeypatch.setattr(plan_module, "load_profile", with_scheduling)
    return plan_module.plan_run({"profile": "local", "run_name": "sched", "shards": "0-1"})


def test_every_job_of_the_plan_carries_the_profiles_scheduling_options(plan_with_scheduling):
    p = plan_with_scheduling
    scripts = {step: p["data"][step]["script"] for step in plan_module.ARRAY_STEPS}
    scripts["train"] = p["train"]["script"]
    scripts["export"] = p["export"]["script"]  # rendered by the plan with export's own function
    for name, script in scripts.items():
        for key, value in SCHEDULING.items():
            assert f"#SBATCH --{key}={value}\n" in script, f"{name} lacks --{key}"
        assert "#SBATCH --partition=debug\n" in script, name
