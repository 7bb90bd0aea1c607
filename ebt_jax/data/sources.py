"""Document sources: the running interpreter's standard library, user text files, synthetic sets.

A source is a dict `{"train": [str, ...], "validation": [str, ...]}` of documents, the
same on every call. Real text is split by a stable hash (SHA-256) of each document's key,
a path relative to the corpus root written with "/", so the split survives moving the
corpus, re-ordering the files, and changes of `data.seed`; adding files never moves an
existing document across the split. Keys are:
- stdlib: the module's path, e.g. "json/decoder.py";
- text: a .txt (or other non-.jsonl) file's path; a .jsonl line's "path:line_index", so
  a corpus that is a single .jsonl file still gets a validation split.

The stdlib corpus is the `.py` files under `sysconfig.get_paths()["stdlib"]` without
`site-packages` and the test suites (`test`, `tests`, `idle_test`: another 19 MB, left out
so the corpus is library code): about 730 files, 12 MB in CPython 3.11. It differs between
interpreter versions, so compare runs on the same interpreter (shards pin a copy).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import pathlib
import sysconfig
from typing import Iterable, Iterator

from ebt_jax.errors import ConfigError
from ebt_jax.data import synthetic

SPLITS = ("train", "validation")
STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests",
                              "idle_test"})
TEXT_SUFFIXES = (".txt", ".jsonl")


def held_out(key: str, fraction: float) -> bool:
  """Whether the document with this key belongs to validation (a stable hash, not a RNG)."""
  h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
  return h < fraction * 2.0**64


def split_documents(keyed_docs: Iterable[tuple[str, str]], fraction: float) -> dict:
  out = {split: [] for split in SPLITS}
  for key, doc in keyed_docs:
    if doc:  # an empty document would only add a separator
      out["validation" if held_out(key, fraction) else "train"].append(doc)
  return out


def _read_text(path: str) -> str:
  # errors="replace": one stray byte in a user's corpus should not stop a run.
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[tuple[str, str], ...]:
  """(relative path, source) of every stdlib module, sorted; read once per process."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in STDLIB_SKIP_DIRS]
    for name in filenames:
      if name.endswith(".py"):
        path = pathlib.Path(dirpath, name)
        found.append((path.relative_to(root).as_posix(), path))
  found.sort()
  return tuple((rel, _read_text(str(path))) for rel, path in found)


def stdlib_documents(fraction: float) -> dict:
  return split_documents(stdlib_files(), fraction)


def _glob_base(pattern: str) -> str:
  """The literal directory a glob starts from: keys are relative to it."""
  parts = pathlib.Path(pattern).parts
  literal = []
  for part in parts:
    if any(ch in part for ch in "*?["):
      break
    literal.append(part)
  return str(pathlib.Path(*literal)) if literal else "."


def text_files(path: str) -> list[tuple[str, str]]:
  """(absolute path, key) of the files `data.path` names, sorted by key."""
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    base = path
    files = [os.path.join(d, n) for d, _, names in os.walk(path) for n in names
             if n.endswith(TEXT_SUFFIXES)]
  elif os.path.isfile(path):
    base, files = os.path.dirname(path), [path]
  else:
    base = _glob_base(path)
    files = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
  if not files:
    raise ConfigError(f"data.path: expected a directory holding .txt/.jsonl files, a file or a "
                      f"glob matching files, got {path!r} (nothing found)")
  keyed = [(os.path.abspath(p), pathlib.Path(os.path.relpath(p, base)).as_posix()) for p in files]
  return sorted(keyed, key=lambda pk: pk[1])


def jsonl_lines(path, errors: str = "strict", prefix: str = "") -> Iterator[tuple[int, object]]:
  """(line number from 1, parsed value) of each non-blank line of a JSON-lines file; a line
  that does not parse is a one-line ConfigError naming the file and line (after `prefix`)."""
  with open(path, encoding="utf-8", errors=errors) as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        value = json.loads(line)
      except json.JSONDecodeError as e:
        raise ConfigError(f"{prefix}{path}:{n}: not a JSON line ({e.msg})") from None
      yield n, value


def _jsonl_documents(path: str, key: str, field: str) -> Iterator[tuple[str, str]]:
  for n, record in jsonl_lines(path, errors="replace", prefix="data.path: "):
    doc = record.get(field) if isinstance(record, dict) else None
    if not isinstance(doc, str):
      raise ConfigError(f"data.jsonl_field: expected a string field {field!r} in every "
                        f"line, but {path}:{n} has none")
    yield f"{key}:{n - 1}", doc


def text_documents(path: str, jsonl_field: str, fraction: float) -> dict:
  def keyed():
    for file, key in text_files(path):
      if file.endswith(".jsonl"):
        yield from _jsonl_documents(file, key, jsonl_field)
      else:
        yield key, _read_text(file)
  return split_documents(keyed(), fraction)


def documents(data_config) -> dict:
  """The train/validation documents of `data.source` (any source but "shards")."""
  d = data_config
  if d.source == "stdlib":
    return stdlib_documents(d.validation_fraction)
  if d.source == "text":
    return text_documents(d.path, d.jsonl_field, d.validation_fraction)
  if d.source in synthetic.FAMILIES:
    return synthetic.source_documents(d)
  raise ConfigError(f"data.source: expected one of stdlib, text, dyck, arithmetic here, "
                    f"got {d.source!r}")
