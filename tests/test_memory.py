"""Memory controls: remat per block and per thinking step, and the compile-time report."""

import dataclasses
import functools

import chex
import jax
import numpy as np
import pytest

import ebt_jax
from ebt_jax import cli
from ebt_jax.training import memory
from conftest import tiny_config, to_f64


@functools.cache
def loss_and_grads(model_remat, thinking_remat):
  # Float64: remat recomputes in another order, and float32's rounding of that differed
  # by 3e-4 relative in a small gradient entry (AMD EPYC VM), past any tight tolerance.
  c = tiny_config("time_embed", detach=False, remat=thinking_remat)
  c.model.update(remat=model_remat, dtype="float64")
  params = to_f64(ebt_jax.init_params(c, jax.random.key(0)))
  tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, c.model.vocab_size)
  f = lambda p: ebt_jax.text_ebt_loss(p, tokens, c, key=jax.random.key(2))[0]
  return jax.jit(jax.value_and_grad(f))(params)


@pytest.mark.slow
# Two cases cover each policy at each level (block: full, dots; thinking step: dots, full).
@pytest.mark.parametrize("model_remat,thinking_remat", [("full", "dots"), ("dots", "full")])
def test_remat_changes_nothing_but_memory(x64, model_remat, thinking_remat):
  loss, grads = loss_and_grads(model_remat, thinking_remat)
  base_loss, base_grads = loss_and_grads("none", "none")
  chex.assert_trees_all_equal_dtypes(grads, base_grads)
  assert grads["head"].dtype == np.float64
  np.testing.assert_allclose(loss, base_loss, rtol=1e-12)
  chex.assert_trees_all_close(grads, base_grads, rtol=1e-9, atol=1e-12)


def _small_config(remat):
  c = tiny_config("time_embed", remat=remat)
  c.model.update(remat=remat, vocab_size=256, dim=64, n_heads=4, n_layers=2, context_length=32)
  c.train.batch_size = 8
  return c


@pytest.mark.slow
def test_compile_report_sees_what_remat_saves():
  plain = memory.compile_report(_small_config("none"))
  remat = memory.compile_report(_small_config("full"))
  assert plain.argument_bytes == remat.argument_bytes > 0
  assert remat.temp_bytes < 0.8 * plain.temp_bytes, (remat.temp_bytes, plain.temp_bytes)
  assert "peak per device" in plain.table()
  small = dataclasses.replace(plain, device_limit_bytes=plain.peak_bytes - 1)
  assert small.fits is False and "DOES NOT FIT" in small.table()
  assert dataclasses.replace(plain, device_limit_bytes=plain.peak_bytes).fits


@pytest.mark.slow
def test_compile_report_command(capsys):
  assert cli.main(["compile-report", "--config", "tiny_cpu",
                   "--config.train.batch_size=4"]) == 0, capsys.readouterr().err[-2000:]
  out = capsys.readouterr().out
  assert "peak per device" in out and "model FLOPs per step" in out
