#!/usr/bin/env bash
# Several processes on this machine, on the CPU, over jax.distributed on 127.0.0.1: the multi-host
# code path without a cluster.
#   launch/local_cpu.sh NUM_PROCESSES DEVICES_PER_PROCESS WORKDIR [--config.* overrides...]
# e.g. launch/local_cpu.sh 2 2 /tmp/mh --config.parallel.model=2   (mesh data=2 x model=2)
# CONFIG=configs/smoke.py by default. Your own XLA_FLAGS are kept; the device count comes after them
# (XLA reads the last of a flag given twice).
set -euo pipefail
processes=${1:?usage: launch/local_cpu.sh NUM_PROCESSES DEVICES_PER_PROCESS WORKDIR [overrides]}
devices=${2:?devices per process}
workdir=${3:?workdir}
shift 3
python=${PYTHON:-python}
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
for ((i = 0; i < processes; i++)); do
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" JAX_PLATFORMS=cpu \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$processes" JAX_PROCESS_ID="$i" \
    "$python" -m alexnet_jax.main --config="${CONFIG:-configs/smoke.py}" --workdir="$workdir" \
    --config.parallel.distributed=True "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
