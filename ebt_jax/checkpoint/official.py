"""Official PyTorch state_dict names <-> this project's parameter tree.

The mapping is linear (transposes, head reshapes and stacking per-layer tensors along
the `layers` axis), so it converts a dict of gradients with the official names just as it
converts weights: the result compares leaf by leaf with `jax.grad` output. torch Linear
weights are [out, in]; ours are [in, out] (heads split out for attention).

Every model with an official counterpart: the autoregressive transformer of the text EBT,
the Transformer++ and the video EBT (`model/ar_*.py`), and the DiT stack of the image EBT
and the DiT baseline. Two kinds of official entries are not parameters here: the DiT
stack's frozen sin-cos `pos_embed` (checked against the table this project computes, and
written back on export) and the video EBT's frozen image encoder (`split_frozen`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import numpy as np

from ebt_jax.errors import ConfigError
from ebt_jax.models import dit_blocks
from ebt_jax.models.params import shapes_tree
from ebt_jax import tasks

LIGHTNING_PREFIX = "model."
FROZEN_PREFIXES = ("image_encoder.",)


def _linear_in_out(w):       # torch [out, in] -> [in, out]
  return w.T


def _qkv(w, shape):          # [N*H, D] -> [D, N, H]
  return w.T.reshape(shape)


def _out_proj(w, shape):     # [D, N*H] -> [N, H, D]
  return w.T.reshape(shape)


def _entries(config) -> dict[str, tuple[tuple, int | None, Callable, Callable]]:
  """official name -> (param path, layer index or None, to_ours, to_official)."""
  task = tasks.build(config)
  shapes = shapes_tree(task.param_specs())
  if "patch_w" in shapes:
    return _dit_stack_entries(shapes, config.model.n_layers)
  return _ar_entries(shapes, config.model.n_layers, getattr(task.dims, "vocab_size", None))


_IDENT = (lambda w: w, lambda w: w)
_LIN = (_linear_in_out, _linear_in_out)
_ROW = (lambda w: w[0], lambda w: w[None, :])   # Linear(D, 1).weight / Embedding(1, D) [1, D]


def _vocab_padded(pair, vocab: int | None, width: int, axis: int):
  """`pair` (to_ours, to_official) for a table whose vocabulary axis `axis` (ours) is
  padded from `vocab` to `width` (`model.vocab_multiple`): importing adds zero rows,
  exporting drops them, so official checkpoints never see the padding."""
  if vocab is None or vocab == width:
    return pair
  to_ours, to_official = pair

  def pad(w):
    ours = to_ours(w)
    if ours.shape[axis] != vocab:
      raise ValueError(f"{ours.shape[axis]} tokens, not {vocab}")
    padding = [(0, 0)] * ours.ndim
    padding[axis] = (0, width - vocab)
    return np.pad(ours, padding)

  return pad, lambda w: to_official(np.take(w, np.arange(vocab), axis=axis))


def _ar_entries(shapes, n_layers, vocab: int | None):
  """The autoregressive transformer (`model/ar_*.py`): text EBT, Transformer++, video EBT
  (`vocab`: the text models' real vocabulary, where their tables are padded)."""
  entries = {"transformer.norm.weight": (("final_norm",), None, *_IDENT)}
  if "embed" in shapes:
    entries["embeddings.weight"] = (
        ("embed",), None, *_vocab_padded(_IDENT, vocab, shapes["embed"][0], 0))
  b = shapes["blocks"]
  qkv_shape, out_shape = b["wq"][1:], b["wo"][1:]
  for i in range(n_layers):
    pre = f"transformer.layers.{i}."
    for name in ("wq", "wk", "wv"):
      entries[f"{pre}attention.{name}.weight"] = (
          ("blocks", name), i, lambda w: _qkv(w, qkv_shape), lambda w: w.reshape(w.shape[0], -1).T)
    entries[f"{pre}attention.wo.weight"] = (
        ("blocks", "wo"), i, lambda w: _out_proj(w, out_shape), lambda w: w.reshape(-1, w.shape[-1]).T)
    for name in ("w1", "w2", "w3"):
      entries[f"{pre}feed_forward.{name}.weight"] = (("blocks", name), i, *_LIN)
    entries[f"{pre}attention_norm.weight"] = (("blocks", "attn_norm"), i, *_IDENT)
    entries[f"{pre}ffn_norm.weight"] = (("blocks", "ffn_norm"), i, *_IDENT)
    if "mod_w" in b:
      entries[f"{pre}adaLN_modulation.1.weight"] = (("blocks", "mod_w"), i, *_LIN)
      entries[f"{pre}adaLN_modulation.1.bias"] = (("blocks", "mod_b"), i, *_IDENT)

  if "out" in shapes:   # the Transformer++ baseline's softmax head
    entries["output.weight"] = (("out",), None,
                                *_vocab_padded(_LIN, vocab, shapes["out"][1], 1))
    return entries

  entries["alpha"] = (("alpha",), None, *_IDENT)
  entries["langevin_dynamics_noise_std"] = (("langevin_std",), None, *_IDENT)
  if "v2e" in shapes:
    entries["vocab_to_embed.weight"] = (("v2e",), None,
                                        *_vocab_padded(_LIN, vocab, shapes["v2e"][0], 0))
  if "proj_w" in shapes:   # the video EBT's Linear(3136 -> D) from VAE latents
    entries["encoder_down_projection.weight"] = (("proj_w",), None, *_LIN)
    entries["encoder_down_projection.bias"] = (("proj_b",), None, *_IDENT)
  if "step_embed" in shapes:
    entries["transformer.time_embeddings.weight"] = (("step_embed",), None, *_IDENT)
  if "final_mod_w" in shapes:
    entries["transformer.final_layer.linear.weight"] = (("head",), None, *_ROW)
    entries["transformer.final_layer.adaLN_modulation.1.weight"] = (("final_mod_w",), None, *_LIN)
    entries["transformer.final_layer.adaLN_modulation.1.bias"] = (("final_mod_b",), None, *_IDENT)
  else:
    entries["transformer.final_layer.weight"] = (("head",), None, *_ROW)
  return entries


def _dit_stack_entries(shapes, n_layers):
  """The DiT stack (`model/bi_ebt_adaln.py` EBT, `model/diffusion_transformer.py` DiT), as
  the image EBT (`transformer.`) and the DiT baseline (`diffusion_transformer.`) hold it.
  The patch embedding is a Conv2d weight [D, C, p, p] (ours [p, p, C, D]); timm's fused qkv
  Linear has outputs ordered (q/k/v, head, head_dim), as ours."""
  ebt = "condition" in shapes
  pre = "transformer." if ebt else "diffusion_transformer."
  b = shapes["blocks"]
  qkv_shape, out_shape = b["qkv_w"][1:], b["out_w"][1:]
  entries = {
      f"{pre}x_embedder.proj.weight": (("patch_w",), None, lambda w: w.transpose(2, 3, 1, 0),
                                       lambda w: w.transpose(3, 2, 0, 1)),
      f"{pre}x_embedder.proj.bias": (("patch_b",), None, *_IDENT),
      f"{pre}final_layer.adaLN_modulation.1.weight": (("final_mod_w",), None, *_LIN),
      f"{pre}final_layer.adaLN_modulation.1.bias": (("final_mod_b",), None, *_IDENT),
  }
  for i in range(n_layers):
    blk = f"{pre}blocks.{i}."
    entries[f"{blk}attn.qkv.weight"] = (("blocks", "qkv_w"), i, lambda w: _qkv(w, qkv_shape),
                                        lambda w: w.reshape(w.shape[0], -1).T)
    entries[f"{blk}attn.qkv.bias"] = (("blocks", "qkv_b"), i, lambda w: w.reshape(qkv_shape[1:]),
                                      lambda w: w.reshape(-1))
    entries[f"{blk}attn.proj.weight"] = (("blocks", "out_w"), i, lambda w: _out_proj(w, out_shape),
                                         lambda w: w.reshape(-1, w.shape[-1]).T)
    entries[f"{blk}attn.proj.bias"] = (("blocks", "out_b"), i, *_IDENT)
    for fc in ("fc1", "fc2"):
      entries[f"{blk}mlp.{fc}.weight"] = (("blocks", f"{fc}_w"), i, *_LIN)
      entries[f"{blk}mlp.{fc}.bias"] = (("blocks", f"{fc}_b"), i, *_IDENT)
    entries[f"{blk}adaLN_modulation.1.weight"] = (("blocks", "mod_w"), i, *_LIN)
    entries[f"{blk}adaLN_modulation.1.bias"] = (("blocks", "mod_b"), i, *_IDENT)
  if ebt:
    entries.update({
        "alpha": (("alpha",), None, *_IDENT),
        "langevin_dynamics_noise_std": (("langevin_std",), None, *_IDENT),
        "learned_adaln_condition.weight": (("condition",), None, *_ROW),
        f"{pre}final_layer.linear.weight": (("head",), None, *_ROW)})
  else:
    entries.update({
        f"{pre}t_embedder.mlp.0.weight": (("t_w1",), None, *_LIN),
        f"{pre}t_embedder.mlp.0.bias": (("t_b1",), None, *_IDENT),
        f"{pre}t_embedder.mlp.2.weight": (("t_w2",), None, *_LIN),
        f"{pre}t_embedder.mlp.2.bias": (("t_b2",), None, *_IDENT),
        f"{pre}final_layer.linear.weight": (("out_w",), None, *_LIN),
        f"{pre}final_layer.linear.bias": (("out_b",), None, *_IDENT)})
  return entries


def _fixed(config) -> dict[str, np.ndarray]:
  """Official state_dict entries that are not parameters here: the DiT stack's frozen
  sin-cos position table, [1, T, D] float32 (recomputed here from the config)."""
  shapes = shapes_tree(tasks.build(config).param_specs())
  if "patch_w" not in shapes:
    return {}
  pre = "transformer." if "condition" in shapes else "diffusion_transformer."
  m = config.model
  table = dit_blocks.sincos_2d(m.dim, m.image_size // m.patch_size)
  return {f"{pre}pos_embed": table.astype(np.float32)[None]}


def split_frozen(state_dict: Mapping) -> tuple[dict, list[str]]:
  """(state_dict without the official frozen encoders, the names left out). The video EBT
  holds its frozen image encoder (the SD VAE or DINOv2) as `image_encoder.*`; this
  project reads precomputed latents, so those weights are not imported."""
  kept = {k: v for k, v in state_dict.items()
          if not k.removeprefix(LIGHTNING_PREFIX).startswith(FROZEN_PREFIXES)}
  return kept, sorted(set(state_dict) - set(kept))


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
  """The project's params from an official model's state_dict (text EBT or Transformer++,
  image EBT or DiT, video EBT).

  Accepts torch tensors or arrays, with or without Lightning's leading `model.` prefix;
  the frozen encoders' entries (`split_frozen`) are left out.
  Missing, unexpected or mis-shaped entries raise `ConfigError` (a ValueError) naming them.
  """
  sd, _ = split_frozen({k.removeprefix(LIGHTNING_PREFIX): v for k, v in state_dict.items()})
  entries, fixed = _entries(config), _fixed(config)
  missing = sorted((set(entries) | set(fixed)) - set(sd))
  unexpected = sorted(set(sd) - set(entries) - set(fixed))
  if missing:
    raise ConfigError(f"import_official: state_dict lacks {len(missing)} entries the config "
                     f"needs, e.g. {missing[:3]}")
  if unexpected:
    raise ConfigError(f"import_official: state_dict has {len(unexpected)} entries this config "
                     f"does not use, e.g. {unexpected[:3]} (check the model kind, model.ebt_type, "
                     f"model.n_layers, model.tied_v2e and model.latent_dim)")
  for name, table in fixed.items():
    value = _to_numpy(sd[name])
    if value.shape != table.shape or not np.allclose(value, table, atol=1e-6):
      raise ConfigError(f"import_official: {name} differs from the fixed table this config "
                        f"computes (check model.image_size, model.patch_size and model.dim)")
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
  """The inverse of `import_official`: official names -> numpy arrays in torch layout
  (with the fixed position table, without a video EBT's frozen encoder)."""
  out = _fixed(config)
  for name, (path, layer, _, to_official) in _entries(config).items():
    value = np.asarray(_get(params, path))
    out[name] = to_official(value[layer] if layer is not None else value)
  return out
