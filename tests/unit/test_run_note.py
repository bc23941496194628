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


def fake_api(seen: list):
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802
            seen.append(("POST", self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self._reply({"access_token": "tok"})

        def do_PATCH(self):  # noqa: N802
            seen.append(
                ("PATCH", self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            )
            self._reply({})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_without_a_connection_the_note_uses_the_api_url_and_the_password_file(monkeypatch, tmp_path):
    """What make demo, the e2e services and docker compose set (issue 20 item 3): no connection needed,
    the password read from the simple auth manager's file, never from the environment."""
    seen: list = []
    server = fake_api(seen)
    passwords = tmp_path / "simple_auth_manager_passwords.json.generated"
    passwords.write_text(json.dumps({"admin": "s3cret-from-file"}) + "\n")
    monkeypatch.delenv("AIRFLOW_CONN_NEOXFLOW_AIRFLOW_API", raising=False)
    monkeypatch.setenv("NEOXFLOW_AIRFLOW_API_URL", f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.setenv("NEOXFLOW_AIRFLOW_API_PASSWORD_FILE", str(passwords))
    monkeypatch.delenv("NEOXFLOW_AIRFLOW_API_USER", raising=False)  # admin by default
    try:
        assert set_run_note("pythia_pretrain", "r1", "**Training** 10%")
    finally:
        server.shutdown()
    assert seen[0] == ("POST", "/auth/token", {"username": "admin", "password": "s3cret-from-file"})
    assert seen[1] == ("PATCH", "/api/v2/dags/pythia_pretrain/dagRuns/r1", {"note": "**Training** 10%"})


def test_an_unreadable_password_file_leaves_the_note_alone_and_says_why(monkeypatch, tmp_path, caplog):
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({"someone": "hunter2"}))
    monkeypatch.delenv("AIRFLOW_CONN_NEOXFLOW_AIRFLOW_API", raising=False)
    monkeypatch.setenv("NEOXFLOW_AIRFLOW_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("NEOXFLOW_AIRFLOW_API_PASSWORD_FILE", str(passwords))
    with caplog.at_level("WARNING"):
        assert set_run_note("d", "r", "note") is False
    assert "No password for admin" in caplog.text and "hunter2" not in caplog.text


def test_the_services_give_the_components_the_api_login_without_the_password(tmp_path):
    """scripts/airflow_services.sh's load_env (the demo's and the e2e tests' services) exports the URL,
    the user and the path of the password file the api-server writes, which api.env names too."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "airflow_services.sh"
    text = script.read_text()
    load_env = text[text.index("load_env() {") : text.index("\n}\n", text.index("load_env() {")) + 3]
    cluster_env = tmp_path / "env.sh"
    cluster_env.write_text("export NEOXFLOW_CLUSTER_TEST=1\n")
    probe = f"""
set -euo pipefail
HOME_DIR={tmp_path}/home REPO={tmp_path} VENV={tmp_path}/venv CLUSTER_ENV={cluster_env}
RUN=$HOME_DIR/run LOG=$HOME_DIR/logs/services PORT=18999
db_conn() {{ return 1; }}
{load_env}
load_env
echo "URL=$NEOXFLOW_AIRFLOW_API_URL USER=$NEOXFLOW_AIRFLOW_API_USER FILE=$NEOXFLOW_AIRFLOW_API_PASSWORD_FILE"
"""
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout
    generated = f"{tmp_path}/home/simple_auth_manager_passwords.json.generated"
    assert out.strip() == f"URL=http://127.0.0.1:18999 USER=admin FILE={generated}"
    assert (
        "NEOXFLOW_API_PASSWORD_FILE=$pw" in text
        and "local pw=$HOME_DIR/simple_auth_manager_passwords" in text
    )
