"""The alert text: facts gathered from a callback context, the Airflow UI link, and secret scrubbing.

The context is a plain dict with the keys Airflow 3 puts in a task callback context and that the builder
reads (``ti``, ``exception``, ``dag_run``, ``run_id``); ``ti`` is a small stand-in exposing the
RuntimeTaskInstance attributes used (dag_id, task_id, run_id, try_number, map_index, xcom_pull). The
exception is the real ``SlurmJobFailed`` built from the real ``failure_message`` of the Slurm operator.
"""

from __future__ import annotations

from typing import Any

import pytest

from neoxflow.errors import SlurmJobFailed, failure_message
from neoxflow.notifiers.message import KINDS, SUBJECT_LIMIT, build_alert, split_error, task_url
from neoxflow.notifiers.scrub import MASK, scrub

BASE = "https://airflow.example.org/"
RUN_ID = "manual__2026-03-01T10:00:00+00:00"


class FakeTI:
    """The RuntimeTaskInstance surface the builder reads; records the XCom pulls it gets."""

    def __init__(self, xcoms: dict[str, Any] | None = None, *, map_index: int = -1, fail_xcom: bool = False):
        self.dag_id = "pythia_pretrain"
        self.task_id = "train.watch"
        self.run_id = RUN_ID
        self.try_number = 3
        self.map_index = map_index
        self.xcoms = xcoms or {}
        self.fail_xcom = fail_xcom
        self.pulls: list[tuple[Any, str]] = []

    def xcom_pull(self, task_ids=None, key="return_value"):
        self.pulls.append((task_ids, key))
        if self.fail_xcom:
            raise RuntimeError("XCom API unreachable")
        return self.xcoms.get(key)


def slurm_event(state="NODE_FAIL", outcome="infra_failure", tail=None, tasks=None) -> dict[str, Any]:
    tasks = tasks or [{"state": state, "reason": "NodeDown", "exit_code": "0:9", "nodes": "node2"}]
    return {
        "event": "final",
        "job_id": "4711",
        "status": {
            "job_id": "4711",
            "outcome": outcome,
            "state": state,
            "note": "",
            "summary": f"job 4711, state {state}, reason NodeDown, nodes node2",
            "tasks": tasks,
        },
        "tail": tail
        if tail is not None
        else ["iteration 1200 loss 2.31", "srun: error: node2: task 1: Killed"],
    }


def failed_context(event: dict[str, Any], **ti_kwargs) -> tuple[dict[str, Any], FakeTI]:
    record = {"job_id": event["job_id"], "status": event["status"], "event": event["event"]}
    ti = FakeTI(**ti_kwargs)
    return {"ti": ti, "run_id": RUN_ID, "exception": SlurmJobFailed(failure_message(event), record)}, ti


def test_failure_alert_carries_every_fact_and_the_task_link():
    context, ti = failed_context(slurm_event())
    alert = build_alert("failure", context, base_url=BASE)

    assert alert.fields["dag"] == "pythia_pretrain"
    assert alert.fields["run"] == RUN_ID
    assert alert.fields["task"] == "train.watch"
    assert alert.fields["try"] == "3"
    assert alert.fields["slurm job"] == "4711"
    assert alert.fields["state"] == "NODE_FAIL"
    assert alert.fields["reason"] == "NodeDown"
    assert alert.fields["nodes"] == "node2"
    assert alert.fields["exit code"] == "0:9"
    assert "infrastructure failure" in alert.fields["error"]
    assert "last log lines" not in alert.fields["error"]  # the tail is split off into log_lines
    assert alert.log_lines == ("iteration 1200 loss 2.31", "srun: error: node2: task 1: Killed")
    expected_url = (
        "https://airflow.example.org/dags/pythia_pretrain/runs/manual__2026-03-01T10%3A00%3A00%2B00%3A00"
        "/tasks/train.watch?try_number=3"
    )
    assert alert.url == expected_url
    assert alert.fields["link"] == expected_url
    # the record came with the exception: no XCom round trip was needed
    assert ti.pulls == []
    assert alert.subject == "[neoxflow] FAILURE: pythia_pretrain.train.watch job 4711 NODE_FAIL"
    # the Slurm outcome tells the reader what kind of failure it is
    assert (
        "neoxflow: task failed (infrastructure failure: safe to resume from the latest checkpoint)"
        in alert.text
    )
    for line in (alert.subject, KINDS["failure"], "nodes:", "node2", expected_url, "srun: error: node2"):
        assert line in alert.text


