"""The operators pythia_pretrain is built from: Slurm jobs whose scripts come from the run's plan.

The plan (:func:`neoxflow.pipeline.plan.plan_run`) is made once by the ``prepare.plan`` task from the
trigger form, so a dry run shows exactly what these operators would submit. Training re-renders its
launch at execute time, because a resume after a node failure changes the shape (failed nodes excluded).
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from neoxflow.data.render import SLURM_DEFAULT_MAX_ARRAY_SIZE, array_directive, array_tasks
from neoxflow.errors import SlurmJobFailed
from neoxflow.operators.slurm import SlurmOperator
from neoxflow.operators.training import NeoXTrainOperator, TrainingStalled
from neoxflow.pipeline.run_plan import PlanSchemaError, RunPlan
from neoxflow.slurm import commands
from neoxflow.slurm.states import Outcome

PLAN_TASK = "prepare.plan"


def pull_plan(context: Context, plan_task_id: str = PLAN_TASK) -> dict[str, Any]:
    plan = context["ti"].xcom_pull(task_ids=plan_task_id)
    if not plan:
        raise AirflowFailException(f"no plan from {plan_task_id}")
    return plan


class PlannedSlurmOperator(SlurmOperator):
    """Submit the job described at ``plan[path...]``: script, extra files, array spec, job name.

    :param plan_path: keys into the plan, e.g. ``("data", "fetch")``.
    """

    template_fields: Sequence[str] = ()

    def __init__(self, *, plan_path: Sequence[str], plan_task_id: str = PLAN_TASK, **kwargs: Any):
        super().__init__(script="", remote_dir="/", **kwargs)
        self.plan_path = tuple(plan_path)
        self.plan_task_id = plan_task_id

    def execute(self, context: Context) -> Any:
        plan = pull_plan(context, self.plan_task_id)
        if plan.get("dry_run"):
            raise AirflowSkipException("dry run: nothing is submitted (see prepare.plan for the scripts)")
        if "job_name" in plan and not self.plan_path:
            plan = {"job": plan}  # the upstream task returned the job itself
            self.plan_path = ("job",)
        job = plan
        for key in self.plan_path:
            job = job[key]
        self.script = job["script"]
        self.remote_dir = job["remote_dir"]
        self.job_name = job["job_name"]
        self.files = job.get("files") or {}
        self.array = job.get("array")
        if job.get("array_lines"):
            self.array = self._fitted_array(job["array_lines"], job["array_parallelism"])
        self.output_path = job.get("output")
        self.sbatch_options = job.get("sbatch_options") or {}
        return super().execute(context)

    def _fitted_array(self, lines: int, parallelism: int) -> str:
        """The ``--array`` for a manifest of ``lines`` lines on this cluster: one task per line up to the
        cluster's ``MaxArraySize``, fewer tasks striding over the lines beyond it (the script follows
        ``SLURM_ARRAY_TASK_COUNT``). Read at every submit: the plan cannot know the cluster's limit."""
        limit = self.hook.max_array_size()
        if limit is None:
            limit = SLURM_DEFAULT_MAX_ARRAY_SIZE
            self.log.warning(
                "Could not read MaxArraySize from the cluster: assuming Slurm's default %d", limit
            )
        tasks = array_tasks(lines, limit)
        if tasks < lines:
            self.log.info(
                "%d manifest lines in %d array tasks (the cluster's MaxArraySize is %d): each task takes "
                "every %d-th line",
                lines,
                tasks,
                limit,
                tasks,
            )
        return array_directive(tasks, parallelism)


def _names(hook, command: str) -> set[str]:
    _, out, _ = hook.run(command, check=False)
    return set(out.decode("utf-8", "replace").split())


def failed_nodes(hook, job_nodes: str) -> list[str]:
    """Nodes of the job that Slurm now reports down/drained/failing (the ones to exclude next time)."""
    if not job_nodes:
        return []
    members = _names(hook, commands.hostnames_command(job_nodes))
    return sorted(members & _names(hook, commands.node_names_command(unhealthy=True)))


def usable_nodes(hook, partition: str | None, excluded: Sequence[str]) -> int:
    """How many nodes of the partition could run the resumed slice: healthy and not excluded. Spares
    count: a cluster that keeps them resumes at the same world size (the same sums, the same model)."""
    every = _names(hook, commands.node_names_command(partition))
    unhealthy = _names(hook, commands.node_names_command(partition, unhealthy=True))
    return len(every - unhealthy - set(excluded))


