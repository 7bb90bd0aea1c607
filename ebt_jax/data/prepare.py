"""Token shards: `prepare_shards` writes them once, `read_shards` memory-maps them per run.

A shard directory holds `train.bin` and `validation.bin`, each the split's whole token
stream (documents each followed by the tokenizer's separator, exactly what the pipeline
builds from the text itself) as raw little-endian uint16, or uint32 for vocabularies
above 65536, plus `meta.json`. Large or slow-to-tokenize corpora are tokenized once
this way; runs then start instantly and share the page cache across processes.

Writes are crash-safe: the old `meta.json` is removed first, every file is written under
a temporary name and renamed into place, and `meta.json` comes last, so a directory with
a `meta.json` always holds a complete set. Run it from one process (the `ebt prepare`
command); training processes only read.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import tqdm

from ebt_jax import atomic
from ebt_jax.errors import ConfigError
from ebt_jax.data import sources
from ebt_jax.data.tokenizers import make_tokenizer, stream_dtype

FORMAT = "ebt_jax.token_shards.v1"
_DOCS_PER_CHUNK = 256  # tokenized together: big enough for encode_batch, small for the bar


def _source_description(d) -> dict:
  desc = {"source": d.source, "validation_fraction": d.validation_fraction}
  if d.source == "stdlib":
    desc["python"] = sys.version.split()[0]
  elif d.source == "text":
    desc.update(path=os.path.abspath(os.path.expanduser(d.path)), jsonl_field=d.jsonl_field)
  else:
    desc.update(seed=d.seed, **d[d.source].to_dict())
  return desc


def _write_split(path: str, docs: list[str], tokenizer, dtype, bar) -> int:
  count = 0
  with atomic.replacing(path, "wb") as f:
    for start in range(0, len(docs), _DOCS_PER_CHUNK):
      chunk = docs[start:start + _DOCS_PER_CHUNK]
      tokens = tokenizer.encode_documents(chunk).astype(dtype.newbyteorder("<"), copy=False)
      f.write(tokens.tobytes())
      count += tokens.size
      bar.update(len(chunk))
  return count


def prepare_shards(config, out_dir: str, *, progress: bool = True) -> dict:
  """Tokenizes `config.data`'s documents into `out_dir`; returns the meta.json contents."""
  d = config.data
  if d.source == "shards":
    raise ConfigError("data.source: prepare_shards needs a document source "
                      "(stdlib, text, dyck, arithmetic), got 'shards'")
  tokenizer = make_tokenizer(d)
  docs = sources.documents(d)
  dtype = stream_dtype(tokenizer.vocab_size)
  os.makedirs(out_dir, exist_ok=True)
  meta_path = os.path.join(out_dir, "meta.json")
  if os.path.exists(meta_path):
    os.remove(meta_path)  # until the new one lands, the directory reads as incomplete
  counts = {}
  total = sum(len(docs[s]) for s in sources.SPLITS)
  with tqdm.tqdm(total=total, unit="doc", desc="tokenizing", disable=not progress) as bar:
    for split in sources.SPLITS:
      counts[split] = _write_split(os.path.join(out_dir, f"{split}.bin"), docs[split],
                                   tokenizer, dtype, bar)
  meta = {
      "format": FORMAT,
      "dtype": dtype.name,
      "vocab_size": tokenizer.vocab_size,
      "tokenizer": tokenizer.describe(),
      "separator_id": tokenizer.separator_id,
      "tokens": counts,
      "documents": {s: len(docs[s]) for s in sources.SPLITS},
      "source": _source_description(d),
  }
  atomic.write_json(meta_path, meta, sort_keys=True)
  return meta


def read_shards(path: str, tokenizer) -> dict[str, np.ndarray]:
  """{"train", "validation"} token streams memory-mapped read-only from a shard directory."""
  meta_path = os.path.join(os.path.expanduser(path), "meta.json")
  if not os.path.isfile(meta_path):
    raise ConfigError(f"data.path: expected a directory written by `ebt prepare` (with "
                      f"meta.json), got {path!r}")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise ConfigError(f"data.path: {meta_path} has format {meta.get('format')!r}, "
                      f"expected {FORMAT!r}")
  if meta.get("tokenizer") != tokenizer.describe():
    raise ConfigError(f"data.path: the shards in {path!r} were written with tokenizer "
                      f"{meta.get('tokenizer')}, but data.tokenizer gives {tokenizer.describe()}")
  dtype = np.dtype(meta["dtype"]).newbyteorder("<")
  streams = {}
  for split in sources.SPLITS:
    file = os.path.join(os.path.dirname(meta_path), f"{split}.bin")
    expected = meta["tokens"][split]
    size = os.path.getsize(file) if os.path.isfile(file) else -1
    if size != expected * dtype.itemsize:
      raise ConfigError(f"data.path: {file} should hold {expected} tokens "
                        f"({expected * dtype.itemsize} bytes), found {size} bytes")
    # np.memmap cannot map an empty file; the pipeline then reports the empty split.
    streams[split] = (np.memmap(file, dtype=dtype, mode="r") if expected
                      else np.zeros((0,), dtype))
  return streams
