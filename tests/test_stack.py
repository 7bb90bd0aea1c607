"""The one layer runner of the text and DiT stacks: scanned, unrolled and rematerialised
forms agree, and the DiT's modulation is the text stack's `layers.modulate`."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import pytest

from ebt_jax.models import blocks, dit_blocks, layers, params


def test_run_layers_scan_equals_loop_and_stacks_outputs():
  w_LxD = jax.random.normal(jax.random.key(0), (3, 4))
  body = lambda x, w: (jnp.tanh(x * w), x.sum())
  x0 = jnp.ones((2, 4))
  x_scan, outs_scan = blocks.run_layers(body, x0, w_LxD)
  x_loop, outs_loop = blocks.run_layers(body, x0, w_LxD, scan=False, remat_policy="full")
  chex.assert_trees_all_close((x_scan, outs_scan), (x_loop, outs_loop), rtol=1e-6)
  chex.assert_shape(outs_loop, (3,))


def _jit_value_and_grad(run):
  """value_and_grad of run(dims, block params, x), compiled (op-by-op dispatch of these
  gradients took about 3x as long); the dims are static."""
  return jax.jit(jax.value_and_grad(run, argnums=(1, 2)), static_argnums=0)


@pytest.mark.slow
@pytest.mark.parametrize("scan,remat", [(False, "none"), (True, "full"), (False, "dots")])
def test_dit_stack_forms_agree(x64, scan, remat):
  d = dit_blocks.DiTStackDims(dim=16, n_layers=3, n_heads=2, mlp_ratio=2.0, dtype=jnp.float64)
  bp = params.init_tree(dit_blocks.block_specs(d), jax.random.key(1), jnp.float64)
  # adaLN-zero starts with zero modulations; random ones exercise shift, scale and gate.
  bp["mod_w"] = 0.3 * jax.random.normal(jax.random.key(2), bp["mod_w"].shape, jnp.float64)
  x = jax.random.normal(jax.random.key(3), (2, 5, 16), jnp.float64)
  c = jax.random.normal(jax.random.key(4), (2, 16), jnp.float64)
  run = lambda d, bp, x: jnp.sum(dit_blocks.run_blocks(bp, x, c, d) ** 2)
  other = dataclasses.replace(d, scan_layers=scan, remat=remat)
  chex.assert_trees_all_close(_jit_value_and_grad(run)(other, bp, x),
                              _jit_value_and_grad(run)(d, bp, x),
                              rtol=1e-10, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("scan,remat", [(False, "none"), (True, "dots")])
def test_text_stack_forms_agree(x64, scan, remat):
  d = blocks.StackDims(dim=16, n_layers=3, n_heads=2, ffn_hidden=24, adaln=True,
                       dtype=jnp.float64)
  bp = params.init_tree(blocks.block_specs(d, "xavier", 1.0), jax.random.key(5), jnp.float64)
  step_vec = jax.random.normal(jax.random.key(6), (16,), jnp.float64)
  mods = blocks.layer_modulations(step_vec, bp["mod_w"], bp["mod_b"])
  x = jax.random.normal(jax.random.key(7), (2, 5, 16), jnp.float64)

  def run(d, bp, x):
    out, cache = blocks.context_stream(bp, x, jnp.arange(5), mods, d)
    return jnp.sum(out**2) + jnp.sum(cache.k_LxBxCxNxH * cache.v_LxBxCxNxH)

  other = dataclasses.replace(d, scan_layers=scan, remat=remat)
  chex.assert_trees_all_close(_jit_value_and_grad(run)(other, bp, x),
                              _jit_value_and_grad(run)(d, bp, x),
                              rtol=1e-10, atol=1e-10)


def test_dit_modulation_is_layers_modulate_per_sample():
  x = jax.random.normal(jax.random.key(8), (2, 3, 4))
  shift, scale = jax.random.normal(jax.random.key(9), (2, 2, 4))
  want = x * (1 + scale[:, None, :]) + shift[:, None, :]
  chex.assert_trees_all_close(layers.modulate(x, shift[:, None], scale[:, None]), want)
