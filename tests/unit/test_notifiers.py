"""The alert channels against real servers started by the tests themselves (no cluster, no internet).

* SNS: a real moto server (``moto.server.ThreadedMotoServer``, in process, on a free port); the message
  is read back through an SQS queue subscribed to the topic.
* SMTP: a tiny SMTP receiver (socketserver; ``aiosmtpd`` is not installed) that stores every message.
* Slack: a local HTTP server that records the webhook POST.

Airflow connections come from ``AIRFLOW_CONN_*`` environment variables (JSON form), which the SDK's
environment secrets backend reads outside a task too. The callback context is the dict of the message
tests (``tests/unit/test_alert_message.py``): the keys a task callback context has and the builder reads.
It runs in a few seconds, needs no service outside the test process, hence tests/unit.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import socketserver
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from neoxflow.notifiers.deadline import deadline_callback, run_deadline
from neoxflow.notifiers.factory import alert_notifiers, send_alert
from neoxflow.notifiers.message import build_alert
from neoxflow.notifiers.slack import NeoxflowSlackNotifier, slack_payload, webhook_url
from neoxflow.notifiers.smtp import NeoxflowSmtpNotifier, email_html
from neoxflow.notifiers.sns import TOPIC_ENV, NeoxflowSnsNotifier
from tests.unit.test_alert_message import SECRETS, failed_context, secret_laden_context, slurm_event

REGION = "us-east-1"
SLACK_TOKEN = "T0001/B0002/s3cr3tW3bh00kT0k3n"


# -- servers -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class SmtpReceiver(socketserver.ThreadingTCPServer):
    """Just enough of RFC 5321 for smtplib: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.messages: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _SmtpHandler)


class _SmtpHandler(socketserver.StreamRequestHandler):
    def reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 localhost neoxflow test SMTP")
        sender, recipients = None, []
        while line := self.rfile.readline():
            command = line.decode("utf-8", "replace").strip()
            verb = command[:4].upper()
            if verb == "EHLO":
                self.reply("250-localhost\r\n250 8BITMIME")
            elif verb == "HELO":
                self.reply("250 localhost")
            elif verb == "MAIL":
                sender, recipients = command.split(":", 1)[1].strip().split()[0].strip("<>"), []
                self.reply("250 OK")
            elif verb == "RCPT":
                recipients.append(command.split(":", 1)[1].strip().strip("<>"))
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                data = []
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                self.server.messages.append({"from": sender, "to": recipients, "data": b"".join(data)})
                self.reply("250 OK queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")


@pytest.fixture
def smtp_server() -> Iterator[SmtpReceiver]:
    server = SmtpReceiver()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


class WebhookReceiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        super().__init__(("127.0.0.1", 0), _WebhookHandler)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _WebhookHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        self.send_response(self.server.status)
        self.end_headers()
        self.wfile.write(b"ok" if self.server.status == 200 else b"invalid_token")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_server() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


# -- connections and AWS resources ---------------------------------------------------------------------
@pytest.fixture
def connections(monkeypatch, moto_endpoint, smtp_server, webhook_server) -> dict[str, Any]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN", TOPIC_ENV):
        monkeypatch.delenv(name, raising=False)
    for name in ("NEOXFLOW_ALERT_SLACK_CONN", "NEOXFLOW_ALERT_SMTP_CONN", "NEOXFLOW_ALERT_EMAIL_TO"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    conns = {
        "NEOXFLOW_TEST_AWS": {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"region_name": REGION, "endpoint_url": moto_endpoint},
        },
        "NEOXFLOW_TEST_SMTP": {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": smtp_server.server_address[1],
            "extra": {
                "disable_tls": True,
                "disable_ssl": True,
                "from_email": "airflow@example.org",
                "retry_limit": 0,
                "timeout": 5,
            },
        },
        "NEOXFLOW_TEST_SLACK": {
            "conn_type": "http",
            "host": f"{webhook_server.base}/services",
            "password": SLACK_TOKEN,
        },
        "NEOXFLOW_TEST_SLACK_DOWN": {"conn_type": "http", "password": "http://127.0.0.1:9/services/x"},
    }
    for conn_id, value in conns.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id}", json.dumps(value))
    return {
        "aws": "neoxflow_test_aws",
        "smtp": "neoxflow_test_smtp",
        "slack": "neoxflow_test_slack",
        "slack_down": "neoxflow_test_slack_down",
    }


@pytest.fixture(scope="module")
def aws_clients(moto_endpoint) -> tuple[Any, Any]:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    return session.client("sns", endpoint_url=moto_endpoint), session.client(
        "sqs", endpoint_url=moto_endpoint
    )


