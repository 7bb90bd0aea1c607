"""A config compiled for the current devices: mesh, shardings, and the jitted steps.

Everything that runs sharded goes through here (the trainer, evaluation of a run
directory, the ahead-of-time compile report), so they agree on layouts:
* the state is created already sharded (`jax.jit(init, out_shardings=...)`), or restored
  from a checkpoint into these shardings, whatever mesh wrote it; the replay buffer is
  sharded over the batch axes like the rows that feed it;
* the train step is one `jax.jit` with explicit `in_shardings`/`out_shardings` and the
  state donated (the modern form of `pjit`);
* batches (tokens, images or frame latents) are sharded over (data, fsdp) on their first
  axis; each process supplies its own rows.
Tracing happens inside `self.context()`, where activations are constrained by logical
name (`ebt_jax.parallel.logical`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from ebt_jax import tasks
from ebt_jax.errors import ConfigError, check
from ebt_jax.parallel import logical, mesh as mesh_lib, sharding
from ebt_jax.tasks import replay
from ebt_jax.tasks.base import Task
from ebt_jax.training import optimizer as optimizer_lib
from ebt_jax.training import step as step_lib


@dataclasses.dataclass
class Program:
  task: Task
  mesh: Mesh
  rules: tuple
  tx: object
  abstract_state: step_lib.TrainState
  state_shardings: step_lib.TrainState
  batch_sharding: jax.sharding.NamedSharding

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.task.config

  def context(self):
    return logical.use_mesh(self.mesh, self.rules)

  @property
  def replicated(self):
    return sharding.replicated(self.mesh)

  def abstract_sharded_state(self):
    """ShapeDtypeStructs with the target shardings, to restore checkpoints into."""
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        self.abstract_state, self.state_shardings)

  def init_state(self) -> step_lib.TrainState:
    with self.context():
      return jax.jit(lambda: step_lib.init_state(self.task, self.tx),
                     out_shardings=self.state_shardings)()

  @functools.cached_property
  def train_step(self):
    return jax.jit(functools.partial(step_lib.train_step, task=self.task, tx=self.tx),
                   in_shardings=(self.state_shardings, self.batch_sharding),
                   out_shardings=(self.state_shardings, self.replicated), donate_argnums=0)

  @functools.cached_property
  def eval_step(self):
    return jax.jit(self.task.eval_batch,
                   in_shardings=(self.state_shardings.params, self.batch_sharding,
                                 self.replicated),
                   out_shardings=self.replicated)

  @property
  def local_rows(self) -> slice:
    """This process's rows of a global batch (processes hold consecutive blocks)."""
    rows = self.config.train.batch_size // jax.process_count()
    return slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)

  def put_local(self, local_batch: np.ndarray) -> jax.Array:
    return sharding.global_batch(local_batch, self.batch_sharding, self.config.train.batch_size)

  def put_global(self, global_batch: np.ndarray) -> jax.Array:
    return self.put_local(global_batch[self.local_rows])


def build(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> Program:
  task = tasks.build(config)
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.mesh)
  processes = jax.process_count()
  batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if processes > 1 and batch_ways % processes:
    raise ConfigError(f"mesh: data x fsdp = {batch_ways} must be a multiple of the "
                                 f"{processes} processes (each feeds its own batch rows)")
  check(config.train.batch_size % batch_ways == 0, "train.batch_size",
        f"a multiple of mesh data x fsdp = {batch_ways}", config.train.batch_size)
  rules = tuple(tuple(r) for r in config.mesh.rules)
  abstract_params = jax.eval_shape(lambda: task.init_params(jax.random.key(0)))
  tx = optimizer_lib.make_optimizer(config, abstract_params)
  abstract_state = jax.eval_shape(lambda: step_lib.init_state(task, tx))
  shardings = sharding.state_shardings(abstract_state, task.param_axes(), mesh, rules, tx=tx)
  if abstract_state.replay is not None:
    # Each step thinks over its fresh rows plus every group's replayed rows; rows the
    # batch axes cannot split evenly leave each device the whole batch's thinking.
    groups, _, _, replayed = replay.shape(task)
    rows = config.train.batch_size + groups * replayed
    if rows % batch_ways:
      raise ConfigError(
          f"mesh: data x fsdp = {batch_ways} must divide the {rows} rows each step thinks "
          f"over (train.batch_size {config.train.batch_size} + "
          f"thinking.replay_buffer_groups {groups} x {replayed} replayed)")
    shardings = shardings._replace(replay=logical.tree_shardings(
        abstract_state.replay, task.carry_axes(), mesh, rules))
  batch_shape = task.batch_spec(config.train.batch_size).shape
  return Program(task, mesh, rules, tx, abstract_state, shardings,
                 sharding.batch_sharding(mesh, batch_shape, rules))
