"""Training checkpoints: one Orbax checkpoint per step holding everything resume needs.

Each checkpoint has two items: `state` (params, optimizer state, step, run key: the
`TrainState` pytree, saved sharded from every process) and `meta` (JSON: the data
iterator's state, and a fingerprint of the state). Saves are asynchronous (Orbax copies
device arrays to host before `save` returns, so the next step may donate them) and keep
the last `keep` checkpoints; Orbax writes into a temporary directory and renames it on
commit, so a killed save never looks complete.

Restore walks back from the latest step. A checkpoint that fails to read, or whose
restored state does not match the fingerprint recorded at save time (a truncated or
bit-flipped file), is skipped with a warning and the previous one is used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  pass


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
  def __init__(self, directory, keep: int = 3, async_save: bool = True):
    if "://" not in str(directory):   # Orbax needs absolute local paths (URLs pass through)
      directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(directory, options=options,
                                          item_names=("state", "meta"))
    self.directory = directory

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
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    for s in steps:
      try:
        with _quiet_orbax():
          state, meta, consistent = read(s)
        if not consistent:
          raise CheckpointError("restored values do not match the fingerprint saved with them")
      except Exception as e:  # any unreadable or inconsistent checkpoint: fall back
        message = (f"checkpoint at step {s} in {self.directory} is unreadable or corrupted "
                   f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
        if step is not None or s == steps[-1]:
          warnings.warn(message + "; no older checkpoint to fall back to", stacklevel=2)
        else:
          warnings.warn(message + "; falling back to the previous one", stacklevel=2)
        continue
      return s, state, meta.get("data_state")
    if steps:
      raise CheckpointError(f"no readable checkpoint in {self.directory} (tried steps {steps})")
    return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


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
