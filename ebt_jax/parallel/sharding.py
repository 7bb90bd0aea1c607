"""Shardings of the train state and of batches, and global batches from process-local data.

Parameters are sharded by their logical axes (`logical.tree_shardings`). The copies of
the parameter tree inside the optimizer state (Adam's moments of each group) take the
parameters' shardings, found by `optax.tree_map_params`, which knows them from the
optimizer itself; every other leaf (step counts, the run key) is replicated, as optax's
scalar counts must be.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ebt_jax.parallel import logical

BATCH_AXES = ("act_batch", None)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state, param_shardings,
                        mesh: Mesh):
  """Shardings of `tx`'s state: its parameter-shaped trees take `param_shardings`, the rest
  (counts, schedule steps) is replicated."""
  # A masked group (optax.multi_transform) holds its parameter trees with MaskedNode in
  # place of the other groups' leaves; it stays a MaskedNode (it has no leaves to shard).
  masked = lambda x: isinstance(x, optax.MaskedNode)
  return optax.tree_map_params(
      tx, lambda leaf, sharding: leaf if masked(leaf) else sharding, abstract_opt_state,
      param_shardings, transform_non_params=lambda _: replicated(mesh), is_leaf=masked)


def state_shardings(abstract_state, param_axes, mesh: Mesh, rules=logical.DEFAULT_RULES, *,
                    tx: optax.GradientTransformation):
  """Shardings of a `TrainState` (or any tree with `params`, `opt_state` made by `tx`, and
  other fields, all replicated)."""
  params = logical.tree_shardings(abstract_state.params, param_axes, mesh, rules)
  rest = jax.tree_util.tree_map(lambda _: replicated(mesh),
                                abstract_state._replace(params=None, opt_state=None))
  return rest._replace(params=params, opt_state=opt_state_shardings(
      tx, abstract_state.opt_state, params, mesh))


def batch_sharding(mesh: Mesh, batch_shape, rules=logical.DEFAULT_RULES) -> NamedSharding:
  return logical.sharding_for(batch_shape, BATCH_AXES, mesh, rules)


def global_batch(local_batch: np.ndarray, sharding: NamedSharding, global_rows: int) -> jax.Array:
  """The global batch array from this process's rows (processes hold consecutive blocks)."""
  if jax.process_count() == 1:
    return jax.device_put(local_batch, sharding)
  return jax.make_array_from_process_local_data(
      sharding, local_batch, (global_rows, *local_batch.shape[1:]))
