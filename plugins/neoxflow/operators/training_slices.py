"""The training operator's slice history: one entry per slice (job, planned and reached stop, measured
times), kept in the task state store so it outlives deferrals and tries.

A part of :class:`neoxflow.operators.training.NeoXTrainOperator` (a mixin: it uses the operator's hook
and log path), kept apart because it is one job: what each slice was planned to do and what it did,
which plans the next slice (its measured pace, save and start-up times) and which the UI and the report
show.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from airflow.sdk import Context

from neoxflow.triggers.training import WatchState

#: task_state_store key and XCom key: one entry per slice of this task (job, planned and reached stop,
#: measured times), for planning the next slice, the UI and the report
SLICES_KEY = "slices"
#: the job log is read once at a slice's end (pace, save times, NeoX's exit line); bigger logs are cut
MAX_SLICE_LOG_BYTES = 64 << 20


class SliceHistoryMixin:
    """The slice history in the task state store (and XCom), and the measurement of an ended slice."""

    def _slices(self, context: Context) -> list[dict[str, Any]]:
        """This task's slice history (task state store: it outlives deferrals and tries)."""
        store = context.get("task_state_store")
        return list((store.get(SLICES_KEY) if store is not None else None) or [])

    def _save_slices(self, context: Context, slices: list[dict[str, Any]]) -> None:
        store = context.get("task_state_store")
        if store is not None:
            store.set(SLICES_KEY, slices)
        context["ti"].xcom_push(key=SLICES_KEY, value=slices)

    def _submitted(self, context: Context, record: Mapping[str, Any]) -> None:
        """A new slice's job: open its history entry with what was planned for it."""
        slices = self._slices(context)
        plan = record.get("slice") or {}
        slices.append(
            {
                "index": len(slices) + 1,
                "job_id": str(record["job_id"]),
                "submitted_at": time.time(),
                "ended_at": None,
                "resume_iteration": plan.get("resume_iteration"),
                "plan": plan.get("kind"),
                "planned_stop": plan.get("stop_iteration"),
                "reached": None,
                "end": None,
                "times": None,
            }
        )
        self._save_slices(context, slices)

    def _end_slice(
        self,
        context: Context,
        record: Mapping[str, Any],
        watch: WatchState,
        verdict: Any | None,
        facts: Mapping[str, Any],
        how: str,
    ) -> None:
        """Close the ended job's history entry (one is opened here for a job this task adopted)."""
        slices = self._slices(context)
        job_id = str(record.get("job_id"))
        entry = next((e for e in slices if e.get("job_id") == job_id), None)
        if entry is None:
            plan = record.get("slice") or {}
            entry = {
                "index": len(slices) + 1,
                "job_id": job_id,
                "submitted_at": None,
                "resume_iteration": plan.get("resume_iteration"),
                "plan": plan.get("kind"),
                "planned_stop": plan.get("stop_iteration"),
            }
            slices.append(entry)
        entry.update(
            ended_at=time.time(),
            reached=facts.get("exited_at") if facts.get("exited_at") is not None else watch.last_iteration,
            end=how,
            verdict=verdict.status if verdict is not None else None,
            newest_complete=verdict.last_complete_iteration if verdict is not None else None,
            times=facts.get("times"),
        )
        self._save_slices(context, slices)

    def _slice_log_facts(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """What the ended slice's log says about where it stopped and how fast it went: NeoX's exit line
        (``exited_at``) and the measured pace, save and start-up times (``times``) that plan the next
        slice. The log is read once, here, over SFTP; the trigger only carries a bounded summary. {} when
        the log cannot be read (the slice still ends cleanly; the next one plans with older times)."""
        from neoxflow.neox.slices import exited_at, job_started, measure_slice

        path = self._log_path(record)
        if not path:
            return {}
        try:
            data = self.hook.read_file(path)
        except Exception as err:  # a measurement only: the slice's verdict does not depend on it
            self.log.warning("Could not read %s to measure the slice: %s", path, err)
            return {}
        # the batch script's stamped first line dates the start (no accounting needed); a long log is cut
        started = job_started(data[:4096].decode("utf-8", "replace"))
        text = data[-MAX_SLICE_LOG_BYTES:].decode("utf-8", "replace")
        times = measure_slice(text, job_start=started, source=f"job {record.get('job_id')}")
        return {
            "exited_at": exited_at(text),
            "times": dataclasses.asdict(times) if times is not None else None,
        }
