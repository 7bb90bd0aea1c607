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
from ebt_jax.models.params import Param, constant, linear_init, normal, padded


@dataclasses.dataclass(frozen=True)
class TransformerDims:
  stack: StackDims
  vocab_size: int
  weight_init: str = "xavier"
  weight_init_gain: float = 1.0
  vocab_multiple: int = 1        # the tables and logits padded to a multiple of this

  @property
  def vocab_width(self) -> int:
    return layers.vocab_width(self.vocab_size, self.vocab_multiple)


def param_specs(m: TransformerDims) -> dict:
  D, V, W = m.stack.dim, m.vocab_size, m.vocab_width
  return {
      "embed": Param((W, D), ("vocab", "embed"), padded(normal(1.0), 0, V)),
      "blocks": blocks.block_specs(m.stack, m.weight_init, m.weight_init_gain),
      "final_norm": Param((D,), ("embed",), constant(1.0)),
      "out": Param((D, W), ("embed", "vocab"),
                   padded(linear_init(m.weight_init, D, V, m.weight_init_gain), 1, V)),
  }


def logits(params: dict, tokens_BxS: jax.Array, m: TransformerDims) -> jax.Array:
  """Next-token logits [B, S, W]: position s predicts token s+1; the padded vocabulary's
  entries (`vocab_multiple`) are -inf."""
  dtype = m.stack.dtype
  x_BxSxD = layers.embed_tokens(params["embed"], tokens_BxS, dtype)
  h, _ = blocks.context_stream(params["blocks"], x_BxSxD, jnp.arange(tokens_BxS.shape[1]),
                               None, m.stack)
  h = layers.rms_norm(h, params["final_norm"], m.stack.norm_eps)
  out = jnp.einsum("bsd,dv->bsv", h, params["out"].astype(dtype),
                   preferred_element_type=layers.wide_dtype(dtype))
  return layers.mask_vocab(out, m.vocab_size, -jnp.inf)
