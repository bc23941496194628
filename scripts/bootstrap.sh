#!/usr/bin/env bash
# Install what neoxflow needs on a fresh Debian/Ubuntu machine (as root): Debian packages for the local
# cluster and browser tests, and the pinned Python env in .venv. Idempotent and quick when done before.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${NEOXFLOW_VENV:-$REPO/.venv}
PYTHON=${PYTHON:-python3}

packages=(slurm-wlm munge openssh-server openssh-client slurmdbd mariadb-server chromium docker-compose)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[bootstrap] installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=$VENV/.requirements.sha256
want=$(sha256sum "$REPO/requirements.txt" | cut -d' ' -f1)
if [[ ! -x $VENV/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "[bootstrap] installing the Python env $VENV from requirements.txt" >&2
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 11), "Python 3.11+ needed"'
  [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REPO/requirements.txt" 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" >"$stamp"
fi
