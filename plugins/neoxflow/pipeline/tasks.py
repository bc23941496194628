"""The Python tasks of pythia_pretrain that plan the run and prepare its data (the DAG file only wires
them). Each talks to the cluster over the Slurm SSH hook or to S3 through the amazon provider; none moves
training data itself. The other tasks, by job: ``record_tasks`` (run of record, lease),
``attention_tasks`` (continuation), ``resume_task`` (before a slice), ``report_task`` (export, report).
"""

from __future__ import annotations

import json
import logging
import posixpath
import shlex
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from neoxflow.data.shards import shard_stem
from neoxflow.pipeline import connections, record
from neoxflow.pipeline.attention_tasks import clear_attention
from neoxflow.pipeline.plan import (
    cluster_code_files,
    dataset_selection,
    manifest_texts,
    plan_choices_line,
    plan_run,
)
from neoxflow.pipeline.record_tasks import create_record, read_record
from neoxflow.pipeline.run_plan import RunPlan

log = logging.getLogger(__name__)
DRY_RUN_MANIFEST_LINES = 8  # a dry run's log shows the head of each manifest, not 1025 lines
q = shlex.quote


def make_plan(params: dict[str, Any], run_id: str = "") -> dict[str, Any]:
    """Validate the trigger form and render everything, starting from the run of record when the run has
    one (pipeline/record.py); a dry run logs every script and config and writes nothing.

    A run that waits for a person after an application failure (``<run>.attention.json``) is continued
    only by a person: the continuation's DAG runs (``continue__...``) stop here; any other trigger is a
    person's, and clears the mark."""
    from neoxflow.pipeline.request import RequestError

    form = dict(params)
    try:
        checkpoint_dir = checkpoint_dir_of(form)
        if not form.get("dry_run"):
            clear_attention(checkpoint_dir, by_person=not run_id.startswith("continue__"))
        recorded_at = record.record_path(checkpoint_dir)
        recorded = read_record(recorded_at)
        form = record.merge_form(form, recorded)
        plan = plan_run(form)
        planned = record.record_from_plan(plan, form)
        if recorded is not None:
            record.check_against(recorded, planned)
    except RequestError as err:
        raise AirflowFailException(f"invalid trigger form: {err}") from None
    except (ValueError, OSError) as err:
        raise AirflowFailException(str(err)) from None
    created = False
    if recorded is None and not plan["dry_run"]:
        created = create_record(planned, recorded_at)
    plan["record"] = {"path": recorded_at, "fixed_hash": planned.fixed_hash, "created": created}
    log.info(
        "Run of record %s (fixed part %s): %s",
        plan["run_name"],
        planned.fixed_hash,
        "created now" if created else "continued" if recorded is not None else "none yet (dry run)",
    )
    log.info(plan_choices_line(plan["config"]))
    if plan["dry_run"]:
        log.info(
            "DRY RUN of %s - nothing will be submitted. Rendered NeoX config (%s):\n%s",
            plan["run_name"],
            plan["config"]["path"],
            plan["config"]["rendered"],
        )
        log.info(
            "--- train: %s (%s)\n%s",
            plan["train"]["job_name"],
            plan["train"]["template"],
            plan["train"]["script"],
        )
        export = plan["export"]
        log.info(
            "--- export: %s/%s (shown for %s; at export time: %s)\n%s",
            export["remote_dir"],
            export["job_name"],
            ", ".join(export["tags"]),
            export["tags_at_export"],
            export["script"],
        )
        for step, job in plan["data"].items():
            if isinstance(job, dict) and "script" in job:
                log.info("--- %s: %s/%s\n%s", step, job["remote_dir"], job["job_name"], job["script"])
        for path, text in manifest_texts(plan).items():
            lines = text.splitlines()
            shown = "\n".join(lines[:DRY_RUN_MANIFEST_LINES])
            more = (
                f"\n... {len(lines) - DRY_RUN_MANIFEST_LINES} more"
                if len(lines) > DRY_RUN_MANIFEST_LINES
                else ""
            )
            log.info("--- manifest %s (%d lines)\n%s%s", path, len(lines), shown, more)
    log.info("%s", plan_summary(plan))
    return plan


def plan_summary(plan: dict[str, Any]) -> str:
    """The plan in one line for the task log (the plan task does not log its return value: a screen of
    dict; the whole plan is its XCom and the Training view shows it)."""
    cfg = plan["config"]
    return (
        f"Plan of {plan['run_name']}: Pythia {cfg['size']} on {cfg['nodes']} node(s) x {cfg['gpus_per_node']}"
        f" GPU(s), train_iters {cfg['train_iters']}, config {cfg['hash']} ({cfg['path']}), "
        f"{len(plan['manifests'])} manifest(s), S3 s3://{plan['s3']['bucket']}/{plan['s3']['prefix']}"
        f"{', DRY RUN' if plan['dry_run'] else ''}; the whole plan is the task's XCom"
    )


def checkpoint_dir_of(form: dict[str, Any]) -> str:
    """Where the run's checkpoints (and so its record) live: the form's run name in its profile."""
    from neoxflow.neox.profile_loader import load_profile
    from neoxflow.pipeline.request import parse_request

    request = parse_request(form)
    return load_profile(request.profile).run_paths(request.run_name).checkpoint_dir


