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
import zlib
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
  if not isinstance(storage, np.ndarray):
    raise TorchFileError(f"a tensor rebuild names no storage (got {type(storage).__name__})")
  try:
    offset, size, stride = int(offset), tuple(int(n) for n in size), tuple(int(s) for s in stride)
  except (TypeError, ValueError):
    raise TorchFileError("a tensor has a malformed offset, size or stride") from None
  # Bounds: the farthest element must lie inside the storage (as_strided does not check).
  last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
  if (len(size) != len(stride) or offset < 0 or min(size, default=0) < 0
      or min(stride, default=0) < 0 or last >= len(storage)):
    raise TorchFileError(f"a tensor of size {size}, stride {stride} at offset {offset} does not "
                         f"fit its storage of {len(storage)} elements")
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
    # torch.save writes ("storage", <torch.XStorage>, key, location, numel) for every storage.
    if not (isinstance(pid, tuple) and len(pid) == 5):
      raise TorchFileError(f"malformed persistent id {_short_repr(pid)} (expected a "
                           "('storage', type, key, location, numel) tuple)")
    kind, storage_type, key, _location, numel = pid
    if kind != "storage":
      raise TorchFileError(f"unsupported persistent id {_short_repr(kind)}")
    if not isinstance(storage_type, _StorageType):
      raise TorchFileError(f"malformed persistent id: {_short_repr(storage_type)} is not a torch "
                           "storage type")
    if not isinstance(key, str) or not isinstance(numel, int) or isinstance(numel, bool) \
        or numel < 0:
      raise TorchFileError(f"malformed persistent id: storage key {_short_repr(key)}, element "
                           f"count {_short_repr(numel)}")
    name = f"{self._prefix}/data/{key}"
    try:
      raw = self._archive.read(name)
    except KeyError:
      raise TorchFileError(f"the archive has no storage {name!r}") from None
    itemsize = np.dtype(storage_type.dtype).itemsize
    if len(raw) < numel * itemsize:
      raise TorchFileError(f"storage {name!r} holds {len(raw)} bytes, fewer than its "
                           f"{numel} elements need")
    return np.frombuffer(raw, dtype=storage_type.dtype, count=numel)


def _short_repr(value, limit: int = 60) -> str:
  text = repr(value).replace("\n", " ")
  return text if len(text) <= limit else text[: limit - 3] + "..."


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
      except TorchFileError as e:
        raise TorchFileError(f"{path}: {e}") from None
      # Whatever else a malformed stream raises (a stub or a rebuilder called with the wrong
      # arguments, a truncated or corrupt archive member) is a file this reader cannot use.
      except (pickle.UnpicklingError, KeyError, EOFError, ValueError, TypeError, AttributeError,
              IndexError, OverflowError, MemoryError, RecursionError, zipfile.BadZipFile,
              zlib.error) as e:
        detail = (str(e).strip().splitlines() or [""])[0]
        raise TorchFileError(f"{path}: unreadable ({type(e).__name__}: {detail})") from None


def state_dict_and_hparams(obj) -> tuple[dict, dict | None]:
  """(state_dict, hyperparameters or None) of a Lightning checkpoint or a bare state_dict."""
  if isinstance(obj, dict) and "state_dict" in obj:
    hparams = obj.get("hyper_parameters")
    if not (isinstance(obj["state_dict"], dict)
            and (hparams is None or isinstance(hparams, dict))):
      raise TorchFileError("the checkpoint's 'state_dict' and 'hyper_parameters' must be "
                           "dictionaries")
    return dict(obj["state_dict"]), (dict(hparams) if hparams is not None else None)
  if isinstance(obj, dict) and all(isinstance(v, np.ndarray) for v in obj.values()):
    return dict(obj), None
  raise TorchFileError("expected a Lightning checkpoint (with 'state_dict') or a state_dict "
                       "of tensors")