@pytest.fixture
def topic(aws_clients, request) -> dict[str, Any]:
    """A fresh SNS topic with an SQS queue subscribed to it."""
    sns, sqs = aws_clients
    name = request.node.name.replace("[", "-").replace("]", "")[:70]
    arn = sns.create_topic(Name=f"alerts-{name}")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"alerts-{name}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)

    def received() -> list[dict[str, Any]]:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        return [json.loads(m["Body"]) for m in got.get("Messages", [])]

    return {"arn": arn, "received": received}


def parsed_mail(message: dict[str, Any]) -> email.message.EmailMessage:
    return email.message_from_bytes(message["data"], policy=email.policy.default)


def html_body(mail: email.message.EmailMessage) -> str:
    return mail.get_body(preferencelist=("html",)).get_content()


# -- channels ------------------------------------------------------------------------------------------
def test_sns_alert_read_back_through_an_sqs_subscription(connections, topic):
    context, _ = failed_context(slurm_event())
    notifier = NeoxflowSnsNotifier(
        target_arn=topic["arn"],
        aws_conn_id=connections["aws"],
        kind="failure",
        raise_errors=True,
        base_url="https://airflow.example.org",
    )
    notifier(context)

    [envelope] = topic["received"]()
    expected = build_alert(
        "failure", failed_context(slurm_event())[0], base_url="https://airflow.example.org"
    )
    assert envelope["Type"] == "Notification"
    assert envelope["TopicArn"] == topic["arn"]
    assert envelope["Subject"] == expected.subject
    assert envelope["Message"] == expected.text
    assert "nodes:     node2" in envelope["Message"]
    assert "/dags/pythia_pretrain/runs/" in envelope["Message"]
    attributes = {k: v["Value"] for k, v in envelope["MessageAttributes"].items()}
    assert attributes == {
        "neoxflow_kind": "failure",
        "dag_id": "pythia_pretrain",
        "task_id": "train.watch",
        "job_id": "4711",
    }


def test_sns_message_carries_no_secret(connections, topic):
    NeoxflowSnsNotifier(target_arn=topic["arn"], aws_conn_id=connections["aws"], raise_errors=True)(
        secret_laden_context()
    )
    [envelope] = topic["received"]()
    raw = json.dumps(envelope)
    assert [name for name, value in SECRETS.items() if value in raw] == []
    assert "iteration 1200 loss 2.31" in envelope["Message"]


def test_smtp_alert_received_by_a_local_smtp_server(connections, smtp_server):
    context, _ = failed_context(slurm_event(state="FAILED", outcome="app_failure"))
    NeoxflowSmtpNotifier(
        to=["oncall@example.org", "ml@example.org"],
        smtp_conn_id=connections["smtp"],
        kind="app_failure",
        raise_errors=True,
    )(context)

    [message] = smtp_server.messages
    assert message["from"] == "airflow@example.org"
    assert message["to"] == ["oncall@example.org", "ml@example.org"]
    mail = parsed_mail(message)
    assert mail["Subject"] == "[neoxflow] APP_FAILURE: pythia_pretrain.train.watch job 4711 FAILED"
    assert mail["X-Neoxflow-Alert"] == "app_failure"
    body = html_body(mail)
    assert "needs a human" in body
    assert "<th align='left'>slurm job</th><td>4711</td>" in body
    assert 'href="http://localhost:8080/dags/pythia_pretrain/runs/' in body
    assert "srun: error: node2: task 1: Killed" in body


def test_slack_alert_posted_to_the_webhook(connections, webhook_server):
    context, _ = failed_context(slurm_event())
    NeoxflowSlackNotifier(slack_conn_id=connections["slack"], kind="retry", raise_errors=True)(context)

    [request] = webhook_server.requests
    assert request["path"] == f"/services/{SLACK_TOKEN}"
    assert request["headers"]["Content-Type"].startswith("application/json")
    payload = json.loads(request["body"])
    assert payload["text"] == "[neoxflow] RETRY: pythia_pretrain.train.watch job 4711 NODE_FAIL"
    blob = json.dumps(payload)
    assert "*nodes*\\nnode2" in blob
    assert "Open the task in Airflow" in blob
    assert "```iteration 1200 loss 2.31\\nsrun: error: node2: task 1: Killed```" in blob


