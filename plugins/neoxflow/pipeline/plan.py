"""Plan a pretraining run: every path, script and manifest, computed without touching the cluster.

Pure functions from (RunRequest, Profile) to JSON-serialisable plans that the DAG's tasks carry through
XCom and the Slurm operators submit. A dry run shows exactly these plans. A plan stays small whatever the
selection (all 1024 shards: a few KB): per-shard lists are manifests named by their hash, which the plan
points to and ``prepare.ship_code`` places (``manifest_texts`` derives them again and checks the hashes).
Paths follow the profile:

    <fsx>/code/<hash>/                 include/cluster (+ the stand-in locally), shipped once per content hash
    <fsx>/data/c4/raw/<shard>          staged C4 shards (S3 copy is the durable one)
    <fsx>/data/manifests/<sha256>.tsv  the data jobs' per-shard lines, named by content (S3 has a copy)
    <fsx>/data/c4/tokens/<tokens_id>/<stem>_text_document.{bin,idx}   per tokenizer and options
    <fsx>/data/<dataset folder>/<dataset_id>/<name>.{bin,idx}         data_path: the merged dataset NeoX
                                       trains on, named by what it is built from (never rebuilt in place)
    <fsx>/checkpoints/<run>/           NeoX save == load
    <fsx>/runs/<run>/{configs,logs,jobs}/
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import shlex
from typing import Any

from neoxflow.data.fsx import FsxTaskError, client_token, import_task_request
from neoxflow.data.render import (
    ArraySpec,
    RenderedArray,
    array_directive,
    manifest_digest,
    render_fetch_array,
    render_stage_array,
    render_tokenize_array,
)
from neoxflow.data.shards import (
    DEFAULT_URL_TEMPLATE,
    ManifestEntry,
    ShardSelection,
    TokenizeEntry,
    build_manifest,
    build_tokenize_manifest,
    compact_indices,
    format_manifest,
    tokenizer_entry,
)
from neoxflow.neox.launch import LOCAL_TEMPLATE
from neoxflow.neox.profile import Profile
from neoxflow.neox.profile_loader import load_profile
from neoxflow.neox.run_config import RunConfig, build_run_config
from neoxflow.paths import CLUSTER_CODE, STANDIN_CODE
from neoxflow.pipeline.export_job import planned_export
from neoxflow.pipeline.request import RunRequest
from neoxflow.pipeline.run_plan import (
    FixedPart,
    JobNames,
    RunLayout,
    RunPlan,
    SlicePart,
    checkpoint_expectation,
    profile_digest,
)
from neoxflow.slurm.naming import run_job_name, train_job_name
from neoxflow.slurm.template import render_template
from neoxflow.slurm.validate import check_remote_path

q = shlex.quote
#: The one job that merges the tokenized shards into the dataset and validates it.
MERGE_TEMPLATE = "merge_dataset.sbatch"
#: The data steps that are Slurm arrays over a manifest.
ARRAY_STEPS = ("fetch", "stage", "tokenize")
#: How tokenize_array.sbatch runs preprocess_data.py on every shard: part of each dataset's identity.
PREPROCESS = {
    "tokenizer_type": "HFTokenizer",
    "jsonl_keys": ["text"],
    "append_eod": True,
    "dataset_impl": "mmap",
}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def dataset_identity(selection: ShardSelection, profile: Profile) -> dict[str, Any]:
    """What a dataset is built from, and the ids that name its folders.

    A dataset is never rebuilt in place: NeoX caches index maps (``<data_path>_*_indexmap_*.npy``) beside
    it and reuses them whenever they exist, so a dataset rebuilt under the same name is read through stale
    maps (wrong samples, no error). Naming the folder by shards, source, tokenizer and options makes one
    folder one content; runs with the same selection share it. ``tokens_id`` names the per-shard outputs,
    which depend only on the tokenizer and the options.
    """
    tokenizer = (
        {"sha256": profile.tokenizer_sha256}
        if profile.tokenizer_sha256
        else {"source": profile.tokenizer_source}
    )
    tokens = {"tokenizer": tokenizer, "preprocess": PREPROCESS}
    built_from = {"shards": selection.names(), "url_template": selection.url_template, **tokens}
    # the id hashes every shard name; the plan carries the selection in the form's syntax ("0-1023")
    return {
        "id": _digest(built_from),
        "tokens_id": _digest(tokens),
        **built_from,
        "shards": compact_indices(selection.train),
    }


def dataset_selection(dataset: dict[str, Any]) -> ShardSelection:
    """The shard selection a plan's ``dataset`` names (its compact ``shards`` and its ``url_template``)."""
    return ShardSelection.parse(dataset["shards"], url_template=dataset["url_template"])


