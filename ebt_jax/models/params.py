"""Declarative parameter definitions: one table gives shapes, initialisers and axes.

Every model in `ebt_jax.models` describes its parameters as a nested dict of `Param`
entries. From that single description we derive

* the initial values (`init_tree`), a plain nested dict of arrays that `jax.grad`,
  `lax.scan`, `jax.jit` and Orbax handle directly, and
* the logical axis names of every leaf (`axes_tree`), which `ebt_jax.parallel` maps onto
  mesh axes. Model code never names mesh axes.

Why not Flax modules: the energy is differentiated twice (the thinking step takes a
gradient with respect to the candidate, training differentiates through that step), and
both derivatives must be taken of pure functions of plain pytrees. An NNX module would
only be split back into such a pytree before every use, so the model is written as pure
functions over the dict this file builds, and initialisation follows the official PyTorch
code directly (torch's xavier-normal, N(0, 1) embeddings, torch's default Linear init).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

# A leaf initialiser: (key, shape, dtype) -> array.
Init = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class Param:
  """One parameter: its shape, logical axis names (one per dim) and initialiser."""

  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  init: Init

  def __post_init__(self):
    if len(self.shape) != len(self.axes):
      raise ValueError(f"Param shape {self.shape} and axes {self.axes} differ in rank")


def normal(std: float) -> Init:
  """N(0, std^2) (torch.nn.init.normal_; torch.nn.Embedding's default is std=1)."""
  return lambda key, shape, dtype: std * jax.random.normal(key, shape, dtype)


def constant(value: float) -> Init:
  return lambda key, shape, dtype: jnp.full(shape, value, dtype)


def uniform(bound: float) -> Init:
  """U(-bound, bound)."""
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


def linear_init(method: str, fan_in: int, fan_out: int, gain: float = 1.0) -> Init:
  """The official code's `init_whole_model_weights` for a torch Linear(fan_in, fan_out).

  "xavier" is torch's xavier_normal_ (a plain, untruncated normal with std
  sqrt(2 / (fan_in + fan_out))); "he" is kaiming_normal_ with the linear gain
  (std 1 / sqrt(fan_in)); both then scaled by `gain`.
  """
  if method == "xavier":
    std = math.sqrt(2.0 / (fan_in + fan_out))
  elif method == "he":
    std = 1.0 / math.sqrt(fan_in)
  else:
    raise ValueError(f"model.weight_init: expected 'xavier' or 'he', got {method!r}")
  return normal(gain * std)


def torch_default_linear_init(fan_in: int) -> Init:
  """torch.nn.Linear's own initialisation, for weight and bias alike: U(+-1/sqrt(fan_in))."""
  return uniform(1.0 / math.sqrt(fan_in))


def stacked(n: int, param: Param, axis_name: str = "layers") -> Param:
  """`param` repeated `n` times along a new leading axis, each slice drawn independently."""

  def init(key, shape, dtype):
    keys = jax.random.split(key, shape[0])
    return jax.vmap(lambda k: param.init(k, shape[1:], dtype))(keys)

  return Param((n, *param.shape), (axis_name, *param.axes), init)


def _is_param(x) -> bool:
  return isinstance(x, Param)


def init_tree(specs: dict, key: jax.Array, dtype=jnp.float32) -> dict:
  """Draws every parameter of `specs`, each from its own key folded in by its path."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(specs, is_leaf=_is_param)
  values = []
  for path, spec in leaves:
    # Keys depend on the parameter's name, not on its position in the tree, so adding
    # a parameter never changes the initial values of the others.
    name = jax.tree_util.keystr(path)
    leaf_key = jax.random.fold_in(key, _stable_hash(name))
    values.append(spec.init(leaf_key, spec.shape, dtype))
  return jax.tree_util.tree_unflatten(treedef, values)


def axes_tree(specs: dict) -> dict:
  """The logical axis names of every parameter, as a tree shaped like `init_tree`'s."""
  return jax.tree_util.tree_map(lambda p: p.axes, specs, is_leaf=_is_param)


def shapes_tree(specs: dict) -> dict:
  return jax.tree_util.tree_map(lambda p: p.shape, specs, is_leaf=_is_param)


def _stable_hash(name: str) -> int:
  # Python's hash() is salted per process; keys must not be.
  h = 2166136261
  for byte in name.encode():
    h = ((h ^ byte) * 16777619) & 0x7FFFFFFF
  return h
