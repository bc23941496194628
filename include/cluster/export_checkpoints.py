#!/usr/bin/env python3
"""Copy complete NeoX checkpoints FSx -> S3, verified, idempotent; optionally prune old ones on FSx.

Runs ON the cluster as a Slurm job (include/templates/export_checkpoints.sbatch); standard library plus
botocore/boto3's s3transfer, no neoxflow or airflow. Which tags are complete is decided on the Airflow
side by the completeness rule (plugins/neoxflow/neox/checkpoints.py) and passed with ``--tag``; this
script re-checks the basics (the folder exists, ``configs/`` holds a file, no empty file) and refuses a
tag that fails them rather than exporting half a checkpoint.

    python3 export_checkpoints.py --save-dir /fsx/checkpoints/run42 --dest s3://bucket/neoxflow/run42 \
        --tag global_step1000 --tag global_step2000 [--keep-last 2]

Layout in S3: ``<dest>/global_stepN/<relative path>`` for every file, each object carrying its
``sha256`` and ``size`` as metadata, then ``<dest>/global_stepN/neoxflow-export.json`` (the manifest:
every file's size and sha256), written LAST: a manifest exists only for a copy whose every object was
checked (HEAD: size and sha256 metadata) after its upload. A tag whose manifest exists and still matches
(every object present with the manifest's size and sha256, and the local files of the same sizes) is
skipped, so running the job again costs HEAD requests only. An object already present with the right
size and sha256 is not uploaded again (a rerun after a failure resumes).

Pruning (``--keep-last N``): a local ``global_stepN`` folder is deleted only if (a) it has a verified
copy in S3 (its manifest matches the objects and the local files), (b) it is not among the N newest
complete checkpoints, (c) it is not the newest complete checkpoint, and (d) ``latest`` does not name it.
Folders without a verified copy - partial saves included - are never touched.

The endpoint comes from ``AWS_ENDPOINT_URL`` (moto on the local cluster), credentials from the usual AWS
chain. Output: progress on stderr, one ``NEOXFLOW_RESULT {json}`` line on stdout. Exit codes: 0 done,
2 usage, 3 a tag refused or a copy that did not verify, 75 transient S3 trouble (retry the job).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time

import datamove
from datamove import EXIT_OK, EXIT_PERMANENT, PermanentError, TransientError, log

MANIFEST_NAME = "neoxflow-export.json"
MANIFEST_FORMAT = 1
TAG_RE = re.compile(r"^global_step(\d+)$")
HASH_CHUNK = 8 * 1024 * 1024


# ------------------------------------------------------------------------------------------ local side
def tag_iteration(tag: str) -> int:
    m = TAG_RE.match(tag)
    if not m:
        raise PermanentError(f"--tag {tag!r} is not of the form global_stepN")
    return int(m.group(1))


def local_files(tag_dir: str) -> dict[str, int]:
    """Relative path -> size of every file under ``tag_dir`` (sorted walk, symlinks not followed)."""
    files: dict[str, int] = {}
    for root, dirs, names in os.walk(tag_dir):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            files[os.path.relpath(path, tag_dir).replace(os.sep, "/")] = os.stat(path).st_size
    return files


def local_problems(tag_dir: str, files: dict[str, int]) -> list[str]:
    """Why this folder must not be exported (empty = looks complete)."""
    if not os.path.isdir(tag_dir):
        return [f"{tag_dir} is not a folder"]
    problems = []
    if not any(rel.startswith("configs/") for rel in files):
        problems.append("configs/ is missing or empty (NeoX writes it last: the save did not finish)")
    empty = [rel for rel, size in files.items() if size == 0]
    if empty:
        problems.append(f"empty file(s) {', '.join(empty[:3])} (a save that had just begun)")
    if not any(rel.endswith(".pt") for rel in files):
        problems.append("no .pt file")
    return problems


def _with_files(tag_dir: str) -> tuple[str, dict[str, int]]:
    return tag_dir, local_files(tag_dir)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- S3 side
def split_dest(dest: str) -> tuple[str, str]:
    """``s3://bucket/prefix/run`` -> (bucket, ``prefix/run``)."""
    bucket, key = datamove.parse_s3_uri(dest.rstrip("/"))
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise PermanentError(f"--dest {dest!r} has an empty, '.' or '..' path component")
    return bucket, key


