"""pythia_pretrain_continue: carry every unfinished run of record on to its train_iters.

For runs whose DAG run ended early (Airflow was down, a person stopped it, retries ran out). Every tick it
surveys the profile's runs of record and triggers ``pythia_pretrain`` once for each run that is
unfinished, idle (no training job, no live lease on its checkpoint folder) and not waiting for a person
after an application failure (alerted once). The triggered run plans from the run's record, so it
trains the same model. Finished runs are left alone. Rules: ``neoxflow/pipeline/continuation.py``.

Starts paused: a person turns it on. Cheap to parse: no network and no file reads at import.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param, task

from neoxflow.notifiers.factory import alert_notifiers, configured_channels
from neoxflow.pipeline import attention_tasks
from neoxflow.pipeline.request import PROFILES

CHANNELS = configured_channels()

with DAG(
    "pythia_pretrain_continue",
    schedule=os.environ.get("NEOXFLOW_CONTINUE_SCHEDULE", "@hourly"),
    is_paused_upon_creation=True,
    catchup=False,
    max_active_runs=1,
    params={
        "profile": Param(
            "local",
            type="string",
            enum=PROFILES,
            title="Profile",
            description="The profile whose runs of record are surveyed and continued.",
        )
    },
    description="Continue every unfinished, idle run of record until its train_iters",
    doc_md=__doc__,
    tags=["neoxflow", "pretraining", "slurm"],
    default_args={
        "retries": 1,
        "retry_delay": timedelta(seconds=float(os.environ.get("NEOXFLOW_RETRY_DELAY_S", "60"))),
        "on_failure_callback": alert_notifiers("failure", **CHANNELS),
    },
):

    @task
    def survey(params=None):
        return attention_tasks.survey_runs(params["profile"], CHANNELS)

    TriggerDagRunOperator.partial(
        task_id="continue_run",
        trigger_dag_id="pythia_pretrain",
        wait_for_completion=False,
        skip_when_already_exists=True,
    ).expand_kwargs(survey())
