"""Run directories: their saved config, their writer lock, restoring their parameters,
importing into one.

A run directory holds `config.json`, `checkpoints/<step>/` and `metrics.jsonl` (and
`tensorboard/`, `plots/`); anything that can be trained, evaluated or plotted is one.
`save_config` writes the resolved config and, on resume, refuses a change to anything but
the fields in `RESUMABLE_CHANGES`.

One process writes a run directory: `WorkdirLock` is an exclusive `fcntl.flock` on
`<workdir>/.lock` (the kernel drops it when its holder dies, however it dies; the file keeps
the holder's PID and host for the message a second writer gets). Readers that restore
parameters take it briefly when it is free, so that they may move a corrupted checkpoint
aside; while a trainer holds it they only read. `earlier_run_files` and `move_aside` let a
fresh start refuse to mix with, or set aside, what an earlier run left.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import socket
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from ebt_jax import config as config_lib
from ebt_jax import atomic, official_hparams, tasks
from ebt_jax.checkpoint.manager import Checkpointer
from ebt_jax.checkpoint import official
from ebt_jax.checkpoint.torch_file import load_torch_file, state_dict_and_hparams
from ebt_jax.checkpoint.torch_write import save_torch_file
from ebt_jax.errors import ConfigError
from ebt_jax.tasks.base import Task
from ebt_jax.training import program as program_lib
from ebt_jax.training import step as step_lib
from ebt_jax.training.metrics import METRICS_FILE

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
# What a run writes into its directory; `--overwrite` moves these into previous-<time>/.
RUN_FILES = (CONFIG_FILE, METRICS_FILE, "checkpoints", "tensorboard", "plots")
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
    atomic.write_json(path, saved, sort_keys=True)


def load_config(workdir) -> ml_collections.ConfigDict:
  path = Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise ConfigError(f"--workdir: {workdir} holds no {CONFIG_FILE} (not a run directory)")
  base = config_lib.base_config()
  try:
    base.update_from_flattened_dict(_flatten(json.loads(path.read_text())))
  except (ValueError, TypeError, KeyError, AttributeError, AssertionError) as e:
    detail = (str(e).strip().splitlines() or [""])[0]
    raise ConfigError(f"--workdir: {path} is not a valid run config ({type(e).__name__}: "
                      f"{detail})") from None
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


class WorkdirBusy(ConfigError):
  """Another process holds the run directory's writer lock."""


class WorkdirLock:
  """The exclusive writer lock of a run directory (see the module docstring); `what`
  names the holder in a second process's error."""

  def __init__(self, workdir, what: str = "`ebt train`"):
    self.workdir = Path(workdir)
    self.path = self.workdir / LOCK_FILE
    self.what = what
    self._fd = None

  def acquire(self) -> bool:
    """Takes the lock if it is free (never waits); False if another process holds it."""
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return False
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()} {self.what}\n".encode())
    self._fd = fd
    return True

  def holder(self) -> str:
    """"<what> (PID <pid> on <host>)" of the holder, as it wrote itself into the lock file."""
    try:
      pid, host, what = self.path.read_text().strip().split(maxsplit=2)
    except (OSError, ValueError):
      return "another process (that has not written its PID yet)"
    return f"another {what} (PID {pid} on {host})"

  def busy_error(self) -> WorkdirBusy:
    return WorkdirBusy(f"--workdir: {self.workdir} is in use by {self.holder()}; one process "
                       f"writes a run directory: wait for it to end, or use another --workdir")

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    if not self.acquire():
      raise self.busy_error()
    return self

  def __exit__(self, *exc):
    self.release()
    return False


def earlier_run_files(workdir) -> list[str]:
  """What an earlier run left in `workdir` that a fresh start would mix with its own:
  metrics records, TensorBoard events, plots, anything under checkpoints/ (the caller has
  found no checkpoint step there). A config.json alone does not count: `save_config`
  compares it."""
  workdir = Path(workdir)
  found = []
  metrics = workdir / METRICS_FILE
  if metrics.exists() and metrics.stat().st_size > 0:
    found.append(METRICS_FILE)
  for name in ("checkpoints", "tensorboard", "plots"):
    if (workdir / name).is_dir() and any((workdir / name).iterdir()):
      found.append(f"{name}/")
  return found


