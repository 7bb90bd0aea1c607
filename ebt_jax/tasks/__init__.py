"""Tasks: one per model kind, each owning what differs between kinds (see tasks/base.py).

`build(config)` is the one place that reads the config's model kind: it validates the config
and returns the kind's task, made once per run. A new kind is a module with a `Task`
subclass and one line in `REGISTRY`.
"""

from __future__ import annotations

import jax
import ml_collections

from ebt_jax.errors import check
from ebt_jax.tasks.base import Task
from ebt_jax.tasks.image import DiT, ImageEBT
from ebt_jax.tasks.text import TextEBT, Transformer
from ebt_jax.tasks.video import NextFrame

REGISTRY: dict[str, type[Task]] = {
    task.name: task for task in (TextEBT, Transformer, ImageEBT, DiT, NextFrame)}


def build(config: ml_collections.ConfigDict) -> Task:
  """The validated task of `config` (one line naming the field on a bad value)."""
  kind = config.model.kind
  check(kind in REGISTRY, "model.kind", f"one of {tuple(REGISTRY)}", kind)
  return REGISTRY[kind].from_config(config)


def init_params(config: ml_collections.ConfigDict, key: jax.Array) -> dict:
  """Initial parameters (a plain nested dict of float32 arrays) of `config`'s model."""
  return build(config).init_params(key)


def param_axes(config: ml_collections.ConfigDict) -> dict:
  """Logical axis names of every parameter, shaped like `init_params`' output."""
  return build(config).param_axes()
