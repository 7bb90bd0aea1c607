"""The Llama-style block stack shared by the EBTs and the Transformer++ baseline.

Layer parameters are stacked along a leading `layers` axis so the stack runs as one
`lax.scan` (compile time independent of depth; a second-order EBT step on CPU otherwise
spends most of its time compiling) or, with `scan_layers=False`, as an unrolled loop.

Two streams run through the same weights:
* the *context stream* (real tokens, causal) returns the per-layer keys/values it made,
  which is everything the prediction stream needs from it (`ContextCache`);
* the *prediction stream* (candidate embeddings) attends, per layer, to a prefix of
  those cached keys/values and to itself only (`Attention.prediction`);
* in generation, new real tokens extend that cache in place (`extend_cache`), each layer
  attending over a fixed-capacity buffer (`Attention.buffer`).
Which attention implementation runs (dense or blockwise) is the dims' `attention`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ebt_jax.models import layers
from ebt_jax.models.attention import Attention
from ebt_jax.models.params import Param, constant, stacked, torch_default_linear_init, torch_linear


@dataclasses.dataclass(frozen=True)
class StackDims:
  """Static shape and numerics of a block stack."""

  dim: int
  n_layers: int
  n_heads: int
  ffn_hidden: int
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  adaln: bool = False            # step-indexed adaLN shift/scale/gate in every block
  dtype: Any = jnp.float32       # activation dtype; parameters are cast to it at use
  scan_layers: bool = True
  remat: str = "none"            # per-block rematerialisation: none | full | dots (REMAT_POLICIES)
  attention: Attention = Attention()   # dense or blockwise (models/attention.py)

  @property
  def head_dim(self) -> int:
    return self.dim // self.n_heads


class ContextCache(NamedTuple):
  """Per-layer keys (RoPE applied) and values of the real stream: the only thing the
  prediction stream reads from the context. Also the KV cache of generation."""

  k_LxBxCxNxH: jax.Array
  v_LxBxCxNxH: jax.Array


def block_specs(d: StackDims, weight_init: str, gain: float, adaln_zero: bool = False) -> dict:
  """Parameters of `d.n_layers` blocks, stacked. Linear maps use the official init, with
  torch's fans read from the named input/output axes (wq's are D and N * H)."""
  D, N, H, F = d.dim, d.n_heads, d.head_dim, d.ffn_hidden

  def lin(shape, axes, in_axis=-2, out_axis=-1):
    return stacked(d.n_layers, Param(shape, axes, torch_linear(weight_init, gain, in_axis,
                                                               out_axis)))

  specs = {
      "attn_norm": stacked(d.n_layers, Param((D,), ("embed",), constant(1.0))),
      "wq": lin((D, N, H), ("embed", "heads", "head_dim"), 0, (1, 2)),
      "wk": lin((D, N, H), ("embed", "heads", "head_dim"), 0, (1, 2)),
      "wv": lin((D, N, H), ("embed", "heads", "head_dim"), 0, (1, 2)),
      "wo": lin((N, H, D), ("heads", "head_dim", "embed"), (0, 1), 2),
      "ffn_norm": stacked(d.n_layers, Param((D,), ("embed",), constant(1.0))),
      "w1": lin((D, F), ("embed", "mlp")),
      "w3": lin((D, F), ("embed", "mlp")),
      "w2": lin((F, D), ("mlp", "embed")),
  }
  if d.adaln:
    # The official adaLN Linear(D, 6D) keeps torch's default init (or zeros for adaLN-zero).
    mod_init = constant(0.0) if adaln_zero else torch_default_linear_init(D)
    specs["mod_w"] = stacked(d.n_layers, Param((D, 6 * D), ("embed", "modulation"), mod_init))
    specs["mod_b"] = stacked(d.n_layers, Param((6 * D,), ("modulation",), mod_init))
  return specs


def layer_modulations(step_vec_D, mod_w_LxDxM, mod_b_LxM) -> jax.Array:
  """adaLN (shift, scale, gate) x (attention, mlp) of every layer: [L, 6, D]."""
  m_LxM = jnp.einsum("d,ldm->lm", jax.nn.silu(step_vec_D), mod_w_LxDxM) + mod_b_LxM
  return m_LxM.reshape(m_LxM.shape[0], 6, -1)


def _qkv(p: dict, x_BxSxD, positions_S, mod_6xD, d: StackDims, queries: bool = True):
  """(queries, keys, values), RoPE on queries and keys, from one matmul; (keys, values)
  with `queries=False` (a last block whose output nothing reads)."""
  h = layers.rms_norm(x_BxSxD, p["attn_norm"], d.norm_eps)
  if mod_6xD is not None:
    h = layers.modulate(h, mod_6xD[0].astype(d.dtype), mod_6xD[1].astype(d.dtype))
  names = ("wq", "wk", "wv") if queries else ("wk", "wv")
  *rotated, v = layers.project_heads(h, *(p[name] for name in names))
  return (*(layers.rope(a, positions_S, d.rope_theta) for a in rotated), v)


def _block(p: dict, x_BxSxD, positions_S, mod_6xD, attend: Callable, d: StackDims):
  """One pre-norm block. `attend(q, k, v) -> (out, aux)` decides what the queries see and
  what the block hands back beside its output (the layer's K/V, an updated KV buffer)."""
  dtype = d.dtype
  x_BxSxD = layers.constrain(x_BxSxD, layers.HIDDEN)
  q, k, v = _qkv(p, x_BxSxD, positions_S, mod_6xD, d)
  out, aux = attend(q, k, v)
  attn = layers.merge_heads(out, p["wo"])
  x_BxSxD = x_BxSxD + (attn if mod_6xD is None else mod_6xD[2].astype(dtype) * attn)
  h = layers.rms_norm(x_BxSxD, p["ffn_norm"], d.norm_eps)
  if mod_6xD is not None:
    h = layers.modulate(h, mod_6xD[3].astype(dtype), mod_6xD[4].astype(dtype))
  ffn = layers.swiglu(h, p["w1"], p["w3"], p["w2"])
  x_BxSxD = x_BxSxD + (ffn if mod_6xD is None else mod_6xD[5].astype(dtype) * ffn)
  return x_BxSxD, aux


# What the backward pass keeps of a rematerialised function: nothing (recompute all), or
# only matrix-multiply outputs without batch dimensions (recompute the cheap rest).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat(fn, policy: str, prevent_cse: bool = True, static_argnums=()):
  """`fn` under jax.checkpoint with a named policy ("none" returns `fn`)."""
  if policy == "none":
    return fn
  return jax.checkpoint(fn, policy=REMAT_POLICIES[policy], prevent_cse=prevent_cse,
                        static_argnums=static_argnums)


def run_layers(body: Callable, x, per_layer, *, scan: bool = True, remat_policy: str = "none"):
  """Runs `body(x, layer_inputs) -> (x, out)` over per-layer inputs stacked on a leading
  axis; returns the last `x` and the outputs stacked the same way. Every block stack (text
  and DiT) runs through here.

  `scan`: one `lax.scan` (compile time independent of depth), else an unrolled Python loop.
  `remat_policy` rematerialises each layer (`remat`); common subexpressions are only kept
  apart in the unrolled loop, as a scan body cannot merge with its neighbours anyway.
  """
  body = remat(body, remat_policy, prevent_cse=not scan)
  if scan:
    return jax.lax.scan(body, x, per_layer)
  outs = []
  for i in range(jax.tree_util.tree_leaves(per_layer)[0].shape[0]):
    x, out = body(x, jax.tree_util.tree_map(lambda a: a[i], per_layer))
    outs.append(out)
  return x, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)


