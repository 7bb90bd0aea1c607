"""What plain `ebt train` runs: a byte-level text EBT on the embedded corpus.

    ebt train                      # = ebt train --config configs/default.py --workdir runs/default

About 10 minutes on a 2-core CPU. A `time_embed` EBT (2 thinking steps, learnable step
size) reads bytes of the Python standard library's source files; the summary at the end
shows validation perplexity after each thinking step.

Thinking steps are not detached (the official `--no_mcmc_detach`): the second step's loss
also trains the first step to hand it a useful candidate. With the official default
(detached steps) a run this short ends with the two steps level; without detaching, the
second step is better than the first within a few hundred updates.
"""

from ebt_jax.config import base_config


def get_config():
  c = base_config()
  c.model.ebt_type = "time_embed"
  c.model.vocab_size = 256
  c.model.dim = 128
  c.model.n_layers = 4
  c.model.n_heads = 4
  c.model.context_length = 128
  c.thinking.num_steps = 2
  c.thinking.step_size = 50.0
  c.thinking.step_size_lr_multiplier = 300.0
  c.thinking.detach = False
  c.optimizer.peak_lr = 2e-3
  c.optimizer.warmup_steps = 100
  c.train.batch_size = 16
  c.train.num_steps = 500
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.eval_batches = 8
  c.train.checkpoint_every = 250
  return c
