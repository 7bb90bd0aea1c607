"""The text EBT's split form against a straightforward full-sequence implementation,
plus causality, batch independence, jit/eager agreement and initialisation."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ebt_jax
from ebt_jax import tasks
from ebt_jax.models import ar_ebt
from conftest import EBT_TYPES, perturb, tiny_config, to_f64


def _reference_energy(params, tokens_BxS, probs_BxSxV, landscape, config):
  """The official computation written plainly: one sequence [step?, real, pred], one
  explicit attention mask, complex-number RoPE, every layer over the whole sequence."""
  m = config.model
  B, S = tokens_BxS.shape
  D, N = m.dim, m.n_heads
  H = D // N
  P = 1 if m.ebt_type == "time_embed" else 0
  adaln = m.ebt_type in ("adaln", "adaln_zero")
  w_v2e = params["embed"] if m.tied_v2e else params["v2e"]
  real = params["embed"][tokens_BxS]
  if P:
    step = jnp.broadcast_to(params["step_embed"][landscape], (B, 1, D))
    real = jnp.concatenate([step, real], axis=1)
  x = jnp.concatenate([real, probs_BxSxV @ w_v2e], axis=1)          # [B, P+2S, D]
  T = P + 2 * S
  positions = np.concatenate([np.arange(P + S), np.arange(S) + 1 + P])
  mask = np.zeros((T, T), bool)
  for q in range(P + S):
    mask[q, :q + 1] = True
  for i in range(S):
    mask[P + S + i, :i + P + 1] = True
    mask[P + S + i, P + S + i] = True

  def norm(v, w):
    return v / jnp.sqrt(jnp.mean(v * v, -1, keepdims=True) + m.norm_eps) * w

  def rope(v):  # v [B, T, N, H]: pairs (2k, 2k+1) as complex numbers
    freqs = 1.0 / m.rope_theta ** (np.arange(0, H, 2) / H)
    rot = np.exp(1j * positions[:, None] * freqs[None, :])[None, :, None, :]
    c = (v[..., 0::2] + 1j * v[..., 1::2]) * rot
    return jnp.stack([c.real, c.imag], -1).reshape(v.shape)

  silu = lambda v: v / (1 + jnp.exp(-v))
  t_vec = params["step_embed"][landscape] if adaln else None
  b = params["blocks"]
  for l in range(m.n_layers):
    if adaln:
      mods = (silu(t_vec) @ b["mod_w"][l] + b["mod_b"][l]).reshape(6, D)
    else:
      mods = np.zeros((6, D)); mods[2] = 1; mods[5] = 1
    h = norm(x, b["attn_norm"][l]) * (1 + mods[1]) + mods[0]
    q = rope((h @ b["wq"][l].reshape(D, D)).reshape(B, T, N, H))
    k = rope((h @ b["wk"][l].reshape(D, D)).reshape(B, T, N, H))
    v = (h @ b["wv"][l].reshape(D, D)).reshape(B, T, N, H)
    scores = jnp.einsum("bqnh,bknh->bnqk", q, k) / math.sqrt(H)
    scores = jnp.where(mask, scores, -jnp.inf)
    att = jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(scores, -1), v).reshape(B, T, D)
    x = x + mods[2] * (att @ b["wo"][l].reshape(D, D))
    h = norm(x, b["ffn_norm"][l]) * (1 + mods[4]) + mods[3]
    x = x + mods[5] * ((silu(h @ b["w1"][l]) * (h @ b["w3"][l])) @ b["w2"][l])
  h = norm(x, params["final_norm"])
  if adaln:
    shift, scale = jnp.split(silu(t_vec) @ params["final_mod_w"] + params["final_mod_b"], 2)
    h = h * (1 + scale) + shift
  return (h @ params["head"])[:, P + S:]


def _setup(ebt_type, key=0, **thinking):
  c = tiny_config(ebt_type, **thinking)
  c.model.dtype = "float64"
  k1, k2, k3, k4 = jax.random.split(jax.random.key(key), 4)
  params = to_f64(perturb(ebt_jax.init_params(c, k1), k4))
  tokens = jax.random.randint(k2, (3, 6), 0, c.model.vocab_size)
  probs = jax.nn.softmax(jax.random.normal(k3, (3, 6, c.model.vocab_size), jnp.float64), -1)
  return c, params, tokens, probs


@pytest.mark.parametrize("ebt_type", EBT_TYPES)
@pytest.mark.parametrize("tied", [False, True])
def test_split_form_equals_full_masked_form(x64, ebt_type, tied):
  c, params, tokens, probs = _setup(ebt_type, tied_v2e=False)
  if tied:
    c.model.tied_v2e = True
    params.pop("v2e")
  dims = tasks.build(c).dims

  @jax.jit
  def both(params, tokens, probs, landscape):
    # The split form: one context encoding, reused by prediction_energy.
    cache = ar_ebt.encode_context(params, tokens, landscape, dims)
    return (ar_ebt.prediction_energy(params, cache, probs, landscape, dims),
            _reference_energy(params, tokens, probs, landscape, c))

  for landscape in range(tasks.build(c).num_landscapes):
    ours, ref = both(params, tokens, probs, landscape)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10)


def test_landscapes_differ_for_step_indexed_variants(x64):
  for ebt_type in ("time_embed", "adaln"):
    c, params, tokens, probs = _setup(ebt_type)
    dims = tasks.build(c).dims
    energy = jax.jit(lambda landscape: ar_ebt.energy(params, tokens, probs, landscape, dims))
    assert not np.allclose(energy(0), energy(1))


def test_prediction_subset_matches_full(x64):
  """Thinking about only the last position (generation) gives that position's energy."""
  c, params, tokens, probs = _setup("time_embed")
  dims = tasks.build(c).dims
  cache = ar_ebt.encode_context(params, tokens, 1, dims)
  full = ar_ebt.prediction_energy(params, cache, probs, 1, dims)
  last = ar_ebt.prediction_energy(params, cache, probs[:, -1:], 1, dims, pred_index_S=jnp.array([5]))
  np.testing.assert_allclose(last[:, 0], full[:, -1], rtol=1e-10)


