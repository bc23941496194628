"""SlurmOperator: submit a batch script once, follow it to the end without holding a worker slot.

Lifecycle of one task instance:

1. re-attach: the job recorded in ``task_state_store`` by an earlier try, or a live job under the task's
   deterministic name (squeue), is followed instead of submitting a second copy. A recorded job that
   already COMPLETED is adopted as the result. A job that was cancelled (CANCELLED, or still COMPLETING
   with the owner file's cancel mark: a person stopped or cleared the earlier try) is never adopted:
   the try waits, deferred, until it has left the queue and then submits afresh (rules in
   :func:`neoxflow.slurm.ownership.adoption`). Adopting claims the job for this try (the owner file
   beside the job), so that only this try's trigger may cancel it.
2. submit: the rendered script is uploaded by SFTP (content-addressed file) and ``sbatch --parsable`` runs
   with validated, quoted options; the job id goes to ``task_state_store`` and XCom at once.
3. watch: deferred to :class:`SlurmJobTrigger` (default) or polled in the worker.
4. verdict: COMPLETED -> success (the job record is the XCom return value); anything else raises
   :class:`SlurmJobFailed` naming state, exit code, reason, nodes and the last log lines.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException

from neoxflow.errors import SlurmJobFailed, failure_message
from neoxflow.hooks.slurm import SlurmSSHHook
from neoxflow.slurm import commands, naming, ownership
from neoxflow.slurm.commands import ProbeRequest
from neoxflow.slurm.logstream import job_log_files
from neoxflow.slurm.ownership import Adoption
from neoxflow.slurm.states import Outcome
from neoxflow.slurm.status import array_task_ids
from neoxflow.slurm.validate import check_env, check_remote_path, check_sbatch_option
from neoxflow.triggers.slurm_job import SlurmJobTrigger

STATE_KEY = "slurm_job"
GONE_UNKNOWN_S = 120.0  # a cancelled job no source knows for this long has left the queue


class SlurmOperator(BaseOperator):
    """Run a batch script on a Slurm cluster over SSH.

    :param script: the batch script text (templated). It is uploaded, never put on a command line.
    :param remote_dir: folder on the cluster for scripts and logs (templated); one sub-folder per job name.
    :param sbatch_options: sbatch long options without dashes, e.g. ``{"nodes": 2, "time": "01:00:00"}``
        (templated; allow-listed and validated before anything is sent).
    :param env: environment exported at the top of the script (templated; no secrets: they would be
        written into the uploaded file - use the cluster's credentials instead).
    :param array: ``--array`` spec; the task waits for every array task.
    :param ssh_conn_id: SSH connection to the login node (host key pinned in its ``host_key`` extra).
    :param deferrable: watch from the triggerer (default) instead of a worker slot.
    :param poll_interval: seconds between state polls.
    :param unknown_timeout: seconds a job may be unknown to squeue, scontrol and sacct before failing.
    :param job_name: override the deterministic name (keep it unique per task instance).
    :param files: extra files (name -> text) written into the job's folder before submission, e.g. an
        array job's manifest (templated).
    :param output_path: ``--output`` pattern (``%j`` = job id); default ``<job dir>/slurm-%j.out``.
    """

    template_fields: Sequence[str] = (
        "script",
        "remote_dir",
        "sbatch_options",
        "env",
        "array",
        "job_name",
        "files",
        "output_path",
    )
    template_fields_renderers = {"script": "bash", "sbatch_options": "json", "env": "json"}
    ui_color = "#d6e9f8"

    def __init__(
        self,
        *,
        script: str,
        remote_dir: str,
        sbatch_options: Mapping[str, Any] | None = None,
        env: Mapping[str, Any] | None = None,
        array: str | None = None,
        ssh_conn_id: str = "neoxflow_cluster",
        deferrable: bool = True,
        poll_interval: float = 10.0,
        unknown_timeout: float = 900.0,
        job_name: str | None = None,
        files: Mapping[str, str] | None = None,
        output_path: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.files = files or {}
        self.output_path = output_path
        self.script = script
        self.remote_dir = remote_dir
        self.sbatch_options = sbatch_options or {}
        self.env = env or {}
        self.array = array
        self.ssh_conn_id = ssh_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.unknown_timeout = unknown_timeout
        self.job_name = job_name
        self._job_id: str | None = None

    @cached_property
    def hook(self) -> SlurmSSHHook:
        return SlurmSSHHook(self.ssh_conn_id)

    # -- planning (pure) -------------------------------------------------------------------------------
    def _name(self, context: Context) -> str:
        if self.job_name:
            return self.job_name
        ti = context["ti"]
        return naming.job_name(ti.dag_id, context["run_id"], ti.task_id, getattr(ti, "map_index", -1))

    def _validated_options(self) -> dict[str, Any]:
        options = dict(self.sbatch_options)
        for reserved in ("job-name", "output", "chdir", "array", "parsable", "wrap"):
            if reserved in options:
                raise ValueError(f"sbatch_options: --{reserved} is set by the operator, remove it")
        if self.array:
            options["array"] = self.array
        for name, value in options.items():
            check_sbatch_option(name, value)
        return options

    def _script_bytes(self) -> bytes:
        env = check_env(self.env)
        script = self.script if self.script.startswith("#!") else "#!/bin/bash\n" + self.script
        if env:
            import shlex

            first, _, rest = script.partition("\n")
            # after the #SBATCH header block would be nicer, but sbatch stops reading directives at the
            # first command, so exports go at the very end of the directive block: find it.
            lines = rest.split("\n")
            cut = 0
            while cut < len(lines) and (lines[cut].startswith("#") or not lines[cut].strip()):
                cut += 1
            exports = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
            script = "\n".join([first, *lines[:cut], *exports, *lines[cut:]])
        return script.encode()

    # -- execution -------------------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        remote_dir = check_remote_path(self.remote_dir, "remote_dir")
        options = self._validated_options()
        self._script_bytes()  # fail on a bad env before touching the cluster
        name = self._name(context)
        job_dir = posixpath.join(remote_dir, name)
        store = context.get("task_state_store")

        record = self._reattach(store, name)
        if record and record.get("adopted_success"):
            self.log.info("Job %s of an earlier try already COMPLETED: adopting its result", record["job_id"])
            return self._adopted_success(context, record)
        if record and record.get("leaving"):
            return self._wait_until_gone(context, record)
        if record is not None and not self._claim(context, record):
            return self._wait_until_gone(context, {**record, "leaving": True})
        if record is None:
            done = self._done_without_a_job(context)
            if done is not None:
                return done
            extra = self._prepare_submit(context) or {}
            script = self._script_bytes()  # after _prepare_submit: it may render the script anew
            digest = hashlib.sha256(script).hexdigest()[:12]
            script_path = posixpath.join(job_dir, f"job-{digest}.sbatch")
            output = self._output(job_dir)
            for file_name, text in self.files.items():
                if "/" in file_name:
                    raise ValueError(
                        f"files: {file_name!r} must be a plain file name (it goes into {job_dir})"
                    )
                self.hook.upload(text.encode(), posixpath.join(job_dir, file_name))
            self.hook.upload(script, script_path, mode=0o755)
            if posixpath.dirname(output) != job_dir:  # Slurm does not create the log folder
                self.hook.run(commands.mkdir_command(posixpath.dirname(output)))
            job_id = self.hook.submit(
                script_path,
                job_name=name,
                output=output,
                workdir=job_dir,
                options=options,
                comment=naming.job_comment(context["ti"].dag_id, context["run_id"], context["ti"].task_id),
            )
            record = {
                "job_id": job_id,
                "job_name": name,
                "start_day": datetime.now(UTC).strftime("%Y-%m-%d"),
                "array": self.array,
                **job_log_files(output, job_id, name, bool(self.array)),
                "job_dir": job_dir,
                **extra,
            }
            self.log.info("Submitted Slurm job %s as %s (script %s)", job_id, name, script_path)
            if not self._claim(context, record):  # a brand-new job carries no cancel mark
                raise AirflowException(f"job {job_id} was just submitted but could not be claimed")
            self._submitted(context, record)
        if store is not None:
            store.set(STATE_KEY, record)
        context["ti"].xcom_push(key="job_id", value=record["job_id"])
        self._job_id = record["job_id"]
        return self._watch(context, record)

    # -- ownership -------------------------------------------------------------------------------------
    def _owner_token(self, context: Context) -> str:
        return ownership.owner_token_of(context)

    def _owner_path(self, record: Mapping[str, Any]) -> str:
        job_dir = record.get("job_dir") or posixpath.join(
            check_remote_path(self.remote_dir), record.get("job_name") or "job"
        )
        return ownership.owner_path(job_dir, str(record["job_id"]).split("_", 1)[0])

    def _claim(self, context: Context, record: dict[str, Any]) -> bool:
        """Make this try the job's owner (its trigger alone may then cancel it). False when a cancel was
        requested for the job: it is leaving and must not be adopted."""
        token = self._owner_token(context)
        path = self._owner_path(record)
        job_id = str(record["job_id"]).split("_", 1)[0]
        status, out, _ = self.hook.run(
            ownership.claim_command(path, job_id, token, int(time.time())), check=False
        )
        answer = ownership.parse_claim(status, out.decode("utf-8", "replace"))
        if not answer.claimed:
            self.log.warning(
                "Job %s had a cancel requested by %s: not adopting it", record["job_id"], answer.cancel_by
            )
            return False
        record["owner"], record["owner_path"] = token, path
        self.log.info("Job %s is owned by this try (%s, %s)", record["job_id"], token, path)
        return True

    def _cancel_owned(self, context: Context, record: Mapping[str, Any]) -> str:
        """Cancel the job from the worker (a stall) with the same owner check and cancel mark as the
        trigger's ``on_kill``, so the retry waits for the job to leave instead of adopting it."""
        if not record.get("owner") or not record.get("owner_path"):
            self.hook.cancel(str(record["job_id"]))
            return "cancelled"
        command = ownership.cancel_if_owner_command(
            record["owner_path"], str(record["job_id"]).split("_", 1)[0], record["owner"], int(time.time())
        )
        status, out, err = self.hook.run(command, check=False)
        answer = ownership.parse_cancel(
            status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        )
        if answer.state == "error":
            raise AirflowException(f"scancel {record['job_id']} failed: {answer.text}")
        if answer.state != "cancelled":
            self.log.warning("Job %s not cancelled: %s", record["job_id"], answer.text)
        return answer.state

    def _adoption(self, record: Mapping[str, Any]) -> tuple[Adoption, Any]:
        """How a new try should treat this job: its status, owner file and (when it answers) sacct."""
        status, _ = self.hook.probe(self._probe_request(record), self._expected(record))
        if status.final or status.outcome is Outcome.UNKNOWN:
            return ownership.adoption(status), status
        _, out, _ = self.hook.run(ownership.read_owner_command(self._owner_path(record)), check=False)
        owner = ownership.parse_owner(out.decode("utf-8", "replace"))
        accounting = self.hook.accounting_states(str(record["job_id"]), record["start_day"])
        return ownership.adoption(status, owner, accounting), status

    def _wait_until_gone(self, context: Context, record: dict[str, Any]) -> Any:
        """The job was cancelled but is still leaving (COMPLETING): wait, without a worker slot, until it
        has left the queue, then run ``execute`` again (it then submits afresh). Never adopt it: its end
        is CANCELLED, which would fail the run the person only meant to clear."""
        self.log.info(
            "Job %s was cancelled and is still leaving the queue: waiting for it before submitting",
            record["job_id"],
        )
        trigger = SlurmJobTrigger(
            ssh_conn_id=self.ssh_conn_id,
            job_id=record["job_id"],
            start_day=record["start_day"],
            expected_tasks=self._expected(record),
            poll_interval=self.poll_interval,
            unknown_timeout=min(self.unknown_timeout, GONE_UNKNOWN_S),  # answered "no such job": gone
            cancel_on_kill=False,  # not ours any more: nothing of this try to cancel
        )
        if self.deferrable:
            self.defer(trigger=trigger, method_name="execute_after_gone", kwargs={})
        event = asyncio.run(_first_event(trigger))
        return self.execute_after_gone(context, event)

    def execute_after_gone(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """The cancelled job has left (final, or no longer known): start this try over."""
        event = event or {}
        if event.get("event") == "error":
            raise AirflowException(f"waiting for a cancelled job to leave: {event.get('message')}")
        self.log.info("Cancelled job %s has left the queue (%s)", event.get("job_id"), event.get("event"))
        return self.execute(context)

    def _done_without_a_job(self, context: Context) -> Any:
        """Called when nothing is live to follow, before submitting: a subclass that can tell the work is
        already done returns the task's result here (no job is submitted); None submits."""
        return None

    def _prepare_submit(self, context: Context) -> Mapping[str, Any] | None:
        """Called just before a submit, once it is known that no job is live and the work is not done: a
        subclass whose script depends on the cluster's state now (where a run resumes) renders it here.
        The facts returned go into the job record (task state store, XCom, the trigger's carry)."""
        return None

    def _submitted(self, context: Context, record: Mapping[str, Any]) -> None:
        """Called once the new job is submitted and claimed (a subclass keeps its own history)."""

    def _adopted_success(self, context: Context, record: dict[str, Any]) -> Any:
        """An earlier try's job COMPLETED while no try watched it: its record is the task's result."""
        return record

    def _reattach(self, store: Any, name: str) -> dict[str, Any] | None:
        """The job an earlier try of this task instance submitted (or one live under the task's name), if
        it is still worth following; ``leaving`` set when it was cancelled and must only be waited for."""
        record = store.get(STATE_KEY) if store is not None else None
        if record:
            decision, status = self._adoption(record)
            if decision is Adoption.ADOPT:
                self.log.info(
                    "Re-attaching to job %s of an earlier try (%s)", record["job_id"], status.summary()
                )
                return dict(record)
            if decision is Adoption.ADOPT_SUCCESS:
                return {**record, "adopted_success": True, "status": status.to_dict()}
            if decision is Adoption.WAIT_UNTIL_GONE:
                return {**record, "leaving": True}
            self.log.info(
                "Job %s of an earlier try is not to be followed (%s, %s)",
                record["job_id"],
                decision.value,
                status.summary(),
            )
        live = self.hook.active_jobs_named(name)
        if len(live) > 1:
            self.log.warning("Several live jobs named %s: %s", name, live)
        leaving, job_dir = None, posixpath.join(check_remote_path(self.remote_dir), name)
        for job_id in live:
            found = {
                "job_id": job_id,
                "job_name": name,
                "start_day": datetime.now(UTC).strftime("%Y-%m-%d"),
                "array": self.array,
                "job_dir": job_dir,
                **job_log_files(self._output(job_dir), job_id, name, bool(self.array)),
            }
            decision, status = self._adoption(found)
            if decision is Adoption.ADOPT:
                self.log.info(
                    "Found live job %s named %s: re-attaching instead of submitting again (%s)",
                    job_id,
                    name,
                    status.summary(),
                )
                return found
            if decision is Adoption.WAIT_UNTIL_GONE:
                leaving = {**found, "leaving": True}
        return leaving

    def _output(self, folder: str) -> str:
        """The ``--output`` pattern: the operator's, else ``slurm-%j.out`` (an array: one per task)."""
        return self.output_path or posixpath.join(folder, "slurm-%A_%a.out" if self.array else "slurm-%j.out")

    def _expected(self, record: Mapping[str, Any]) -> list[str] | None:
        return array_task_ids(record["job_id"], record.get("array"))

    def _probe_request(self, record: Mapping[str, Any], offset: int = 0) -> ProbeRequest:
        return ProbeRequest(
            record["job_id"], record["start_day"], log_path=record.get("log_path"), log_offset=offset
        )

    def _trigger(
        self, record: Mapping[str, Any], offset: int = 0, silent_alerted: bool = False
    ) -> SlurmJobTrigger:
        return SlurmJobTrigger(
            ssh_conn_id=self.ssh_conn_id,
            job_id=record["job_id"],
            start_day=record["start_day"],
            expected_tasks=self._expected(record),
            log_path=record.get("log_path"),
            log_offset=offset,
            poll_interval=self.poll_interval,
            unknown_timeout=self.unknown_timeout,
            owner_token=record.get("owner"),
            owner_path=record.get("owner_path"),
            silent_alerted=silent_alerted,
            array_log=record.get("array_log"),
            task_offsets=record.get("task_offsets"),  # where a re-deferral reads each task's file on
        )

    def _controller_silent(self, context: Context, event: Mapping[str, Any]) -> None:
        """The controller has not answered for a long while: tell a human once; the watch goes on."""
        message = event.get("message") or "the Slurm controller does not answer"
        self.log.error("%s", message)
        try:
            from neoxflow.notifiers.factory import send_alert

            send_alert("controller_silent", context, detail=message, job_id=event.get("job_id"))
        except Exception as err:  # best effort: the watch must go on
            self.log.warning("Could not send the controller_silent alert: %s", err)

    def _watch(self, context: Context, record: dict[str, Any]) -> Any:
        if self.deferrable:
            self.defer(
                trigger=self._trigger(record), method_name="execute_complete", kwargs={"record": record}
            )
        return self._poll_in_worker(context, record)

    def _poll_in_worker(self, context: Context, record: dict[str, Any]) -> Any:
        offset, unknown_since = 0, None
        finished: dict[str, Any] = {}  # array tasks seen final (they leave squeue after MinJobAge)
        while True:
            try:
                status, chunk = self.hook.probe(
                    self._probe_request(record, offset), self._expected(record), finished
                )
                finished.update((t.job_id, t) for t in status.tasks if t.outcome.final)
            except Exception as err:  # one failed poll is not a verdict
                self.log.warning("Poll failed (%s); retrying", err)
                self.hook.close()
                time.sleep(self.poll_interval)
                continue
            for line in chunk.decode("utf-8", "replace").splitlines():
                self.log.info("[slurm %s] %s", record["job_id"], line)
            offset += len(chunk)
            if status.final or status.outcome is Outcome.HELD:
                tail = self.hook.tail(record["log_path"]).splitlines() if record.get("log_path") else []
                event = {
                    "event": "final" if status.final else "held",
                    "job_id": record["job_id"],
                    "status": status.to_dict(),
                    "tail": tail,
                }
                return self.execute_complete(context, event, record=record)
            if status.outcome is Outcome.UNKNOWN and not status.controller_silent:
                unknown_since = unknown_since or time.monotonic()
                if time.monotonic() - unknown_since > self.unknown_timeout:
                    event = {
                        "event": "lost",
                        "job_id": record["job_id"],
                        "status": status.to_dict(),
                        "message": status.note,
                    }
                    return self.execute_complete(context, event, record=record)
            else:
                unknown_since = None
            time.sleep(self.poll_interval)

    def execute_complete(
        self, context: Context, event: dict[str, Any], record: dict[str, Any] | None = None
    ) -> Any:
        if event.get("event") == "controller_silent":  # not a verdict: alert once, keep watching
            self._controller_silent(context, event)
            self.defer(
                trigger=self._trigger(
                    {**(record or {}), "task_offsets": event.get("task_offsets")},
                    event.get("log_offset", 0),
                    silent_alerted=True,
                ),
                method_name="execute_complete",
                kwargs={"record": record},
            )
        record = {
            **(record or {}),
            "status": event.get("status"),
            "event": event.get("event"),
            "tail": list(event.get("tail") or [])[-40:],
        }
        if event.get("polls"):
            self.log.info(
                "Watched job %s with %s polls over %s SSH connection(s)",
                event.get("job_id"),
                event["polls"],
                event.get("connections"),
            )
        context["ti"].xcom_push(key="slurm_job", value=record)
        status = event.get("status") or {}
        if event.get("event") == "final" and status.get("outcome") == Outcome.SUCCESS.value:
            self.log.info("Slurm %s", status.get("summary"))
            return record
        raise SlurmJobFailed(failure_message(event), record)

    def on_kill(self) -> None:
        """Worker-side kill (non-deferrable mode). While deferred, the trigger's on_kill cancels."""
        if self._job_id:
            self.log.info("Task killed: cancelling Slurm job %s", self._job_id)
            self.hook.cancel(self._job_id)


async def _first_event(trigger: SlurmJobTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return event.payload
    raise RuntimeError("the Slurm job trigger ended without an event")
