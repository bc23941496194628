"""FsxImportOperator: the DRA staging step. Starts an ``IMPORT_METADATA_FROM_REPOSITORY`` data repository
task on the run's FSx file system and waits for it in the triggerer (:class:`FsxImportTaskTrigger`).

A retry or a scheduler restart must not start a second import while one runs (FSx refuses a second
task on the file system anyway, and a duplicate would only waste time): the task id goes to
``task_state_store`` as soon as it exists, the first try's client token is deterministic per
(dag, run, task), and a later try follows the recorded task unless it ended in failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException

from neoxflow.data.fsx import CANCELLED, FAILED, SUCCESS, client_token, import_task_request
from neoxflow.hooks.fsx import FsxDataRepository
from neoxflow.operators.pipeline import PLAN_TASK, pull_plan
from neoxflow.triggers.fsx import FsxImportTaskTrigger

STATE_KEY = "fsx_import_task"


class FsxImportOperator(BaseOperator):
    """Import new S3 objects into FSx through the plan's data repository association, or do nothing
    (copy mode: the stage job copies) when the profile declares none.

    :param plan_task_id: the task whose XCom is the run plan (``plan["data"]["import"]``).
    :param poll_interval: seconds between describe calls in the triggerer; the plan's value wins.
    """

    template_fields: Sequence[str] = ("plan_task_id",)
    ui_color = "#f0e6ff"

    def __init__(self, *, plan_task_id: str = PLAN_TASK, poll_interval: float = 30.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.plan_task_id = plan_task_id
        self.poll_interval = poll_interval

    def execute(self, context: Context) -> dict[str, Any] | None:
        plan = pull_plan(context, self.plan_task_id)
        spec = (plan.get("data") or {}).get("import")
        if not spec:
            self.log.info(
                "No FSx data repository association in profile %s: the stage job copies", plan["profile"]
            )
            return None
        ti = context["ti"]
        repo = FsxDataRepository(aws_conn_id=spec["aws_conn_id"], region_name=spec.get("region_name"))
        store = context.get("task_state_store")
        task_id = self._task_to_follow(repo, spec, store, ti)
        self.log.info(
            "Following FSx import task %s on %s: %s <- %s",
            task_id, spec["file_system_id"], ", ".join(spec["paths"]), spec["repository_path"],
        )  # fmt: skip
        self.defer(
            trigger=FsxImportTaskTrigger(
                task_id=task_id,
                aws_conn_id=spec["aws_conn_id"],
                region_name=spec.get("region_name"),
                poll_interval=float(spec.get("poll_interval") or self.poll_interval),
            ),
            method_name="execute_complete",
        )

    def _task_to_follow(self, repo: FsxDataRepository, spec: dict[str, Any], store: Any, ti: Any) -> str:
        """The recorded task of an earlier try unless it failed; else the task of this try's token."""
        recorded = store.get(STATE_KEY) if store is not None else None
        if recorded:
            state = repo.describe(recorded)
            if state.status not in (FAILED, CANCELLED):
                self.log.info(
                    "An earlier try started import task %s (%s): following it", recorded, state.message
                )
                return recorded
            self.log.warning("The earlier import task %s %s: starting a new one", recorded, state.message)
        parts = [ti.dag_id, ti.run_id, ti.task_id]
        if recorded:  # a fresh token: the first one would hand back the failed task
            parts.append(f"try-{ti.try_number}")
        request = import_task_request(
            spec["file_system_id"], spec["paths"], token=client_token(*parts), mount_point=spec["mount_point"]
        )
        task_id = repo.start_import(request)
        if store is not None:
            store.set(STATE_KEY, task_id)
        return task_id

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("status") == SUCCESS:
            self.log.info("%s", event.get("message"))
            return event
        raise AirflowException(f"FSx import did not succeed: {event.get('message')}")
