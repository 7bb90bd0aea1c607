"""The thinking loop: gradient steps on a candidate under any energy function.

`think` is a `lax.scan` over steps of `jax.value_and_grad` of the summed energy. It knows
nothing about the model: `energy_fn(z, landscape) -> [B, ...]` energies (one per
independent prediction) is all it sees, so the per-position gradient of the sum is the
gradient of each prediction's own energy. Training differentiates through the whole loop
(second order: only Hessian-vector products, never a Hessian).

Step options follow the official code:
* `detach` (official default): each step starts from a stop-gradient copy of the
  candidate, so a step's loss reaches the parameters only through that step's update.
* `truncate`: only the last step carries second-order terms; earlier steps use a
  stop-gradient energy gradient (they still pass alpha and, without `detach`, the
  candidate chain). Built as a scan over the first K-1 steps plus one final step, so no
  second-order work is traced and then discarded.
* `pre_noise_std`: the official Langevin noise of the text and image models, added to the
  candidate before each step (the step starts from the noised candidate).
* `keyed_energy`: `energy_fn(z, landscape, key)` gets a fresh key per step, for randomness
  only the gradient evaluation sees (the official video model's Langevin noise, added to
  the projected candidate while the step starts from the un-noised one).
* `unroll`: passed to `lax.scan`. Unrolling the few steps of training into straight-line
  code lets XLA drop the per-step slicing of stacked context caches (about 10% of an S1
  step on CPU); long inference runs keep the rolled loop.
* `remat`: wraps each step (e.g. `jax.checkpoint`), so training keeps one step's
  activations at a time and recomputes them in the backward pass.
* `reparam`: maps the stored candidate to the variable the gradient is taken against and
  the optimizer steps on (the text EBT's softmax: gradient with respect to probabilities).
* `Schedule.active_K`: a variable number of steps compiled once. The scan keeps its static
  length and a step whose flag is False is skipped (`lax.cond`, so it costs nothing at run
  time): the candidate and optimizer state pass through unchanged, and its outputs and
  energies are zeros for the caller to mask. With `truncate` the last step must be active
  (put skipped steps first), so the second-order step is always the last one taken.
* `grad_clip`: the official `clamp_futures_grad`, the energy gradient clamped to
  [-grad_clip, grad_clip] before the optimizer sees it; `value_clip`: the official
  `absolute_clamp`, the updated candidate clamped to [-value_clip, value_clip]; then
  `divide_by`: the official `sharpen_predicted_distribution`, the candidate divided by it.
* `reparam_K`: which steps apply `reparam` (bool [K]; None: all); the others step on the
  candidate as it is (the official `normalize_initial_condition_only_first_step`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ebt_jax.thinking.optimizers import InnerOptimizer


class Schedule(NamedTuple):
  """What each step runs on: its energy landscape, the step size alpha, whether it runs."""

  landscape_K: jax.Array       # int [K]; K is the number of steps
  step_size: jax.Array         # scalar, or broadcastable to the candidate (per position)
  active_K: jax.Array | None = None   # bool [K]; None: every step runs


class Trajectory(NamedTuple):
  final: jax.Array             # candidate after the last step
  outputs: Any                 # emit(candidate after step k), stacked over k: [K, ...]
  energies: jax.Array          # [K, B, ...] energy of the candidate each step started from


def steps_schedule(landscapes, step_size) -> Schedule:
  return Schedule(jnp.asarray(landscapes, jnp.int32), jnp.asarray(step_size))


def think(energy_fn: Callable, y0: jax.Array, inner_opt: InnerOptimizer, schedule: Schedule,
          key: jax.Array, *, reparam: Callable | None = None, emit: Callable | None = None,
          detach: bool = True, truncate: bool = False, pre_noise_std=None,
          unroll: int | bool = 1, remat: Callable | None = None, grad_clip=None,
          value_clip: float | None = None, keyed_energy: bool = False,
          divide_by: float | None = None, reparam_K=None) -> Trajectory:
  reparam = reparam or (lambda y: y)
  emit = emit or (lambda y: y)

  def take_step(carry, landscape, step_key, second_order: bool, reparam_on=None):
    cand, opt_state = carry
    if detach:
      cand, opt_state = jax.lax.stop_gradient((cand, opt_state))
    if pre_noise_std is not None:
      noise = jax.random.normal(jax.random.fold_in(step_key, 0), cand.shape, cand.dtype)
      cand = cand + pre_noise_std * noise
    z = reparam(cand) if reparam_on is None else jnp.where(reparam_on, reparam(cand), cand)

    def summed(z):
      energies = (energy_fn(z, landscape, jax.random.fold_in(step_key, 2)) if keyed_energy
                  else energy_fn(z, landscape))
      return energies.sum(), energies

    (_, energies), grad = jax.value_and_grad(summed, has_aux=True)(z)
    if not second_order:
      grad, energies = jax.lax.stop_gradient((grad, energies))
    if grad_clip is not None:
      # The bound stays differentiable (alpha's gradient passes through it, as in torch).
      grad = jnp.clip(grad, -grad_clip, grad_clip)
    new, opt_state = inner_opt.update(grad, opt_state, z, schedule.step_size,
                                      jax.random.fold_in(step_key, 1))
    if value_clip is not None:
      new = jnp.clip(new, -value_clip, value_clip)
    if divide_by is not None:
      new = new / divide_by
    return (new, opt_state), (emit(new), energies)

  num_steps = schedule.landscape_K.shape[0]
  xs = (schedule.landscape_K, jax.random.split(key, num_steps), schedule.active_K, reparam_K)
  carry = (y0, inner_opt.init(y0))
  if schedule.active_K is not None:
    out_shapes = jax.eval_shape(lambda c, x: take_step(c, x[0], x[1], False, x[3])[1], carry,
                                jax.tree_util.tree_map(lambda a: a[0], xs))

  def step(carry, xs, second_order: bool):
    landscape, step_key, active, reparam_on = xs
    if active is None:
      return take_step(carry, landscape, step_key, second_order, reparam_on)
    skip = lambda carry: (carry, jax.tree_util.tree_map(
        lambda a: jnp.zeros(a.shape, a.dtype), out_shapes))
    return jax.lax.cond(active, lambda c: take_step(c, landscape, step_key, second_order,
                                                    reparam_on),
                        skip, carry)

  if remat is not None:
    step = remat(step)
  if truncate and num_steps > 1:
    head = jax.tree_util.tree_map(lambda a: a[:-1], xs)
    last = jax.tree_util.tree_map(lambda a: a[-1], xs)
    carry, (outs, energies) = jax.lax.scan(lambda c, x: step(c, x, False), carry, head,
                                           unroll=unroll)
    carry, (out, energy) = step(carry, last, True)
    outs, energies = jax.tree_util.tree_map(
        lambda a, b: jnp.concatenate([a, b[None]]), (outs, energies), (out, energy))
  else:
    carry, (outs, energies) = jax.lax.scan(lambda c, x: step(c, x, True), carry, xs,
                                           unroll=unroll)
  return Trajectory(carry[0], outs, energies)
