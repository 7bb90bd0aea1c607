"""What the continuous tasks (image denoising, next-frame latents) share: the S1 objective.

A continuous candidate needs no reparametrisation: the loop steps on it directly,
y <- y - alpha * grad_y E, and every step's candidate is scored against the clean target
with SmoothL1 (beta 1, the official `nn.SmoothL1Loss(beta=1.0)`, a mean over all
elements). The loss is the mean over steps (S1), or the last step's with `truncate`, times
`reconstruction_coeff`. Options are a frozen `ThinkingOptions` whose field names are those
of `config.thinking` (tasks/options.py). S2's random step sizes/counts and replay buffer
are not wired here (the official image model raises for its replay buffer).

Metrics follow the official `forward_loss_wrapper`s: `loss`, `initial_loss` (first step's
SmoothL1), `final_step_loss`, `initial_final_pred_energies_gap` (mean energy the first
step started from minus the last's), plus per-step `mse_steps` and `energy_steps`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ebt_jax.tasks import options
from ebt_jax.tasks.options import Outcome, ThinkingOptions
from ebt_jax.thinking import loop


def smooth_l1(pred: jax.Array, target: jax.Array, beta: float = 1.0) -> jax.Array:
  """torch.nn.SmoothL1Loss(beta) with mean reduction."""
  diff = jnp.abs(pred - target)
  return jnp.mean(jnp.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta))


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(pred - target))


def think(params: dict, energy_fn: Callable, y0: jax.Array, landscape_K: jax.Array,
          t: ThinkingOptions, key: jax.Array, emit: Callable, *,
          num_steps: int | None = None, active_K: jax.Array | None = None,
          step_size: jax.Array | None = None, train: bool = False,
          warmed_up=True) -> loop.Trajectory:
  """`loop.think` with the task's alpha (or `step_size`, e.g. randomized), Langevin noise
  and clamps. `num_steps` overrides K (more steps than trained run on the last landscape,
  the official inference); `active_K` skips steps (S2's random counts). Outside training
  (`train` False) `no_langevin_during_eval` turns the noise off; a learnable std receives
  gradients once `warmed_up`."""
  landscape_K = jnp.asarray(landscape_K, jnp.int32)
  if num_steps is not None:
    landscape_K = jnp.concatenate(
        [landscape_K, jnp.full((max(0, num_steps - len(landscape_K)),), landscape_K[-1])]
    )[:num_steps]
  noise = None if (not train and t.no_langevin_during_eval) else options.langevin_std(
      params, t, trainable=t.langevin_noise_learnable and warmed_up)
  alpha = options.step_size(params, t) if step_size is None else step_size
  return loop.think(energy_fn, y0, options.inner_optimizer(t),
                    loop.Schedule(landscape_K, alpha, active_K), key,
                    emit=emit, detach=t.detach, truncate=t.truncate, pre_noise_std=noise,
                    unroll=t.unroll, grad_clip=options.grad_clip_bound(params, t, warmed_up),
                    value_clip=t.absolute_clamp_value)


def eval_steps(config, t: ThinkingOptions) -> int:
  """Thinking steps evaluated: inference.thinking_steps, or as many as validation takes
  (with S2's random step counts, the final step R+1 times)."""
  return config.inference.thinking_steps or options.validation_steps(t)


def s1_objective(params: dict, energy_fn: Callable, y0: jax.Array, target: jax.Array,
                 landscapes_L: jax.Array, t: ThinkingOptions, key: jax.Array,
                 extra_metrics: Callable | None = None, *, alpha_shape=None,
                 train: bool = False, warmed_up=True) -> Outcome:
  """SmoothL1 to `target` through the thinking steps from `y0`.

  `landscapes_L` is the landscape of each of the `num_steps` official steps. With `train`,
  the S2 options draw their randomness as the text EBT's do (tasks/options.py): random
  step counts, and alpha x U[1/s, s] of `alpha_shape` (per sample for images, per sample
  and position for video); validation repeats the final step R+1 times. The loss is the
  mean over the steps taken (the last one's with `truncate`). `extra_metrics(candidate)
  -> {name: scalar}` adds per-step metrics (e.g. PSNR); they come back stop-gradient in
  `Outcome.steps`.
  """

  def emit(y):
    out = {"smooth_l1": smooth_l1(y, target), "mse": mse(y, target)}
    if extra_metrics is not None:
      out.update(extra_metrics(y))
    return out

  randomize = train and (t.random_steps > 0 or t.step_size_random_scale != 1)
  steps_key, alpha_key = jax.random.split(jax.random.fold_in(key, 1))
  landscape_K, active_K = options.step_schedule(t, jnp.asarray(landscapes_L, jnp.int32),
                                                steps_key if randomize else None)
  alpha = options.step_size(params, t)
  if randomize and t.step_size_random_scale != 1:
    alpha = options.random_step_size(alpha, alpha_key, alpha_shape, t, y0.dtype)
  traj = think(params, energy_fn, y0, landscape_K, t, key, emit, active_K=active_K,
               step_size=alpha, train=train, warmed_up=warmed_up)
  sl1_K = traj.outputs["smooth_l1"]
  reconstruction = sl1_K[-1] if t.truncate else options.taken_mean(sl1_K, active_K)
  loss = t.reconstruction_coeff * reconstruction
  steps = jax.lax.stop_gradient(traj.outputs)
  energies_K = jax.lax.stop_gradient(
      jnp.mean(traj.energies.reshape(traj.energies.shape[0], -1), axis=1))
  first = 0 if active_K is None else jnp.argmax(active_K)
  metrics = {
      "loss": jax.lax.stop_gradient(loss),
      "initial_loss": steps["smooth_l1"][first],
      "final_step_loss": steps["smooth_l1"][-1],
      "initial_final_pred_energies_gap": energies_K[first] - energies_K[-1],
      "mse_steps": steps["mse"],
      "energy_steps": energies_K,
  }
  if active_K is not None:
    metrics["thinking_steps"] = jnp.sum(active_K)
  return Outcome(loss, metrics, traj.final, steps)
