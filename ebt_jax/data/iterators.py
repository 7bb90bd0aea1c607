"""A checkpointable iterator of endless batches that are a pure function of the step.

Both data families (text windows in pipeline.py, images and frames in continuous.py)
draw batch t from (seed, t) alone, so the iterator's whole state is the step, plus a
fingerprint of what the batches depend on: a state from other data is refused.
"""

from __future__ import annotations

import sys

import grain
import numpy as np

_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)


class StepBatches(grain.DatasetIterator):
  """Subclasses set `_make_batch(step) -> np.ndarray`; grain prefetches ahead of the step."""

  def __init__(self, fingerprint: dict):
    super().__init__()
    self._fingerprint = fingerprint
    self._step = 0
    self._inner = None
    self._restart()

  def _make_batch(self, step: int) -> np.ndarray:
    raise NotImplementedError

  def _restart(self) -> None:
    if self._inner is not None:
      self._inner.close()
    dataset = grain.MapDataset.range(self._step, sys.maxsize).map(self._make_batch)
    self._inner = iter(dataset.to_iter_dataset(_READ_OPTIONS))

  def __next__(self) -> np.ndarray:
    self._assert_not_closed()
    batch = next(self._inner)
    self._step += 1
    return batch

  def get_state(self) -> dict:
    return {"step": self._step, **self._fingerprint}

  def set_state(self, state: dict) -> None:
    for key, value in self._fingerprint.items():
      if state.get(key) != value:
        raise ValueError(f"data iterator state has {key}={state.get(key)!r}, but this run has "
                         f"{value!r}: it would continue with different data")
    self._step = int(state["step"])
    self._restart()

  def start_prefetch(self) -> None:
    self._inner.start_prefetch()

  def close(self) -> None:
    if self._inner is not None:
      self._inner.close()
    super().close()
