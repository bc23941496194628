#!/usr/bin/env python3
"""Keep the local cluster's S3 data across a moto_server restart, as a real S3 endpoint would.

moto_server holds its state in memory: restarting it loses every bucket and object, which no real S3
outage does. ``scripts/localcluster.sh restart moto`` (fault injection for the tests) uses this helper:

    moto_state.py snapshot --endpoint http://127.0.0.1:15555 --out DIR
        just before moto is stopped: every bucket (region, tags) and every object (body, content type,
        user metadata, tags) into DIR/index.json + DIR/objects/<n> (written to DIR.tmp, then renamed)
    moto_state.py serve --host 127.0.0.1 --port 15555 [--restore DIR]
        loads the snapshot into moto's in-process backends first and only then opens the port, so no
        client ever sees the endpoint up but empty (a 404 for an object that exists would be a
        permanent error to the data movers); then serves like ``moto_server -H HOST -p PORT``

Caveats (why this is a test stand-in, not a backup tool):
- writes racing the snapshot are lost: an object written or deleted after it is listed (between the
  snapshot and the stop) is not carried over, and unfinished multipart uploads never are. Stop the
  writers' endpoint only at a point where the test knows nothing is being written (localcluster.sh
  takes it just before stopping moto; tests take moto down between pipeline stages).
- ETags of objects that were uploaded in parts change (they are put back in one piece); the pipeline
  checks its own ``sha256`` metadata, never ETags. Versions, ACLs, bucket policies and lifecycle rules
  are not kept. SNS/SQS state is not kept either: localcluster.sh re-creates the alert topic and queue
  (their ARN and URL are deterministic in moto), and messages still queued are lost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from urllib.parse import urlencode

CREDENTIALS = {"aws_access_key_id": "localcluster", "aws_secret_access_key": "localcluster"}


def _client(endpoint: str | None):
    import boto3
    from botocore.config import Config

    # no flexible checksums: their aws-chunked bodies cost ~1 s per 10 MB in botocore and in moto
    config = Config(
        request_checksum_calculation="when_required", response_checksum_validation="when_required"
    )
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config, **CREDENTIALS)


def snapshot(endpoint: str, out: str) -> dict:
    s3 = _client(endpoint)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "objects"))
    index: dict = {"buckets": []}
    n = 0
    for bucket in s3.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        region = s3.get_bucket_location(Bucket=name).get("LocationConstraint") or "us-east-1"
        try:
            tags = s3.get_bucket_tagging(Bucket=name).get("TagSet", [])
        except s3.exceptions.ClientError:
            tags = []  # NoSuchTagSet
        entry = {"name": name, "region": region, "tags": tags, "objects": []}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                got = s3.get_object(Bucket=name, Key=key)
                path = os.path.join("objects", str(n))
                n += 1
                with open(os.path.join(tmp, path), "wb") as handle:
                    for chunk in got["Body"].iter_chunks(1 << 20):
                        handle.write(chunk)
                entry["objects"].append(
                    {
                        "key": key,
                        "file": path,
                        "content_type": got.get("ContentType"),
                        "metadata": got.get("Metadata") or {},
                        "tags": s3.get_object_tagging(Bucket=name, Key=key).get("TagSet", []),
                    }
                )
        index["buckets"].append(entry)
    with open(os.path.join(tmp, "index.json"), "w") as handle:
        json.dump(index, handle, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return index


def restore(snapshot_dir: str, s3) -> tuple[int, int]:
    with open(os.path.join(snapshot_dir, "index.json")) as handle:
        index = json.load(handle)
    objects = 0
    for bucket in index["buckets"]:
        kwargs = {}
        if bucket["region"] != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": bucket["region"]}
        s3.create_bucket(Bucket=bucket["name"], **kwargs)
        if bucket["tags"]:
            s3.put_bucket_tagging(Bucket=bucket["name"], Tagging={"TagSet": bucket["tags"]})
        for obj in bucket["objects"]:
            put = {"Bucket": bucket["name"], "Key": obj["key"], "Metadata": obj["metadata"]}
            if obj["content_type"]:
                put["ContentType"] = obj["content_type"]
            if obj["tags"]:
                put["Tagging"] = urlencode({t["Key"]: t["Value"] for t in obj["tags"]})
            with open(os.path.join(snapshot_dir, obj["file"]), "rb") as body:
                s3.put_object(Body=body.read(), **put)
            objects += 1
    return len(index["buckets"]), objects


def serve(host: str, port: int, restore_dir: str | None) -> None:
    from moto import mock_aws
    from moto.server import main as moto_main

    if restore_dir:
        # moto_server and mock_aws share the same in-process backends: fill them through boto3 under
        # mock_aws (no network), keep the data when unpatching, then start the HTTP server on top
        mock = mock_aws()
        mock.start()
        try:
            buckets, objects = restore(restore_dir, _client(None))
        finally:
            mock.stop(remove_data=False)
        print(f"[moto_state] restored {buckets} bucket(s), {objects} object(s) from {restore_dir}")
        sys.stdout.flush()
    moto_main(["-H", host, "-p", str(port)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    snap = sub.add_parser("snapshot", help="save every bucket and object of a running moto_server")
    snap.add_argument("--endpoint", required=True)
    snap.add_argument("--out", required=True)
    srv = sub.add_parser("serve", help="moto_server, with a snapshot loaded before the port opens")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--restore", help="snapshot folder written by `snapshot`")
    args = parser.parse_args(argv)
    if args.command == "snapshot":
        index = snapshot(args.endpoint, args.out)
        count = sum(len(b["objects"]) for b in index["buckets"])
        print(f"[moto_state] saved {len(index['buckets'])} bucket(s), {count} object(s) to {args.out}")
        return 0
    serve(args.host, args.port, args.restore)
    return 0


if __name__ == "__main__":
    sys.exit(main())
