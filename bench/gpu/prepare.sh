#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks for bench/gpu_pipeline.py.
#
# The GPU machine has CUDA torch for Python 3.12 but neither diffusers nor importlib_metadata
# (docs/providers/local.md, "The GPU check"), and no network. This fetches diffusers and its
# dependencies (not torch) as binary wheels for CPython 3.12 on Linux x86-64 into
# bench/gpu/wheels/, which the run carries there; bench/gpu/run.sh installs them.
#
#   bash bench/gpu/prepare.sh            # then carry bench/gpu/wheels and run bench/gpu/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/wheels}"
python="${PYTHON:-python3}"
diffusers_version="${DIFFUSERS_VERSION:-0.42.1}"
mkdir -p "$dest"

common=(--dest "$dest" --only-binary=:all: --python-version 3.12 --implementation cp
        --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform any)
# diffusers' own requirements, resolved for 3.12 (torch is not one of them: the GPU machine's
# CUDA build stays).
"$python" -m pip download "${common[@]}" "diffusers==$diffusers_version" importlib_metadata
# Optional speed packages, where a wheel exists for that machine (no failure if none).
for extra in ${EXTRA_WHEELS:-}; do
    "$python" -m pip download "${common[@]}" --no-deps "$extra" || echo "no wheel for $extra"
done
ls -1 "$dest"
du -sh "$dest"
