"""Out-of-distribution generalisation on Dyck languages (balanced brackets).

Variants: `s1` (the default) and `s2`.

    ebt train --config configs/dyck_ood.py --workdir runs/dyck_ood
    ebt eval --workdir runs/dyck_ood

Trains a byte-level EBT on bracket strings over 3 bracket kinds nested at most 4 deep,
and evaluates on validation (same distribution) and on strings nested exactly 8 and 12
deep (`dyck_depth_8`, `dyck_depth_12`): perplexity per thinking step on each, and the
System 2 gain per suite against its depth (`ebt eval` writes shift_gain.png). About
5 minutes on a 2-core CPU.

`s2`: the same model and data trained with the S2 recipe of configs/ebt_s2.py (the
official ebt_s2.sh flags: one landscape stepped 2 or 3 times, a fixed step size 5
randomized x U[1/2, 2], Langevin noise 3, the replay buffer, truncated non-detached steps):

    ebt train --config configs/dyck_ood.py:s2 --workdir runs/dyck_ood_s2
    ebt eval --workdir runs/dyck_ood_s2

S2 took 1.8x S1's wall time on the same (loaded) 2-core machine, so about 9 minutes idle
(an estimate). Measured gains: docs/benchmarks.md.
"""

from ebt_jax.config import base_config
from ebt_jax.configs import choose, ebt_s2, update

VARIANTS = ("s1", "s2")

DYCK = {
    "data.source": "dyck",
    "data.dyck.bracket_types": 3,
    "data.dyck.train_max_depth": 4,
    "data.dyck.num_documents": 20000,
    "data.ood_suites": ("dyck_depth_8", "dyck_depth_12"),
    "model.ebt_type": "time_embed",
    "model.vocab_size": 256,
    "model.dim": 96,
    "model.n_layers": 3,
    "model.n_heads": 4,
    "model.context_length": 64,
    "optimizer.peak_lr": 2e-3,
    "optimizer.warmup_steps": 50,
    "train.batch_size": 16,
    "train.num_steps": 600,
    "train.log_every": 20,
    "train.eval_every": 150,
    "train.eval_batches": 8,
    "train.checkpoint_every": 300,
}
# S1: two landscapes with a learnable step size.
S1 = {
    "thinking.num_steps": 2,
    "thinking.step_size": 50.0,
    "thinking.step_size_lr_multiplier": 300.0,
}


def get_config(arg=None):
  variant = choose(arg, VARIANTS, default="s1")
  return update(base_config(), DYCK, S1 if variant == "s1" else ebt_s2.S2)
