"""Shared test setup.

Airflow reads its configuration when first imported, so AIRFLOW_HOME and friends are set here, before any
test module imports it: every test process uses a private SQLite metadata DB under .state/.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("NEOXFLOW_STATE", REPO / ".state" / "cluster"))
#: The real GPT-NeoX-20B tokenizer, kept in the repository (include/tokenizers/README.md says where from).
TOKENIZER = REPO / "include" / "tokenizers" / "20B_tokenizer.json"

os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".state" / "airflow-test"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
os.environ.setdefault("NEOXFLOW_REPO", str(REPO))
# dag.test() only runs DAGs found in a bundle: the product's dags/ plus the tests' own DAGs.
os.environ.setdefault(
    "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST",
    json.dumps(
        [
            {
                "name": "dags-folder",
                "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {},
            },
            {
                "name": "neoxflow-tests",
                "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(REPO / "tests" / "dags")},
            },
        ]
    ),
)


def load_cluster_env() -> dict[str, str]:
    """The variables scripts/localcluster.sh wrote (Airflow connections, SLURM_CONF, FSx folder)."""
    env_file = STATE / "env.sh"
    if not env_file.exists():
        raise RuntimeError(f"{env_file} missing: the local cluster is not up (run `make cluster-up`)")
    values = {}
    for line in env_file.read_text().splitlines():
        if line.startswith("export "):
            name, _, raw = line[len("export ") :].partition("=")
            values[name] = shlex.split(raw)[0] if raw else ""
    return values


@pytest.fixture(scope="session")
def cluster_env() -> dict[str, str]:
    status = subprocess.run([str(REPO / "scripts/localcluster.sh"), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        raise RuntimeError(f"local cluster not healthy (make cluster-up):\n{status.stdout}{status.stderr}")
    values = load_cluster_env()
    os.environ.update(values)
    values["ACCOUNTING"] = "1" if "accounting         1" in status.stdout else "0"
    return values


@pytest.fixture(scope="session")
def airflow_db(tmp_path_factory) -> Path:
    """A migrated SQLite metadata DB for dag.test()."""
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(REPO / ".venv/bin/airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
        env={**os.environ},
    )
    return home
