#!/usr/bin/env bash
# GKE through XPK: one workload per training run on an existing XPK cluster.
#
#   CLUSTER=my-xpk-cluster TPU_TYPE=v5litepod-16 NUM_SLICES=1 WORKLOAD=ebt-s1 \
#     launch/xpk.sh create|list|logs|delete [-- ebt train arguments]
#
# `create` builds an image from BASE_IMAGE plus this checkout (XPK copies the working
# directory into the image) and runs `ebt train` on every host of every slice; JAX detects
# the processes of a GKE TPU job by itself. Give a workdir on shared storage (gs:// via a
# gcsfuse volume, or Filestore) so all hosts write the same checkpoints.
set -euo pipefail
: "${CLUSTER:?set CLUSTER}" "${WORKLOAD:?set WORKLOAD}"
TPU_TYPE=${TPU_TYPE:-v5litepod-16}
NUM_SLICES=${NUM_SLICES:-1}
BASE_IMAGE=${BASE_IMAGE:-python:3.11}
cd "$(dirname "$0")/.."

cmd=${1:?usage: $0 create|list|logs|delete [-- ebt train args]}
shift
[[ "${1:-}" == "--" ]] && shift
case "$cmd" in
  create)
    args=$(printf '%q ' "$@")
    xpk workload create --cluster "$CLUSTER" --workload "$WORKLOAD" \
      --tpu-type "$TPU_TYPE" --num-slices "$NUM_SLICES" --base-docker-image "$BASE_IMAGE" \
      --command "pip install -e '.[tpu]' && python3 -m ebt_jax.cli train $args" ;;
  list)
    xpk workload list --cluster "$CLUSTER" ;;
  logs)
    kubectl logs -f --max-log-requests=100 -l "jobset.sigs.k8s.io/jobset-name=$WORKLOAD" ;;
  delete)
    xpk workload delete --cluster "$CLUSTER" --workload "$WORKLOAD" ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
