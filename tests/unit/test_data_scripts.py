"""The cluster-side data movers, run as real subprocesses against a real moto_server and a real local
HTTP source (scripts/localcluster/http_source.py), plus the array templates that launch them.

What is proven here: fetch streams HTTP -> S3 (multipart above the part size, bounded memory), records
sha256/size metadata, skips complete objects without reading the source's body, retries drops and 5xx,
fails fast and clearly on 404, and never leaves a half object; staging verifies, renames atomically and
is idempotent; the rendered array scripts run those scripts for task i = manifest line i+1 and refuse
injected values.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import c4_fixture
import pytest
from http_source import HttpSourceServer

from neoxflow.data.render import (
    ArraySpec,
    UnsafeValueError,
    array_directive,
    array_tasks,
    manifest_digest,
    render_fetch_array,
    render_stage_array,
    render_tokenize_array,
)
from neoxflow.data.shards import (
    ManifestEntry,
    ShardSelection,
    TokenizeEntry,
    build_manifest,
    build_tokenize_manifest,
    format_manifest,
    tokenizer_entry,
)
from tests.conftest import TOKENIZER

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "include" / "cluster"
LOCAL = REPO / "scripts" / "localcluster"  # http_source.py, c4_fixture.py: never shipped
RESULT = "NEOXFLOW_RESULT "
FAST = ["--backoff", "0.01", "--progress-interval", "0"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory):
    """A real moto_server on a free port; small parts allowed so multipart can be tested on small files."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    exe = Path(sys.executable).with_name("moto_server")
    env = {**os.environ, "S3_UPLOAD_PART_MIN_SIZE": "1024"}
    proc = subprocess.Popen([str(exe), "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start on port {port}")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture
def aws_env(moto_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=moto_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return env


@pytest.fixture
def s3(aws_env):
    return boto3.client(
        "s3",
        endpoint_url=aws_env["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture
def bucket(s3):
    name = f"neox-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("c4")
    c4_fixture.generate(str(folder), train=3, validation=0, docs=600, seed=7)
    return folder


@pytest.fixture
def source(shards_dir):
    with HttpSourceServer(str(shards_dir)) as server:
        yield server


@pytest.fixture
def work():
    """A scratch folder whose path passes the remote-path allow-list (pytest's tmp_path may hold '[')."""
    folder = tempfile.mkdtemp(prefix="neoxflow-data-")
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


def run_script(script: str, *args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLUSTER / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def result_of(proc: subprocess.CompletedProcess) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    assert len(lines) == 1, f"no result line (rc={proc.returncode}): {proc.stdout}\n{proc.stderr}"
    return json.loads(lines[0][len(RESULT) :])


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_for(source: HttpSourceServer, bucket: str, fsx: Path, shards: str = "3") -> tuple[Path, list]:
    selection = ShardSelection.parse(shards, url_template=source.base_url + "{name}")
    entries = build_manifest(selection, s3_bucket=bucket, s3_prefix="c4/en", fsx_dir=str(fsx))
    path = fsx.parent / "data.manifest"
    path.write_text(format_manifest(entries))
    return path, entries


def keys(s3, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def pending_uploads(s3, bucket: str) -> list:
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


# ------------------------------------------------------------------------------------------- fixture data


def test_c4_fixture_is_deterministic_c4_format(tmp_path):
    a = c4_fixture.generate(str(tmp_path / "a"), train=2, validation=1, docs=50, seed=3)
    b = c4_fixture.generate(str(tmp_path / "b"), train=2, validation=1, docs=50, seed=3)
    c = c4_fixture.generate(str(tmp_path / "c"), train=1, docs=50, seed=4)
    assert [Path(p).name for p in a] == [
        "c4-train.00000-of-01024.json.gz",
        "c4-train.00001-of-01024.json.gz",
        "c4-validation.00000-of-00008.json.gz",
    ]
    assert [Path(p).read_bytes() for p in a] == [Path(p).read_bytes() for p in b]
    assert Path(c[0]).read_bytes() != Path(a[0]).read_bytes()
    assert Path(a[0]).read_bytes() != Path(a[1]).read_bytes()
    lines = gzip.decompress(Path(a[0]).read_bytes()).decode("utf-8").splitlines()
    assert len(lines) == 50
    docs = [json.loads(line) for line in lines]
    assert all(
        set(d) == {"text", "timestamp", "url"} and all(isinstance(v, str) for v in d.values()) for d in docs
    )
    assert all(d["text"].strip() and d["url"].startswith("https://") for d in docs)
    assert len({d["text"] for d in docs}) == 50
    assert any("\n" in d["text"] for d in docs), "C4 documents have several paragraphs"
    assert any(not d["text"].isascii() for d in docs), "some non-ASCII text exercises byte-level BPE"


# ------------------------------------------------------------------------------------------- fetch


def test_fetch_three_shards_then_second_run_skips_without_reading_bodies(
    source, shards_dir, s3, bucket, aws_env, work
):
    manifest, entries = manifest_for(source, bucket, work / "fsx")
    for index in range(3):
        proc = run_script(
            "fetch_to_s3.py", "--manifest", str(manifest), "--index", str(index), *FAST, env=aws_env
        )
        assert proc.returncode == 0, proc.stderr
        assert result_of(proc)["status"] == "fetched"
    assert keys(s3, bucket) == [f"c4/en/{e.name}" for e in entries]
    for entry in entries:
        local = shards_dir / entry.name
        obj = s3.get_object(Bucket=bucket, Key=f"c4/en/{entry.name}")
        assert obj["Body"].read() == local.read_bytes()
        assert obj["Metadata"]["sha256"] == sha256_of(local)
        assert obj["Metadata"]["size"] == str(local.stat().st_size)
    gets_before = source.count("GET")
    assert gets_before == 3

    env = {**aws_env, "SLURM_ARRAY_TASK_ID": "1"}  # the index may also come from Slurm
    proc = run_script("fetch_to_s3.py", "--manifest", str(manifest), *FAST, env=env)
    assert proc.returncode == 0, proc.stderr
    assert result_of(proc)["status"] == "skipped"
    for index in (0, 2):
        proc = run_script(
            "fetch_to_s3.py", "--manifest", str(manifest), "--index", str(index), *FAST, env=aws_env
        )
        assert result_of(proc)["status"] == "skipped"
    assert source.count("GET") == gets_before, "a skipped shard must not be downloaded again"
    assert source.count("HEAD") == 3, "the skip compares the source's Content-Length from a HEAD request"


def test_fetch_refetches_an_object_without_checksum_metadata(source, shards_dir, s3, bucket, aws_env):
    name = "c4-train.00000-of-01024.json.gz"
    s3.put_object(Bucket=bucket, Key=name, Body=b"left over by someone else")
    proc = run_script(
        "fetch_to_s3.py",
        "--source",
        source.url_for(name),
        "--dest",
        f"s3://{bucket}/{name}",
        *FAST,
        env=aws_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert result_of(proc)["status"] == "fetched"
    assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == (shards_dir / name).read_bytes()


def test_fetch_404_is_a_clear_permanent_error(source, s3, bucket, aws_env):
    name = "c4-train.00005-of-01024.json.gz"
    source.faults.not_found.add(name)
    proc = run_script(
        "fetch_to_s3.py",
        "--source",
        source.url_for(name),
        "--dest",
        f"s3://{bucket}/c4/{name}",
        *FAST,
        env=aws_env,
    )
    assert proc.returncode == 3
    assert f"shard {name}" in proc.stderr and "HTTP 404" in proc.stderr and "not retried" in proc.stderr
    assert source.count("GET", name) == 1, "404 must not be retried"
    assert keys(s3, bucket) == []


def test_fetch_resumes_after_a_dropped_connection(source, shards_dir, s3, bucket, aws_env):
    name = "c4-train.00001-of-01024.json.gz"
    source.faults.drop_after[name] = 40_000
    proc = run_script(
        "fetch_to_s3.py",
        "--source",
        source.url_for(name),
        "--dest",
        f"s3://{bucket}/{name}",
        *FAST,
        env=aws_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "connection closed after 40000" in proc.stderr and "retry 1/5" in proc.stderr
    gets = [r for r in source.requests if r.method == "GET"]
    assert [(r.range, r.status, r.body_bytes) for r in gets][0] == (None, 200, 40_000)
    assert gets[1].range == "bytes=40000-" and gets[1].status == 206
    body = s3.get_object(Bucket=bucket, Key=name)
    assert body["Body"].read() == (shards_dir / name).read_bytes()
    assert body["Metadata"]["sha256"] == sha256_of(shards_dir / name)


def test_fetch_restarts_from_zero_when_the_server_ignores_ranges(source, shards_dir, s3, bucket, aws_env):
    name = "c4-train.00002-of-01024.json.gz"
    source.faults.no_range = True
    source.faults.drop_after[name] = 30_000
    proc = run_script(
        "fetch_to_s3.py",
        "--source",
        source.url_for(name),
        "--dest",
        f"s3://{bucket}/{name}",
        "--part-size",
        "16KiB",
        *FAST,
        env=aws_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ignored the range request" in proc.stderr
    obj = s3.get_object(Bucket=bucket, Key=name)
    assert obj["Body"].read() == (shards_dir / name).read_bytes()
    assert obj["Metadata"]["sha256"] == sha256_of(shards_dir / name)


def test_fetch_retries_5xx(source, shards_dir, s3, bucket, aws_env):
    name = "c4-train.00000-of-01024.json.gz"
    source.faults.fail[name] = (503, 2)
    proc = run_script(
        "fetch_to_s3.py",
        "--source",
        source.url_for(name),
        "--dest",
        f"s3://{bucket}/{name}",
        *FAST,
        env=aws_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("HTTP 503") == 2
    assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == (shards_dir / name).read_bytes()


def test_fetch_gives_up_on_persistent_5xx_with_transient_exit_code(source, s3, bucket, aws_env):
    name = "c4-train.00000-of-01024.json.gz"
    source.faults.fail[name] = (500, 100)
    proc = run_script(
        "fetch_to_s3.py",
        "--source",
        source.url_for(name),
        "--dest",
        f"s3://{bucket}/{name}",
        "--retries",
        "2",
        *FAST,
        env=aws_env,
    )
    assert proc.returncode == 75
    assert f"shard {name}" in proc.stderr and "giving up after 2 retries" in proc.stderr
    assert source.count("GET", name) == 3
    assert keys(s3, bucket) == []


def test_fetch_uses_multipart_above_the_part_size(source, shards_dir, s3, bucket, aws_env):
    name = "c4-train.00000-of-01024.json.gz"
    size = (shards_dir / name).stat().st_size
    part = 16 * 1024
    proc = run_script(
        "fetch_to_s3.py",
        "--source",
        source.url_for(name),
        "--dest",
        f"s3://{bucket}/c4/{name}",
        "--part-size",
        "16KiB",
        *FAST,
        env=aws_env,
    )
    assert proc.returncode == 0, proc.stderr
    result = result_of(proc)
    assert f"fetch {name}: " in proc.stderr and " MB/s" in proc.stderr, "progress lines"
    assert result["parts"] == -(-size // part) > 1
    assert result["max_buffer_bytes"] == part
    assert keys(s3, bucket) == [f"c4/{name}"], "the temporary multipart key is removed"
    assert pending_uploads(s3, bucket) == []
    obj = s3.get_object(Bucket=bucket, Key=f"c4/{name}")
    assert obj["Body"].read() == (shards_dir / name).read_bytes()
    assert obj["Metadata"]["sha256"] == sha256_of(shards_dir / name)


def test_failed_multipart_upload_is_aborted_and_leaves_no_object(source, s3, bucket, aws_env):
    name = "c4-train.00001-of-01024.json.gz"
    source.faults.drop_after[name] = 50_000  # 3 parts of 16 KiB uploaded before the drop
    proc = run_script(
        "fetch_to_s3.py",
        "--source",
        source.url_for(name),
        "--dest",
        f"s3://{bucket}/{name}",
        "--part-size",
        "16KiB",
        "--retries",
        "0",
        *FAST,
        env=aws_env,
    )
    assert proc.returncode == 75
    assert f"shard {name}" in proc.stderr and "aborted multipart upload" in proc.stderr
    assert keys(s3, bucket) == []
    assert pending_uploads(s3, bucket) == []


def test_fetch_memory_is_bounded_by_the_part_size(s3, bucket, aws_env, work):
    """A 40 MiB file costs no more memory than a 2 MiB one: the stream is never held whole."""
    folder = work / "blobs"
    folder.mkdir()
    (folder / "big.bin").write_bytes(os.urandom(40 * 1024 * 1024))
    (folder / "small.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    peaks = {}
    with HttpSourceServer(str(folder)) as server:
        for name in ("small.bin", "big.bin"):
            proc = run_script(
                "fetch_to_s3.py",
                "--source",
                server.url_for(name),
                "--dest",
                f"s3://{bucket}/{name}",
                "--part-size",
                "1MiB",
                *FAST,
                env=aws_env,
            )
            assert proc.returncode == 0, proc.stderr
            result = result_of(proc)
            assert result["max_buffer_bytes"] <= 1024 * 1024
            peaks[name] = result["peak_rss_mb"]
    assert s3.head_object(Bucket=bucket, Key="big.bin")["ContentLength"] == 40 * 1024 * 1024
    assert peaks["big.bin"] - peaks["small.bin"] < 12, peaks


def test_tokenizer_json_takes_the_same_path(s3, bucket, aws_env, work):
    """file:// (or a URL) -> S3 -> FSx, then s3:// -> another S3 key, with the same checksums."""
    entry = tokenizer_entry(TOKENIZER.as_uri(), s3_bucket=bucket, fsx_dir=str(work / "fsx" / "tokenizers"))
    manifest = work / "tok.manifest"
    manifest.write_text(format_manifest([entry]))
    for script in ("fetch_to_s3.py", "stage_to_fsx.py"):
        proc = run_script(script, "--manifest", str(manifest), "--index", "0", *FAST, env=aws_env)
        assert proc.returncode == 0, proc.stderr
    staged = Path(entry.fsx_path)
    assert staged.read_bytes() == TOKENIZER.read_bytes()
    assert sha256_of(staged) == "56ac4821e129d2c520fdaba60abd920fa852ada51b45c0dd52bbb6bd8c985ade"
    copy = f"s3://{bucket}/mirror/20B_tokenizer.json"
    proc = run_script("fetch_to_s3.py", "--source", entry.s3_uri, "--dest", copy, *FAST, env=aws_env)
    assert proc.returncode == 0, proc.stderr
    head = s3.head_object(Bucket=bucket, Key="mirror/20B_tokenizer.json")
    assert head["Metadata"]["sha256"] == sha256_of(TOKENIZER)


def test_fetch_in_place_annotates_an_existing_s3_object(s3, bucket, aws_env):
    s3.put_object(Bucket=bucket, Key="tok/t.json", Body=b'{"model": {}}')
    proc = run_script(
        "fetch_to_s3.py",
        "--source",
        f"s3://{bucket}/tok/t.json",
        "--dest",
        f"s3://{bucket}/tok/t.json",
        *FAST,
        env=aws_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert result_of(proc)["status"] == "annotated"
    head = s3.head_object(Bucket=bucket, Key="tok/t.json")
    assert head["Metadata"] == {"sha256": hashlib.sha256(b'{"model": {}}').hexdigest(), "size": "13"}


def test_fetch_usage_and_manifest_errors(aws_env, work):
    proc = run_script("fetch_to_s3.py", env=aws_env)
    assert proc.returncode == 2
    manifest = work / "m"
    manifest.write_text("only\ttwo\n")
    proc = run_script("fetch_to_s3.py", "--manifest", str(manifest), "--index", "0", env=aws_env)
    assert proc.returncode == 3 and f"manifest {manifest} line 1" in proc.stderr
    proc = run_script("fetch_to_s3.py", "--manifest", str(manifest), "--index", "4", env=aws_env)
    assert proc.returncode == 3 and "has no line 5" in proc.stderr
    proc = run_script("fetch_to_s3.py", "--manifest", str(manifest), env=aws_env)
    assert proc.returncode == 3 and "SLURM_ARRAY_TASK_ID" in proc.stderr


# ------------------------------------------------------------------------------------------- stage


def _fetch_all(manifest: Path, count: int, env: dict) -> None:
    for index in range(count):
        proc = run_script(
            "fetch_to_s3.py", "--manifest", str(manifest), "--index", str(index), *FAST, env=env
        )
        assert proc.returncode == 0, proc.stderr


def test_stage_verifies_renames_and_is_idempotent(source, shards_dir, s3, bucket, aws_env, work):
    manifest, entries = manifest_for(source, bucket, work / "fsx")
    _fetch_all(manifest, 3, aws_env)
    for index in range(3):
        proc = run_script(
            "stage_to_fsx.py", "--manifest", str(manifest), "--index", str(index), *FAST, env=aws_env
        )
        assert proc.returncode == 0, proc.stderr
        assert result_of(proc)["status"] == "staged"
    for entry in entries:
        staged = Path(entry.fsx_path)
        assert staged.read_bytes() == (shards_dir / entry.name).read_bytes()
        assert Path(f"{staged}.sha256").read_text() == f"{sha256_of(staged)}  {entry.name}\n"
    assert sorted(p.name for p in (work / "fsx").iterdir()) == sorted(
        [e.name for e in entries] + [f"{e.name}.sha256" for e in entries]
    ), "no temporary files left"
    mtimes = [os.stat(e.fsx_path).st_mtime_ns for e in entries]
    for index in range(3):
        proc = run_script(
            "stage_to_fsx.py", "--manifest", str(manifest), "--index", str(index), *FAST, env=aws_env
        )
        assert result_of(proc)["status"] == "skipped"
    assert [os.stat(e.fsx_path).st_mtime_ns for e in entries] == mtimes


def test_stage_checks_a_file_whose_sidecar_is_missing_and_replaces_a_corrupt_one(
    source, s3, bucket, aws_env, work
):
    manifest, entries = manifest_for(source, bucket, work / "fsx", shards="1")
    _fetch_all(manifest, 1, aws_env)
    args = ["--manifest", str(manifest), "--index", "0", *FAST]
    assert run_script("stage_to_fsx.py", *args, env=aws_env).returncode == 0
    staged, sidecar = Path(entries[0].fsx_path), Path(entries[0].fsx_path + ".sha256")
    good = staged.read_bytes()

    sidecar.unlink()  # as after a crash between the rename and the sidecar
    proc = run_script("stage_to_fsx.py", *args, env=aws_env)
    assert result_of(proc)["status"] == "skipped" and "recomputed" in proc.stderr
    assert sidecar.exists()

    sidecar.unlink()
    staged.write_bytes(bytes([good[0] ^ 1]) + good[1:])  # same size, different content
    proc = run_script("stage_to_fsx.py", *args, env=aws_env)
    assert result_of(proc)["status"] == "staged"
    assert staged.read_bytes() == good


def test_stage_checksum_mismatch_fails_and_writes_no_final_file(s3, bucket, aws_env, work):
    body = b"x" * 5000
    s3.put_object(
        Bucket=bucket, Key="c4/bad.json.gz", Body=body, Metadata={"sha256": "0" * 64, "size": "5000"}
    )
    final = work / "fsx" / "bad.json.gz"
    proc = run_script(
        "stage_to_fsx.py",
        "--source",
        f"s3://{bucket}/c4/bad.json.gz",
        "--dest",
        str(final),
        *FAST,
        env=aws_env,
    )
    assert proc.returncode == 3
    assert "shard bad.json.gz" in proc.stderr and "sha256" in proc.stderr and "not written" in proc.stderr
    assert list((work / "fsx").iterdir()) == [], "neither the final file nor a temporary file may remain"


def test_stage_refuses_objects_without_checksum_and_missing_objects(s3, bucket, aws_env, work):
    s3.put_object(Bucket=bucket, Key="c4/plain.json.gz", Body=b"abc")
    final = work / "fsx" / "plain.json.gz"
    proc = run_script(
        "stage_to_fsx.py", "--source", f"s3://{bucket}/c4/plain.json.gz", "--dest", str(final), env=aws_env
    )
    assert proc.returncode == 3 and "no sha256 metadata" in proc.stderr
    proc = run_script(
        "stage_to_fsx.py", "--source", f"s3://{bucket}/c4/none.json.gz", "--dest", str(final), env=aws_env
    )
    assert proc.returncode == 3 and "does not exist" in proc.stderr
    assert not final.exists()


def test_stage_logs_s3_retries_and_exits_transient_when_the_endpoint_stays_down(aws_env, work):
    """An S3 outage during staging: each failed attempt is logged (botocore's retries are otherwise
    silent), and once they are spent the task fails with the retryable exit code and one clear line
    (before: an uncaught EndpointConnectionError traceback, exit 1)."""
    env = {**aws_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}", "NEOXFLOW_S3_RETRIES": "1"}
    final = work / "fsx" / "c4-train.00000-of-01024.json.gz"
    proc = run_script("stage_to_fsx.py", "--source", "s3://b/c4/x.json.gz", "--dest", str(final), env=env)
    assert proc.returncode == 75, proc.stderr
    assert "S3 HeadObject attempt 1/2 failed (EndpointConnectionError" in proc.stderr, proc.stderr
    assert "attempt 1/2 failed" in proc.stderr and "botocore retries it" in proc.stderr, proc.stderr
    assert "S3 HeadObject attempt 2/2 failed" in proc.stderr and "no attempts left" in proc.stderr
    assert "attempt 3/" not in proc.stderr, proc.stderr
    assert "ERROR: shard c4-train.00000-of-01024.json.gz: HEAD s3://b/c4/x.json.gz" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not final.exists()


# ------------------------------------------------------------------------------------------- templates


def _spec(work: Path, **overrides) -> ArraySpec:
    fields = dict(
        job_name="c4-data",
        job_dir=str(work / "job"),
        scripts_dir=str(CLUSTER),
        manifest_dir=str(work / "manifests"),
        python=sys.executable,
        parallelism=2,
    )
    fields.update(overrides)
    return ArraySpec(**fields)


def _write_job(rendered, work: Path) -> Path:
    """The script in its job folder and the manifest at the path named by its hash (ship_code's job)."""
    job = Path(rendered.job_dir)
    job.mkdir(parents=True, exist_ok=True)
    (job / rendered.script_name).write_text(rendered.script)
    manifest = Path(rendered.manifest_path)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(rendered.manifest)
    return job / rendered.script_name


def _run_task(script: Path, index: int, env: dict, count: int | None = None) -> subprocess.CompletedProcess:
    """Array task ``index`` of ``count`` (default: one task per manifest line), as Slurm would start it."""
    if count is None:
        count = int(re.search(r"#SBATCH --array=0-(\d+)%", script.read_text()).group(1)) + 1
    task_env = {
        **env,
        "SLURM_ARRAY_TASK_ID": str(index),
        "SLURM_ARRAY_TASK_COUNT": str(count),
        "SLURM_ARRAY_JOB_ID": "42",
    }
    return subprocess.run(["bash", str(script)], env=task_env, capture_output=True, text=True, timeout=120)


def test_rendered_fetch_and_stage_arrays_run_each_shard(source, shards_dir, s3, bucket, aws_env, work):
    """The scripts Slurm would run, executed task by task with bash (the cluster tests run them in Slurm)."""
    selection = ShardSelection.parse("0,2", url_template=source.base_url + "{name}")
    entries = build_manifest(selection, s3_bucket=bucket, fsx_dir=str(work / "fsx"))
    spec = _spec(work, env={"AWS_ENDPOINT_URL": aws_env["AWS_ENDPOINT_URL"]})
    fetch = render_fetch_array(spec, entries, part_size=16 * 1024, retries=3)
    stage = render_stage_array(spec, entries)
    assert fetch.lines == fetch.array_tasks == 2 and "#SBATCH --array=0-1%2" in fetch.script
    assert fetch.manifest_path == f"{work}/manifests/{fetch.manifest_sha256}.tsv" == stage.manifest_path
    env = {k: v for k, v in aws_env.items() if k != "AWS_ENDPOINT_URL"}  # must come from the script
    fetch_script, stage_script = _write_job(fetch, work), _write_job(stage, work)
    for index in range(2):
        proc = _run_task(fetch_script, index, env)
        assert proc.returncode == 0, proc.stderr
        assert result_of(proc)["parts"] > 1
    assert keys(s3, bucket) == [f"c4/en/{e.name}" for e in entries]
    for index in range(2):
        proc = _run_task(stage_script, index, env)
        assert proc.returncode == 0, proc.stderr
    for entry in entries:
        assert Path(entry.fsx_path).read_bytes() == (shards_dir / entry.name).read_bytes()
    beyond = _run_task(fetch_script, 2, env)  # a task past the manifest's end has no line to take
    assert beyond.returncode == 0 and "fetch_to_s3" not in beyond.stderr, beyond.stderr


def _stub_python(work: Path) -> Path:
    """An 'interpreter' that records its argv and one env var, standing in for the real one."""
    stub = work / "bin" / "python-stub"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "with open(os.environ['STUB_OUT'], 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'note': os.environ.get('NOTE')}) + '\\n')\n"
    )
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    return stub


def test_rendered_tokenize_array_passes_neox_flags(work):
    stub = _stub_python(work)
    entries = build_tokenize_manifest(
        build_manifest(ShardSelection.parse(3), s3_bucket="neox-data", fsx_dir=str(work / "raw")),
        tokens_dir=str(work / "tokens"),
    )
    rendered = render_tokenize_array(
        _spec(work, python=str(stub), cpus_per_task=2),
        entries,
        vocab_file="/fsx/tokenizers/20B_tokenizer.json",
        extra_flags={"--log-interval": "1000"},
    )
    assert "#SBATCH --array=0-2%2" in rendered.script and "#SBATCH --cpus-per-task=2" in rendered.script
    script = _write_job(rendered, work)
    out = work / "calls.jsonl"
    proc = _run_task(script, 1, {**os.environ, "STUB_OUT": str(out)})
    assert proc.returncode == 0, proc.stderr
    call = json.loads(out.read_text())
    assert call["argv"] == [
        str(CLUSTER / "preprocess_data.py"),
        "--input", entries[1].input,
        "--output-prefix", entries[1].output_prefix,
        "--vocab-file", "/fsx/tokenizers/20B_tokenizer.json",
        "--tokenizer-type", "HFTokenizer",
        "--jsonl-keys", "text",
        "--append-eod",
        "--dataset-impl", "mmap",
        "--workers", "2",
        "--log-interval", "1000",
    ]  # fmt: skip
    assert (work / "tokens").is_dir()

    # a shard whose outputs exist is skipped without starting the tokenizer
    prefix = entries[2].output_prefix
    Path(prefix + "_text_document.bin").write_bytes(b"\0\0")
    Path(prefix + "_text_document.idx").write_bytes(b"MMIDIDX")
    proc = _run_task(script, 2, {**os.environ, "STUB_OUT": str(out)})
    assert proc.returncode == 0 and "already exist; skipped" in proc.stdout
    assert len(out.read_text().splitlines()) == 1


def test_container_image_runs_each_task_under_srun(work):
    stub = _stub_python(work)
    fake_srun = work / "bin" / "srun"
    fake_srun.write_text(
        '#!/bin/bash\necho "srun $*" >> "$SRUN_LOG"\n'
        'while [[ $1 == --container-* ]]; do shift; done\nexec "$@"\n'
    )
    fake_srun.chmod(0o755)
    entries = [ManifestEntry("a.json.gz", "http://h/a.json.gz", "s3://neox-data/a.json.gz", "/fsx/a.json.gz")]
    spec = _spec(
        work, python=str(stub), image="nvcr.io#nvidia/pytorch:23.12-py3", container_mounts="/fsx:/fsx"
    )
    script = _write_job(render_stage_array(spec, entries), work)
    env = {
        **os.environ,
        "PATH": f"{fake_srun.parent}:{os.environ['PATH']}",
        "SRUN_LOG": str(work / "srun.log"),
        "STUB_OUT": str(work / "calls.jsonl"),
    }
    proc = _run_task(script, 0, env)
    assert proc.returncode == 0, proc.stderr
    assert (
        (work / "srun.log")
        .read_text()
        .startswith(
            "srun --container-image=nvcr.io#nvidia/pytorch:23.12-py3 --container-mounts=/fsx:/fsx "
            + str(stub)
        )
    )
    assert json.loads((work / "calls.jsonl").read_text())["argv"][1:] == [
        "--manifest", str(work / "manifests" / f"{manifest_digest(format_manifest(entries))}.tsv"),
        "--index", "0"]  # fmt: skip


def test_env_values_reach_the_task_literally(work):
    """Quoting: a value full of shell syntax arrives unchanged and runs nothing."""
    stub = _stub_python(work)
    canary = work / "pwned"
    note = f'it\'s $HOME `touch {canary}` $(touch {canary}) "q" ; & | > <'
    entries = [ManifestEntry("a.json.gz", "http://h/a.json.gz", "s3://neox-data/a.json.gz", "/fsx/a.json.gz")]
    script = _write_job(render_stage_array(_spec(work, python=str(stub), env={"NOTE": note}), entries), work)
    proc = _run_task(script, 0, {**os.environ, "STUB_OUT": str(work / "calls.jsonl")})
    assert proc.returncode == 0, proc.stderr
    assert json.loads((work / "calls.jsonl").read_text())["note"] == note
    assert not canary.exists()


def test_every_rendered_template_is_valid_bash_with_no_placeholder_left(work):
    entries = build_manifest(ShardSelection.parse(5), s3_bucket="neox-data", fsx_dir="/fsx/raw")
    spec = _spec(
        work,
        sbatch={"partition": "cpu", "time": "02:00:00", "mem": "8G"},
        parallelism=16,
        image="/fsx/apps/gpt-neox.sqsh",
        container_mounts="/fsx:/fsx",
    )
    rendered = [
        render_fetch_array(spec, entries),
        render_stage_array(spec, entries),
        render_tokenize_array(
            spec, build_tokenize_manifest(entries, tokens_dir="/fsx/tok"), vocab_file="/fsx/v.json"
        ),
    ]
    for item in rendered:
        assert "@@" not in item.script
        assert "#SBATCH --array=0-4%5" in item.script, "parallelism is capped at the array size"
        assert "#SBATCH --partition=cpu\n#SBATCH --time=02:00:00\n#SBATCH --mem=8G" in item.script
        assert f"#SBATCH --output={work}/job/%x-%A_%a.out" in item.script
        assert item.manifest.count("\n") == 5 and item.lines == 5
        assert f"MANIFEST={item.manifest_path}\nMANIFEST_LINES=5\n" in item.script
        check = subprocess.run(["bash", "-n"], input=item.script, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        # no per-shard value is in the script itself
        assert entries[0].source not in item.script and "c4-train" not in item.script


@pytest.mark.parametrize(
    ("lines", "limit", "tasks"),
    [(4, 1001, 4), (1001, 1001, 1001), (1025, 1001, 1001), (41, 16, 16), (1, 1, 1)],
)
def test_array_tasks_stop_at_the_clusters_limit(lines, limit, tasks):
    assert array_tasks(lines, limit) == tasks


def test_a_task_takes_every_nth_line_and_reports_the_worst_failure(work):
    """Five lines in an array of two tasks (a cluster whose MaxArraySize is 2): task 0 takes lines 0, 2
    and 4, task 1 lines 1 and 3. A failing line does not stop the others; the task's status is 3 when a
    line failed for good, else the transient 75."""
    stub = work / "bin" / "python-stub"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text(  # records its --index, and exits with the code the env var names for that line
        f"#!{sys.executable}\nimport os, sys\ni = sys.argv[sys.argv.index('--index') + 1]\n"
        "open(os.environ['STUB_OUT'], 'a').write(i + '\\n')\n"
        "sys.exit(int(os.environ.get('EXIT_' + i, '0')))\n"
    )
    stub.chmod(0o755)
    entries = build_manifest(ShardSelection.parse(5), s3_bucket="neox-data", fsx_dir=str(work / "raw"))
    rendered = render_stage_array(_spec(work, python=str(stub)), entries, max_array_size=2)
    assert rendered.lines == 5 and rendered.array_tasks == 2 and "#SBATCH --array=0-1%2" in rendered.script
    script = _write_job(rendered, work)
    out = work / "calls"
    env = {**os.environ, "STUB_OUT": str(out)}
    assert _run_task(script, 0, env).returncode == 0
    assert out.read_text().split() == ["0", "2", "4"]
    out.unlink()
    assert _run_task(script, 1, env).returncode == 0
    assert out.read_text().split() == ["1", "3"]
    out.unlink()
    assert _run_task(script, 0, {**env, "EXIT_0": "75"}).returncode == 75
    assert out.read_text().split() == ["0", "2", "4"], "a failed line does not stop the task's other lines"
    assert _run_task(script, 0, {**env, "EXIT_0": "3", "EXIT_4": "75"}).returncode == 3
    no_count = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(
        ["bash", str(script)], env={**no_count, "SLURM_ARRAY_TASK_ID": "0"}, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "runs as a Slurm array job" in proc.stderr


@pytest.mark.parametrize(
    ("size", "parallel", "expected"), [(1, 4, "0-0%1"), (4, 4, "0-3%4"), (1024, 32, "0-1023%32")]
)
def test_array_directive(size, parallel, expected):
    assert array_directive(size, parallel) == expected


ENTRY = ManifestEntry("a.json.gz", "http://h/a.json.gz", "s3://neox-data/a.json.gz", "/fsx/a.json.gz")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"job_name": "fetch\n#SBATCH --wrap=reboot"}, "job_name"),
        ({"job_name": "--wrap=reboot"}, "job_name"),
        ({"python": "python3; reboot"}, "python"),
        ({"python": "-c"}, "python"),
        ({"job_dir": "/fsx/jobs/$(reboot)"}, "job_dir"),
        ({"job_dir": "/fsx/my jobs"}, "job_dir"),
        ({"job_dir": "jobs/relative"}, "job_dir"),
        ({"job_dir": "/fsx/../etc"}, "job_dir"),
        ({"job_dir": "/fsx/%j"}, "job_dir"),
        ({"scripts_dir": "/opt/x`id`"}, "scripts_dir"),
        ({"log_dir": "/fsx/logs\n#SBATCH --wrap=x"}, "log_dir"),
        ({"sbatch": {"wrap": "reboot"}}, "sbatch"),
        ({"sbatch": {"partition": "gpu\n#SBATCH --wrap=x"}}, "sbatch --partition"),
        ({"sbatch": {"time": "1:00; reboot"}}, "sbatch --time"),
        ({"env": {"AWS_ENDPOINT_URL": "http://x\nreboot"}}, "env[AWS_ENDPOINT_URL]"),
        ({"env": {"BAD NAME": "x"}}, "env name"),
        ({"image": "img;reboot"}, "image"),
        ({"container_mounts": "/fsx:/fsx"}, "container_mounts"),
        ({"parallelism": 0}, "parallelism"),
        ({"cpus_per_task": "2"}, "cpus_per_task"),
    ],
)
def test_injection_is_refused_naming_the_field(work, overrides, field):
    with pytest.raises(UnsafeValueError) as info:
        render_stage_array(_spec(Path("/tmp/neoxflow-test"), **overrides), [ENTRY])
    assert str(info.value).startswith(field), str(info.value)


def test_bad_manifest_values_and_flags_are_refused():
    spec = _spec(Path("/tmp/neoxflow-test"))
    with pytest.raises(UnsafeValueError, match="manifest entry 1 source"):
        render_fetch_array(spec, [ManifestEntry("a", "http://h/a\tb", "s3://b/a", "/fsx/a")])
    with pytest.raises(UnsafeValueError, match="manifest entry 2 output_prefix"):
        render_tokenize_array(
            spec,
            [TokenizeEntry("a", "/fsx/a", "/t/a"), TokenizeEntry("b", "/fsx/b", "/t/b\nx")],
            vocab_file="/fsx/v.json",
        )
    with pytest.raises(UnsafeValueError, match="at least one"):
        render_stage_array(spec, [])
    with pytest.raises(UnsafeValueError, match="^extra_flags"):
        render_tokenize_array(
            spec, [TokenizeEntry("a", "/fsx/a", "/t/a")], vocab_file="/v", extra_flags={"--wrap": None}
        )
    with pytest.raises(UnsafeValueError, match="^extra_flags --log-interval"):
        render_tokenize_array(
            spec,
            [TokenizeEntry("a", "/fsx/a", "/t/a")],
            vocab_file="/v",
            extra_flags={"--log-interval": "1; reboot"},
        )
    with pytest.raises(UnsafeValueError, match="^vocab_file"):
        render_tokenize_array(spec, [TokenizeEntry("a", "/fsx/a", "/t/a")], vocab_file="v.json")
    with pytest.raises(UnsafeValueError, match="^part_size"):
        render_fetch_array(spec, [ENTRY], part_size=0)


def test_objects_beyond_the_copyobject_limit_use_a_managed_multipart_copy(
    source, shards_dir, s3, bucket, monkeypatch
):
    """In-process: pretend CopyObject's 5 GiB limit is 0 so the multipart-copy branch runs on a small file."""
    import datamove
    import fetch_to_s3

    monkeypatch.setattr(fetch_to_s3, "COPY_OBJECT_LIMIT", 0)
    name = "c4-train.00002-of-01024.json.gz"
    quick = datamove.CopyOptions(backoff=0.01)
    result = fetch_to_s3.fetch(
        source.url_for(name),
        f"s3://{bucket}/{name}",
        name=name,
        client=s3,
        part_size=16 * 1024,
        options=quick,
    )
    assert result["status"] == "fetched" and result["parts"] > 1
    obj = s3.get_object(Bucket=bucket, Key=name)
    assert obj["Body"].read() == (shards_dir / name).read_bytes()
    assert obj["Metadata"]["sha256"] == sha256_of(shards_dir / name)
    assert keys(s3, bucket) == [name] and pending_uploads(s3, bucket) == []


def test_http_source_command_line_serves_faults_and_stats(shards_dir, work):
    """The demo starts the source as a process: port file, injected 404, Range, request statistics."""
    port_file = work / "port"
    name = "c4-train.00000-of-01024.json.gz"
    missing = "c4-train.00001-of-01024.json.gz"
    args = [
        "--dir",
        str(shards_dir),
        "--port-file",
        str(port_file),
        "--not-found",
        missing,
        "--fail",
        f"{name}=503:1",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(LOCAL / "http_source.py"), *args], stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "http_source did not start"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port_file.read_text().strip()}/"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + name, timeout=5)
        assert info.value.code == 503
        request = urllib.request.Request(base + name, headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 206 and answer.read() == (shards_dir / name).read_bytes()[10:20]
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "c4-train.00001-of-01024.json.gz", timeout=5)
        assert info.value.code == 404
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "../" + Path(__file__).name, timeout=5)
        with urllib.request.urlopen(base + "_neoxflow/requests", timeout=5) as answer:
            stats = json.loads(answer.read())
        assert [(r["name"], r["status"]) for r in stats][:3] == [
            (name, 503),
            (name, 206),
            ("c4-train.00001-of-01024.json.gz", 404),
        ]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


class _FlakySource:
    """In-memory source for the copy loop: drops after ``drop_every`` bytes per connection."""

    description = "mem://flaky"

    def __init__(self, data: bytes, drop_every: int, honour_range: bool = True, drops: int | None = None):
        self.data, self.drop_every, self.honour_range, self.drops = data, drop_every, honour_range, drops
        self.opens: list[int] = []

    def size(self):
        return len(self.data)

    def open(self, offset):
        import io

        import datamove

        self.opens.append(offset)
        start = offset if self.honour_range else 0
        cut = self.drops is None or len(self.opens) <= self.drops
        end = start + self.drop_every if cut else len(self.data)
        return datamove.Opened(io.BytesIO(self.data[start:end]), start, len(self.data))

    def read(self, opened, amount):
        return opened.stream.read(amount)


def test_pump_keeps_going_while_progress_is_made_and_gives_up_on_a_stall():
    import datamove

    data = os.urandom(100_000)
    out = bytearray()
    source = _FlakySource(data, drop_every=7_000)
    copied = datamove.pump(
        source, out.extend, out.clear, name="flaky", chunk_size=4096, retries=2, sleep=lambda s: None
    )
    assert copied == len(data) and bytes(out) == data
    assert len(source.opens) == 15, "14 drops survived with retries=2: each drop came after progress"

    stalled = _FlakySource(data, drop_every=0)
    with pytest.raises(datamove.TransientError, match="giving up after 2 retries"):
        datamove.pump(stalled, out.extend, out.clear, name="stalled", retries=2, sleep=lambda s: None)
    assert stalled.opens == [0, 0, 0]


def test_pump_restarts_the_sink_when_the_source_ignores_ranges():
    import datamove

    data = os.urandom(50_000)
    out = bytearray()
    restarts = []
    source = _FlakySource(data, drop_every=30_000, honour_range=False, drops=1)

    def restart():
        restarts.append(len(out))
        out.clear()

    assert (
        datamove.pump(source, out.extend, restart, name="norange", chunk_size=8192, sleep=lambda s: None)
        == 50_000
    )
    assert bytes(out) == data and restarts == [30_000]
