"""Out-of-distribution generalisation on Dyck languages (balanced brackets).

    ebt train --config configs/dyck_ood.py --workdir runs/dyck_ood
    ebt eval --workdir runs/dyck_ood

Trains a byte-level EBT on bracket strings over 3 bracket kinds nested at most 4 deep,
and evaluates on validation (same distribution) and on strings nested exactly 8 and 12
deep (`dyck_depth_8`, `dyck_depth_12`): perplexity per thinking step on each. About
5 minutes on a 2-core CPU.
"""

from ebt_jax.config import base_config


def get_config():
  c = base_config()
  c.data.source = "dyck"
  c.data.dyck.bracket_types = 3
  c.data.dyck.train_max_depth = 4
  c.data.dyck.num_documents = 20000
  c.data.ood_suites = ("dyck_depth_8", "dyck_depth_12")
  c.model.ebt_type = "time_embed"
  c.model.vocab_size = 256
  c.model.dim = 96
  c.model.n_layers = 3
  c.model.n_heads = 4
  c.model.context_length = 64
  c.thinking.num_steps = 2
  c.thinking.step_size = 50.0
  c.thinking.step_size_lr_multiplier = 300.0
  c.optimizer.peak_lr = 2e-3
  c.optimizer.warmup_steps = 50
  c.train.batch_size = 16
  c.train.num_steps = 600
  c.train.log_every = 20
  c.train.eval_every = 150
  c.train.eval_batches = 8
  c.train.checkpoint_every = 300
  return c
