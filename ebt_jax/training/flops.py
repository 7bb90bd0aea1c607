"""Analytic model FLOPs of a training step, and device peaks, for MFU.

Counted as the paper counts an EBT step: per thinking step a forward pass of the
prediction stream, the inner backward for the candidate's gradient (about one more
forward), and the second-order backward through both (about twice their sum): 6x the
prediction-stream forward. The real stream runs once per landscape: forward plus
backward, 3x its forward (its last block makes keys and values only). Attention counts
the keys each query actually needs (causal), matmuls 2 FLOPs per multiply-add.
Truncated steps before the last skip the second-order backward (2x). S2 training counts
the expected number of steps taken and the replayed rows appended to the batch. The image
EBT counts the same 6x per step over its bidirectional (full-attention) DiT stack, the
DiT baseline 3x its forward pass.
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


def _dit_forward(config, batch_size: int, out_per_token: int, per_sample_condition: bool):
  """One forward pass of the DiT stack over `batch_size` images: patch embedding, blocks
  (full attention over T patches, MLP of D x mlp_ratio), adaLN modulations (per sample, or
  once for the EBT's one learned condition), and an output Linear(D -> out_per_token)."""
  m = config.model
  D, p, C = m.dim, m.patch_size, m.image_channels
  T = (m.image_size // p) ** 2
  F = config_lib.dit_stack_dims(config).mlp_hidden
  tokens = batch_size * T
  per_token_layer = 2 * (4 * D * D + 2 * D * F) + 4 * T * D
  conditions = batch_size if per_sample_condition else 1
  return (tokens * (2 * p * p * C * D + m.n_layers * per_token_layer + 2 * D * out_per_token)
          + conditions * 2 * D * (6 * D * m.n_layers + 2 * D))


def _continuous_flops(config, batch_size: int) -> float:
  """The image and video kinds: the EBTs as text's (6x a forward per thinking step), the DiT
  a forward and backward (3x its forward, the timestep MLP left out)."""
  m, t = config.model, config.thinking
  K = t.num_steps
  step_multiplier = 6 * K if not t.truncate else 6 + 2 * (K - 1)
  if m.kind == "dit":
    out = m.patch_size ** 2 * m.image_channels * (2 if m.learn_sigma else 1)
    return 3 * _dit_forward(config, batch_size, out, per_sample_condition=True)
  if m.kind == "image_ebt":
    return step_multiplier * _dit_forward(config, batch_size, 1, per_sample_condition=False)
  # latent_ebt: text's EBT with the down projection (L -> D, when L != D) in place of the
  # vocabulary maps, one frame per token.
  S, D, L = m.context_length, m.dim, m.latent_dim
  tokens = batch_size * S
  project = 2 * tokens * L * D if L != D else 0
  prefix = 1 if m.ebt_type == "time_embed" else 0
  ctx = project + _stack_forward(config, batch_size * (S + prefix), (S + prefix + 1) / 2,
                                 kv_only_last=True)
  pred = project + _stack_forward(config, tokens, (S + 1) / 2 + prefix + 1) + 2 * tokens * D
  landscapes = 1 if m.ebt_type == "default" else K
  return 3 * ctx * landscapes + step_multiplier * pred


def train_step_flops(config: ml_collections.ConfigDict, batch_size: int) -> float:
  m, t = config.model, config.thinking
  S = m.context_length
  if m.kind in config_lib.CONTINUOUS_KINDS:
    return _continuous_flops(config, batch_size)
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
