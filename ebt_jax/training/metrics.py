"""Metric records: `WORKDIR/metrics.jsonl` (one JSON object per line), plus TensorBoard.

Every record has `step` and namespaced keys (`train/loss`, `eval/ce_step_1`, ...). Only
process 0 writes. Lines are appended and flushed one at a time, so a killed run leaves a
valid file; on resume, records past the restored step are dropped (atomically), so the
file always describes the run that the checkpoints continue.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def _plain(value):
  value = np.asarray(value)
  if value.ndim == 0:
    v = value.item()
    return None if isinstance(v, float) and not math.isfinite(v) else v
  return value.tolist()


class MetricWriter:
  def __init__(self, workdir, tensorboard: bool = True):
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
        self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

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


def drop_records_after(workdir, step: int) -> None:
  """Rewrites metrics.jsonl without records past `step` (write to temp, then rename)."""
  path = Path(workdir) / METRICS_FILE
  if jax.process_index() != 0 or not path.exists():
    return
  kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= step]
  tmp = path.with_suffix(".jsonl.tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
  os.replace(tmp, path)
