"""Thinking at inference: per-position stopping, accept-only-lower steps, noise, selection.

Training's `loop.think` differentiates through every step. Inference needs none of that
but wants per-position control, which the independence of predictions makes exact: the
energy of a sum over positions has a per-position gradient, so a position can stop, reject
a step or be chosen among N candidates without touching its neighbours.

* `think_per_position` runs a static-length `lax.scan` (per-step outputs for evaluation
  tables and heat maps); with `trajectory=False` it runs a `lax.while_loop` that ends as
  soon as every position has stopped, so adaptive stopping saves real compute.
* A stopped position keeps its candidate; `steps_used` counts the updates it received.
  Stopping rules: the energy change made by the previous step (`stop_on="energy"`) or the
  gradient norm at the current candidate (`stop_on="grad_norm"`) falls below the threshold.
* `accept_lower`: a step is kept only where it lowers that position's energy on the
  step's landscape (the official `infer_accept_lower_energies`). Unlike the official code,
  a rejected position keeps its candidate as it was; the official code keeps its softmaxed
  probabilities, which the next softmax flattens.
* Langevin noise (`noise_std`) is added to the candidate before every step or, with
  `noise_first_only`, the first (the official `infer_langevin_first_step`).
* `select` picks one of N candidates per position by final energy (lowest or highest) or
  by the largest initial-minus-final energy drop (the official `min`, `max`, `max_gap`).
* `per_step`: a step size and gradient clamp per step (the official
  `infer_alpha_final_landscape` gives earlier landscapes the model's alpha); `reparam_K`:
  which steps (and, last, the final scoring) see the candidate through `reparam` (the
  official `normalize_initial_condition_only_first_step` softmaxes at step 0 only).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ebt_jax.thinking.loop import Schedule
from ebt_jax.thinking.optimizers import InnerOptimizer

STOP_RULES = (None, "energy", "grad_norm")
SELECTIONS = ("min", "max", "max_gap")


@dataclasses.dataclass(frozen=True)
class StepRules:
  """How inference steps behave (static: part of the compiled program)."""

  noise_first_only: bool = False
  accept_lower: bool = False
  stop_on: str | None = None
  stop_threshold: float = 0.0

  def __post_init__(self):
    if self.stop_on not in STOP_RULES:
      raise ValueError(f"inference.stop_on: expected one of {STOP_RULES}, got {self.stop_on!r}")
    if self.stop_threshold < 0:
      raise ValueError(f"inference.stop_threshold: expected >= 0, got {self.stop_threshold}")


class InferenceResult(NamedTuple):
  final: jax.Array         # candidate after the last applied step, [..., E]
  outputs: Any             # emit(candidate after step k) stacked over k, [K, ...]; None
                           # for trajectory=False
  energies: jax.Array      # [K+1, ...] energy after k steps (k = 0: the initial candidate);
                           # [2, ...] (initial, final) for trajectory=False
  steps_used: jax.Array    # int32 [...]: updates each position received


def _where_positions(mask, new, old):
  """Per-position choice between two candidate-shaped trees (other leaves take `new`)."""

  def pick(n, o):
    if jnp.ndim(n) < mask.ndim:
      return n
    m = mask.reshape(mask.shape + (1,) * (jnp.ndim(n) - mask.ndim))
    return jnp.where(m, n, o)

  return jax.tree_util.tree_map(pick, new, old)


def think_per_position(energy_fn: Callable, y0: jax.Array, inner_opt: InnerOptimizer,
                       schedule: Schedule, key: jax.Array, *,
                       reparam: Callable | None = None, emit: Callable | None = None,
                       noise_std=None, rules: StepRules = StepRules(), final_landscape=None,
                       event_ndim: int = 1, trajectory: bool = True, grad_clip=None,
                       value_clip: float | None = None, per_step: bool = False,
                       reparam_K=None) -> InferenceResult:
  """Inference thinking with per-position control; no gradient flows to the parameters.

  `energy_fn(z, landscape)` returns one energy per position: z.shape[:-event_ndim].
  `final_landscape` (default: the last step's) scores the final candidate. `noise_std`
  (None: no noise) may be a traced scalar, such as a learned Langevin std. `grad_clip` and
  `value_clip` are `loop.think`'s (the official `clamp_futures_grad` and `absolute_clamp`):
  the gradient clamped before the update, the updated candidate after it. With `per_step`,
  `schedule.step_size` and `grad_clip` are [K], one per step. `reparam_K` (bool [K + 1],
  None: all) says which steps, then the final scoring, apply `reparam`.
  """
  reparam_all = reparam or (lambda y: y)
  if reparam_K is None:
    reparam = lambda y, k=None: reparam_all(y)
  else:
    reparam_K = jnp.asarray(reparam_K)
    reparam = lambda y, k: jnp.where(reparam_K[k], reparam_all(y), y)
  emit = emit or (lambda y: y)
  schedule = schedule._replace(landscape_K=jnp.asarray(schedule.landscape_K))   # numpy too
  num_steps = schedule.landscape_K.shape[0]
  final_landscape = schedule.landscape_K[-1] if final_landscape is None else final_landscape
  event_axes = tuple(range(-event_ndim, 0))

  def energies_and_grad(z, landscape):
    def summed(z):
      e = energy_fn(z, landscape)
      return e.sum(), e

    (_, e), g = jax.value_and_grad(summed, has_aux=True)(z)
    return e, g

  def step(k, cand, opt_state, active, prev_energy):
    landscape = schedule.landscape_K[k]
    step_key = jax.random.fold_in(key, k)
    start = cand
    if noise_std is not None:
      noise = noise_std * jax.random.normal(jax.random.fold_in(step_key, 0),
                                                  cand.shape, cand.dtype)
      cand = cand + (noise if not rules.noise_first_only else jnp.where(k == 0, noise, 0))
    z = reparam(cand, k)
    energy, grad = energies_and_grad(z, landscape)
    if rules.stop_on == "energy":
      active = active & ((k == 0) | (jnp.abs(prev_energy - energy) >= rules.stop_threshold))
    elif rules.stop_on == "grad_norm":
      grad_norm = jnp.sqrt(jnp.sum(jnp.square(grad), axis=event_axes))
      active = active & (grad_norm >= rules.stop_threshold)
    if grad_clip is not None:
      clip = grad_clip[k] if per_step else grad_clip
      grad = jnp.clip(grad, -clip, clip)
    alpha = schedule.step_size[k] if per_step else schedule.step_size
    new, new_state = inner_opt.update(grad, opt_state, z, alpha,
                                      jax.random.fold_in(step_key, 1))
    if value_clip is not None:
      new = jnp.clip(new, -value_clip, value_clip)
    if rules.accept_lower:
      proposed_energy = energy_fn(reparam(new, k), landscape)
      new = _where_positions(proposed_energy < energy, new, cand)
    new = _where_positions(active, new, start)
    new_state = _where_positions(active, new_state, opt_state)
    return new, new_state, active, energy

  active0 = jnp.ones(y0.shape[:y0.ndim - event_ndim], bool)
  steps0 = jnp.zeros(active0.shape, jnp.int32)
  state0 = inner_opt.init(y0)
  energy_dtype = jax.eval_shape(lambda: energy_fn(reparam_all(y0), schedule.landscape_K[0])).dtype
  zeros = jnp.zeros(active0.shape, energy_dtype)

  if trajectory:
    def body(carry, k):
      cand, opt_state, active, prev_energy, steps_used = carry
      cand, opt_state, active, energy = step(k, cand, opt_state, active, prev_energy)
      return (cand, opt_state, active, energy, steps_used + active), (emit(cand), energy)

    init = (y0, state0, active0, zeros, steps0)
    (final, _, _, _, steps_used), (outputs, energies) = jax.lax.scan(
        body, init, jnp.arange(num_steps))
    final_energy = energy_fn(reparam(final, num_steps), final_landscape)
    return InferenceResult(final, outputs, jnp.concatenate([energies, final_energy[None]]),
                           steps_used)

  def cond(carry):
    k, _, _, active, _, _, _ = carry
    return (k < num_steps) & jnp.any(active)

  def body(carry):
    k, cand, opt_state, active, prev_energy, initial_energy, steps_used = carry
    cand, opt_state, active, energy = step(k, cand, opt_state, active, prev_energy)
    initial_energy = jnp.where(k == 0, energy, initial_energy)
    return k + 1, cand, opt_state, active, energy, initial_energy, steps_used + active

  _, final, _, _, _, initial_energy, steps_used = jax.lax.while_loop(
      cond, body, (jnp.int32(0), y0, state0, active0, zeros, zeros, steps0))
  final_energy = energy_fn(reparam(final, num_steps), final_landscape)
  return InferenceResult(final, None, jnp.stack([initial_energy, final_energy]),
                         steps_used)


def selection_scores(initial_energy: jax.Array, final_energy: jax.Array, select: str) -> jax.Array:
  """Higher is better: the score `select` ranks candidates by."""
  if select == "min":
    return -final_energy
  if select == "max":
    return final_energy
  if select == "max_gap":
    return initial_energy - final_energy
  raise ValueError(f"inference.select: expected one of {SELECTIONS}, got {select!r}")


def best_of(candidates_N: Any, initial_energy_N: jax.Array, final_energy_N: jax.Array,
            select: str = "min") -> tuple[Any, jax.Array]:
  """Per position, the best of N candidates (leading axis N): (chosen tree, index [...])."""
  index = jnp.argmax(selection_scores(initial_energy_N, final_energy_N, select), axis=0)

  def take(a):
    idx = index.reshape((1,) + index.shape + (1,) * (a.ndim - 1 - index.ndim))
    return jnp.take_along_axis(a, idx, axis=0)[0]

  return jax.tree_util.tree_map(take, candidates_N), index
