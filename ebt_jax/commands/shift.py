"""The System 2 gain against distribution shift, from `ebt eval`'s table of a text EBT run.

The gain of a dataset is the relative perplexity reduction from a reference cell to the
best (thinking steps, best-of-N) cell of the table:

    gain = 1 - perplexity(best cell) / perplexity(reference) = 1 - exp(ce_best - ce_ref)

with two references, both best of 1: the row N=1 and the run's default N
(`system2.num_steps`), both counted as the table counts thinking steps
(`inference.step_count`: with the official per_landscape default N=1 is one step on every
trained landscape; `--step-count total` makes N=1 a single step and the default N the
steps the model was validated with). The shift of a dataset is read from the synthetic data config:
Dyck validation words nest at most `data.dyck.train_max_depth` deep and suite
`dyck_depth_D` exactly D deep; arithmetic validation operands have at most
`data.arithmetic.train_max_digits` digits and suite `arithmetic_digits_N` exactly N. The
paper's claim to test is that the gain grows with the shift.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ebt_jax import tasks
from ebt_jax.data import synthetic
from ebt_jax.inference import system2
from ebt_jax.tasks.text import perplexity

SHIFT_AXES = {"dyck": "Dyck nesting depth", "arithmetic": "operand digits"}
TRAINED_SIZE = {"dyck": "train_max_depth", "arithmetic": "train_max_digits"}


def shift_of(data_config, dataset: str) -> tuple[str, int] | None:
  """(family, depth or digits) of an evaluated dataset; None for a non-synthetic validation."""
  if dataset == "validation":
    family = data_config.source
    return (family, data_config[family][TRAINED_SIZE[family]]) if family in SHIFT_AXES else None
  return synthetic.parse_suite(dataset)


@dataclasses.dataclass
class GainReport:
  workdir: str
  default_steps: int
  rows: list[dict]

  def table(self) -> str:
    lines = ["", "System 2 gain per dataset: 1 - perplexity(best cell) / perplexity(reference), "
             f"references best of 1 after 1 step and after the run's default "
             f"N={self.default_steps} (inference.thinking_steps, else as trained)",
             f"  {'dataset':<20}{'shift':>14}{'1 step':>10}{'default':>10}{'best cell':>12}"
             f"{'best':>10}{'gain vs 1':>11}{'vs default':>12}"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    for r in self.rows:
      shift = "-" if r["shift"] is None else f"{r['family'][:4]} {r['shift']}"
      lines.append(
          f"  {r['dataset']:<20}{shift:>14}{fmt(r['perplexity_1_step'], '.4g'):>10}"
          f"{fmt(r['perplexity_default'], '.4g'):>10}"
          f"{str(r['best_steps']) + 'x N=' + str(r['best_of']):>12}"
          f"{r['perplexity_best']:>10.4g}{fmt(r['gain_vs_1_step'], '+.1%'):>11}"
          f"{fmt(r['gain_vs_default'], '+.1%'):>12}")
    return "\n".join(lines)

  def as_json(self) -> dict:
    return {"definition": "gain = 1 - perplexity(best cell) / perplexity(reference); "
                          "references: best of 1 after 1 step, after the run's default "
                          "inference steps (default_steps)",
            "default_steps": self.default_steps, "rows": self.rows}

  def plot(self, path) -> Path | None:
    """Gain against the shift of the training family's datasets; None when there are none."""
    from ebt_jax.training.plots import plt
    points = [r for r in self.rows if r["shift"] is not None]
    if not points:
      return None
    family = points[0]["family"]
    points = sorted((r for r in points if r["family"] == family), key=lambda r: r["shift"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("gain_vs_1_step", "vs 1 step"),
                       ("gain_vs_default", f"vs the default N={self.default_steps}")):
      xs = [r["shift"] for r in points if r[key] is not None]
      ax.plot(xs, [100 * r[key] for r in points if r[key] is not None], "o-", label=label)
    ax.set_xlabel(f"{SHIFT_AXES[family]} (validation: the training maximum)")
    ax.set_ylabel("System 2 gain: perplexity reduction (%)")
    ax.set_title(f"{Path(self.workdir).name}: best (steps x best-of-N) cell")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def gain_report(report, config) -> GainReport:
  """The gain of every dataset of an `evaluation.System2Report` of a run with `config`."""
  default = system2.num_steps(tasks.build(config))
  steps, best_of = report.thinking_steps, report.best_of

  def cell(ce, k):
    return float(ce[steps.index(k)][0]) if k in steps and best_of[0] == 1 else None

  rows = []
  for dataset, ce in report.ce.items():
    ce = np.asarray(ce)
    i, j = np.unravel_index(np.argmin(ce), ce.shape)
    best = float(ce[i, j])
    shift = shift_of(config.data, dataset)
    row = {"dataset": dataset, "family": shift and shift[0], "shift": shift and shift[1],
           "best_steps": steps[i], "best_of": best_of[j], "perplexity_best": perplexity(best)}
    for name, k in (("1_step", 1), ("default", default)):
      ref = cell(ce, k)
      row[f"perplexity_{name}"] = None if ref is None else perplexity(ref)
      row[f"gain_vs_{name}"] = None if ref is None else float(1 - np.exp(best - ref))
    rows.append(row)
  return GainReport(report.workdir, default, rows)
