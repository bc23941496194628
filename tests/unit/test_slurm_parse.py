"""Parsers and state classification against outputs captured from the local Slurm 22.05 cluster."""

from pathlib import Path

import pytest

from neoxflow.slurm.commands import MARK, ProbeRequest, split_probe_output
from neoxflow.slurm.parse import (
    SlurmParseError,
    merge_sources,
    parse_sacct,
    parse_sbatch_parsable,
    parse_scontrol,
    parse_scontrol_record,
    parse_squeue,
)
from neoxflow.slurm.states import Outcome, classify, combine
from neoxflow.slurm.status import array_task_ids, status_from_probe

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"


def read(name: str) -> str:
    return (FIX / name).read_text()


@pytest.mark.parametrize(
    ("word", "reason", "outcome"),
    [
        ("PENDING", "Resources", Outcome.ACTIVE),
        ("PENDING", "JobHeldAdmin", Outcome.HELD),
        ("PENDING", "DependencyNeverSatisfied", Outcome.HELD),
        ("COMPLETING", "", Outcome.ACTIVE),  # not final: nodes still cleaning up
        ("REQUEUED", "", Outcome.ACTIVE),
        ("COMPLETED", "", Outcome.SUCCESS),
        ("CD", "", Outcome.SUCCESS),
        ("FAILED", "NonZeroExitCode", Outcome.APP_FAILURE),
        ("OUT_OF_MEMORY", "", Outcome.APP_FAILURE),
        ("NODE_FAIL", "", Outcome.INFRA_FAILURE),
        ("PREEMPTED", "", Outcome.INFRA_FAILURE),
        ("BOOT_FAIL", "", Outcome.INFRA_FAILURE),
        ("TIMEOUT", "", Outcome.INFRA_FAILURE),
        ("CANCELLED by 0", "", Outcome.CANCELLED),
        ("RUNNING+", "", Outcome.ACTIVE),  # sacct without --parsable2 cuts long words
        ("REQUEUE_HOLD", "", Outcome.HELD),
        ("SPECIAL_EXIT", "", Outcome.HELD),
        ("", "", Outcome.UNKNOWN),
        ("SOMETHING_NEW", "", Outcome.UNKNOWN),
    ],
)
def test_classify(word, reason, outcome):
    assert classify(word, reason) is outcome


def test_array_outcome_is_the_worst_task():
    assert combine([Outcome.SUCCESS, Outcome.SUCCESS]) is Outcome.SUCCESS
    assert combine([Outcome.SUCCESS, Outcome.APP_FAILURE, Outcome.INFRA_FAILURE]) is Outcome.APP_FAILURE
    assert combine([Outcome.SUCCESS, Outcome.ACTIVE]) is Outcome.ACTIVE
    assert combine([Outcome.SUCCESS, Outcome.UNKNOWN]) is Outcome.UNKNOWN
    assert combine([]) is Outcome.UNKNOWN


def test_sbatch_parsable():
    assert parse_sbatch_parsable("1234\n") == "1234"
    assert parse_sbatch_parsable("1234;cluster-a\n") == "1234"
    assert parse_sbatch_parsable("sbatch: warning: something\n77\n") == "77"
    with pytest.raises(SlurmParseError):
        parse_sbatch_parsable("sbatch: error: Batch job submission failed\n")


def test_squeue_expands_pending_array_ranges():
    rows = parse_squeue("4_[2-3%2]|PENDING|JobArrayTaskLimit|\n4_0|RUNNING|None|node1\n")
    assert [r.job_id for r in rows] == ["4_2", "4_3", "4_0"]
    assert rows[0].reason == "JobArrayTaskLimit"
    assert rows[2].reason == ""  # squeue prints "None" for no reason
    rows = parse_squeue(read("squeue_array_running.txt"))
    assert {r.job_id: r.state for r in rows}["4_0"] == "RUNNING"


def test_scontrol_record_keeps_values_with_spaces():
    rec = parse_scontrol_record(
        "JobId=5 JobName=my job Reason=Nodes required for job are DOWN NodeList=node1 Command=/a b"
    )
    assert rec["JobName"] == "my job"
    assert rec["Reason"] == "Nodes required for job are DOWN"
    assert rec["Command"] == "/a b"


def test_scontrol_array_finished_tasks():
    rows = {r.job_id: r for r in parse_scontrol(read("scontrol_array_done.txt"))}
    assert set(rows) == {"4_0", "4_1", "4_2", "4_3"}
    assert rows["4_2"].state == "FAILED"
    assert rows["4_2"].exit_status == 7
    assert rows["4_2"].stdout_path == "/tmp/arr-4_2.out"
    status = merge_sources("4", [], list(rows.values()), [], expected_tasks=array_task_ids("4", "0-3%2"))
    assert status.outcome is Outcome.APP_FAILURE
    assert "exit code 7" in status.summary() and "1/4 array tasks" in status.summary()


def test_scontrol_pending_array_range_expands():
    rows = parse_scontrol(read("scontrol_array_running.txt"))
    ids = sorted(r.job_id for r in rows)
    assert ids == ["4_0", "4_1", "4_2", "4_3"]


def test_two_node_job_nodelist():
    (row,) = parse_scontrol(read("scontrol_2node_done.txt"))
    assert (row.state, row.nodes, row.exit_code) == ("COMPLETED", "node[1-2]", "0:0")


def test_sacct_skips_steps_and_reads_states():
    rows = {r.job_id: r for r in parse_sacct(read("sacct_array_and_nodefail.txt"))}
    assert "9_0.batch" not in rows
    assert rows["9_2"].state == "FAILED" and rows["9_2"].exit_status == 7
    assert rows["10"].nodes == ""  # "None assigned" is not a node


