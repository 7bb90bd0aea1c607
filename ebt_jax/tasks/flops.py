"""Analytic model FLOPs of a training step, the counting every task's `flops()` shares.

Counted as the paper counts an EBT step: per thinking step a forward pass of the
prediction stream, the inner backward for the candidate's gradient (about one more
forward), and the second-order backward through both (about twice their sum): 6x the
prediction-stream forward. The real stream runs once per landscape: forward plus
backward, 3x its forward (its last block makes keys and values only). Attention counts
the keys each query actually needs (causal), matmuls 2 FLOPs per multiply-add.
Truncated steps before the last skip the second-order backward (2x). A baseline counts
3x its forward pass.
"""

from __future__ import annotations

from ebt_jax.models.blocks import StackDims
from ebt_jax.models.dit_blocks import DiTStackDims


def stack_forward(stack: StackDims, tokens: float, mean_keys: float,
                  kv_only_last: bool = False) -> float:
  """The RoPE block stack over `tokens` tokens attending to `mean_keys` keys each."""
  D, F = stack.dim, stack.ffn_hidden
  per_token_layer = 2 * (4 * D * D + 3 * D * F) + 4 * mean_keys * D
  flops = stack.n_layers * tokens * per_token_layer
  if kv_only_last:  # the real stream's last block: keys and values only
    flops -= tokens * (per_token_layer - 2 * 2 * D * D)
  return flops


def expected_training_steps(t) -> float:
  """Thinking steps a training batch takes on average (S2's random repeats included);
  `t` is a task's ThinkingOptions."""
  if t.random_steps == 0:
    return float(t.num_steps)
  mean_repeats = (max(1, t.random_steps_min) + t.random_steps + 1) / 2
  randomized = 1 if t.random_steps_final_landscape else t.num_steps
  return t.num_steps - randomized + randomized * mean_repeats


def thinking_multiplier(steps: float, truncate: bool) -> float:
  """Prediction-stream forwards per training step: 6 per thinking step, 2 for the steps
  that truncation keeps out of the second-order pass."""
  return 6 * steps if not truncate else 6 + 2 * (steps - 1)


def ar_ebt_step(stack: StackDims, batch_size: int, context: int, ebt_type: str, *,
                per_token_in: float, per_token_out: float, steps: float, truncate: bool,
                landscapes: int) -> float:
  """An autoregressive EBT's training step: the real stream once per landscape and the
  prediction stream per thinking step. `per_token_in` counts a token's input projection
  (both streams), `per_token_out` the prediction stream's per-token output side (the
  candidate's embedding and the energy head)."""
  tokens = batch_size * context
  prefix = 1 if ebt_type == "time_embed" else 0
  ctx = per_token_in * tokens + stack_forward(stack, batch_size * (context + prefix),
                                              (context + prefix + 1) / 2, kv_only_last=True)
  pred = (per_token_in * tokens + stack_forward(stack, tokens, (context + 1) / 2 + prefix + 1)
          + per_token_out * tokens)
  return 3 * ctx * landscapes + thinking_multiplier(steps, truncate) * pred


def dit_forward(stack: DiTStackDims, batch_size: int, *, image_size: int, patch_size: int,
                channels: int, out_per_token: int, per_sample_condition: bool) -> float:
  """One forward pass of the DiT stack over `batch_size` images: patch embedding, blocks
  (full attention over T patches, MLP of D x mlp_ratio), adaLN modulations (per sample, or
  once for the EBT's one learned condition), and an output Linear(D -> out_per_token)."""
  D, p, C = stack.dim, patch_size, channels
  T = (image_size // p) ** 2
  F = stack.mlp_hidden
  tokens = batch_size * T
  per_token_layer = 2 * (4 * D * D + 2 * D * F) + 4 * T * D
  conditions = batch_size if per_sample_condition else 1
  return (tokens * (2 * p * p * C * D + stack.n_layers * per_token_layer + 2 * D * out_per_token)
          + conditions * 2 * D * (6 * D * stack.n_layers + 2 * D))