def object_matches(head: dict | None, size: int, sha256: str) -> bool:
    """The object exists with this size and carries this sha256 in its metadata."""
    if head is None:
        return False
    meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
    return int(head.get("ContentLength", -1)) == size and meta.get("sha256") == sha256


def read_manifest(client, bucket: str, key: str) -> dict | None:
    from botocore.exceptions import ClientError

    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code, status = datamove.s3_error_code(exc)
        if status == 404 or code in ("NoSuchKey", "404", "NotFound"):
            return None
        raise datamove.classify_s3_error(exc, f"GET s3://{bucket}/{key}") from None
    try:
        manifest = json.loads(body)
    except json.JSONDecodeError:
        return None  # unreadable manifest: treat as not verified, the copy is redone
    return manifest if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None


def verified_copy(client, bucket: str, prefix: str, tag: str, tag_dir: str) -> tuple[bool, str]:
    """Is there a verified copy of this local folder in S3? (True, "") or (False, why not)."""
    manifest = read_manifest(client, bucket, f"{prefix}/{tag}/{MANIFEST_NAME}")
    if manifest is None:
        return False, "no manifest in S3"
    listed = manifest.get("files") or {}
    here = local_files(tag_dir) if os.path.isdir(tag_dir) else {}
    if set(listed) != set(here):
        return False, "the local files differ from the manifest"
    for rel, info in listed.items():
        if here[rel] != info.get("size"):
            return False, f"{rel}: local size {here[rel]} != manifest {info.get('size')}"
        head = datamove.head_object(client, bucket, f"{prefix}/{tag}/{rel}")
        if not object_matches(head, int(info.get("size", -1)), str(info.get("sha256"))):
            return False, f"s3://{bucket}/{prefix}/{tag}/{rel} is missing or does not match the manifest"
    return True, ""


def upload_tag(client, transfer, bucket: str, prefix: str, tag: str, tag_dir: str, files: dict[str, int]):
    """Upload (or keep) every file, verify each by HEAD, then write the manifest. Returns bytes sent."""
    entries: dict[str, dict] = {}
    sent = 0
    for rel, size in files.items():
        path = os.path.join(tag_dir, rel)
        digest = sha256_file(path)
        key = f"{prefix}/{tag}/{rel}"
        if not object_matches(datamove.head_object(client, bucket, key), size, digest):
            started = time.monotonic()
            try:
                transfer.upload_file(
                    path, bucket, key, extra_args={"Metadata": {"sha256": digest, "size": str(size)}}
                )
            except Exception as exc:
                raise datamove.classify_s3_error(exc, f"upload {path} -> s3://{bucket}/{key}") from None
            sent += size
            rate = size / max(time.monotonic() - started, 1e-6) / datamove.MiB
            log(f"  {rel}: {size} bytes uploaded ({rate:.1f} MiB/s)")
        head = datamove.head_object(client, bucket, key)
        if not object_matches(head, size, digest):
            got = None if head is None else (head.get("ContentLength"), (head.get("Metadata") or {}))
            raise PermanentError(
                f"s3://{bucket}/{key} did not verify: want size {size} sha256 {digest}, got {got}"
            )
        if os.path.getsize(path) != size:
            raise TransientError(f"{path} changed size while being exported")
        entries[rel] = {"size": size, "sha256": digest}
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "neoxflow-checkpoint-export",
        "tag": tag,
        "iteration": tag_iteration(tag),
        "source": os.path.abspath(tag_dir),
        "files": entries,
        "total_bytes": sum(files.values()),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    key = f"{prefix}/{tag}/{MANIFEST_NAME}"
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    except Exception as exc:
        raise datamove.classify_s3_error(exc, f"PUT s3://{bucket}/{key}") from None
    return sent


# -------------------------------------------------------------------------------------------- pruning
def read_latest(save_dir: str) -> str | None:
    try:
        with open(os.path.join(save_dir, "latest"), "rb") as fh:
            return fh.read(4096).decode("utf-8", "replace").strip() or None
    except (FileNotFoundError, IsADirectoryError):
        return None


