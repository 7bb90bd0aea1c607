"""The autoregressive text EBT, as the official code's four variants compute it.

The transformer input is the real stream (token embeddings) followed by the prediction
stream (candidate embeddings, `probs @ W_v2e`). Prediction i sits at position i+1+P and
sees real tokens 0..i and itself, where P is the number of prefix tokens of the real
stream: P=1 for `time_embed` (a learned step embedding at position 0, real tokens at
1..S), else P=0. `adaln`/`adaln_zero` instead modulate every block and the final norm
with the step embedding. The energy of prediction i is `head(norm(h_pred_i))`.

The real stream never depends on the candidate, so the model is split in two:
`encode_context` (once per landscape) and `prediction_energy` (once per thinking step).
`energy` is their composition; tests check it against a full "concatenate both streams
and mask" implementation of the official attention. In generation the same cache is the
KV cache: `prefill_context` encodes the prompt, `extend_context` appends tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ebt_jax.models import blocks, layers
from ebt_jax.models.blocks import ContextCache, StackDims
from ebt_jax.models.params import (Param, constant, linear_init, normal, padded,
                                   torch_default_linear_init)

EBT_TYPES = ("default", "time_embed", "adaln", "adaln_zero")


@dataclasses.dataclass(frozen=True)
class TextEBTDims:
  """Static description of a text EBT (hashable, so it can close over jitted code)."""

  stack: StackDims
  vocab_size: int
  ebt_type: str = "default"
  num_landscapes: int = 1        # rows of the step embedding (official mcmc_num_steps)
  tied_v2e: bool = False         # embed candidates with the token embedding (official
                                 # vocab_to_embed_uses_prob_dist)
  weight_init: str = "xavier"
  weight_init_gain: float = 1.0
  vocab_multiple: int = 1        # the tables and candidates padded to a multiple of this
  wide_candidate_embedding: bool = True  # False: probs @ W_v2e in the activation dtype

  def __post_init__(self):
    if self.ebt_type not in EBT_TYPES:
      raise ValueError(f"model.ebt_type: expected one of {EBT_TYPES}, got {self.ebt_type!r}")

  @property
  def vocab_width(self) -> int:
    """The candidates' and the tables' vocabulary axis, padding included."""
    return layers.vocab_width(self.vocab_size, self.vocab_multiple)

  @property
  def prefix(self) -> int:
    """Tokens before the real tokens in the context stream (the step token of time_embed)."""
    return 1 if self.ebt_type == "time_embed" else 0

  @property
  def uses_step_embedding(self) -> bool:
    return self.ebt_type != "default"

  @property
  def adaln(self) -> bool:
    return self.ebt_type in ("adaln", "adaln_zero")


def param_specs(m: TextEBTDims) -> dict:
  D, V, W = m.stack.dim, m.vocab_size, m.vocab_width
  specs = {
      "embed": Param((W, D), ("vocab", "embed"), padded(normal(1.0), 0, V)),
      "blocks": blocks.block_specs(m.stack, m.weight_init, m.weight_init_gain,
                                   adaln_zero=m.ebt_type == "adaln_zero"),
      "final_norm": Param((D,), ("embed",), constant(1.0)),
      # The official final Linear(D, 1) is initialised without the configured gain.
      "head": Param((D,), ("embed",), constant(0.0) if m.ebt_type == "adaln_zero"
                    else linear_init(m.weight_init, D, 1)),
  }
  if not m.tied_v2e:
    specs["v2e"] = Param((W, D), ("vocab", "embed"),
                         padded(linear_init(m.weight_init, V, D, m.weight_init_gain), 0, V))
  if m.uses_step_embedding:
    specs["step_embed"] = Param((m.num_landscapes, D), (None, "embed"), normal(1.0))
  if m.adaln:
    mod_init = constant(0.0) if m.ebt_type == "adaln_zero" else torch_default_linear_init(D)
    specs["final_mod_w"] = Param((D, 2 * D), ("embed", "modulation"), mod_init)
    specs["final_mod_b"] = Param((2 * D,), ("modulation",), mod_init)
  return specs


def _block_modulations(params, landscape, m: TextEBTDims):
  if not m.adaln:
    return None
  b = params["blocks"]
  return blocks.layer_modulations(params["step_embed"][landscape], b["mod_w"], b["mod_b"])


def encode_context(params: dict, tokens_BxS: jax.Array, landscape, m: TextEBTDims) -> ContextCache:
  """Per-layer keys/values of the real stream for one energy landscape."""
  dtype = m.stack.dtype
  x_BxSxD = layers.embed_tokens(params["embed"], tokens_BxS, dtype)
  if m.ebt_type == "time_embed":
    step_D = params["step_embed"][landscape].astype(dtype)
    step_Bx1xD = jnp.broadcast_to(step_D, (x_BxSxD.shape[0], 1, step_D.shape[-1]))
    x_BxSxD = jnp.concatenate([step_Bx1xD, x_BxSxD], axis=1)
  positions_C = jnp.arange(x_BxSxD.shape[1])
  return blocks.context_cache(params["blocks"], x_BxSxD, positions_C,
                              _block_modulations(params, landscape, m), m.stack)


def prefill_context(params: dict, tokens_BxP: jax.Array, landscape, capacity: int,
                    m: TextEBTDims) -> ContextCache:
  """A prompt's cache in a buffer of `capacity` entries (static; prefix entries included),
  so generation appends to it in place under one compiled shape (`extend_context`)."""
  entries = m.prefix + tokens_BxP.shape[1]
  if capacity < entries:
    raise ValueError(f"prefill_context: capacity {capacity} < {entries} entries "
                     f"({m.prefix} prefix + {tokens_BxP.shape[1]} prompt tokens)")
  cache = encode_context(params, tokens_BxP, landscape, m)
  pad = ((0, 0), (0, 0), (0, capacity - entries), (0, 0), (0, 0))
  return ContextCache(*(jnp.pad(a, pad) for a in cache))


def extend_context(params: dict, cache: ContextCache, tokens_BxT: jax.Array, start,
                   landscape, m: TextEBTDims) -> ContextCache:
  """Appends real tokens with token indices start..start+T-1 (`start` may be traced).

  `cache` must come from `prefill_context` of the same landscape: the `time_embed` step
  token already sits at entry 0, and `adaln` modulations are recomputed from `landscape`.
  """
  x_BxTxD = layers.embed_tokens(params["embed"], tokens_BxT, m.stack.dtype)
  positions_T = start + m.prefix + jnp.arange(tokens_BxT.shape[1])
  return blocks.extend_cache(params["blocks"], cache, x_BxTxD, positions_T,
                             _block_modulations(params, landscape, m), m.stack)


def candidate_embedding(params: dict, probs_BxSxV: jax.Array, m: TextEBTDims) -> jax.Array:
  """probs @ W_v2e, by default in float32 (or wider) under any activation dtype: thinking
  steps on the gradient with respect to the probabilities, which this map's transpose
  computes; in bfloat16 it comes back rounded to 8 bits. On TPUs a float32 matmul at
  default precision is one bfloat16 pass anyway; on GPUs it is TF32, at half the bf16
  rate. `wide_candidate_embedding=False` runs it in the activation dtype (the candidate
  itself and its update stay float32): the small S1 step takes 9% less time on an H200,
  within the bf16 tests' tolerances (docs/benchmarks.md, "Levers")."""
  dtype = m.stack.dtype
  w_VxD = params["embed"] if m.tied_v2e else params["v2e"]
  # Padded entries embed nothing, whatever the candidate holds there (and get no gradient).
  probs_BxSxV = layers.mask_vocab(layers.constrain(probs_BxSxV, layers.CANDIDATE),
                                  m.vocab_size, 0)
  if m.wide_candidate_embedding:
    x_BxSxD = layers.wide_linear(probs_BxSxV, w_VxD).astype(dtype)
  else:
    x_BxSxD = probs_BxSxV.astype(dtype) @ w_VxD.astype(dtype)
  return layers.constrain(x_BxSxD, layers.HIDDEN)


