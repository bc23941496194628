#!/usr/bin/env bash
# Install what neoxflow needs on a fresh Debian/Ubuntu machine (as root): Debian packages for the local
# cluster and browser tests, and the Python env in .venv. Idempotent and quick when done before.
#
# The Python env is installed from requirements.lock (every package pinned, with its sha256 hashes) by uv,
# itself pinned by requirements-uv.lock; requirements.txt is the readable list of direct dependencies the
# lock is compiled from. `scripts/bootstrap.sh lock` (or `make lock`) recompiles both locks after
# requirements.txt changed; the lock is for CPython 3.11 on x86_64 Linux:
#   uv pip compile requirements.txt --generate-hashes --python-version 3.11 \
#     --python-platform x86_64-unknown-linux-gnu --index-url https://pypi.org/simple \
#     --find-links <torch source> --custom-compile-command "make lock" -o requirements.lock
# torch is the CPU build (torch==X+cpu): PyPI's Linux torch is the CUDA build, with gigabytes of nvidia-*
# packages. Only torch comes from PyTorch's CPU wheels, offered as a find-links page
# (https://download.pytorch.org/whl/cpu/torch/), not as an index, so nothing else can come from there.
# Where a local wheelhouse already holds the locked torch wheel (NEOXFLOW_FIND_LINKS, or pip's configured
# find-links), it is used instead and download.pytorch.org is not contacted; the hash check is the same.
#
# Environment: NEOXFLOW_VENV (default <repo>/.venv), PYTHON (default python3), NEOXFLOW_TOOLS (where uv
# is installed, default <repo>/.state/tools), NEOXFLOW_FIND_LINKS (space-separated wheel folders/URLs).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${NEOXFLOW_VENV:-$REPO/.venv}
PYTHON=${PYTHON:-python3}
TOOLS=${NEOXFLOW_TOOLS:-$REPO/.state/tools}
LOCK=$REPO/requirements.lock
UV_LOCK=$REPO/requirements-uv.lock
UV_VERSION=0.13.9
TORCH_CPU_LINKS=https://download.pytorch.org/whl/cpu/torch/
export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1

log() { echo "[bootstrap] $*" >&2; }

check_python() {
  "$PYTHON" -c 'import sys, platform
assert sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64", (
    f"requirements.lock is for CPython 3.11 on x86_64 Linux, {sys.executable} is "
    f"{platform.python_version()} on {platform.machine()}: set PYTHON=python3.11, or re-lock (make lock)")'
}

# uv, pinned and hash-checked, in its own small venv under $TOOLS (kept when .venv is rebuilt).
ensure_uv() {
  local dir=$TOOLS/uv-$UV_VERSION
  UV=$dir/bin/uv
  [[ -x $UV ]] && return
  log "installing uv $UV_VERSION into $dir"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  if [[ -f $UV_LOCK ]] && grep -q "^uv==$UV_VERSION " "$UV_LOCK"; then
    "$dir/bin/pip" install -q --disable-pip-version-check --require-hashes -r "$UV_LOCK" \
      2> >(grep -v "is ignored: it is neither" >&2)
  else # first `make lock` after a uv bump: the tools lock is rewritten below
    "$dir/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION" 2> >(grep -v "is ignored: it is neither" >&2)
  fi
}

# --find-links arguments for torch: local wheel folders (NEOXFLOW_FIND_LINKS, else pip's configured
# find-links), and PyTorch's CPU wheels unless a local folder holds the torch wheel $1 names (a glob).
torch_links() {
  local want=$1 links have=0 l d
  links=${NEOXFLOW_FIND_LINKS-${PIP_FIND_LINKS-$("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)}}
  TORCH_LINKS=()
  for l in $links; do
    d=${l#file://}
    if [[ $d == /* ]]; then
      [[ -d $d ]] || continue
      compgen -G "$d/$want" >/dev/null && have=1
    fi
    TORCH_LINKS+=(--find-links "$l")
  done
  ((have)) || TORCH_LINKS+=(--find-links "$TORCH_CPU_LINKS")
}

# The pins of requirements.txt that requirements.lock lacks (requirements.txt edited, `make lock` not run).
stale_pins() {
  local pin name ver
  sed -E 's/#.*//; s/\[[^]]*\]//; s/[[:space:]]//g' "$REPO/requirements.txt" | { grep '==' || true; } | while read -r pin; do
    name=${pin%%==*} ver=${pin#*==}
    grep -qiE "^${name//[-_.]/[-_.]}==${ver//./\\.}(\+cpu)? " "$LOCK" || echo "$pin"
  done
}

if [[ ${1:-} == lock ]]; then
  ensure_uv
  torch=$(sed -nE 's/^torch==([^ ;#]+).*/\1/p' "$REPO/requirements.txt")
  torch_links "torch-${torch}+cpu-*.whl"
  "$UV" pip compile -q "$REPO/requirements.txt" --generate-hashes --python-version 3.11 \
    --python-platform x86_64-unknown-linux-gnu --index-url https://pypi.org/simple "${TORCH_LINKS[@]}" \
    --custom-compile-command "make lock" -o "$LOCK"
  grep -qE "^torch==${torch//./\\.}\+cpu " "$LOCK" || { log "requirements.lock: torch is not the +cpu build"; exit 1; }
  echo "uv==$UV_VERSION" | "$UV" pip compile -q - --generate-hashes --index-url https://pypi.org/simple \
    --no-annotate --custom-compile-command "make lock" -o "$UV_LOCK"
  exit 0
fi

packages=(slurm-wlm munge openssh-server openssh-client slurmdbd mariadb-server postgresql chromium docker-compose)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

stale=$(stale_pins)
if [[ -n $stale ]]; then
  log "requirements.lock does not have these pins of requirements.txt: $(echo $stale); run: make lock"
  exit 1
fi

# The venv is (re)built only when the lock (or the uv that installs it) changed.
stamp=$VENV/.requirements-lock.sha256
want=$( (cat "$LOCK"; echo "uv $UV_VERSION") | sha256sum | cut -d' ' -f1)
if [[ ! -x $VENV/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  log "installing the Python env $VENV from requirements.lock"
  check_python
  ensure_uv
  torch=$(sed -nE 's/^torch==([^ ;#]+).*/\1/p' "$LOCK")
  torch_links "torch-${torch}-*.whl"
  rm -f "$stamp" "$VENV/.requirements.sha256" # the latter: the stamp of the pip-built venv before the lock
  [[ -x $VENV/bin/python ]] || "$UV" venv -q --python "$(command -v "$PYTHON")" "$VENV"
  # sync: the venv ends up as the lock says (other packages are removed, pip excepted), every downloaded
  # file hash-checked; installed packages at the locked version are kept.
  "$UV" pip sync -q --require-hashes --python "$VENV/bin/python" "${TORCH_LINKS[@]}" "$LOCK"
  echo "$want" >"$stamp"
fi
