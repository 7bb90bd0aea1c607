"""The S1 objective: second-order gradients against finite differences, metrics, learning."""

import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ebt_jax
from conftest import SUITE_XLA_FLAGS, perturb, tiny_config, to_f64


def _directional_check(f, params, key, eps=1e-4, rtol=1e-7):
  """jax.grad(f) . v against finite differences of f along a random unit direction v
  (central differences with Richardson extrapolation: error O(eps^4))."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  v = [jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)]
  norm = jnp.sqrt(sum(jnp.sum(d * d) for d in v))
  v = jax.tree_util.tree_unflatten(treedef, [d / norm for d in v])
  g = jax.grad(f)(params)
  analytic = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g),
                                                 jax.tree_util.tree_leaves(v)))
  shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, params, v)
  central = lambda h: (f(shift(h)) - f(shift(-h))) / (2 * h)
  numeric = (4 * central(eps / 2) - central(eps)) / 3
  np.testing.assert_allclose(analytic, numeric, rtol=rtol)
  return g


# Without detaching, the parameter gradient is the exact derivative of the loss, so finite
# differences check it, second-order terms included. (`detach` and `truncate` drop
# dependencies on purpose; tests/test_thinking.py checks those against a plain loop.)
# `adaln` has no case of its own: `adaln_zero` differs from it only in initialisation, which
# perturb() undoes, so that case runs adaln's code.
@pytest.mark.slow
@pytest.mark.parametrize("ebt_type,options", [
    ("time_embed", {}),
    ("default", {"grad_wrt": "logits"}),
    ("adaln_zero", {"num_steps": 3}),
])
def test_second_order_gradient_matches_finite_differences(x64, ebt_type, options):
  c = tiny_config(ebt_type, detach=False, **options)
  c.model.dtype = "float64"
  params = to_f64(perturb(ebt_jax.init_params(c, jax.random.key(0)), jax.random.key(1)))
  tokens = jax.random.randint(jax.random.key(2), (2, 6), 0, c.model.vocab_size)
  loss = jax.jit(lambda p: ebt_jax.text_ebt_loss(p, tokens, c, key=jax.random.key(3))[0])
  g = _directional_check(loss, params, jax.random.key(4))
  # The gradient holds second-order terms: alpha's gradient is <-dL/dy, grad_p E>.
  assert float(jnp.abs(g["alpha"])) > 0
  chex.assert_tree_all_finite(g)


def _suite_flags_config():
  c = tiny_config("time_embed", detach=False)
  c.model.update(n_layers=1, dtype="float64")
  return c


def _s1_loss_and_grads(inputs):
  """The S1 loss and its second-order parameter gradients in float64 (needs x64) at the
  parameters and tokens saved in `inputs`."""
  c = _suite_flags_config()
  saved = np.load(inputs)
  treedef = jax.tree_util.tree_structure(jax.eval_shape(
      lambda key: ebt_jax.init_params(c, key), jax.random.key(0)))
  params = jax.tree_util.tree_unflatten(treedef, [saved[f"p{i}"]
                                                  for i in range(treedef.num_leaves)])
  loss = lambda p: ebt_jax.text_ebt_loss(p, saved["tokens"], c, key=jax.random.key(3))[0]
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  return {"loss": np.asarray(value), **{jax.tree_util.keystr(k): np.asarray(v)
                                        for k, v in jax.tree_util.tree_leaves_with_path(grads)}}


@pytest.mark.slow
def test_suite_xla_flags_compute_what_users_run(x64, tmp_path):
  """The suite compiles with XLA_FLAGS that trade run-time speed for compile time
  (conftest.py). In float64, where rounding cannot hide a difference, the S1 loss and its
  second-order gradients under XLA's default flags (a fresh process) equal this process's,
  from the same parameters (saved: float32 random draws themselves differ in the last bit
  between the flag sets, where LLVM contracts multiply-adds, and the thinking steps amplify
  that to 1e-6 in the gradients)."""
  assert os.environ["XLA_FLAGS"] == SUITE_XLA_FLAGS
  c = _suite_flags_config()
  params = to_f64(perturb(ebt_jax.init_params(c, jax.random.key(0)), jax.random.key(1)))
  inputs, out = tmp_path / "inputs.npz", tmp_path / "default_flags.npz"
  np.savez(inputs, tokens=np.random.RandomState(2).randint(0, c.model.vocab_size, (2, 7)),
           **{f"p{i}": np.asarray(v) for i, v in enumerate(jax.tree_util.tree_leaves(params))})
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import test_objective; "
          "np.savez(sys.argv[3], **test_objective._s1_loss_and_grads(sys.argv[2]))")
  subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(inputs), str(out)],
                 check=True, timeout=300, env=dict(env, XLA_FLAGS="", JAX_ENABLE_X64="1"))
  default, suite = dict(np.load(out)), _s1_loss_and_grads(inputs)
  assert sorted(default) == sorted(suite)
  for name in suite:
    np.testing.assert_allclose(suite[name], default[name], rtol=1e-11, atol=1e-14,
                               err_msg=name)


def test_metrics_follow_the_official_definitions():
  c = tiny_config("time_embed", num_steps=3)
  params = ebt_jax.init_params(c, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 7), 1, c.model.vocab_size)
  loss, m = jax.jit(lambda p: ebt_jax.text_ebt_loss(p, tokens, c, key=jax.random.key(2)))(params)
  np.testing.assert_allclose(loss, jnp.mean(m["ce_steps"]), rtol=1e-6)
  np.testing.assert_allclose(m["initial_loss"], m["ce_steps"][0])
  np.testing.assert_allclose(m["final_step_loss"], m["ce_steps"][-1])
  np.testing.assert_allclose(m["perplexity"], jnp.exp(m["final_step_loss"]), rtol=1e-6)
  np.testing.assert_allclose(m["initial_final_pred_energies_gap"],
                             m["energy_steps"][0] - m["energy_steps"][-1], rtol=1e-5)
  c.thinking.truncate = True
  loss_t, m_t = jax.jit(lambda p: ebt_jax.text_ebt_loss(p, tokens, c, key=jax.random.key(2)))(params)
  np.testing.assert_allclose(loss_t, m_t["ce_steps"][-1], rtol=1e-6)


def test_pad_targets_are_ignored():
  c = tiny_config("default")
  params = ebt_jax.init_params(c, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 7), 1, c.model.vocab_size)
  tokens = tokens.at[0, 4:].set(0)   # targets at positions 3..5 of sample 0 are pad
  y0 = jax.random.normal(jax.random.key(2), (2, 6, c.model.vocab_size))
  f = jax.jit(lambda y: ebt_jax.text_ebt_loss(params, tokens, c, initial_logits=y)[0])
  # Predictions are independent per position: changing only pad positions' candidates
  # must leave the loss unchanged, changing a real one must not.
  bump = 3.0 * jax.random.normal(jax.random.key(3), y0.shape)
  np.testing.assert_allclose(f(y0.at[0, 3:].add(bump[0, 3:])), f(y0), rtol=1e-6)
  assert not np.isclose(f(y0.at[0, 2].add(bump[0, 2])), f(y0))


def test_key_is_required_only_when_something_is_random():
  c = tiny_config("default")
  params = ebt_jax.init_params(c, jax.random.key(0))
  tokens = jnp.ones((1, 7), jnp.int32)
  with pytest.raises(ValueError, match="`key` is required"):
    ebt_jax.text_ebt_loss(params, tokens, c)
  c.thinking.initial_condition = "zeros"
  loss, _ = jax.jit(lambda p: ebt_jax.text_ebt_loss(p, tokens, c))(params)
  assert np.isfinite(loss)


def test_langevin_noise_and_initial_noise_follow_the_key():
  c = tiny_config("default", langevin_noise=0.5)
  params = ebt_jax.init_params(c, jax.random.key(0))
  np.testing.assert_allclose(params["langevin_std"], 0.5)
  tokens = jax.random.randint(jax.random.key(1), (2, 7), 1, c.model.vocab_size)
  f = jax.jit(lambda k: ebt_jax.text_ebt_loss(params, tokens, c, key=k)[0])
  assert f(jax.random.key(1)) == f(jax.random.key(1))
  assert f(jax.random.key(1)) != f(jax.random.key(2))


def _train(loss_fn, params, steps, lr):
  tx = optax.adam(lr)

  @jax.jit
  def step(params, opt_state, key):
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = tx.init(params), []
  for i in range(steps):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
    losses.append(float(loss))
  return losses


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ebt", "transformer"])
def test_tiny_model_loss_falls_on_a_fixed_batch(kind):
  c = tiny_config("time_embed", kind=kind, step_size=10.0)
  params = ebt_jax.init_params(c, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (4, 7), 1, c.model.vocab_size)
  if kind == "ebt":
    loss_fn = lambda p, k: ebt_jax.text_ebt_loss(p, tokens, c, key=k)
  else:
    loss_fn = lambda p, k: ebt_jax.transformer_loss(p, tokens, c)
  losses = _train(loss_fn, params, steps=40, lr=1e-2)
  assert losses[-1] < 0.5 * losses[0], losses
