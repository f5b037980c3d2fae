#!/usr/bin/env bash
# One host, all its GPUs: the paper's two towers on pairs of GPUs, data parallel across pairs.
#   launch/single_host.sh WORKDIR [--config.* overrides...]
# With 2 GPUs this is the paper's layout (mesh data=1 x model=2); with 8, data=4 x model=2.
# CONFIG=configs/paper.py by default; MODEL=1 keeps both towers on each GPU (pure data parallel).
set -euo pipefail
workdir=${1:?usage: launch/single_host.sh WORKDIR [--config.x=y ...]}
shift
exec python -m alexnet_jax.main --config="${CONFIG:-configs/paper.py}" --workdir="$workdir" \
  --config.parallel.model="${MODEL:-2}" --config.parallel.data=-1 "$@"