@pytest.mark.parametrize("ebt_type", EBT_TYPES)
def test_causality(x64, ebt_type):
  """Energy and candidate gradient at position i ignore context tokens after i and the
  candidates of other positions."""
  c, params, tokens, probs = _setup(ebt_type)
  dims = tasks.build(c).dims
  i = 2
  energy_and_grad = jax.jit(jax.value_and_grad(
      lambda p, t: ar_ebt.energy(params, t, p, 0, dims)[:, i].sum()))
  e, g = energy_and_grad(probs, tokens)
  other_tokens = tokens.at[:, i + 1:].set((tokens[:, i + 1:] + 3) % c.model.vocab_size)
  other_probs = probs.at[:, jnp.arange(6) != i].set(jnp.flip(probs, -1)[:, jnp.arange(6) != i])
  e2, g2 = energy_and_grad(other_probs, other_tokens)
  np.testing.assert_allclose(e2, e, rtol=1e-12)
  np.testing.assert_allclose(g2[:, i], g[:, i], rtol=1e-10, atol=1e-14)
  # Other positions' candidates get no gradient from position i's energy.
  np.testing.assert_array_equal(np.asarray(g)[:, jnp.arange(6) != i], 0.0)
  # ...while earlier context tokens do change it (the test can fail).
  e3, _ = energy_and_grad(probs, tokens.at[:, i].set((tokens[:, i] + 1) % c.model.vocab_size))
  assert not np.allclose(e3, e)


