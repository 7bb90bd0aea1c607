"""Official state_dict names <-> params: round trips, torch files and clear errors."""

import collections
import io
import pickle
import zipfile

import chex
import jax
import numpy as np
import pytest

import ebt_jax
from ebt_jax.checkpoint import export_official, import_official
from ebt_jax.checkpoint.torch_file import TorchFileError, load_torch_file
from ebt_jax.training import runs
from conftest import EBT_TYPES, tiny_config


@pytest.mark.parametrize("kind,ebt_type,tied", [("ebt", t, False) for t in EBT_TYPES] +
                         [("ebt", "time_embed", True), ("transformer", "default", False)])
def test_round_trip(kind, ebt_type, tied):
  c = tiny_config(ebt_type, kind=kind)
  c.model.tied_v2e = tied
  params = ebt_jax.init_params(c, jax.random.key(0))
  state_dict = export_official(params, c)
  chex.assert_trees_all_equal(import_official(state_dict, c), params)
  # Lightning checkpoints prefix every name with "model.".
  chex.assert_trees_all_equal(
      import_official({"model." + k: v for k, v in state_dict.items()}, c), params)


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
  chex.assert_trees_all_equal(import_official(export_official(grads, c), c), grads)


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


class _Global:
  """A module-level name in a pickle stream (what torch.save writes for its classes)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle only checks that reduce functions are callable
    raise NotImplementedError


class _Tensor:
  def __init__(self, array):
    self.array = np.array(array, dtype=np.float32, order="C")  # keeps 0-d arrays 0-d


class _Namespace:  # pickled as argparse.Namespace, which the reader must not instantiate
  def __init__(self, **kw):
    self.kw = kw

  def __reduce__(self):
    return (_Global("argparse", "Namespace"), (), self.kw)


class _TorchFormatPickler(pickle._Pickler):
  """Writes the object graph the way torch.save does (tensor rebuild calls over storages
  named by persistent ids), so the reader is tested without torch installed."""

  dispatch = pickle._Pickler.dispatch.copy()

  def __init__(self, file, storages):
    super().__init__(file, protocol=2)
    self.storages = storages

  def _save_global_name(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  dispatch[_Global] = _save_global_name

  def _save_tensor(self, t):
    key = str(len(self.storages))
    self.storages[key] = t.array.tobytes()
    storage = _Storage(key, t.array.size)
    stride = tuple(s // 4 for s in t.array.strides)
    self.save_reduce(_Global("torch._utils", "_rebuild_tensor_v2"),
                     (storage, 0, t.array.shape, stride, False, collections.OrderedDict()),
                     obj=t)

  dispatch[_Tensor] = _save_tensor

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", _Global("torch", "FloatStorage"), obj.key, "cpu", obj.numel)
    return None


class _Storage:
  def __init__(self, key, numel):
    self.key, self.numel = key, numel


def write_torch_file(path, obj):
  storages, buffer = {}, io.BytesIO()
  _TorchFormatPickler(buffer, storages).dump(obj)
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", buffer.getvalue())
    z.writestr("archive/version", "3\n")
    for key, raw in storages.items():
      z.writestr(f"archive/data/{key}", raw)


def test_import_torch_checkpoint_files(tmp_path):
  hparams = {"modality": "NLP", "model_name": "ebt", "model_size": "", "embedding_dim": 16,
             "num_transformer_blocks": 2, "multiheaded_attention_heads": 2, "context_length": 6,
             "ebt_type": "time_embed", "mcmc_num_steps": 2, "mcmc_step_size": 2.0,
             "normalize_initial_condition": True, "num_gpus": 4, "run_name": "x"}
  c = tiny_config("time_embed")
  params = ebt_jax.init_params(c, jax.random.key(0))
  state_dict = {"model." + k: _Tensor(v) for k, v in export_official(params, c).items()}
  ckpt = tmp_path / "official.ckpt"
  write_torch_file(ckpt, {"epoch": 3, "state_dict": collections.OrderedDict(state_dict),
                          "hyper_parameters": hparams, "extra": _Namespace(lr=1.0)})
  # The config comes from the checkpoint's hyperparameters, the vocabulary from its weights.
  out = runs.import_torch_checkpoint(ckpt, tmp_path / "run")
  config, step, restored = runs.restore_params(out)
  assert step == 0 and config.model.vocab_size == 11 and config.thinking.step_size == 2.0
  chex.assert_trees_all_equal(restored, params)
  # A bare state_dict needs the config; without it the error names --config.
  bare = tmp_path / "weights.pt"
  write_torch_file(bare, collections.OrderedDict(state_dict))
  with pytest.raises(ebt_jax.errors.ConfigError, match="--config:.*bare state_dict"):
    runs.import_torch_checkpoint(bare, tmp_path / "run2")
  out = runs.import_torch_checkpoint(bare, tmp_path / "run2", c)
  chex.assert_trees_all_equal(runs.restore_params(out)[2], params)
  not_zip = tmp_path / "old.pt"
  not_zip.write_bytes(b"\x80\x02legacy")
  with pytest.raises(TorchFileError, match="not a torch zip checkpoint"):
    load_torch_file(not_zip)
