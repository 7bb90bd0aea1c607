"""Shardings of the train state and of batches, and global batches from process-local data.

Parameters are sharded by their logical axes (`logical.tree_shardings`). Optimizer state
leaves that mirror a parameter (Adam's moments of each group) take that parameter's
sharding, found by the parameter's key path at the end of the state leaf's path and an
equal shape; every other leaf (step counts, the run key) is replicated, as optax's scalar
counts must be.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ebt_jax.parallel import logical

BATCH_AXES = ("act_batch", None)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def mirror_param_shardings(abstract_tree, abstract_params, param_shardings, mesh: Mesh):
  """Shardings for a tree (e.g. optimizer state) whose leaves may mirror parameters."""
  by_path = {}
  for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(abstract_params),
                                    jax.tree_util.tree_leaves(param_shardings)):
    by_path[tuple(path)] = (sharding, tuple(leaf.shape))
  longest = max((len(p) for p in by_path), default=0)

  def pick(path, leaf):
    for n in range(1, min(longest, len(path)) + 1):
      found = by_path.get(tuple(path[-n:]))
      if found is not None and found[1] == tuple(leaf.shape):
        return found[0]
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, abstract_tree)


def state_shardings(abstract_state, param_axes, mesh: Mesh, rules=logical.DEFAULT_RULES):
  """Shardings of a `TrainState` (or any tree with `params` and other fields)."""
  params = logical.tree_shardings(abstract_state.params, param_axes, mesh, rules)
  rest = mirror_param_shardings(abstract_state._replace(params=None), abstract_state.params,
                                params, mesh)
  return rest._replace(params=params)


def batch_sharding(mesh: Mesh, batch_shape, rules=logical.DEFAULT_RULES) -> NamedSharding:
  return logical.sharding_for(batch_shape, BATCH_AXES, mesh, rules)


def global_batch(local_batch: np.ndarray, sharding: NamedSharding, global_rows: int) -> jax.Array:
  """The global batch array from this process's rows (processes hold consecutive blocks)."""
  if jax.process_count() == 1:
    return jax.device_put(local_batch, sharding)
  return jax.make_array_from_process_local_data(
      sharding, local_batch, (global_rows, *local_batch.shape[1:]))
