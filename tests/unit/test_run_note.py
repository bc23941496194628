"""The run note goes to the api-server's REST API with the neoxflow_airflow_api connection."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from neoxflow.notifiers.run_note import set_run_note


def test_note_is_patched_with_a_token(monkeypatch):
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(("POST", self.path, body, None))
            self._reply({"access_token": "tok"})

        def do_PATCH(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(("PATCH", self.path, body, self.headers["Authorization"]))
            self._reply({})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": server.server_port,
        "login": "admin",
        "password": "pw",
    }
    monkeypatch.setenv("AIRFLOW_CONN_NEOXFLOW_AIRFLOW_API", json.dumps(conn))
    try:
        assert set_run_note(
            "pythia_pretrain", "manual__2026-11-27T10:00:00+00:00", "**Training** 50%" + "x" * 2000
        )
    finally:
        server.shutdown()
    assert seen[0][:3] == ("POST", "/auth/token", {"username": "admin", "password": "pw"})
    method, path, body, auth = seen[1]
    assert method == "PATCH" and auth == "Bearer tok"
    assert path == "/api/v2/dags/pythia_pretrain/dagRuns/manual__2026-11-27T10%3A00%3A00%2B00%3A00"
    assert body["note"].startswith("**Training** 50%") and len(body["note"]) == 1000


def test_without_the_connection_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NEOXFLOW_AIRFLOW_API", raising=False)
    assert set_run_note("d", "r", "note") is False
