"""The Transformer++ baseline of the paper at xxs size (official baseline_transformer.sh).

Same blocks, width, depth, context, optimizer and batch as configs/ebt_s1_xxs.py, with an
untied softmax head instead of thinking:

    ebt train --config configs/transformer_xxs.py --workdir runs/transformer_xxs \\
        --config.data.source=shards --config.data.path=data/pile_shards \\
        --config.data.tokenizer=tokenizer.json
"""

from ebt_jax.configs import ebt_s1_xxs


def get_config():
  c = ebt_s1_xxs.get_config()
  c.model.kind = "transformer"
  c.model.ebt_type = "default"
  return c
