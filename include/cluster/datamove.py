"""Shared plumbing of the cluster-side data movers (fetch_to_s3.py, stage_to_fsx.py).

These scripts run as Slurm array tasks, one shard each, on the cluster (in the NeoX container or the
local cluster's Python env). They must not import neoxflow or airflow; they need only the standard
library and boto3. What lives here:

* the manifest format: one tab-separated line per array task, line i for ``SLURM_ARRAY_TASK_ID=i``
  (written by ``neoxflow.data.shards.format_manifest``);
* the errors: *transient* (retry: connection drops, timeouts, 5xx) and *permanent* (404, 403, bad
  input: fail now, with a message naming the shard), and the S3 client and its error sorting;
* what a byte source offers the copy loop (:class:`Source`, :class:`Opened`); the sources themselves
  (HTTP(S), S3, local files) are in :mod:`byte_sources`;
* :func:`pump`, the copy loop: read chunks, hand them to a sink, resume from the last byte after a
  transient failure with jittered exponential backoff, and detect truncated responses;
* progress lines (MB, MB/s) and a final machine-readable ``NEOXFLOW_RESULT {json}`` line.

Exit codes: 0 done (or skipped), 2 usage, 3 permanent error (do not retry the task), 75 transient
error after all retries (EX_TEMPFAIL: a later retry of the task may succeed).
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PERMANENT = 3
EXIT_TRANSIENT = 75

MiB = 1024 * 1024
RESULT_PREFIX = "NEOXFLOW_RESULT "


class DataMoveError(Exception):
    """Base of the errors the movers report; ``exit_code`` tells Slurm/Airflow whether to retry."""

    exit_code = EXIT_TRANSIENT

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class TransientError(DataMoveError):
    """Worth retrying: the connection dropped, the server said 5xx, a read timed out."""

    exit_code = EXIT_TRANSIENT


class PermanentError(DataMoveError):
    """Retrying cannot help: the file does not exist, access is denied, the data is corrupt."""

    exit_code = EXIT_PERMANENT


class SinkError(DataMoveError):
    """Writing the copy failed (S3 upload, local disk) after the client's own retries; the source is
    not re-read for this, the whole task fails and a later task retry starts clean."""

    exit_code = EXIT_TRANSIENT


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- manifest and arguments


def read_manifest_line(path: str, index: int, columns: int) -> list[str]:
    """Return the ``columns`` tab-separated fields of line ``index`` (0-based) of ``path``."""
    try:
        with open(path, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle):
                if lineno == index:
                    fields = line.rstrip("\n").split("\t")
                    if len(fields) != columns or not all(fields):
                        raise PermanentError(
                            f"manifest {path} line {index + 1}: expected {columns} non-empty tab-separated "
                            f"fields, got {len(fields)}"
                        )
                    return fields
    except OSError as exc:
        raise PermanentError(f"manifest {path}: cannot read ({exc.strerror})") from None
    raise PermanentError(f"manifest {path}: has no line {index + 1} (array index {index})")


def task_index(value: int | None) -> int:
    """The array index: ``--index`` when given, else ``SLURM_ARRAY_TASK_ID``."""
    if value is not None:
        return value
    env = os.environ.get("SLURM_ARRAY_TASK_ID")
    if env is None or not env.isdigit():
        raise PermanentError("no --index given and SLURM_ARRAY_TASK_ID is not set to a number")
    return int(env)


def parse_size(text: str) -> int:
    """``"8MiB"``, ``"64M"``, ``"1048576"`` -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size such as 64MiB or 1048576")
    scale = {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB}[match.group(2).upper()]
    return int(match.group(1)) * scale


