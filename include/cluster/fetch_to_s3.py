#!/usr/bin/env python3
"""Stream one file (a C4 shard, the tokenizer JSON) from its source into S3, as one Slurm array task.

S3 holds the durable copy of every input: FSx can always be rebuilt from it. The transfer is streamed
(HTTP -> S3 multipart upload), so memory stays near one part whatever the file size and nothing is
written to local disk. sha256 and size are computed on the fly and stored as object metadata
(``x-amz-meta-sha256``, ``x-amz-meta-size``), which is what the staging step verifies against.

Atomicity: a file that fits in one part is written with a single PUT carrying its metadata. Larger files
are uploaded as a multipart upload to a temporary key and copied (server side) to the final key with the
metadata, then the temporary key is deleted: an object under the final key is always whole and always
carries its checksum. On failure the multipart upload is aborted.

Idempotence: an object that already exists with ``sha256`` metadata and a ``size`` equal to its length
(and to the source's Content-Length, from a HEAD request, when the source says) is skipped without
reading the source's body.

Usage (one array task; line i of the manifest for ``SLURM_ARRAY_TASK_ID=i``)::

    fetch_to_s3.py --manifest fetch.manifest [--index I] [--part-size 64MiB]
    fetch_to_s3.py --source https://host/c4-train.00000-of-01024.json.gz --dest s3://bucket/c4/en/...

Endpoint from ``AWS_ENDPOINT_URL`` (moto in tests); credentials from the standard AWS chain only.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
import uuid

import byte_sources
import datamove
from datamove import MiB, PermanentError, SinkError, TransientError

DEFAULT_PART_SIZE = 64 * MiB
MAX_PARTS = 10_000  # S3's limit on parts per multipart upload
COPY_OBJECT_LIMIT = 5 * 1024 * MiB  # CopyObject handles up to 5 GiB; beyond that a managed multipart copy
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def existing_is_complete(head: dict | None) -> bool:
    """True when a HEAD answer describes an object this script finished: checksum + matching size."""
    if not head:
        return False
    meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
    return bool(_SHA256.match(meta.get("sha256", ""))) and meta.get("size") == str(head.get("ContentLength"))


def _ascii_or_none(text: str) -> str | None:
    return text if text.isascii() and len(text) < 1024 else None


class MultipartSink:
    """Receives the byte stream, hashes it and uploads it in parts of about ``part_size`` bytes.

    At most one part is buffered (plus one read chunk): that is the memory bound.
    """

    def __init__(self, client, bucket: str, key: str, *, part_size: int, source: str):
        self.client = client
        self.bucket = bucket
        self.key = key
        self.temp_key = f"{key}.partial.{uuid.uuid4().hex[:12]}"
        self.part_size = part_size
        self.source = source
        self.upload_id: str | None = None
        self.temp_written = False
        self.max_buffer = 0
        self.restart()

    def restart(self) -> None:
        self.hasher = hashlib.sha256()
        self.size = 0
        self.buffer = bytearray()
        self.parts: list[dict] = []

    def write(self, chunk: bytes) -> None:
        """Hash and buffer ``chunk``; every part but the last is exactly ``part_size`` bytes."""
        self.hasher.update(chunk)
        self.size += len(chunk)
        view = memoryview(chunk)
        while view:
            room = self.part_size - len(self.buffer)
            self.buffer += view[:room]
            view = view[room:]
            self.max_buffer = max(self.max_buffer, len(self.buffer))
            if len(self.buffer) >= self.part_size:
                self._upload_part()

    def _call(self, what: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            err = datamove.classify_s3_error(exc, f"{what} s3://{self.bucket}/{self.key}")
            if isinstance(err, PermanentError):
                raise err from None  # not caught by pump: permanent errors are never retried
            raise SinkError(str(err)) from None

    def _upload_part(self) -> None:
        if self.upload_id is None:
            created = self._call(
                "CreateMultipartUpload",
                self.client.create_multipart_upload,
                Bucket=self.bucket,
                Key=self.temp_key,
            )
            self.upload_id = created["UploadId"]
        number = len(self.parts) + 1
        if number > MAX_PARTS:
            raise PermanentError(f"more than {MAX_PARTS} parts of {self.part_size} bytes: raise --part-size")
        answer = self._call(
            f"UploadPart {number}",
            self.client.upload_part,
            Bucket=self.bucket,
            Key=self.temp_key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=self.buffer,
        )
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self.buffer = bytearray()

    def metadata(self) -> dict[str, str]:
        meta = {"sha256": self.hasher.hexdigest(), "size": str(self.size)}
        source = _ascii_or_none(self.source)
        if source:
            meta["source"] = source
        return meta

    def finish(self) -> dict[str, str]:
        """Make the object appear under the final key, whole and with its metadata."""
        meta = self.metadata()
        if not self.parts:
            self._call(
                "PutObject",
                self.client.put_object,
                Bucket=self.bucket,
                Key=self.key,
                Body=self.buffer,
                Metadata=meta,
            )
            self.buffer = bytearray()
            return meta
        if self.buffer:
            self._upload_part()
        self._call(
            "CompleteMultipartUpload",
            self.client.complete_multipart_upload,
            Bucket=self.bucket,
            Key=self.temp_key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )
        self.upload_id = None
        self.temp_written = True
        source = {"Bucket": self.bucket, "Key": self.temp_key}
        if self.size <= COPY_OBJECT_LIMIT:
            self._call(
                "CopyObject",
                self.client.copy_object,
                CopySource=source,
                Bucket=self.bucket,
                Key=self.key,
                Metadata=meta,
                MetadataDirective="REPLACE",
            )
        else:
            self._call("Copy", self._managed_copy, CopySource=source, Metadata=meta)
        self._call("DeleteObject", self.client.delete_object, Bucket=self.bucket, Key=self.temp_key)
        self.temp_written = False
        return meta

    def _managed_copy(self, *, CopySource: dict, Metadata: dict) -> None:  # noqa: N803 - S3 argument names
        """Beyond 5 GiB CopyObject refuses; s3transfer's managed copy does a multipart copy instead."""
        from s3transfer.manager import TransferManager

        extra = {"Metadata": Metadata, "MetadataDirective": "REPLACE"}
        with TransferManager(self.client) as manager:
            manager.copy(CopySource, self.bucket, self.key, extra_args=extra).result()

    def abort(self) -> None:
        """Leave nothing behind: abort the multipart upload, delete a completed temporary object."""
        try:
            if self.upload_id is not None:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.temp_key, UploadId=self.upload_id
                )
                datamove.log(f"aborted multipart upload of s3://{self.bucket}/{self.temp_key}")
            if self.temp_written:
                self.client.delete_object(Bucket=self.bucket, Key=self.temp_key)
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the original error
            datamove.log(f"warning: cleanup of s3://{self.bucket}/{self.temp_key} failed: {exc}")


