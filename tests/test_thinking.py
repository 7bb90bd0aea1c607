"""The thinking loop against a plain Python loop, and the inner-optimizer registry (each
optimizer's second-order gradients: tests/test_s2.py, through the S2 loop's options)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import ebt_jax
from ebt_jax.thinking import Schedule, optimizers, think
from conftest import tiny_config


def toy_energy(theta, z_BxSxV, landscape):
  """A smooth non-quadratic energy per (sample, position) with parameters theta."""
  A, b, c = theta["A"], theta["b"], jnp.asarray(theta["c"])[landscape]
  quad = 0.5 * jnp.einsum("bsv,vw,bsw->bs", z_BxSxV, A @ A.T + jnp.eye(A.shape[0]), z_BxSxV)
  return quad + z_BxSxV @ b + c * jnp.sum(jnp.sin(z_BxSxV) ** 2, -1)


def toy_theta(key, V=5, dtype=jnp.float32):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"A": 0.3 * jax.random.normal(k1, (V, V), dtype),
          "b": jax.random.normal(k2, (V,), dtype),
          "c": 0.5 + jax.random.uniform(k3, (3,), dtype)}


def reference_loop(theta, y0, landscapes, alpha, *, reparam, detach, truncate):
  """The official loop, written as a Python for-loop over explicit autodiff calls."""
  y, outs, energies = y0, [], []
  for k, landscape in enumerate(landscapes):
    if detach:
      y = jax.lax.stop_gradient(y)
    z = reparam(y)
    e = toy_energy(theta, z, landscape)
    g = jax.grad(lambda z: toy_energy(theta, z, landscape).sum())(z)
    if truncate and k < len(landscapes) - 1:
      g, e = jax.lax.stop_gradient((g, e))
    y = z - alpha * g
    outs.append(y)
    energies.append(e)
  return jnp.stack(outs), jnp.stack(energies)


def _scan_and_loop(detach, truncate, unroll):
  """(loss through `think`, loss through the Python loop) of (theta, alpha), each also
  returning the trajectory's outputs and energies."""
  y0 = jax.random.normal(jax.random.key(1), (2, 3, 5))
  landscapes = (0, 1, 2)
  reparam = functools.partial(jax.nn.softmax, axis=-1)
  targets = jax.random.normal(jax.random.key(2), (3, 2, 3, 5))

  def via_think(theta, alpha):
    traj = think(lambda z, l: toy_energy(theta, z, l), y0, optimizers.make("gd"),
                 Schedule(jnp.array(landscapes), alpha), jax.random.key(3), reparam=reparam,
                 detach=detach, truncate=truncate, unroll=unroll)
    return traj.outputs, traj.energies

  def via_loop(theta, alpha):
    return reference_loop(theta, y0, landscapes, alpha, reparam=reparam, detach=detach,
                          truncate=truncate)

  def loss(fn, theta, alpha):
    outs, energies = fn(theta, alpha)
    return jnp.sum((outs - targets) ** 2) + 0.1 * jnp.sum(energies), (outs, energies)

  return functools.partial(loss, via_think), functools.partial(loss, via_loop)


def _value_and_grads(loss_fn):
  return jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)


@pytest.mark.parametrize("detach,truncate", [(True, False), (False, False), (False, True),
                                             (True, True)])
