"""The DiT backbone shared by the image-denoising EBT and the DiT baseline (pure functions).

Both official models (`bi_ebt_adaln.EBT`, `diffusion_transformer.DiT`) are the DiT of
Peebles & Xie: a patch embedding (a stride-p convolution, i.e. a linear map on each p x p
patch) plus a fixed 2-D sin-cos position table, then blocks of

    x += gate_msa * Attn(modulate(LN(x), shift_msa, scale_msa))
    x += gate_mlp * MLP(modulate(LN(x), shift_mlp, scale_mlp))

with LN a LayerNorm without affine parameters (eps 1e-6), (shift, scale, gate) x 2 from
Linear(SiLU(c)) of a condition vector c, attention with a qkv bias, and an MLP of
`int(D * mlp_ratio)` hidden units with tanh-GELU. A final adaLN (shift, scale) precedes the
output Linear. Only the condition and the output differ between the two models: the EBT
conditions on one learned vector and outputs one energy per patch; the DiT conditions on a
timestep embedding and outputs noise per pixel. Here c is [B', D] with B' = 1 (broadcast
over the batch, the EBT) or B (the DiT).

Initialisation is the official `initialize_weights`: torch's xavier_uniform_ (jax's
`glorot_uniform`) for every Linear (the qkv projection as one [D, 3D] matrix, the patch
embedding as a [D, C p^2] one: `in_axis`/`out_axis` name the axes making up each fan), zero
biases, and adaLN-zero (modulations and output layer zero).

A patch is flattened in (row, column, channel) order, tokens in row-major patch order,
the same order the DiT's unpatchify reads its output in; the official convolution weight
[D, C, p, p] maps to `patch_w` [p, p, C, D] by a transpose.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.nn.initializers import glorot_uniform

from ebt_jax.models import layers
from ebt_jax.models.attention import Attention
from ebt_jax.models.blocks import run_layers
from ebt_jax.models.params import Param, constant, stacked

LN_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class DiTStackDims:
  """Static shape and numerics of a DiT block stack."""

  dim: int
  n_layers: int
  n_heads: int
  mlp_ratio: float = 4.0         # official ffn_dim_multiplier (1 in the denoising scripts)
  dtype: Any = jnp.float32       # activation dtype; parameters are cast to it at use
  scan_layers: bool = True
  remat: str = "none"            # per-block rematerialisation: none | full | dots
  attention: Attention = Attention()   # dense or blockwise (models/attention.py)

  def __post_init__(self):
    if self.dim % self.n_heads:
      raise ValueError(f"model.dim {self.dim} is not a multiple of model.n_heads {self.n_heads}")
    if self.dim % 4:
      raise ValueError(f"model.dim {self.dim}: the 2-D sin-cos table needs a multiple of 4")

  @property
  def head_dim(self) -> int:
    return self.dim // self.n_heads

  @property
  def mlp_hidden(self) -> int:
    return int(self.dim * self.mlp_ratio)


@dataclasses.dataclass(frozen=True)
class PatchedImageDims:
  """A DiT stack over square images cut into patches: what the image EBT and DiT share."""

  stack: DiTStackDims
  image_size: int                # official image_dims[0] (== image_dims[1])
  patch_size: int                # official patch_size
  channels: int = 3

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ValueError(f"model.image_size {self.image_size} is not a multiple of "
                       f"model.patch_size {self.patch_size}")

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid ** 2


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
  """The official (MAE) fixed table [grid^2, dim], tokens row-major.

  As the official `get_2d_sincos_pos_embed`, the first half of the features encodes the
  column (`np.meshgrid(w, h)` puts w first), the second half the row; each half is
  [sin(pos * omega), cos(pos * omega)] with omega = 10000^(-k / (dim / 4)).
  """
  rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
  return np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1)


def patchify(image_BxHxWxC: jax.Array, p: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/p)(W/p), p*p*C] (row-major patches, (row, col, channel) inside)."""
  B, H, W, C = image_BxHxWxC.shape
  x = image_BxHxWxC.reshape(B, H // p, p, W // p, p, C)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x_BxTxP: jax.Array, p: int, grid_h: int, grid_w: int) -> jax.Array:
  """Inverse of `patchify`: [B, T, p*p*C] -> [B, grid_h*p, grid_w*p, C]."""
  B = x_BxTxP.shape[0]
  C = x_BxTxP.shape[-1] // (p * p)
  x = x_BxTxP.reshape(B, grid_h, grid_w, p, p, C).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(B, grid_h * p, grid_w * p, C)


def patch_embed_specs(p: int, channels: int, dim: int) -> dict:
  return {
      "patch_w": Param((p, p, channels, dim), (None, None, None, "embed"),
                       glorot_uniform(in_axis=(0, 1, 2), out_axis=3)),
      "patch_b": Param((dim,), ("embed",), constant(0.0)),
  }


def embed_patches(params: dict, image_BxHxWxC: jax.Array, p: int, dtype) -> jax.Array:
  """The patch embedding (without positions): [B, T, D], computed in float32 or wider (the
  image EBT's candidate gradient comes back through it unrounded) and cast to `dtype`."""
  w = params["patch_w"]
  x_BxTxD = layers.wide_linear(patchify(image_BxHxWxC, p), w.reshape(-1, w.shape[-1]))
  return layers.constrain((x_BxTxD + params["patch_b"]).astype(dtype), layers.HIDDEN)


def block_specs(d: DiTStackDims) -> dict:
  """Parameters of `d.n_layers` DiT blocks, stacked along a leading `layers` axis."""
  D, N, H, F = d.dim, d.n_heads, d.head_dim, d.mlp_hidden

  def layer(shape, axes, init):
    return stacked(d.n_layers, Param(shape, axes, init))

  zero = constant(0.0)
  return {
      # One [D, 3D] Linear in torch (so one xavier bound), output laid out (3, heads, head_dim).
      "qkv_w": layer((D, 3, N, H), ("embed", None, "heads", "head_dim"),
                     glorot_uniform(in_axis=0, out_axis=(1, 2, 3))),
      "qkv_b": layer((3, N, H), (None, "heads", "head_dim"), zero),
      "out_w": layer((N, H, D), ("heads", "head_dim", "embed"),
                     glorot_uniform(in_axis=(0, 1), out_axis=2)),
      "out_b": layer((D,), ("embed",), zero),
      "fc1_w": layer((D, F), ("embed", "mlp"), glorot_uniform()),
      "fc1_b": layer((F,), ("mlp",), zero),
      "fc2_w": layer((F, D), ("mlp", "embed"), glorot_uniform()),
      "fc2_b": layer((D,), ("embed",), zero),
      "mod_w": layer((D, 6 * D), ("embed", "modulation"), zero),   # adaLN-zero
      "mod_b": layer((6 * D,), ("modulation",), zero),
  }


def final_mod_specs(dim: int) -> dict:
  """The final layer's adaLN (shift, scale), zero-initialised."""
  return {"final_mod_w": Param((dim, 2 * dim), ("embed", "modulation"), constant(0.0)),
          "final_mod_b": Param((2 * dim,), ("modulation",), constant(0.0))}


def layer_norm(x: jax.Array, eps: float = LN_EPS) -> jax.Array:
  """LayerNorm without affine parameters, normalised in float32 or wider."""
  x32 = x.astype(layers.wide_dtype(x.dtype))
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulations(c_BxD: jax.Array, w_DxM: jax.Array, b_M: jax.Array, chunks: int) -> jax.Array:
  """Linear(SiLU(c)) split into `chunks` vectors: [B, chunks, D]."""
  m_BxM = jax.nn.silu(c_BxD) @ w_DxM.astype(c_BxD.dtype) + b_M.astype(c_BxD.dtype)
  return m_BxM.reshape(c_BxD.shape[0], chunks, -1)


def _block(p: dict, x_BxTxD, c_BxD, d: DiTStackDims):
  dtype = d.dtype
  cast = lambda a: a.astype(dtype)
  mod = modulations(c_BxD, p["mod_w"], p["mod_b"], 6)
  h = layers.modulate(layer_norm(x_BxTxD), mod[:, None, 0], mod[:, None, 1])
  qkv = jnp.einsum("btd,dknh->kbtnh", h, cast(p["qkv_w"])) + cast(p["qkv_b"])[:, None, None]
  qkv = layers.constrain(qkv, (None, *layers.HEADS))
  attn = d.attention.bidirectional(qkv[0], qkv[1], qkv[2])
  attn = jnp.einsum("btnh,nhd->btd", attn, cast(p["out_w"])) + cast(p["out_b"])
  x_BxTxD = x_BxTxD + mod[:, 2][:, None, :] * attn
  h = layers.modulate(layer_norm(x_BxTxD), mod[:, None, 3], mod[:, None, 4])
  h = jax.nn.gelu(h @ cast(p["fc1_w"]) + cast(p["fc1_b"]), approximate=True)
  h = layers.constrain(h, layers.FFN) @ cast(p["fc2_w"]) + cast(p["fc2_b"])
  return layers.constrain(x_BxTxD + mod[:, 5][:, None, :] * h, layers.HIDDEN)


def run_blocks(bp: dict, x_BxTxD: jax.Array, c_BxD: jax.Array, d: DiTStackDims) -> jax.Array:
  """The block stack (`lax.scan` over layers unless `d.scan_layers` is False)."""
  c_BxD = c_BxD.astype(d.dtype)
  body = lambda x, p: (_block(p, x, c_BxD, d), None)
  return run_layers(body, x_BxTxD.astype(d.dtype), bp, scan=d.scan_layers,
                    remat_policy=d.remat)[0]


def final_norm(params: dict, x_BxTxD: jax.Array, c_BxD: jax.Array) -> jax.Array:
  """The final layer's modulate(LN(x), shift, scale), before its output Linear."""
  c_BxD = c_BxD.astype(x_BxTxD.dtype)
  mod = modulations(c_BxD, params["final_mod_w"], params["final_mod_b"], 2)
  return layers.modulate(layer_norm(x_BxTxD), mod[:, None, 0], mod[:, None, 1])