def move_aside(workdir) -> Path | None:
  """Moves the run files (`RUN_FILES`) of `workdir` into a new `previous-<UTC time>/`
  inside it and returns that directory (None if there was nothing to move)."""
  workdir = Path(workdir)
  present = [workdir / name for name in RUN_FILES if (workdir / name).exists()]
  if not present:
    return None
  stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
  target = workdir / f"previous-{stamp}"
  n = 1
  while target.exists():
    n += 1
    target = workdir / f"previous-{stamp}-{n}"
  target.mkdir()
  for path in present:
    path.rename(target / path.name)
  return target


def restore_params(workdir) -> tuple[ml_collections.ConfigDict, int, dict]:
  """(config, step, params) of the newest readable checkpoint of a run directory.

  A corrupted newest checkpoint is moved aside (see checkpoint/manager.py) only by a single
  process that could take the run's lock; while a trainer holds it, it is only skipped,
  with a warning."""
  config = load_config(workdir)
  program = program_here(config)
  lock = WorkdirLock(workdir, "process reading its checkpoints")
  try:
    owned = jax.process_index() == 0 and lock.acquire()
  except OSError:   # a directory this user cannot write: read only
    owned = False
  try:
    checkpointer = Checkpointer(Path(workdir) / "checkpoints", keep=config.train.keep_checkpoints,
                                move_aside=owned and jax.process_count() == 1)
    try:
      restored = checkpointer.restore_params(program.abstract_sharded_state().params)
    finally:
      checkpointer.close()
  finally:
    lock.release()
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


def import_torch_checkpoint(checkpoint, out, config: ml_collections.ConfigDict | None = None, *,
                            hparams: dict | None = None, num_devices: int = 1,
                            log=lambda line: None) -> Path:
  """A run directory (config + step-0 checkpoint) from an official .ckpt / .pt file.

  Without `config`, the config comes from `hparams` (official flags, e.g. a job script's)
  or else the Lightning checkpoint's hyperparameters, via `from_official_hparams`; a text
  model's vocabulary size is read off its embedding table. The video EBT's frozen image
  encoder is not imported (this project reads its latents); `log` gets a line saying so.
  """
  state_dict, saved = state_dict_and_hparams(load_torch_file(checkpoint))
  state_dict, frozen = official.split_frozen(state_dict)
  if frozen:
    log(f"{checkpoint}: {len(frozen)} tensors of the frozen image encoder (image_encoder.*) "
        f"not imported; this project reads precomputed latents")
  hparams = hparams if hparams is not None else saved
  if config is None:
    if hparams is None:
      raise ConfigError(f"--config: {checkpoint} is a bare state_dict without "
                                   f"hyperparameters; pass the model's config or job script")
    if hparams.get("modality", "NLP") == "NLP" and "vocab_size" not in hparams:
      embed = state_dict.get("model.embeddings.weight", state_dict.get("embeddings.weight"))
      if embed is None:
        raise ConfigError(f"{checkpoint}: no embeddings.weight entry; is this an NLP model?")
      hparams = {**hparams, "vocab_size": int(embed.shape[0])}
    config = official_hparams.from_official_hparams(hparams, num_devices=num_devices)
  program = program_here(config)
  params = jax.tree_util.tree_map(jnp.asarray, official.import_official(state_dict, config))
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


def export_torch_checkpoint(workdir, out) -> tuple[Path, int]:
  """(path, step): the newest checkpoint of a run as an official Lightning .ckpt, written
  without torch: `state_dict` under the official names and layouts (with Lightning's
  `model.` prefix, as the official ModelTrainer holds its model), `hyper_parameters` the
  official flags that rebuild the config (`to_official_hparams`), and the step."""
  config, step, params = restore_params(workdir)
  hparams = official_hparams.to_official_hparams(config)
  state_dict = collections.OrderedDict(
      (official.LIGHTNING_PREFIX + name, np.asarray(value, np.float32))
      for name, value in official.export_official(params, config).items())
  out = Path(out)
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    save_torch_file({"epoch": 0, "global_step": int(step), "state_dict": state_dict,
                     "hyper_parameters": hparams}, out)
  except OSError as e:
    raise ConfigError(f"--out: cannot write {out} ({e.strerror or type(e).__name__})") from None
  return out, int(step)