def prune_plan(complete: list[str], verified: set[str], keep_last: int, latest: str | None) -> dict:
    """Which tags to delete (pure): verified copies outside the newest ``keep_last``, never the newest
    complete one, never the one ``latest`` names. ``complete`` = tags known complete (any order)."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    ordered = sorted(set(complete), key=tag_iteration)
    keep = set(ordered[-keep_last:])
    if latest:
        keep.add(latest)
    delete = [t for t in ordered if t not in keep and t in verified]
    unverified = [t for t in ordered if t not in keep and t not in verified]
    return {"delete": delete, "keep": sorted(keep), "unverified": unverified}


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--save-dir", required=True, help="NeoX save folder on FSx")
    parser.add_argument("--dest", required=True, help="s3://bucket/prefix/<run>; tags go below it")
    parser.add_argument("--tag", action="append", default=[], help="a complete tag to export (repeat)")
    parser.add_argument("--keep-last", type=int, default=0, help="prune to the N newest (0 = no pruning)")
    parser.add_argument("--part-size", default="64MiB", help="multipart part size (e.g. 64MiB)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel part uploads per file")
    return parser.parse_args(argv)


def export(args: argparse.Namespace, client=None) -> dict:
    from boto3.s3.transfer import S3Transfer, TransferConfig

    save_dir = os.path.abspath(args.save_dir)
    bucket, prefix = split_dest(args.dest)
    tags = sorted(set(args.tag), key=tag_iteration)
    if args.keep_last < 0:
        raise PermanentError(f"--keep-last must be >= 0, got {args.keep_last}")
    part = datamove.parse_size(args.part_size)
    client = client or datamove.s3_client()
    transfer = S3Transfer(
        client,
        TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=args.concurrency),
    )
    result: dict = {
        "exported": [],
        "skipped": [],
        "refused": {},
        "pruned": [],
        "kept_unverified": {},
        "bytes": 0,
    }
    for tag in tags:
        tag_dir = os.path.join(save_dir, tag)
        files = local_files(tag_dir) if os.path.isdir(tag_dir) else {}
        problems = local_problems(tag_dir, files)
        if problems:
            log(f"{tag}: REFUSED: {'; '.join(problems)}")
            result["refused"][tag] = problems
            continue
        ok, why = verified_copy(client, bucket, prefix, tag, tag_dir)
        if ok:
            log(f"{tag}: verified copy already in s3://{bucket}/{prefix}/{tag}: skipped")
            result["skipped"].append(tag)
            continue
        log(f"{tag}: exporting {len(files)} file(s), {sum(files.values())} bytes ({why})")
        result["bytes"] += upload_tag(client, transfer, bucket, prefix, tag, tag_dir, files)
        ok, why = verified_copy(client, bucket, prefix, tag, tag_dir)
        if not ok:
            raise PermanentError(f"{tag}: copy did not verify after upload: {why}")
        result["exported"].append(tag)
        log(f"{tag}: verified in s3://{bucket}/{prefix}/{tag}")
    if args.keep_last:
        local = [
            n for n in os.listdir(save_dir) if TAG_RE.match(n) and os.path.isdir(os.path.join(save_dir, n))
        ]
        verified, why_not = set(), {}
        for tag in local:
            ok, why = verified_copy(client, bucket, prefix, tag, os.path.join(save_dir, tag))
            if ok:
                verified.add(tag)
            else:
                why_not[tag] = why
        # what might be the newest complete checkpoints, judged conservatively: a folder that LOOKS complete
        # here counts, so keep-last-N never deletes an older copy in favour of a folder still being written
        looks_complete = {t for t in local if not local_problems(*_with_files(os.path.join(save_dir, t)))}
        complete = [t for t in local if t in verified or t in looks_complete]
        plan = prune_plan(complete, verified, args.keep_last, read_latest(save_dir))
        for tag in plan["delete"]:
            log(f"{tag}: pruning the FSx copy (verified in S3, older than the newest {args.keep_last})")
            shutil.rmtree(os.path.join(save_dir, tag))
            result["pruned"].append(tag)
        result["kept"] = plan["keep"]
        result["kept_unverified"] = {
            t: why_not[t] for t in sorted(why_not, key=tag_iteration) if t not in plan["keep"]
        }
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        started = time.monotonic()
        result = export(args)
        result["seconds"] = round(time.monotonic() - started, 3)
        datamove.emit_result(**result)
        return EXIT_PERMANENT if result["refused"] else EXIT_OK

    return datamove.run_main(body)


if __name__ == "__main__":
    sys.exit(main())
