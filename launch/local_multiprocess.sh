#!/usr/bin/env bash
# Several JAX processes on this machine, each with forced CPU devices, joined by a local
# coordinator: the multi-host code path (process-local data, global batches, sharded
# checkpoints) without a cluster. tests/test_parallel.py runs the same thing.
#
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 launch/local_multiprocess.sh \
#     --config tiny_cpu --workdir runs/local_mp --config.mesh.fsdp=2
set -euo pipefail
NUM_PROCESSES=${NUM_PROCESSES:-2}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-4}
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  # Only process 0 prints progress; the others' output goes to files beside the run.
  if ((i == 0)); then out=/dev/stdout; else out=$(mktemp -t ebt_process_$i.XXXX.log); fi
  python3 -m ebt_jax.cli train "$@" --coordinator "localhost:$PORT" \
    --num-processes "$NUM_PROCESSES" --process-id "$i" > "$out" 2>&1 &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' INT TERM
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
