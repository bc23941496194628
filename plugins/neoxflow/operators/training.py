"""NeoXTrainOperator: one training slice on Slurm, watched for progress, checkpoints and stalls.

It is a :class:`SlurmOperator` (same submit, re-attach and XCom ``slurm_job`` record, which the DAG's
resume policy reads) that defers to :class:`NeoXTrainingTrigger` instead of the plain job trigger:

- on each ``checkpoint`` event it logs progress, appends the new complete checkpoint(s) to the XCom
  list ``checkpoints`` and re-defers with the carried log offset and watch state;
- at the end it maps the outcome with :func:`training_verdict` (the exit code alone cannot tell: NeoX
  exits 1 after the final checkpoint under the pipeline engine), emits one Asset event per new
  complete checkpoint through ``outlets=[AssetAlias(asset_alias)]``, and pushes a summary.

Outcomes:

- finished (train_iters reached AND a complete checkpoint there) -> success, ``more_to_do`` False;
- a clean slice end short of train_iters (a planned ``exit_interval`` stop after a complete checkpoint,
  a stop before the time limit with ``NEOXFLOW slice_end``, or another exit 0) -> with ``carry_on`` the
  next slice is submitted at once, through the same submit path (re-attach rules, ownership claim), and
  the task defers again: the DAG run stays on training until train_iters or a failure. The next submit
  happens only on the ended job's final event, so two jobs of the run never exist at once. Without
  ``carry_on``: success of the slice, ``more_to_do`` True (the DAG run ends; the continuation DAG goes on);
- stalled -> the job is cancelled and the task fails with the stall reason (:class:`TrainingStalled`);
- the run's checkpoint-folder lease lost (``lock_lost``: the watch's renewal found another holder) ->
  an alert (kind ``lock_lost``) and the watch goes on; the job is NOT cancelled (a human decides which
  run owns the folder);
- any other ending -> :class:`SlurmJobFailed` as the base class raises it, with the verdict's reason.

Two jobs of the operator live in their own modules, as mixins of this class: the checkpoint bookkeeping
and Asset events (``training_checkpoints``) and the slice history (``training_slices``).
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import AssetAlias, Context

from neoxflow.errors import SlurmJobFailed, failure_message
from neoxflow.neox.checkpoint_assets import DEFAULT_ALIAS
from neoxflow.neox.checkpoint_listing import expectation_from_dict
from neoxflow.neox.checkpoints import Checkpoint
from neoxflow.neox.progress import run_note_markdown
from neoxflow.neox.report import build_summary
from neoxflow.neox.verdict import training_verdict
from neoxflow.notifiers.run_note import set_run_note
from neoxflow.operators.slurm import STATE_KEY, SlurmOperator
from neoxflow.operators.training_checkpoints import CheckpointAssetsMixin, merge_checkpoints
from neoxflow.operators.training_slices import SliceHistoryMixin
from neoxflow.pipeline.lock import DEFAULT_LEASE_S
from neoxflow.slurm.logstream import copy_segment
from neoxflow.slurm.states import Outcome
from neoxflow.triggers.event_state import restore_event
from neoxflow.triggers.training import WATCH_SETTINGS, NeoXTrainingTrigger, WatchState

__all__ = ["NeoXTrainOperator", "TrainingStalled", "exit_code_of"]

#: events after which the job still runs and the watch re-defers
WATCH_GOES_ON = ("checkpoint", "lock_lost", "controller_silent")


class TrainingStalled(SlurmJobFailed):
    """No new log line or checkpoint within the stall window while the job was RUNNING; it was cancelled."""


def exit_code_of(status: Mapping[str, Any] | None) -> int | None:
    """The batch step's exit code from a status dict (``"1:0"`` -> 1); None when Slurm did not say."""
    for task in (status or {}).get("tasks") or []:
        code = task.get("exit_code")
        if code:
            try:
                return int(str(code).split(":", 1)[0])
            except ValueError:
                return None
    return None


