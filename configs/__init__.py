"""Experiment configs (config-as-code), installed as `ebt_jax.configs`.

Each file defines `get_config()`. A file with several variants takes the variant's name,
`get_config(arg=None)`, chosen on the command line after a colon:
`--config configs/denoise.py:paper` or, by bundled name, `--config denoise:paper`, and
names them in `VARIANTS`. Such a file writes its shared settings once and each variant
as its differences, as flat {"section.field": value} dicts applied in order by `update`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from ebt_jax.errors import ConfigError


def choose(arg: str | None, variants: Iterable[str], default: str) -> str:
  """The variant named by `arg` (`default` when it is None or empty).

  Raises a one-line ConfigError naming the valid variants for any other name.
  """
  names = list(variants)
  if not arg:
    return default
  if arg not in names:
    raise ConfigError(f"unknown variant {arg!r}; valid variants: {', '.join(names)}")
  return arg


def update(c: ml_collections.ConfigDict, *settings: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets `c`'s fields from {"section.field": value} dicts, in order; returns `c`.

  Every field must exist already (a misspelt name raises instead of adding a field).
  """
  for group in settings:
    for path, value in group.items():
      *parents, leaf = path.split(".")
      node = c
      for p in parents:
        node = node[p]
      if leaf not in node:
        raise KeyError(f"{path}: the config has no such field")
      node[leaf] = value
  return c
