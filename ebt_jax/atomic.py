"""Files that appear whole or not at all.

Every file the project writes in one go (a run's config, a rewritten metrics log, the JSON
of `ebt eval`, `plan`, `scale` and the others, token shards and their `meta.json`, exported
PyTorch checkpoints) is written beside its destination under a hidden temporary name,
flushed to disk and renamed over it. A kill or crash mid-write leaves the previous file (or
none), never half of one; a failed write removes its temporary file. It imports nothing
from the package, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def replacing(path, mode: str = "w") -> Iterator[IO]:
  """Yields a file opened with `mode` beside `path`; when the block ends without an error
  it is synced and renamed over `path`, and in any case its temporary name is gone."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    with open(tmp, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
  """Replaces `path`'s contents with `text`, atomically."""
  with replacing(path) as f:
    f.write(text)


def write_json(path, obj, *, sort_keys: bool = False) -> None:
  """Replaces `path` with `obj` as indented JSON and a final newline, atomically."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def save_figure(fig, path, **savefig_kwargs) -> Path:
  """Writes a matplotlib figure to `path` in the format its suffix names, atomically."""
  path = Path(path)
  with replacing(path, "wb") as f:
    fig.savefig(f, format=path.suffix.lstrip(".") or None, **savefig_kwargs)
  return path
