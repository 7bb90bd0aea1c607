"""Analytic model FLOPs of a training step, and device peaks, for MFU.

Counted as the paper counts an EBT step: per thinking step a forward pass of the
prediction stream, the inner backward for the candidate's gradient (about one more
forward), and the second-order backward through both (about twice their sum): 6x the
prediction-stream forward. The real stream runs once per landscape: forward plus
backward, 3x its forward (its last block makes keys and values only). Attention counts
the keys each query actually needs (causal), matmuls 2 FLOPs per multiply-add.
Truncated steps before the last skip the second-order backward (2x). S2 training counts
the expected number of steps taken and the replayed rows appended to the batch.
"""

from __future__ import annotations

import jax
import ml_collections

from ebt_jax import config as config_lib
from ebt_jax.tasks import text
from ebt_jax.training import replay as replay_lib

# device_kind substring -> (bf16 peak, float32 peak) in FLOP/s per device (dense).
# float32 matmuls on these GPUs run as TF32 under JAX's default precision, on TPUs as bf16 passes.
DEVICE_PEAKS = {
    "TPU v6": (918e12, 918e12), "TPU v5p": (459e12, 459e12), "TPU v5 lite": (197e12, 197e12),
    "TPU v5e": (197e12, 197e12), "TPU v5": (459e12, 459e12), "TPU v4": (275e12, 275e12),
    "H200": (989e12, 494e12), "H100": (989e12, 494e12), "A100": (312e12, 156e12),
    "L4": (121e12, 60e12), "A10G": (70e12, 35e12),
}


def _stack_forward(config, tokens: float, mean_keys: float, kv_only_last: bool = False) -> float:
  m = config.model
  D = m.dim
  F = config_lib.stack_dims(config).ffn_hidden
  per_token_layer = 2 * (4 * D * D + 3 * D * F) + 4 * mean_keys * D
  flops = m.n_layers * tokens * per_token_layer
  if kv_only_last:  # the real stream's last block: keys and values only
    flops -= tokens * (per_token_layer - 2 * 2 * D * D)
  return flops


def expected_training_steps(config: ml_collections.ConfigDict) -> float:
  """Thinking steps a training batch takes on average (random repeats included)."""
  t = config.thinking
  if t.random_steps == 0:
    return float(t.num_steps)
  mean_repeats = (max(1, t.random_steps_min) + t.random_steps + 1) / 2
  randomized = 1 if t.random_steps_final_landscape else t.num_steps
  return t.num_steps - randomized + randomized * mean_repeats


def train_step_flops(config: ml_collections.ConfigDict, batch_size: int) -> float:
  m, t = config.model, config.thinking
  S = m.context_length
  if m.kind == "transformer":
    tokens = batch_size * S
    return 3 * (_stack_forward(config, tokens, (S + 1) / 2) + 2 * tokens * m.dim * m.vocab_size)
  if t.replay_buffer:
    groups, _, _, replayed = replay_lib.shape(config)
    batch_size += groups * replayed
  tokens = batch_size * S
  prefix = 1 if m.ebt_type == "time_embed" else 0
  ctx = _stack_forward(config, batch_size * (S + prefix), (S + prefix + 1) / 2, kv_only_last=True)
  pred = (_stack_forward(config, tokens, (S + 1) / 2 + prefix + 1)
          + 2 * tokens * m.vocab_size * m.dim + 2 * tokens * m.dim)
  K = expected_training_steps(config)
  step_multiplier = 6 * K if not t.truncate else 6 + 2 * (K - 1)
  return 3 * ctx * text.num_landscapes(config) + step_multiplier * pred


def device_peak_flops(config: ml_collections.ConfigDict) -> float | None:
  """Peak FLOP/s of all devices together, from `train.peak_tflops` or the table; None if unknown."""
  per_device = config.train.get("peak_tflops")
  devices = jax.devices()
  if per_device:
    return per_device * 1e12 * len(devices)
  kind = devices[0].device_kind
  bf16 = config.model.dtype in ("bfloat16", "float16")
  for name, (bf16_peak, f32_peak) in DEVICE_PEAKS.items():
    if name in kind:
      return (bf16_peak if bf16 else f32_peak) * len(devices)
  return None
