#!/usr/bin/env bash
# Turn the locally built GPT-NeoX image into the squashfs file that pyxis/enroot run on every node
# (the profile's cluster.container_image). Run it on a node with Docker and enroot, with the target on
# the shared file system:
#
#   docker/enroot-import.sh [IMAGE] [OUTPUT]
#   IMAGE   docker image reference   (default neoxflow/gpt-neox:latest, or $NEOX_IMAGE)
#   OUTPUT  squashfs path            (default /fsx/apps/gpt-neox.sqsh, or $NEOX_SQSH)
#
# The file is written beside OUTPUT under a temporary name and renamed at the end, so jobs that start
# meanwhile see either the old image or the new one, never half a file.
set -euo pipefail

IMAGE=${1:-${NEOX_IMAGE:-neoxflow/gpt-neox:latest}}
OUTPUT=${2:-${NEOX_SQSH:-/fsx/apps/gpt-neox.sqsh}}

die() { echo "enroot-import: $*" >&2; exit 1; }

case $OUTPUT in
  /*.sqsh) ;;
  *) die "OUTPUT must be an absolute path ending in .sqsh, got '$OUTPUT'" ;;
esac
command -v enroot >/dev/null || die "enroot is not installed on this node"
command -v docker >/dev/null || die "docker is not installed on this node"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no local docker image '$IMAGE' (build it first, see docs/docker.md)"

out_dir=$(dirname "$OUTPUT")
mkdir -p "$out_dir"
tmp="$out_dir/.$(basename "$OUTPUT").$$.tmp"
trap 'rm -f "$tmp"' EXIT

echo "enroot-import: dockerd://$IMAGE -> $OUTPUT"
enroot import -o "$tmp" "dockerd://$IMAGE"
chmod 0644 "$tmp"
mv -f "$tmp" "$OUTPUT"
trap - EXIT
ls -l "$OUTPUT"
