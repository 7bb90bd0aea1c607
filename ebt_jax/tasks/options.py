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
  step_size_random_scale: float = _static()
  random_steps: int = _static()
  random_steps_min: int = _static()
  random_steps_final_landscape: bool = _static()
  clamp_grad: bool = _static()
  clamp_grad_max_change: float = _static()
  clamp_grad_max_change_after_warmup: float = _static()
  absolute_clamp: float = _static()
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


def inner_optimizer(t: ThinkingOptions) -> optimizers.InnerOptimizer:
  return optimizers.make(t.inner_optimizer, **dict(t.inner_optimizer_kwargs))


def param_specs(t: ThinkingOptions) -> dict:
  """The thinking parameters every EBT task adds to its model's table."""
  return {"alpha": Param((), (), constant(t.step_size)),
          "langevin_std": Param((), (), constant(t.langevin_noise))}
