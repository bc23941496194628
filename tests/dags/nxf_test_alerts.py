"""DAG for the alerting test on the local cluster (tests/cluster/test_notifiers.py).

A Slurm job that fails like an application does; the task's on_failure_callback is the product's
``alert_notifiers`` list, with every channel setting templated from ``params`` so the test points it at
its own servers.
"""

from __future__ import annotations

from airflow.sdk import DAG

from neoxflow.notifiers.factory import alert_notifiers
from neoxflow.operators.slurm import SlurmOperator

with DAG(
    "nxf_test_alerts",
    schedule=None,
    catchup=False,
    params={
        "script": "#!/bin/bash\nexit 3\n",
        "remote_dir": "/tmp",
        "sns_topic_arn": "",
        "aws_conn_id": "aws_default",
        "slack_conn_id": "slack_default",
        "smtp_conn_id": "smtp_default",
        "smtp_to": "oncall@example.org",
    },
    tags=["neoxflow-test"],
) as alerts_dag:
    SlurmOperator(
        task_id="train",
        script="{{ params.script }}",
        remote_dir="{{ params.remote_dir }}",
        poll_interval=1.0,
        retries=0,
        on_failure_callback=alert_notifiers(
            "failure",
            sns_topic_arn="{{ params.sns_topic_arn }}",
            aws_conn_id="{{ params.aws_conn_id }}",
            slack_conn_id="{{ params.slack_conn_id }}",
            smtp_conn_id="{{ params.smtp_conn_id }}",
            smtp_to="{{ params.smtp_to }}",
        ),
    )