def _with_retries(fn, *, retries: int, backoff: float, what: str):
    for attempt in range(retries + 1):
        try:
            return fn()
        except TransientError as exc:
            if attempt == retries:
                raise
            delay = backoff * (2**attempt)
            datamove.log(f"{what}: {exc}; retry {attempt + 1}/{retries} in {delay:.2f}s")
            time.sleep(delay)
    raise AssertionError("unreachable")


def annotate_in_place(client, source: byte_sources.S3Source, *, name: str, options: datamove.CopyOptions):
    """Source and destination are the same S3 object: hash it and add the metadata by a self-copy."""
    head = datamove.head_object(client, source.bucket, source.key)
    if head is None:
        raise PermanentError(f"{source.description} does not exist (not retried)")
    if existing_is_complete(head):
        return "skipped", head["Metadata"]["sha256"].lower(), int(head["ContentLength"])
    hasher = hashlib.sha256()
    size = datamove.pump(
        source,
        hasher.update,
        lambda: None,
        name=name,
        chunk_size=options.chunk_size,
        retries=options.retries,
        backoff=options.backoff,
    )
    meta = {"sha256": hasher.hexdigest(), "size": str(size)}
    client.copy_object(
        CopySource={"Bucket": source.bucket, "Key": source.key},
        Bucket=source.bucket,
        Key=source.key,
        Metadata=meta,
        MetadataDirective="REPLACE",
    )
    return "annotated", meta["sha256"], size


