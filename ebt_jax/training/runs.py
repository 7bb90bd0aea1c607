"""Operations on a run directory: restore its parameters, import a checkpoint into one.

A run directory holds `config.json`, `checkpoints/<step>/` and `metrics.jsonl`; anything
that can be trained, evaluated or plotted is one.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from ebt_jax import config as config_lib
from ebt_jax.checkpoint.manager import Checkpointer
from ebt_jax.checkpoint.official import import_official
from ebt_jax.checkpoint.torch_file import load_torch_file, state_dict_and_hparams
from ebt_jax.training import program as program_lib
from ebt_jax.training import step as step_lib
from ebt_jax.training import trainer


def program_here(config: ml_collections.ConfigDict) -> program_lib.Program:
  """The run's program on this machine's devices: its own mesh if that fits them, else
  plain data parallelism over all of them (checkpoints restore onto any mesh)."""
  try:
    return program_lib.build(config)
  except config_lib.ConfigError:
    config = ml_collections.ConfigDict(config.to_dict())
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    return program_lib.build(config)


def restore_params(workdir) -> tuple[ml_collections.ConfigDict, int, dict]:
  """(config, step, params) of the newest readable checkpoint of a run directory."""
  config = trainer.load_config(workdir)
  program = program_here(config)
  checkpointer = Checkpointer(Path(workdir) / "checkpoints", keep=config.train.keep_checkpoints)
  try:
    restored = checkpointer.restore_params(program.abstract_sharded_state().params)
  finally:
    checkpointer.close()
  if restored is None:
    raise config_lib.ConfigError(f"--workdir: {workdir} holds no checkpoint yet")
  step, params, _ = restored
  return config, step, params


def restore_ebt(workdir, overrides=None) -> tuple[ml_collections.ConfigDict, int, dict]:
  """`restore_params` of an EBT run, its config edited by `overrides(config)` (the
  `config.inference` flags of the commands that think) and validated."""
  config, step, params = restore_params(workdir)
  if config.model.kind != "ebt":
    raise config_lib.ConfigError(f"--workdir: {workdir} holds a {config.model.kind!r} model; "
                                 f"this command needs an EBT")
  if overrides:
    overrides(config)
  config_lib.validate(config)
  return config, step, params


def import_torch_checkpoint(checkpoint, out, config: ml_collections.ConfigDict | None = None) -> Path:
  """A run directory (config + step-0 checkpoint) from an official .ckpt / .pt file.

  Without `config`, the config comes from the Lightning checkpoint's hyperparameters via
  `from_official_hparams`, with the vocabulary size read off the embedding table.
  """
  state_dict, hparams = state_dict_and_hparams(load_torch_file(checkpoint))
  if config is None:
    if hparams is None:
      raise config_lib.ConfigError(f"--config: {checkpoint} is a bare state_dict without "
                                   f"hyperparameters; pass the model's config")
    embed = state_dict.get("model.embeddings.weight", state_dict.get("embeddings.weight"))
    if embed is None:
      raise config_lib.ConfigError(f"{checkpoint}: no embeddings.weight entry; is this an NLP model?")
    config = config_lib.from_official_hparams({**hparams, "vocab_size": int(embed.shape[0])})
  program = program_here(config)
  params = jax.tree_util.tree_map(jnp.asarray, import_official(state_dict, config))
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  trainer.save_config(config, out)
  state = jax.device_put(step_lib.state_from_params(params, config, program.tx),
                         program.state_shardings)
  checkpointer = Checkpointer(out / "checkpoints", keep=config.train.keep_checkpoints)
  try:
    checkpointer.save(0, state)
  finally:
    checkpointer.close()
  return out
