"""The Transformer++ baseline of the paper (official baseline_transformer.sh); the variant is the model size.

Variants: the sizes of configs/ebt_s1.py (default `xxs`). Same blocks, width, depth,
context, optimizer and batch as configs/ebt_s1.py of the same size, with an untied
softmax head instead of thinking:

    ebt train --config configs/transformer.py:xxs --workdir runs/transformer_xxs \\
        --config.data.source=shards --config.data.path=data/pile_shards \\
        --config.data.tokenizer=tokenizer.json

bfloat16 mixed precision as configs/ebt_s1.py. Expected run time (xxs): 1.0e13 model FLOPs
per step, about 0.025 s per step on one H100 at 40% MFU in bfloat16 (an estimate from the
FLOP count, not a measurement).
"""

from ebt_jax.configs import ebt_s1, update

VARIANTS = ebt_s1.VARIANTS


def get_config(arg=None):
  return update(ebt_s1.get_config(arg), {"model.kind": "transformer", "model.ebt_type": "default"})