def ship_code(plan: dict[str, Any]) -> str:
    """Copy the profile's cluster code (include/cluster; the stand-in too locally) to <fsx>/code/<content
    hash>/ once; make sure the S3 bucket exists and holds the run of record."""
    run = RunPlan.from_dict(plan)
    if run.dry_run:
        raise AirflowSkipException("dry run")
    hook = connections.slurm_hook()
    code_dir = run.layout.code_dir
    marker = posixpath.join(code_dir, ".complete")
    status, _, _ = hook.run(f"test -f {q(marker)}", check=False)
    if status != 0:
        for name, data in cluster_code_files(run.load_profile()).items():
            hook.upload(data, posixpath.join(code_dir, name), mode=0o755)
        hook.upload(run.fixed.code_hash.encode(), marker)
        log.info("Shipped cluster code to %s", code_dir)
    else:
        log.info("Cluster code %s already on the cluster", code_dir)
    s3, bucket = connections.s3_hook(), run.fixed.s3_bucket
    if not s3.check_for_bucket(bucket):
        s3.create_bucket(bucket_name=bucket)
        log.info("Created bucket %s", bucket)
    ship_manifests(plan, hook, s3)
    # the run of record's durable copy, beside the run's report (FSx scratch can be lost; S3 is not)
    _, text, _ = hook.run(record.read_command(plan["record"]["path"]))
    if text.strip():
        key = posixpath.join(run.fixed.s3_prefix.strip("/"), "runs", run.run_name, record.RECORD_NAME)
        s3.load_bytes(text, key=key, bucket_name=bucket, replace=True)
    return code_dir


def ship_manifests(plan: dict[str, Any], hook: Any, s3: Any) -> None:
    """Place the manifests the plan points to on FSx (where the data jobs read them) and in S3 (the
    durable copy). Each is named by its content's hash, so one that exists is the right one: skipped."""
    texts = manifest_texts(plan)
    prefix = posixpath.join(plan["s3"]["prefix"].strip("/"), "manifests")
    for path, text in texts.items():
        status, _, _ = hook.run(f"test -s {q(path)}", check=False)
        if status != 0:
            hook.upload(text.encode(), path)
            log.info("Shipped manifest %s (%d lines)", path, text.count("\n"))
        key = posixpath.join(prefix, posixpath.basename(path))
        if not s3.check_for_key(key, bucket_name=plan["s3"]["bucket"]):
            s3.load_string(text, key=key, bucket_name=plan["s3"]["bucket"])


def dataset_needs_work(plan: dict[str, Any]) -> bool:
    """short_circuit: False (skip fetch/stage/tokenize/merge) when the run's dataset is built.

    A dataset's folder is named by what it is built from (``plan.dataset_identity``) and its summary is
    written last, so a summary means it is done, and no summary means no run ever trained on it (training
    reads the summary first): that one is built. A dataset that has its summary but no longer validates,
    or was built from other shards than its name says, is never rebuilt in place (NeoX's index maps beside
    it would go stale): that needs a person.
    """
    run = RunPlan.from_dict(plan)
    if run.dry_run:
        return False
    lay = run.layout
    hook = connections.slurm_hook()
    summary = lay.data_path + ".summary.json"
    status, _, _ = hook.run(f"test -s {q(summary)}", check=False)
    if status != 0:
        log.info("Dataset %s needs building (dataset id %s)", lay.data_path, run.fixed.dataset["id"])
        return True
    cmd = f"{q(run.fixed.python)} {q(lay.code_dir + '/validate_dataset.py')} {q(lay.data_path)}"
    status, out, err = hook.run(cmd, check=False)
    other = selection_mismatch(json.loads(hook.read_file(summary)), plan) if status == 0 else None
    if status != 0 or other:
        why = other or (err or out).decode().strip()[:300]
        raise AirflowFailException(
            f"dataset {lay.data_path} was built but {why}. Datasets are never rebuilt in place; "
            "move its folder aside after checking no run trains on it, then trigger again."
        )
    log.info(
        "Dataset %s exists and validates (%s): data stages skipped",
        lay.data_path,
        out.decode().strip()[:300],
    )
    return False


def selection_mismatch(summary: dict[str, Any], plan: dict[str, Any]) -> str | None:
    """Why the merged dataset described by ``summary`` was not built from the plan's shard selection,
    or None when it was. A run asking for other shards must not train on another selection's data."""
    lay = plan["layout"]
    built = {p for p in summary.get("datasets", {}) if p != lay["data_path"]}
    names = dataset_selection(plan["dataset"]).names()
    wanted = {posixpath.join(lay["tokens_dir"], f"{shard_stem(name)}_text_document") for name in names}
    if built == wanted:
        return None
    differences = []
    if wanted - built:
        differences.append("missing " + ", ".join(sorted(posixpath.basename(p) for p in wanted - built)))
    if built - wanted:
        differences.append("not selected " + ", ".join(sorted(posixpath.basename(p) for p in built - wanted)))
    return f"it was built from other shards ({'; '.join(differences)})"


def read_data_summary(plan: dict[str, Any]) -> dict[str, Any]:
    run = RunPlan.from_dict(plan)
    if run.dry_run:
        raise AirflowSkipException("dry run")
    path = run.layout.data_path + ".summary.json"
    summary = json.loads(connections.slurm_hook().read_file(path))
    log.info("Dataset: %s", json.dumps(summary)[:2000])
    return summary
