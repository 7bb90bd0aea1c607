"""`model.vocab_multiple`: a padded vocabulary axis changes no value.

The padded model is given the unpadded one's parameters plus random rows in the padding
(and random candidate entries there), so any leak of the padding would show: losses and
their second-order parameter gradients, System 2 logits and generated tokens equal the
unpadded model's, the padding's gradients are zero, and official checkpoints never see it.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ebt_jax
from conftest import perturb, tiny_config, to_f64
from ebt_jax import tasks
from ebt_jax.checkpoint import official
from ebt_jax.errors import ConfigError
from ebt_jax.inference import generate, system2

MULTIPLE = 8            # tiny_config's 11 tokens become 16 entries


def _padded(config):
  padded = config.copy_and_resolve_references()
  padded.model.vocab_multiple = MULTIPLE
  return padded


def _pad(a, width, key, axis):
  """`a` with random entries appended along `axis` up to `width`."""
  shape = list(a.shape)
  shape[axis] = width - a.shape[axis]
  return jnp.concatenate([a, jax.random.normal(key, shape, a.dtype)], axis)


def _pad_params(params, padded_config, key):
  """`params` in the padded model's shapes, random rows in its padding."""
  shapes = jax.eval_shape(lambda: ebt_jax.init_params(padded_config, jax.random.key(0)))
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for a, want, k in zip(leaves, jax.tree_util.tree_leaves(shapes), keys):
    axes = [i for i, (x, y) in enumerate(zip(a.shape, want.shape)) if x != y]
    out.append(_pad(a, want.shape[axes[0]], k, axes[0]) if axes else a)
  return jax.tree_util.tree_unflatten(treedef, out)


def _real_part(padded, like):
  """The entries of `padded` (a tree) that the unpadded tree `like` has."""
  return jax.tree_util.tree_map(lambda p, l: p[tuple(slice(0, n) for n in l.shape)],
                                padded, like)


def _padding_part(padded, like):
  """The entries of `padded` past the unpadded `like`'s shape, one array per padded axis."""
  return [np.asarray(p).take(range(l.shape[i], p.shape[i]), axis=i)
          for p, l in zip(jax.tree_util.tree_leaves(padded), jax.tree_util.tree_leaves(like))
          for i in range(p.ndim) if p.shape[i] != l.shape[i]]


def test_tables_are_the_unpadded_draws_and_zero_rows():
  c = tiny_config()
  plain = ebt_jax.init_params(c, jax.random.key(0))
  padded = ebt_jax.init_params(_padded(c), jax.random.key(0))
  assert padded["embed"].shape == (16, 16) and padded["v2e"].shape == (16, 16)
  chex.assert_trees_all_equal(_real_part(padded, plain), plain)
  assert all(not np.any(p) for p in _padding_part(padded, plain))


# Each case exercises another place the padding could leak: the softmax of the candidate
# (probabilities, logits), raw candidates embedded unnormalised, the contrastive loss's
# true-token candidate, label smoothing's uniform target, softmax at the first step only.
@pytest.mark.slow
@pytest.mark.parametrize("ebt_type,options", [
    ("time_embed", {}),
    ("default", {"grad_wrt": "logits"}),
    ("time_embed", {"normalize_initial_condition": False, "contrastive_loss": True,
                    "contrastive_loss_coeff": 0.5, "contrastive_true_logit": 2.0}),
    ("adaln_zero", {"soften_target": 0.5, "normalize_first_step_only": True,
                    "contrastive_loss": True, "contrastive_loss_coeff": 0.5}),
])
def test_ebt_loss_and_second_order_gradients_equal_the_unpadded(x64, ebt_type, options):
  c = tiny_config(ebt_type, detach=False, **options)
  c.model.dtype = "float64"
  p = _padded(c)
  params = to_f64(perturb(ebt_jax.init_params(c, jax.random.key(0)), jax.random.key(1)))
  params_p = _pad_params(params, p, jax.random.key(2))
  tokens = jax.random.randint(jax.random.key(3), (2, 7), 0, c.model.vocab_size)
  y0 = jax.random.normal(jax.random.key(4), (2, 6, 11), jnp.float64)
  y0_p = _pad(y0, 16, jax.random.key(5), -1)

  def loss(config, y):
    return jax.jit(jax.value_and_grad(
        lambda q: ebt_jax.text_ebt_loss(q, tokens, config, initial_logits=y)[0]))

  value, grads = loss(c, y0)(params)
  value_p, grads_p = loss(p, y0_p)(params_p)
  np.testing.assert_allclose(value_p, value, rtol=1e-12)
  chex.assert_trees_all_close(_real_part(grads_p, grads), grads, rtol=1e-10, atol=1e-14)
  padding = _padding_part(grads_p, grads)
  assert padding and all(not np.any(g) for g in padding)
  assert float(jnp.abs(grads["alpha"])) > 0       # second-order terms are in the comparison


