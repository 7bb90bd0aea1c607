#!/usr/bin/env bash
# Cloud TPU VM pod slice: create it, set up every worker, run `ebt train` on all workers,
# follow the logs, delete it. See launch/README.md.
#
#   TPU_NAME=ebt-v5e ZONE=us-west4-a ACCELERATOR=v5litepod-16 PROJECT=my-project \
#     launch/tpu_vm.sh create|setup|run|logs|stop|delete [-- ebt train arguments]
#
# `run` starts `ebt train` on every worker in the background; each worker is one JAX
# process, and jax.distributed.initialize() finds the others by itself on TPU VMs. The
# workdir must be shared by all workers (a GCS bucket mounted with gcsfuse at the same path
# on each, or a Filestore/NFS mount): checkpoints are written from every worker.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v5litepod-16}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
LOG=/tmp/ebt_train.log

tpu() { gcloud compute tpus tpu-vm "$@" --zone="$ZONE" $PROJECT_FLAG; }
on_all() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }

cmd=${1:?usage: $0 create|setup|run|logs|stop|delete [-- ebt train args]}
shift
[[ "${1:-}" == "--" ]] && shift
case "$cmd" in
  create)
    tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ;;
  setup)
    # Copy this checkout to every worker and install it with the TPU extra.
    tpu scp --recurse --worker=all "$REPO_DIR" "$TPU_NAME":ebt_jax
    on_all "python3 -m pip install --upgrade pip && python3 -m pip install -e '~/ebt_jax[tpu]'" ;;
  run)
    args=$(printf '%q ' "$@")
    on_all "cd ~/ebt_jax && nohup python3 -m ebt_jax.cli train $args > $LOG 2>&1 < /dev/null &" ;;
  logs)
    # Worker 0 is JAX process 0, the only one that prints progress and writes metrics.
    tpu ssh "$TPU_NAME" --worker=0 --command="tail -n 100 -f $LOG" ;;
  stop)
    # SIGTERM: every process saves a checkpoint at the current step, then exits.
    on_all "pkill -TERM -f 'ebt_jax.cli train' || true" ;;
  delete)
    tpu delete "$TPU_NAME" --quiet ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
