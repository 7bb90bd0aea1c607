"""`ebt plot WORKDIR`: PNGs of a run's learning curves and of its thinking.

* `curves.png`: training loss and validation perplexity (after the last thinking step)
  against training steps;
* `thinking.png`: for the latest evaluation, validation perplexity and mean energy after
  each thinking step (how much thinking buys, and that energy falls as it should).
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import numpy as np  # noqa: E402

from ebt_jax.config import ConfigError  # noqa: E402
from ebt_jax.training.metrics import METRICS_FILE, read_metrics  # noqa: E402


def _series(records, key):
  points = {r["step"]: r[key] for r in records if r.get(key) is not None}
  steps = sorted(points)
  return np.array(steps), np.array([points[s] for s in steps])


def _per_step(record, prefix):
  pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)$")
  found = sorted((int(m.group(1)), v) for k, v in record.items() if (m := pattern.match(k)))
  return np.array([k for k, _ in found]), np.array([v for _, v in found])


def plot_workdir(workdir) -> list[Path]:
  records = read_metrics(workdir)
  if not records:
    raise ConfigError(f"workdir: {workdir} has no {METRICS_FILE} records to plot")
  out_dir = Path(workdir) / "plots"
  out_dir.mkdir(exist_ok=True)
  written = []

  fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4))
  steps, loss = _series(records, "train/loss")
  ax_loss.plot(steps, loss, label="train loss")
  ax_loss.set(xlabel="training step", ylabel="loss", title="Training loss", yscale="log")
  steps, ppl = _series(records, "eval/perplexity")
  ax_ppl.plot(steps, ppl, marker="o", label="validation")
  ood = sorted({k for r in records for k in r if k.startswith("ood/") and k.endswith("/perplexity")})
  for key in ood:
    ax_ppl.plot(*_series(records, key), marker=".", label=key.split("/")[1])
  ax_ppl.set(xlabel="training step", ylabel="perplexity (last thinking step)",
             title="Evaluation perplexity", yscale="log")
  ax_ppl.legend()
  fig.tight_layout()
  written.append(out_dir / "curves.png")
  fig.savefig(written[-1], dpi=120)
  plt.close(fig)

  evals = [r for r in records if "eval/ce_step_1" in r]
  if evals:
    last = evals[-1]
    fig, (ax_ce, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    k, ce = _per_step(last, "eval/ce_step")
    ax_ce.plot(k, np.exp(ce), marker="o")
    ax_ce.set(xlabel="thinking step", ylabel="validation perplexity", xticks=k,
              title=f"Thinking (checkpoint at step {last['step']})")
    k, energy = _per_step(last, "eval/energy_step")
    if len(k):
      ax_e.plot(k, energy, marker="o", color="C1")
    ax_e.set(xlabel="thinking step", ylabel="mean energy entering the step", xticks=k,
             title="Energy against thinking step")
    fig.tight_layout()
    written.append(out_dir / "thinking.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
  return written