@pytest.mark.slow
def test_transformer_loss_and_gradients_equal_the_unpadded(x64):
  c = tiny_config(kind="transformer", ebt_type="default")
  c.model.dtype = "float64"
  p = _padded(c)
  params = to_f64(ebt_jax.init_params(c, jax.random.key(0)))
  params_p = _pad_params(params, p, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 7), 0, c.model.vocab_size)
  value, grads = jax.value_and_grad(lambda q: ebt_jax.transformer_loss(q, tokens, c)[0])(params)
  value_p, grads_p = jax.value_and_grad(
      lambda q: ebt_jax.transformer_loss(q, tokens, p)[0])(params_p)
  np.testing.assert_allclose(value_p, value, rtol=1e-12)
  chex.assert_trees_all_close(_real_part(grads_p, grads), grads, rtol=1e-10, atol=1e-14)
  assert all(not np.any(g) for g in _padding_part(grads_p, grads))


@pytest.mark.slow
def test_system2_logits_and_generated_tokens_equal_the_unpadded(x64):
  # Float64: thinking steps amplify float32 rounding, which differs with the padded shapes.
  c = tiny_config("time_embed", initial_condition="zeros")
  c.model.dtype = "float64"
  c.inference.best_of = 2
  p = _padded(c)
  params = to_f64(perturb(ebt_jax.init_params(c, jax.random.key(0)), jax.random.key(1)))
  params_p = _pad_params(params, p, jax.random.key(2))
  tokens = jax.random.randint(jax.random.key(3), (2, 6), 0, c.model.vocab_size)
  y0 = jax.random.normal(jax.random.key(4), (2, 2, 6, 11), jnp.float64)
  plain = system2.predict(params, tokens, c, key=jax.random.key(5), initial_logits=y0)
  padded = system2.predict(params_p, tokens, p, key=jax.random.key(5),
                           initial_logits=_pad(y0, 16, jax.random.key(6), -1))
  np.testing.assert_allclose(padded.logits[..., :11], plain.logits, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(padded.energies, plain.energies, rtol=1e-10, atol=1e-12)
  assert np.all(np.isneginf(padded.logits[..., 11:]))
  unpadded_start = system2.predict(params_p, tokens, p, key=jax.random.key(5), initial_logits=y0)
  np.testing.assert_allclose(unpadded_start.logits, padded.logits, rtol=1e-10, atol=1e-12)
  with pytest.raises(ConfigError, match="initial_logits: expected a last axis of model.vocab_size "
                     "11 or its padded 16, got"):
    system2.predict(params_p, tokens, p, key=jax.random.key(5), initial_logits=y0[..., :10])

  sampling = generate.Sampling(max_new_tokens=4, temperature=0.0)
  out = generate.generate(params, tokens[:, :2], tasks.build(c), jax.random.key(7), sampling)
  out_p = generate.generate(params_p, tokens[:, :2], tasks.build(p), jax.random.key(7),
                            sampling)
  np.testing.assert_array_equal(out_p.tokens, out.tokens)


def test_official_checkpoints_never_see_the_padding():
  for c in (tiny_config(), tiny_config(kind="transformer", ebt_type="default")):
    p = _padded(c)
    params = ebt_jax.init_params(c, jax.random.key(0))
    params_p = _pad_params(params, p, jax.random.key(1))
    exported = official.export_official(params, c)
    exported_p = official.export_official(params_p, p)
    chex.assert_trees_all_equal(exported_p, exported)
    imported = official.import_official(exported, p)
    chex.assert_trees_all_equal(_real_part(imported, params), params)
    assert all(not np.any(g) for g in _padding_part(imported, params))
    other = tiny_config(kind=c.model.kind, ebt_type=c.model.ebt_type)
    other.model.update(vocab_size=13, vocab_multiple=MULTIPLE)   # also 16 wide
    with pytest.raises(ConfigError, match="embeddings.weight"):
      official.import_official(exported, other)
