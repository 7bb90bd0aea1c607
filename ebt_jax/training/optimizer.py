"""The outer optimizer of the paper: AdamW with warmup + cosine decay and global clipping.

Parameter groups (official `configure_optimizers_nlp`):
* `alpha`, the learnable thinking step size: learning rate x `step_size_lr_multiplier`,
  no weight decay, and its *own* cosine floor (its peak / min_lr_scale). The official
  scheduler decays every group to the same absolute minimum (peak_lr / min_lr_scale),
  which drops alpha's learning rate far below its own peak / min_lr_scale at the end of
  training; this is fixed here.
* frozen parameters (`langevin_std`, and `alpha` when it is not learnable): never updated
  (torch's requires_grad=False), so weight decay does not shrink them either.
* `langevin_std` with `langevin_noise_learnable` (and noise on): frozen until warmup has
  finished, then AdamW with the default group's learning rate and weight decay (the
  official model sets its requires_grad in `warm_up_finished`; it sits in the default
  group). Its Adam moments and bias correction start then, as torch's do.
* everything else: AdamW with the configured weight decay.
Gradients are clipped by their global norm over all groups first (Lightning's
gradient_clip_val).
"""

from __future__ import annotations

import jax
import ml_collections
import optax

DEFAULT, ALPHA, LANGEVIN, FROZEN = "default", "alpha", "langevin", "frozen"


def lr_schedule(config: ml_collections.ConfigDict, peak: float) -> optax.Schedule:
  """Linear warmup (from 0, or peak / warmup_base_lr_divider) then cosine to peak / scale."""
  o = config.optimizer
  decay_steps = o.decay_steps if o.decay_steps is not None else config.train.num_steps
  init = 0.0 if o.warmup_base_lr_divider == -1 else peak / o.warmup_base_lr_divider
  return optax.warmup_cosine_decay_schedule(
      init_value=init, peak_value=peak, warmup_steps=o.warmup_steps,
      decay_steps=max(decay_steps, o.warmup_steps + 1), end_value=peak / o.min_lr_scale)


def param_labels(params: dict, config: ml_collections.ConfigDict) -> dict:
  """The group of every leaf: DEFAULT, ALPHA, LANGEVIN or FROZEN."""
  t = config.thinking

  def label(path, _):
    name = jax.tree_util.keystr(path)
    if name == "['alpha']":
      return ALPHA if t.step_size_learnable else FROZEN
    if name == "['langevin_std']":
      return LANGEVIN if t.langevin_noise_learnable and t.langevin_noise != 0 else FROZEN
    return DEFAULT

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: ml_collections.ConfigDict, params: dict) -> optax.GradientTransformation:
  o = config.optimizer
  adamw = lambda lr, wd: optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=wd)
  alpha_peak = o.peak_lr * config.thinking.step_size_lr_multiplier
  after_warmup = optax.transforms.conditionally_mask(
      optax.chain(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
                  optax.add_decayed_weights(o.weight_decay)),
      lambda count: count >= o.warmup_steps)
  groups = {
      DEFAULT: adamw(lr_schedule(config, o.peak_lr), o.weight_decay),
      ALPHA: adamw(lr_schedule(config, alpha_peak), 0.0),
      # adamw's own chain, with the Adam and decay part held back until warmup has finished.
      LANGEVIN: optax.chain(after_warmup, optax.scale_by_learning_rate(
          lr_schedule(config, o.peak_lr))),
      FROZEN: optax.set_to_zero(),
  }
  clip = optax.clip_by_global_norm(o.grad_clip) if o.grad_clip > 0 else optax.identity()
  return optax.chain(clip, optax.multi_transform(groups, param_labels(params, config)))


def learning_rates(config: ml_collections.ConfigDict, step) -> dict:
  """The learning rate of each group at optimizer step `step` (for logging and tests)."""
  o = config.optimizer
  return {DEFAULT: lr_schedule(config, o.peak_lr)(step),
          ALPHA: lr_schedule(config, o.peak_lr * config.thinking.step_size_lr_multiplier)(step)}
