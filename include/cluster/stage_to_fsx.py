#!/usr/bin/env python3
"""Copy one S3 object onto the FSx folder, verified and atomic, as one Slurm array task.

The tokenizer reads shards from FSx; S3 is the durable copy written by ``fetch_to_s3.py`` with
``sha256`` and ``size`` metadata. Staging:

1. HEAD the object; refuse one without ``sha256`` metadata (an unfinished or foreign upload).
2. Skip when ``<final>`` exists with the object's size and ``<final>.sha256`` names the same checksum;
   when the sidecar is missing (a crash right after the rename) the local file is hashed instead.
3. Otherwise stream the object into ``<final>.tmp.<pid>`` in the same folder (same file system, so
   the rename is atomic), hashing on the fly and resuming with ranged GETs after a dropped read.
4. Check size and sha256 against the metadata: a mismatch removes the temporary file and fails
   (exit 3); nothing appears under the final name.
5. fsync the file, rename it to ``<final>``, fsync the folder, then write the sidecar
   ``<final>.sha256`` (``sha256sum -c`` format), itself through a temporary name.

Usage::

    stage_to_fsx.py --manifest stage.manifest [--index I]
    stage_to_fsx.py --source s3://bucket/c4/en/c4-train.00000-of-01024.json.gz --dest /fsx/data/c4/...
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys

import byte_sources
import datamove
from datamove import MiB, PermanentError, SinkError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sidecar_path(final: str) -> str:
    return final + ".sha256"


def read_sidecar(final: str) -> str | None:
    """The checksum recorded beside ``final``, or None when absent or unreadable."""
    try:
        with open(sidecar_path(final), encoding="ascii") as handle:
            first = handle.read(200).split()
    except (OSError, UnicodeDecodeError):
        return None
    return first[0].lower() if first and _SHA256.match(first[0].lower()) else None


def write_sidecar(final: str, digest: str) -> None:
    path = sidecar_path(final)
    temp = f"{path}.tmp.{os.getpid()}"
    with open(temp, "w", encoding="ascii") as handle:
        handle.write(f"{digest}  {os.path.basename(final)}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def hash_file(path: str, chunk_size: int = 4 * MiB) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            hasher.update(block)
    return hasher.hexdigest()


def fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def expected_from_head(head: dict, uri: str) -> tuple[int, str]:
    """(size, sha256) an object must have, from its HEAD answer; PermanentError if it lacks them."""
    meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
    digest = meta.get("sha256", "").lower()
    if not _SHA256.match(digest):
        raise PermanentError(
            f"{uri} has no sha256 metadata: it was not written by fetch_to_s3.py (fetch it again)"
        )
    size = int(head["ContentLength"])
    if meta.get("size") not in (None, str(size)):
        raise PermanentError(f"{uri}: metadata size {meta.get('size')} differs from its length {size}")
    return size, digest


def already_staged(final: str, size: int, digest: str) -> str | None:
    """Why ``final`` can be kept as it is, or None when it has to be (re)staged."""
    try:
        local_size = os.stat(final).st_size
    except FileNotFoundError:
        return None
    if local_size != size:
        datamove.log(f"{final}: {local_size} bytes on FSx, {size} in S3; staging again")
        return None
    recorded = read_sidecar(final)
    if recorded == digest:
        return "size and sidecar checksum match"
    if recorded is None and hash_file(final) == digest:
        write_sidecar(final, digest)
        return "size and recomputed checksum match (sidecar rewritten)"
    datamove.log(f"{final}: checksum differs from S3; staging again")
    return None


class FileSink:
    """Writes the stream to the temporary file, hashing as it goes."""

    def __init__(self, path: str):
        self.path = path
        self.handle = open(path, "wb")  # noqa: SIM115 - closed in finish/abort
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        try:
            self.handle.write(chunk)
        except OSError as exc:
            raise SinkError(f"writing {self.path}: {exc.strerror}") from None
        self.hasher.update(chunk)
        self.size += len(chunk)

    def restart(self) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self.hasher = hashlib.sha256()
        self.size = 0

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()

    def abort(self) -> None:
        if not self.handle.closed:
            self.handle.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def stage(
    s3_uri: str,
    final: str,
    *,
    name: str,
    client=None,
    options: datamove.CopyOptions = datamove.DEFAULT_COPY,
) -> dict:
    """Make ``final`` an exact, verified copy of ``s3_uri``; return the result fields."""
    client = client if client is not None else datamove.s3_client()
    bucket, key = datamove.parse_s3_uri(s3_uri)
    result = {"action": "stage", "name": name, "s3_uri": s3_uri, "path": final}
    head = datamove.head_object(client, bucket, key)
    if head is None:
        raise PermanentError(f"{s3_uri} does not exist (run the fetch step first)")
    size, digest = expected_from_head(head, s3_uri)

    reason = already_staged(final, size, digest)
    if reason:
        datamove.log(f"stage {name}: {final} already staged ({reason}); skipped")
        return {**result, "status": "skipped", "bytes": size, "sha256": digest, "seconds": 0.0}

    folder = os.path.dirname(final) or "."
    os.makedirs(folder, exist_ok=True)
    temp = f"{final}.tmp.{os.getpid()}"
    source = byte_sources.S3Source(client, s3_uri)
    sink = FileSink(temp)
    try:
        progress = datamove.copy_into(source, sink, name=name, label="stage", options=options)
        got = sink.hasher.hexdigest()
        if sink.size != size or got != digest:
            raise PermanentError(
                f"{s3_uri}: downloaded {sink.size} bytes with sha256 {got}, but the object metadata says "
                f"{size} bytes with sha256 {digest}; {final} not written"
            )
        sink.close()
    except BaseException:
        sink.abort()
        raise
    try:
        os.unlink(sidecar_path(final))  # a stale sidecar must never vouch for the new file
    except FileNotFoundError:
        pass
    os.replace(temp, final)
    fsync_dir(folder)
    write_sidecar(final, digest)
    seconds = progress.elapsed()
    datamove.log(f"stage {name}: done, {datamove.Progress.line(size, size, seconds)} -> {final}")
    return {
        **result,
        "status": "staged",
        "bytes": size,
        "sha256": digest,
        "seconds": seconds,
        "mb_per_s": size / MiB / seconds if seconds > 0 else None,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", help="tab-separated manifest: name, source, s3_uri, fsx_path per line")
    parser.add_argument("--index", type=int, help="manifest line (0-based); default SLURM_ARRAY_TASK_ID")
    parser.add_argument("--source", help="s3://bucket/key to stage (instead of --manifest)")
    parser.add_argument("--dest", help="absolute destination path on FSx (with --source)")
    parser.add_argument("--name", help="name used in messages (default: file name of --dest)")
    datamove.CopyOptions.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.manifest) == bool(args.source) or bool(args.source) != bool(args.dest):
        print("give either --manifest (and optionally --index) or both --source and --dest", file=sys.stderr)
        return datamove.EXIT_USAGE

    def body() -> int:
        if args.manifest:
            index = datamove.task_index(args.index)
            name, _source, s3_uri, final = datamove.read_manifest_line(args.manifest, index, 4)
        else:
            s3_uri, final = args.source, args.dest
            name = args.name or os.path.basename(final)
        if not os.path.isabs(final):
            raise PermanentError(f"shard {name}: destination {final!r} is not an absolute path")
        options = datamove.CopyOptions.from_args(args)
        return datamove.run_shard(name, lambda: stage(s3_uri, final, name=name, options=options))

    return datamove.run_main(body)


if __name__ == "__main__":
    sys.exit(main())
