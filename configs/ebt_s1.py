"""The paper's S1 text EBT (the official ebt_s1.sh job script); the variant is the model size.

Variants: the official `--model_size` presets (`ebt_jax.official_hparams.MODEL_SIZES`:
4xs, 3xs, xxs, 2xs, xs, small, medium, large, xl), default `xxs`, the script's. Only
width, depth and heads change with the size, as with the script's --model_size flag; the
rest is the script's recipe, which the paper ran at xxs.

xxs: 6 layers, width 384, 6 heads, context 256, `time_embed`, 2 thinking steps with a
learnable step size (500, its learning rate x1500), AdamW at 1.2e-3 with 10k warmup
steps and cosine decay to a tenth, batch 256, GPT-NeoX-20B's tokenizer (50277 tokens;
the vocabulary axis padded to 50304, masked, so `mesh.tensor` can split it).
The tokenizer and a text corpus are files you provide (nothing is downloaded):

    pip install "ebt_jax[tokenizers]"
    ebt prepare --config configs/ebt_s1.py:xxs --out data/pile_shards \\
        --config.data.source=text --config.data.path='corpus/*.jsonl' \\
        --config.data.tokenizer=tokenizer.json
    ebt train --config configs/ebt_s1.py:xxs --workdir runs/ebt_s1_xxs \\
        --config.data.source=shards --config.data.path=data/pile_shards \\
        --config.data.tokenizer=tokenizer.json

Precision: bfloat16 mixed precision (`model.dtype`; parameters and optimizer state stay
float32, and candidates, softmaxes, energies, the candidate gradient and losses float32;
tests/test_bf16.py), the counterpart of the script's `--set_matmul_precision medium`
(bfloat16-precision float32 matmuls); `--config.model.dtype=float32` for full precision.

Expected run time: measured on one H200 at the official per-GPU batch of 32 rows
(`launch/gpu_bench.sh`, docs/benchmarks.md), 54 ms per step at xxs (MFU 10.8%) and 147 ms
at small with `--config.model.scan_layers=False`, which GPUs want (1.3x faster than the
scanned layers, half the memory); with today's attention 139 ms at small, and 127 ms
(MFU 18%) adding `--config.model.wide_candidate_embedding=False`. The official 1M xxs
steps at batch 256 on 8 such GPUs would then take about 15 hours, if the gradient
all-reduce hides behind compute (an extrapolation from the 54 ms, not a multi-GPU
measurement). On a 2-core CPU one step at batch 8 and context 128 takes ~3.2 s in
float32 (docs/benchmarks.md): use accelerators.
"""

from ebt_jax.config import base_config
from ebt_jax.configs import choose, update
from ebt_jax.official_hparams import MODEL_SIZES

VARIANTS = MODEL_SIZES   # size name -> (width, depth, heads)

# The script's recipe apart from the model size.
RECIPE = {
    "model.ebt_type": "time_embed",
    "model.vocab_size": 50277,
    "model.vocab_multiple": 128,    # 50304 wide, so tensor parallelism splits it (masked)
    "model.context_length": 256,
    "model.dtype": "bfloat16",
    "thinking.num_steps": 2,
    "thinking.step_size": 500.0,
    "thinking.step_size_learnable": True,
    "thinking.step_size_lr_multiplier": 1500.0,
    "optimizer.peak_lr": 1.2e-3,
    "optimizer.warmup_steps": 10000,
    "optimizer.min_lr_scale": 10.0,
    "optimizer.decay_steps": 1000000,
    "train.batch_size": 256,
    "train.num_steps": 1000000,
    "train.log_every": 100,
    "train.eval_every": 15000,
    "train.eval_batches": 16,
    "train.checkpoint_every": 5000,
}


def get_config(arg=None):
  size = choose(arg, VARIANTS, default="xxs")
  dim, n_layers, n_heads = VARIANTS[size]
  return update(base_config(), RECIPE,
                {"model.dim": dim, "model.n_layers": n_layers, "model.n_heads": n_heads})
