"""Train state, the jitted train/eval steps, and the objective of each model kind.

The train step is one function of (state, batch) so it can be jitted with donated state
and explicit shardings. Randomness is `fold_in(run_key, step)`, so a resumed run draws
exactly what an uninterrupted one would. A step whose loss or gradients are not finite
leaves the state untouched and says so in its metrics; the trainer then stops with an
error naming the step, and no checkpoint can ever hold NaN.

Training runs the EBT objective with its S2 randomness (`randomize=True`) and, with
`thinking.replay_buffer`, the replay buffer kept in the state (training/replay.py);
evaluation runs it without either. The image and video kinds (tasks/kinds.py) have their
own losses and no S2 randomness. Warmup has finished (the official `warm_up_finished`,
called once the scheduler has taken `warmup_steps` steps) from update `warmup_steps` on.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ebt_jax.tasks import kinds, text
from ebt_jax.training import optimizer as optimizer_lib
from ebt_jax.training import replay as replay_lib

REPLAY_KEY_SALT = 3


class TrainState(NamedTuple):
  step: jax.Array          # int32 []: optimizer updates applied so far
  params: dict
  opt_state: Any
  rng: jax.Array           # uint32 key data of the run's base key
  replay: replay_lib.ReplayBuffer | None = None   # with thinking.replay_buffer


def objective(config: ml_collections.ConfigDict) -> Callable:
  """(params, tokens [B, S+1], key) -> (loss, metrics) for `config.model.kind`, without
  training's randomness (evaluation)."""
  if config.model.kind in kinds.KINDS:
    return lambda params, batch, key: kinds.training_loss(params, batch, key, config)
  if config.model.kind == "transformer":
    return lambda params, tokens, key: text.transformer_loss(params, tokens, config)
  return lambda params, tokens, key: text.text_ebt_loss(params, tokens, config, key=key)


def training_loss(params: dict, tokens: jax.Array, key: jax.Array, replay, warmed_up, *,
                  config: ml_collections.ConfigDict):
  """(loss, (metrics, new replay buffer)) of a training batch: `tokens` [B, S+1] (text),
  or an image / frame-latent batch of a continuous kind (tasks/kinds.py)."""
  if config.model.kind in kinds.KINDS:
    loss, metrics = kinds.training_loss(params, tokens, key, config)
    return loss, (metrics, replay)
  if config.model.kind == "transformer":
    loss, metrics = text.transformer_loss(params, tokens, config)
    return loss, (metrics, replay)
  if replay is None:
    loss, metrics = text.text_ebt_loss(params, tokens, config, key=key, randomize=True,
                                       warmed_up=warmed_up)
    return loss, (metrics, None)
  batch = replay_lib.draw(replay, tokens, jax.random.fold_in(key, REPLAY_KEY_SALT), config)
  outcome = text.text_ebt_objective(params, batch.tokens, config, key=key,
                                    initial_logits=batch.initial_logits,
                                    row_mask=batch.row_mask, randomize=True,
                                    warmed_up=warmed_up)
  metrics = dict(outcome.metrics, replayed_rows=jnp.sum(batch.row_mask) - tokens.shape[0])
  return outcome.loss, (metrics, replay_lib.push(replay, tokens, outcome.final, config))


def run_rng(config: ml_collections.ConfigDict) -> jax.Array:
  """Key data of the run's base key (training randomness is this folded with the step)."""
  return jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed), 1))


def state_from_params(params: dict, config: ml_collections.ConfigDict,
                      tx: optax.GradientTransformation) -> TrainState:
  return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), run_rng(config),
                    replay_lib.init(config))


def init_state(config: ml_collections.ConfigDict, tx: optax.GradientTransformation) -> TrainState:
  params = text.init_params(config, jax.random.fold_in(jax.random.key(config.seed), 0))
  return state_from_params(params, config, tx)


def step_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
  return jnp.all(jnp.stack(leaves))


def train_step(state: TrainState, tokens: jax.Array, *, config: ml_collections.ConfigDict,
               tx: optax.GradientTransformation):
  """One optimizer update; returns the new state and scalar metrics."""
  warmed_up = state.step >= config.optimizer.warmup_steps
  (loss, (metrics, replay)), grads = jax.value_and_grad(training_loss, has_aux=True)(
      state.params, tokens, step_key(state), state.replay, warmed_up, config=config)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & all_finite(grads)
  # A non-finite step changes nothing: the run stops on it with the state still clean.
  keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
  new_state = TrainState(state.step + finite.astype(jnp.int32), keep(params, state.params),
                         keep(opt_state, state.opt_state), state.rng, keep(replay, state.replay))
  lrs = optimizer_lib.learning_rates(config, state.step)
  out = {k: v for k, v in metrics.items() if jnp.ndim(v) == 0}
  out.update(finite=finite, grad_norm=optax.tree_utils.tree_norm(grads), lr=lrs[optimizer_lib.DEFAULT])
  if "alpha" in state.params:
    out["alpha"] = state.params["alpha"]
  if config.model.kind == "ebt" and config.thinking.langevin_noise_learnable:
    out["langevin_std"] = state.params["langevin_std"]
  return new_state, out


def eval_step(params: dict, tokens: jax.Array, key: jax.Array, *,
              config: ml_collections.ConfigDict) -> dict:
  """Per-thinking-step cross-entropy (EBT) or the cross-entropy (baseline) of a batch; for
  a continuous kind, `kinds.eval_batch`'s {split: metrics}."""
  if config.model.kind in kinds.KINDS:
    return kinds.eval_batch(params, tokens, key, config)
  _, metrics = objective(config)(params, tokens, key)
  if "ce_steps" in metrics:
    return {"ce_steps": metrics["ce_steps"], "energy_steps": metrics["energy_steps"]}
  return {"ce_steps": metrics["loss"][None]}
