"""Tokenizers: bytes (the default, nothing to download) and Hugging Face `tokenizer.json` files.

Both expose the same small surface the rest of the project uses: `vocab_size`, `pad_id`,
`encode(str)`, `decode(ids)`, plus `encode_documents(docs)` (the one-stream form the data
pipeline needs) and `describe()` (what a token shard records so that shards are never
read with a different tokenizer).

`pad_id` is the target id the loss ignores, and documents are separated by it
(`separator_id`), as the official code does (its pad token is the tokenizer's end-of-text
token): the model is never trained to predict a boundary. For bytes it is 0, the NUL byte,
which never occurs in text. For a Hugging Face vocabulary it is its end-of-text token, so
a real token at id 0 (GPT-2's "!") is trained on; a vocabulary without one falls back to
id 0.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Sequence

import numpy as np

from ebt_jax.errors import ConfigError

# End-of-document tokens of common tokenizer.json files (GPT-2/NeoX, Llama 1/2, Gemma, Llama 3).
_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


def stream_dtype(vocab_size: int) -> np.dtype:
  """The narrowest unsigned dtype holding every id (token streams stay small in memory)."""
  return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class ByteTokenizer:
  """Token id = UTF-8 byte value."""

  vocab_size = 256
  pad_id = 0
  eos_id = None
  separator_id = 0

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8", errors="replace"), np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    ids = np.asarray(ids, np.int64).reshape(-1)
    # A model with a larger vocabulary may emit ids above 255: 0xFF is never valid UTF-8, so
    # they decode to U+FFFD like any other undecodable byte instead of wrapping around.
    ids = np.where((ids < 0) | (ids > 255), 0xFF, ids)
    return bytes(ids.astype(np.uint8)).decode("utf-8", errors="replace")

  def encode_documents(self, docs: Sequence[str]) -> np.ndarray:
    """All documents, each followed by the separator, as one stream (one encode, no loop)."""
    if not docs:
      return np.zeros((0,), stream_dtype(self.vocab_size))
    joined = ("\0".join(docs) + "\0").encode("utf-8", errors="replace")
    return np.frombuffer(joined, np.uint8).astype(stream_dtype(self.vocab_size))

  def describe(self) -> dict:
    return {"kind": "byte", "vocab_size": self.vocab_size}


class HFTokenizer:
  """A Hugging Face `tokenizers` tokenizer.json (the optional `tokenizers` package)."""

  def __init__(self, path: str):
    try:
      import tokenizers  # optional: only large-vocabulary runs need it
    except ImportError:
      raise ConfigError(f"data.tokenizer: {path!r} needs the optional `tokenizers` package; "
                        'pip install "ebt_jax[tokenizers]"') from None
    self.path = path
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the Rust library raises a bare Exception for bad JSON
      detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise ConfigError(f"data.tokenizer: {path} is not a valid tokenizer.json "
                        f"({detail})") from None
    self.vocab_size = self._tok.get_vocab_size()
    with open(path, "rb") as f:
      self._sha256 = hashlib.sha256(f.read()).hexdigest()
    found = [self._tok.token_to_id(name) for name in _EOS_NAMES]
    self.eos_id = next((i for i in found if i is not None), None)
    self.pad_id = self.separator_id = 0 if self.eos_id is None else self.eos_id

  def encode(self, text: str) -> np.ndarray:
    # No BOS/EOS: the pipeline cuts windows out of one stream and places separators itself.
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                            skip_special_tokens=False)

  def encode_documents(self, docs: Sequence[str]) -> np.ndarray:
    dtype = stream_dtype(self.vocab_size)
    if not docs:
      return np.zeros((0,), dtype)
    # encode_batch runs in parallel inside the Rust library.
    encodings = self._tok.encode_batch(list(docs), add_special_tokens=False)
    sep = np.asarray([self.separator_id], dtype)
    parts = []
    for enc in encodings:
      parts.append(np.asarray(enc.ids, dtype))
      parts.append(sep)
    return np.concatenate(parts)

  def describe(self) -> dict:
    # The content hash, not the path: moving tokenizer.json must not invalidate shards.
    return {"kind": "hf", "vocab_size": self.vocab_size, "sha256": self._sha256}


def make_tokenizer(data_config) -> ByteTokenizer | HFTokenizer:
  name = data_config.tokenizer
  if name == "byte":
    return ByteTokenizer()
  path = os.path.expanduser(str(name))
  if not os.path.isfile(path):
    raise ConfigError(f"data.tokenizer: expected 'byte' or the path of a tokenizer.json, "
                      f"but {path!r} is not a file")
  stat = os.stat(path)
  return _hf_tokenizer(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _hf_tokenizer(path: str, mtime_ns: int, size: int) -> HFTokenizer:
  """One load per file version: tasks read the pad id wherever they are built."""
  return HFTokenizer(path)
