"""Logical axis names -> mesh axes: the only place that knows the mesh axes exist.

Every parameter carries logical axis names (`ebt_jax.models.params`), and the main
activations are constrained with logical names through `constrain`. A rule table (config
`mesh.rules`) maps each logical name to mesh axes (`data`, `fsdp`, `tensor`), so model
code never names a mesh axis, and a layout change is a config change.

The default layout:
* batch dimensions of data and activations over (`data`, `fsdp`): data parallelism, with
  FSDP's devices also splitting the batch;
* FSDP: every parameter's `embed` dimension (and so its optimizer state) over `fsdp`;
* tensor parallelism: attention heads, the FFN hidden width, the adaLN modulation width
  and every vocabulary-sized dimension over `tensor`. The vocabulary-sized tensors
  dominate memory (the candidate [B, S, V] at every thinking step and its gradient, the
  token embedding and W_v2e [V, D], the baseline's head [D, V]): the candidate is split
  over batch and vocabulary, [V, D] tables over vocabulary (`tensor`) and width (`fsdp`);
* the S2 replay buffer's rows (`tasks/replay.py`) as the batch's rows, through the same
  names.
A dimension that a rule's mesh axes do not divide keeps the largest dividing prefix of
them (down to replication), so a config never fails for an odd size (an odd vocabulary
then stays whole on every chip: `model.vocab_multiple` pads it).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("modulation", None),        # small, and reshaped into (shift, scale, gate) chunks
    ("head_dim", None),
    ("layers", None),
    # activations and data
    ("act_batch", ("data", "fsdp")),
    ("act_seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("ebt_jax_sharding", default=None)


def _as_tuple(mesh_axes) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def spec_for(shape: Sequence[int], logical_axes: Sequence[str | None], mesh: Mesh,
             rules=DEFAULT_RULES) -> PartitionSpec:
  """The PartitionSpec of an array of `shape` whose dims have `logical_axes`."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for size, name in zip(shape, logical_axes):
    axes = [a for a in _as_tuple(table.get(name)) if a not in used and mesh.shape[a] > 1]
    while axes and size % math.prod(mesh.shape[a] for a in axes):
      axes.pop()
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return PartitionSpec(*out)


def sharding_for(shape, logical_axes, mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
  return NamedSharding(mesh, spec_for(shape, logical_axes, mesh, rules))


def tree_shardings(abstract_tree, axes_tree, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) and its logical axes."""
  return jax.tree_util.tree_map(lambda x, axes: sharding_for(x.shape, axes, mesh, rules),
                                abstract_tree, axes_tree)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None, rules=DEFAULT_RULES):
  """Within this context (while jitted code is traced), `constrain` shards activations."""
  token = _ACTIVE.set(None if mesh is None else (mesh, tuple(rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside `use_mesh` (single device)."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(x, sharding_for(x.shape, logical_axes, mesh, rules))