def test_facts_come_from_the_tasks_own_xcom_when_the_exception_has_no_record():
    event = slurm_event(
        state="FAILED",
        outcome="app_failure",
        tasks=[
            {"state": "FAILED", "reason": "NonZeroExitCode", "exit_code": "1:0", "nodes": "node1"},
            {"state": "FAILED", "reason": "NonZeroExitCode", "exit_code": "1:0", "nodes": "node2"},
        ],
    )
    record = {"job_id": "4711", "status": event["status"], "event": "final", "tail": ["Traceback", "OOM"]}
    ti = FakeTI({"slurm_job": record, "job_id": "9999"})
    alert = build_alert("app_failure", {"ti": ti, "exception": RuntimeError("boom")}, base_url=BASE)

    assert ti.pulls == [("train.watch", "slurm_job")]
    assert alert.fields["slurm job"] == "4711"
    assert alert.fields["nodes"] == "node1, node2"
    assert alert.fields["reason"] == "NonZeroExitCode"  # de-duplicated over the array tasks
    assert alert.fields["error"] == "boom"
    assert alert.log_lines == ("Traceback", "OOM")
    assert "neoxflow: application failure: needs a human" in alert.text


def test_job_id_xcom_is_used_when_the_job_never_reported():
    ti = FakeTI({"job_id": "123"})
    alert = build_alert("retry", {"ti": ti, "exception": TimeoutError("sbatch timed out")}, base_url=BASE)
    assert ("train.watch", "job_id") in ti.pulls
    assert alert.fields["slurm job"] == "123"
    assert "state" not in alert.fields
    assert alert.fields["error"] == "sbatch timed out"


def test_unreachable_xcom_does_not_prevent_the_alert():
    ti = FakeTI(fail_xcom=True)
    alert = build_alert("failure", {"ti": ti, "exception": ValueError("bad")}, base_url=BASE)
    assert alert.fields["task"] == "train.watch"
    assert "slurm job" not in alert.fields


def test_explicit_facts_override_and_work_without_a_context():
    alert = build_alert(
        "give_up",
        dag_id="pythia_pretrain",
        run_id="scheduled__1",
        job_id="77",
        nodes="node1",
        detail="3 attempts, failed nodes node1, node2; 150 iterations lost",
        log_lines="a\nb",
        base_url=BASE,
    )
    assert alert.fields["detail"].startswith("3 attempts")
    assert alert.log_lines == ("a", "b")
    assert alert.url == "https://airflow.example.org/dags/pythia_pretrain/runs/scheduled__1"
    context, _ = failed_context(slurm_event())
    overridden = build_alert("stall", context, base_url=BASE, nodes="node9", state="RUNNING")
    assert overridden.fields["nodes"] == "node9"
    assert overridden.fields["state"] == "RUNNING"


def test_deadline_context_from_the_scheduler_links_the_run():
    context = {
        "dag_run": {"dag_id": "pythia_pretrain", "dag_run_id": RUN_ID, "state": "running", "queued_at": "T0"},
        "deadline": {"id": "abc", "deadline_time": "2026-03-02T10:00:00+00:00"},
    }
    alert = build_alert("deadline", context, base_url=BASE)
    assert alert.fields["run"] == RUN_ID
    assert alert.fields["run state"] == "running"
    assert alert.fields["deadline"] == "2026-03-02T10:00:00+00:00"
    assert "task" not in alert.fields
    assert alert.url == task_url(BASE, "pythia_pretrain", RUN_ID)
    assert alert.url.endswith("/runs/manual__2026-03-01T10%3A00%3A00%2B00%3A00")


def test_mapped_task_link_and_default_base_url():
    context, _ = failed_context(slurm_event(), map_index=4)
    alert = build_alert("failure", context)
    assert alert.url.startswith("http://localhost:8080/dags/pythia_pretrain/runs/")
    assert alert.url.endswith("/tasks/train.watch/mapped/4?try_number=3")
    assert alert.fields["map index"] == "4"


def test_subject_is_short_printable_ascii_and_log_tail_is_bounded():
    tail = [f"line {i} " + "x" * 1000 for i in range(100)]
    alert = build_alert("failure", dag_id="d\u00e9" * 80, task_id="t\nx", log_lines=tail, max_log_lines=5)
    assert len(alert.subject) <= SUBJECT_LIMIT
    assert alert.subject.isascii() and "\n" not in alert.subject
    assert [line.split()[1] for line in alert.log_lines] == ["95", "96", "97", "98", "99"]
    assert all(len(line) <= 400 for line in alert.log_lines)


def test_split_error_separates_the_log_tail():
    message = failure_message(slurm_event(tail=["a", "b"]))
    headline, tail = split_error(message)
    assert headline.startswith("Slurm job 4711")
    assert tail == ["a", "b"]
    assert split_error("plain") == ("plain", [])


