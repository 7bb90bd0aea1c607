"""Elementary layers shared by every transformer in the project (pure functions).

Numerics follow the official PyTorch code (itself derived from Llama 2): RMSNorm
normalises in float32 and casts back before the learnable weight; RoPE rotates adjacent
pairs (x[2k], x[2k+1]) in float32; attention softmax runs in float32 or wider. "Or wider"
matters for the float64 finite-difference tests, which is also why attention is written
out here instead of calling `jax.nn.dot_product_attention` (always float32 softmax).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ebt_jax.parallel.logical import constrain

# Logical layouts of the main activations (ebt_jax.parallel maps them onto the mesh).
HIDDEN = ("act_batch", "act_seq", "act_embed")
HEADS = ("act_batch", "act_seq", "act_heads", None)
FFN = ("act_batch", "act_seq", "act_mlp")
CANDIDATE = ("act_batch", "act_seq", "act_vocab")


def vocab_width(vocab: int, multiple: int) -> int:
  """The vocabulary padded up to a multiple of `multiple` (`model.vocab_multiple`), so that
  tensor parallelism can split every vocabulary-sized dimension (50277 splits no way)."""
  return -(-vocab // multiple) * multiple


def mask_vocab(x_xV: jax.Array, vocab: int, fill) -> jax.Array:
  """`x_xV` with the entries of its last axis past the real vocabulary (the padding) set
  to `fill`: -inf for logits, which no softmax then weighs, 0 for probabilities, which no
  embedding then reads; `x_xV` itself when nothing is padded."""
  if x_xV.shape[-1] == vocab:
    return x_xV
  return jnp.where(jnp.arange(x_xV.shape[-1]) < vocab, x_xV, jnp.asarray(fill, x_xV.dtype))


def wide_dtype(dtype) -> jnp.dtype:
  """float32, or the input's dtype when it is wider (float64 under x64)."""
  return jnp.promote_types(dtype, jnp.float32)


def wide_linear(x: jax.Array, w: jax.Array) -> jax.Array:
  """x @ w in float32 or wider, whatever the activation dtype: for the maps where precision
  matters under bfloat16, the candidate's embedding (so the energy's gradient with respect
  to the candidate comes back unrounded) and the energy/logit heads."""
  wide = wide_dtype(x.dtype)
  return x.astype(wide) @ w.astype(wide)


def embed_tokens(table_VxD: jax.Array, tokens_BxS: jax.Array, dtype) -> jax.Array:
  """Token embedding lookup. The table is gathered whole first (it is sharded over vocab
  and width for its gradient and optimizer state); a gather from the sharded table makes
  the partitioner replicate around it anyway, with a warning per lookup."""
  table_VxD = constrain(table_VxD.astype(dtype), (None, None))
  return constrain(table_VxD[tokens_BxS], HIDDEN)


def rms_norm(x_BxSxD: jax.Array, weight_D: jax.Array, eps: float) -> jax.Array:
  x32 = x_BxSxD.astype(wide_dtype(x_BxSxD.dtype))
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return normed.astype(x_BxSxD.dtype) * weight_D.astype(x_BxSxD.dtype)


def modulate(x_BxSxD: jax.Array, shift_D: jax.Array, scale_D: jax.Array) -> jax.Array:
  """adaLN modulation x * (1 + scale) + shift (the step embedding is shared by the batch)."""
  return x_BxSxD * (1 + scale_D) + shift_D