def context_stream(bp: dict, x_BxCxD, positions_C, mods_Lx6xD, d: StackDims):
  """Causal pass over the real stream; returns its output and the per-layer K/V."""

  def attend(q, k, v):
    return d.attention.causal(q, k, v), (k, v)

  def body(x, layer):
    p, mod = layer
    return _block(p, x, positions_C, mod, attend, d)

  x_BxCxD, (k, v) = run_layers(body, x_BxCxD.astype(d.dtype), (bp, mods_Lx6xD),
                               scan=d.scan_layers, remat_policy=d.remat)
  return x_BxCxD, ContextCache(k, v)


def context_cache(bp: dict, x_BxCxD, positions_C, mods_Lx6xD, d: StackDims) -> ContextCache:
  """The real stream's per-layer K/V only.

  Nothing reads the real stream's output, so its last block stops after the key/value
  projections: no queries, attention, output projection or FFN there (1/L of the
  context-stream work, which `lax.scan` could not drop on its own).
  """
  head, last = _split_last(bp), jax.tree_util.tree_map(lambda a: a[-1], bp)
  head_mods = None if mods_Lx6xD is None else mods_Lx6xD[:-1]
  last_mod = None if mods_Lx6xD is None else mods_Lx6xD[-1]
  if d.n_layers > 1:
    x_BxCxD, cache = context_stream(head, x_BxCxD, positions_C, head_mods,
                                    dataclasses.replace(d, n_layers=d.n_layers - 1))
  else:
    x_BxCxD, cache = x_BxCxD.astype(d.dtype), None
  k, v = _qkv(last, x_BxCxD, positions_C, last_mod, d, queries=False)
  if cache is None:
    return ContextCache(k[None], v[None])
  return ContextCache(jnp.concatenate([cache.k_LxBxCxNxH, k[None]]),
                      jnp.concatenate([cache.v_LxBxCxNxH, v[None]]))


