"""The run of record (pipeline/record.py): what a run trains is fixed by its first plan.

Real plans from the real profiles and configs; the create command runs in a real bash against a real
folder, raced by concurrent first plans.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from neoxflow.data.shards import compact_indices
from neoxflow.pipeline import record
from neoxflow.pipeline.plan import plan_run

SMALL = {"shards": "0-1", "train_iters": 40, "checkpoint_interval": 20}
ENV = {"NEOXFLOW_TOKENIZER_SOURCE": "http://127.0.0.1:18080/20B_tokenizer.json"}


@pytest.fixture(autouse=True)
def _tokenizer_source(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def planned(form: dict) -> record.RunRecord:
    form = {"profile": "local", "run_name": "pythia-demo", **form}
    return record.record_from_plan(plan_run(form), form)


def test_compact_indices_round_trips_the_form_syntax():
    from neoxflow.data.shards import ShardSelection

    assert compact_indices([0, 1, 2, 5, 7, 8]) == "0-2,5-5,7-8"
    assert compact_indices((3,)) == "3-3"  # not "3": the form reads that as the first three shards
    for spec in ("0-15", "0,5,7", "subset", "all", "1000-1023,3", "3-3", "0-0", "7"):
        train = ShardSelection.parse(spec).train
        assert ShardSelection.parse(compact_indices(train)).train == train


def test_the_issue_case_a_default_plan_of_a_recorded_run_continues_it_as_itself():
    """Plan shards 16 / train_iters 5000, then plan the defaults for the same run name: without the record
    that gave 4 shards and 143000 iterations (another dataset, another LR schedule)."""
    first = planned({"shards": "16", "train_iters": 5000})
    blank = {"profile": "local", "run_name": "pythia-demo", "shards": None, "train_iters": None}
    merged = record.merge_form(blank, first)
    again = record.record_from_plan(plan_run(merged), merged)
    assert again.fixed == first.fixed and again.fixed_hash == first.fixed_hash
    assert again.request["shards"] == "0-15" and again.fixed["neox"]["train_iters"] == 5000
    # and without the record, the defaults really are another model: the merge is what keeps it
    defaults = planned({})
    assert [c[0] for c in record.differences(first.fixed, defaults.fixed)] != []


def test_a_change_to_a_fixed_field_is_refused_naming_the_field_and_both_values():
    first = planned({"shards": "0-1", "train_iters": 40, "checkpoint_interval": 20})
    with pytest.raises(record.RecordMismatch) as err:
        record.check_against(first, planned({"shards": "0-1", "train_iters": 50, "checkpoint_interval": 20}))
    fields = {field: (old, new) for field, old, new in err.value.changes}
    assert fields["neox.train_iters"] == (40, 50)
    assert "neox.train_iters: recorded 40, now 50" in str(err.value)
    with pytest.raises(record.RecordMismatch, match=r"dataset\.shards"):
        record.check_against(first, planned({"shards": "0-2", "train_iters": 40, "checkpoint_interval": 20}))
    with pytest.raises(record.RecordMismatch, match=r"model_size"):
        record.check_against(first, planned({**SMALL, "model_size": "31M"}))


def test_per_slice_fields_may_change():
    first = planned({"shards": "0-1", "train_iters": 40, "checkpoint_interval": 20})
    later = planned({"shards": "0-1", "train_iters": 40, "checkpoint_interval": 10, "time_limit": "00:30:00"})
    record.check_against(first, later)  # no exception: same model, another slice plan
    assert later.request["checkpoint_interval"] == 10


def test_blank_fields_take_the_record_and_given_ones_stay():
    first = planned({**SMALL, "nodes": 2, "time_limit": "01:00:00"})
    merged = record.merge_form({"run_name": "pythia-demo", "nodes": 1, "shards": ""}, first)
    assert merged["nodes"] == 1 and merged["shards"] == "0-1" and merged["train_iters"] == 40
    assert merged["time_limit"] == "01:00:00"
    assert record.merge_form({"run_name": "x"}, None) == {"run_name": "x"}


def test_the_record_round_trips_and_a_hand_edit_is_detected():
    first = planned({"shards": "0-1"})
    assert record.RunRecord.from_json(first.to_json()) == first
    edited = first.to_json().replace('"train_iters": 200', '"train_iters": 300', 1)
    assert edited != first.to_json()
    with pytest.raises(ValueError, match="does not match its hash"):
        record.RunRecord.from_json(edited)


def sh(command: str) -> str:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=10).stdout.strip()


def test_read_prints_nothing_until_created_and_create_happens_once(tmp_path):
    path = str(tmp_path / "ckpt" / record.RECORD_NAME)
    (tmp_path / "ckpt").mkdir()
    assert sh(record.read_command(path)) == ""
    (tmp_path / "a").write_text("first\n")
    assert sh(record.create_command(str(tmp_path / "a"), path)) == "created"
    (tmp_path / "b").write_text("second\n")
    assert sh(record.create_command(str(tmp_path / "b"), path)) == "exists"
    assert sh(record.read_command(path)) == "first"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # staged copies cleaned up


def test_racing_first_plans_create_exactly_one_record(tmp_path):
    path = str(tmp_path / record.RECORD_NAME)
    staged = []
    for i in range(16):
        (tmp_path / f"s{i}").write_text(f"plan {i}\n")
        staged.append(str(tmp_path / f"s{i}"))
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda s: sh(record.create_command(s, path)), staged))
    assert sorted(answers).count("created") == 1 and answers.count("exists") == 15
    winner = answers.index("created")
    assert sh(record.read_command(path)) == f"plan {winner}"


def test_paths_reaching_the_shell_are_checked():
    from neoxflow.slurm.validate import UnsafeValueError

    with pytest.raises(UnsafeValueError):
        record.read_command("/fsx/x; rm -rf /")
    with pytest.raises(UnsafeValueError):
        record.create_command("/fsx/a", "/fsx/$(reboot)")


@pytest.mark.parametrize(
    ("time_limit", "fragment"),
    [
        ("0:00:00", "time_limit: '0:00:00' is not a Slurm time limit"),
        ("0-00:00:00", "is not a Slurm time limit"),
        ("00:00:20", "stop_before_limit_s: 20 s is not shorter than the time limit (20 s)"),
    ],
)
def test_the_plan_renders_the_training_script_and_refuses_a_bad_slice(time_limit, fragment):
    """Before any data stage: the launch's own checks run at plan time, naming the field."""
    assert "#SBATCH" in plan_run({"profile": "local", "run_name": "r", **SMALL})["train"]["script"]
    with pytest.raises(ValueError, match=re.escape(fragment)):
        plan_run({"profile": "local", "run_name": "r", **SMALL, "time_limit": time_limit})
