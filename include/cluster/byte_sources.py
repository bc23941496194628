"""The byte sources of the data movers (fetch_to_s3.py, stage_to_fsx.py): what :func:`datamove.pump`
copies from, resumable after a dropped connection.

* HTTP(S) with ``Range`` (:class:`HttpSource`), S3 ``GetObject`` with ``Range`` (:class:`S3Source`),
  local files (:class:`FileSource`); :func:`open_source` picks one by the URI's scheme;
* their errors are sorted into *transient* (retry: connection drops, timeouts, 5xx) and *permanent*
  (404, 403, bad input: fail now, with a message naming the shard).
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit

from datamove import (
    Opened,
    PermanentError,
    Source,
    TransientError,
    classify_s3_error,
    head_object,
    parse_s3_uri,
    s3_client,
)

USER_AGENT = "neoxflow-datamove/0.1"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class _KeepMethodRedirect(urllib.request.HTTPRedirectHandler):
    """urllib turns a redirected HEAD into a GET (downloading the body); keep the method."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and req.get_method() == "HEAD":
            new.method = "HEAD"
        return new


class HttpSource:
    """An HTTP(S) URL read with ``Range`` requests so a dropped connection resumes where it stopped."""

    def __init__(self, url: str, *, timeout: float = 60.0):
        self.url = url
        self.description = url
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_KeepMethodRedirect)

    def _request(self, method: str, headers: dict[str, str]):
        request = urllib.request.Request(
            self.url, method=method, headers={"User-Agent": USER_AGENT, **headers}
        )
        try:
            return self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            message = f"{method} {self.url} returned HTTP {exc.code} {exc.reason}"
            if exc.code in _TRANSIENT_HTTP:
                raise TransientError(message, status=exc.code) from None
            raise PermanentError(message + " (not retried)", status=exc.code) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransientError(f"{method} {self.url} failed: {reason}") from None

    def size(self) -> int | None:
        """Content-Length from a HEAD request, or None when the server does not say (or refuses HEAD)."""
        try:
            response = self._request("HEAD", {})
        except PermanentError as exc:
            if exc.status in (404, 410, 401, 403):
                raise
            return None
        with response:
            length = response.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else None

    def open(self, offset: int) -> Opened:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self._request("GET", headers)
        length = response.headers.get("Content-Length")
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if not match:
                response.close()
                raise TransientError(f"GET {self.url}: 206 without a usable Content-Range")
            total = None if match.group(3) == "*" else int(match.group(3))
            return Opened(response, int(match.group(1)), total)
        total = int(length) if length and length.isdigit() else None
        return Opened(response, 0, total)

    def read(self, opened: Opened, amount: int) -> bytes:
        try:
            return opened.stream.read(amount)
        except (TimeoutError, http.client.HTTPException, OSError) as exc:
            raise TransientError(f"reading {self.url}: {type(exc).__name__}: {exc}") from None


class S3Source:
    """An S3 object read with ranged GETs (the tokenizer JSON may already live in S3)."""

    def __init__(self, client, uri: str):
        self.client = client
        self.bucket, self.key = parse_s3_uri(uri)
        self.description = uri

    def size(self) -> int | None:
        head = head_object(self.client, self.bucket, self.key)
        if head is None:
            raise PermanentError(f"{self.description} does not exist (not retried)")
        return int(head["ContentLength"])

    def open(self, offset: int) -> Opened:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key, **kwargs)
        except ClientError as exc:
            raise classify_s3_error(exc, f"GET {self.description}") from None
        except BotoCoreError as exc:
            raise TransientError(f"GET {self.description}: {exc}") from None
        match = _CONTENT_RANGE.fullmatch(str(response.get("ContentRange", "")).strip())
        if match:
            return Opened(response["Body"], int(match.group(1)), int(match.group(3)))
        return Opened(response["Body"], 0, int(response["ContentLength"]))

    def read(self, opened: Opened, amount: int) -> bytes:
        from botocore.exceptions import BotoCoreError

        try:
            return opened.stream.read(amount)
        except (BotoCoreError, OSError, http.client.HTTPException) as exc:
            raise TransientError(f"reading {self.description}: {type(exc).__name__}: {exc}") from None


class FileSource:
    """A local file (``file:///path``): the demo's tokenizer from a shared folder."""

    def __init__(self, uri: str):
        self.path = unquote(urlsplit(uri).path)
        self.description = uri

    def size(self) -> int | None:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            raise PermanentError(f"{self.path} does not exist (not retried)") from None

    def open(self, offset: int) -> Opened:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - closed by pump
        except OSError as exc:
            raise PermanentError(f"{self.path}: {exc.strerror}") from None
        handle.seek(offset)
        return Opened(handle, offset, os.fstat(handle.fileno()).st_size)

    def read(self, opened: Opened, amount: int) -> bytes:
        return opened.stream.read(amount)


def open_source(uri: str, *, s3=None, timeout: float = 60.0) -> Source:
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        return HttpSource(uri, timeout=timeout)
    if scheme == "s3":
        return S3Source(s3 if s3 is not None else s3_client(), uri)
    if scheme == "file":
        return FileSource(uri)
    raise PermanentError(f"source {uri!r}: unsupported scheme {scheme!r} (http, https, s3, file)")
