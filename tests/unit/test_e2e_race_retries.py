"""The e2e suite tolerates a retry only where Airflow's scheduler logged its own defer race for that task."""

from __future__ import annotations

from tests.e2e.conftest import airflow_race_retries

RUN = "manual__2026-11-28T11:39:19.524162+00:00"
MISMATCH = (
    "2026-11-28T11:40:05.200739Z [error    ] Executor LocalExecutor(parallelism=4) reported that the task "
    f"instance <TaskInstance: pythia_pretrain.train.train_slice {RUN} [queued] ti_id=01a2> finished with "
    "state success, but the task instance's state attribute is queued. Learn more: https://airflow..."
)
RETRY = (
    "2026-11-28T11:40:05.215790Z [info     ] Marking task as UP_FOR_RETRY. dag_id=pythia_pretrain, "
    f"task_id=train.train_slice, run_id={RUN}, logical_date=, start_date=20261128T113940"
)


def test_a_logged_race_counts_once_per_retry(tmp_path):
    log = tmp_path / "scheduler.log"
    log.write_text("\n".join([MISMATCH, MISMATCH, RETRY, "other line"]) + "\n")  # Airflow logs it twice
    assert airflow_race_retries(RUN, "train.train_slice", log) == 1


def test_a_retry_without_the_race_or_of_another_task_or_run_does_not_count(tmp_path):
    log = tmp_path / "scheduler.log"
    log.write_text(RETRY + "\n")  # an ordinary retry: the test must still see it as one
    assert airflow_race_retries(RUN, "train.train_slice", log) == 0
    log.write_text("\n".join([MISMATCH, RETRY]) + "\n")
    assert airflow_race_retries(RUN, "report", log) == 0
    assert airflow_race_retries("manual__other", "train.train_slice", log) == 0
    assert airflow_race_retries(RUN, "train.train_slice", tmp_path / "missing.log") == 0
