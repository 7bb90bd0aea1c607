"""`ebt plot WORKDIR`: PNGs of a run's learning curves and of its thinking.

* `curves.png`: training loss and validation perplexity (after the last thinking step)
  against training steps (image runs: PSNR, also out of distribution; next-frame runs:
  SmoothL1);
* `thinking.png`: for the latest evaluation, validation perplexity (PSNR, SmoothL1) and
  mean energy after each thinking step (how much thinking buys, and that energy falls as
  it should).

Both draw one run: the records of the file's last attempt (`metrics.history`), one point
per step (the last record of a step wins).
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import numpy as np  # noqa: E402

from ebt_jax import atomic  # noqa: E402
from ebt_jax.errors import ConfigError  # noqa: E402
from ebt_jax.training.metrics import METRICS_FILE, history, read_metrics  # noqa: E402


def _series(records, key):
  points = {r["step"]: r[key] for r in records if r.get(key) is not None}
  steps = sorted(points)
  return np.array(steps), np.array([points[s] for s in steps])


def _per_step(record, prefix):
  pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)$")
  found = sorted((int(m.group(1)), v) for k, v in record.items() if (m := pattern.match(k)))
  return np.array([k for k, _ in found]), np.array([v for _, v in found])


# Per-thinking-step evaluation metrics: (key prefix, axis label, transform of the values).
_PER_STEP = (("ce_step", "validation perplexity", np.exp),
             ("psnr_step", "PSNR (dB)", lambda v: v),
             ("smooth_l1_step", "SmoothL1 to the next frame latent", lambda v: v))


def _eval_metric(records) -> tuple[str, str, str]:
  """(metric, axis label, scale) of the evaluation curve: perplexity (text), PSNR (images),
  SmoothL1 (next frame)."""
  if any("eval/psnr" in r for r in records):
    return "psnr", "PSNR in dB (last thinking step / DDIM count)", "linear"
  if any("eval/loss" in r for r in records):
    return "loss", "SmoothL1 (last thinking step)", "log"
  return "perplexity", "perplexity (last thinking step)", "log"


def plot_workdir(workdir) -> list[Path]:
  records = history(read_metrics(workdir))   # one run, even from a file that holds two
  if not records:
    raise ConfigError(f"workdir: {workdir} has no {METRICS_FILE} records to plot")
  out_dir = Path(workdir) / "plots"
  out_dir.mkdir(exist_ok=True)
  written = []

  fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4))
  steps, loss = _series(records, "train/loss")
  ax_loss.plot(steps, loss, label="train loss")
  ax_loss.set(xlabel="training step", ylabel="loss", title="Training loss", yscale="log")
  name, label, scale = _eval_metric(records)
  steps, values = _series(records, f"eval/{name}")
  ax_ppl.plot(steps, values, marker="o", label="validation")
  ood = sorted({k for r in records for k in r if k.startswith("ood/") and k.endswith(f"/{name}")})
  for key in ood:
    ax_ppl.plot(*_series(records, key), marker=".", label=key.split("/")[1])
  ax_ppl.set(xlabel="training step", ylabel=label, title=f"Evaluation {name}", yscale=scale)
  ax_ppl.legend()
  fig.tight_layout()
  written.append(out_dir / "curves.png")
  atomic.save_figure(fig, written[-1], dpi=120)
  plt.close(fig)

  per_step = next(((p, label, f) for p, label, f in _PER_STEP
                   if any(f"eval/{p}_1" in r for r in records)), None)
  if per_step:
    prefix, label, transform = per_step
    last = [r for r in records if f"eval/{prefix}_1" in r][-1]
    fig, (ax_ce, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    k, values = _per_step(last, f"eval/{prefix}")
    ax_ce.plot(k, transform(values), marker="o", label="validation")
    ood = sorted({name.rsplit("/", 1)[0] for name in last if name.startswith("ood/")
                  and name.endswith(f"/{prefix}_1")})
    for split in ood if prefix != "ce_step" else ():   # the text plot stays validation only
      ood_k, ood_values = _per_step(last, f"{split}/{prefix}")
      ax_ce.plot(ood_k, transform(ood_values), marker=".", label=split.split("/")[1])
    if len(ax_ce.lines) > 1:
      ax_ce.legend()
    ax_ce.set(xlabel="thinking step", ylabel=label, xticks=k,
              title=f"Thinking (checkpoint at step {last['step']})")
    k, energy = _per_step(last, "eval/energy_step")
    if len(k):
      ax_e.plot(k, energy, marker="o", color="C1")
    ax_e.set(xlabel="thinking step", ylabel="mean energy entering the step", xticks=k,
             title="Energy against thinking step")
    fig.tight_layout()
    written.append(out_dir / "thinking.png")
    atomic.save_figure(fig, written[-1], dpi=120)
    plt.close(fig)
  return written
