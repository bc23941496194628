"""The export job (complete checkpoints FSx -> S3), planned with the run and rendered again after each slice.

Which checkpoints an export names is known only after a slice (every complete one then), so
``report_task.plan_export`` renders the job again; the plan renders it with the same function for the
run's last checkpoint. Everything but the ``--tag`` arguments comes from the plan and the profile, so
every check the export job runs has run when the plan passes, and a dry run shows the script.
"""

from __future__ import annotations

import posixpath
from typing import Any

from neoxflow.neox.export import MAX_TAGS, ExportSpec, export_prefix, render_export_job
from neoxflow.neox.profile import Profile
from neoxflow.neox.run_config import RunConfig
from neoxflow.neox.slices import save_iterations
from neoxflow.slurm.naming import run_job_name
from neoxflow.slurm.validate import UnsafeValueError

#: Which profile key or form field an export job's field comes from (the plan names those, not the spec's).
EXPORT_FIELD_SOURCES = {
    "job_name": "run_name",
    "run": "run_name",
    "bucket": "s3.bucket",
    "prefix": "s3.prefix",
    "keep_last": "export.keep_last",
    "python": "cluster.python",
    "tags": "checkpoint_interval",
    "log_dir": "fsx.runs_dir",
    "scripts_dir": "fsx.code_dir",
    "save_dir": "fsx.checkpoints_dir",
}


def export_job(plan: dict[str, Any], profile: Profile, tags: tuple[str, ...]) -> dict[str, Any]:
    """The export job (checkpoints FSx -> S3) for ``tags``: one function for the plan, which renders it for
    the run's last checkpoint (a dry run shows it; its checks run before anything is submitted), and for
    ``plan_export``, which names every complete checkpoint it finds after a slice. Only the ``--tag``
    arguments differ between the two."""
    lay = plan["layout"]
    job_name = run_job_name("export", plan["run_name"])
    spec = ExportSpec(
        job_name=job_name,
        log_dir=posixpath.join(lay["jobs_dir"], job_name),
        scripts_dir=lay["code_dir"],
        save_dir=lay["checkpoint_dir"],
        bucket=plan["s3"]["bucket"],
        prefix=export_prefix(plan["s3"]["prefix"]),
        run=plan["run_name"],
        tags=tuple(tags),
        keep_last=profile.export_keep_last,
        python=profile.cluster.python,
        sbatch=profile.cluster.scheduling(),
    )
    try:
        script = render_export_job(spec)
    except UnsafeValueError as err:
        source = EXPORT_FIELD_SOURCES.get(err.field.split("[")[0], f"cluster.{err.field}")
        raise ValueError(f"export job ({source}): {err}") from None
    return {
        "job_name": job_name,
        "remote_dir": lay["jobs_dir"],
        "script": script,
        "files": {},
        "array": None,
        "output": None,
        "tags": list(spec.tags),
        "s3_prefix": f"s3://{spec.bucket}/{spec.prefix}/{spec.run}/",
    }


def planned_export(plan: dict[str, Any], profile: Profile, cfg: RunConfig) -> dict[str, Any]:
    """The export job as the plan shows it: rendered for the run's final checkpoint (NeoX always saves at
    the end of training). With ``export.keep_last`` 0 nothing is pruned, so the last export names every
    checkpoint the run saved: that count must fit one export job too."""
    train_iters = int(cfg.config["train_iters"])
    saves = save_iterations(
        0, train_iters, cfg.config.get("checkpoint_factor"), cfg.config.get("extra_save_iters")
    )
    if profile.export_keep_last == 0 and len(saves) > MAX_TAGS:
        raise ValueError(
            f"export job (checkpoint_interval): the run saves {len(saves)} checkpoints and export.keep_last "
            f"is 0 (keep all), so its last export would name more than {MAX_TAGS}; raise "
            "checkpoint_interval or set export.keep_last"
        )
    job = export_job(plan, profile, (f"global_step{train_iters}",))
    return {**job, "tags_at_export": "every complete checkpoint"}
