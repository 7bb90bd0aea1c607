"""Official state_dict names <-> params: round trips and clear errors."""

import jax
import numpy as np
import pytest

import ebt_jax
from ebt_jax.checkpoint import export_official, import_official
from conftest import EBT_TYPES, tiny_config


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("kind,ebt_type,tied", [("ebt", t, False) for t in EBT_TYPES] +
                         [("ebt", "time_embed", True), ("transformer", "default", False)])
def test_round_trip(kind, ebt_type, tied):
  c = tiny_config(ebt_type, kind=kind)
  c.model.tied_v2e = tied
  params = ebt_jax.init_params(c, jax.random.key(0))
  state_dict = export_official(params, c)
  _assert_trees_equal(import_official(state_dict, c), params)
  # Lightning checkpoints prefix every name with "model.".
  _assert_trees_equal(import_official({"model." + k: v for k, v in state_dict.items()}, c), params)


def test_official_layouts():
  c = tiny_config("adaln")
  params = ebt_jax.init_params(c, jax.random.key(0))
  sd = export_official(params, c)
  D, V, F = 16, 11, 16
  expected = {
      "embeddings.weight": (V, D), "vocab_to_embed.weight": (D, V), "alpha": (),
      "langevin_dynamics_noise_std": (), "transformer.layers.1.attention.wq.weight": (D, D),
      "transformer.layers.0.attention.wo.weight": (D, D),
      "transformer.layers.0.feed_forward.w1.weight": (F, D),
      "transformer.layers.0.feed_forward.w2.weight": (D, F),
      "transformer.layers.1.adaLN_modulation.1.weight": (6 * D, D),
      "transformer.layers.1.adaLN_modulation.1.bias": (6 * D,),
      "transformer.time_embeddings.weight": (2, D),
      "transformer.final_layer.linear.weight": (1, D),
      "transformer.final_layer.adaLN_modulation.1.weight": (2 * D, D),
      "transformer.norm.weight": (D,),
  }
  for name, shape in expected.items():
    assert sd[name].shape == shape, name
  # torch Linear weights are [out, in]: x @ W_ours == x @ W_torch.T
  x = np.random.default_rng(0).normal(size=(3, V))
  np.testing.assert_allclose(x @ np.asarray(params["v2e"]), x @ sd["vocab_to_embed.weight"].T,
                             rtol=1e-5)
  # Query head n of the torch weight is rows n*H..(n+1)*H.
  np.testing.assert_array_equal(sd["transformer.layers.1.attention.wq.weight"][8:16].T,
                                np.asarray(params["blocks"]["wq"][1, :, 1, :]))


def test_gradient_dicts_map_like_weights():
  """The mapping is linear: a gradient dict with official names lands leaf for leaf."""
  c = tiny_config("time_embed")
  params = ebt_jax.init_params(c, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, c.model.vocab_size)
  grads = jax.jit(jax.grad(lambda p: ebt_jax.text_ebt_loss(p, tokens, c, key=jax.random.key(2))[0]))(params)
  _assert_trees_equal(import_official(export_official(grads, c), c), grads)


def test_bad_state_dicts_raise_clear_errors():
  c = tiny_config("time_embed")
  sd = export_official(ebt_jax.init_params(c, jax.random.key(0)), c)
  missing = dict(sd)
  del missing["transformer.layers.1.attention.wk.weight"]
  with pytest.raises(ValueError, match=r"lacks 1 entries.*layers\.1\.attention\.wk"):
    import_official(missing, c)
  extra = dict(sd, **{"transformer.layers.2.ffn_norm.weight": np.ones(16)})
  with pytest.raises(ValueError, match=r"does not use.*layers\.2\.ffn_norm"):
    import_official(extra, c)
  bad = dict(sd, **{"transformer.layers.0.feed_forward.w1.weight": np.ones((15, 16))})
  with pytest.raises(ValueError, match=r"feed_forward\.w1\.weight has shape \(15, 16\)"):
    import_official(bad, c)
  bad = dict(sd, **{"transformer.layers.0.attention.wq.weight": np.ones((12, 16))})
  with pytest.raises(ValueError, match=r"attention\.wq\.weight has shape \(12, 16\)"):
    import_official(bad, c)
  # A time_embed state dict does not fit an adaln config.
  c.model.ebt_type = "adaln"
  with pytest.raises(ValueError, match="lacks"):
    import_official(sd, c)
