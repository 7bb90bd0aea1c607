"""The paper's System 2 (S2) recipe (configs/ebt_s2_xxs.py) sized for a 2-core CPU.

    ebt train --config configs/ebt_s2_cpu.py --workdir runs/ebt_s2_cpu

About 10 minutes on a 2-core CPU: a byte-level `time_embed` EBT (4 layers, width 128,
context 128, batch 16) on the embedded corpus (the Python standard library's sources),
trained with the official S2 flags: one landscape whose step is taken 2 or 3 times per
batch (3 in validation), a fixed step size randomized x U[1/2, 2] per (sample, position),
Langevin noise before every step, the replay buffer (half a batch replayed per step, 192
sequences kept), truncated and non-detached steps. The summary shows validation
perplexity after each of the 3 thinking steps (measured: 10 min 20 s, perplexity 11.4,
6.6 and 6.5 after steps 1, 2 and 3). Only the model, batch, schedule and data differ
from configs/ebt_s2_xxs.py (and one replay buffer for the one device): the S2 flags,
alpha 5 included, are the official ones.

The paper's Table 2 ablations, one override each (each in a new --workdir):

    no random step size:   --config.thinking.step_size_random_scale=1
    no random step count:  --config.thinking.random_steps_min=3
                           (always 3 steps, as validation, instead of 2 or 3)
    no Langevin dynamics:  --config.thinking.langevin_noise=0
    no replay buffer:      --config.thinking.replay_buffer=False

e.g. `ebt train --config configs/ebt_s2_cpu.py --workdir runs/s2_no_replay
--config.thinking.replay_buffer=False`.
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
  t = c.thinking
  t.num_steps = 1
  t.random_steps = 2
  t.random_steps_min = 2
  t.step_size = 5.0
  t.step_size_learnable = False
  t.step_size_random_scale = 2.0
  t.langevin_noise = 3.0
  t.replay_buffer = True
  t.replay_buffer_size = 192
  t.replay_buffer_sample_fraction = 0.5
  t.truncate = True
  t.detach = False
  c.optimizer.peak_lr = 2e-3
  c.optimizer.warmup_steps = 100
  c.train.batch_size = 16
  c.train.num_steps = 500
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.eval_batches = 8
  c.train.checkpoint_every = 250
  return c
