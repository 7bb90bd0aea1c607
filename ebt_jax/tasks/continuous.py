"""What the continuous tasks (image denoising, next-frame latents) share: the S1 objective.

A continuous candidate needs no reparametrisation: the loop steps on it directly,
y <- y - alpha * grad_y E, and every step's candidate is scored against the clean target
with SmoothL1 (beta 1, the official `nn.SmoothL1Loss(beta=1.0)`, a mean over all
elements). The loss is the mean over steps (S1), or the last step's with `truncate`, times
`reconstruction_coeff`. Options are a frozen `ThinkingOptions` whose field names are those
of `config.thinking`, so `ThinkingOptions.from_config(config.thinking)` is the whole
integration. S2's random step sizes/counts and replay buffer are not wired here (the
official image model raises for its replay buffer).

Metrics follow the official `forward_loss_wrapper`s: `loss`, `initial_loss` (first step's
SmoothL1), `final_step_loss`, `initial_final_pred_energies_gap` (mean energy the first
step started from minus the last's), plus per-step `mse_steps` and `energy_steps`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ebt_jax.models.params import Param, constant
from ebt_jax.thinking import loop, optimizers

MIN_STEP_SIZE = 1e-4       # the official clamp of alpha
MIN_LANGEVIN_STD = 1e-6    # the official clamp of the Langevin std


@dataclasses.dataclass(frozen=True)
class ThinkingOptions:
  """The `config.thinking` fields the continuous tasks read (same names and meaning)."""

  num_steps: int = 1                   # [mcmc_num_steps]
  step_size: float = 3000.0            # [mcmc_step_size] initial alpha (image scripts: 3000)
  step_size_learnable: bool = True     # [mcmc_step_size_learnable]
  detach: bool = True                  # not [no_mcmc_detach]
  truncate: bool = False               # [truncate_mcmc]
  langevin_noise: float = 0.0          # [langevin_dynamics_noise]
  clamp_grad: bool = False             # [clamp_futures_grad]
  clamp_grad_max_change: float = 9.0   # [clamp_futures_grad_max_change]
  absolute_clamp: float = 0.0          # [absolute_clamp] (not in the official image/video code)
  reconstruction_coeff: float = 1.0    # [reconstruction_coeff]
  inner_optimizer: str = "gd"
  unroll: bool = True

  def __post_init__(self):
    if self.num_steps < 1:
      raise ValueError(f"thinking.num_steps: expected >= 1, got {self.num_steps}")
    if self.step_size <= 0:
      raise ValueError(f"thinking.step_size: expected > 0, got {self.step_size}")

  @classmethod
  def from_config(cls, thinking, **overrides) -> "ThinkingOptions":
    """The same-named fields of a `config.thinking` ConfigDict (or any attribute bag)."""
    values = {f.name: getattr(thinking, f.name) for f in dataclasses.fields(cls)
              if hasattr(thinking, f.name)}
    values.update(overrides)
    return cls(**values)


def param_specs(t: ThinkingOptions) -> dict:
  """The thinking parameters every EBT task adds to its model's table."""
  return {"alpha": Param((), (), constant(t.step_size)),
          "langevin_std": Param((), (), constant(t.langevin_noise))}


def smooth_l1(pred: jax.Array, target: jax.Array, beta: float = 1.0) -> jax.Array:
  """torch.nn.SmoothL1Loss(beta) with mean reduction."""
  diff = jnp.abs(pred - target)
  return jnp.mean(jnp.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta))


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(pred - target))


def step_size(params: dict, t: ThinkingOptions) -> jax.Array:
  alpha = jnp.maximum(params["alpha"], MIN_STEP_SIZE)
  return alpha if t.step_size_learnable else jax.lax.stop_gradient(alpha)


def _grad_clip(params: dict, t: ThinkingOptions):
  if not t.clamp_grad:
    return None
  alpha = params["alpha"] if t.step_size_learnable else jax.lax.stop_gradient(params["alpha"])
  return t.clamp_grad_max_change / alpha


def _langevin_std(params: dict, t: ThinkingOptions):
  if t.langevin_noise == 0:
    return None
  return jax.lax.stop_gradient(jnp.maximum(params["langevin_std"], MIN_LANGEVIN_STD))


class Outcome(NamedTuple):
  loss: jax.Array
  metrics: dict
  final: jax.Array           # the candidate after the last step
  steps: dict                # per-step emitted values, each [K]


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
  opt = optimizers.make(t.inner_optimizer)
  return loop.think(energy_fn, y0, opt, loop.Schedule(landscape_K, step_size(params, t)), key,
                    emit=emit, detach=t.detach, truncate=t.truncate,
                    pre_noise_std=_langevin_std(params, t), unroll=t.unroll,
                    grad_clip=_grad_clip(params, t),
                    value_clip=t.absolute_clamp if t.absolute_clamp != 0 else None)


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