def fetch(
    source_uri: str,
    dest_uri: str,
    *,
    name: str,
    client=None,
    part_size: int = DEFAULT_PART_SIZE,
    timeout: float = 60.0,
    options: datamove.CopyOptions = datamove.DEFAULT_COPY,
) -> dict:
    """Copy ``source_uri`` to ``dest_uri`` (``s3://``) unless already there; return the result fields."""
    client = client if client is not None else datamove.s3_client()
    bucket, key = datamove.parse_s3_uri(dest_uri)
    source = byte_sources.open_source(source_uri, s3=client, timeout=timeout)
    started = time.monotonic()
    result = {"action": "fetch", "name": name, "source": source_uri, "s3_uri": dest_uri}

    if isinstance(source, byte_sources.S3Source) and (source.bucket, source.key) == (bucket, key):
        status, sha, size = annotate_in_place(client, source, name=name, options=options)
        return {
            **result,
            "status": status,
            "bytes": size,
            "sha256": sha,
            "seconds": time.monotonic() - started,
        }

    head = datamove.head_object(client, bucket, key)
    if existing_is_complete(head):
        source_size = _with_retries(
            source.size, retries=options.retries, backoff=options.backoff, what=f"HEAD {source_uri}"
        )
        if source_size is None or source_size == head["ContentLength"]:
            why = "source size unknown, object complete" if source_size is None else "same size as the source"
            datamove.log(
                f"{name}: {dest_uri} already present ({head['ContentLength']} bytes, {why}); skipped"
            )
            return {
                **result,
                "status": "skipped",
                "bytes": int(head["ContentLength"]),
                "sha256": head["Metadata"]["sha256"].lower(),
                "seconds": time.monotonic() - started,
            }
        datamove.log(
            f"{name}: {dest_uri} holds {head['ContentLength']} bytes, source has {source_size}; fetching"
        )

    sink = MultipartSink(client, bucket, key, part_size=part_size, source=source_uri)
    try:
        progress = datamove.copy_into(source, sink, name=name, label="fetch", options=options)
        meta = sink.finish()
    except BaseException:
        sink.abort()
        raise
    seconds = progress.elapsed()
    summary = datamove.Progress.line(sink.size, sink.size, seconds)
    datamove.log(f"fetch {name}: done, {summary} -> {dest_uri} sha256={meta['sha256']}")
    return {
        **result,
        "status": "fetched",
        "bytes": sink.size,
        "sha256": meta["sha256"],
        "seconds": seconds,
        "mb_per_s": sink.size / MiB / seconds if seconds > 0 else None,
        "parts": len(sink.parts),
        "max_buffer_bytes": sink.max_buffer,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", help="tab-separated manifest: name, source, s3_uri, fsx_path per line")
    parser.add_argument("--index", type=int, help="manifest line (0-based); default SLURM_ARRAY_TASK_ID")
    parser.add_argument("--source", help="http(s)://, s3:// or file:// source (instead of --manifest)")
    parser.add_argument("--dest", help="s3://bucket/key destination (with --source)")
    parser.add_argument("--name", help="name used in messages (default: last part of --dest)")
    parser.add_argument(
        "--part-size",
        type=datamove.parse_size,
        default=DEFAULT_PART_SIZE,
        help="multipart part size, e.g. 64MiB (S3 needs >= 5MiB except for the last part)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds")
    datamove.CopyOptions.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.manifest) == bool(args.source) or bool(args.source) != bool(args.dest):
        print("give either --manifest (and optionally --index) or both --source and --dest", file=sys.stderr)
        return datamove.EXIT_USAGE
    if args.part_size < 1024 or args.chunk_size < 1:
        print("--part-size must be at least 1KiB and --chunk-size positive", file=sys.stderr)
        return datamove.EXIT_USAGE

    def body() -> int:
        if args.manifest:
            index = datamove.task_index(args.index)
            name, source, dest, _fsx = datamove.read_manifest_line(args.manifest, index, 4)
        else:
            source, dest = args.source, args.dest
            name = args.name or dest.rstrip("/").rsplit("/", 1)[-1]
        copy = {
            "part_size": args.part_size,
            "timeout": args.timeout,
            "options": datamove.CopyOptions.from_args(args),
        }
        return datamove.run_shard(name, lambda: fetch(source, dest, name=name, **copy))

    return datamove.run_main(body)


if __name__ == "__main__":
    sys.exit(main())
