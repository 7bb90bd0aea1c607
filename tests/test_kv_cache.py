"""The text EBT's context cache grown token by token (generation's KV cache) against
encoding the whole sequence at once: same keys/values, same energies, and nothing past
the filled entries or past a query's position leaks into the result."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ebt_jax
from ebt_jax import tasks
from ebt_jax.models import ar_ebt, layers
from ebt_jax.models.blocks import ContextCache
from conftest import EBT_TYPES, perturb, tiny_config, to_f64

B, PROMPT, S, CHUNK = 2, 2, 8, 3   # a prompt of PROMPT tokens grown to S, 1 or CHUNK at a time
SLACK = 2                          # buffer entries past the last filled one


def _setup(ebt_type, **model):
  c = tiny_config(ebt_type)
  c.model.dtype = "float64"
  for k, v in model.items():
    c.model[k] = v
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  params = to_f64(perturb(ebt_jax.init_params(c, k1), k4))
  tokens = jax.random.randint(k2, (B, S), 0, c.model.vocab_size)
  probs = jax.nn.softmax(jax.random.normal(k3, (B, S, c.model.vocab_size), jnp.float64), -1)
  dims = tasks.build(c).dims
  landscape = 1 if dims.uses_step_embedding else 0   # not the default row
  return dims, params, tokens, probs, landscape


def _capacity(m):
  return m.prefix + S + SLACK


def _garbage(m, key=7):
  """Large finite values shaped like a grown buffer, for entries that must be masked."""
  shape = (m.stack.n_layers, B, _capacity(m), m.stack.n_heads, m.stack.head_dim)
  k1, k2 = jax.random.split(jax.random.key(key))
  return ContextCache(*(50 * jax.random.normal(k, shape, jnp.float64) for k in (k1, k2)))


def _fill_from(cache, garbage, first):
  """`cache` with entries first.. along C replaced by `garbage`."""
  keep_C = jnp.arange(cache.k_LxBxCxNxH.shape[2]) < first
  return ContextCache(*(jnp.where(keep_C[:, None, None], a, g) for a, g in zip(cache, garbage)))


# Jitted once per model (dims are static and hashable) and shared by the tests below.
@functools.partial(jax.jit, static_argnames="m")
def _grow(params, tokens_BxS, landscape, garbage, m):
  """Prefill PROMPT tokens, then grow to S one token and CHUNK tokens at a time, each
  inside a fori_loop (so `start` is traced). Entries past the prompt start as garbage:
  a query that saw a later entry would pick it up."""
  cache = ar_ebt.prefill_context(params, tokens_BxS[:, :PROMPT], landscape, _capacity(m), m)
  cache = _fill_from(cache, garbage, m.prefix + PROMPT)

  def grow_by(n):
    def step(i, cache):
      start = PROMPT + i * n
      new_BxN = jax.lax.dynamic_slice_in_dim(tokens_BxS, start, n, axis=1)
      return ar_ebt.extend_context(params, cache, new_BxN, start, landscape, m)
    return step

  by_one = jax.lax.fori_loop(0, S - PROMPT, grow_by(1), cache)
  by_chunk = jax.lax.fori_loop(0, (S - PROMPT) // CHUNK, grow_by(CHUNK), cache)
  return by_one, by_chunk


_encode = jax.jit(ar_ebt.encode_context, static_argnames="m")
_energy = jax.jit(ar_ebt.energy, static_argnames="m")
_prediction_energy = jax.jit(ar_ebt.prediction_energy, static_argnames="m")


def _assert_filled_entries_equal(grown, full, filled):
  filled_entries = jax.tree_util.tree_map(lambda a: a[:, :, :filled], grown)
  chex.assert_trees_all_close(filled_entries, full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ebt_type", EBT_TYPES)
def test_grown_cache_equals_full_encoding(x64, ebt_type):
  m, params, tokens, _, landscape = _setup(ebt_type)
  full = _encode(params, tokens, landscape, m=m)
  assert full.k_LxBxCxNxH.shape[2] == m.prefix + S
  by_one, by_chunk = _grow(params, tokens, landscape, _garbage(m), m=m)
  _assert_filled_entries_equal(by_one, full, m.prefix + S)
  _assert_filled_entries_equal(by_chunk, full, m.prefix + S)


def _grown_with_garbage(ebt_type):
  m, params, tokens, probs, landscape = _setup(ebt_type)
  garbage = _garbage(m)
  by_one, _ = _grow(params, tokens, landscape, garbage, m=m)
  return m, params, tokens, probs, landscape, by_one, garbage


@pytest.mark.parametrize("ebt_type", EBT_TYPES)
def test_energy_on_grown_cache_equals_full_energy(x64, ebt_type):
  """Generation thinks about one new token against the grown buffer; its energy is the
  full-sequence energy's column, whatever the buffer holds past that token's context."""
  m, params, tokens, probs, landscape, grown, garbage = _grown_with_garbage(ebt_type)
  full_BxS = _energy(params, tokens, probs, landscape, m=m)
  for i in (0, 3, S - 1):
    cand_Bx1xV, index_1 = probs[:, i:i + 1], jnp.array([i])
    e_Bx1 = _prediction_energy(params, grown, cand_Bx1xV, landscape, m=m, pred_index_S=index_1)
    np.testing.assert_allclose(e_Bx1[:, 0], full_BxS[:, i], rtol=1e-10, atol=1e-12)
    # Entries after token i (filled or not) are invisible to prediction i.
    hidden = _fill_from(grown, garbage, m.prefix + i + 1)
    e_hidden = _prediction_energy(params, hidden, cand_Bx1xV, landscape, m=m,
                                  pred_index_S=index_1)
    np.testing.assert_allclose(e_hidden, e_Bx1, rtol=1e-12, atol=1e-14)
  # ...while token i's own entry is read (the check above can fail).
  i = 3
  shown = _fill_from(grown, garbage, m.prefix + i)
  e_shown = _prediction_energy(params, shown, probs[:, i:i + 1], landscape, m=m,
                               pred_index_S=jnp.array([i]))
  assert not np.allclose(e_shown[:, 0], full_BxS[:, i])


def test_buffer_attention_is_causal_over_the_buffer(x64):
  """Queries at positions 4..6 of a 9-entry buffer equal causal attention over entries
  0..6, ignore entries 7..8, and do read their own entry."""
  kq, kk, kv, kg = jax.random.split(jax.random.key(3), 4)
  Bq, C, N, H = 2, 9, 2, 4
  q_BxTxNxH = jax.random.normal(kq, (Bq, 3, N, H), jnp.float64)
  k_BxCxNxH = jax.random.normal(kk, (Bq, C, N, H), jnp.float64)
  v_BxCxNxH = jax.random.normal(kv, (Bq, C, N, H), jnp.float64)
  positions_T = jnp.arange(4, 7)
  attend = jax.jit(layers.buffer_attention)
  out = attend(q_BxTxNxH, k_BxCxNxH, v_BxCxNxH, positions_T)
  # Causal attention over 0..6 with queries padded in front; rows 4..6 are ours.
  q_full = jnp.concatenate([jnp.zeros((Bq, 4, N, H)), q_BxTxNxH], axis=1)
  ref = layers.causal_attention(q_full, k_BxCxNxH[:, :7], v_BxCxNxH[:, :7])[:, 4:]
  np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)
  noise = 50 * jax.random.normal(kg, (Bq, 2, N, H), jnp.float64)
  later = attend(q_BxTxNxH, k_BxCxNxH.at[:, 7:].set(noise), v_BxCxNxH.at[:, 7:].set(noise),
                 positions_T)
  np.testing.assert_array_equal(later, out)
  own = attend(q_BxTxNxH, k_BxCxNxH.at[:, 6].set(noise[:, 0]), v_BxCxNxH, positions_T)
  np.testing.assert_array_equal(own[:, :2], out[:, :2])
  assert not np.allclose(own[:, 2], out[:, 2])


@pytest.mark.parametrize("model", [dict(n_layers=1), dict(scan_layers=False, remat="full")],
                         ids=["one_layer", "unrolled_remat"])
def test_grown_cache_other_stack_layouts(x64, model):
  """`extend_cache` without the scanned head (one layer: K/V only) and on the unrolled,
  rematerialised layer loop."""
  m, params, tokens, _, landscape = _setup("adaln", **model)
  full = _encode(params, tokens, landscape, m=m)
  by_one, by_chunk = _grow(params, tokens, landscape, _garbage(m), m=m)
  _assert_filled_entries_equal(by_one, full, S)
  _assert_filled_entries_equal(by_chunk, full, S)


def test_prefill_pads_and_checks_capacity(x64):
  m, params, tokens, _, landscape = _setup("time_embed")
  cache = ar_ebt.prefill_context(params, tokens[:, :PROMPT], landscape, 6, m)
  assert cache.k_LxBxCxNxH.shape == (m.stack.n_layers, B, 6, m.stack.n_heads, m.stack.head_dim)
  np.testing.assert_array_equal(cache.v_LxBxCxNxH[:, :, 1 + PROMPT:], 0.0)
  with pytest.raises(ValueError, match="capacity"):
    ar_ebt.prefill_context(params, tokens[:, :PROMPT], landscape, PROMPT, m)
