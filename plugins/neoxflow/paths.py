"""Where the repository's non-Python parts are: the one module that knows the package's place in it.

``plugins/neoxflow/paths.py`` -> ``parents[2]`` is the repository root. The same relative layout holds
in an Astro-style Airflow image (``plugins/`` and ``include/`` side by side, docker/).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: scripts shipped to the cluster (by content hash) and run there
CLUSTER_CODE = REPO_ROOT / "include" / "cluster"
#: the CPU stand-in trainer: shipped (flat, beside CLUSTER_CODE's files) only for the local stand-in template
STANDIN_CODE = CLUSTER_CODE / "standin"
#: sbatch templates rendered for the cluster
TEMPLATES_DIR = REPO_ROOT / "include" / "templates"
#: Pythia configs and pipeline profiles
CONFIG_DIR = REPO_ROOT / "include" / "configs"
