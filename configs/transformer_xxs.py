"""The Transformer++ baseline of the paper at xxs size (official baseline_transformer.sh).

Same blocks, width, depth, context, optimizer and batch as configs/ebt_s1_xxs.py, with an
untied softmax head instead of thinking:

    ebt train --config configs/transformer_xxs.py --workdir runs/transformer_xxs \\
        --config.data.source=shards --config.data.path=data/pile_shards \\
        --config.data.tokenizer=tokenizer.json

Expected run time: 1.0e13 model FLOPs per step, about 0.05 s per step on one H100 at 40%
MFU in float32 (an estimate from the FLOP count, not a measurement).
"""

from ebt_jax.configs import ebt_s1_xxs


def get_config():
  c = ebt_s1_xxs.get_config()
  c.model.kind = "transformer"
  c.model.ebt_type = "default"
  return c
