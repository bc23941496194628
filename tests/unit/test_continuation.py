"""The continuation's rules (pipeline/continuation.py): which runs of record it carries on, and why not.

The decision is pure; the survey's shell commands and the lock's state read run in a real shell on a
real folder.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from neoxflow.pipeline import continuation as C
from neoxflow.pipeline import lock


def state(**changes) -> C.RunState:
    base = dict(
        run_name="r1",
        train_iters=600,
        latest_iteration=200,
        active_job=None,
        lease_holder=None,
        attention=None,
    )
    return C.RunState(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "action"),
    [
        ({}, "continue"),
        ({"latest_iteration": None}, "continue"),  # before the first checkpoint
        ({"latest_iteration": 600}, "finished"),
        ({"latest_iteration": 650, "attention": {"reason": "x"}}, "finished"),  # done beats a mark
        ({"active_job": "123"}, "busy"),
        ({"lease_holder": "pythia_pretrain:manual__1"}, "busy"),
        ({"attention": {"reason": "job 9 failed"}}, "needs_person"),
        ({"attention": {}, "active_job": "5"}, "needs_person"),  # a mark waits for a person, whatever runs
    ],
)
def test_decide(changes, action):
    assert C.decide(state(**changes)).action == action


def test_the_reason_says_why():
    assert "job 77" in C.decide(state(active_job="77")).reason
    assert "at 200/600" in C.decide(state()).reason


def test_the_run_id_is_the_same_for_the_same_progress_only():
    assert C.trigger_run_id("r1", 200) == C.trigger_run_id("r1", 200) == "continue__r1__at200"
    assert C.trigger_run_id("r1", 250) != C.trigger_run_id("r1", 200)
    assert C.trigger_run_id("r1", None) == "continue__r1__at0"


def test_latest_iteration():
    assert C.latest_iteration("global_step120\n") == 120
    assert C.latest_iteration("") is None and C.latest_iteration("garbage") is None


def sh(command: str) -> str:
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_survey_lists_runs_with_a_record_only(tmp_path):
    (tmp_path / "alpha.record.json").write_text("{}")
    (tmp_path / "beta.record.json").write_text("{}")
    (tmp_path / "beta").mkdir()  # its checkpoint folder
    (tmp_path / "gamma").mkdir()  # a checkpoint folder without a record: not a run of record
    (tmp_path / "Bad Name.record.json").write_text("{}")
    assert C.run_names(sh(C.list_runs_command(str(tmp_path)))) == ["alpha", "beta"]
    assert C.run_names(sh(C.list_runs_command(str(tmp_path / "empty")))) == []


def test_the_lease_state_is_read_without_taking_it(tmp_path):
    d = str(tmp_path / "r1.lock")
    now = time.time()
    assert C.decide(state(lease_holder=lock.live_holder(sh(lock.state_command(d)), now))).action == "continue"
    sh(lock.acquire_command(d, "pythia_pretrain:manual__a", 600))
    assert lock.live_holder(sh(lock.state_command(d)), time.time()) == "pythia_pretrain:manual__a"
    sh(lock.release_command(d, "pythia_pretrain:manual__a"))
    assert lock.live_holder(sh(lock.state_command(d)), time.time()) is None
    sh(lock.acquire_command(d, "pythia_pretrain:manual__b", -5))  # a lease that ran out
    assert lock.live_holder(sh(lock.state_command(d)), time.time()) is None
    # reading changed nothing: the expired holder is still the record, and can be taken over
    assert sh(lock.acquire_command(d, "x:y", 600)).startswith("taken-over pythia_pretrain:manual__b")
