"""The autoregressive latent EBT for next-frame prediction (official `EBT_VID`).

One token per frame: frame latents z_0..z_{S-1} (from a frozen encoder, or any fixed
features) are the real stream, and the candidate for position i is a latent for frame
i+1. Both streams go through the same `encoder_down_projection`, Linear(L -> D) with bias
(xavier/he normal, bias zero; the identity when L == D, as the official code uses for
features already of width D), then through the text EBT's transformer (`ar_ebt`'s
parameters and variants `default` / `time_embed` / `adaln` / `adaln_zero`, `blocks`'
context/prediction split). The energy of candidate i is `head(norm(h_pred_i))`, [B, S].

As for text, the real stream never depends on the candidate: `encode_context` runs once
per landscape and `prediction_energy` once per thinking step. The candidate is the
variable the gradient is taken against, in latent space (the official code differentiates
the energy with respect to the latent before the down projection).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ebt_jax.models import ar_ebt, blocks, layers
from ebt_jax.models.blocks import ContextCache, StackDims
from ebt_jax.models.params import Param, constant, linear_init


@dataclasses.dataclass(frozen=True)
class LatentEBTDims:
  """Static description of a latent EBT (hashable, so it can close over jitted code)."""

  stack: StackDims
  latent_dim: int                # official encoder dim (3136 for the SD VAE at 224 px)
  ebt_type: str = "time_embed"   # the video job scripts' choice
  num_landscapes: int = 1        # rows of the step embedding (official mcmc_num_steps)
  weight_init: str = "xavier"
  weight_init_gain: float = 1.0

  def __post_init__(self):
    if self.ebt_type not in ar_ebt.EBT_TYPES:
      raise ValueError(f"model.ebt_type: expected one of {ar_ebt.EBT_TYPES}, got {self.ebt_type!r}")
    # The stack's adaLN flag follows the type (as config.text_ebt_dims sets it for text).
    adaln = self.ebt_type in ("adaln", "adaln_zero")
    if self.stack.adaln != adaln:
      object.__setattr__(self, "stack", dataclasses.replace(self.stack, adaln=adaln))

  @property
  def text_dims(self) -> ar_ebt.TextEBTDims:
    """The same transformer as the text EBT (its token tables are not used)."""
    return ar_ebt.TextEBTDims(self.stack, vocab_size=1, ebt_type=self.ebt_type,
                              num_landscapes=self.num_landscapes, tied_v2e=True,
                              weight_init=self.weight_init,
                              weight_init_gain=self.weight_init_gain)

  @property
  def projects(self) -> bool:
    return self.latent_dim != self.stack.dim


def param_specs(m: LatentEBTDims) -> dict:
  """The text EBT's table without its token embedding, plus the down projection."""
  specs = ar_ebt.param_specs(m.text_dims)
  del specs["embed"]
  if m.projects:
    L, D = m.latent_dim, m.stack.dim
    specs["proj_w"] = Param((L, D), (None, "embed"),
                            linear_init(m.weight_init, L, D, m.weight_init_gain))
    specs["proj_b"] = Param((D,), ("embed",), constant(0.0))
  return specs


def project(params: dict, latents_BxSxL: jax.Array, m: LatentEBTDims) -> jax.Array:
  """The shared down projection of real and candidate latents to the model width (in
  float32 or wider: the candidate's gradient comes back through it unrounded)."""
  x = latents_BxSxL
  if m.projects:
    x = layers.wide_linear(x, params["proj_w"]) + params["proj_b"]
  return layers.constrain(x.astype(m.stack.dtype), layers.HIDDEN)


def _modulations(params, landscape, m: LatentEBTDims):
  if not m.text_dims.adaln:
    return None
  b = params["blocks"]
  return blocks.layer_modulations(params["step_embed"][landscape], b["mod_w"], b["mod_b"])


def encode_context(params: dict, latents_BxSxL: jax.Array, landscape,
                   m: LatentEBTDims) -> ContextCache:
  """Per-layer keys/values of the real stream (frames 0..S-1) for one landscape."""
  x_BxSxD = project(params, latents_BxSxL, m)
  if m.ebt_type == "time_embed":
    step_D = params["step_embed"][landscape].astype(x_BxSxD.dtype)
    step_Bx1xD = jnp.broadcast_to(step_D, (x_BxSxD.shape[0], 1, step_D.shape[-1]))
    x_BxSxD = jnp.concatenate([step_Bx1xD, x_BxSxD], axis=1)
  positions_C = jnp.arange(x_BxSxD.shape[1])
  return blocks.context_cache(params["blocks"], x_BxSxD, positions_C,
                              _modulations(params, landscape, m), m.stack)


def prediction_energy(params: dict, cache: ContextCache, cand_BxSxL: jax.Array, landscape,
                      m: LatentEBTDims, noise_BxSxD: jax.Array | None = None) -> jax.Array:
  """Energy [B, S] of each candidate next-frame latent given the cached context;
  `noise_BxSxD` is added to the projected candidate (the official Langevin noise)."""
  prefix = m.text_dims.prefix
  pred_index_S = jnp.arange(cand_BxSxL.shape[1])
  x_BxSxD = project(params, cand_BxSxL, m)
  if noise_BxSxD is not None:
    x_BxSxD = x_BxSxD + noise_BxSxD.astype(x_BxSxD.dtype)
  h = blocks.prediction_stream(params["blocks"], x_BxSxD,
                               pred_index_S + 1 + prefix, pred_index_S + prefix, cache,
                               _modulations(params, landscape, m), m.stack)
  return ar_ebt.energy_head(params, h, landscape, m.text_dims)


def energy(params: dict, latents_BxSxL: jax.Array, cand_BxSxL: jax.Array, landscape,
           m: LatentEBTDims) -> jax.Array:
  """Full-sequence energy: `prediction_energy` after `encode_context`."""
  return prediction_energy(params, encode_context(params, latents_BxSxL, landscape, m),
                           cand_BxSxL, landscape, m)
