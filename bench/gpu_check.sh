#!/usr/bin/env bash
# The GPU paths in one run (QLoRA, CUDA bf16/fp16, the torch engine on CUDA, DDP, vLLM): see bench/gpu_check.py.
# On a machine with an NVIDIA GPU, after `make install` (plus `pip install bitsandbytes vllm` for those steps):
#     bash bench/gpu_check.sh            # under 10 minutes; writes bench/results/gpu_check.json
#     bash bench/gpu_check.sh --dry-run  # any machine: checks every step's command line, runs nothing
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" bench/gpu_check.py "$@"