class NeoXTrainOperator(CheckpointAssetsMixin, SliceHistoryMixin, SlurmOperator):
    """Train one slice of a NeoX run on Slurm and watch it from the triggerer.

    :param save_dir: the run's NeoX ``save`` folder on the cluster (templated).
    :param train_iters: the run's target iteration count.
    :param listing_script: remote path of ckpt_listing.py (templated; include/cluster on the cluster).
    :param listing_python: interpreter on the login node for the listing (templated).
    :param expectation: `Expectation` fields of a complete checkpoint (None = the stand-in's layout).
    :param neox_log_path: the NeoX log when it is not the job's Slurm output (templated; ``{job_id}`` is
        replaced by the job id). Default: the Slurm output file the operator sets.
    :param run_name: names the checkpoint Assets (default: the job name).
    :param asset_alias: the AssetAlias the checkpoint events are attached to (also the task's outlet).
    :param stall_window: seconds without a new log line or checkpoint while RUNNING before failing.
    :param list_every: list the save folder every N polls (and on each commit line).
    :param seq_length: tokens per sample, for tokens/s.
    :param lock_owner: the owner token of the run's checkpoint-folder lease (templated); the watch renews
        the lease while the job lives. Or ``lock_task_id``: the task whose return value is that token
        (the DAG's lock task). Neither: no renewal.
    :param lock_dir: the lease's folder (templated); default ``<save_dir>.lock``, the plan's rule.
    :param lock_lease_s: the lease each renewal grants; the same as the acquisition's.
    :param s3_checkpoints: ``s3://bucket/prefix/checkpoints/<run>`` where the export copies the checkpoints
        (named in their Asset events as the pending S3 copy); None: not exported.
    :param carry_on: when a slice ends cleanly short of train_iters, submit the next slice at once and
        keep watching (one DAG run trains to the end) instead of returning ``more_to_do``.
    """

    template_fields: Sequence[str] = (
        *SlurmOperator.template_fields,
        "save_dir",
        "listing_script",
        "listing_python",
        "neox_log_path",
        "run_name",
        "lock_owner",
        "lock_dir",
    )
    ui_color = "#f8e6d6"

    def __init__(
        self,
        *,
        save_dir: str,
        train_iters: int,
        listing_script: str,
        listing_python: str = "python3",
        expectation: Mapping[str, Any] | None = None,
        neox_log_path: str | None = None,
        run_name: str | None = None,
        asset_alias: str = DEFAULT_ALIAS,
        stall_window: float | None = None,
        list_every: int = 6,
        seq_length: int | None = None,
        lock_owner: str | None = None,
        lock_task_id: str | None = None,
        lock_dir: str | None = None,
        lock_lease_s: int = DEFAULT_LEASE_S,
        carry_on: bool = False,
        s3_checkpoints: str | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("outlets", [AssetAlias(asset_alias)])
        super().__init__(**kwargs)
        self.save_dir = save_dir
        self.train_iters = train_iters
        self.listing_script = listing_script
        self.listing_python = listing_python
        self.expectation = dict(expectation) if expectation is not None else None
        self.neox_log_path = neox_log_path
        self.run_name = run_name
        self.asset_alias = asset_alias
        self.stall_window = stall_window
        self.list_every = list_every
        self.seq_length = seq_length
        self.lock_owner = lock_owner
        self.lock_task_id = lock_task_id
        self.lock_dir = lock_dir
        self.lock_lease_s = lock_lease_s
        self.carry_on = carry_on
        self.s3_checkpoints = s3_checkpoints
        self._lock: dict[str, Any] = {}
        #: the run's checkpoints from earlier slices of this task, handed to the next slice's watch
        self._carried_checkpoints: list[dict[str, Any]] = []

    # -- watching --------------------------------------------------------------------------------------
    def _log_path(self, record: Mapping[str, Any]) -> str | None:
        if self.neox_log_path:
            return self.neox_log_path.replace("{job_id}", str(record["job_id"]))
        return record.get("log_path")

    def _read(self, path: str) -> bytes:
        return self.hook.read_file(path)

    def _keep_streamed(self, record: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        """Before deferring again: the output the ended trigger streamed, into this log (slurm/logstream)."""
        if self.deferrable and event.get("log_start") is not None:
            start, end = int(event["log_start"]), int(event.get("log_offset") or 0)
            copy_segment(
                self.hook.run, self._log_path(record) or "", start, end, str(record.get("job_id")), self.log
            )

    def _resolve_lock(self, context: Context) -> None:
        """Which lease the watch renews (again after each deferral: self does not survive it)."""
        owner = self.lock_owner
        if not owner and self.lock_task_id:
            owner = context["ti"].xcom_pull(task_ids=self.lock_task_id)
            if not owner:
                self.log.warning("No lock owner from %s: the lease is not renewed", self.lock_task_id)
        if not owner:
            self._lock = {}
            return
        self._lock = {
            "lock_dir": self.lock_dir or f"{self.save_dir}.lock",
            "lock_owner": str(owner),
            "lock_lease_s": int(self.lock_lease_s),
        }

    def _lock_lost(self, context: Context, event: Mapping[str, Any]) -> None:
        """Another run holds our folder's lease: say so loudly, keep the job (no scancel)."""
        message = event.get("message") or f"lock lost to {event.get('holder')}"
        self.log.error("Checkpoint folder lock lost: %s", message)
        lost = {"holder": event.get("holder"), "until": event.get("until"), "message": message}
        context["ti"].xcom_push(key="lock_lost", value=lost)
        try:
            from neoxflow.notifiers.factory import send_alert

            send_alert("lock_lost", context, detail=message, job_id=event.get("job_id"))
        except Exception as err:  # the alert is best effort; the watch must go on
            self.log.warning("Could not send the lock_lost alert: %s", err)

    def _training_trigger(
        self,
        record: Mapping[str, Any],
        offset: int = 0,
        watch: Mapping[str, Any] | None = None,
        checkpoints: list[dict[str, Any]] | None = None,
    ) -> NeoXTrainingTrigger:
        return NeoXTrainingTrigger(
            ssh_conn_id=self.ssh_conn_id,
            job_id=record["job_id"],
            start_day=record["start_day"],
            log_path=self._log_path(record),
            log_offset=offset,
            **{name: getattr(self, name) for name in WATCH_SETTINGS},
            watch=watch,
            carry={"record": dict(record), "checkpoints": list(checkpoints or [])},
            **self._lock,
            poll_interval=self.poll_interval,
            unknown_timeout=self.unknown_timeout,
            owner_token=record.get("owner"),
            owner_path=record.get("owner_path"),
            silent_alerted=bool(record.get("silent_alerted")),
        )

    def _watch(self, context: Context, record: dict[str, Any]) -> Any:
        expectation_from_dict(self.expectation)  # fail before the watch on a bad expectation
        if "baseline_checkpoint" not in record:
            record["baseline_checkpoint"] = self._asset_floor(context)
            self.log.info("Checkpoints after %s are new to this task", record["baseline_checkpoint"])
        carried = list(self._carried_checkpoints)
        floors = [record["baseline_checkpoint"], *(int(c["iteration"]) for c in carried)]
        known = max((f for f in floors if f is not None), default=None)
        watch = WatchState(last_checkpoint=known).to_dict()  # earlier slices' checkpoints are not new
        self._resolve_lock(context)
        trigger = self._training_trigger(record, watch=watch, checkpoints=carried)
        if self.deferrable:
            self.defer(
                trigger=trigger,
                method_name="execute_complete",
                kwargs={"record": record, "checkpoints": carried},
            )
        return self._follow_in_worker(context, record, trigger, carried)

    def _follow_in_worker(
        self,
        context: Context,
        record: dict[str, Any],
        trigger: NeoXTrainingTrigger,
        checkpoints: list[dict[str, Any]] | None = None,
    ):
        """Non-deferrable mode: run the same trigger loop here, event after event."""
        checkpoints = list(checkpoints or [])
        while True:
            event = restore_event(asyncio.run(_first_event(trigger)), self._read)
            if event.get("event") not in WATCH_GOES_ON:
                return self.execute_complete(context, event, record=record, checkpoints=checkpoints)
            checkpoints = self._record_checkpoints(context, event, checkpoints)
            if event.get("event") == "lock_lost":
                self._lock_lost(context, event)
            elif event.get("event") == "controller_silent":
                record["silent_alerted"] = True
                self._controller_silent(context, event)
            trigger = self._training_trigger(
                record, event.get("log_offset", 0), event.get("watch"), checkpoints
            )

    # -- events ----------------------------------------------------------------------------------------
    def _record_checkpoints(
        self, context: Context, event: Mapping[str, Any], known: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        merged = merge_checkpoints(known, event.get("checkpoints") or [])
        if len(merged) > len(known):
            context["ti"].xcom_push(key="checkpoints", value=merged)
        watch = WatchState.from_dict(event.get("watch"))
        progress = watch.progress(self.train_iters, self.seq_length)
        note = run_note_markdown(progress)
        context["ti"].xcom_push(key="progress", value=note)
        ti = context["ti"]
        if getattr(ti, "dag_id", None) and getattr(ti, "run_id", None):
            set_run_note(ti.dag_id, ti.run_id, note)
        if event.get("progress"):
            self.log.info("Progress: %s", event["progress"])
        return merged

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any],
        record: dict[str, Any] | None = None,
        checkpoints: list[dict[str, Any]] | None = None,
    ) -> Any:
        event = restore_event(event, self._read)  # the trigger's bulky state, from its file
        carry = event.get("carry") or {}
        record = dict(record or carry.get("record") or {})
        checkpoints = merge_checkpoints(list(checkpoints or []), carry.get("checkpoints") or [])
        kind = event.get("event")
        if kind in WATCH_GOES_ON:  # the job goes on: watch it again from where this left off
            self._keep_streamed(record, event)
            self._resolve_lock(context)
            checkpoints = self._record_checkpoints(context, event, checkpoints)
            if kind == "lock_lost":
                self._lock_lost(context, event)
            elif kind == "controller_silent":
                record["silent_alerted"] = True
                self._controller_silent(context, event)
            else:
                self.log.info("Checkpoint %s is complete: %s", event.get("tag"), event.get("path"))
            self.defer(
                trigger=self._training_trigger(
                    record, event.get("log_offset", 0), event.get("watch"), checkpoints
                ),
                method_name="execute_complete",
                kwargs={"record": record, "checkpoints": checkpoints},
            )
        checkpoints = self._record_checkpoints(context, event, checkpoints)
        if kind == "final" and event.get("listing_error"):
            checkpoints = self._relist(context, checkpoints, event, record.get("baseline_checkpoint"))
        record.update(status=event.get("status"), event=kind)
        watch = WatchState.from_dict(event.get("watch"))
        if event.get("polls"):
            self.log.info("Watched job %s with %s polls", event.get("job_id"), event["polls"])

        if kind == "stalled":
            reason = event.get("reason") or "training stalled"
            record["stalled"] = reason
            context["ti"].xcom_push(key=STATE_KEY, value=record)
            self.log.error("%s: cancelling Slurm job %s", reason, record.get("job_id"))
            try:
                self._cancel_owned(context, record)
            except Exception as err:  # the failure below matters more than a failed scancel
                self.log.warning("scancel %s failed: %s", record.get("job_id"), err)
            raise TrainingStalled(f"{reason} (job {record.get('job_id')} cancelled)", record)

        status = event.get("status") or {}
        exit_code = exit_code_of(status)
        complete = [int(c["iteration"]) for c in checkpoints]
        if record.get("baseline_checkpoint") is not None:
            complete.append(int(record["baseline_checkpoint"]))
        job_ok = kind == "final" and status.get("outcome") == Outcome.SUCCESS.value
        short = not (watch.last_iteration is not None and watch.last_iteration >= self.train_iters)
        facts = self._slice_log_facts(record) if job_ok and short else {}
        planned = (record.get("slice") or {}).get("stop_iteration")
        verdict = training_verdict(
            watch.log_state(),
            self.train_iters,
            exit_code,
            complete,
            planned_stop=planned,
            exited_at=facts.get("exited_at"),
        )
        record["verdict"] = {"status": verdict.status, "reason": verdict.reason, "exit_code": exit_code}
        context["ti"].xcom_push(key=STATE_KEY, value=record)
        summary = self._summary(watch, checkpoints, verdict, record)
        context["ti"].xcom_push(key="summary", value=summary)

        if kind == "final" and verdict.finished:
            self.log.info("Training finished: %s", verdict.reason)
            self._end_slice(context, record, watch, verdict, facts, "finished")
            return self._result(context, record, checkpoints, watch, more_to_do=False, reason=verdict.reason)
        if job_ok and short:
            if verdict.planned_stop:
                why, how = verdict.reason, "planned_stop"
            elif watch.slice_end:
                why, how = f"slice ended before the time limit ({watch.slice_end})", "time_limit"
            else:
                why, how = f"job exited 0 at iteration {watch.last_iteration} of {self.train_iters}", "exit_0"
            if planned is not None and not verdict.planned_stop:
                self.log.warning(
                    "The slice was planned to stop after the save of iteration %s but ended otherwise (%s): "
                    "the next slice resumes from the newest complete checkpoint",
                    planned,
                    why,
                )
            self.log.info("Slice done, more to train: %s; %s", why, verdict.reason)
            self._end_slice(context, record, watch, verdict, facts, how)
            if self.carry_on:
                self._keep_streamed(record, event)
                return self._next_slice(context, checkpoints)
            return self._result(context, record, checkpoints, watch, more_to_do=True, reason=why)
        self._end_slice(context, record, watch, verdict, facts, kind or "failed")
        message = failure_message(event)
        if kind == "final":
            message += f"\n  training: {verdict.reason}"
        raise SlurmJobFailed(message, record)

    # -- slices ----------------------------------------------------------------------------------------
    def _next_slice(self, context: Context, checkpoints: list[dict[str, Any]]) -> Any:
        """The slice ended cleanly with more to train: submit the next one now and defer again. The ended
        job is final (this runs on its final event), so at most one job of the run exists at any time;
        the submit goes through ``execute`` (re-attach by name, latest fixed, plan, claim), so a clear or
        a new try in between still re-attaches instead of submitting twice."""
        store = context.get("task_state_store")
        if store is not None:
            store.set(STATE_KEY, {})  # the ended job is not to be re-attached (nor adopted as the result)
        self._carried_checkpoints = list(checkpoints)
        self._job_id = None
        return self.execute(context)

    def _adopted_success(self, context: Context, record: dict[str, Any]) -> Any:
        """A slice's job COMPLETED while no try watched it (worker lost, re-scheduled). With ``carry_on``
        that is not the end of training: go on with the next slice (or find train_iters checkpointed).
        Its log is measured all the same, so that the next slice plans with its pace, not the hints."""
        if not self.carry_on:
            return super()._adopted_success(context, record)
        self.log.info("Job %s ended unwatched: carrying the run on from its checkpoints", record["job_id"])
        facts = self._slice_log_facts(record)
        self._end_slice(context, record, WatchState(), None, facts, "ended_unwatched")
        return self._next_slice(context, [])

    def _summary(self, watch: WatchState, checkpoints, verdict, record) -> dict[str, Any]:
        ckpts = [
            Checkpoint(int(c["iteration"]), c["tag"], c["path"], int(c.get("size_bytes", 0)))
            for c in checkpoints
        ]
        return build_summary(
            watch.log_state(),
            ckpts,
            train_iters=self.train_iters,
            seq_length=self.seq_length,
            verdict=verdict,
            loss_curve=watch.loss_points,
            extra={"job_id": record.get("job_id"), "slice_end": watch.slice_end},
        )

    def _result(self, context: Context, record, checkpoints, watch: WatchState, *, more_to_do, reason):
        run = self.run_name or record.get("job_name") or "run"
        self._emit_assets(context, run, checkpoints, record.get("job_id"))
        newest = checkpoints[-1] if checkpoints else None
        return {
            "more_to_do": more_to_do,
            "reason": reason,
            "iteration": watch.last_iteration,
            "train_iters": self.train_iters,
            "last_checkpoint": newest["iteration"] if newest else None,
            "last_checkpoint_path": newest["path"] if newest else None,
            "checkpoints": checkpoints,
            "resumed_from": watch.resumed_from,
            "baseline_checkpoint": record.get("baseline_checkpoint"),
            "slice_end": watch.slice_end,
            "job_id": record.get("job_id"),
            "save_dir": posixpath.normpath(self.save_dir),
        }


async def _first_event(trigger: NeoXTrainingTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return event.payload
    raise RuntimeError("the training trigger ended without an event")
