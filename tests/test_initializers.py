"""The `jax.nn.initializers` used for the weights reproduce torch's official init: the
right variance from the right fans (several axes per fan included) and distribution."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebt_jax.models import blocks, dit_blocks, params


def _draw(spec, key=0):
  return np.asarray(spec.init(jax.random.key(key), spec.shape, jnp.float32), np.float64)


@pytest.mark.parametrize("method,gain", [("xavier", 1.0), ("xavier", 0.5), ("he", 2.0)])
def test_text_block_weights_have_torchs_std(method, gain):
  D, N, F = 64, 4, 96   # wq is [D, N, D / N]: its default-axes fans would be far off
  d = blocks.StackDims(dim=D, n_layers=3, n_heads=N, ffn_hidden=F)
  specs = blocks.block_specs(d, method, gain)
  # torch Linear(fan_in, fan_out): xavier_normal_ std sqrt(2 / (in + out)), kaiming_normal_
  # (linear gain) std 1 / sqrt(in), both times gain.
  std = ((lambda i, o: math.sqrt(2 / (i + o))) if method == "xavier"
         else (lambda i, o: 1 / math.sqrt(i)))
  fans = {"wq": (D, D), "wo": (D, D), "w1": (D, F), "w2": (F, D)}
  for name, (fan_in, fan_out) in fans.items():
    x = _draw(specs[name])
    np.testing.assert_allclose(x.std(), gain * std(fan_in, fan_out), rtol=0.03, err_msg=name)
    # Untruncated normal: kurtosis 3 (a truncated one is about 2.4).
    np.testing.assert_allclose(((x - x.mean()) ** 4).mean() / x.var() ** 2, 3.0, atol=0.15)


def test_dit_weights_are_torchs_xavier_uniform():
  D, N, F, p, C = 64, 4, 128, 2, 3
  specs = {**dit_blocks.block_specs(dit_blocks.DiTStackDims(dim=D, n_layers=2, n_heads=N,
                                                            mlp_ratio=2.0)),
           **dit_blocks.patch_embed_specs(p, C, D)}
  fans = {"qkv_w": (D, 3 * D), "out_w": (D, D), "fc1_w": (D, F), "fc2_w": (F, D),
          "patch_w": (p * p * C, D)}
  for name, (fan_in, fan_out) in fans.items():
    x = _draw(specs[name])
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert np.abs(x).max() <= bound and np.abs(x).max() > 0.97 * bound, name
    np.testing.assert_allclose(x.std(), bound / math.sqrt(3), rtol=0.05, err_msg=name)


def test_given_fans_and_torchs_default_linear_init():
  D = 4096
  # The energy head [D] is torch's Linear(D, 1) weight.
  head = _draw(params.Param((D,), ("embed",), params.linear_init("xavier", D, 1)))
  np.testing.assert_allclose(head.std(), math.sqrt(2 / (D + 1)), rtol=0.05)
  bias = _draw(params.Param((6 * 64,), (None,), params.torch_default_linear_init(16)))
  assert np.abs(bias).max() <= 0.25 and np.abs(bias).max() > 0.24
  with pytest.raises(ValueError, match="cannot have shape"):
    params.linear_init("he", 3, 5)(jax.random.key(0), (4, 4), jnp.float32)
  with pytest.raises(ValueError, match="model.weight_init: expected 'xavier' or 'he'"):
    params.linear_init("orthogonal", 3, 5)