def cluster_code_files(profile: Profile) -> dict[str, bytes]:
    """The files shipped to ``profile``'s cluster, by name: include/cluster/*.py, plus the CPU stand-in
    trainer (include/cluster/standin/*.py, flat beside them, where the local template's launcher path
    expects it) only when the profile trains with the local stand-in template. A production profile's
    code, and so its code hash (part of the run's identity), holds no stand-in."""
    folders = [CLUSTER_CODE, STANDIN_CODE] if profile.cluster.template == LOCAL_TEMPLATE else [CLUSTER_CODE]
    return {p.name: p.read_bytes() for folder in folders for p in sorted(folder.glob("*.py"))}


def code_hash(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def layout(profile: Profile, run_name: str, code_digest: str, dataset: dict[str, Any]) -> RunLayout:
    paths = profile.run_paths(run_name)
    data_root = posixpath.join(profile.data_dir, "c4")
    values = RunLayout(
        fsx_root=profile.fsx_root,
        code_dir=posixpath.join(profile.code_dir, code_digest),
        raw_dir=posixpath.join(data_root, "raw"),
        tokens_dir=posixpath.join(data_root, "tokens", dataset["tokens_id"]),
        data_path=profile.data_path(dataset["id"]),
        tokenizer_fsx=profile.tokenizer_path,
        checkpoint_dir=paths.checkpoint_dir,
        run_dir=paths.run_dir,
        jobs_dir=posixpath.join(paths.run_dir, "jobs"),
        lock_dir=paths.checkpoint_dir + ".lock",
        manifest_dir=posixpath.join(profile.data_dir, "manifests"),
    )
    for name, value in values.to_dict().items():
        check_remote_path(value, name)
    return values


def selection_for(request: RunRequest, profile: Profile) -> ShardSelection:
    """The user's shard choice, with the profile's source URL unless the form gave another one."""
    template = profile.shard_url_template
    if template and request.shards.url_template == DEFAULT_URL_TEMPLATE:
        return ShardSelection.parse(",".join(str(i) for i in request.shards.train), url_template=template)
    return request.shards


def run_config(
    request: RunRequest, profile: Profile, *, nodes: int | None = None, check_vocab_file: bool | None = None
) -> RunConfig:
    return build_run_config(
        request.model_size or profile.default_size,
        profile,
        request.run_name,
        nodes=nodes or request.nodes,
        gpus_per_node=request.gpus_per_node,
        overrides=request.neox_overrides(),
        check_vocab_file=check_vocab_file,
        dataset_id=dataset_identity(selection_for(request, profile), profile)["id"],
    )


def slice_config(run: RunPlan, profile: Profile, nodes: int) -> RunConfig:
    """The run's config for a slice on ``nodes`` nodes, before its submit.

    At the planned shape it is the plan's own config (not derived again: the plan is the one place that
    does), checked once more now that the data stages have run (the vocab file exists where Airflow sees
    the cluster's file system; at plan time it may not have been staged yet). A shape changed by a node
    failure is derived again from the plan's request for that shape (its batch split follows the world
    size); what defines the model is the run of record's and does not change with it."""
    from neoxflow.neox.config_checks import validate_config

    if nodes != run.slice.nodes:
        return run_config(run.request, profile, nodes=nodes)
    planned = run.documents["config"]
    config = json.loads(planned["rendered"])
    gpus = run.slice.gpus_per_node
    errors = validate_config(
        config, nodes, gpus, check_vocab_file=profile.fsx_visible_to_airflow, run_name=run.run_name
    )
    return RunConfig(
        size=run.fixed.model_size,
        run_name=run.run_name,
        nodes=nodes,
        gpus_per_node=gpus,
        config=config,
        rendered=planned["rendered"],
        config_hash=planned["hash"],
        errors=errors,
        paths=profile.run_paths(run.run_name),
    )


def _array_spec(profile: Profile, lay: RunLayout, step: str, run_name: str, parallelism: int) -> ArraySpec:
    job_name = run_job_name(step, run_name)
    cluster = profile.cluster
    return ArraySpec(
        job_name=job_name,
        job_dir=posixpath.join(lay.jobs_dir, job_name),
        scripts_dir=lay.code_dir,
        manifest_dir=lay.manifest_dir,
        python=cluster.python,
        parallelism=parallelism,
        image=cluster.container_image if step == "tokenize" else None,
        container_mounts=",".join(cluster.container_mounts) or None if step == "tokenize" else None,
        sbatch=cluster.scheduling(),
    )


def _job_plan(spec: ArraySpec, rendered: RenderedArray) -> dict[str, Any]:
    """A data step's job: its script, and the array the submit fits to the cluster's MaxArraySize
    (``array_lines`` manifest lines, ``array_parallelism`` tasks at a time; ``array`` as planned for
    Slurm's default limit, what a dry run shows)."""
    return {
        "job_name": spec.job_name,
        "remote_dir": posixpath.dirname(spec.job_dir),
        "script": rendered.script,
        "files": {},
        "array": array_directive(rendered.array_tasks, spec.parallelism),
        "array_lines": rendered.lines,
        "array_parallelism": spec.parallelism,
        "manifest": {"path": rendered.manifest_path, "sha256": rendered.manifest_sha256},
        "output": None,
    }


def _data_entries(
    selection: ShardSelection, profile: Profile, lay: RunLayout
) -> tuple[list[ManifestEntry], list[TokenizeEntry]]:
    """The data jobs' lines: what fetch and stage move (the shards, then the tokenizer), and what tokenize
    reads and writes (the shards)."""
    prefix = profile.s3_prefix.strip("/")
    entries = build_manifest(
        selection, s3_bucket=profile.s3_bucket, s3_prefix=f"{prefix}/c4/en", fsx_dir=lay.raw_dir
    )
    tokenizer = tokenizer_entry(
        profile.tokenizer_source,
        s3_bucket=profile.s3_bucket,
        s3_prefix=f"{prefix}/tokenizers",
        fsx_dir=posixpath.dirname(lay.tokenizer_fsx),
    )
    return [*entries, tokenizer], build_tokenize_manifest(entries, tokens_dir=lay.tokens_dir)


def manifest_texts(plan: dict[str, Any]) -> dict[str, str]:
    """The texts of the manifests a plan points to, by the path it names them at: derived again from the
    plan's compact selection and layout, each checked against the hash the plan recorded (a code change
    between planning and shipping must not put other lines under a planned name)."""
    run = RunPlan.from_dict(plan)
    profile = run.load_profile()
    moving, tokenize = _data_entries(dataset_selection(run.fixed.dataset), profile, run.layout)
    texts = {format_manifest(moving), format_manifest(tokenize)}
    by_hash = {manifest_digest(text): text for text in texts}
    out: dict[str, str] = {}
    for path, sha in run.documents["manifests"].items():
        if sha not in by_hash:
            raise ValueError(f"manifest {path}: the plan's lines cannot be derived again (sha256 {sha})")
        out[path] = by_hash[sha]
    return out


def data_plans(request: RunRequest, profile: Profile, lay: RunLayout) -> dict[str, dict[str, Any]]:
    """fetch (source -> S3), stage (S3 -> FSx), tokenize (per shard), merge+validate (one job)."""
    moving, tok_entries = _data_entries(selection_for(request, profile), profile, lay)
    parallelism = profile.data_parallelism
    plans: dict[str, dict[str, Any]] = {}
    for step, render in (("fetch", render_fetch_array), ("stage", render_stage_array)):
        spec = _array_spec(profile, lay, step, request.run_name, parallelism)
        plans[step] = _job_plan(spec, render(spec, moving))
    spec = _array_spec(profile, lay, "tokenize", request.run_name, parallelism)
    rendered = render_tokenize_array(spec, tok_entries, vocab_file=lay.tokenizer_fsx)
    plans["tokenize"] = _job_plan(spec, rendered)
    plans["merge"] = merge_plan(profile, lay, request.run_name, rendered.manifest_path)
    prefix = profile.s3_prefix.strip("/")
    plans["import"] = import_plan(profile, lay, f"s3://{profile.s3_bucket}/{prefix}/c4/en/")
    return plans


def import_plan(profile: Profile, lay: RunLayout, repository_path: str) -> dict[str, Any] | None:
    """The FSx data repository import step, when the profile declares an association (DRA) linking the
    raw shard folder to the shards' S3 prefix; None (the stage job copies) otherwise.

    Profile keys (under ``fsx.data_repository``): ``file_system_id`` (empty: no DRA), ``aws_conn_id``,
    ``region_name``, ``poll_interval`` (seconds). The stage job still runs after the import: it finds
    the imported files, verifies their checksums against S3 (reading them loads them into Lustre)
    and copies only what the import did not bring.
    """
    dra = profile.data_repository  # its keys typed when the profile was loaded
    if dra is None:
        return None
    fs_id = dra["file_system_id"]
    try:  # validates the id and the paths now, before anything is submitted
        import_task_request(fs_id, [lay.raw_dir], token=client_token("check"), mount_point=lay.fsx_root)
    except FsxTaskError as exc:
        raise ValueError(f"profile fsx.data_repository: {exc}") from None
    return {
        "file_system_id": fs_id,
        "paths": [lay.raw_dir],
        "mount_point": lay.fsx_root,
        "repository_path": repository_path,
        "aws_conn_id": dra["aws_conn_id"],
        "region_name": dra["region_name"],
        "poll_interval": dra["poll_interval"],
    }


def merge_plan(profile: Profile, lay: RunLayout, run_name: str, tokenize_manifest: str) -> dict[str, Any]:
    """One job: merge per-shard outputs into the dataset NeoX reads, then validate it and every shard.

    The shards are the tokenize manifest's lines (``--prefixes-from-manifest``: no command line grows with
    the selection). The summary (documents and tokens per shard) is written next to the dataset for the
    run's report.
    """
    summary = lay.data_path + ".summary.json"
    values = {
        "PYTHON": q(profile.cluster.python),
        "VALIDATE_SCRIPT": q(lay.code_dir + "/validate_dataset.py"),
        "MERGE_SCRIPT": q(lay.code_dir + "/merge_datasets.py"),
        "DATA_PATH": q(lay.data_path),
        "DATA_DIR": q(posixpath.dirname(lay.data_path)),
        "MANIFEST": q(tokenize_manifest),
        "SUMMARY": q(summary),
        "TOKENIZER": q(lay.tokenizer_fsx),
        "TOKENIZER_SHA256": q(profile.tokenizer_sha256 or ""),
    }
    job_name = run_job_name("merge", run_name)
    return {
        "job_name": job_name,
        "remote_dir": lay.jobs_dir,
        "script": render_template(MERGE_TEMPLATE, values),
        "files": {},
        "array": None,
        "output": None,
        "summary_path": summary,
    }


def train_plan(request: RunRequest, profile: Profile, cfg: RunConfig, lay: RunLayout) -> dict[str, Any]:
    """The first slice's batch script, rendered now: a time limit, image, mount or path the launch would
    refuse fails the plan (naming the field) before any data stage runs, and a dry run shows it."""
    from neoxflow.neox.launch import launch_spec_for_run, render_batch_script

    job_name = train_job_name(request.run_name)
    spec, template = launch_spec_for_run(
        profile, cfg, job_name=job_name, code_dir=lay.code_dir, time_limit=request.time_limit
    )
    return {"job_name": job_name, "template": template, "script": render_batch_script(spec, template)}


def slice_checks(profile: Profile, cfg: RunConfig, time_limit: str | None):
    """The checks ``train_slice`` runs on the run's config before each slice (its save iterations must be
    plannable: linear ``checkpoint_scale``, a whole ``checkpoint_factor``), run now for the first one:
    its slice plan without measured times (where the plan's slice part says it stops)."""
    from neoxflow.neox import slices
    from neoxflow.neox.launch import parse_time_limit

    try:
        return slices.plan_slice_for_config(
            cfg.config,
            resume_iteration=0,
            times=None,
            time_limit_s=parse_time_limit(time_limit or profile.cluster.time_limit),
            stop_before_limit_s=profile.cluster.stop_before_limit_s,
        )
    except ValueError as err:
        raise ValueError(f"training slices: {err}") from None


def plan_choices_line(config: dict[str, Any]) -> str:
    """One log line for a plan's ``config`` section: activation recomputation on or off and why (the
    estimate against the GPU's memory), and what was fitted to the image. Logged by every plan, so the
    dry run shows it beside the rendered config."""
    choice = config.get("recompute")
    line = "Activation recomputation: " + (
        f"{'on' if choice['recompute'] else 'off'} (neox.recompute {choice['mode']}): {choice['reason']}"
        if choice
        else "not decided (the config is invalid)"
    )
    if config.get("image_changes"):
        line += ". Fitted to the image: " + "; ".join(config["image_changes"])
    return line


def plan_run(conf: dict[str, Any]) -> dict[str, Any]:
    """Everything a run will do, from the trigger form: validated, rendered, decided once
    (:class:`RunPlan`), as the small JSON-serialisable dict the plan task returns."""
    from neoxflow.pipeline.request import parse_request

    request = parse_request(conf)
    profile = load_profile(request.profile)
    digest = code_hash(cluster_code_files(profile))
    dataset = dataset_identity(selection_for(request, profile), profile)
    lay = layout(profile, request.run_name, digest, dataset)
    cfg = run_config(request, profile, check_vocab_file=False)
    if not cfg.ok:
        raise ValueError("NeoX config invalid: " + "; ".join(f"{e.key}: {e.message}" for e in cfg.errors))
    train = train_plan(request, profile, cfg, lay)
    first_slice = slice_checks(profile, cfg, request.time_limit)
    standin = train["template"] == "train_local.sbatch"  # the stand-in trainer's checkpoints, or NeoX's
    # refuses a checkpoint layout the completeness rule cannot judge, before anything runs
    expectation = checkpoint_expectation(standin, cfg.config, cfg.nodes * cfg.gpus_per_node)
    data = data_plans(request, profile, lay)
    documents = {
        "config": {
            "hash": cfg.config_hash,
            "path": cfg.config_path,
            "rendered": cfg.rendered,
            "train_iters": cfg.config.get("train_iters"),
            "size": cfg.size,
            "nodes": cfg.nodes,
            "gpus_per_node": cfg.gpus_per_node,
            # why activation recomputation is on or off (memory estimate vs the GPU's memory) and what
            # was fitted to the image: the plan and the dry run say so (neox/memory.py, neox/image.py)
            "recompute": cfg.recompute.to_dict() if cfg.recompute else None,
            "image_changes": list(cfg.image_changes),
        },
        "train": train,
        "data": data,
        # the manifests the data jobs read (path -> sha256): prepare.ship_code places them on FSx and in S3
        "manifests": {data[s]["manifest"]["path"]: data[s]["manifest"]["sha256"] for s in ARRAY_STEPS},
    }
    run = RunPlan(
        request=request,
        fixed=FixedPart(
            run_name=request.run_name,
            profile=request.profile,
            profile_sha256=profile_digest(profile.raw),
            model_size=cfg.size,
            train_iters=int(cfg.config["train_iters"]),
            seq_length=int(cfg.config.get("seq_length") or 0) or None,
            code_hash=digest,
            # what the dataset is built from: part of the run of record's identity (pipeline/record.py)
            dataset=dataset,
            layout=lay,
            python=profile.cluster.python,
            s3_bucket=profile.s3_bucket,
            s3_prefix=profile.s3_prefix,
            jobs=JobNames.for_run(request.run_name),
            standin=standin,
        ),
        slice=SlicePart(
            nodes=cfg.nodes,
            gpus_per_node=cfg.gpus_per_node,
            time_limit=request.time_limit,
            micro_batch=cfg.config.get("train_micro_batch_size_per_gpu"),
            gradient_accumulation=cfg.config.get("gradient_accumulation_steps"),
            stop_iteration=first_slice.stop_iteration,
            expectation=dataclasses.asdict(expectation),
        ),
        dry_run=request.dry_run,
        documents=documents,
    )
    plan = run.to_dict()
    plan["export"] = planned_export(plan, profile, cfg)  # the same function plan_export renders with
    return plan
