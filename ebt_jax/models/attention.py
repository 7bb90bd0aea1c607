"""Attention by configuration: dense (`layers`) or blockwise with an online softmax.

Every transformer here attends in one of four patterns, all "query q sees keys 0..limit[q]"
(plus, for the EBT's prediction stream, its own key):
* `causal`: the real stream, limit[q] = q;
* `prediction`: the prediction stream over the cached real-stream keys plus itself;
* `buffer`: new tokens over a fixed-capacity KV buffer in generation;
* `bidirectional`: the DiT and the image EBT, every key.
`Attention` is the one place that picks the implementation; the stacks hold one (in their
static dims) and call its methods.

The blockwise form (`model.attention=blockwise`) never builds a [S, C] score matrix. Queries
go in blocks of `block` (`lax.map`), and each query block runs a `lax.scan` over key
blocks carrying the running max m, normaliser l and weighted value sum (the online
softmax of Milakov & Gimelshein; Rabe & Staats, "Self-attention does not need O(n^2)
memory"). Query blocks and key-block steps are rematerialised (`jax.checkpoint`; the outer
one alone still lets the double backward of the EBT's training step, the gradient of the
candidate gradient, stack every block pair's scores), so both backward passes keep only
block inputs and running statistics and recompute the scores: temporaries grow linearly
with context at a fixed number of tokens per batch, where dense attention's grow with its
square (tests/test_blockwise_attention.py; docs/benchmarks.md). It is
plain jnp, so JAX differentiates it to any order with no custom rules; the running max
is a stop-gradient shift, exact for every derivative because softmax does not depend on
it. Scores, the softmax and its accumulators are float32 or wider (float64 under x64), as
in the dense functions. Key blocks past a query block's limit are still computed (and
masked): a `lax.cond` skip would halve causal work but is left for an accelerator kernel.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ebt_jax.models import layers

IMPLS = ("dense", "blockwise")


@dataclasses.dataclass(frozen=True)
class Attention:
  """Which attention a stack runs (static and hashable, part of the stack's dims)."""

  impl: str = "dense"       # dense | blockwise
  block: int = 512          # blockwise: queries and keys per block

  def __post_init__(self):
    if self.impl not in IMPLS:
      raise ValueError(f"model.attention: expected one of {IMPLS}, got {self.impl!r}")
    if self.block < 1:
      raise ValueError(f"model.attention_block: expected a positive integer, got {self.block}")

  @property
  def blockwise(self) -> bool:
    return self.impl == "blockwise"

  def causal(self, q_BxSxNxH, k_BxSxNxH, v_BxSxNxH) -> jax.Array:
    """Token s attends to tokens 0..s."""
    if self.blockwise:
      return blockwise_attention(q_BxSxNxH, k_BxSxNxH, v_BxSxNxH,
                                 jnp.arange(q_BxSxNxH.shape[1]), None, self.block)
    return layers.causal_attention(q_BxSxNxH, k_BxSxNxH, v_BxSxNxH)

  def prediction(self, q_BxSxNxH, k_BxSxNxH, v_BxSxNxH, ctx_k_BxCxNxH, ctx_v_BxCxNxH,
                 last_ctx_S) -> jax.Array:
    """Prediction s attends to context entries 0..last_ctx_S[s] and to itself."""
    if self.blockwise:
      return blockwise_attention(q_BxSxNxH, ctx_k_BxCxNxH, ctx_v_BxCxNxH, last_ctx_S,
                                 (k_BxSxNxH, v_BxSxNxH), self.block)
    return layers.prediction_attention(q_BxSxNxH, k_BxSxNxH, v_BxSxNxH, ctx_k_BxCxNxH,
                                       ctx_v_BxCxNxH, last_ctx_S)

  def buffer(self, q_BxTxNxH, k_BxCxNxH, v_BxCxNxH, positions_T) -> jax.Array:
    """The query at position p attends to buffer entries 0..p."""
    if self.blockwise:
      return blockwise_attention(q_BxTxNxH, k_BxCxNxH, v_BxCxNxH, positions_T, None,
                                 self.block)
    return layers.buffer_attention(q_BxTxNxH, k_BxCxNxH, v_BxCxNxH, positions_T)

  def bidirectional(self, q_BxTxNxH, k_BxTxNxH, v_BxTxNxH) -> jax.Array:
    """Every query attends to every key."""
    if self.blockwise:
      return blockwise_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, None, None, self.block)
    return full_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH)


def full_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH) -> jax.Array:
  """Dense bidirectional attention, softmax in float32 or wider (float64 under x64)."""
  wide = layers.wide_dtype(q_BxTxNxH.dtype)
  scale = q_BxTxNxH.shape[-1] ** -0.5
  scores = jnp.einsum("bqnh,bknh->bnqk", q_BxTxNxH, k_BxTxNxH,
                      preferred_element_type=wide) * scale
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxTxNxH.dtype)
  return jnp.einsum("bnqk,bknh->bqnh", probs, v_BxTxNxH)


