"""Train state and the jitted train/eval steps, for any task.

The train step is one function of (state, batch) so it can be jitted with donated state
and explicit shardings. Randomness is `fold_in(run_key, step)`, so a resumed run draws
exactly what an uninterrupted one would. A step whose loss or gradients are not finite
leaves the state untouched and says so in its metrics; the trainer then stops with an
error naming the step, and no checkpoint can ever hold NaN.

The task (ebt_jax/tasks) supplies the loss: with training's randomness (the text EBT's S2
random steps) and the state it carries between steps (its replay buffer, kept in the
state's `replay` field). Warmup has finished (the official `warm_up_finished`, called once the
scheduler has taken `warmup_steps` steps) from update `warmup_steps` on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ebt_jax.tasks.base import Task
from ebt_jax.training import optimizer as optimizer_lib


class TrainState(NamedTuple):
  step: jax.Array          # int32 []: optimizer updates applied so far
  params: dict
  opt_state: Any
  rng: jax.Array           # uint32 key data of the run's base key
  # The task's state carried between steps (`Task.init_carry`), or None; named for the one
  # task that has any (the text EBT's S2 replay buffer) so saved checkpoints keep their keys.
  replay: Any = None


def run_rng(config: ml_collections.ConfigDict) -> jax.Array:
  """Key data of the run's base key (training randomness is this folded with the step)."""
  return jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 1))


def state_from_params(params: dict, task: Task, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), run_rng(task.config),
                    task.init_carry())


def init_state(task: Task, tx: optax.GradientTransformation) -> TrainState:
  params = task.init_params(jax.random.fold_in(jax.random.key(task.config.seed), 0))
  return state_from_params(params, task, tx)


def step_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
  return jnp.all(jnp.stack(leaves))


def train_step(state: TrainState, batch: jax.Array, *, task: Task,
               tx: optax.GradientTransformation):
  """One optimizer update; returns the new state and scalar metrics."""
  config = task.config
  warmed_up = state.step >= config.optimizer.warmup_steps
  (loss, (metrics, carry)), grads = jax.value_and_grad(task.training_loss, has_aux=True)(
      state.params, batch, step_key(state), state.replay, warmed_up)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & all_finite(grads)
  # A non-finite step changes nothing: the run stops on it with the state still clean.
  keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
  new_state = TrainState(state.step + finite.astype(jnp.int32), keep(params, state.params),
                         keep(opt_state, state.opt_state), state.rng, keep(carry, state.replay))
  lrs = optimizer_lib.learning_rates(config, state.step)
  out = {k: v for k, v in metrics.items() if jnp.ndim(v) == 0}
  out.update(finite=finite, grad_norm=optax.tree_utils.tree_norm(grads), lr=lrs[optimizer_lib.DEFAULT])
  out.update(task.train_metrics(state.params))
  return new_state, out
