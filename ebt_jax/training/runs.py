"""Run directories: their saved config, restoring their parameters, importing into one.

A run directory holds `config.json`, `checkpoints/<step>/` and `metrics.jsonl`; anything
that can be trained, evaluated or plotted is one. `save_config` writes the resolved config
and, on resume, refuses a change to anything but the fields in `RESUMABLE_CHANGES`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from ebt_jax import config as config_lib
from ebt_jax import official_hparams, tasks
from ebt_jax.checkpoint.manager import Checkpointer
from ebt_jax.checkpoint.official import import_official
from ebt_jax.checkpoint.torch_file import load_torch_file, state_dict_and_hparams
from ebt_jax.errors import ConfigError
from ebt_jax.tasks.base import Task
from ebt_jax.training import program as program_lib
from ebt_jax.training import step as step_lib

CONFIG_FILE = "config.json"
# Fields that may change when a run is resumed (layout, memory and schedule length, not
# what is learned); anything else must match the checkpoints.
RESUMABLE_CHANGES = ("train.", "mesh.", "data.ood_suites", "optimizer.decay_steps",
                     "model.remat", "model.scan_layers", "thinking.remat", "thinking.unroll")


def save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
  path = workdir / CONFIG_FILE
  saved = json.loads(config.to_json_best_effort())
  if path.exists():
    previous = _flatten(json.loads(path.read_text()))
    for key, value in _flatten(saved).items():
      if key in previous and previous[key] != value and not key.startswith(RESUMABLE_CHANGES):
        raise ConfigError(
            f"{key}: the run in {workdir} was started with {previous[key]!r}, not {value!r} "
            f"(use a new --workdir, or the same value to resume)")
  if jax.process_index() == 0:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved, indent=2, sort_keys=True))
    tmp.replace(path)


def load_config(workdir) -> ml_collections.ConfigDict:
  path = Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise ConfigError(f"--workdir: {workdir} holds no {CONFIG_FILE} (not a run directory)")
  base = config_lib.base_config()
  base.update_from_flattened_dict(_flatten(json.loads(path.read_text())))
  return base


def _flatten(d: dict) -> dict:
  """{"section.field": value} of a nested config dict, lists as tuples (as ConfigDicts
  hold them); an empty section is left out, so it keeps its default."""
  return {k: tuple(v) if isinstance(v, list) else v
          for k, v in traverse_util.flatten_dict(d, sep=".").items()}


def program_here(config: ml_collections.ConfigDict) -> program_lib.Program:
  """The run's program on this machine's devices: its own mesh if that fits them, else
  plain data parallelism over all of them (checkpoints restore onto any mesh)."""
  try:
    return program_lib.build(config)
  except ConfigError:
    config = ml_collections.ConfigDict(config.to_dict())
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    return program_lib.build(config)


def restore_params(workdir) -> tuple[ml_collections.ConfigDict, int, dict]:
  """(config, step, params) of the newest readable checkpoint of a run directory."""
  config = load_config(workdir)
  program = program_here(config)
  checkpointer = Checkpointer(Path(workdir) / "checkpoints", keep=config.train.keep_checkpoints)
  try:
    restored = checkpointer.restore_params(program.abstract_sharded_state().params)
  finally:
    checkpointer.close()
  if restored is None:
    raise ConfigError(f"--workdir: {workdir} holds no checkpoint yet")
  step, params, _ = restored
  return config, step, params


def restore_task(workdir, overrides=None) -> tuple[Task, int, dict]:
  """(task, step, params) of a run directory's newest checkpoint, its config edited by
  `overrides(config)` (the `config.inference` flags of the commands that think)."""
  config, step, params = restore_params(workdir)
  if overrides:
    overrides(config)
  return tasks.build(config), step, params


def restore_ebt(workdir, overrides=None) -> tuple[Task, int, dict]:
  """`restore_task` of a text EBT run (the commands that think over tokens)."""
  task, step, params = restore_task(workdir, overrides)
  if not task.thinks_over_tokens:
    raise ConfigError(f"--workdir: {workdir} holds a {task.describe()} model; this command "
                      f"needs a text EBT")
  return task, step, params


def import_torch_checkpoint(checkpoint, out, config: ml_collections.ConfigDict | None = None) -> Path:
  """A run directory (config + step-0 checkpoint) from an official .ckpt / .pt file.

  Without `config`, the config comes from the Lightning checkpoint's hyperparameters via
  `from_official_hparams`, with the vocabulary size read off the embedding table.
  """
  state_dict, hparams = state_dict_and_hparams(load_torch_file(checkpoint))
  if config is None:
    if hparams is None:
      raise ConfigError(f"--config: {checkpoint} is a bare state_dict without "
                                   f"hyperparameters; pass the model's config")
    embed = state_dict.get("model.embeddings.weight", state_dict.get("embeddings.weight"))
    if embed is None:
      raise ConfigError(f"{checkpoint}: no embeddings.weight entry; is this an NLP model?")
    config = official_hparams.from_official_hparams({**hparams,
                                                     "vocab_size": int(embed.shape[0])})
  program = program_here(config)
  params = jax.tree_util.tree_map(jnp.asarray, import_official(state_dict, config))
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  save_config(config, out)
  state = jax.device_put(step_lib.state_from_params(params, program.task, program.tx),
                         program.state_shardings)
  checkpointer = Checkpointer(out / "checkpoints", keep=config.train.keep_checkpoints)
  try:
    checkpointer.save(0, state)
  finally:
    checkpointer.close()
  return out
