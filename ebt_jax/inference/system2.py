"""System 2 thinking for the text EBT: longer thinking, best-of-N, adaptive stopping.

Everything here is driven by the text EBT task's `config.inference` (see
`ebt_jax/config.py`), so a run's own config file, `--config.inference.*` overrides and the
CLI flags all say the same thing. `predict` is the library entry point: the official
advanced inference (`ebt_advanced_inference`) for the configured options.

* Step counts (`landscapes`): `inference.thinking_steps` N is the official
  `infer_ebt_num_steps`. For a model with L trained landscapes (`time_embed`/`adaln`),
  `step_count="per_landscape"` (the official default) takes N steps on every landscape (L x N
  steps), `"final_landscape"` (`infer_steps_final_landscape`) one step on each earlier
  landscape and N on the final one, and `"total"` N steps in all, step t on landscape
  min(t, L-1). A `default` EBT has one landscape: N steps in every mode. N = 0 is the
  official flag's fallback (its default 1): a `default` EBT's `thinking.num_steps` steps,
  max(1, random_steps_min) per landscape otherwise ("total": the steps validation takes).
* Step sizes: `inference.step_size` / `step_size_scale` replace / scale alpha (the official
  `infer_ebt_override_alpha`); with `step_size_final_landscape`
  (`infer_alpha_final_landscape`) only on the final landscape, earlier ones keeping the
  model's alpha.
* Best-of-N: the N candidates of a position share one context encoding. The energy is
  `vmap`ped over the candidate axis with the cache closed over, so the keys/values are
  read by all N, never copied N times.
* Clamps: a model trained with `clamp_grad` thinks with it, the bound max_change / alpha
  taken with each step's alpha, as the official advanced inference does. It also thinks
  with `absolute_clamp`, which the official advanced inference leaves out (its training
  and validation forward clamp): here inference runs the candidate space the model was
  trained in, so a clamped model's k-step inference is its validation objective.
* `normalize_first_step_only`: the softmax only at official step index 0 (a `default`
  EBT's first step; every step on landscape 0 otherwise), and the final scoring only if the
  model has one step. `sharpen` is not applied (the official inference does not).
* The energy "after k steps" is the energy the next step starts from (on its landscape);
  after the last step it is scored on the final landscape (the official final
  `get_energy`), or in "total" mode with N < L on landscape N.
* Where this differs from the official advanced inference: `accept_lower` keeps a
  rejected position's candidate as it was (see thinking/inference.py), and randomness
  (initial candidates, Langevin noise) comes from JAX keys.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ebt_jax.tasks import options, text
from ebt_jax.tasks.text import TextEBT
from ebt_jax.thinking import inference, loop


class Thought(NamedTuple):
  logits: jax.Array          # [B, S, V] the chosen candidate after thinking (-inf padding)
  initial_energy: jax.Array  # [B, S] energy of the chosen candidate's starting point
  final_energy: jax.Array    # [B, S] its energy after thinking
  steps_used: jax.Array      # [B, S] thinking steps it received
  choice: jax.Array          # [B, S] which of the N candidates was chosen
  energies: jax.Array        # [K+1, N, B, S] after k steps (or [2, N, B, S]: initial, final)
  outputs: object            # emit() after each step, [K, N, ...]; None without trajectory


def num_steps(task: TextEBT) -> int:
  """N: `inference.thinking_steps`, else the official fallback (module docstring)."""
  i, t = task.config.inference, task.thinking
  if i.thinking_steps:
    return i.thinking_steps
  if i.step_count == "total":
    return options.validation_steps(t)
  return t.num_steps if task.num_landscapes == 1 else max(1, t.random_steps_min)


def landscapes(task: TextEBT, n: int | None = None) -> np.ndarray:
  """Landscape of each inference step for N = n (default `num_steps`) under
  `inference.step_count`, then of the final scoring: int32 [steps + 1]."""
  n = n or num_steps(task)
  last = task.num_landscapes - 1
  if task.config.inference.step_count == "total":
    return np.minimum(np.arange(n + 1), last).astype(np.int32)
  repeats = np.full(last + 1, n)
  if task.config.inference.step_count == "final_landscape":
    repeats[:-1] = 1
  return np.append(np.repeat(np.arange(last + 1), repeats), last).astype(np.int32)


def total_steps(task: TextEBT, n: int | None = None) -> int:
  """Steps a candidate takes for N = n."""
  return len(landscapes(task, n)) - 1


def energy_evaluations(task: TextEBT, n: int | None = None, best_of: int = 1) -> int:
  """Forward+gradient evaluations of the energy per position for N = n and best-of-N:
  one per step and candidate (the final scoring and accept_lower's trial add forwards)."""
  return total_steps(task, n) * best_of


def shares_run(task: TextEBT, n: int, longest: int) -> bool:
  """Whether N = n is the first steps of the N = `longest` run (with its final scoring on
  the landscape the longer run continues on): then one run answers both."""
  short = landscapes(task, n)
  return bool(np.array_equal(short, landscapes(task, longest)[:len(short)]))


def official_step_index(task: TextEBT, landscape_K: np.ndarray) -> np.ndarray:
  """The official advanced inference's `step_idx` of each step: the step's number for a
  `default` EBT, its landscape otherwise."""
  return np.arange(len(landscape_K)) if task.num_landscapes == 1 else landscape_K


def step_size(params: dict, task: TextEBT) -> jax.Array:
  """The inference alpha: `inference.step_size` (> 0) or the model's, times the scale."""
  i = task.config.inference
  alpha = jnp.asarray(i.step_size) if i.step_size > 0 else options.step_size(params, task.thinking)
  return alpha * i.step_size_scale


def _per_step(task: TextEBT, landscape_K, inference_alpha, model_alpha) -> jax.Array:
  """[K]: the inference alpha, or with `step_size_final_landscape` the model's on every
  landscape but the final one."""
  if not task.config.inference.step_size_final_landscape:
    return jnp.broadcast_to(inference_alpha, landscape_K.shape)
  return jnp.where(landscape_K == task.num_landscapes - 1, inference_alpha, model_alpha)


def step_sizes(params: dict, task: TextEBT, landscape_K) -> jax.Array:
  """The step size of every step [K]."""
  return _per_step(task, landscape_K, step_size(params, task),
                   options.step_size(params, task.thinking))


def grad_clip(params: dict, task: TextEBT, landscape_K):
  """The official inference's `clamp_futures_grad` per step [K]: max_change / alpha with the
  alpha the step takes (an override replaces the model's, as in the official code), and
  the after-warmup max change where the run set one (inference follows training). None
  when the model was trained without the clamp."""
  t, i = task.thinking, task.config.inference
  if not t.clamp_grad:
    return None
  raw = (jnp.asarray(i.step_size) if i.step_size > 0 else params["alpha"]) * i.step_size_scale
  max_change = t.clamp_grad_max_change_after_warmup or t.clamp_grad_max_change
  return max_change / _per_step(task, landscape_K, raw, params["alpha"])


def noise_std(params: dict, task: TextEBT):
  std = task.config.inference.langevin_noise
  if std == -1:
    return options.langevin_std(params, task.thinking)
  return None if std == 0 else jnp.asarray(std)


def step_rules(task: TextEBT) -> inference.StepRules:
  i = task.config.inference
  return inference.StepRules(noise_first_only=i.langevin_first_step_only,
                             accept_lower=i.accept_lower,
                             stop_on=None if i.stop_on == "none" else i.stop_on,
                             stop_threshold=i.stop_threshold)


def initial_candidates(key: jax.Array, shape, task: TextEBT) -> jax.Array:
  """N(0, scale^2) logits [N, B, S, V] with the inference noise scale (or zeros)."""
  scale = task.config.inference.initial_noise_scale
  if scale == -1:
    return task.initial_candidate(key, shape)
  return scale * jax.random.normal(key, shape, task.candidate_dtype)


def reparam_steps(task: TextEBT, landscape_K: np.ndarray) -> np.ndarray | None:
  """Which steps, then the final scoring, softmax the candidate: bool [K + 1]
  (`normalize_first_step_only`: official step index 0; the final scoring's index is
  thinking.num_steps - 1); None: all."""
  return task.reparam_steps(np.append(official_step_index(task, landscape_K),
                                     task.thinking.num_steps - 1))


def think(params: dict, caches, y0_NxBxSxV: jax.Array, task: TextEBT,
          key: jax.Array, *, steps: int | None = None, pred_index_S=None, emit=None,
          trajectory: bool = True) -> Thought:
  """Thinks about N candidates per position against context caches; picks one per position.

  `steps` is N (default `num_steps`), counted as `inference.step_count` says. `caches`
  are `task.encode_landscapes` (or a generation buffer); `pred_index_S` says which token
  index each candidate column predicts after (default 0..S-1).
  """
  lands = landscapes(task, steps)
  landscape_K = jnp.asarray(lands[:-1])
  energy_fn = task.candidate_energy_fn(params, caches, pred_index_S)
  if y0_NxBxSxV.shape[0] == 1:
    # One candidate: no vmap, whose batched attention costs about 15% of a step on CPU.
    energy_fn = (lambda f: lambda z, landscape: f(z[0], landscape)[None])(energy_fn)
  else:
    energy_fn = jax.vmap(energy_fn, in_axes=(0, None))
  schedule = loop.Schedule(landscape_K, step_sizes(params, task, landscape_K))
  result = inference.think_per_position(
      energy_fn, y0_NxBxSxV, options.inner_optimizer(task.thinking), schedule, key,
      reparam=task.candidate_reparam(), emit=emit, noise_std=noise_std(params, task),
      rules=step_rules(task), final_landscape=int(lands[-1]), trajectory=trajectory,
      grad_clip=grad_clip(params, task, landscape_K),
      value_clip=task.thinking.absolute_clamp_value, per_step=True,
      reparam_K=reparam_steps(task, lands[:-1]))
  initial_N, final_N = result.energies[0], result.energies[-1]
  (logits, e0, e1, used), choice = inference.best_of(
      (result.final, initial_N, final_N, result.steps_used), initial_N, final_N,
      task.config.inference.select)
  return Thought(task.logits(logits), e0, e1, used, choice, result.energies, result.outputs)


def think_tokens(params: dict, inputs_BxS: jax.Array, task: TextEBT,
                 key: jax.Array, *, steps: int | None = None, best_of: int | None = None,
                 targets_BxS: jax.Array | None = None, trajectory: bool = True,
                 initial_logits: jax.Array | None = None) -> Thought:
  """System 2 prediction of the token after every position of `inputs_BxS`.

  With `targets_BxS`, `outputs` holds each candidate's next-token NLL after every step.
  `initial_logits` ([B, S, V], or [N, B, S, V] for best-of-N; V the vocabulary or its
  padded width) replaces the random start.
  """
  B, S = inputs_BxS.shape
  init_key, think_key = jax.random.split(key)
  if initial_logits is None:
    best_of = best_of or task.config.inference.best_of
    y0 = initial_candidates(init_key, (best_of, B, S, task.vocab_width), task)
  else:
    y0 = task.given_candidate(initial_logits if initial_logits.ndim == 4 else initial_logits[None])
  emit = None if targets_BxS is None else (
      lambda y: text.token_nll(task.logits(y), targets_BxS))
  caches = task.encode_landscapes(params, inputs_BxS)
  return think(params, caches, y0, task, think_key, steps=steps, emit=emit,
               trajectory=trajectory)


class Prediction(NamedTuple):
  logits: jax.Array    # [B, S, V] the chosen candidate's logits after thinking
  energies: jax.Array  # [K + 1, N, B, S] each step's starting energy, then the final one


def predict(params: dict, tokens_BxS: jax.Array, config, *, key: jax.Array,
            initial_logits: jax.Array | None = None) -> Prediction:
  """The official advanced inference of the text EBT `config` (its `inference` section,
  official names in ebt_jax/config.py) on context tokens [B, S]: the final logits and the
  energies of every step (the official `energies_list`: the energy each step started
  from, then the final candidate's), for every one of the N candidates.

  `initial_logits` [B, S, V] (or [N, B, S, V]) replaces the random initial candidates, so
  a given start (such as the official code's) can be reproduced. The module docstring
  lists where the computation differs from the official one (the absolute clamp kept).
  """
  thought = think_tokens(params, tokens_BxS, TextEBT.from_config(config), key,
                         initial_logits=initial_logits)
  return Prediction(thought.logits, thought.energies)


def table_ce(thought: Thought, mask_BxS: jax.Array, steps_list, best_of_list,
             select: str) -> jax.Array:
  """Mean NLL [len(steps_list), len(best_of_list)] of the best of the first n candidates
  after the trajectory's first k steps, for every (k, n), from one trajectory of at least
  max(k) steps and max(n) candidates."""
  rows = []
  for k in steps_list:
    row = []
    for n in best_of_list:
      energies = thought.energies[:, :n]
      nll, _ = inference.best_of(thought.outputs[k - 1, :n], energies[0], energies[k], select)
      row.append(text.masked_mean(nll, mask_BxS))
    rows.append(jnp.stack(row))
  return jnp.stack(rows)