def _split_last(tree):
  return jax.tree_util.tree_map(lambda a: a[:-1], tree)


def extend_cache(bp: dict, cache: ContextCache, x_BxTxD, positions_T, mods_Lx6xD,
                 d: StackDims) -> ContextCache:
  """Appends T real tokens (embeddings `x_BxTxD`) to a fixed-capacity KV buffer.

  `positions_T` are contiguous absolute positions and also the buffer entries written;
  `positions_T[0]` may be traced, so generation grows the cache inside one compiled loop
  instead of re-encoding the prefix. Each layer writes the new K/V into its buffer slice
  and attends over the buffer (`Attention.buffer` masks entries past each query).
  As in `context_cache`, the last layer stops after its K/V projections. Writes must stay
  inside the capacity: `dynamic_update_slice` clamps the start instead of failing.
  """
  start = positions_T[0]

  def write(buf_BxCxNxH, new_BxTxNxH):
    return jax.lax.dynamic_update_slice_in_dim(
        buf_BxCxNxH, new_BxTxNxH.astype(buf_BxCxNxH.dtype), start, axis=1)

  def body(x, layer):
    p, k_buf, v_buf, mod = layer

    def attend(q, k, v):
      k_buf_BxCxNxH, v_buf_BxCxNxH = write(k_buf, k), write(v_buf, v)
      out = d.attention.buffer(q, k_buf_BxCxNxH, v_buf_BxCxNxH, positions_T)
      return out, (k_buf_BxCxNxH, v_buf_BxCxNxH)

    return _block(p, x, positions_T, mod, attend, d)

  k_LxBxCxNxH, v_LxBxCxNxH = cache
  last = jax.tree_util.tree_map(lambda a: a[-1], bp)
  last_mod = None if mods_Lx6xD is None else mods_Lx6xD[-1]
  x_BxTxD = x_BxTxD.astype(d.dtype)
  if d.n_layers > 1:
    head_mods = None if mods_Lx6xD is None else mods_Lx6xD[:-1]
    per_layer = (_split_last(bp), k_LxBxCxNxH[:-1], v_LxBxCxNxH[:-1], head_mods)
    x_BxTxD, (k_head, v_head) = run_layers(body, x_BxTxD, per_layer, scan=d.scan_layers,
                                           remat_policy=d.remat)
  k, v = _qkv(last, x_BxTxD, positions_T, last_mod, d, queries=False)
  k_last, v_last = write(k_LxBxCxNxH[-1], k)[None], write(v_LxBxCxNxH[-1], v)[None]
  if d.n_layers == 1:
    return ContextCache(k_last, v_last)
  return ContextCache(jnp.concatenate([k_head, k_last]), jnp.concatenate([v_head, v_last]))


def prediction_stream(bp: dict, x_BxSxD, positions_S, last_ctx_S, cache: ContextCache,
                      mods_Lx6xD, d: StackDims):
  """Pass over the prediction stream; prediction s sees cache entries 0..last_ctx_S[s]."""

  def body(x, layer):
    p, ctx_k, ctx_v, mod = layer

    def attend(q, k, v):
      return d.attention.prediction(q, k, v, ctx_k, ctx_v, last_ctx_S), None

    return _block(p, x, positions_S, mod, attend, d)

  per_layer = (bp, cache.k_LxBxCxNxH, cache.v_LxBxCxNxH, mods_Lx6xD)
  x_BxSxD, _ = run_layers(body, x_BxSxD.astype(d.dtype), per_layer, scan=d.scan_layers,
                          remat_policy=d.remat)
  return x_BxSxD
