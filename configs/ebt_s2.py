"""The paper's System 2 (S2) text EBT (the official ebt_s2.sh job script).

Variants: `cpu` (the default), sized for a 2-core CPU, and the model sizes of
configs/ebt_s1.py (`xxs`: the script's). Every variant trains with the script's S2
flags (`S2`, alpha 5 included); only the model, batch, schedule and data differ between
them (and the number of replay buffers, one per data-parallel device).

`cpu`:

    ebt train --config configs/ebt_s2.py:cpu --workdir runs/ebt_s2_cpu

About 10 minutes on a 2-core CPU: a byte-level `time_embed` EBT (4 layers, width 128,
context 128, batch 16) on the embedded corpus (the Python standard library's sources),
trained with the official S2 flags: one landscape whose step is taken 2 or 3 times per
batch (3 in validation), a fixed step size randomized x U[1/2, 2] per (sample, position),
Langevin noise before every step, the replay buffer (half a batch replayed per step, 192
sequences kept), truncated and non-detached steps. The summary shows validation
perplexity after each of the 3 thinking steps (measured: 10 min 20 s, perplexity 11.4,
6.6 and 6.5 after steps 1, 2 and 3).

The paper's Table 2 ablations, one override each (each in a new --workdir):

    no random step size:   --config.thinking.step_size_random_scale=1
    no random step count:  --config.thinking.random_steps_min=3
                           (always 3 steps, as validation, instead of 2 or 3)
    no Langevin dynamics:  --config.thinking.langevin_noise=0
    no replay buffer:      --config.thinking.replay_buffer=False

e.g. `ebt train --config configs/ebt_s2.py:cpu --workdir runs/s2_no_replay
--config.thinking.replay_buffer=False`.

`xxs`: the S1 xxs model of configs/ebt_s1.py (6 layers, width 384, 6 heads, context 256,
`time_embed`, AdamW at 1.2e-3, 10k warmup steps, cosine to a tenth, batch 256,
GPT-NeoX-20B's tokenizer, bfloat16 mixed precision) with the S2 recipe of the script's flags:
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
per group, as the official code holds per GPU), split over the mesh's batch axes by
groups, else slots, else positions. Each step thinks over 384 rows (the 256 and 128
replayed), so choose `mesh.data` x `mesh.fsdp` dividing 384 (64 chips: 1 x 64; 256:
4 x 32 x `mesh.tensor` 2): on 256-way FSDP every chip would think over all 384 rows
(docs/benchmarks.md has the compiled figures). The tokenizer and a text corpus are files
you provide (nothing is downloaded):

    pip install "ebt_jax[tokenizers]"
    ebt prepare --config configs/ebt_s2.py:xxs --out data/pile_shards \\
        --config.data.source=text --config.data.path='corpus/*.jsonl' \\
        --config.data.tokenizer=tokenizer.json
    ebt train --config configs/ebt_s2.py:xxs --workdir runs/ebt_s2_xxs \\
        --config.data.source=shards --config.data.path=data/pile_shards \\
        --config.data.tokenizer=tokenizer.json

`ebt_jax.from_official_hparams` of the script's flags gives the `xxs` variant
(tests/test_s2.py checks it). The Table 2 ablations above apply to every variant.
"""

from ebt_jax.config import base_config
from ebt_jax.configs import choose, ebt_s1, update

VARIANTS = ("cpu", *ebt_s1.VARIANTS)

# The script's S2 thinking flags.
S2 = {
    "thinking.num_steps": 1,
    "thinking.random_steps": 2,
    "thinking.random_steps_min": 2,
    "thinking.step_size": 5.0,
    "thinking.step_size_learnable": False,
    "thinking.step_size_random_scale": 2.0,
    "thinking.langevin_noise": 3.0,
    "thinking.replay_buffer": True,
    "thinking.replay_buffer_size": 192,
    "thinking.replay_buffer_sample_fraction": 0.5,
    "thinking.truncate": True,
    "thinking.detach": False,
}
# The CPU run's model (byte-level, on the embedded corpus) and schedule.
CPU = {
    "model.ebt_type": "time_embed",
    "model.vocab_size": 256,
    "model.dim": 128,
    "model.n_layers": 4,
    "model.n_heads": 4,
    "model.context_length": 128,
    "optimizer.peak_lr": 2e-3,
    "optimizer.warmup_steps": 100,
    "train.batch_size": 16,
    "train.num_steps": 500,
    "train.log_every": 20,
    "train.eval_every": 100,
    "train.eval_batches": 8,
    "train.checkpoint_every": 250,
}
# On top of configs/ebt_s1.py's sizes: the script's 4 GPUs, one replay buffer each.
OFFICIAL = {
    "thinking.step_size_lr_multiplier": 5000.0,   # the official default; unused with a fixed alpha
    "thinking.replay_buffer_groups": 4,
}


def get_config(arg=None):
  variant = choose(arg, VARIANTS, default="cpu")
  if variant == "cpu":
    return update(base_config(), CPU, S2)
  return update(ebt_s1.get_config(variant), S2, OFFICIAL)
