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
          num_steps: int | None = None) -> loop.Trajectory:
  """`loop.think` with the task's alpha, noise and clamps (`num_steps` overrides K)."""
  landscape_K = jnp.asarray(landscape_K, jnp.int32)
  if num_steps is not None:
    # More steps than trained run on the last landscape (the official inference).
    landscape_K = jnp.concatenate(
        [landscape_K, jnp.full((max(0, num_steps - len(landscape_K)),), landscape_K[-1])]
    )[:num_steps]
  return loop.think(energy_fn, y0, options.inner_optimizer(t),
                    loop.Schedule(landscape_K, options.step_size(params, t)), key,
                    emit=emit, detach=t.detach, truncate=t.truncate,
                    pre_noise_std=options.langevin_std(params, t), unroll=t.unroll,
                    grad_clip=options.grad_clip_bound(params, t),
                    value_clip=t.absolute_clamp_value)


def s1_objective(params: dict, energy_fn: Callable, y0: jax.Array, target: jax.Array,
                 landscape_K: jax.Array, t: ThinkingOptions, key: jax.Array,
                 extra_metrics: Callable | None = None) -> Outcome:
  """SmoothL1 to `target` through K thinking steps from `y0`.

  `extra_metrics(candidate) -> {name: scalar}` adds per-step metrics (e.g. PSNR); they
  come back stop-gradient in `Outcome.steps`.
  """

  def emit(y):
    out = {"smooth_l1": smooth_l1(y, target), "mse": mse(y, target)}
    if extra_metrics is not None:
      out.update(extra_metrics(y))
    return out

  traj = think(params, energy_fn, y0, landscape_K, t, key, emit)
  sl1_K = traj.outputs["smooth_l1"]
  reconstruction = sl1_K[-1] if t.truncate else jnp.mean(sl1_K)
  loss = t.reconstruction_coeff * reconstruction
  steps = jax.lax.stop_gradient(traj.outputs)
  energies_K = jax.lax.stop_gradient(
      jnp.mean(traj.energies.reshape(traj.energies.shape[0], -1), axis=1))
  metrics = {
      "loss": jax.lax.stop_gradient(loss),
      "initial_loss": steps["smooth_l1"][0],
      "final_step_loss": steps["smooth_l1"][-1],
      "initial_final_pred_energies_gap": energies_K[0] - energies_K[-1],
      "mse_steps": steps["mse"],
      "energy_steps": energies_K,
  }
  return Outcome(loss, metrics, traj.final, steps)
