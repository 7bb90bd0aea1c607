"""What the continuous tasks (image denoising, next-frame latents) share: the S1 objective.

A continuous candidate needs no reparametrisation: the loop steps on it directly,
y <- y - alpha * grad_y E, and every step's candidate is scored against the clean target
with SmoothL1 (beta 1, the official `nn.SmoothL1Loss(beta=1.0)`, a mean over all
elements). The loss is the mean over steps (S1), or the last step's with `truncate`, times
`reconstruction_coeff`. Options are a frozen `ThinkingOptions` whose field names are those
of `config.thinking` (tasks/options.py), S2's random step sizes/counts included. Langevin
noise is carried in the candidate (the official image model) or, with `noise_in_energy`,
drawn by the energy function and seen only by the gradient evaluation (the official video
model). A `row_mask` leaves rows out of the loss (the video replay buffer's unfilled rows).

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


def _mean(x: jax.Array, row_mask: jax.Array | None) -> jax.Array:
  """The mean over all elements, or over the rows (leading axis) `row_mask` keeps."""
  if row_mask is None:
    return jnp.mean(x)
  rows = jnp.sum(x.reshape(x.shape[0], -1), axis=1)
  return jnp.sum(rows * row_mask) / (jnp.sum(row_mask) * (x.size // x.shape[0]))


def smooth_l1(pred: jax.Array, target: jax.Array, beta: float = 1.0,
              row_mask: jax.Array | None = None) -> jax.Array:
  """torch.nn.SmoothL1Loss(beta) with mean reduction (over the rows `row_mask` keeps)."""
  diff = jnp.abs(pred - target)
  return _mean(jnp.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta), row_mask)


def mse(pred: jax.Array, target: jax.Array, row_mask: jax.Array | None = None) -> jax.Array:
  return _mean(jnp.square(pred - target), row_mask)


def think(params: dict, energy_fn: Callable, y0: jax.Array, landscape_K: jax.Array,
          t: ThinkingOptions, key: jax.Array, emit: Callable, *,
          num_steps: int | None = None, active_K: jax.Array | None = None,
          step_size: jax.Array | None = None, train: bool = False,
          warmed_up=True, noise_in_energy: bool = False) -> loop.Trajectory:
  """`loop.think` with the task's alpha (or `step_size`, e.g. randomized), Langevin noise
  and clamps. `num_steps` overrides K (more steps than trained run on the last landscape,
  the official inference); `active_K` skips steps (S2's random counts). Outside training
  (`train` False) `no_langevin_during_eval` turns the noise off; a learnable std receives
  gradients once `warmed_up`. The noise is added to the candidate before each step and
  carried, or with `noise_in_energy` it is the energy function's to add, called as
  `energy_fn(z, landscape, key, noise_std)` with a fresh key per step."""
  landscape_K = jnp.asarray(landscape_K, jnp.int32)
  if num_steps is not None:
    landscape_K = jnp.concatenate(
        [landscape_K, jnp.full((max(0, num_steps - len(landscape_K)),), landscape_K[-1])]
    )[:num_steps]
  noise = None if (not train and t.no_langevin_during_eval) else options.langevin_std(
      params, t, trainable=t.langevin_noise_learnable and warmed_up)
  alpha = options.step_size(params, t) if step_size is None else step_size
  keyed = noise_in_energy and noise is not None
  if keyed:
    fn = lambda z, landscape, step_key: energy_fn(z, landscape, step_key, noise)
  return loop.think(fn if keyed else energy_fn, y0, options.inner_optimizer(t),
                    loop.Schedule(landscape_K, alpha, active_K), key,
                    emit=emit, detach=t.detach, truncate=t.truncate,
                    pre_noise_std=None if keyed else noise, keyed_energy=keyed,
                    unroll=t.unroll, grad_clip=options.grad_clip_bound(params, t, warmed_up),
                    value_clip=t.absolute_clamp_value)


def eval_steps(config, t: ThinkingOptions) -> int:
  """Thinking steps evaluated: inference.thinking_steps, or as many as validation takes
  (with S2's random step counts, the final step R+1 times)."""
  return config.inference.thinking_steps or options.validation_steps(t)


def s1_objective(params: dict, energy_fn: Callable, y0: jax.Array, target: jax.Array,
                 landscapes_L: jax.Array, t: ThinkingOptions, key: jax.Array,
                 extra_metrics: Callable | None = None, *, alpha_shape=None,
                 train: bool = False, warmed_up=True, row_mask: jax.Array | None = None,
                 noise_in_energy: bool = False) -> Outcome:
  """SmoothL1 to `target` through the thinking steps from `y0`.

  `landscapes_L` is the landscape of each of the `num_steps` official steps. With `train`,
  the S2 options draw their randomness as the text EBT's do (tasks/options.py): random
  step counts, and alpha x U[1/s, s] of `alpha_shape` (per sample for images, per sample
  and position for video); validation repeats the final step R+1 times. The loss is the
  mean over the steps taken (the last one's with `truncate`). `extra_metrics(candidate)
  -> {name: scalar}` adds per-step metrics (e.g. PSNR); they come back stop-gradient in
  `Outcome.steps`. `row_mask` [B] (1/0) leaves rows out of the SmoothL1, MSE and energies;
  `noise_in_energy` is `think`'s.
  """

  def emit(y):
    out = {"smooth_l1": smooth_l1(y, target, row_mask=row_mask),
           "mse": mse(y, target, row_mask=row_mask)}
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
               step_size=alpha, train=train, warmed_up=warmed_up,
               noise_in_energy=noise_in_energy)
  sl1_K = traj.outputs["smooth_l1"]
  reconstruction = sl1_K[-1] if t.truncate else options.taken_mean(sl1_K, active_K)
  loss = t.reconstruction_coeff * reconstruction
  steps = jax.lax.stop_gradient(traj.outputs)
  energies_K = jax.lax.stop_gradient(jax.vmap(lambda e: _mean(e, row_mask))(traj.energies))
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
