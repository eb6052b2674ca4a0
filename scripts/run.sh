#!/usr/bin/env bash
# Set up a virtual environment (if needed), then prune a bundled example model with the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
setup_venv
mkdir -p var/example
.venv/bin/synflow example resnet18 var/example/resnet18.pt
.venv/bin/synflow prune var/example/resnet18.pt --sparsity 0.9 --input-shape 1,3,224,224 \
    --out var/example/pruned "$@"