def test_slack_webhook_url_forms_and_errors():
    assert webhook_url("c", "https://hooks.slack.com/services/T/B/X", None, None, {}) == (
        "https://hooks.slack.com/services/T/B/X"
    )
    assert webhook_url("c", "T/B/X", None, None, {}) == "https://hooks.slack.com/services/T/B/X"
    assert (
        webhook_url("c", "/T/B/X", "hooks.example.org/svc/", None, {})
        == "https://hooks.example.org/svc/T/B/X"
    )
    assert webhook_url("c", None, "http://h:1/services", None, {"webhook_token": "T/B/X"}) == (
        "http://h:1/services/T/B/X"
    )
    assert webhook_url("c", None, None, None, {"webhook_url": "https://x/y"}) == "https://x/y"
    with pytest.raises(ValueError, match="connection 'slack_ops': no Slack webhook"):
        webhook_url("slack_ops", None, "hooks.slack.com", None, {})
    with pytest.raises(ValueError, match="connection 'c': the Slack webhook must be an http"):
        webhook_url("c", None, None, None, {"webhook_url": "file:///etc/passwd"})


def test_channel_renderings_escape_markup():
    alert = build_alert(
        "failure", dag_id="d", error="<script>alert(1)</script> & more", log_lines=["a <b> c", "```"]
    )
    assert "<script>" not in email_html(alert)
    assert "&lt;script&gt;" in email_html(alert)
    payload = json.dumps(slack_payload(alert))
    assert "<script>" not in payload and "&lt;script&gt;" in payload
    assert payload.count("```") == 2  # the log's own fence does not break the code block


# -- several channels ----------------------------------------------------------------------------------
def test_a_failing_channel_does_not_stop_the_others(connections, topic, smtp_server, webhook_server, capsys):
    webhook_server.status = 403
    notifiers = alert_notifiers(
        "failure",
        sns_topic_arn=topic["arn"],
        aws_conn_id=connections["aws"],
        slack_conn_id=connections["slack"],
        smtp_conn_id=connections["smtp"],
        smtp_to="oncall@example.org",
    )
    assert [n.channel for n in notifiers] == ["sns", "slack", "smtp"]
    context, _ = failed_context(slurm_event())
    for notifier in notifiers:  # what Airflow's callback runner does with the list
        notifier(context)

    assert len(topic["received"]()) == 1
    assert len(smtp_server.messages) == 1
    assert len(webhook_server.requests) == 1
    # the SDK logs through structlog to stdout, which pytest's capsys holds
    logged = "".join(capsys.readouterr())
    errors = [line for line in logged.splitlines() if "error" in line]
    assert any("slack alert (failure) not delivered" in e and "HTTP 403" in e for e in errors), logged
    assert SLACK_TOKEN not in logged and "s3cr3tW3bh00k" not in logged


def test_send_alert_reports_each_channel(connections, topic, smtp_server, monkeypatch):
    results = send_alert(
        "give_up",
        dag_id="pythia_pretrain",
        run_id="scheduled__x",
        detail="3 attempts",
        sns_topic_arn=topic["arn"],
        aws_conn_id=connections["aws"],
        slack_conn_id=connections["slack_down"],
        smtp_conn_id=connections["smtp"],
        smtp_to="oncall@example.org",
    )
    assert results["sns"] == "sent"
    assert results["smtp"] == "sent"
    assert results["slack"].startswith("failed: RuntimeError: Slack webhook unreachable")
    [envelope] = topic["received"]()
    assert re.search(r"^detail: +3 attempts$", envelope["Message"], re.M)


def test_sns_without_any_topic_is_skipped_not_failed(connections, smtp_server):
    results = send_alert(
        "stall",
        dag_id="d",
        aws_conn_id=connections["aws"],
        smtp_conn_id=connections["smtp"],
        smtp_to="oncall@example.org",
    )
    assert results == {"sns": "skipped: no SNS topic configured", "smtp": "sent"}


def test_sns_topic_from_the_environment(connections, topic, monkeypatch):
    monkeypatch.setenv(TOPIC_ENV, topic["arn"])
    assert send_alert("stall", dag_id="d", aws_conn_id=connections["aws"]) == {"sns": "sent"}
    assert topic["received"]()[0]["Subject"] == "[neoxflow] STALL: d"


