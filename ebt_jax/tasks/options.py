"""The thinking options every EBT task reads, frozen once per run, and what they share.

`ThinkingOptions` holds every `config.thinking` field under the same name (official names
in `ebt_jax/config.py`), so `ThinkingOptions.from_config(config.thinking)` is the whole
integration and the config schema is the one place defaults live (`create()` starts from
them). It is a `flax.struct` dataclass whose fields are all static: hashable, so jitted
functions may close over it or take it as a static argument, and a pytree with no leaves,
so it can sit inside any tree that is mapped over.

The helpers below are the thinking loop's inputs that text, image and video EBTs take the
same way: the step size alpha, the Langevin std, the gradient clamp and the inner
optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ebt_jax import config as config_lib
from ebt_jax.models.params import Param, constant
from ebt_jax.thinking import optimizers

MIN_STEP_SIZE = 1e-4       # the official clamp of alpha
MIN_LANGEVIN_STD = 1e-6    # the official clamp of the Langevin noise std


def _static():
  return struct.field(pytree_node=False)


@struct.dataclass
class ThinkingOptions:
  """The `config.thinking` section, frozen (field meanings: `ebt_jax/config.py`)."""

  num_steps: int = _static()
  step_size: float = _static()
  step_size_learnable: bool = _static()
  step_size_lr_multiplier: float = _static()
  normalize_initial_condition: bool = _static()
  grad_wrt: str = _static()
  initial_condition: str = _static()
  initial_noise_scale: float = _static()
  detach: bool = _static()
  truncate: bool = _static()
  langevin_noise: float = _static()
  langevin_noise_learnable: bool = _static()
  no_langevin_during_eval: bool = _static()
  step_size_random_scale: float = _static()
  random_steps: int = _static()
  random_steps_min: int = _static()
  random_steps_final_landscape: bool = _static()
  clamp_grad: bool = _static()
  clamp_grad_max_change: float = _static()
  clamp_grad_max_change_after_warmup: float = _static()
  absolute_clamp: float = _static()
  soften_target: float = _static()
  sharpen: float = _static()
  normalize_first_step_only: bool = _static()
  reconstruction_coeff: float = _static()
  contrastive_loss: bool = _static()
  contrastive_loss_coeff: float = _static()
  contrastive_true_logit: float = _static()
  replay_buffer: bool = _static()
  replay_buffer_size: int = _static()
  replay_buffer_sample_fraction: float = _static()
  replay_buffer_groups: int = _static()
  unroll: bool = _static()
  remat: str = _static()
  inner_optimizer: str = _static()
  inner_optimizer_kwargs: tuple = _static()   # sorted (name, value) pairs

  @classmethod
  def from_config(cls, thinking, **overrides) -> "ThinkingOptions":
    """The fields of a `config.thinking` ConfigDict, with `overrides` replacing some."""
    values = {f.name: thinking[f.name] for f in dataclasses.fields(cls)}
    values.update(overrides)
    kwargs = values["inner_optimizer_kwargs"]
    if not isinstance(kwargs, tuple):
      values["inner_optimizer_kwargs"] = tuple(sorted(dict(kwargs).items()))
    return cls(**values)

  @classmethod
  def create(cls, **overrides) -> "ThinkingOptions":
    """The config schema's defaults with `overrides` (library and test use)."""
    return cls.from_config(config_lib.base_config().thinking, **overrides)

  @property
  def absolute_clamp_value(self) -> float | None:
    return self.absolute_clamp if self.absolute_clamp != 0 else None


class Outcome(NamedTuple):
  """An EBT objective's result: what training differentiates, and what it carries on."""
  loss: jax.Array
  metrics: dict
  final: jax.Array           # the candidate after the last step taken
  steps: Any = None          # per-step emitted values (continuous tasks), each [K]


def step_size(params: dict, t: ThinkingOptions) -> jax.Array:
  """alpha, clamped as the official code does; a constant unless it is learned."""
  alpha = jnp.maximum(params["alpha"], MIN_STEP_SIZE)
  return alpha if t.step_size_learnable else jax.lax.stop_gradient(alpha)


