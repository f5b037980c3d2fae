#!/usr/bin/env bash
# One command for a GPU: the paper's training step in float32 and bfloat16 at batch 128 and 512, on
# synthetic data and on a prepared copy (where TensorFlow is installed), the same network under
# PyTorch eager and torch.compile on the same card, compile time, peak memory, the fraction of the
# card's peak, and the per-backend implementation choices. Rows go to bench/results/gpu.json and,
# with --markdown=BENCHMARKS.md, into that file. `bench/gpu.sh --help` lists the options;
# `bench/gpu.sh --reduced` runs the same code in seconds on a CPU (the tests do).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# One measuring process at a time holds the device; none takes 75 % of its memory up front, so
# that PyTorch, measured in the same process as ours, has room too.
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2 TF_ENABLE_ONEDNN_OPTS=0
exec "${PYTHON:-python3}" bench/gpu.py "$@"