def test_an_alert_raised_in_code_reaches_every_configured_channel(
    connections, topic, smtp_server, webhook_server, monkeypatch
):
    """A stall or give-up is sent by the operator itself, not by a DAG callback: it must still reach the
    Slack and e-mail channels the deployment configures, not SNS alone."""
    monkeypatch.setenv(TOPIC_ENV, topic["arn"])
    monkeypatch.setenv("NEOXFLOW_ALERT_SLACK_CONN", connections["slack"])
    monkeypatch.setenv("NEOXFLOW_ALERT_SMTP_CONN", connections["smtp"])
    monkeypatch.setenv("NEOXFLOW_ALERT_EMAIL_TO", "oncall@example.org")
    results = send_alert("stall", dag_id="d", detail="no progress", aws_conn_id=connections["aws"])
    assert results == {"sns": "sent", "slack": "sent", "smtp": "sent"}
    [request] = webhook_server.requests
    assert json.loads(request["body"])["text"].startswith("[neoxflow] STALL: d")
    [message] = smtp_server.messages
    assert message["to"] == ["oncall@example.org"]
    # a connection named without recipients sends no e-mail (and is no error in the middle of a stall)
    monkeypatch.delenv("NEOXFLOW_ALERT_EMAIL_TO")
    assert "smtp" not in send_alert("stall", dag_id="d", aws_conn_id=connections["aws"])


def test_factory_refuses_smtp_connection_without_recipients():
    with pytest.raises(ValueError, match="smtp_conn_id='mail' given without smtp_to"):
        alert_notifiers("failure", smtp_conn_id="mail")


def test_templated_fields_are_rendered_from_the_context(connections, smtp_server):
    context, _ = failed_context(slurm_event())
    context["params"] = {"oncall": "team@example.org"}
    NeoxflowSmtpNotifier(
        to="{{ params.oncall }}",
        smtp_conn_id=connections["smtp"],
        detail="{{ ti.task_id }} needs you",
        raise_errors=True,
    )(context)
    [message] = smtp_server.messages
    assert message["to"] == ["team@example.org"]
    assert "train.watch needs you" in html_body(parsed_mail(message))


# -- deadline ------------------------------------------------------------------------------------------
def test_run_deadline_is_a_dag_deadline_that_survives_serialization():
    from airflow.sdk import DAG, AsyncCallback, DeadlineReference
    from airflow.serialization.serialized_objects import DagSerialization

    alert = run_deadline(timedelta(hours=36), smtp_to=["a@example.org"], slack_conn_id="slack_ops")
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval == timedelta(hours=36)
    assert isinstance(alert.callback, AsyncCallback)
    assert alert.callback.path == "neoxflow.notifiers.deadline.deadline_callback"
    assert alert.callback.kwargs["smtp_to"] == ["a@example.org"]
    json.dumps(alert.callback.kwargs)  # stored in the metadata DB: must be JSON
    dag = DAG("deadline_probe", schedule=None, deadline=alert)
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert "deadline_callback" in json.dumps(DagSerialization.to_dict(dag), default=str)
    assert restored.dag_id == "deadline_probe"
    with pytest.raises(ValueError, match="interval must be positive"):
        run_deadline(timedelta(0))


async def test_deadline_callback_runs_in_the_real_callback_trigger(connections, topic, smtp_server):
    """The triggerer's CallbackTrigger imports the callback by path and awaits it with the scheduler's
    simple context; both channels get the deadline alert."""
    from airflow.triggers.callback import CallbackTrigger

    alert = run_deadline(
        timedelta(hours=2),
        sns_topic_arn=topic["arn"],
        aws_conn_id=connections["aws"],
        smtp_conn_id=connections["smtp"],
        smtp_to="oncall@example.org",
    )
    simple_context = {
        "dag_run": {
            "dag_id": "pythia_pretrain",
            "dag_run_id": "manual__1",
            "state": "running",
            "queued_at": "2026-03-01T10:00:00Z",
        },
        "deadline": {"id": "d1", "deadline_time": "2026-03-01T12:00:00Z"},
    }
    trigger = CallbackTrigger(alert.callback.path, {**alert.callback.kwargs, "context": simple_context})
    events = [event.payload async for event in trigger.run()]

    assert events[-1]["state"] == "success", events
    assert events[-1]["body"] == {"sns": "sent", "smtp": "sent"}
    [envelope] = topic["received"]()
    assert envelope["Subject"] == "[neoxflow] DEADLINE: pythia_pretrain"
    assert re.search(r"^detail: +run still running 2h after it was queued$", envelope["Message"], re.M)
    assert "/dags/pythia_pretrain/runs/manual__1\n" in envelope["Message"]
    assert parsed_mail(smtp_server.messages[0])["Subject"] == "[neoxflow] DEADLINE: pythia_pretrain"


async def test_deadline_callback_is_awaitable_directly(connections, smtp_server):
    result = await deadline_callback(
        interval_s=60,
        smtp_conn_id=connections["smtp"],
        smtp_to="x@example.org",
        aws_conn_id=connections["aws"],
        context={"dag_run": {"dag_id": "d"}},
    )
    assert result == {"sns": "skipped: no SNS topic configured", "smtp": "sent"}