def rope(x_BxSxNxH: jax.Array, positions_S: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding rotating adjacent pairs (x[2k], x[2k+1]) by positions * theta^(-2k/H)."""
  head_dim = x_BxSxNxH.shape[-1]
  wide = wide_dtype(x_BxSxNxH.dtype)
  freqs_K = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=wide) / head_dim)
  angles_SxK = positions_S.astype(wide)[:, None] * freqs_K[None, :]
  cos_SxK = jnp.cos(angles_SxK)[None, :, None, :]
  sin_SxK = jnp.sin(angles_SxK)[None, :, None, :]
  pairs = x_BxSxNxH.astype(wide).reshape(*x_BxSxNxH.shape[:-1], head_dim // 2, 2)
  even, odd = pairs[..., 0], pairs[..., 1]
  rotated = jnp.stack([even * cos_SxK - odd * sin_SxK, even * sin_SxK + odd * cos_SxK], -1)
  return rotated.reshape(x_BxSxNxH.shape).astype(x_BxSxNxH.dtype)


def swiglu(x_BxSxD, w1_DxF, w3_DxF, w2_FxD) -> jax.Array:
  """w2(silu(w1 x) * w3 x), Llama's SwiGLU without biases; w1 and w3 as one matmul (why:
  `project_heads`)."""
  dtype = x_BxSxD.dtype
  w_Dx2xF = jnp.stack([w1_DxF, w3_DxF], axis=1).astype(dtype)
  both_BxSx2xF = jnp.einsum("bsd,dtf->bstf", x_BxSxD, w_Dx2xF)
  hidden_BxSxF = jax.nn.silu(both_BxSx2xF[:, :, 0]) * both_BxSx2xF[:, :, 1]
  return constrain(hidden_BxSxF, FFN) @ w2_FxD.astype(dtype)


def project_heads(x_BxSxD, *ws_DxNxH) -> tuple[jax.Array, ...]:
  """x projected by each [D, N, H] weight, as one matmul over the weights stacked on a new
  axis (head sharding unchanged). One product instead of several saves little forward; in
  the backward and the thinking step's second-order backward, the weights' gradient is one
  product with one transposed copy of x (XLA's CPU dots copy one operand of a product that
  contracts the token axis) instead of one per weight. With swiglu's w1/w3, about 7% less
  CPU time for the reference S1 step (docs/benchmarks.md)."""
  w_DxTxNxH = jnp.stack(ws_DxNxH, axis=1).astype(x_BxSxD.dtype)
  out_BxSxTxNxH = jnp.einsum("bsd,dtnh->bstnh", x_BxSxD, w_DxTxNxH)
  return tuple(constrain(out_BxSxTxNxH[:, :, t], HEADS) for t in range(len(ws_DxNxH)))


def merge_heads(o_BxSxNxH, w_NxHxD) -> jax.Array:
  return jnp.einsum("bsnh,nhd->bsd", o_BxSxNxH, w_NxHxD.astype(o_BxSxNxH.dtype))


def _masked_scores(scores, allowed):
  return jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)


def causal_attention(q_BxSxNxH, k_BxSxNxH, v_BxSxNxH) -> jax.Array:
  """Plain causal self-attention; token s attends to tokens 0..s."""
  seq = q_BxSxNxH.shape[1]
  wide = wide_dtype(q_BxSxNxH.dtype)
  scale = q_BxSxNxH.shape[-1] ** -0.5
  scores_BxNxSxS = jnp.einsum("bqnh,bknh->bnqk", q_BxSxNxH, k_BxSxNxH,
                              preferred_element_type=wide) * scale
  allowed_SxS = jnp.arange(seq)[:, None] >= jnp.arange(seq)[None, :]
  probs = jax.nn.softmax(_masked_scores(scores_BxNxSxS, allowed_SxS), axis=-1)
  return jnp.einsum("bnqk,bknh->bqnh", probs.astype(v_BxSxNxH.dtype), v_BxSxNxH)


def prediction_attention(q_BxSxNxH, k_BxSxNxH, v_BxSxNxH, ctx_k_BxCxNxH, ctx_v_BxCxNxH,
                         last_ctx_S) -> jax.Array:
  """Attention of the prediction stream: each prediction sees a context prefix and itself.

  Prediction s attends to context entries 0..last_ctx_S[s] (keys/values of the real
  stream, computed once per landscape) and to its own key/value, never to other
  predictions. The scores are [B, N, S, C] for the context plus one self-score each, so
  no mask larger than the scores is ever built. The softmax over both is written out
  rather than `jax.nn.softmax` of the two concatenated: the [B, N, S, C + 1] array and
  its slices copied the step's largest tensors (on an H200, the small S1 step takes 5%
  less time without them: docs/benchmarks.md, "Levers").
  """
  wide = wide_dtype(q_BxSxNxH.dtype)
  scale = q_BxSxNxH.shape[-1] ** -0.5
  ctx_len = ctx_k_BxCxNxH.shape[1]
  ctx_scores_BxNxSxC = jnp.einsum("bsnh,bcnh->bnsc", q_BxSxNxH, ctx_k_BxCxNxH,
                                  preferred_element_type=wide)
  allowed_SxC = jnp.arange(ctx_len)[None, :] <= last_ctx_S[:, None]
  ctx_scores_BxNxSxC = _masked_scores(ctx_scores_BxNxSxC * scale, allowed_SxC)
  self_scores_BxNxS = jnp.einsum("bsnh,bsnh->bns", q_BxSxNxH, k_BxSxNxH,
                                 preferred_element_type=wide) * scale
  # The maximum only steadies the exponentials (it cancels), so no gradient flows through it.
  top_BxNxS = jax.lax.stop_gradient(jnp.maximum(ctx_scores_BxNxSxC.max(-1), self_scores_BxNxS))
  ctx_exp_BxNxSxC = jnp.exp(ctx_scores_BxNxSxC - top_BxNxS[..., None])
  self_exp_BxNxS = jnp.exp(self_scores_BxNxS - top_BxNxS)
  total_BxNxS = ctx_exp_BxNxSxC.sum(-1) + self_exp_BxNxS
  ctx_probs = (ctx_exp_BxNxSxC / total_BxNxS[..., None]).astype(v_BxSxNxH.dtype)
  self_probs = (self_exp_BxNxS / total_BxNxS).astype(v_BxSxNxH.dtype)
  from_ctx = jnp.einsum("bnsc,bcnh->bsnh", ctx_probs, ctx_v_BxCxNxH)
  from_self = jnp.einsum("bns,bsnh->bsnh", self_probs, v_BxSxNxH)
  return from_ctx + from_self


def buffer_attention(q_BxTxNxH, k_BxCxNxH, v_BxCxNxH, positions_T) -> jax.Array:
  """Attention of new tokens over a fixed-capacity key/value buffer (KV-cached generation).

  The query at absolute position p sees buffer entries 0..p; the buffer already holds the
  new tokens' own keys/values. Entries past a query's position are masked whatever finite
  values they hold, so one compiled shape serves every generation step and the unfilled
  tail needs no clearing.
  """
  wide = wide_dtype(q_BxTxNxH.dtype)
  scale = q_BxTxNxH.shape[-1] ** -0.5
  capacity = k_BxCxNxH.shape[1]
  scores_BxNxTxC = jnp.einsum("btnh,bcnh->bntc", q_BxTxNxH, k_BxCxNxH,
                              preferred_element_type=wide) * scale
  allowed_TxC = jnp.arange(capacity)[None, :] <= positions_T[:, None]
  probs = jax.nn.softmax(_masked_scores(scores_BxNxTxC, allowed_TxC), axis=-1)
  return jnp.einsum("bntc,bcnh->btnh", probs.astype(v_BxCxNxH.dtype), v_BxCxNxH)
