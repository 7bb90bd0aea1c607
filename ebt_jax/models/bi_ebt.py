"""The bidirectional image EBT (official `bi_ebt_adaln.EBT` in `EBT_IMG_Denoise`).

The candidate is the image itself, [B, H, W, C] (channels last; the official tensors are
[B, C, H, W]). The energy is a DiT (`dit_blocks`) without a timestep: every block and the
final layer are modulated by one learned condition vector (the official
`learned_adaln_condition`, an `nn.Embedding(1, D)` expanded over the batch; here one
[1, D] row broadcast over it, so the modulations are computed once per call, not per
sample; it lives in this table as `condition`), and the final Linear(D -> 1,
no bias: a constant shift of the energy changes no gradient) gives one energy per patch.
The sample's energy is the mean over patches. Output layer and modulations start at zero
(adaLN-zero), so the initial energy is flat; its gradient with respect to the image is
still linear in the head weights, which is how training moves them.

There is no context argument and no thinking-step conditioning: the noisy image enters
only as the initial candidate, and every step sees the same landscape (the official image
model ignores `ebt_type`). Attention is bidirectional, so the per-patch energies are
permutation-equivariant in the tokens (patch embeddings with their positions); only the
fixed 2-D positions tie a token to its place (tests/test_image_ebt.py checks both).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ebt_jax.models import dit_blocks, layers
from ebt_jax.models.dit_blocks import PatchedImageDims
from ebt_jax.models.params import Param, constant, normal


@dataclasses.dataclass(frozen=True)
class ImageEBTDims(PatchedImageDims):
  """Static description of an image EBT (square images, as the official code requires)."""


def param_specs(m: ImageEBTDims) -> dict:
  D = m.stack.dim
  return {
      **dit_blocks.patch_embed_specs(m.patch_size, m.channels, D),
      "condition": Param((D,), ("embed",), normal(1.0)),   # nn.Embedding's N(0, 1)
      "blocks": dit_blocks.block_specs(m.stack),
      **dit_blocks.final_mod_specs(D),
      "head": Param((D,), ("embed",), constant(0.0)),
  }


def pos_embed(m: ImageEBTDims) -> jax.Array:
  """The fixed [T, D] sin-cos table (the official frozen `pos_embed`)."""
  return jnp.asarray(dit_blocks.sincos_2d(m.stack.dim, m.grid), m.stack.dtype)


def embed_patches(params: dict, image_BxHxWxC: jax.Array, m: ImageEBTDims) -> jax.Array:
  """Patch embeddings [B, T, D] without positions."""
  return dit_blocks.embed_patches(params, image_BxHxWxC, m.patch_size, m.stack.dtype)


def token_energies(params: dict, tokens_BxTxD: jax.Array, m: ImageEBTDims) -> jax.Array:
  """Per-token energies [B, T] of transformer inputs (patch embeddings plus positions)."""
  c_1xD = params["condition"][None]
  h = dit_blocks.run_blocks(params["blocks"], tokens_BxTxD, c_1xD, m.stack)
  h = dit_blocks.final_norm(params, h, c_1xD)
  return layers.wide_linear(h, params["head"])


def patch_energies(params: dict, image_BxHxWxC: jax.Array, m: ImageEBTDims) -> jax.Array:
  """One energy per patch, [B, T] (row-major patches)."""
  tokens = embed_patches(params, image_BxHxWxC, m) + pos_embed(m)
  return token_energies(params, tokens, m)


def energy(params: dict, image_BxHxWxC: jax.Array, m: ImageEBTDims) -> jax.Array:
  """The energy of each image, [B]: the mean of its patch energies."""
  return jnp.mean(patch_energies(params, image_BxHxWxC, m), axis=-1)