def langevin_std(params: dict, t: ThinkingOptions, trainable=False):
  """The Langevin std (None without noise); `trainable` (a bool, traced or not) lets the
  loss's gradient reach it."""
  if t.langevin_noise == 0:
    return None
  std = jnp.maximum(params["langevin_std"], MIN_LANGEVIN_STD)
  if trainable is False:
    return jax.lax.stop_gradient(std)
  return jnp.where(trainable, std, jax.lax.stop_gradient(std))


def grad_clip_bound(params: dict, t: ThinkingOptions, warmed_up=True):
  """The official clamp_futures_grad bound max_change / alpha, or None when off. Uses the
  model's alpha as is (not clamped, not randomized), as the official code does."""
  if not t.clamp_grad:
    return None
  alpha = params["alpha"] if t.step_size_learnable else jax.lax.stop_gradient(params["alpha"])
  max_change = t.clamp_grad_max_change
  if t.clamp_grad_max_change_after_warmup != 0:
    max_change = jnp.where(warmed_up, t.clamp_grad_max_change_after_warmup, max_change)
  return max_change / alpha


def random_step_size(alpha: jax.Array, key: jax.Array, shape, t: ThinkingOptions,
                     dtype) -> jax.Array:
  """alpha x U[1/s, s] of `shape` (per sample and position for text and video, per sample
  for images), drawn as the official low + u * (high - low)."""
  scale = t.step_size_random_scale
  u = jax.random.uniform(key, shape, dtype)
  low, high = alpha / scale, alpha * scale
  return low + u * (high - low)


def step_schedule(t: ThinkingOptions, landscapes_L: jax.Array,
                  key: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
  """(landscape of every thinking step [K], whether it is taken [K] or None for all), from
  the landscape of each of the `num_steps` official steps (`landscapes_L`).

  Without random step counts (`random_steps` 0): the official steps. With them, and a
  `key` (training): step l repeated randint(min, R+2) times (only the final one with
  `random_steps_final_landscape`), drawn once per batch; the scan has the static length of
  the most repeats, and the unused repeats of a step come first and are skipped, so the
  last step is always taken. Without a key: the official validation, the final step
  repeated R+1 times.
  """
  L, R = t.num_steps, t.random_steps
  if R == 0:
    return landscapes_L, None
  if key is None:
    return landscapes_L[np.array([*range(L - 1)] + [L - 1] * (R + 1))], None
  randomized = [L - 1] if t.random_steps_final_landscape else list(range(L))
  slots_L = np.array([R + 1 if l in randomized else 1 for l in range(L)])
  landscape_of_K = np.repeat(np.arange(L), slots_L)
  slot_K = np.concatenate([np.arange(n) for n in slots_L])
  repeats = jax.random.randint(key, (len(randomized),), max(1, t.random_steps_min), R + 2,
                               jnp.int32)
  repeats_L = jnp.ones(L, jnp.int32).at[np.array(randomized)].set(repeats)
  # The unused repeats of a step come first: skipped steps change nothing, so only their
  # order would differ, and the final step is always taken.
  active_K = slot_K >= slots_L[landscape_of_K] - repeats_L[landscape_of_K]
  return landscapes_L[landscape_of_K], active_K


def validation_steps(t: ThinkingOptions) -> int:
  """Steps `step_schedule` takes without a key (validation): with S2's random step counts
  the final step R+1 times."""
  return t.num_steps + t.random_steps


def taken_mean(x_K: jax.Array, active_K: jax.Array | None) -> jax.Array:
  """The mean of per-step values over the steps taken."""
  if active_K is None:
    return jnp.mean(x_K)
  taken = active_K.astype(x_K.dtype)
  return jnp.sum(taken * x_K) / jnp.sum(taken)


def inner_optimizer(t: ThinkingOptions) -> optimizers.InnerOptimizer:
  return optimizers.make(t.inner_optimizer, **dict(t.inner_optimizer_kwargs))


def param_specs(t: ThinkingOptions) -> dict:
  """The thinking parameters every EBT task adds to its model's table."""
  return {"alpha": Param((), (), constant(t.step_size)),
          "langevin_std": Param((), (), constant(t.langevin_noise))}
