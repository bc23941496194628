#!/usr/bin/env python3
"""A tiny HTTP server serving one folder, standing in for the C4 host in tests and the demo.

It speaks what the fetch step relies on: ``GET`` and ``HEAD`` with ``Content-Length``, and ``Range:
bytes=N-`` / ``bytes=N-M`` answered with ``206`` and ``Content-Range`` (so a dropped download resumes).
Faults can be injected per file name, to prove the fetch step's error handling on the real path:

* ``not_found``: answer 404 for that name;
* ``drop_after``: send only N bytes of the body, then cut the connection - once per name;
* ``fail``: answer a status (e.g. 503) for the first COUNT requests of that name;
* ``no_range``: ignore ``Range`` headers (answer 200 with the whole file), like some mirrors.

Every request is recorded (method, name, range, status, bytes sent), so a test can prove that a second
run fetched no body. In-process use (tests)::

    with HttpSourceServer(folder) as server:
        server.faults.drop_after["c4-train.00001-of-01024.json.gz"] = 100_000
        url = server.url_for("c4-train.00001-of-01024.json.gz")

Command line (demo)::

    http_source.py --dir DIR [--port 0] [--port-file F] [--not-found NAME] [--drop-after NAME=BYTES]
                   [--fail NAME=STATUS:COUNT] [--no-range]

Statistics are also served as JSON at ``/_neoxflow/requests``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sys
import threading
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

STATS_PATH = "/_neoxflow/requests"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Faults:
    """Faults to inject, keyed by file name (the last path component). Safe to change while serving."""

    not_found: set[str] = field(default_factory=set)
    drop_after: dict[str, int] = field(default_factory=dict)
    fail: dict[str, tuple[int, int]] = field(default_factory=dict)
    no_range: bool = False


@dataclass
class RequestRecord:
    method: str
    name: str
    range: str | None
    status: int
    body_bytes: int


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        if self.server.verbose:
            super().log_message(format, *args)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if urlsplit(self.path).path == STATS_PATH:
            body = json.dumps([asdict(r) for r in self.server.snapshot()]).encode()
            self._headers(200, len(body), "application/json")
            self.wfile.write(body)
            return
        self._serve(head=False)

    def _headers(self, status: int, length: int, ctype: str = "application/octet-stream", extra=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "none" if self.server.faults.no_range else "bytes")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _error(self, status: int, name: str, range_header: str | None) -> None:
        body = f"{status} {name}\n".encode()
        self._headers(status, len(body), "text/plain")
        if self.command != "HEAD":
            self.wfile.write(body)
        self.server.record(RequestRecord(self.command, name, range_header, status, 0))

    def _serve(self, *, head: bool) -> None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        name = rel.rsplit("/", 1)[-1]
        range_header = self.headers.get("Range")
        faults = self.server.faults
        path = os.path.realpath(os.path.join(self.server.root, rel))
        if not rel or not path.startswith(self.server.root + os.sep) or not os.path.isfile(path):
            return self._error(404, name, range_header)
        if name in faults.not_found:
            return self._error(404, name, range_header)
        if self.server.take_failure(name) is not None:
            return self._error(faults.fail[name][0], name, range_header)

        size = os.path.getsize(path)
        start, end, status, extra = 0, size - 1, 200, {}
        match = _RANGE.match(range_header or "")
        if match and not faults.no_range:
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            if start >= size or end < start:
                return self._error(416, name, range_header)
            status, extra = 206, {"Content-Range": f"bytes {start}-{end}/{size}"}
        length = end - start + 1
        self._headers(status, length, extra=extra)
        if head:
            self.server.record(RequestRecord("HEAD", name, range_header, status, 0))
            return
        limit = self.server.take_drop(name)
        sent = 0
        with open(path, "rb") as handle:
            handle.seek(start)
            while sent < length:
                want = min(256 * 1024, length - sent)
                if limit is not None:
                    want = min(want, limit - sent)
                    if want <= 0:
                        break
                block = handle.read(want)
                if not block:
                    break
                self.wfile.write(block)
                sent += len(block)
        self.server.record(RequestRecord("GET", name, range_header, status, sent))
        if sent < length:
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, root: str, faults: Faults, verbose: bool):
        super().__init__(address, _Handler)
        self.root = os.path.realpath(root)
        self.faults = faults
        self.verbose = verbose
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._failures_used: dict[str, int] = {}
        self._dropped: set[str] = set()

    def record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._records.append(rec)

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def take_failure(self, name: str) -> int | None:
        """Return the status to fail with if ``name`` still has injected failures left."""
        with self._lock:
            if name not in self.faults.fail:
                return None
            status, count = self.faults.fail[name]
            used = self._failures_used.get(name, 0)
            if used >= count:
                return None
            self._failures_used[name] = used + 1
            return status

    def take_drop(self, name: str) -> int | None:
        """The byte count after which to cut this response, once per name."""
        with self._lock:
            if name in self.faults.drop_after and name not in self._dropped:
                self._dropped.add(name)
                return self.faults.drop_after[name]
            return None


class HttpSourceServer:
    """Serves ``folder`` on ``host:port`` (port 0 = a free one) from a background thread."""

    def __init__(
        self,
        folder: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        verbose: bool = False,
    ):
        self.faults = faults or Faults()
        self._server = _Server((host, port), folder, self.faults, verbose)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._server.server_address[0]}:{self.port}/"

    def url_for(self, name: str) -> str:
        return self.base_url + name

    @property
    def requests(self) -> list[RequestRecord]:
        return self._server.snapshot()

    def count(self, method: str, name: str | None = None) -> int:
        return sum(1 for r in self.requests if r.method == method and (name is None or r.name == name))

    def start(self) -> HttpSourceServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="http_source", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HttpSourceServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _name_value(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.rpartition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"{flag}: expected NAME=VALUE, got {text!r}")
    return name, value


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="folder to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="write the chosen port here (atomically) once listening")
    parser.add_argument("--not-found", action="append", default=[], metavar="NAME")
    parser.add_argument("--drop-after", action="append", default=[], metavar="NAME=BYTES")
    parser.add_argument("--fail", action="append", default=[], metavar="NAME=STATUS:COUNT")
    parser.add_argument("--no-range", action="store_true", help="ignore Range headers")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir!r} is not a folder")
    faults = Faults(not_found=set(args.not_found), no_range=args.no_range)
    try:
        for item in args.drop_after:
            name, value = _name_value(item, "--drop-after")
            faults.drop_after[name] = int(value)
        for item in args.fail:
            name, value = _name_value(item, "--fail")
            status, _, count = value.partition(":")
            faults.fail[name] = (int(status), int(count or 1))
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))

    server = HttpSourceServer(args.dir, host=args.host, port=args.port, faults=faults, verbose=args.verbose)
    if args.port_file:
        temp = f"{args.port_file}.tmp.{os.getpid()}"
        with open(temp, "w") as handle:
            handle.write(f"{server.port}\n")
        os.replace(temp, args.port_file)
    print(f"serving {os.path.abspath(args.dir)} at {server.base_url}", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
