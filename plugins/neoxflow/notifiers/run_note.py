"""Show training progress in the DAG run's note (the text the Airflow UI shows on the run).

A task cannot write the note through the Execution API, so this goes through the public REST API with a
dedicated connection, ``neoxflow_airflow_api`` (type http: host = the api-server's base URL, login and
password of a user allowed to edit runs). Without that connection the note is left alone and the progress
is only in the task log and the ``progress`` XCom. Failures never fail the task.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)
CONN_ID = "neoxflow_airflow_api"
MAX_NOTE = 1000  # Airflow's limit on a run note


def _connection():
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(CONN_ID)
    except Exception:
        return None


def _base_url(conn) -> str:
    host = conn.host or "localhost"
    if "://" not in host:
        host = f"{conn.schema or 'http'}://{host}"
    if conn.port:
        parts = urllib.parse.urlsplit(host)
        host = f"{parts.scheme}://{parts.hostname}:{conn.port}{parts.path}"
    return host.rstrip("/")


def _request(
    method: str, url: str, body: Mapping[str, Any], token: str | None = None, timeout: float = 10
) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - URL from a connection
        text = response.read().decode() or "{}"
    return json.loads(text)


def set_run_note(dag_id: str, run_id: str, markdown: str) -> bool:
    """PATCH the run's note; True when it was set."""
    conn = _connection()
    if conn is None:
        log.debug("No %s connection: run note not updated", CONN_ID)
        return False
    base = _base_url(conn)
    try:
        token = _request("POST", f"{base}/auth/token", {"username": conn.login, "password": conn.password})[
            "access_token"
        ]
        quote = urllib.parse.quote
        url = f"{base}/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"
        _request("PATCH", url, {"note": markdown[:MAX_NOTE]}, token)
    except Exception as err:  # progress display must never break training
        log.warning("Could not update the run note through %s: %s", base, type(err).__name__)
        return False
    return True
