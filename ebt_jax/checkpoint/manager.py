"""Training checkpoints: one Orbax checkpoint per step holding everything resume needs.

Each checkpoint has two items: `state` (params, optimizer state, step, run key: the
`TrainState` pytree, saved sharded from every process) and `meta` (JSON: the data
iterator's state, and a fingerprint of the state). Saves are asynchronous (Orbax copies
device arrays to host before `save` returns, so the next step may donate them) and keep
the last `keep` checkpoints; Orbax writes into a temporary directory and renames it on
commit, so a killed save never looks complete.

Restore walks back from the latest step. A checkpoint that fails to read, or whose
restored state does not match the fingerprint recorded at save time (a truncated or
bit-flipped file), is skipped for the previous one. Once an older step has been read with
the same request (so the failure is the checkpoint's, not the request's: a config that
no longer matches fails on every step and moves nothing), each newer step that failed is
moved aside to `<step>.corrupt-<UTC time>` beside the steps (never deleted), with one
warning line naming both paths. Orbax no longer lists it, so training saves that step again
and later restores (`ebt eval`, `think`, `generate`) neither read it nor warn again. Only
process 0 renames; every process then meets at a barrier and reopens its Orbax manager,
whose cached step list still holds the moved step.

A restore that fails leaves TensorStore reads in flight whose completion callbacks find
Orbax's event loop already closed, and read coroutines that raise again when collected;
each would print a traceback (`RuntimeError: Event loop is closed`, hundreds of lines for a
checkpoint of random bytes). They are harmless, and a `sys.unraisablehook` wrapper drops
exactly those (`_drop_failed_restore_leftovers`).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import os
import sys
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

CORRUPT_MARK = ".corrupt-"   # `<step>.corrupt-<UTC time>`: no underscore, so never a step name


class CheckpointError(RuntimeError):
  pass


class CheckpointWarning(UserWarning):
  """A checkpoint that could not be used (and what was done about it)."""


@jax.jit
def _fingerprint(tree) -> jax.Array:
  """Per-leaf sums of values and of squares: cheap, and sensitive to any changed byte."""
  leaves = [jnp.asarray(x).astype(jnp.float32) for x in jax.tree_util.tree_leaves(tree)]
  return jnp.stack([jnp.stack([jnp.sum(x), jnp.sum(x * x)]) for x in leaves])


def fingerprint(tree) -> list[list[float]]:
  return np.asarray(jax.device_get(_fingerprint(tree)), np.float64).tolist()


def _matches(recorded, restored, rtol=1e-5) -> bool:
  a, b = np.asarray(recorded), np.asarray(restored)
  return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=1e-6))


class Checkpointer:
  def __init__(self, directory, keep: int = 3, async_save: bool = True,
               move_aside: bool = True):
    """`move_aside=False`: skip a failed checkpoint but leave it where it is (a reader
    while a trainer writes the directory; must be the same on every process)."""
    if "://" not in str(directory):   # Orbax needs absolute local paths (URLs pass through)
      directory = os.path.abspath(directory)
    self.move_aside = move_aside
    self._options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=async_save)
    self.directory = directory
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.directory, options=self._options,
                                 item_names=("state", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, data_state: dict | None = None) -> None:
    """Saves `state` at `step` (asynchronously). Refuses a state holding NaN or Inf."""
    prints = fingerprint(state)
    if not np.all(np.isfinite(prints)):
      raise CheckpointError(f"refusing to checkpoint step {step}: the state holds NaN or Inf")
    meta = {"step": int(step), "data_state": data_state, "fingerprint": prints}
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, abstract_state, step: int | None = None):
    """(step, state, data_state) of the newest readable checkpoint, or None if none exist.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct (with shardings) to restore into.
    """

    def read(s):
      restored = self._manager.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      state, meta = restored["state"], restored["meta"]
      return state, meta, _matches(meta["fingerprint"], fingerprint(state))

    return self._restore_newest(read, step)

  def restore_params(self, abstract_params, step: int | None = None):
    """(step, params, data_state): the `params` field of a saved `TrainState` alone.

    Inference reads parameters only; the optimizer state, a replay buffer (tens of GB at
    paper scale) and fields added since the checkpoint was written are never read. The
    params' fingerprint rows must appear, in order, among those recorded for the state.
    """

    def read(s):
      item = {"params": abstract_params}
      params = ocp.PyTreeCheckpointer().restore(
          os.path.join(self.directory, str(s), "state"), args=ocp.args.PyTreeRestore(
              item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
              partial_restore=True))["params"]
      meta = self._manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      rows, recorded = fingerprint(params), meta["fingerprint"]
      consistent = any(_matches(recorded[i:i + len(rows)], rows)
                       for i in range(len(recorded) - len(rows) + 1))
      return params, meta, consistent

    return self._restore_newest(read, step)

  def _restore_newest(self, read, step: int | None):
    self.wait()
    _drop_failed_restore_leftovers()
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    failed = []   # (step, reason) of the steps that could not be used, newest first
    found = None
    for s in steps:
      try:
        with _quiet_orbax():
          state, meta, consistent = read(s)
        if not consistent:
          raise CheckpointError("restored values do not match the fingerprint saved with them")
      except Exception as e:  # any unreadable or inconsistent checkpoint: fall back
        first_line = str(e).splitlines()[0][:200] if str(e) else ""
        failed.append((s, f"{type(e).__name__}: {first_line}"))
        continue
      found = s, state, meta.get("data_state")
      break
    if failed:
      gc.collect()   # the failed reads' coroutines go now, while the hook above is in place
      self._set_aside(failed, found[0] if found else None, requested=step is not None)
    if found is None and steps:
      raise CheckpointError(f"no readable checkpoint in {self.directory} (tried steps {steps})")
    return found

  def _set_aside(self, failed, restored: int | None, requested: bool) -> None:
    """Moves the failed steps aside once an older one was read (see the module docstring)
    and warns once per failed step; then reopens the Orbax manager on every process."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for s, reason in failed:
      what = f"checkpoint step {s} in {self.directory} is unreadable or corrupted ({reason})"
      if restored is None:
        _warn(f"{what}; " + ("it stays where it is" if requested else
                             "no older checkpoint could be read either, so it stays where it is"))
        continue
      if not self.move_aside:
        _warn(f"{what}; falling back to step {restored} (left in place: only the run's "
              f"writer moves it aside)")
        continue
      source = epath.Path(self.directory) / str(s)
      target = source.parent / f"{s}{CORRUPT_MARK}{stamp}"
      n = 1
      while target.exists():   # the same step moved aside twice within a second
        n += 1
        target = source.parent / f"{s}{CORRUPT_MARK}{stamp}-{n}"
      if jax.process_index() == 0:
        try:
          source.rename(target)
        except Exception as e:  # a store without renames: fall back, leave it, say so
          _warn(f"{what}; could not move it aside ({type(e).__name__}: {e}); "
                f"falling back to step {restored}")
          continue
      _warn(f"{what}; moved {source} to {target}; falling back to step {restored}")
    if restored is not None and self.move_aside:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("ebt_jax checkpoints moved aside")
      self._manager.close()
      self._manager = self._open()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _warn(message: str) -> None:
  """One line on stderr (`warnings.warn` would add the line of this file that called it)."""
  warnings.warn_explicit(message, CheckpointWarning, filename="ebt_jax.checkpoint", lineno=0,
                         module=__name__)


def _drop_failed_restore_leftovers() -> None:
  """Wraps `sys.unraisablehook` (once per hook) to drop what an Orbax restore that failed
  leaves behind: each TensorStore read still in flight reports `RuntimeError('Event loop
  is closed')` when it completes after Orbax closed its event loop, and each of Orbax's
  abandoned read coroutines raises again when it is garbage-collected. Everything else
  passes."""
  previous = sys.unraisablehook
  if getattr(previous, "_drops_failed_restore_leftovers", False):
    return

  def hook(unraisable):
    error, obj = unraisable.exc_value, unraisable.object
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
      return
    if inspect.iscoroutine(obj) and f"{os.sep}orbax{os.sep}" in obj.cr_code.co_filename:
      return
    previous(unraisable)

  hook._drops_failed_restore_leftovers = True
  sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax logs a multi-page TensorStore spec for every unreadable array; the fallback
  warning above says what happened in one line instead."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    absl_logger.setLevel(level)


def abstract_like(tree: Any):
  """ShapeDtypeStructs (keeping shardings) of a pytree of arrays."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
