"""pythia_pretrain: C4 -> S3 -> FSx -> NeoX tokens -> GPT-NeoX training on Slurm -> S3, from a form.

Two DAGs share one shape:
- ``pythia_pretrain``: triggered by a person with the form (typed Params, validated before anything
  touches the cluster).
- ``pythia_pretrain_continue``: scheduled; carries the default run on through Slurm time limits and
  failures. Each run is idempotent: data stages skip when the dataset validates, training is a no-op
  while a job of the run is active, and nothing happens once train_iters is reached.

Cheap to parse: no network and no file reads at import; all work happens in tasks.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, TaskGroup, task

from neoxflow.notifiers.deadline import run_deadline
from neoxflow.notifiers.factory import alert_notifiers
from neoxflow.operators.fsx import FsxImportOperator
from neoxflow.operators.pipeline import PlannedSlurmOperator, PretrainTrainOperator
from neoxflow.pipeline import tasks
from neoxflow.pipeline.request import form_params

DOC = __doc__
POLL = float(os.environ.get("NEOXFLOW_POLL_INTERVAL", "10"))
RETRY_DELAY = timedelta(seconds=float(os.environ.get("NEOXFLOW_RETRY_DELAY_S", "60")))
# Alert channels: SNS always (topic from NEOXFLOW_ALERT_SNS_TOPIC_ARN or the Variable
# neoxflow_alert_sns_topic_arn); Slack and e-mail when their connections are named here.
CHANNELS = {
    "slack_conn_id": os.environ.get("NEOXFLOW_ALERT_SLACK_CONN") or None,
    "smtp_conn_id": os.environ.get("NEOXFLOW_ALERT_SMTP_CONN") or None,
    "smtp_to": os.environ.get("NEOXFLOW_ALERT_EMAIL_TO") or None,
}
RUN_DEADLINE_H = float(os.environ.get("NEOXFLOW_RUN_DEADLINE_HOURS", "0"))
# No new log line and no new checkpoint for this long while the job RUNS: a stall (alert, cancel, resume).
STALL_WINDOW_S = float(os.environ.get("NEOXFLOW_STALL_WINDOW_S", "3600"))


def build(dag_id: str, schedule: str | None, description: str) -> DAG:
    with DAG(
        dag_id,
        schedule=schedule,
        # the scheduled continuation starts paused: a person turns it on for the run it should carry
        is_paused_upon_creation=schedule is not None,
        catchup=False,
        max_active_runs=1,
        params=form_params(),
        description=description,
        doc_md=DOC,
        tags=["neoxflow", "pretraining", "slurm"],
        default_args={
            "retries": 1,
            "retry_delay": RETRY_DELAY,
            "on_failure_callback": alert_notifiers("failure", **CHANNELS),
            "on_retry_callback": alert_notifiers("retry", **CHANNELS),
        },
        deadline=run_deadline(timedelta(hours=RUN_DEADLINE_H), **CHANNELS) if RUN_DEADLINE_H > 0 else None,
    ) as dag:
        with TaskGroup("prepare"):

            @task(retries=0)
            def plan(params=None):
                return tasks.make_plan(params)

            @task
            def lock(plan, dag_run=None):
                return tasks.acquire_lock(
                    plan,
                    dag_run.dag_id,
                    dag_run.run_id,
                    scheduled=str(dag_run.run_type).endswith("scheduled"),
                )

            @task
            def ship_code(plan):
                return tasks.ship_code(plan)

            the_plan = plan()
            owner = lock(the_plan)
            shipped = ship_code(the_plan)
            owner >> shipped

        with TaskGroup("data"):

            @task.short_circuit(ignore_downstream_trigger_rules=False)
            def needs_data(plan):
                return tasks.dataset_needs_work(plan)

            fetch = PlannedSlurmOperator(task_id="fetch", plan_path=("data", "fetch"), poll_interval=POLL)
            # with an FSx data repository association (profile fsx.data_repository) the file system imports
            # the new S3 objects itself first; without one this does nothing and the stage job copies
            fsx_import = FsxImportOperator(task_id="fsx_import", poll_interval=POLL)
            stage = PlannedSlurmOperator(task_id="stage", plan_path=("data", "stage"), poll_interval=POLL)
            tokenize = PlannedSlurmOperator(
                task_id="tokenize", plan_path=("data", "tokenize"), poll_interval=POLL
            )
            merge = PlannedSlurmOperator(
                task_id="merge_validate", plan_path=("data", "merge"), poll_interval=POLL
            )

            @task(trigger_rule="none_failed")
            def data_summary(plan):
                return tasks.read_data_summary(plan)

            check = needs_data(the_plan)
            shipped >> check >> fetch >> fsx_import >> stage >> tokenize >> merge
            summary = data_summary(the_plan)
            merge >> summary

        with TaskGroup("train"):

            @task(trigger_rule="none_failed")
            def resume_point(plan):
                return tasks.prepare_resume(plan)

            train = PretrainTrainOperator(
                task_id="train_slice",
                stall_window=STALL_WINDOW_S,
                lock_task_id="prepare.lock",  # the watch renews this run's folder lease while its job lives
                poll_interval=POLL,
                retries=3,
                retry_delay=RETRY_DELAY,
                retry_exponential_backoff=True,
            )
            resume = resume_point(the_plan)
            summary >> resume >> train

        with TaskGroup("export"):

            @task(trigger_rule="none_failed")
            def plan_export(plan):
                return tasks.plan_export(plan)

            export_plan = plan_export(the_plan)
            export = PlannedSlurmOperator(
                task_id="to_s3", plan_task_id="export.plan_export", plan_path=(), poll_interval=POLL
            )
            train >> export_plan >> export

        @task(trigger_rule="all_done")
        def report(plan, ti=None):
            return tasks.report(plan, ti)

        @task(trigger_rule="all_done")
        def release_lock(plan, owner):
            tasks.release_lock(plan, owner)

        export >> report(the_plan) >> release_lock(the_plan, owner)

        # report and release_lock run whatever happened (all_done); this leaf makes the run's own state
        # tell the truth: failed when training or export failed, success when they succeeded or had
        # nothing to do (skipped).
        EmptyOperator(task_id="done", trigger_rule="none_failed").set_upstream([train, export])
    return dag


pythia_pretrain = build("pythia_pretrain", None, "Pretrain a Pythia model on Slurm, from the trigger form")
pythia_pretrain_continue = build(
    "pythia_pretrain_continue",
    os.environ.get("NEOXFLOW_CONTINUE_SCHEDULE", "@hourly"),
    "Continue the default run until train_iters: a no-op while its job runs or once it is done",
)