def _blocks(x_BxSx___, size: int, fill=0):
  """[B, S, ...] -> [S/size, B, size, ...], S padded up to a multiple of `size`."""
  seq = x_BxSx___.shape[1]
  pad = [(0, 0)] * x_BxSx___.ndim
  pad[1] = (0, -seq % size)
  x = jnp.pad(x_BxSx___, pad, constant_values=fill)
  x = x.reshape(x.shape[0], -1, size, *x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def blockwise_attention(q_BxSxNxH, k_BxCxNxH, v_BxCxNxH, limit_S, self_kv, block: int
                        ) -> jax.Array:
  """Query s attends to keys 0..limit_S[s] (every key when `limit_S` is None) and, with
  `self_kv = (k_BxSxNxH, v_BxSxNxH)`, to its own key/value; equal to the dense form."""
  B, S, N, H = q_BxSxNxH.shape
  C = k_BxCxNxH.shape[1]
  wide = layers.wide_dtype(q_BxSxNxH.dtype)
  lowest = jnp.finfo(wide).min
  scale = H ** -0.5
  bq, bk = min(block, S), min(block, C)
  # Limits past the last key change nothing; padded queries see every key (a row with no
  # key would divide by zero, and its NaN would reach the gradient through the slice).
  limit_S = jnp.full((S,), C - 1) if limit_S is None else jnp.minimum(limit_S, C - 1)
  q_blocks = (_blocks(q_BxSxNxH, bq), _blocks(limit_S[None], bq, C - 1)[:, 0],
              None if self_kv is None else tuple(_blocks(a, bq) for a in self_kv))
  # Padded keys have indices >= C > every limit, so the mask drops them.
  num_k = -(-C // bk)
  k_blocks = (_blocks(k_BxCxNxH, bk), _blocks(v_BxCxNxH, bk),
              jnp.arange(num_k * bk).reshape(num_k, bk))

  def query_block(args):
    q_BxQxNxH, limit_Q, own = args
    if own is None:
      m_BxNxQ = jnp.full((B, N, q_BxQxNxH.shape[1]), lowest, wide)
      l_BxNxQ = jnp.zeros_like(m_BxNxQ)
      acc_BxNxQxH = jnp.zeros((*m_BxNxQ.shape, H), wide)
    else:
      # The own key opens the running softmax: l = exp(s - m) is 1 but carries s's gradient.
      own_k, own_v = own
      s_BxNxQ = jnp.einsum("bqnh,bqnh->bnq", q_BxQxNxH, own_k,
                           preferred_element_type=wide) * scale
      m_BxNxQ = jax.lax.stop_gradient(s_BxNxQ)
      l_BxNxQ = jnp.exp(s_BxNxQ - m_BxNxQ)
      acc_BxNxQxH = l_BxNxQ[..., None] * jnp.einsum("bqnh->bnqh", own_v).astype(wide)

    def key_block(carry, kv):
      m_BxNxQ, l_BxNxQ, acc_BxNxQxH = carry
      k_BxKxNxH, v_BxKxNxH, index_K = kv
      s_BxNxQxK = jnp.einsum("bqnh,bknh->bnqk", q_BxQxNxH, k_BxKxNxH,
                             preferred_element_type=wide) * scale
      # The mask is made to depend on the scores (0 * s): a mask computed from indices
      # alone is a constant to JAX's partial evaluation, which then keeps it for every
      # (query block, key block) pair across the double backward (a [S, C] residual).
      zero_BxNxQxK = (s_BxNxQxK * 0).astype(limit_Q.dtype)
      allowed = index_K[None, :] <= limit_Q[:, None] + zero_BxNxQxK
      s_BxNxQxK = jax.lax.select(allowed, s_BxNxQxK, jnp.full_like(s_BxNxQxK, lowest))
      m_new = jax.lax.stop_gradient(jnp.maximum(m_BxNxQ, jnp.max(s_BxNxQxK, axis=-1)))
      # Masked again: while a row has seen no key, m is `lowest` too and
      # exp(lowest - lowest) would count a masked key.
      p_BxNxQxK = jax.lax.select(allowed, jnp.exp(s_BxNxQxK - m_new[..., None]),
                                 jnp.zeros_like(s_BxNxQxK))
      correction = jnp.exp(m_BxNxQ - m_new)
      l_BxNxQ = l_BxNxQ * correction + jnp.sum(p_BxNxQxK, axis=-1)
      pv_BxNxQxH = jnp.einsum("bnqk,bknh->bnqh", p_BxNxQxK.astype(v_BxKxNxH.dtype), v_BxKxNxH,
                              preferred_element_type=wide)
      return (m_new, l_BxNxQ, acc_BxNxQxH * correction[..., None] + pv_BxNxQxH), None

    (_, l_BxNxQ, acc_BxNxQxH), _ = jax.lax.scan(jax.checkpoint(key_block),
                                                (m_BxNxQ, l_BxNxQ, acc_BxNxQxH), k_blocks)
    out_BxNxQxH = acc_BxNxQxH / l_BxNxQ[..., None]
    return jnp.einsum("bnqh->bqnh", out_BxNxQxH).astype(v_BxCxNxH.dtype)

  out_QbxBxQxNxH = jax.lax.map(jax.checkpoint(query_block), q_blocks)
  out_BxSxNxH = jnp.moveaxis(out_QbxBxQxNxH, 0, 1).reshape(B, -1, N, H)
  return out_BxSxNxH[:, :S]
