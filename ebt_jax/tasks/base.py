"""The `Task` interface: what the trainer, evaluation, benchmarks and CLI ask of a model kind.

A task is built once per run from a config (`ebt_jax.tasks.build`) and holds what it
derives from it, frozen: the model's dims and the thinking options. Everything that
differs between kinds is a method here, so code outside `ebt_jax/tasks/` never asks which
kind it runs:

* parameters: `param_specs()` (the `Param` table), `init_params(key)`, `param_axes()`;
* training: `loss(params, batch, key, *, train, warmed_up)` and, for tasks that keep state
  across steps (the text EBT's S2 replay buffer), `init_carry()`, `carry_axes()` and
  `training_loss`, which threads it; `train_metrics(params)` adds scalars to the log;
* evaluation: `eval_batch(params, batch, key)` (one batch's metrics, jittable) and
  `evaluate(...)` (their means per split); `flops(batch_size)` counts a training step;
* data: `batch_spec(batch_size)`, `tokens_per_example()` (transformer tokens: text
  tokens, image patches or frames), `make_datasets()`.

`validate(config)` is the kind's own config checks; the shared ones are `config.validate`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np

from ebt_jax import config as config_lib
from ebt_jax.errors import check
from ebt_jax.models.blocks import REMAT_POLICIES
from ebt_jax.models.params import axes_tree, init_tree
from ebt_jax.thinking import optimizers

EVAL_KEY_SALT = 2
REMAT_CHOICES = ("none", *REMAT_POLICIES)


class Task:
  """Base class of every kind's task; subclasses set `name` and the abstract methods."""

  name: ClassVar[str]
  # Inference features a kind's commands may use: System 2 over tokens (`ebt eval` tables,
  # best-of-N, think, generate), denoising reports, next-frame reports.
  thinks_over_tokens: ClassVar[bool] = False

  def __init__(self, config: ml_collections.ConfigDict):
    # A copy: editing the caller's config later (an override, the next test case) must not
    # change a task already built, whose frozen options were read from it.
    self.config = config.copy_and_resolve_references()
    # Tasks compare (and hash) by kind and config, so a jitted function may take one as a
    # static argument and recompile only for a different config. The config is the task's
    # own copy, so this is computed once, not on every jit cache lookup.
    self._identity = (type(self).__name__, self.config.to_json_best_effort(sort_keys=True))

  def __eq__(self, other) -> bool:
    return isinstance(other, Task) and self._identity == other._identity

  def __hash__(self) -> int:
    return hash(self._identity)

  # --- config -----------------------------------------------------------------------------
  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Task":
    """The task of a validated `config` (the shared checks, then the kind's)."""
    config_lib.validate(config)
    cls.validate(config)
    return cls(config)

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    """The kind's own checks (one line naming the field on a bad value); subclasses
    extend it. Here: what every block stack checks."""
    for field in ("model.remat", "thinking.remat"):
      section, name = field.split(".")
      check(config[section][name] in REMAT_CHOICES, field, f"one of {REMAT_CHOICES}",
            config[section][name])
    check(config.thinking.inner_optimizer in optimizers.names(), "thinking.inner_optimizer",
          f"one of {optimizers.names()}", config.thinking.inner_optimizer)

  @classmethod
  def describe(cls) -> str:
    """How error messages name the kind."""
    return f"model.kind={cls.name!r}"

  # --- parameters -------------------------------------------------------------------------
  def param_specs(self) -> dict:
    raise NotImplementedError

  def init_params(self, key: jax.Array) -> dict:
    """Initial parameters: a plain nested dict of float32 arrays."""
    return init_from_specs(self.param_specs(), key)

  def param_axes(self) -> dict:
    """Logical axis names of every parameter, shaped like `init_params`' output."""
    return axes_tree(self.param_specs())

  # --- training ---------------------------------------------------------------------------
  def loss(self, params: dict, batch: jax.Array, key: jax.Array, *, train: bool,
           warmed_up=True) -> tuple[jax.Array, dict]:
    """(loss, metrics) of a batch; `train` adds training's randomness where the kind has
    any; `warmed_up` (may be traced) says the outer optimizer's warmup has finished."""
    raise NotImplementedError

  def init_carry(self) -> Any:
    """State a training step hands to the next besides the parameters (None: none)."""
    return None

  def carry_axes(self) -> Any:
    """Logical axes of `init_carry()`'s arrays (for their shardings)."""
    return None

  def training_loss(self, params: dict, batch: jax.Array, key: jax.Array, carry, warmed_up):
    """(loss, (metrics, new carry)) of a training batch."""
    loss, metrics = self.loss(params, batch, key, train=True, warmed_up=warmed_up)
    return loss, (metrics, carry)

  def train_metrics(self, params: dict) -> dict:
    """Scalars of the parameters worth logging each step (e.g. the learned step size)."""
    out = {"alpha": params["alpha"]} if "alpha" in params else {}
    thinking = getattr(self, "thinking", None)
    if thinking is not None and thinking.langevin_noise_learnable:
      out["langevin_std"] = params["langevin_std"]
    return out

  def flops(self, batch_size: int) -> float:
    """Analytic model FLOPs of one training step of `batch_size` examples."""
    raise NotImplementedError

  # --- evaluation -------------------------------------------------------------------------
  def eval_batch(self, params: dict, batch: jax.Array, key: jax.Array) -> dict:
    """Evaluation metrics of one batch (jittable)."""
    raise NotImplementedError

  def eval_key(self) -> jax.Array:
    """The fixed key evaluation draws from, so evaluations of checkpoints compare."""
    return jax.random.fold_in(jax.random.key(self.config.seed), EVAL_KEY_SALT)

  def evaluate(self, params, datasets, fn, put, *, num_batches: int) -> dict[str, dict]:
    """{split: {metric: mean over `num_batches` batches}}; `fn` is the (sharded) jitted
    `eval_batch`, `put` makes a device array of a global batch."""
    raise NotImplementedError

  # --- data -------------------------------------------------------------------------------
  def batch_spec(self, batch_size: int) -> jax.ShapeDtypeStruct:
    raise NotImplementedError

  def tokens_per_example(self) -> int:
    raise NotImplementedError

  def make_datasets(self):
    """The run's datasets (`train_iter`, `eval_batches`, `eval_splits`); data errors here."""
    raise NotImplementedError


def init_from_specs(specs: dict, key: jax.Array) -> dict:
  """The parameters a `Param` table describes."""
  # One compiled program instead of a few hundred small eager dispatches.
  return jax.jit(lambda k: init_tree(specs, k))(key)


def per_batch(fn, params, batches, key: jax.Array) -> list:
  """`fn(params, batch, fold_in(key, i))` of every batch i, on the host: evaluation's
  fixed per-batch keys."""
  return [jax.device_get(fn(params, b, jax.random.fold_in(key, i)))
          for i, b in enumerate(batches)]


def mean_batches(per_batch: list[dict]) -> dict:
  """The mean over batches of every (possibly nested) metric."""
  return jax.tree_util.tree_map(lambda *xs: np.mean(xs, axis=0), *per_batch)
