"""The paper's S1 text EBT at xxs size (the official ebt_s1.sh job script).

6 layers, width 384, 6 heads, context 256, `time_embed`, 2 thinking steps with a
learnable step size (500, its learning rate x1500), AdamW at 1.2e-3 with 10k warmup
steps and cosine decay to a tenth, batch 256, GPT-NeoX-20B's tokenizer (50277 tokens).
The tokenizer and a text corpus are files you provide (nothing is downloaded):

    pip install "ebt_jax[tokenizers]"
    ebt prepare --config configs/ebt_s1_xxs.py --out data/pile_shards \\
        --config.data.source=text --config.data.path='corpus/*.jsonl' \\
        --config.data.tokenizer=tokenizer.json
    ebt train --config configs/ebt_s1_xxs.py --workdir runs/ebt_s1_xxs \\
        --config.data.source=shards --config.data.path=data/pile_shards \\
        --config.data.tokenizer=tokenizer.json

Expected run time: 4.6e13 model FLOPs per step (`ebt_jax.training.flops`), so about
0.25 s per step on one H100 at 40% MFU in float32 (TF32), about 3 days for the official
1M steps; an estimate from the FLOP count, not yet a measurement. On a 2-core CPU one
step at batch 8 and context 128 takes ~3.2 s (docs/benchmarks.md): use accelerators.
"""

from ebt_jax.config import base_config


def get_config():
  c = base_config()
  c.model.ebt_type = "time_embed"
  c.model.vocab_size = 50277
  c.model.dim = 384
  c.model.n_layers = 6
  c.model.n_heads = 6
  c.model.context_length = 256
  c.thinking.num_steps = 2
  c.thinking.step_size = 500.0
  c.thinking.step_size_learnable = True
  c.thinking.step_size_lr_multiplier = 1500.0
  c.optimizer.peak_lr = 1.2e-3
  c.optimizer.warmup_steps = 10000
  c.optimizer.min_lr_scale = 10.0
  c.train.batch_size = 256
  c.train.num_steps = 1000000
  c.optimizer.decay_steps = 1000000
  c.train.log_every = 100
  c.train.eval_every = 15000
  c.train.eval_batches = 16
  c.train.checkpoint_every = 5000
  return c
