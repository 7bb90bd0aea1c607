"""Reads PyTorch checkpoint files (`torch.save` zip format: .pt, Lightning .ckpt) without torch.

A torch file is a zip holding `data.pkl` (the pickled object graph) and one raw buffer per
tensor storage. This unpickler rebuilds tensors as numpy arrays and resolves only a fixed
set of globals (tensor/storage rebuilders, OrderedDict, builtin containers); any other
class (Lightning's AttributeDict, argparse.Namespace, ...) becomes an inert dict-like
stub. So no code from the file runs, and neither torch nor Lightning must be installed.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_SAFE_BUILTINS = {("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset",
                                            "int", "float", "str", "bytes", "bool", "slice")}


class TorchFileError(ValueError):
  pass


class _Stub(dict):
  """Stands in for any class the file names but this reader does not trust."""

  def __init__(self, *args, **kwargs):
    super().__init__()

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.update(state)
    elif isinstance(state, tuple) and state and isinstance(state[-1], dict):
      self.update(state[-1])


class _StorageType:
  def __init__(self, name):
    if name not in _STORAGE_DTYPES:
      raise TorchFileError(f"unsupported tensor storage type torch.{name}")
    self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *unused):
  if not size:
    return np.array(storage[offset])
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data, *unused):
  return data


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix

  def find_class(self, module, name):
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
      return _rebuild_parameter
    if module == "torch" and name.endswith("Storage"):
      return _StorageType(name)
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) in _SAFE_BUILTINS:
      return super().find_class(module, name)
    return _Stub

  def persistent_load(self, pid):
    kind, storage_type, key, _location, numel = pid
    if kind != "storage":
      raise TorchFileError(f"unsupported persistent id {kind!r}")
    raw = self._archive.read(f"{self._prefix}/data/{key}")
    return np.frombuffer(raw, dtype=storage_type.dtype, count=numel)


def load_torch_file(path) -> object:
  """The object `torch.save` wrote to `path`, with tensors as numpy arrays."""
  path = Path(path)
  if not path.is_file():
    raise TorchFileError(f"{path}: no such file")
  if not zipfile.is_zipfile(path):
    raise TorchFileError(f"{path}: not a torch zip checkpoint (torch.save since PyTorch 1.6)")
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise TorchFileError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
    prefix = pickles[0][: -len("/data.pkl")]
    with archive.open(pickles[0]) as f:
      try:
        return _Unpickler(f, archive, prefix).load()
      except (pickle.UnpicklingError, KeyError, EOFError) as e:
        raise TorchFileError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def state_dict_and_hparams(obj) -> tuple[dict, dict | None]:
  """(state_dict, hyperparameters or None) of a Lightning checkpoint or a bare state_dict."""
  if isinstance(obj, dict) and "state_dict" in obj:
    hparams = obj.get("hyper_parameters")
    return dict(obj["state_dict"]), (dict(hparams) if hparams is not None else None)
  if isinstance(obj, dict) and all(isinstance(v, np.ndarray) for v in obj.values()):
    return dict(obj), None
  raise TorchFileError("expected a Lightning checkpoint (with 'state_dict') or a state_dict "
                       "of tensors")
