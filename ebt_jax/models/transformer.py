"""Transformer++ baseline: the EBT's own block stack with an untied softmax head.

Same blocks, norms, RoPE and initialisation as the EBT's real stream, so side-by-side
runs differ only in how the prediction is made (one softmax head versus thinking).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ebt_jax.models import blocks, layers
from ebt_jax.models.blocks import StackDims
from ebt_jax.models.params import Param, constant, linear_init, normal


@dataclasses.dataclass(frozen=True)
class TransformerDims:
  stack: StackDims
  vocab_size: int
  weight_init: str = "xavier"
  weight_init_gain: float = 1.0


def param_specs(m: TransformerDims) -> dict:
  D, V = m.stack.dim, m.vocab_size
  return {
      "embed": Param((V, D), ("vocab", "embed"), normal(1.0)),
      "blocks": blocks.block_specs(m.stack, m.weight_init, m.weight_init_gain),
      "final_norm": Param((D,), ("embed",), constant(1.0)),
      "out": Param((D, V), ("embed", "vocab"), linear_init(m.weight_init, D, V, m.weight_init_gain)),
  }


def logits(params: dict, tokens_BxS: jax.Array, m: TransformerDims) -> jax.Array:
  """Next-token logits [B, S, V]: position s predicts token s+1."""
  dtype = m.stack.dtype
  x_BxSxD = layers.embed_tokens(params["embed"], tokens_BxS, dtype)
  h, _ = blocks.context_stream(params["blocks"], x_BxSxD, jnp.arange(tokens_BxS.shape[1]),
                               None, m.stack)
  h = layers.rms_norm(h, params["final_norm"], m.stack.norm_eps)
  return jnp.einsum("bsd,dv->bsv", h, params["out"].astype(dtype),
                    preferred_element_type=layers.wide_dtype(dtype))
