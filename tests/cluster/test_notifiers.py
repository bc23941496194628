"""Alerts from a real failed Slurm job: dag.test() on the local cluster, real task callback context.

The job fails like an application (exit 3, a log tail with a token in it). The task's
on_failure_callback (``alert_notifiers``) then runs with the context Airflow builds: the real
``SlurmJobFailed`` exception, the real RuntimeTaskInstance and its XCom. The alert must arrive on all
three channels (SNS read back through SQS on the test's own moto server, the test's SMTP receiver and
webhook server, shared with tests/unit/test_notifiers.py) and carry the job's facts, no secret.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from tests.cluster.slurm_helpers import REPO, unique_dir
from tests.unit import test_notifiers as channels

# the channel servers and connections of the unit tests, as fixtures of this module too
moto_endpoint = channels.moto_endpoint
aws_clients = channels.aws_clients
topic = channels.topic
smtp_server = channels.smtp_server
webhook_server = channels.webhook_server
connections = channels.connections

pytestmark = [pytest.mark.cluster]

FAKE_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
SCRIPT = f"""#!/bin/bash
echo "iteration 10 | lm_loss 2.5 on $SLURMD_NODENAME"
echo "export HF_TOKEN={FAKE_TOKEN}"
echo "RuntimeError: simulated application failure" >&2
exit 3
"""


def load_alerts_dag():
    import importlib.util

    path = REPO / "tests" / "dags" / "nxf_test_alerts.py"
    spec = importlib.util.spec_from_file_location("nxf_test_alerts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.alerts_dag


def test_failed_slurm_job_alerts_every_channel(
    cluster_env, airflow_db, connections, topic, smtp_server, webhook_server
):
    workdir = unique_dir(cluster_env["NEOXFLOW_FSX"])
    dagrun = load_alerts_dag().test(
        logical_date=datetime.now().astimezone(),
        run_conf={
            "script": SCRIPT,
            "remote_dir": workdir,
            "sns_topic_arn": topic["arn"],
            "aws_conn_id": connections["aws"],
            "slack_conn_id": connections["slack"],
            "smtp_conn_id": connections["smtp"],
            "smtp_to": "oncall@example.org",
        },
    )
    assert str(dagrun.state) == "failed"
    ti = dagrun.get_task_instances()[0]

    [envelope] = topic["received"]()
    message = envelope["Message"]
    facts = dict(re.findall(r"^([a-z ]+): +(.*)$", message, re.M))
    assert envelope["Subject"].startswith("[neoxflow] FAILURE: nxf_test_alerts.train job ")
    assert facts["dag"] == "nxf_test_alerts"
    assert facts["run"] == dagrun.run_id
    assert facts["task"] == "train"
    assert facts["state"] == "FAILED"
    assert facts["outcome"] == "app_failure"
    assert facts["exit code"] == "3:0"
    assert facts["nodes"] in ("node1", "node2")
    assert re.fullmatch(r"\d+", facts["slurm job"])
    assert facts["link"].endswith(
        f"/dags/nxf_test_alerts/runs/{ti.run_id.replace(':', '%3A').replace('+', '%2B')}"
        f"/tasks/train?try_number={ti.try_number}"
    )
    assert f"iteration 10 | lm_loss 2.5 on {facts['nodes']}" in message
    assert "RuntimeError: simulated application failure" in message
    assert "export HF_TOKEN=***" in message

    [mail] = smtp_server.messages
    assert channels.parsed_mail(mail)["Subject"] == envelope["Subject"]
    [post] = webhook_server.requests
    assert json.loads(post["body"])["text"] == envelope["Subject"]
    for channel_text in (json.dumps(envelope), mail["data"].decode(), post["body"].decode()):
        assert FAKE_TOKEN not in channel_text
        assert channels.SLACK_TOKEN not in channel_text