def parse_s3_uri(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key:
        raise PermanentError(f"{uri!r} is not an s3://bucket/key URI")
    return parts.netloc, key


# ---------------------------------------------------------------- S3


def s3_client():
    """A boto3 S3 client: endpoint from ``AWS_ENDPOINT_URL`` (moto, MinIO), credentials from the usual
    AWS chain (env, profile, instance role) - never from arguments, which would land in ``ps`` and logs.
    """
    # plain botocore: importing boto3 (and s3transfer) costs more start-up time than a shard's task needs
    import botocore.session
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    retries = int(os.environ.get("NEOXFLOW_S3_RETRIES") or 8)  # retries after the first attempt
    config = Config(
        retries={"max_attempts": retries, "mode": "standard"}, connect_timeout=20, read_timeout=120
    )
    client = botocore.session.get_session().create_client("s3", endpoint_url=endpoint, config=config)
    client.meta.events.register("needs-retry.s3", _RetryLogger(retries + 1))
    return client


class _RetryLogger:
    """Say so in the task's log when an S3 call fails and botocore retries it (otherwise silent): an
    endpoint outage that the retries ride out must still be visible. Returns None: decides nothing.

    ``max_attempts`` counts every attempt (botocore's ``retries.max_attempts`` counts the retries).
    """

    def __init__(self, max_attempts: int):
        self.max_attempts = max_attempts

    def __call__(self, attempts=0, operation=None, response=None, caught_exception=None, **_):
        if caught_exception is not None:
            what = f"{type(caught_exception).__name__}: {caught_exception}"
        else:
            status = int(getattr(response[0], "status_code", 0) or 0) if response else 0
            if status < 500 and status != 429:
                return None
            what = f"HTTP {status}"
        name = getattr(operation, "name", "request")
        then = "; botocore retries it" if attempts < self.max_attempts else "; no attempts left"
        log(f"S3 {name} attempt {attempts}/{self.max_attempts} failed ({what}){then}")
        return None


def s3_error_code(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def classify_s3_error(exc: BaseException, what: str) -> DataMoveError:
    """Sort a botocore error into transient or permanent, with a message naming ``what``."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code, status = s3_error_code(exc)
        text = f"{what}: S3 said {code or status} ({exc})"
        if status in (404, 403, 400, 401) or code in ("NoSuchKey", "NoSuchBucket", "AccessDenied", "404"):
            return PermanentError(text)
        return TransientError(text)
    return TransientError(f"{what}: {type(exc).__name__}: {exc}")


def head_object(client, bucket: str, key: str) -> dict[str, Any] | None:
    """HEAD an object; ``None`` when it does not exist."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code, status = s3_error_code(exc)
        if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
            return None
        raise classify_s3_error(exc, f"HEAD s3://{bucket}/{key}") from None
    except BotoCoreError as exc:  # endpoint unreachable after botocore's retries: a later try may succeed
        raise TransientError(f"HEAD s3://{bucket}/{key}: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------- sources (implemented in byte_sources)


@dataclass
class Opened:
    """An open byte stream starting at ``start`` of a resource of ``total`` bytes (None if unknown)."""

    stream: BinaryIO
    start: int
    total: int | None


class Source(Protocol):
    description: str

    def size(self) -> int | None: ...

    def open(self, offset: int) -> Opened: ...

    def read(self, opened: Opened, amount: int) -> bytes: ...


# ---------------------------------------------------------------- the copy loop


class Progress:
    """Prints ``label: 120.0/316.2 MB (38%) 45.3 MB/s`` at most every ``interval`` seconds."""

    def __init__(self, label: str, *, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._last = self.started

    def update(self, done: int, total: int | None, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        log(f"{self.label}: {self.line(done, total, now - self.started)}")

    @staticmethod
    def line(done: int, total: int | None, elapsed: float) -> str:
        rate = done / MiB / elapsed if elapsed > 0 else 0.0
        if total:
            return f"{done / MiB:.1f}/{total / MiB:.1f} MB ({100.0 * done / total:.0f}%) {rate:.1f} MB/s"
        return f"{done / MiB:.1f} MB {rate:.1f} MB/s"

    def elapsed(self) -> float:
        return self.clock() - self.started


@dataclass(frozen=True)
class CopyOptions:
    """How every mover's copy loop reads: the read size, the retries per stall, the first retry delay
    (it doubles) and the seconds between progress lines. The same flags on every mover's command line."""

    chunk_size: int = MiB
    retries: int = 5
    backoff: float = 2.0
    progress_interval: float = 10.0

    @staticmethod
    def add_arguments(parser: Any) -> None:
        parser.add_argument("--chunk-size", type=parse_size, default=MiB, help="read size (default 1MiB)")
        parser.add_argument("--retries", type=int, default=5, help="retries per stall (default 5)")
        parser.add_argument("--backoff", type=float, default=2.0, help="first retry delay, s (doubles)")
        parser.add_argument(
            "--progress-interval", type=float, default=10.0, help="seconds between progress lines"
        )

    @classmethod
    def from_args(cls, args: Any) -> CopyOptions:
        return cls(args.chunk_size, args.retries, args.backoff, args.progress_interval)


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...

    def restart(self) -> None: ...


#: the defaults of every flag above, for callers that do not parse a command line
DEFAULT_COPY = CopyOptions()


def copy_into(source: Source, sink: Sink, *, name: str, label: str, options: CopyOptions) -> Progress:
    """:func:`pump` ``source`` into ``sink`` with ``options``, printing progress as ``<label> <name>``;
    return the progress (its ``elapsed()`` is the copy's time)."""
    progress = Progress(f"{label} {name}", interval=options.progress_interval)
    pump(
        source,
        sink.write,
        sink.restart,
        name=name,
        chunk_size=options.chunk_size,
        retries=options.retries,
        backoff=options.backoff,
        progress=progress,
    )
    return progress


def pump(
    source: Source,
    write: Callable[[bytes], None],
    restart: Callable[[], None],
    *,
    name: str,
    chunk_size: int = MiB,
    retries: int = 5,
    backoff: float = 2.0,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Copy ``source`` into ``write`` chunk by chunk; return the number of bytes copied.

    After a transient failure the source is reopened at the first missing byte; if it ignores the
    range and starts again from byte 0, ``restart()`` tells the sink to throw away what it has.
    ``retries`` counts consecutive failures without progress, so a long download over a flaky link
    that keeps advancing is not abandoned. Errors raised by ``write`` are not retried here.
    """
    offset = 0
    total: int | None = None
    failures = 0
    offset_at_last_failure = -1
    while True:
        try:
            opened = source.open(offset)
            try:
                if opened.start != offset:
                    if opened.start != 0:
                        raise TransientError(f"asked for byte {offset}, got data from byte {opened.start}")
                    log(f"{name}: source ignored the range request; starting again from byte 0")
                    restart()
                    offset = 0
                if opened.total is not None:
                    total = opened.total
                while True:
                    chunk = source.read(opened, chunk_size)
                    if not chunk:
                        break
                    write(chunk)
                    offset += len(chunk)
                    if progress is not None:
                        progress.update(offset, total)
            finally:
                opened.stream.close()
            if total is not None and offset < total:
                raise TransientError(f"connection closed after {offset} of {total} bytes")
            if total is not None and offset > total:
                raise PermanentError(f"received {offset} bytes, more than the announced {total}")
            return offset
        except TransientError as exc:
            if offset != offset_at_last_failure:
                failures = 0
            offset_at_last_failure = offset
            failures += 1
            if failures > retries:
                raise TransientError(f"giving up after {retries} retries: {exc}") from None
            delay = backoff * (2 ** (failures - 1)) * random.uniform(0.5, 1.0)
            log(f"{name}: {exc}; retry {failures}/{retries} from byte {offset} in {delay:.2f}s")
            sleep(delay)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit_result(**fields: Any) -> None:
    """One machine-readable line on stdout, for the Airflow side to collect per-shard numbers."""
    print(RESULT_PREFIX + json.dumps(fields, sort_keys=True), flush=True)


def run_shard(name: str, move: Callable[[], dict[str, Any]]) -> int:
    """Move one shard: its errors name it, its result fields become the ``NEOXFLOW_RESULT`` line."""
    try:
        result = move()
    except DataMoveError as exc:
        raise type(exc)(f"shard {name}: {exc}", status=exc.status) from None
    emit_result(**result, peak_rss_mb=round(peak_rss_mb(), 1))
    return EXIT_OK


def run_main(body: Callable[[], int]) -> int:
    """Run a mover's main body, turning its errors into one clear line and the matching exit code."""
    try:
        return body()
    except DataMoveError as exc:
        log(f"ERROR: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        log("ERROR: interrupted")
        return EXIT_TRANSIENT
