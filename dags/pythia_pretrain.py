"""pythia_pretrain: C4 -> S3 -> FSx -> NeoX tokens -> GPT-NeoX training on Slurm -> S3, from a form.

Triggered by a person with the form (typed Params, validated before anything touches the cluster), or by
``pythia_pretrain_continue`` for a run of record whose DAG run ended early. Each run is idempotent: it
plans from the run of record, data stages skip when the dataset is built, training is a no-op while a
job of the run is active, and nothing happens once train_iters is reached.

Cheap to parse: no network and no file reads at import; all work happens in tasks.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, TaskGroup, task

from neoxflow.notifiers.deadline import run_deadline
from neoxflow.notifiers.factory import alert_notifiers, configured_channels
from neoxflow.operators.fsx import FsxImportOperator
from neoxflow.operators.pipeline import PlannedSlurmOperator, PretrainTrainOperator
from neoxflow.pipeline import attention_tasks, record_tasks, report_task, resume_task, tasks
from neoxflow.pipeline.request import form_params

DOC = __doc__
POLL = float(os.environ.get("NEOXFLOW_POLL_INTERVAL", "10"))
RETRY_DELAY = timedelta(seconds=float(os.environ.get("NEOXFLOW_RETRY_DELAY_S", "60")))
CHANNELS = configured_channels()
RUN_DEADLINE_H = float(os.environ.get("NEOXFLOW_RUN_DEADLINE_HOURS", "0"))
# No new log line and no new checkpoint for this long while the job RUNS: a stall (alert, cancel, resume).
STALL_WINDOW_S = float(os.environ.get("NEOXFLOW_STALL_WINDOW_S", "3600"))

# DAG runs at once: each run of record is trained by at most one of them (its checkpoint folder's lease)
MAX_ACTIVE_RUNS = int(os.environ.get("NEOXFLOW_MAX_ACTIVE_RUNS", "4"))


def build(dag_id: str, description: str) -> DAG:
    with DAG(
        dag_id,
        schedule=None,
        catchup=False,
        max_active_runs=MAX_ACTIVE_RUNS,
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
            # a task returning a big dict logs a one-line summary instead of "Returned value was: {...}"
            @task(retries=0, show_return_value_in_logs=False)
            def plan(params=None, run_id=None):
                return tasks.make_plan(params, run_id or "")

            @task
            def lock(plan, dag_run=None):
                return record_tasks.acquire_lock(
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

            @task(trigger_rule="none_failed", show_return_value_in_logs=False)
            def data_summary(plan):
                return tasks.read_data_summary(plan)

            check = needs_data(the_plan)
            shipped >> check >> fetch >> fsx_import >> stage >> tokenize >> merge
            summary = data_summary(the_plan)
            merge >> summary

        with TaskGroup("train"):

            @task(trigger_rule="none_failed", show_return_value_in_logs=False)
            def resume_point(plan):
                return resume_task.prepare_resume(plan)

            train = PretrainTrainOperator(
                task_id="train_slice",
                stall_window=STALL_WINDOW_S,
                lock_task_id="prepare.lock",  # the watch renews this run's folder lease while its job lives
                poll_interval=POLL,
                # One task carries a run for weeks, deferring at each checkpoint, and Airflow 3.3.2 can lose a
                # resumed try to its own race (apache/airflow#67287; the next try re-attaches to the job).
                # Infrastructure give-up is the operator's max_resumes, not this: retries are plentiful and
                # not backed off, so a late retry does not leave the GPUs idle at a slice end.
                retries=25,
                retry_delay=RETRY_DELAY,
                retry_exponential_backoff=False,
            )
            resume = resume_point(the_plan)
            summary >> resume >> train

            @task(trigger_rule="all_done")
            def mark_attention(plan, ti=None):
                return attention_tasks.mark_attention(plan, ti)

            train >> mark_attention(the_plan)

        with TaskGroup("export"):

            @task(trigger_rule="none_failed", show_return_value_in_logs=False)
            def plan_export(plan):
                return report_task.plan_export(plan)

            export_plan = plan_export(the_plan)
            export = PlannedSlurmOperator(
                task_id="to_s3", plan_task_id="export.plan_export", plan_path=(), poll_interval=POLL
            )
            train >> export_plan >> export

        @task(trigger_rule="all_done", show_return_value_in_logs=False)
        def report(plan, ti=None):
            return report_task.report(plan, ti)

        @task(trigger_rule="all_done")
        def release_lock(plan, owner):
            record_tasks.release_lock(plan, owner)

        export >> report(the_plan) >> release_lock(the_plan, owner)

        # report and release_lock run whatever happened (all_done); this leaf makes the run's own state
        # tell the truth: failed when training or export failed, success when they succeeded or had
        # nothing to do (skipped).
        EmptyOperator(task_id="done", trigger_rule="none_failed").set_upstream([train, export])
    return dag


pythia_pretrain = build("pythia_pretrain", "Pretrain a Pythia model on Slurm, from the trigger form")
