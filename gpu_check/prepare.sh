#!/usr/bin/env bash
# CPU-side preparation for the GPU proof: everything the GPU machine needs, which may have no network.
#
#   gpu_check/prepare.sh NEOX_GIT DEEPERSPEED_GIT
#
# NEOX_GIT / DEEPERSPEED_GIT: git directories (a clone's .git, or a bare mirror) of EleutherAI/gpt-neox
# and EleutherAI/DeeperSpeed. Writes into $GPU_STATE (default .state/gpu, git-ignored; never commit it):
#   neox/ deeperspeed/   the sources at NEOX_COMMIT / DEEPERSPEED_COMMIT (git archive, no history)
#   wheels/              what the CUDA image lacks for DeeperSpeed (hjson, pydantic and its needs),
#                        for CPython $PY_VERSION on manylinux x86_64
#   data/                synthetic C4-format documents tokenized by include/cluster/preprocess_data.py
#   tokenizers/          20B_tokenizer.json ($TOKENIZER)
#   SOURCES.json         the commits, recorded in every run's summary
# Then send the repository with $GPU_STATE to the GPU machine and run gpu_check/run_check.sh there.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
NEOX_GIT=${1:?usage: prepare.sh NEOX_GIT DEEPERSPEED_GIT}
DS_GIT=${2:?usage: prepare.sh NEOX_GIT DEEPERSPEED_GIT}
NEOX_COMMIT=${NEOX_COMMIT:-ea7aefd8f8e183256992d9fede4d7c71a46d67a5}
DEEPERSPEED_COMMIT=${DEEPERSPEED_COMMIT:-65d9f99249f79ebd7c4577b6aeb0d3dff5a1cef6}
STATE=${GPU_STATE:-$REPO/.state/gpu}
PY_VERSION=${PY_VERSION:-3.12}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
TOKENIZER=${TOKENIZER:-$REPO/include/tokenizers/20B_tokenizer.json}
WHEELS=(hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0)

mkdir -p "$STATE"
NEOX_COMMIT=$(git --git-dir="$NEOX_GIT" rev-parse --verify "$NEOX_COMMIT^{commit}")
DEEPERSPEED_COMMIT=$(git --git-dir="$DS_GIT" rev-parse --verify "$DEEPERSPEED_COMMIT^{commit}")

echo "prepare: GPT-NeoX $NEOX_COMMIT"
rm -rf "$STATE/neox" && mkdir -p "$STATE/neox"
git --git-dir="$NEOX_GIT" archive "$NEOX_COMMIT" | tar -x -C "$STATE/neox"
rm -rf "$STATE/neox/images" "$STATE/neox/tests"  # not needed to train; keeps what travels small

echo "prepare: DeeperSpeed $DEEPERSPEED_COMMIT (the package only: a mirror may lack the large media files)"
rm -rf "$STATE/deeperspeed" && mkdir -p "$STATE/deeperspeed"
git --git-dir="$DS_GIT" archive "$DEEPERSPEED_COMMIT" -- accelerator bin csrc deepspeed op_builder requirements \
  setup.py setup.cfg version.txt MANIFEST.in README.md LICENSE | tar -x -C "$STATE/deeperspeed"

echo "prepare: wheels for CPython $PY_VERSION"
rm -rf "$STATE/wheels"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$STATE/wheels" "${WHEELS[@]}"

echo "prepare: data (4000 synthetic C4 documents, tokenized with the repository's NeoX-identical tokenizer)"
mkdir -p "$STATE/tokenizers" "$STATE/data/c4_openwebtext"
cp "$TOKENIZER" "$STATE/tokenizers/20B_tokenizer.json"
rm -rf "$STATE/c4"
"$PYTHON" "$REPO/scripts/localcluster/c4_fixture.py" --out "$STATE/c4" --train 2 --docs 2000 --seed 7
"$PYTHON" "$REPO/include/cluster/preprocess_data.py" \
  --input "$STATE/c4/c4-train.00000-of-01024.json.gz,$STATE/c4/c4-train.00001-of-01024.json.gz" \
  --tokenizer-type HFTokenizer --vocab-file "$STATE/tokenizers/20B_tokenizer.json" --append-eod \
  --output-prefix "$STATE/data/c4_openwebtext/c4_openwebtext" --workers 2

cat >"$STATE/SOURCES.json" <<EOF
{"gpt-neox": {"repo": "https://github.com/EleutherAI/gpt-neox", "commit": "$NEOX_COMMIT"},
 "DeeperSpeed": {"repo": "https://github.com/EleutherAI/DeeperSpeed", "commit": "$DEEPERSPEED_COMMIT",
                 "version": "$(cat "$STATE/deeperspeed/version.txt")"}}
EOF
du -sh "$STATE"
echo "prepare: done. On the GPU machine: NEOX_DIR=$STATE/neox DEEPERSPEED_DIR=$STATE/deeperspeed gpu_check/run_check.sh"
