#!/usr/bin/env bash
# Every GPU figure of issues 14 and 17 in one run, for a session that has a GPU
# (benchmarks/README.md):
#   1. the cuda tests (pytest -m gpu), when pytest is importable;
#   2. every kernel family at the paper's shapes (benchmarks/kernels.py): reference kernels, fast
#      kernels and PyTorch side by side, against the measured copy bandwidth (issue 17);
#   3. the default preset's training step, ours and PyTorch's side by side (FP32, TF32 off):
#      s/step, images/s, peak memory, our launches and, through PyTorch's profiler (CUPTI), every
#      GPU kernel of our step and their busy time (busy fraction = busy ms / step ms);
#   4. the full-size step (Xception-65, 513x513, batch 8): images/s and peak memory, both sides;
#   5. the time of the default `python -m minideeplab.train` on the GPU (goal: under 90 s).
# Each writes JSON into benchmarks/results/<gpu>-<date>-*.json (with the machine, date, versions).
#
#   bash benchmarks/gpu_run.sh              # everything (about 10 minutes on an H200)
#   STEPS=3 SKIP_TRAIN=1 bash benchmarks/gpu_run.sh   # shorter: fewer steps, no training run
#   SKIP_KERNELS=1 bash benchmarks/gpu_run.sh          # without the kernel benchmarks
#   DEVICE=emu bash benchmarks/gpu_run.sh   # the script itself on the emulator (no PyTorch, quick)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-20}
OUT=${OUT:-benchmarks/results}
export CUPY_TF32=0  # FP32 GEMMs, as PyTorch's are with TF32 off

if [ "$DEVICE" = cuda ]; then
  $PY -c "import cupy, sys; sys.exit(cupy.cuda.runtime.getDeviceCount() == 0)" \
    || { echo "gpu_run.sh: CuPy sees no GPU" >&2; exit 1; }
  TAG=$($PY -c "import cupy; n = cupy.cuda.runtime.getDeviceProperties(0)['name'].decode(); \
print('-'.join(''.join(c if c.isalnum() else ' ' for c in n.lower()).split())[:40])")
  QUICK=()
else
  TAG="$DEVICE"
  QUICK=(--quick --no-torch)  # the emulator runs a tiny model only
fi
PREFIX="$OUT/$TAG-$(date +%F)"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true

# 1. the cuda tests
if [ "$DEVICE" = cuda ] && [ -z "${SKIP_TESTS:-}" ] && $PY -c "import pytest" 2>/dev/null; then
  $PY -m pytest -m gpu -q -x -p no:cacheprovider 2>&1 | tail -5
fi

# 2. the kernels, ours (reference and fast) and PyTorch's
if [ -z "${SKIP_KERNELS:-}" ]; then
  $PY benchmarks/kernels.py --device "$DEVICE" "${QUICK[@]}" --json "$PREFIX-kernels.json"
fi

# 3. default preset, ours vs PyTorch, with the CUPTI kernel count and busy time
$PY benchmarks/train_step.py --device "$DEVICE" --steps "$STEPS" "${QUICK[@]}" --profile 25 \
  --json "$PREFIX-train_step-default.json"

# 4. the full-size step
if [ "$DEVICE" = cuda ]; then
  $PY benchmarks/train_step.py --device cuda --preset full --batch 8 \
    --steps "$(( STEPS < 5 ? STEPS : 5 ))" --json "$PREFIX-train_step-full-batch8.json"
fi

# 5. the default training run, timed
if [ -z "${SKIP_TRAIN:-}" ]; then
  TRAIN=()  # on the emulator: two small iterations, the harness only
  [ "$DEVICE" = cuda ] || TRAIN=(--iters 2 --val-every 2 --train-size 8 --val-size 2 --batch-size 2
                                 --crop 33)
  RUN_DIR=$(mktemp -d)
  $PY - "$DEVICE" "$RUN_DIR" "$PREFIX-train.json" "${TRAIN[@]}" <<'EOF'
"""Time `python -m minideeplab.train` (the default preset) end to end in a subprocess."""
import json
import subprocess
import sys
import time

from benchmarks.common import device_info, write_json

device, run_dir, path, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
command = [sys.executable, "-m", "minideeplab.train", "--device", device, "--out", run_dir, *extra]
t0 = time.perf_counter()
done = subprocess.run(command, capture_output=True, text=True)
seconds = time.perf_counter() - t0
print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
write_json(path, device_info(device), train=dict(command=" ".join(command[1:]), seconds=seconds,
                                                  returncode=done.returncode,
                                                  output_tail=done.stdout[-2000:]))
print(f"python -m minideeplab.train on {device}: {seconds:.1f} s (goal: under 90 s)")
sys.exit(done.returncode)
EOF
  rm -rf "$RUN_DIR"
fi
echo "gpu_run.sh: results in $PREFIX-*.json"
