"""Inference thinking on constructed energies: selection, adaptive stopping, acceptance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebt_jax.thinking import inference, loop, optimizers

GD = optimizers.make("gd")


def quadratic(curvature_P):
  """Per position p: E_p(y) = 0.5 * a_p * ||y_p||^2 over the last axis."""
  return lambda y, landscape: 0.5 * curvature_P * jnp.sum(y * y, axis=-1)


def run(energy_fn, y0, steps, alpha, **kw):
  schedule = loop.Schedule(jnp.zeros(steps, jnp.int32), jnp.asarray(alpha))
  return inference.think_per_position(energy_fn, y0, GD, schedule, jax.random.key(0), **kw)


def test_best_of_picks_the_candidate_each_rule_asks_for():
  # N=4 candidates at B=2, S=3 positions; per position the energy is the squared distance
  # to a target, so after one small step the ranking is that of the starting distances.
  key = jax.random.key(1)
  target_BxSxE = jax.random.normal(key, (2, 3, 5))
  offsets_N = jnp.array([0.5, 0.1, 2.0, 1.0])
  direction = jax.random.normal(jax.random.key(2), (4, 2, 3, 5))
  direction /= jnp.linalg.norm(direction, axis=-1, keepdims=True)
  # Shuffle which candidate is closest per position.
  perm = jax.vmap(lambda k: jax.random.permutation(k, 4))(jax.random.split(key, 6)).T
  dist_NxBxS = offsets_N[perm].reshape(4, 2, 3)
  y0 = target_BxSxE + dist_NxBxS[..., None] * direction
  energy_fn = lambda y, l: 0.5 * jnp.sum((y - target_BxSxE) ** 2, axis=-1)
  result = run(energy_fn, y0, steps=1, alpha=0.1)
  e0, e1 = result.energies[0], result.energies[-1]
  np.testing.assert_allclose(e1, 0.81 * e0, rtol=1e-5)   # (1 - alpha)^2 per gd step
  _, closest = inference.best_of(result.final, e0, e1, "min")
  np.testing.assert_array_equal(closest, jnp.argmin(dist_NxBxS, axis=0))
  chosen, farthest = inference.best_of(result.final, e0, e1, "max")
  np.testing.assert_array_equal(farthest, jnp.argmax(dist_NxBxS, axis=0))
  # The largest drop, 0.19 * e0, belongs to the farthest start.
  _, biggest_drop = inference.best_of(result.final, e0, e1, "max_gap")
  np.testing.assert_array_equal(biggest_drop, farthest)
  b, s = 1, 2
  np.testing.assert_allclose(chosen[b, s], result.final[farthest[b, s], b, s])


def expected_stopping(curvature_P, y0_norm2_P, alpha, steps, threshold):
  """Steps used per position under the energy-change rule, by a plain loop."""
  used = []
  for a, n2 in zip(curvature_P, y0_norm2_P):
    energies = [0.5 * a * n2 * (1 - alpha * a) ** (2 * k) for k in range(steps)]
    count = 0
    for k in range(steps):
      if k > 0 and abs(energies[k - 1] - energies[k]) < threshold:
        break
      count += 1
    used.append(count)
  return np.array(used)


@pytest.mark.parametrize("trajectory", [True, False])
def test_adaptive_stopping_stops_where_it_should(trajectory):
  curvature_P = jnp.array([0.1, 0.5, 1.0, 1.5, 1.9, 0.01])
  y0 = jax.random.normal(jax.random.key(3), (6, 4))
  steps, alpha, threshold = 12, 0.5, 1e-3
  result = run(quadratic(curvature_P), y0, steps, alpha,
               rules=inference.StepRules(stop_on="energy", stop_threshold=threshold),
               trajectory=trajectory)
  expected = expected_stopping(np.asarray(curvature_P), np.sum(np.asarray(y0) ** 2, -1), alpha,
                               steps, threshold)
  assert expected.min() < steps == expected.max()  # some positions stop early, some never
  np.testing.assert_array_equal(result.steps_used, expected)
  # A stopped position keeps the candidate its last step produced.
  shrink = (1 - alpha * np.asarray(curvature_P)) ** expected
  np.testing.assert_allclose(result.final, np.asarray(y0) * shrink[:, None], rtol=1e-5)


def test_gradient_norm_stopping_and_the_step_limit():
  curvature_P = jnp.array([1e-4, 0.3, 2.0])
  y0 = jnp.ones((3, 2))
  result = run(quadratic(curvature_P), y0, steps=5, alpha=0.5,
               rules=inference.StepRules(stop_on="grad_norm", stop_threshold=0.01),
               trajectory=False)
  # |grad| = a * |y|: the flat position never moves, the steep one converges in one step,
  # the middle one runs into the limit of 5 steps.
  np.testing.assert_array_equal(result.steps_used, [0, 5, 1])
  assert int(result.steps_used.max()) <= 5


def test_more_gd_steps_never_raise_a_convex_energy():
  key = jax.random.key(4)
  m = jax.random.normal(key, (3, 6, 6))
  a_PxExE = jnp.einsum("pij,pkj->pik", m, m) + 0.1 * jnp.eye(6)
  lam_max = jnp.linalg.eigvalsh(a_PxExE).max()
  energy_fn = lambda y, l: 0.5 * jnp.einsum("pi,pij,pj->p", y, a_PxExE, y)
  y0 = jax.random.normal(jax.random.key(5), (3, 6))
  result = run(energy_fn, y0, steps=20, alpha=1.9 / lam_max)
  e = np.asarray(result.energies)
  assert np.all(np.diff(e, axis=0) <= 1e-6 * e[:-1])
  assert np.all(e[-1] < e[0])


def test_accept_lower_rejects_steps_that_raise_the_energy():
  curvature_P = jnp.array([1.0, 3.0])       # alpha = 1: the second position overshoots
  y0 = jnp.ones((2, 3))
  plain = run(quadratic(curvature_P), y0, steps=3, alpha=1.0)
  assert plain.energies[-1, 1] > plain.energies[0, 1]
  kept = run(quadratic(curvature_P), y0, steps=3, alpha=1.0,
             rules=inference.StepRules(accept_lower=True))
  np.testing.assert_allclose(kept.final[1], y0[1])
  np.testing.assert_allclose(kept.final[0], 0.0, atol=1e-6)


def test_langevin_noise_on_the_first_step_only():
  energy_fn = quadratic(jnp.zeros(2))           # flat: only the noise moves the candidate
  y0 = jnp.zeros((2, 3))
  every = run(energy_fn, y0, steps=3, alpha=1.0, noise_std=0.5, emit=lambda y: y)
  first = run(energy_fn, y0, steps=3, alpha=1.0, noise_std=0.5, emit=lambda y: y,
              rules=inference.StepRules(noise_first_only=True))
  np.testing.assert_allclose(first.outputs[0], first.outputs[2])
  np.testing.assert_allclose(first.outputs[0], every.outputs[0])
  assert not np.allclose(every.outputs[0], every.outputs[2])