def test_sacct_requeued_job_last_row_wins():
    text = "12|train|NODE_FAIL|0:0|None|node[1-2]|a|b|c\n12|train|COMPLETED|0:0|None|node1|a|b|c\n"
    (row,) = parse_sacct(text)
    assert row.state == "COMPLETED"


def test_layered_sources_prefer_live_queue():
    live = parse_squeue("7|COMPLETING|None|node1\n")
    stale = parse_sacct("7|x|RUNNING|0:0|None|node1|a|b|c\n")
    status = merge_sources("7", live, [], stale)
    assert status.outcome is Outcome.ACTIVE and status.state == "COMPLETING"


def test_missing_array_task_is_unknown_not_done():
    rows = parse_scontrol(read("scontrol_array_done.txt"))
    status = merge_sources("4", [], rows[:2], [], expected_tasks=array_task_ids("4", "0-3"))
    assert status.outcome is Outcome.UNKNOWN
    assert "no source knows" in status.note


def test_probe_output_split_and_not_found_is_an_answer():
    out = (
        f"{MARK} squeue\nslurm_load_jobs error: Invalid job id specified\n{MARK} rc 1\n"
        f"{MARK} scontrol\nslurm_load_jobs error: Invalid job id specified\n{MARK} rc 1\n"
        f"{MARK} sacct\nsacct: error: Slurm accounting storage is disabled\n{MARK} rc 1\n"
        f"{MARK} log\n"
    ).encode() + f"line with {MARK} inside\n".encode()
    answer = split_probe_output(out)
    assert answer.squeue == "" and answer.scontrol == "" and answer.sacct is None
    assert "accounting storage is disabled" in answer.errors["sacct"]
    assert answer.log_chunk == f"line with {MARK} inside\n".encode()
    status = status_from_probe("99", answer)
    assert status.outcome is Outcome.UNKNOWN  # gone from the queue and no accounting: not success


def test_probe_controller_down_is_unknown():
    out = (
        f"{MARK} squeue\nslurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
        f"{MARK} rc 1\n{MARK} scontrol\n"
        f"slurm_load_jobs error: Unable to contact slurm controller\n{MARK} rc 1\n"
    ).encode()
    answer = split_probe_output(out)
    assert answer.squeue is None and answer.scontrol is None
    status = status_from_probe("5", answer)
    assert status.outcome is Outcome.UNKNOWN and "did not answer" in status.note


def test_probe_request_command_is_one_line_with_all_sources():
    cmd = ProbeRequest(
        "42", "2026-11-27", log_path="/fsx/runs/a b/slurm-42.out".replace(" ", "_"), log_offset=100
    ).command()
    assert "squeue -h -r -j 42" in cmd and "scontrol show job -o 42" in cmd
    assert "--starttime=2026-11-27" in cmd and "tail -c +101" in cmd
    assert "\n" not in cmd


def test_array_task_ids():
    assert array_task_ids("5", "0-3%2") == ["5_0", "5_1", "5_2", "5_3"]
    assert array_task_ids("5", "1,4-5") == ["5_1", "5_4", "5_5"]
    assert array_task_ids("5", "0-6:3") == ["5_0", "5_3", "5_6"]
    assert array_task_ids("5", None) is None


def test_config_values_are_read_by_exact_key():
    from neoxflow.slurm.parse import parse_config_value

    out = (
        "Configuration data as of 2026-12-03T11:40:00\n"
        "MaxArraySize            = 1001\n"
        "MaxArraySizeNote        = 7\n"
        "MaxJobCount             = 10000\n"
    )
    assert parse_config_value(out, "MaxArraySize") == "1001"
    assert parse_config_value(out, "MaxJobCount") == "10000"
    assert parse_config_value(out, "MaxStepCount") is None


def test_array_tasks_that_left_the_queue_keep_the_end_an_earlier_poll_saw():
    """Without accounting an array task that ended leaves squeue and scontrol after MinJobAge while the
    array's last tasks still run: its end seen earlier stands in, so a long array finishes instead of
    turning 'unknown' (then 'lost'). A task never seen final stays unknown."""
    from neoxflow.slurm.parse import TaskState

    expected = ["7_0", "7_1", "7_2"]
    running = [TaskState("7_2", "RUNNING", source="squeue")]
    assert merge_sources("7", running, [], [], expected_tasks=expected).outcome is Outcome.UNKNOWN
    seen = {
        "7_0": TaskState("7_0", "COMPLETED", exit_code="0:0", source="scontrol"),
        "7_1": TaskState("7_1", "COMPLETED", exit_code="0:0", source="scontrol"),
    }
    status = merge_sources("7", running, [], [], expected_tasks=expected, finished=seen)
    assert status.outcome is Outcome.ACTIVE and "earlier poll" in status.tasks[0].source
    done = [TaskState("7_2", "COMPLETED", exit_code="0:0", source="scontrol")]
    assert merge_sources("7", [], done, [], expected_tasks=expected, finished=seen).outcome is Outcome.SUCCESS
    failed = {**seen, "7_1": TaskState("7_1", "FAILED", exit_code="3:0", source="scontrol")}
    assert merge_sources("7", [], done, [], expected_tasks=expected, finished=failed).outcome.final
    assert (
        merge_sources("7", [], done, [], expected_tasks=expected, finished=failed).outcome
        is not Outcome.SUCCESS
    )
    # a state that was not final is no stand-in
    pending = {"7_0": TaskState("7_0", "PENDING"), "7_1": seen["7_1"]}
    assert (
        merge_sources("7", [], done, [], expected_tasks=expected, finished=pending).outcome is Outcome.UNKNOWN
    )
