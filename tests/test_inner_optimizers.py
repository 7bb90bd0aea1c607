"""Momentum, Nesterov and Adam (built from optax transforms) against the plain formulas
they stand for, step by step through the thinking loop."""

import chex
import jax
import jax.numpy as jnp
import pytest

from ebt_jax.thinking import Schedule, optimizers, think


def energy(z_BxSxV, landscape):
  """Per-(sample, position) energy: a weighted quadratic, a tilt and a landscape term."""
  c = jnp.asarray([1.0, 0.4])[landscape]
  weights = jnp.arange(1, z_BxSxV.shape[-1] + 1, dtype=z_BxSxV.dtype)
  return (0.5 * jnp.sum(weights * z_BxSxV**2, -1) + jnp.sum(z_BxSxV, -1)
          + c * jnp.sum(jnp.sin(3 * z_BxSxV) ** 2, -1))


def reference(name, kwargs, y0, landscapes, alpha):
  """The update rules written out: the candidate after every step, stacked."""
  grad = lambda y, l: jax.grad(lambda z: energy(z, l).sum())(y)
  y, v, m, s = y0, jnp.zeros_like(y0), jnp.zeros_like(y0), jnp.zeros_like(y0)
  outs = []
  for t, landscape in enumerate(landscapes, start=1):
    g = grad(y, landscape)
    if name == "momentum":
      v = kwargs["beta"] * v + g
      y = y - alpha * v
    elif name == "nesterov":
      v = kwargs["beta"] * v + g
      y = y - alpha * (g + kwargs["beta"] * v)
    else:
      b1, b2, eps = kwargs["b1"], kwargs["b2"], kwargs["eps"]
      m = b1 * m + (1 - b1) * g
      s = b2 * s + (1 - b2) * g * g
      m_hat, s_hat = m / (1 - b1**t), s / (1 - b2**t)
      y = y - alpha * m_hat / jnp.sqrt(s_hat + eps**2)
    outs.append(y)
  return jnp.stack(outs)


@pytest.mark.parametrize("name,kwargs", [
    ("momentum", {"beta": 0.9}), ("momentum", {"beta": 0.5}),
    ("nesterov", {"beta": 0.9}), ("nesterov", {"beta": 0.3}),
    ("adam", {"b1": 0.9, "b2": 0.999, "eps": 1e-8}),
    # A large eps tells sqrt(v_hat + eps^2) from sqrt(v_hat) + eps.
    ("adam", {"b1": 0.8, "b2": 0.95, "eps": 0.3}),
])
@pytest.mark.parametrize("per_position_alpha", [False, True])
def test_optax_built_optimizers_follow_their_formulas(name, kwargs, per_position_alpha):
  with jax.enable_x64(True):
    y0 = jax.random.normal(jax.random.key(0), (2, 3, 4), jnp.float64)
    landscapes = [0, 1, 1, 0, 1]
    alpha = (0.05 + 0.1 * jax.random.uniform(jax.random.key(1), (2, 3, 1), jnp.float64)
             if per_position_alpha else jnp.asarray(0.07, jnp.float64))
    traj = think(energy, y0, optimizers.make(name, **kwargs),
                 Schedule(jnp.asarray(landscapes), alpha), jax.random.key(2))
    want = reference(name, kwargs, y0, landscapes, alpha)
    chex.assert_trees_all_close(traj.outputs, want, rtol=1e-12, atol=1e-12)
    chex.assert_trees_all_close(traj.final, want[-1], rtol=1e-12, atol=1e-12)


def test_defaults_are_the_documented_ones():
  with jax.enable_x64(True):
    y0 = jax.random.normal(jax.random.key(3), (1, 2, 4), jnp.float64)
    sched = Schedule(jnp.zeros(4, jnp.int32), jnp.asarray(0.1, jnp.float64))
    run = lambda opt: think(energy, y0, opt, sched, jax.random.key(0)).outputs
    for name, kwargs in [("momentum", {"beta": 0.9}), ("nesterov", {"beta": 0.9}),
                         ("adam", {"b1": 0.9, "b2": 0.999, "eps": 1e-8})]:
      chex.assert_trees_all_close(run(optimizers.make(name)),
                                  reference(name, kwargs, y0, [0] * 4, 0.1), rtol=1e-12)
