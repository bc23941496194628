"""Before a training slice: decide where the run resumes, and whether a slice is needed at all.

``train.resume_point`` runs this before ``train.train_slice``; the operator fixes ``latest`` once more
before each submit of its own (a cleared ``train_slice`` does not run this task again). The job name it
looks for and the checkpoint layout it judges by are the plan's (``RunPlan``), the same the operator uses.
"""

from __future__ import annotations

import logging
import posixpath
import shlex
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from neoxflow.pipeline import connections
from neoxflow.pipeline.run_plan import RunPlan

log = logging.getLogger(__name__)
q = shlex.quote


def checkpoint_listing(run: RunPlan) -> dict[str, Any]:
    """The run's save folder as ``ckpt_listing.py`` sees it on the cluster (tags, files, ``latest``)."""
    from neoxflow.neox.checkpoint_listing import listing_script_path, read_listing

    lay = run.layout
    return read_listing(
        connections.slurm_hook(), run.fixed.python, listing_script_path(lay.code_dir), lay.checkpoint_dir
    )


def prepare_resume(
    plan: dict[str, Any], leave_timeout_s: float = 900.0, poll_s: float = 10.0
) -> dict[str, Any]:
    """Before a slice: no-op if this run's training job is active or the run is finished; otherwise point
    ``latest`` at the newest COMPLETE checkpoint (NeoX writes ``latest`` before the other ranks finish).

    A job that is COMPLETING, or whose owner file carries a cancel mark (a person stopped or cleared its
    task), is not active: it is leaving and will not train any more. Skipping for it would let a cleared
    run end "success" without training, and deciding while it still writes could read a half-written
    checkpoint. So wait (at most ``leave_timeout_s``, then fail so the retry asks again) until it has
    left the queue, then decide.
    """
    import time

    from neoxflow.neox.checkpoints import resume_plan
    from neoxflow.slurm import ownership
    from neoxflow.slurm.states import normalise_state

    run = RunPlan.from_dict(plan)
    if run.dry_run:
        raise AirflowSkipException("dry run")
    hook = connections.slurm_hook()
    job_name = run.fixed.jobs.train
    deadline = time.monotonic() + leave_timeout_s
    while True:
        rows = [row for row in hook.jobs_named(job_name) if not row.outcome.final]
        leaving, active = [], []
        for row in rows:
            job_id = row.job_id.split("_", 1)[0]
            cancelled = False
            if normalise_state(row.state) != "COMPLETING":  # a cancel the job has not acted on yet?
                path = ownership.owner_path(posixpath.join(run.layout.jobs_dir, job_name), job_id)
                _, out, _ = hook.run(ownership.read_owner_command(path), check=False)
                owner = ownership.parse_owner(out.decode("utf-8", "replace"))
                cancelled = owner is not None and owner.cancel_requested
            (leaving if cancelled or normalise_state(row.state) == "COMPLETING" else active).append(job_id)
        if active:
            raise AirflowSkipException(
                f"training job {active[0]} of run {run.run_name} is active: nothing to do"
            )
        if not leaving:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"training job {leaving[0]} of run {run.run_name} is still COMPLETING after "
                f"{leave_timeout_s:.0f}s: not deciding the resume point while it may still write"
            )
        log.info("Training job %s is COMPLETING (leaving): waiting before deciding", leaving[0])
        time.sleep(poll_s)
    listing = checkpoint_listing(run)
    decision = resume_plan(listing, run.expectation())
    target = run.fixed.train_iters
    log.info("Resume: %s", decision.reason)
    save = run.layout.checkpoint_dir
    if decision.action == "write":
        hook.upload(decision.content.encode(), posixpath.join(save, "latest"))
    elif decision.action == "remove":
        hook.run(f"rm -f {q(posixpath.join(save, 'latest'))}")
    if decision.iteration >= target:
        raise AirflowSkipException(f"run {run.run_name} already reached train_iters {target}: nothing to do")
    return {"resume_from": decision.iteration, "train_iters": target, "action": decision.action}
