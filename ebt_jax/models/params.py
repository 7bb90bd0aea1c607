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
functions over the dict this file builds. Initialisation follows the official PyTorch
code (torch's xavier-normal, N(0, 1) embeddings, torch's default Linear init), each written
as the `jax.nn.initializers` case it is.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.nn import initializers

# A leaf initialiser: (key, shape, dtype) -> array, as every `jax.nn.initializers` one is.
Init = initializers.Initializer

# torch.nn.init.normal_ (and nn.Embedding's default N(0, 1)) and constant fills are jax's
# own `normal(stddev)` and `constant(value)`.
normal = initializers.normal
constant = initializers.constant


@dataclasses.dataclass(frozen=True)
class Param:
  """One parameter: its shape, logical axis names (one per dim) and initialiser."""

  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  init: Init

  def __post_init__(self):
    if len(self.shape) != len(self.axes):
      raise ValueError(f"Param shape {self.shape} and axes {self.axes} differ in rank")


_WEIGHT_INIT_MODES = {"xavier": "fan_avg", "he": "fan_in"}


def torch_linear(method: str, gain: float = 1.0, in_axis=-2, out_axis=-1) -> Init:
  """The official `init_whole_model_weights` for a Linear weight stored [inputs, outputs].

  "xavier" is torch's xavier_normal_, a plain (untruncated) normal with variance
  2 / (fan_in + fan_out); "he" is kaiming_normal_ with the linear gain, variance 1 / fan_in;
  both times gain^2. That is `variance_scaling(gain^2, fan_avg | fan_in, "normal")`.
  torch stores a Linear weight as [out, in]; ours is [in, out] (jax's default
  in_axis=-2, out_axis=-1), and a weight split over several axes names them all, e.g.
  [D, N, H] with in_axis=0, out_axis=(1, 2) has fan_out N * H, as torch's [N * H, D].
  """
  if method not in _WEIGHT_INIT_MODES:
    raise ValueError(f"model.weight_init: expected 'xavier' or 'he', got {method!r}")
  return initializers.variance_scaling(gain**2, _WEIGHT_INIT_MODES[method], "normal",
                                       in_axis=in_axis, out_axis=out_axis)


def linear_init(method: str, fan_in: int, fan_out: int, gain: float = 1.0) -> Init:
  """`torch_linear` for a torch Linear(fan_in, fan_out) whose fans are given, not read
  from the parameter's shape (the energy head [D] is torch's Linear(D, 1) weight): drawn as
  the [fan_in, fan_out] matrix and laid out in the parameter's shape."""
  matrix = torch_linear(method, gain)

  def init(key, shape, dtype=jnp.float32):
    if math.prod(shape) != fan_in * fan_out:
      raise ValueError(f"a Linear({fan_in}, {fan_out}) weight cannot have shape {shape}")
    return matrix(key, (fan_in, fan_out), dtype).reshape(shape)

  return init


def padded(init: Init, axis: int, size: int) -> Init:
  """`init` drawn with `size` entries along `axis`, then zero-padded to the parameter's
  shape there: a vocabulary table padded for sharding (`model.vocab_multiple`) holds what
  the unpadded one holds from the same key, and zeros in the rows nothing reads."""

  def init_fn(key, shape, dtype=jnp.float32):
    real = shape[:axis] + (size,) + shape[axis + 1:]
    pad = [(0, 0)] * len(shape)
    pad[axis] = (0, shape[axis] - size)
    return jnp.pad(init(key, real, dtype), pad)

  return init_fn


def uniform(bound: float) -> Init:
  """U(-bound, bound), with the bound given.

  Not a `jax.nn.initializers` one: theirs is `uniform(scale)` on [0, scale), and
  `variance_scaling(..., "uniform")` reads the bound from the array's own fans, while torch
  bounds a Linear's bias by its weight's fan_in, which the bias's shape does not carry.
  """
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


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
