"""The Airflow connections the pipeline's Python tasks use, and the one way each task gets its hook.

One accessor per connection, looked up at call time (``connections.slurm_hook()``), so that every task
module talks to the cluster the same way and a test replaces the cluster for all of them in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neoxflow.hooks.slurm import SlurmSSHHook

SSH_CONN_ID = "neoxflow_cluster"
AWS_CONN_ID = "aws_default"


def slurm_hook() -> SlurmSSHHook:
    """The login node of the run's cluster (SSH: commands, uploads, squeue/sacct)."""
    from neoxflow.hooks.slurm import SlurmSSHHook  # not at import: the UI plugin reads AWS_CONN_ID

    return SlurmSSHHook(SSH_CONN_ID)


def s3_hook():
    """The run's S3 (amazon provider), imported when a task needs it: DAG parsing never does."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=AWS_CONN_ID)
