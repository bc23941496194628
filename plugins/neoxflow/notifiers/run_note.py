"""Show training progress in the DAG run's note (the text the Airflow UI shows on the run).

A task cannot write the note through the Execution API, so this goes through the public REST API as a
user allowed to edit runs, found in this order:

1. the connection ``neoxflow_airflow_api`` (type http: host = the api-server's base URL, login and
   password): the way on a real deployment, from its secrets backend;
2. the environment ``NEOXFLOW_AIRFLOW_API_URL`` with ``NEOXFLOW_AIRFLOW_API_USER`` (default admin) and
   ``NEOXFLOW_AIRFLOW_API_PASSWORD_FILE``, a JSON file ``{"<user>": "<password>"}`` as Airflow's simple
   auth manager writes it: what ``make demo``, the e2e services and docker/compose.yaml set, so the note
   works out of the box and no password is ever in an environment variable, a command line or a log.

With neither, the note is left alone and the progress is only in the task log and the ``progress`` XCom.
Failures never fail the task.
"""

from __future__ import annotations

import json
import logging
import os
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


def _login() -> tuple[str, str, str] | None:
    """(base URL, user, password) of the API user that writes the note, or None (see the module doc)."""
    conn = _connection()
    if conn is not None:
        return _base_url(conn), conn.login or "", conn.password or ""
    url = os.environ.get("NEOXFLOW_AIRFLOW_API_URL")
    password_file = os.environ.get("NEOXFLOW_AIRFLOW_API_PASSWORD_FILE")
    if not url or not password_file:
        return None
    user = os.environ.get("NEOXFLOW_AIRFLOW_API_USER") or "admin"
    try:
        with open(password_file, encoding="utf-8") as handle:
            password = json.load(handle)[user]
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("No password for %s in NEOXFLOW_AIRFLOW_API_PASSWORD_FILE: %s", user, type(err).__name__)
        return None
    return url.rstrip("/"), user, str(password)


def set_run_note(dag_id: str, run_id: str, markdown: str) -> bool:
    """PATCH the run's note; True when it was set."""
    login = _login()
    if login is None:
        log.debug("No %s connection nor NEOXFLOW_AIRFLOW_API_URL: run note not updated", CONN_ID)
        return False
    base, user, password = login
    try:
        token = _request("POST", f"{base}/auth/token", {"username": user, "password": password})[
            "access_token"
        ]
        quote = urllib.parse.quote
        url = f"{base}/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"
        _request("PATCH", url, {"note": markdown[:MAX_NOTE]}, token)
    except Exception as err:  # progress display must never break training
        log.warning("Could not update the run note through %s: %s", base, type(err).__name__)
        return False
    return True
