"""The paper's System 2 (S2) text EBT at xxs size (the official ebt_s2.sh job script).

The S1 xxs model (6 layers, width 384, 6 heads, context 256, `time_embed`, AdamW at
1.2e-3, 10k warmup steps, cosine to a tenth, batch 256, GPT-NeoX-20B's tokenizer) with
the S2 recipe of the script's flags:
  --mcmc_num_steps 1 --randomize_mcmc_num_steps 2 --randomize_mcmc_num_steps_min 2
      one landscape, its step taken 2 or 3 times per batch (validation: 3)
  --mcmc_step_size 5 --randomize_mcmc_step_size_scale 2
      fixed alpha 5, drawn from U[2.5, 10] per (sample, position) in training
  --langevin_dynamics_noise 3.0      Langevin noise before every step (validation too)
  --mcmc_replay_buffer               192 sequences per GPU, 50% of each batch replayed
  --truncate_mcmc --no_mcmc_detach   second order through the last step only
The official script runs 4 GPUs, so the replay buffer has 4 groups (one per GPU); keep
`thinking.replay_buffer_groups` equal to your data-parallel device count so each device
keeps its own. The buffers hold 4 x 192 x 256 x 50277 float32 logits (39.5 GB, 9.9 GB
per group, as the official code holds per GPU): shard over at least 4 devices. The
tokenizer and a text corpus are files you provide (nothing is downloaded):

    pip install "ebt_jax[tokenizers]"
    ebt prepare --config configs/ebt_s2_xxs.py --out data/pile_shards \\
        --config.data.source=text --config.data.path='corpus/*.jsonl' \\
        --config.data.tokenizer=tokenizer.json
    ebt train --config configs/ebt_s2_xxs.py --workdir runs/ebt_s2_xxs \\
        --config.data.source=shards --config.data.path=data/pile_shards \\
        --config.data.tokenizer=tokenizer.json

`ebt_jax.config.from_official_hparams` of the script's flags gives this config
(tests/test_s2.py checks it). Table 2 ablations: see configs/ebt_s2_cpu.py.
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
  t = c.thinking
  t.num_steps = 1
  t.random_steps = 2
  t.random_steps_min = 2
  t.step_size = 5.0
  t.step_size_learnable = False
  t.step_size_lr_multiplier = 5000.0   # the official default; unused with a fixed alpha
  t.step_size_random_scale = 2.0
  t.langevin_noise = 3.0
  t.replay_buffer = True
  t.replay_buffer_size = 192
  t.replay_buffer_sample_fraction = 0.5
  t.replay_buffer_groups = 4
  t.truncate = True
  t.detach = False
  c.optimizer.peak_lr = 1.2e-3
  c.optimizer.warmup_steps = 10000
  c.optimizer.min_lr_scale = 10.0
  c.optimizer.decay_steps = 1000000
  c.train.batch_size = 256
  c.train.num_steps = 1000000
  c.train.log_every = 100
  c.train.eval_every = 15000
  c.train.eval_batches = 16
  c.train.checkpoint_every = 5000
  return c