@pytest.mark.parametrize("unroll", [1, True])
def test_scan_equals_python_loop(detach, truncate, unroll):
  scan_loss, loop_loss = _scan_and_loop(detach, truncate, unroll)
  theta, alpha = toy_theta(jax.random.key(0)), jnp.asarray(0.7)
  # Compiled (op by op: ThinkJitAndEagerTest below).
  (_, traj_think), g_think = jax.jit(_value_and_grads(scan_loss))(theta, alpha)
  (_, traj_loop), g_loop = jax.jit(_value_and_grads(loop_loss))(theta, alpha)
  chex.assert_trees_all_close(traj_think, traj_loop, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(g_think, g_loop, rtol=1e-4, atol=1e-5)


class ThinkJitAndEagerTest(chex.TestCase):
  """The scan compiled and run op by op: both equal the Python loop, values and gradients."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((False, False), (False, True))
  def test_scan_equals_python_loop(self, detach, truncate):
    scan_loss, loop_loss = _scan_and_loop(detach, truncate, unroll=1)
    theta, alpha = toy_theta(jax.random.key(0)), jnp.asarray(0.7)
    (value, traj), grads = self.variant(_value_and_grads(scan_loss))(theta, alpha)
    (want_value, want_traj), want_grads = _value_and_grads(loop_loss)(theta, alpha)
    chex.assert_trees_all_close((value, traj), (want_value, want_traj), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(grads, want_grads, rtol=1e-4, atol=1e-5)


def test_truncation_cuts_second_order_terms_of_earlier_steps():
  """With truncation the parameter gradient only sees the last step's energy Hessian."""
  theta = toy_theta(jax.random.key(0))
  y0 = jax.random.normal(jax.random.key(1), (2, 3, 5))

  def final(theta, truncate):
    traj = think(lambda z, l: toy_energy(theta, z, l), y0, optimizers.make("gd"),
                 Schedule(jnp.zeros(3, jnp.int32), jnp.asarray(0.3)), jax.random.key(0),
                 detach=False, truncate=truncate)
    return jnp.sum(traj.final ** 2)

  g_trunc = jax.grad(final)(theta, True)
  g_full = jax.grad(final)(theta, False)
  assert not np.allclose(g_trunc["A"], g_full["A"])
  np.testing.assert_allclose(final(theta, True), final(theta, False), rtol=1e-6)


def test_optax_wrapper_matches_gd_and_takes_schedules():
  theta = toy_theta(jax.random.key(0))
  y0 = jax.random.normal(jax.random.key(1), (2, 3, 5))
  energy = lambda z, l: toy_energy(theta, z, l)
  sched = Schedule(jnp.zeros(4, jnp.int32), jnp.asarray(0.1))
  run = lambda opt: think(energy, y0, opt, sched, jax.random.key(0)).final
  np.testing.assert_allclose(run(optimizers.make("optax", transform=optax.sgd(1.0))),
                             run(optimizers.make("gd")), rtol=1e-6)
  decayed = optimizers.make("optax", transform="sgd", learning_rate={
      "schedule": "linear_schedule", "init_value": 1.0, "end_value": 0.0, "transition_steps": 2})
  # Learning rates 1, 0.5, 0, 0 over the four steps: two gd steps, then the candidate rests.
  grad = jax.grad(lambda z: energy(z, 0).sum())
  y1 = y0 - 0.1 * grad(y0)
  y2 = y1 - 0.05 * grad(y1)
  np.testing.assert_allclose(run(decayed), y2, rtol=1e-5, atol=1e-6)


def test_more_gd_steps_never_raise_a_convex_energy():
  A = jnp.array([[2.0, 0.3], [0.3, 1.0]])
  energy = lambda z, l: 0.5 * jnp.einsum("bsv,vw,bsw->bs", z, A, z)
  y0 = jax.random.normal(jax.random.key(0), (4, 3, 2))
  traj = think(energy, y0, optimizers.make("gd"), Schedule(jnp.zeros(12, jnp.int32),
                                                           jnp.asarray(0.4)), jax.random.key(0))
  assert np.all(np.diff(np.asarray(traj.energies), axis=0) <= 1e-7)
  assert np.all(energy(traj.final, 0) <= traj.energies[-1] + 1e-7)


def test_registry_rejects_unknown_and_duplicate_names():
  with pytest.raises(ValueError, match="thinking.inner_optimizer: expected one of"):
    optimizers.make("no_such_optimizer")
  with pytest.raises(ValueError, match="already registered"):
    optimizers.register("gd")(optimizers.gd)
  with pytest.raises(ValueError, match="inner_optimizer_kwargs for 'momentum'"):
    optimizers.make("momentum", bogus=1)


def test_research_code_can_register_an_optimizer_used_by_the_text_loss():
  name = "test_sign_descent"
  if name not in optimizers.names():
    @optimizers.register(name)
    def sign_descent(scale: float = 1.0):
      return optimizers.InnerOptimizer(
          init=lambda cand: (),
          update=lambda g, s, cand, step, key: (cand - scale * step * jnp.sign(g), s))
  c = tiny_config("default", inner_optimizer=name, step_size=0.5, num_steps=1)
  c.thinking.inner_optimizer_kwargs.scale = 2.0
  params = ebt_jax.init_params(c, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 7), 1, c.model.vocab_size)
  y0 = jnp.zeros((2, 6, c.model.vocab_size))
  loss, _ = jax.jit(lambda p: ebt_jax.text_ebt_loss(p, tokens, c, initial_logits=y0))(params)
  # One step from the uniform distribution moves every logit by +-scale*alpha = +-1.
  probs = jnp.full((2, 6, c.model.vocab_size), 1 / c.model.vocab_size)
  cache = ebt_jax.tasks.build(c).encode_landscapes(params, tokens[:, :-1])
  energy_fn = ebt_jax.tasks.build(c).candidate_energy_fn(params, cache)
  logits = probs - 1.0 * jnp.sign(jax.grad(lambda z: energy_fn(z, 0).sum())(probs))
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)
  np.testing.assert_allclose(loss, jnp.mean(nll), rtol=1e-5)