def prediction_energy(params: dict, cache: ContextCache, probs_BxSxV: jax.Array, landscape,
                      m: TextEBTDims, pred_index_S: jax.Array | None = None) -> jax.Array:
  """Energy [B, S] of each candidate distribution given the cached context.

  `pred_index_S` names the token index each candidate predicts after (default 0..S-1);
  generation passes only the last index to think about one new token against the cache.
  """
  if pred_index_S is None:
    pred_index_S = jnp.arange(probs_BxSxV.shape[1])
  x_BxSxD = candidate_embedding(params, probs_BxSxV, m)
  h = blocks.prediction_stream(params["blocks"], x_BxSxD, pred_index_S + 1 + m.prefix,
                               pred_index_S + m.prefix, cache,
                               _block_modulations(params, landscape, m), m.stack)
  return energy_head(params, h, landscape, m)


def energy_head(params: dict, h_BxSxD: jax.Array, landscape, m: TextEBTDims) -> jax.Array:
  """The prediction stream's output to energies [B, S]: final RMSNorm, the landscape's
  final modulation (adaLN kinds) and the Linear(D -> 1) head; shared with `latent_ebt`."""
  h = layers.rms_norm(h_BxSxD, params["final_norm"], m.stack.norm_eps)
  if m.adaln:
    step_D = params["step_embed"][landscape]
    shift_scale = jax.nn.silu(step_D) @ params["final_mod_w"] + params["final_mod_b"]
    shift_D, scale_D = jnp.split(shift_scale.astype(h.dtype), 2)
    h = layers.modulate(h, shift_D, scale_D)
  return layers.wide_linear(h, params["head"])


def energy(params: dict, tokens_BxS: jax.Array, probs_BxSxV: jax.Array, landscape,
           m: TextEBTDims) -> jax.Array:
  """Full-sequence energy: `prediction_energy` after `encode_context`."""
  return prediction_energy(params, encode_context(params, tokens_BxS, landscape, m),
                           probs_BxSxV, landscape, m)
