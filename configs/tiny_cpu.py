"""CI-sized text EBT: trains in well under a minute on 2 CPU cores.

    ebt train --config configs/tiny_cpu.py --workdir runs/tiny_cpu

About 20-40 s on a 2-core CPU (most of it compiling the second-order step). Byte-level
`time_embed` EBT on the embedded corpus (the Python standard library's source files).
"""

from ebt_jax.config import base_config


def get_config():
  c = base_config()
  c.model.ebt_type = "time_embed"
  c.model.vocab_size = 256
  c.model.dim = 32
  c.model.n_layers = 2
  c.model.n_heads = 2
  c.model.context_length = 32
  c.thinking.num_steps = 2
  c.thinking.step_size = 10.0
  c.thinking.step_size_lr_multiplier = 100.0
  c.optimizer.peak_lr = 3e-3
  c.optimizer.warmup_steps = 5
  c.train.batch_size = 8
  c.train.num_steps = 30
  c.train.log_every = 5
  c.train.eval_every = 15
  c.train.eval_batches = 2
  c.train.checkpoint_every = 15
  return c
