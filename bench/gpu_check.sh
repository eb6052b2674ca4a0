#!/usr/bin/env bash
# The GPU check of issue 14, part 5, as one script for a machine with a CUDA device:
#   1. the CUDA engine tests (tests/gpu: CUDA masks equal CPU masks in float64 for ResNet-18,
#      float32 with rescaling within the per-layer gap target, ResNet-50 at 100 rounds timed);
#   2. the bench with our engine on the device (ResNet-50, 1x3x224x224, sparsity 0.99,
#      100 rounds; the float64 reference and the floor run on the CPU).
# Usage: bash bench/gpu_check.sh [python]   (default: .venv/bin/python, else python3)
# Exit status: that of the tests (the bench only prints).
set -u
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())' || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -m pytest tests/gpu -v -s -rs
status=$?
"$PY" bench/bench_synflow.py --device cuda --cases resnet50:224 --no-sensitivity --against none
exit $status
