"""Metric records: `WORKDIR/metrics.jsonl` (one JSON object per line), plus TensorBoard.

Every record has `step` and namespaced keys (`train/loss`, `eval/ce_step_1`, ...). Only
process 0 writes. Lines are appended and flushed one at a time, so a killed run leaves a
valid file (at worst a torn last line, which readers skip).

One history: on resume from step k the trainer calls `drop_records_after(k)`, which
rewrites the file (atomically) with exactly the records of steps <= k, whether train or
evaluation records, whatever a crash left past k; the resumed writer opens TensorBoard
with `purge_step=k + 1`, so TensorBoard hides the earlier attempt's events from k + 1 on.
A fresh start never appends to another run's records (the trainer refuses, or moves them
aside with `--overwrite`). Readers still go through `history`, which keeps the last attempt
where a file holds several (a step lower than one before it starts a new attempt), so a
plot never joins two runs into one curve.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np

from ebt_jax import atomic

METRICS_FILE = "metrics.jsonl"


def _plain(value):
  value = np.asarray(value)
  if value.ndim == 0:
    v = value.item()
    return None if isinstance(v, float) and not math.isfinite(v) else v
  return value.tolist()


class MetricWriter:
  def __init__(self, workdir, tensorboard: bool = True, purge_step: int | None = None):
    """`purge_step`: the first step this writer writes on resume (TensorBoard drops the
    earlier events from it on)."""
    self.enabled = jax.process_index() == 0
    self.path = Path(workdir) / METRICS_FILE
    self._file = open(self.path, "a") if self.enabled else None
    self._tb = None
    if self.enabled and tensorboard:
      try:
        from tensorboardX import SummaryWriter
      except ImportError:
        pass
      else:
        self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=purge_step)

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir) -> list[dict]:
  """All records of a run, in file order; a torn last line (a killed writer) is skipped."""
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records


def history(records: list[dict]) -> list[dict]:
  """The records of the last attempt a file holds: a record whose step is lower than an
  earlier record's starts a new attempt, which replaces the earlier records from its step
  on (records of one step, a train record then an evaluation, are one attempt's)."""
  kept: list[dict] = []
  for r in records:
    step = r.get("step", 0)
    if kept and step < kept[-1].get("step", 0):
      kept = [k for k in kept if k.get("step", 0) < step]
    kept.append(r)
  return kept


def drop_records_after(workdir, step: int) -> None:
  """Rewrites metrics.jsonl with the records of steps <= `step` only (of the last attempt:
  `history`), whatever kind; write to a temporary file, then rename."""
  path = Path(workdir) / METRICS_FILE
  if jax.process_index() != 0 or not path.exists():
    return
  kept = [r for r in history(read_metrics(workdir)) if r.get("step", 0) <= step]
  atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
