#!/usr/bin/env bash
# On the GPU machine: install the carried wheels (bench/gpu/prepare.sh) and run the GPU check.
#
#   bash bench/gpu/run.sh [extra bench/gpu_pipeline.py arguments]
#
# Results go to $OUT (the device machine's returned folder) or bench/gpu/out/. The bench keeps
# its rounds within --budget (default 480 s), so one run fits a 9-minute limit with the install
# and model construction.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
wheels="${WHEELS:-$here/wheels}"
out="${OUT:-$here/out}"
python="${PYTHON:-python3}"
mkdir -p "$out"

"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
if ! "$python" -c 'import diffusers' 2>/dev/null; then
    # No index: everything comes from the carried folder; torch is the machine's own.
    "$python" -m pip install --no-index --find-links "$wheels" diffusers importlib_metadata \
        2>&1 | tail -n 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
cd "$root"
"$python" -m bench.gpu_pipeline --out "$out" "$@" 2>&1 | tee "$out/gpu_pipeline.log"
