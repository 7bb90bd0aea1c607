#!/usr/bin/env bash
# The figures of docs/benchmarks.md's "S1 training step against the official code (GPU)",
# on one GPU: `ebt bench` of the S1 recipe in its bfloat16, and the official PyTorch S1
# step beside ours (its own float32 with matmul precision "medium", as its job scripts run
# it), tokens/s, MFU and the ratio; and the train step's device time by kernel (a
# jax.profiler trace under OUT_DIR/trace_SIZE).
#
#   launch/gpu_bench.sh /path/to/official/EBT [OUT_DIR] [SIZE ...]      # sizes: xxs small
#
# Expects jax with CUDA (`pip install -e ".[gpu]"`) and torch with CUDA in one environment,
# and a checkout of github.com/alexiglad/EBT. Every run writes its JSON into OUT_DIR
# (default gpu_bench/). Both use the official per-GPU batch, 32 rows of 256 tokens.
# Our side runs its layers unrolled (model.scan_layers=False): on an H200 the small step
# took 147 ms and 29 GiB that way against 194 ms and 54 GiB scanned, for 2.5x the
# compile time (docs/benchmarks.md).
set -euo pipefail
OFFICIAL=${1:?the official EBT checkout}
OUT=${2:-gpu_bench}
shift; [ $# -gt 0 ] && shift
SIZES=("$@"); [ ${#SIZES[@]} -gt 0 ] || SIZES=(xxs small)
PY=${PYTHON:-python3}
UNROLLED=--config.model.scan_layers=False
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.csv"
"$PY" -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__, torch.cuda.get_device_name())"
for size in "${SIZES[@]}"; do
  echo "== S1 $size: ebt bench (bfloat16, batch 32)"
  # 16 new tokens: generation's naive baseline compiles one program per 16 lengths.
  "$PY" -m ebt_jax.cli bench --config "ebt_s1:$size" --config.train.batch_size=32 $UNROLLED \
      --new-tokens 16 --repeats 5 --json "$OUT/bench_$size.json" --profile "$OUT/trace_$size"
  echo "== S1 $size: the official step beside ours"
  # One process pair: on a GPU neither side's thread pool slows the other's.
  "$PY" -m ebt_jax.tools.official_side_by_side --official-repo "$OFFICIAL" --bench \
      --config "ebt_s1:$size" $UNROLLED --rounds 1 --repeats 10 \
      --json "$OUT/side_by_side_$size.json"
done