class PretrainTrainOperator(NeoXTrainOperator):
    """One training slice of the run: render the launch for the current shape, submit, watch, decide.

    Watching (progress, checkpoints as Asset events, stall detection, the finished-at-train_iters verdict)
    is :class:`NeoXTrainOperator`'s. This class adds the run's shape and the resume policy:

    after NODE_FAIL, PREEMPTED, BOOT_FAIL or TIMEOUT (or a stall, after which the job is cancelled) the
    task fails *retryably*: Airflow's retry (with backoff) re-enters here, excludes the failed nodes and
    resumes from the latest complete checkpoint (NeoX ``load`` = ``save``). After an application failure
    (FAILED, OUT_OF_MEMORY) it fails for good: no blind resubmit, a human is alerted with the log tail.
    Attempts, failed nodes and excluded nodes are kept in ``task_state_store`` and pushed as XCom.

    Slices: the task carries the run from slice to slice itself (``carry_on``): each slice's config gets
    the ``exit_interval`` / ``extra_save_iters`` of :func:`neoxflow.neox.slices.plan_slice_for_config`,
    planned just before its submit from where the run resumes and the times measured on the earlier
    slices (newest first, then the profile's ``slices`` hints), so that it stops right after a complete
    checkpoint before its time limit (the batch script's USR1 stays the safety net). A slice that cannot
    fit one iteration and its save is not submitted: the task fails for good with the plan's reason.
    ``train_iters`` is never changed per slice.
    """

    template_fields: Sequence[str] = ()

    def __init__(
        self,
        *,
        max_resumes: int = 3,
        plan_task_id: str = PLAN_TASK,
        stall_window: float | None = None,
        carry_on: bool = True,
        **kwargs: Any,
    ):
        super().__init__(
            script="",
            remote_dir="/",
            save_dir="/",
            train_iters=1,
            listing_script="/",
            stall_window=stall_window,
            carry_on=carry_on,
            **kwargs,
        )
        self.max_resumes = max_resumes
        self.plan_task_id = plan_task_id
        #: the run's plan (set by _configure) and, before a submit, its profile, config and exclusions
        self._plan: RunPlan | None = None
        self._run: dict[str, Any] = {}
        self._resume_iteration: int | None = None

    def _history(self, context: Context) -> dict[str, Any]:
        store = context.get("task_state_store")
        return (store.get("resume_history") if store is not None else None) or {
            "attempts": [],
            "excluded": [],
        }

    def _configure(self, context: Context) -> RunPlan:
        """Set what watching the run needs, from the plan as the plan task decided it (again after each
        deferral: self does not survive it). Nothing is parsed, loaded or rendered here: a deferral's
        return only reads the plan."""
        from neoxflow.neox.checkpoint_listing import expectation_to_dict, listing_script_path
        from neoxflow.neox.export import run_checkpoints_s3_uri

        try:
            run = RunPlan.from_dict(pull_plan(context, self.plan_task_id))
        except PlanSchemaError as err:
            raise AirflowFailException(str(err)) from None
        if run.dry_run:
            raise AirflowSkipException("dry run: training is not submitted")
        self._plan = run
        lay = run.layout
        self.remote_dir = lay.jobs_dir
        self.job_name = run.fixed.jobs.train
        self.save_dir = lay.checkpoint_dir
        self.train_iters = run.fixed.train_iters
        self.seq_length = run.fixed.seq_length
        self.listing_script = listing_script_path(lay.code_dir)
        self.listing_python = run.fixed.python
        self.run_name = run.run_name
        # named in the checkpoints' Asset events as their pending S3 copy (the export's own rule)
        bucket = run.fixed.s3_bucket
        self.s3_checkpoints = (
            run_checkpoints_s3_uri(bucket, run.fixed.s3_prefix or "", run.run_name) if bucket else None
        )
        # the shape decided at the last node failure (_resume_shape), else the planned one
        nodes = self._history(context).get("nodes") or run.slice.nodes
        self.expectation = expectation_to_dict(run.expectation_at(nodes))
        return run

    def _configure_submit(self, context: Context) -> tuple[Any, list[str]]:
        """Before a submit: the slice's config for its shape and its batch script. The planned shape's
        config is the plan's own (:func:`neoxflow.pipeline.plan.slice_config`); a shape changed by a node
        failure re-derives the batch split for its world size, the fixed part as planned."""
        from neoxflow.neox.launch import launch_spec_for_run, render_batch_script
        from neoxflow.pipeline.plan import slice_config

        run = self._configure(context)
        profile = run.load_profile()
        history = self._history(context)
        excluded = list(history["excluded"])
        cfg = slice_config(run, profile, history.get("nodes") or run.slice.nodes)
        if not cfg.ok:
            raise AirflowFailException("; ".join(f"{e.key}: {e.message}" for e in cfg.errors))
        spec, template = launch_spec_for_run(
            profile,
            cfg,
            job_name=self.job_name,
            code_dir=run.layout.code_dir,
            time_limit=run.slice.time_limit,
            exclude_nodes=tuple(excluded),
        )
        self.script = render_batch_script(spec, template)
        self.output_path = spec.job_log_path("%j")
        self._run = {"profile": profile, "cfg": cfg, "excluded": tuple(excluded)}
        return cfg, excluded

    def execute(self, context: Context) -> Any:
        cfg, excluded = self._configure_submit(context)
        context["ti"].xcom_push(key="resume_history", value=self._history(context))  # cleared on each try
        self.hook.upload(cfg.rendered.encode(), cfg.config_path)
        self.log.info(
            "Training %s (%s) on %d node(s) x %d, config %s%s",
            self.run_name,
            cfg.size,
            cfg.nodes,
            cfg.gpus_per_node,
            cfg.config_path,
            f", excluding {excluded}" if excluded else "",
        )
        return super().execute(context)

    def _done_without_a_job(self, context: Context) -> Any:
        """Nothing live to follow and a job is about to be submitted: point ``latest`` at the newest
        complete checkpoint first. A job cancelled mid-save (a person stopped or cleared the task, a
        stall) can leave ``latest`` naming a checkpoint the other ranks never finished; only
        ``prepare_resume`` fixed it before, and a cleared ``train_slice`` does not run that again."""
        done = super()._done_without_a_job(context)
        if done is None:
            self._resume_iteration = self._point_latest_at_newest_complete()
        return done

    def _prepare_submit(self, context: Context) -> dict[str, Any]:
        """Plan where this slice stops and render its config and batch script with that stop.

        Planned here, just before the submit, because the resume point (the newest complete checkpoint,
        ``latest`` just fixed) and the earlier slices' measured times are only known now. The slice's
        config is the run's config plus the plan's ``exit_interval`` / ``extra_save_iters`` (written
        under its own content hash; nothing else differs, ``train_iters`` included)."""
        import dataclasses

        from neoxflow.neox import slices
        from neoxflow.neox.config_files import config_hash, merge_config, render_config
        from neoxflow.neox.launch import launch_spec_for_run, parse_time_limit, render_batch_script

        run = self._run
        profile, cfg = run["profile"], run["cfg"]
        resume = self._resume_iteration or 0
        measured = [
            slices.SliceTimes(**entry["times"])
            for entry in reversed(self._slices(context))
            if entry.get("times")
        ]
        times = slices.slice_times(measured, profile.raw)
        time_limit = self._plan.slice.time_limit or profile.cluster.time_limit
        try:
            plan = slices.plan_slice_for_config(
                cfg.config,
                resume_iteration=resume,
                times=times,
                time_limit_s=parse_time_limit(time_limit),
                stop_before_limit_s=profile.cluster.stop_before_limit_s,
                slack=slices.profile_slack(profile.raw),
            )
        except ValueError as err:
            raise AirflowFailException(f"cannot plan the slice from iteration {resume}: {err}") from err
        if not plan.submit:
            raise AirflowFailException(f"slice from iteration {resume} not submitted: {plan.reason}")
        merged = merge_config(cfg.config, plan.config_overrides)
        rendered = render_config(merged)
        slice_cfg = dataclasses.replace(
            cfg, config=merged, rendered=rendered, config_hash=config_hash(rendered)
        )
        self.hook.upload(rendered.encode(), slice_cfg.config_path)
        spec, template = launch_spec_for_run(
            profile,
            slice_cfg,
            job_name=self.job_name,
            code_dir=self._plan.layout.code_dir,
            time_limit=self._plan.slice.time_limit,
            exclude_nodes=run["excluded"],
        )
        self.script = render_batch_script(spec, template)
        self.output_path = spec.job_log_path("%j")
        self.log.info(
            "Slice from iteration %s (%s): %s", resume, times.source if times else "no times", plan.reason
        )
        return {
            "slice": {
                "kind": plan.kind,
                "resume_iteration": resume,
                "stop_iteration": plan.stop_iteration,
                "extra_save": plan.extra_save,
                "exit_interval": plan.config_overrides.get("exit_interval"),
                "expected_end_s": plan.expected_end_s,
                "deadline_s": plan.deadline_s,
                "reason": plan.reason,
                "config_path": slice_cfg.config_path,
                "times": dataclasses.asdict(times) if times is not None else None,
            }
        }

    def _point_latest_at_newest_complete(self) -> int | None:
        from neoxflow.neox.checkpoint_listing import expectation_from_dict, read_listing
        from neoxflow.neox.checkpoints import resume_plan

        listing = read_listing(self.hook, self.listing_python, self.listing_script, self.save_dir)
        decision = resume_plan(listing, expectation_from_dict(self.expectation))
        self.log.info("Resume point before submitting: %s", decision.reason)
        resume = decision.checkpoint.iteration if decision.checkpoint is not None else None
        if decision.action == "write":
            self.hook.upload(decision.content.encode(), posixpath.join(self.save_dir, "latest"))
        elif decision.action == "remove":
            self.hook.run(f"rm -f {shlex.quote(posixpath.join(self.save_dir, 'latest'))}")
        return resume

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any],
        record: dict[str, Any] | None = None,
        checkpoints: list[dict[str, Any]] | None = None,
    ) -> Any:
        self._configure(context)
        try:
            return super().execute_complete(context, event, record=record, checkpoints=checkpoints)
        except SlurmJobFailed as failure:
            self._apply_resume_policy(context, failure)
            raise

    def _resume_shape(self, excluded: Sequence[str]) -> int:
        """The node count of the slice that resumes after a node failure, decided once, then: the run's
        planned count while enough healthy nodes (spares included) remain outside ``excluded``, so the world
        size and with it the model stay exactly the same; fewer only when the profile allows shrinking
        (``shrink_on_node_failure``) and the partition has no spare; else the same count (it queues)."""
        profile = self._plan.load_profile()  # only after a node failure: its partition and shrink rule
        wanted = self._plan.slice.nodes
        usable = usable_nodes(self.hook, profile.cluster.partition, excluded)
        if usable >= wanted:
            self.log.info("Resuming on %d node(s) without %s: %d usable", wanted, list(excluded), usable)
            return wanted
        if profile.cluster.shrink_on_node_failure:
            shrunk = max(1, usable)
            self.log.warning(
                "Only %d usable node(s) without %s: resuming on %d instead of %d (the world size changes: "
                "continuity, not bit parity, with an uninterrupted run)",
                usable,
                list(excluded),
                shrunk,
                wanted,
            )
            return shrunk
        self.log.warning(
            "Only %d usable node(s) without %s: the %d-node slice waits in the queue",
            usable,
            list(excluded),
            wanted,
        )
        return wanted

    def _apply_resume_policy(self, context: Context, failure: SlurmJobFailed) -> None:
        from neoxflow.notifiers.factory import send_alert

        history = self._history(context)
        status = failure.record.get("status") or {}
        nodes = ",".join(t.get("nodes", "") for t in status.get("tasks", []) if t.get("nodes"))
        stalled = isinstance(failure, TrainingStalled)
        outcome = Outcome.INFRA_FAILURE if stalled else failure.outcome
        bad_nodes = failed_nodes(self.hook, nodes) if outcome is Outcome.INFRA_FAILURE else []
        history["attempts"].append(
            {
                "job_id": failure.record.get("job_id"),
                "state": "STALLED" if stalled else status.get("state"),
                "outcome": outcome.value,
                "nodes": nodes,
                "failed_nodes": bad_nodes,
            }
        )
        history["excluded"] = sorted(set(history["excluded"]) | set(bad_nodes))
        if bad_nodes:
            history["nodes"] = self._resume_shape(history["excluded"])
        store = context.get("task_state_store")
        if store is not None:
            store.set("resume_history", history)
        context["ti"].xcom_push(key="resume_history", value=history)
        if stalled:
            send_alert("stall", context, detail=str(failure))
        if outcome is Outcome.INFRA_FAILURE:
            if len(history["attempts"]) > self.max_resumes:
                send_alert("give_up", context, detail=f"{len(history['attempts'])} infrastructure failures")
                raise AirflowFailException(
                    f"giving up after {len(history['attempts'])} infrastructure failures: {failure}"
                )
            self.log.warning(
                "Infrastructure failure (%s): the retry resumes from the latest complete checkpoint%s",
                status.get("state"),
                f" without {bad_nodes}" if bad_nodes else "",
            )
            return
        raise AirflowFailException(str(failure)) from failure
