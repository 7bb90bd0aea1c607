"""The DiT baseline for image denoising (official `diffusion_transformer.DiT`, unconditional).

`forward(params, x_t, t)` predicts, per pixel, the noise epsilon and (with `learn_sigma`,
the official default of `create_diffusion`) C more channels that interpolate the log
variance between the posterior's and beta_t's (`diffusion.py`). The backbone is the shared
DiT stack (`dit_blocks`); the condition is the timestep embedding: the GLIDE sinusoid
[cos, sin] of 256 frequencies through Linear-SiLU-Linear (weights N(0, 0.02), biases zero).
The final Linear(D -> p^2 * C_out, with bias) and all modulations start at zero.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ebt_jax.models import dit_blocks, layers
from ebt_jax.models.dit_blocks import PatchedImageDims
from ebt_jax.models.params import Param, constant, normal


@dataclasses.dataclass(frozen=True)
class DiTDims(PatchedImageDims):
  learn_sigma: bool = True        # official create_diffusion(learn_sigma=True)
  frequency_dim: int = 256        # official TimestepEmbedder.frequency_embedding_size

  @property
  def out_channels(self) -> int:
    return 2 * self.channels if self.learn_sigma else self.channels


def param_specs(m: DiTDims) -> dict:
  D, F, p = m.stack.dim, m.frequency_dim, m.patch_size
  out = p * p * m.out_channels
  zero = constant(0.0)
  return {
      **dit_blocks.patch_embed_specs(p, m.channels, D),
      "t_w1": Param((F, D), (None, "embed"), normal(0.02)),
      "t_b1": Param((D,), ("embed",), zero),
      "t_w2": Param((D, D), ("embed", None), normal(0.02)),
      "t_b2": Param((D,), ("embed",), zero),
      "blocks": dit_blocks.block_specs(m.stack),
      **dit_blocks.final_mod_specs(D),
      "out_w": Param((D, out), ("embed", None), zero),
      "out_b": Param((out,), (None,), zero),
  }


def timestep_embedding(t_B: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """The official sinusoid: [cos(t f), sin(t f)], f = max_period^(-k / half), k < half."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t_B.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def forward(params: dict, x_BxHxWxC: jax.Array, t_B: jax.Array, m: DiTDims) -> jax.Array:
  """[B, H, W, out_channels]: epsilon, then (with learn_sigma) the variance values."""
  dtype = m.stack.dtype
  pos = jnp.asarray(dit_blocks.sincos_2d(m.stack.dim, m.grid), dtype)
  x = dit_blocks.embed_patches(params, x_BxHxWxC, m.patch_size, dtype) + pos
  t_freq = timestep_embedding(t_B, m.frequency_dim).astype(dtype)
  c_BxD = jax.nn.silu(t_freq @ params["t_w1"].astype(dtype) + params["t_b1"].astype(dtype))
  c_BxD = c_BxD @ params["t_w2"].astype(dtype) + params["t_b2"].astype(dtype)
  h = dit_blocks.run_blocks(params["blocks"], x, c_BxD, m.stack)
  h = dit_blocks.final_norm(params, h, c_BxD)
  out = layers.wide_linear(h, params["out_w"]) + params["out_b"]   # epsilon in float32
  return dit_blocks.unpatchify(out, m.patch_size, m.grid, m.grid)


def predict_eps(params: dict, x_BxHxWxC: jax.Array, t_B: jax.Array, m: DiTDims) -> jax.Array:
  """The epsilon channels of `forward` (all DDIM needs)."""
  return forward(params, x_BxHxWxC, t_B, m)[..., :m.channels]
