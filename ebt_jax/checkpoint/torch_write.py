"""Writes PyTorch checkpoint files (`torch.save`'s zip format) without torch.

The inverse of `torch_file.py`'s restricted reader, for `ebt export-torch`. `torch.save`
writes a zip (stored, not compressed) of

    archive/data.pkl     the object graph, pickle protocol 2; every tensor is a call
                         torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
                         requires_grad, OrderedDict()) whose storage is a persistent id
                         ("storage", torch.<T>Storage, key, "cpu", numel)
    archive/data/<key>   each storage's raw bytes (little-endian)
    archive/byteorder    "little"
    archive/version      "3"

with every member's data aligned to 64 bytes (torch's writer pads the local header's extra
field; its reader memory-maps storages in place with `mmap=True`).

The pickle stream is emitted opcode by opcode rather than through `pickle.Pickler`: the
graph names torch's globals, which a Pickler would have to import. Only what a Lightning
checkpoint of parameters holds is written: dicts (OrderedDict kept), lists, tuples,
strings, numbers, booleans, None and numpy arrays (as tensors).
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

from ebt_jax import atomic

_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage", np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage", np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage",
}
_ALIGN = 64


class _Emitter:
  """Pickle protocol-2 opcodes for a tensor-holding object graph (no memo: nothing shared)."""

  def __init__(self):
    self.out = bytearray(pickle.PROTO + b"\x02")
    # The arrays themselves, C-ordered little-endian (`_tensor` copies only where they are
    # not), written out one at a time: no second copy of the checkpoint in memory.
    self.storages: list[np.ndarray] = []

  def global_(self, module: str, name: str):
    self.out += pickle.GLOBAL + f"{module}\n{name}\n".encode()

  def save(self, obj):
    if obj is None:
      self.out += pickle.NONE
    elif isinstance(obj, (bool, np.bool_)):
      self.out += pickle.NEWTRUE if obj else pickle.NEWFALSE
    elif isinstance(obj, (int, np.integer)):
      self._int(int(obj))
    elif isinstance(obj, (float, np.floating)):
      self.out += pickle.BINFLOAT + struct.pack(">d", float(obj))
    elif isinstance(obj, str):
      raw = obj.encode("utf-8")
      self.out += pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw
    elif isinstance(obj, np.ndarray):
      self._tensor(obj)
    elif isinstance(obj, dict):
      if isinstance(obj, collections.OrderedDict):
        self.global_("collections", "OrderedDict")
        self.out += pickle.EMPTY_TUPLE + pickle.REDUCE
      else:
        self.out += pickle.EMPTY_DICT
      if obj:
        self.out += pickle.MARK
        for key, value in obj.items():
          self.save(key)
          self.save(value)
        self.out += pickle.SETITEMS
    elif isinstance(obj, list):
      self.out += pickle.EMPTY_LIST
      if obj:
        self.out += pickle.MARK
        for value in obj:
          self.save(value)
        self.out += pickle.APPENDS
    elif isinstance(obj, tuple):
      self.out += pickle.MARK
      for value in obj:
        self.save(value)
      self.out += pickle.TUPLE
    else:
      raise TypeError(f"save_torch_file: cannot write a {type(obj).__name__}")

  def _int(self, n: int):
    if 0 <= n < 256:
      self.out += pickle.BININT1 + bytes([n])
    elif -2 ** 31 <= n < 2 ** 31:
      self.out += pickle.BININT + struct.pack("<i", n)
    else:
      raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
      self.out += pickle.LONG1 + bytes([len(raw)]) + raw

  def _tensor(self, array: np.ndarray):
    if array.dtype not in _STORAGE_NAMES:
      raise TypeError(f"save_torch_file: no torch storage for dtype {array.dtype}")
    array = np.asarray(array, order="C")   # the rebuild below names C-order strides
    key = str(len(self.storages))
    self.storages.append(array.astype(array.dtype.newbyteorder("<"), copy=False))
    self.global_("torch._utils", "_rebuild_tensor_v2")
    self.out += pickle.MARK
    self.out += pickle.MARK                              # the storage's persistent id
    self.save("storage")
    self.global_("torch", _STORAGE_NAMES[array.dtype])
    self.save(key)
    self.save("cpu")
    self.save(array.size)
    self.out += pickle.TUPLE + pickle.BINPERSID
    self.save(0)                                         # storage offset
    self.save(tuple(array.shape))
    self.save(tuple(int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)))  # C order
    self.save(False)                                     # requires_grad
    self.save(collections.OrderedDict())                 # backward hooks
    self.out += pickle.TUPLE + pickle.REDUCE


def _write_aligned(archive: zipfile.ZipFile, name: str, data) -> None:
  """A stored member (bytes, or an array's buffer) whose data starts at a multiple of 64
  bytes (torch's own layout)."""
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  header_end = archive.fp.tell() + 30 + len(name.encode()) + 4   # + the extra field's header
  pad = -header_end % _ALIGN
  info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad      # torch's "FB" padding record
  # An array's bytes as a view (any dtype, any shape, empty too).
  raw = memoryview(data.reshape(-1).view(np.uint8)) if isinstance(data, np.ndarray) else data
  info.file_size = len(raw)
  with archive.open(info, "w") as member:
    member.write(raw)


def save_torch_file(obj, path) -> None:
  """Writes `obj` (numpy arrays for tensors) to `path` as `torch.save(obj, path)` would.
  The file appears whole or not at all: it is written beside `path` and renamed over it."""
  emitter = _Emitter()
  emitter.save(obj)
  emitter.out += pickle.STOP
  prefix = "archive"
  with atomic.replacing(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
    _write_aligned(archive, f"{prefix}/data.pkl", bytes(emitter.out))
    _write_aligned(archive, f"{prefix}/byteorder", b"little")
    for key, array in enumerate(emitter.storages):
      _write_aligned(archive, f"{prefix}/data/{key}", array)
    _write_aligned(archive, f"{prefix}/version", b"3\n")