# -- secrets -------------------------------------------------------------------------------------------
SECRETS = {
    "aws_secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "aws_key_id": "AKIAIOSFODNN7EXAMPLE",
    "hf_token": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "url_password": "s3cr3t-pa55",
    "json_password": "hunter2hunter2",
    "bearer": "eyJhbGciOi.J9abcdefgh.sig12345678",
    "slack_hook": "T0001/B0002/XXXXXXXXXXXXXXXXXXXXXXXX",
    "gh_token": "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "cli_password": "p4ssw0rd!",
    "presigned": "FQoGZXIvYXdzEXAMPLE",
    "pem_body": "MIIEowIBAAKCAQEA7bq",
    "wandb": "0123456789abcdef0123456789abcdefdeadbeef",
}


def secret_laden_context() -> dict[str, Any]:
    s = SECRETS
    tail = [
        "iteration 1200 loss 2.31",
        f"export AWS_SECRET_ACCESS_KEY={s['aws_secret']}",
        f"aws_access_key_id={s['aws_key_id']}",
        f"HF_TOKEN='{s['hf_token']}' python train.py",
        f"git remote: https://neox:{s['url_password']}@git.example.com/repo.git",
        f'config: {{"password": "{s["json_password"]}", "user": "neox"}}',
        f"curl -H 'Authorization: Bearer {s['bearer']}' https://api",
        f"posting to https://hooks.slack.com/services/{s['slack_hook']}",
        f"cloned with {s['gh_token']}",
        f"mysql --password {s['cli_password']} -u root",
        f"GET https://b.s3.amazonaws.com/k?X-Amz-Security-Token={s['presigned']}&X-Amz-Signature=abc",
        f"-----BEGIN RSA PRIVATE KEY-----\n{s['pem_body']}\n-----END RSA PRIVATE KEY-----",
        f"WANDB_API_KEY: {s['wandb']}",
    ]
    event = slurm_event(tail=tail)
    event["status"]["tasks"][0]["reason"] = f"reason with token={s['hf_token']}"
    record = {"job_id": "4711", "status": event["status"], "event": "final"}
    error = SlurmJobFailed(failure_message(event) + f" (dsn postgres://u:{s['url_password']}@db/x)", record)
    return {"ti": FakeTI(), "exception": error}


def everything(alert) -> str:
    return "\n".join([alert.subject, alert.text, alert.url or "", *alert.fields.values(), *alert.log_lines])


def test_no_secret_survives_in_any_part_of_the_alert():
    alert = build_alert("failure", secret_laden_context(), base_url=BASE)
    blob = everything(alert)
    leaked = [name for name, value in SECRETS.items() if value in blob]
    assert leaked == []
    # the context around the secrets is still there for the human
    assert "iteration 1200 loss 2.31" in blob
    assert "export AWS_SECRET_ACCESS_KEY=" + MASK in blob
    assert "https://" + MASK + "@git.example.com/repo.git" in blob
    assert "hooks.slack.com/services/" + MASK in blob
    assert "-u root" in blob


def test_known_secret_literals_are_masked_too():
    alert = build_alert(
        "failure", dag_id="d", error="login failed for opaque-value-42", known_secrets=["opaque-value-42"]
    )
    assert "opaque-value-42" not in everything(alert)


@pytest.mark.parametrize(
    "text",
    [
        "tokenizer_type: HFTokenizer",
        "train_tokens=300000 tokens_per_sec: 1234.5",
        "checkpoint sha1 0123456789abcdef0123456789abcdef01234567",
        "iteration 100/1000 | lm_loss 2.3 | lr 1.0e-04",
        "secretary: alice",
        "the token embeddings were resized",
        "https://github.com/EleutherAI/gpt-neox/blob/main/README.md",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert scrub(text) == text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("password=abc123", "abc123"),
        ("DB_PASSWORD: 'two words'", "two words"),
        ("--api-key=ZZZ999", "ZZZ999"),
        ("{'client_secret': 'q1w2e3'}", "q1w2e3"),
        ("ssh://deploy:pw1234@login-node", "pw1234"),
        ("xoxb-123456789012-abcdefghijkl", "xoxb-123456789012-abcdefghijkl"),
        ("AWS_SESSION_TOKEN=IQoJb3JpZ2luX2VjEXAMPLE", "IQoJb3JpZ2luX2VjEXAMPLE"),
    ],
)
def test_secret_shapes_are_masked(text, secret):
    assert secret not in scrub(text)
    assert MASK in scrub(text)
