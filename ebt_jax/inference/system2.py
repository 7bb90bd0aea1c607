"""System 2 thinking for the text EBT: longer thinking, best-of-N, adaptive stopping.

Everything here is driven by the text EBT task's `config.inference` (see
`ebt_jax/config.py`), so a run's own config file, `--config.inference.*` overrides and the
CLI flags all say the same thing.

* Thinking longer: step t runs on landscape min(t, L-1) for a model with L trained
  landscapes (`time_embed`/`adaln`), i.e. extra steps repeat the final landscape as the
  official `infer_steps_final_landscape`; a `default` EBT has one landscape. Because of
  that, the first k steps of a long run are exactly a k-step run, and one run of K steps
  gives the table entry of every k <= K.
* Best-of-N: the N candidates of a position share one context encoding. The energy is
  `vmap`ped over the candidate axis with the cache closed over, so the keys/values are
  read by all N, never copied N times.
* Clamps: a model trained with `clamp_grad` or `absolute_clamp` thinks with them here too
  (the gradient bound uses the inference alpha, as the official advanced inference does).
* The energy "after k steps" is the energy the next step starts from (landscape
  min(k, L-1)); after the last step it is scored on that step's successor landscape, the
  final one once the trained landscapes are used up (the official final `get_energy`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ebt_jax.tasks import options, text
from ebt_jax.tasks.text import TextEBT
from ebt_jax.thinking import inference, loop


class Thought(NamedTuple):
  logits: jax.Array          # [B, S, V] the chosen candidate after thinking
  initial_energy: jax.Array  # [B, S] energy of the chosen candidate's starting point
  final_energy: jax.Array    # [B, S] its energy after thinking
  steps_used: jax.Array      # [B, S] thinking steps it received
  choice: jax.Array          # [B, S] which of the N candidates was chosen
  energies: jax.Array        # [K+1, N, B, S] after k steps (or [2, N, B, S]: initial, final)
  outputs: object            # emit() after each step, [K, N, ...]; None without trajectory


def num_steps(task: TextEBT) -> int:
  """Inference steps: `inference.thinking_steps`, else as many as validation takes (with
  S2's random step counts, the final landscape's step R+1 times)."""
  return task.config.inference.thinking_steps or options.validation_steps(task.thinking)


def landscapes(task: TextEBT, steps: int) -> jax.Array:
  """Landscape of each inference step, then of the final scoring: [steps + 1]."""
  last = task.num_landscapes - 1
  return jnp.minimum(jnp.arange(steps + 1), last).astype(jnp.int32)


def step_size(params: dict, task: TextEBT) -> jax.Array:
  i = task.config.inference
  alpha = jnp.asarray(i.step_size) if i.step_size > 0 else options.step_size(params, task.thinking)
  return alpha * i.step_size_scale


def grad_clip(params: dict, task: TextEBT):
  """The official inference's `clamp_futures_grad`: max_change / alpha with the alpha the
  steps take (an override replaces the model's, as in the official code), and the
  after-warmup max change where the run set one (inference follows training). None when
  the model was trained without the clamp."""
  t, i = task.thinking, task.config.inference
  if not t.clamp_grad:
    return None
  alpha = jnp.asarray(i.step_size) if i.step_size > 0 else params["alpha"]
  max_change = t.clamp_grad_max_change_after_warmup or t.clamp_grad_max_change
  return max_change / (alpha * i.step_size_scale)


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


def think(params: dict, caches, y0_NxBxSxV: jax.Array, task: TextEBT,
          key: jax.Array, *, steps: int | None = None, pred_index_S=None, emit=None,
          trajectory: bool = True) -> Thought:
  """Thinks about N candidates per position against context caches; picks one per position.

  `caches` are `task.encode_landscapes` (or a generation buffer); `pred_index_S` says
  which token index each candidate column predicts after (default 0..S-1).
  """
  steps = steps or num_steps(task)
  energy_fn = task.candidate_energy_fn(params, caches, pred_index_S)
  if y0_NxBxSxV.shape[0] == 1:
    # One candidate: no vmap, whose batched attention costs about 15% of a step on CPU.
    energy_fn = (lambda f: lambda z, landscape: f(z[0], landscape)[None])(energy_fn)
  else:
    energy_fn = jax.vmap(energy_fn, in_axes=(0, None))
  schedule = loop.Schedule(landscapes(task, steps)[:-1], step_size(params, task))
  result = inference.think_per_position(
      energy_fn, y0_NxBxSxV, options.inner_optimizer(task.thinking), schedule, key,
      reparam=task.candidate_reparam(), emit=emit, noise_std=noise_std(params, task),
      rules=step_rules(task), final_landscape=landscapes(task, steps)[-1],
      trajectory=trajectory, grad_clip=grad_clip(params, task),
      value_clip=task.thinking.absolute_clamp_value)
  initial_N, final_N = result.energies[0], result.energies[-1]
  (logits, e0, e1, used), choice = inference.best_of(
      (result.final, initial_N, final_N, result.steps_used), initial_N, final_N,
      task.config.inference.select)
  return Thought(logits, e0, e1, used, choice, result.energies, result.outputs)


def think_tokens(params: dict, inputs_BxS: jax.Array, task: TextEBT,
                 key: jax.Array, *, steps: int | None = None, best_of: int | None = None,
                 targets_BxS: jax.Array | None = None, trajectory: bool = True) -> Thought:
  """System 2 prediction of the token after every position of `inputs_BxS`.

  With `targets_BxS`, `outputs` holds each candidate's next-token NLL after every step.
  """
  best_of = best_of or task.config.inference.best_of
  B, S = inputs_BxS.shape
  init_key, think_key = jax.random.split(key)
  y0 = initial_candidates(init_key, (best_of, B, S, task.vocab_size), task)
  emit = None if targets_BxS is None else (lambda y: text.token_nll(y, targets_BxS))
  caches = task.encode_landscapes(params, inputs_BxS)
  return think(params, caches, y0, task, think_key, steps=steps, emit=emit,
               trajectory=trajectory)


def table_ce(thought: Thought, mask_BxS: jax.Array, steps_list, best_of_list,
             select: str) -> jax.Array:
  """Mean NLL [len(steps_list), len(best_of_list)] of the best of the first n candidates
  after k steps, for every (k, n), from one trajectory of max(k) steps and max(n) candidates."""
  rows = []
  for k in steps_list:
    row = []
    for n in best_of_list:
      energies = thought.energies[:, :n]
      nll, _ = inference.best_of(thought.outputs[k - 1, :n], energies[0], energies[k], select)
      row.append(text.masked_mean(nll, mask_BxS))
    rows.append(jnp.stack(row))
  return jnp.stack(rows)
