"""A small client of the Airflow 3 REST API (v2), for the demo and the end-to-end tests.

Both talk to real services the way a user's tooling would: a JWT from ``POST /auth/token`` with the
SimpleAuthManager login, then ``/api/v2``. Standard library only, so it runs before anything else is
importable. ``scripts/airflow_services.sh up`` writes the URL and the password file's path into
``<airflow home>/api.env``; :func:`from_env_file` reads it.

CLI (used by airflow_services.sh to wait until DAGs are parsed):
    airflow_rest.py --env .state/airflow/api.env unpause DAG_ID...   exit 0 once all are known and unpaused
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

TERMINAL_RUN_STATES = {"success", "failed"}


class ApiError(RuntimeError):
    """An HTTP error from the API, with the status and the body it answered."""

    def __init__(self, method: str, path: str, status: int, body: str):
        self.status = status
        self.body = body
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:500]}")


def read_env_file(path: str | Path) -> dict[str, str]:
    """``NAME=value`` lines (comments and blank lines skipped)."""
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def read_password(password_file: str | Path, user: str) -> str:
    """The SimpleAuthManager's generated password of ``user`` (a JSON object user -> password)."""
    passwords = json.loads(Path(password_file).read_text())
    if user not in passwords:
        raise KeyError(f"{password_file} has no password for user {user!r} (users: {sorted(passwords)})")
    return passwords[user]


class AirflowAPI:
    """REST v2 calls with a bearer token that is fetched again when it expires (HTTP 401)."""

    def __init__(
        self, url: str, user: str, password: str, timeout: float = 30, password_file: str | None = None
    ):
        self.url = url.rstrip("/")
        self.password_file = password_file
        self.user = user
        self.password = password
        self.timeout = timeout
        self._token: str | None = None

    # --- transport ------------------------------------------------------------------------------------
    def _raw(
        self, method: str, path: str, body: Any = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def token(self, refresh: bool = False) -> str:
        if self._token is None or refresh:
            status, body = self._raw(
                "POST", "/auth/token", {"username": self.user, "password": self.password}
            )
            if status not in (200, 201):
                raise ApiError("POST", "/auth/token", status, body.decode(errors="replace"))
            self._token = json.loads(body)["access_token"]
        return self._token

    def call(self, method: str, path: str, body: Any = None, accept: str = "application/json") -> Any:
        for attempt in (0, 1):
            headers = {"Authorization": f"Bearer {self.token(refresh=attempt == 1)}", "Accept": accept}
            status, raw = self._raw(method, path, body, headers)
            if status != 401:
                break
        if status >= 400:
            raise ApiError(method, path, status, raw.decode(errors="replace"))
        if accept != "application/json":
            return raw.decode(errors="replace")
        return json.loads(raw) if raw else None

    # --- endpoints ------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        status, raw = self._raw("GET", "/api/v2/monitor/health")
        if status != 200:
            raise ApiError("GET", "/api/v2/monitor/health", status, raw.decode(errors="replace"))
        return json.loads(raw)

    def dag(self, dag_id: str) -> dict[str, Any]:
        return self.call("GET", f"/api/v2/dags/{q(dag_id)}")

    def set_paused(self, dag_id: str, paused: bool) -> dict[str, Any]:
        return self.call("PATCH", f"/api/v2/dags/{q(dag_id)}", {"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return self.call("POST", f"/api/v2/dags/{q(dag_id)}/dagRuns", body)

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/api/v2/dags/{q(dag_id)}/dagRuns/{q(run_id)}")

    def dag_runs(self, dag_id: str, limit: int = 50) -> list[dict[str, Any]]:
        answer = self.call("GET", f"/api/v2/dags/{q(dag_id)}/dagRuns?limit={limit}&order_by=-start_date")
        return answer["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        answer = self.call("GET", f"/api/v2/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances?limit=100")
        return answer["task_instances"]

    def task_tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances/{q(task_id)}/tries"
        return self.call("GET", path)["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = (
            f"/api/v2/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances/{q(task_id)}"
            f"/xcomEntries/{q(key)}?deserialize=true"
        )
        value = self.call("GET", path)["value"]
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> list[str]:
        """The task's log as text lines: each structured entry's ``event``, and the exception of a failure."""
        path = (
            f"/api/v2/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances/{q(task_id)}"
            f"/logs/{try_number}?full_content=true"
        )
        content = self.call("GET", path).get("content") or []
        lines: list[str] = []
        for entry in content:
            if isinstance(entry, dict):
                text = str(entry.get("event", ""))
                for exc in entry.get("error_detail") or []:  # "Task failed with exception" carries it here
                    if isinstance(exc, dict):
                        text += f"\n{exc.get('exc_type')}: {exc.get('exc_value')}"
            else:
                text = str(entry)
            lines.extend(text.splitlines())
        return lines

    def wait_run(self, dag_id: str, run_id: str, timeout: float, poll: float = 2.0) -> dict[str, Any]:
        """Poll until the run is success/failed; raise TimeoutError naming the unfinished tasks."""
        end = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > end:
                states = {t["task_id"]: t["state"] for t in self.task_instances(dag_id, run_id)}
                raise TimeoutError(f"{dag_id}/{run_id} still {run['state']} after {timeout:.0f}s: {states}")
            time.sleep(poll)


def q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def from_env_file(path: str | Path) -> AirflowAPI:
    env = read_env_file(path)
    user = env.get("NEOXFLOW_API_USER", "admin")
    password_file = env["NEOXFLOW_API_PASSWORD_FILE"]
    return AirflowAPI(
        env["NEOXFLOW_API_URL"], user, read_password(password_file, user), password_file=password_file
    )


def _unpause(api: AirflowAPI, dag_ids: list[str]) -> int:
    for dag_id in dag_ids:
        try:
            if api.dag(dag_id).get("is_paused"):
                api.set_paused(dag_id, False)
        except ApiError as err:
            print(f"{dag_id}: {err}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="api.env written by scripts/airflow_services.sh up")
    sub = parser.add_subparsers(dest="command", required=True)
    unpause = sub.add_parser("unpause", help="unpause DAGs; exit 1 while one is not parsed yet")
    unpause.add_argument("dag_ids", nargs="+")
    args = parser.parse_args(argv)
    try:
        api = from_env_file(args.env)
    except (OSError, KeyError, ValueError) as err:
        print(f"cannot log in: {err}", file=sys.stderr)
        return 1
    if args.command == "unpause":
        return _unpause(api, args.dag_ids)
    return 2


if __name__ == "__main__":
    sys.exit(main())
