"""Official PyTorch state_dict names <-> this project's parameter tree.

The mapping is linear (transposes, head reshapes and stacking per-layer tensors along
the `layers` axis), so it converts a dict of gradients with the official names just as it
converts weights: the result compares leaf by leaf with `jax.grad` output. torch Linear
weights are [out, in]; ours are [in, out] (heads split out for attention).
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import numpy as np

from ebt_jax.errors import ConfigError
from ebt_jax.models.params import shapes_tree
from ebt_jax import tasks

LIGHTNING_PREFIX = "model."


def _linear_in_out(w):       # torch [out, in] -> [in, out]
  return w.T


def _qkv(w, shape):          # [N*H, D] -> [D, N, H]
  return w.T.reshape(shape)


def _out_proj(w, shape):     # [D, N*H] -> [N, H, D]
  return w.T.reshape(shape)


def _entries(config) -> dict[str, tuple[tuple, int | None, Callable, Callable]]:
  """official name -> (param path, layer index or None, to_ours, to_official)."""
  shapes = shapes_tree(tasks.build(config).param_specs())
  ident = (lambda w: w, lambda w: w)
  lin = (_linear_in_out, _linear_in_out)
  entries = {"embeddings.weight": (("embed",), None, *ident),
             "transformer.norm.weight": (("final_norm",), None, *ident)}
  b = shapes["blocks"]
  qkv_shape, out_shape = b["wq"][1:], b["wo"][1:]
  for i in range(config.model.n_layers):
    pre = f"transformer.layers.{i}."
    for name in ("wq", "wk", "wv"):
      entries[f"{pre}attention.{name}.weight"] = (
          ("blocks", name), i, lambda w: _qkv(w, qkv_shape), lambda w: w.reshape(w.shape[0], -1).T)
    entries[f"{pre}attention.wo.weight"] = (
        ("blocks", "wo"), i, lambda w: _out_proj(w, out_shape), lambda w: w.reshape(-1, w.shape[-1]).T)
    for name in ("w1", "w2", "w3"):
      entries[f"{pre}feed_forward.{name}.weight"] = (("blocks", name), i, *lin)
    entries[f"{pre}attention_norm.weight"] = (("blocks", "attn_norm"), i, *ident)
    entries[f"{pre}ffn_norm.weight"] = (("blocks", "ffn_norm"), i, *ident)
    if "mod_w" in b:
      entries[f"{pre}adaLN_modulation.1.weight"] = (("blocks", "mod_w"), i, *lin)
      entries[f"{pre}adaLN_modulation.1.bias"] = (("blocks", "mod_b"), i, *ident)

  if "out" in shapes:   # the Transformer++ baseline's softmax head
    entries["output.weight"] = (("out",), None, *lin)
    return entries

  row = (lambda w: w[0], lambda w: w[None, :])   # Linear(D, 1).weight [1, D] <-> [D]
  entries["alpha"] = (("alpha",), None, *ident)
  entries["langevin_dynamics_noise_std"] = (("langevin_std",), None, *ident)
  if "v2e" in shapes:
    entries["vocab_to_embed.weight"] = (("v2e",), None, *lin)
  if "step_embed" in shapes:
    entries["transformer.time_embeddings.weight"] = (("step_embed",), None, *ident)
  if "final_mod_w" in shapes:
    entries["transformer.final_layer.linear.weight"] = (("head",), None, *row)
    entries["transformer.final_layer.adaLN_modulation.1.weight"] = (("final_mod_w",), None, *lin)
    entries["transformer.final_layer.adaLN_modulation.1.bias"] = (("final_mod_b",), None, *ident)
  else:
    entries["transformer.final_layer.weight"] = (("head",), None, *row)
  return entries


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):           # a torch tensor, without importing torch
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def import_official(state_dict: Mapping, config, dtype=np.float32) -> dict:
  """The project's params from an official NLP EBT (or baseline) state_dict.

  Accepts torch tensors or arrays, with or without Lightning's leading `model.` prefix.
  Missing, unexpected or mis-shaped entries raise `ConfigError` (a ValueError) naming them.
  """
  sd = {(k[len(LIGHTNING_PREFIX):] if k.startswith(LIGHTNING_PREFIX) else k): v
        for k, v in state_dict.items()}
  entries = _entries(config)
  missing = sorted(set(entries) - set(sd))
  unexpected = sorted(set(sd) - set(entries))
  if missing:
    raise ConfigError(f"import_official: state_dict lacks {len(missing)} entries the config "
                     f"needs, e.g. {missing[:3]}")
  if unexpected:
    raise ConfigError(f"import_official: state_dict has {len(unexpected)} entries this config "
                     f"does not use, e.g. {unexpected[:3]} (check model.ebt_type, "
                     f"model.n_layers and model.tied_v2e)")
  shapes = shapes_tree(tasks.build(config).param_specs())
  per_leaf: dict[tuple, dict] = {}
  for name, (path, layer, to_ours, _) in entries.items():
    leaf_shape = _get(shapes, path)
    want = leaf_shape[1:] if layer is not None else leaf_shape
    try:
      array = _to_numpy(sd[name]).astype(dtype)
    except (TypeError, ValueError):
      raise ConfigError(f"import_official: {name} is not a tensor (a "
                        f"{type(sd[name]).__name__})") from None
    value = _to_ours_checked(name, array, to_ours, tuple(want))
    per_leaf.setdefault(path, {})[layer] = value
  params: dict = {}
  for path, values in per_leaf.items():
    value = np.stack([values[i] for i in sorted(values)]) if None not in values else values[None]
    _set(params, path, jax.numpy.asarray(value))
  return params


def _to_ours_checked(name, array, to_ours, want_shape):
  try:
    out = to_ours(array)
  except ValueError:
    out = None
  if out is None or tuple(out.shape) != want_shape:
    raise ConfigError(f"import_official: {name} has shape {tuple(array.shape)}, which does not "
                     f"map onto the expected parameter shape {want_shape}")
  return out


def export_official(params: dict, config) -> dict[str, np.ndarray]:
  """The inverse of `import_official`: official names -> numpy arrays in torch layout."""
  out = {}
  for name, (path, layer, _, to_official) in _entries(config).items():
    value = np.asarray(_get(params, path))
    out[name] = to_official(value[layer] if layer is not None else value)
  return out