@pytest.mark.parametrize("ebt_type", ["default", "adaln"])
def test_batch_independence(x64, ebt_type):
  """A sample's loss and inner update do not depend on the rest of the batch."""
  c, params, tokens, _ = _setup(ebt_type)
  tokens = jnp.concatenate([tokens, tokens[:, :1]], axis=1)
  y0 = jax.random.normal(jax.random.key(5), (3, 6, c.model.vocab_size), jnp.float64)
  changed = tokens.at[1:].set((tokens[1:] * 7 + 1) % c.model.vocab_size)
  y_changed = y0.at[1:].add(1.0)

  @jax.jit
  def first_update(toks, y):
    task = tasks.build(c)
    fn = task.candidate_energy_fn(params, task.encode_landscapes(params, toks[:, :-1]))
    p = jax.nn.softmax(y, -1)
    return p - c.thinking.step_size * jax.grad(lambda z: fn(z, 0).sum())(p)

  same, other = first_update(tokens, y0), first_update(changed, y_changed)
  np.testing.assert_allclose(same[0], other[0], rtol=1e-12)
  assert not np.allclose(same[1:], other[1:])


@pytest.mark.slow
def test_jit_equals_eager():
  # One layer and one thinking step: eager second-order autodiff dispatches thousands of
  # small ops, and the second step would only repeat the first's.
  c = tiny_config("adaln", num_steps=1)
  c.model.n_layers = 1
  params = perturb(ebt_jax.init_params(c, jax.random.key(0)), jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 7), 0, c.model.vocab_size)
  f = lambda p: ebt_jax.text_ebt_loss(p, tokens, c, key=jax.random.key(3))
  (l_eager, m_eager), g_eager = jax.value_and_grad(f, has_aux=True)(params)
  (l_jit, m_jit), g_jit = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
  chex.assert_trees_all_close((l_jit, m_jit["ce_steps"]), (l_eager, m_eager["ce_steps"]),
                              rtol=2e-5)
  chex.assert_trees_all_close(g_jit, g_eager, rtol=2e-3, atol=1e-5)


def test_initialisation_follows_official():
  c = tiny_config("time_embed")
  c.model.dim, c.model.n_heads, c.model.vocab_size, c.model.n_layers = 64, 4, 300, 3
  c.thinking.step_size = 123.0
  p = ebt_jax.init_params(c, jax.random.key(0))
  D, V = 64, 300
  np.testing.assert_allclose(np.std(p["embed"]), 1.0, rtol=0.05)          # N(0, 1) embeddings
  np.testing.assert_allclose(np.std(p["step_embed"]), 1.0, rtol=0.3)
  np.testing.assert_allclose(np.std(p["v2e"]), math.sqrt(2 / (V + D)), rtol=0.05)  # xavier
  np.testing.assert_allclose(np.std(p["blocks"]["wq"]), math.sqrt(2 / (2 * D)), rtol=0.05)
  np.testing.assert_allclose(np.std(p["blocks"]["w1"]), math.sqrt(2 / (2 * D)), rtol=0.05)
  np.testing.assert_array_equal(p["blocks"]["attn_norm"], 1.0)
  np.testing.assert_array_equal(p["final_norm"], 1.0)
  assert float(p["alpha"]) == 123.0
  assert p["blocks"]["wq"].shape == (3, D, 4, 16)
  # Layers are drawn independently.
  assert not np.allclose(p["blocks"]["wq"][0], p["blocks"]["wq"][1])

  c.model.ebt_type = "adaln_zero"
  z = ebt_jax.init_params(c, jax.random.key(0))
  for name in ("mod_w", "mod_b"):
    np.testing.assert_array_equal(z["blocks"][name], 0.0)
  for name in ("final_mod_w", "final_mod_b", "head"):
    np.testing.assert_array_equal(z[name], 0.0)
  c.model.ebt_type = "adaln"
  a = ebt_jax.init_params(c, jax.random.key(0))
  bound = 1 / math.sqrt(D)                                             # torch Linear default
  assert 0.9 * bound < np.max(np.abs(a["blocks"]["mod_w"])) <= bound


def test_param_axes_cover_every_leaf():
  for kind in ("ebt", "transformer"):
    c = tiny_config("adaln", kind=kind)
    params = ebt_jax.init_params(c, jax.random.key(0))
    axes = ebt_jax.param_axes(c)
    flat_p = jax.tree_util.tree_leaves_with_path(params)
    flat_a = jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: isinstance(x, tuple))
    assert [k for k, _ in flat_p] == [k for k, _ in flat_a]
    for (_, p), (_, a) in zip(flat_p, flat_a):
      assert len(a) == p.ndim
