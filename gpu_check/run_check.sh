#!/usr/bin/env bash
# The GPU proof, one command on a machine with GPUs and no network (gpu_check/README.md):
#
#   NEOX_DIR=/path/gpt-neox DEEPERSPEED_DIR=/path/DeeperSpeed gpu_check/run_check.sh [scenario ...]
#
# Scenarios (default: all, in this order): tiny-1gpu tiny-2rank pythia-160m tiny-slices. tiny-2rank needs
# 2 GPUs. Not in the default set (issue 21, ~5-6 minutes each): recompute-160m recompute-410m.
# Optional: WHEELS_DIR (wheels the image lacks: hjson, pydantic and its needs), DATA_PREFIX (tokenized
# .bin/.idx prefix), TOKENIZER (20B_tokenizer.json), SOURCES (JSON naming the commits), OUT (artefacts),
# WORK (scratch), PYTHON (the image's interpreter). Defaults follow gpu_check/prepare.sh's layout.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
STATE=${GPU_STATE:-$REPO/.state/gpu}
: "${NEOX_DIR:?set NEOX_DIR to a GPT-NeoX checkout}"
: "${DEEPERSPEED_DIR:?set DEEPERSPEED_DIR to a DeeperSpeed checkout}"
WHEELS_DIR=${WHEELS_DIR:-$STATE/wheels}
DATA_PREFIX=${DATA_PREFIX:-$STATE/data/c4_openwebtext/c4_openwebtext_text_document}
TOKENIZER=${TOKENIZER:-$STATE/tokenizers/20B_tokenizer.json}
SOURCES=${SOURCES:-$STATE/SOURCES.json}
OUT=${OUT:-$STATE/out}
WORK=${WORK:-/tmp/neoxflow-gpu-check}
PYTHON=${PYTHON:-$(command -v python3)}
# Never let NCCL use NVLink multicast on shared hosts (it can take the host's GPUs down).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1

if [[ $# -eq 0 ]]; then set -- tiny-1gpu tiny-2rank pythia-160m tiny-slices; fi

echo "gpu_check: installing offline into $PYTHON: $(ls "$WHEELS_DIR" | tr '\n' ' ')and DeeperSpeed from $DEEPERSPEED_DIR"
"$PYTHON" -m pip install -q --no-index --no-deps --no-cache-dir --disable-pip-version-check "$WHEELS_DIR"/*.whl
# A copy, so the checkout stays clean (pip writes build/ and *.egg-info beside setup.py).
rm -rf "$WORK/deeperspeed-src" && mkdir -p "$WORK" && cp -r "$DEEPERSPEED_DIR" "$WORK/deeperspeed-src"
"$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --disable-pip-version-check \
  "$WORK/deeperspeed-src"
"$PYTHON" - <<'EOF'
import deepspeed, hjson, pydantic, torch
print(f"gpu_check: deepspeed {deepspeed.__version__}, pydantic {pydantic.VERSION}, torch {torch.__version__}, "
      f"cuda {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)")
EOF
echo "gpu_check: CXX in the image is '${CXX:-<unset>}'; ranks use g++ ($(command -v g++ || echo 'g++ NOT FOUND'))"

exec "$PYTHON" "$HERE/check.py" "$@" --neox-dir "$NEOX_DIR" --data-prefix "$DATA_PREFIX" \
  --tokenizer "$TOKENIZER" --work "$WORK" --out "$OUT" --python "$PYTHON" --sources "$SOURCES"
