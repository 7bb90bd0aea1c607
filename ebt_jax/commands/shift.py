"""The System 2 gain against distribution shift, from `ebt eval`'s tables of an EBT run.

The gain of a dataset is the relative reduction of its error from a reference cell of the
table to the best cell:

    gain = 1 - error(best cell) / error(reference)

Text EBT runs (`gain_report`): the error is perplexity, so gain = 1 - exp(ce_best - ce_ref);
the cells are (thinking steps, best-of-N), the references both best of 1: the row N=1 and
the run's default N (`system2.num_steps`), both counted as the table counts thinking steps
(`inference.step_count`: with the official per_landscape default N=1 is one step on every
trained landscape; `--step-count total` makes N=1 a single step and the default N the
steps the model was validated with). The shift of a dataset is read from the synthetic data
config: Dyck validation words nest at most `data.dyck.train_max_depth` deep and suite
`dyck_depth_D` exactly D deep; arithmetic validation operands have at most
`data.arithmetic.train_max_digits` digits and suite `arithmetic_digits_N` exactly N.

Image EBT runs (`image_gain_report`): the error is the pixel MSE of the denoised images, the
cells are thinking steps, the references 1 step and the steps the model was trained with
(as training validates it: with S2's random step counts, the final step R+1 times). The
gain is also given in dB: PSNR(best) - PSNR(reference) = -10 log10(1 - gain). The shift is
the noise level: validation at the training level, `ood_noise_<level>` at the others
(`denoise.ood_noise_level`, or `ebt eval --noise-levels`).

The paper's claim to test is that the gain grows with the shift.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from ebt_jax import atomic, tasks
from ebt_jax.data import synthetic
from ebt_jax.inference import system2
from ebt_jax.tasks import options
from ebt_jax.tasks.image import psnr_of_mse
from ebt_jax.tasks.text import perplexity

SHIFT_AXES = {"dyck": "Dyck nesting depth (validation: the training maximum)",
              "arithmetic": "operand digits (validation: the training maximum)",
              "noise": "noise level (validation: the training level)"}
TRAINED_SIZE = {"dyck": "train_max_depth", "arithmetic": "train_max_digits"}


def shift_of(data_config, dataset: str) -> tuple[str, int] | None:
  """(family, depth or digits) of an evaluated dataset; None for a non-synthetic validation."""
  if dataset == "validation":
    family = data_config.source
    return (family, data_config[family][TRAINED_SIZE[family]]) if family in TRAINED_SIZE else None
  return synthetic.parse_suite(dataset)


def _num(key: str, spec: str) -> Callable[[dict], str]:
  return lambda r: "-" if r[key] is None else format(r[key], spec)


def _shift_cell(r: dict) -> str:
  return "-" if r["shift"] is None else f"{r['family'][:4]} {r['shift']}"


@dataclasses.dataclass
class GainReport:
  workdir: str
  references: dict[str, str]   # reference name (row keys' suffix) -> label, e.g. "N=1"
  rows: list[dict]
  definition: str              # the table's first line and the JSON's "definition"
  columns: tuple               # (header, format spec, row -> text) of each table column
  panels: tuple                # (y label, gain key prefix, scale) of each plot panel

  def table(self) -> str:
    lines = ["", self.definition,
             "  " + "".join(format(h, spec) for h, spec, _ in self.columns)]
    lines += ["  " + "".join(format(fn(r), spec) for _, spec, fn in self.columns)
              for r in self.rows]
    return "\n".join(lines)

  def as_json(self) -> dict:
    return {"definition": self.definition, "references": self.references, "rows": self.rows}

  def plot(self, path) -> Path | None:
    """Gain against the shift of the training family's datasets; None when there are none."""
    from ebt_jax.training.plots import plt
    points = [r for r in self.rows if r["shift"] is not None]
    if not points:
      return None
    family = points[0]["family"]
    points = sorted((r for r in points if r["family"] == family), key=lambda r: r["shift"])
    fig, axes = plt.subplots(1, len(self.panels), figsize=(6 * len(self.panels), 4),
                             squeeze=False)
    for ax, (ylabel, prefix, scale) in zip(axes[0], self.panels):
      for name, label in self.references.items():
        kept = [r for r in points if r[prefix + name] is not None]
        ax.plot([r["shift"] for r in kept], [scale * r[prefix + name] for r in kept], "o-",
                label=f"vs {label}")
      ax.set_xlabel(SHIFT_AXES[family])
      ax.set_ylabel(ylabel)
      ax.axhline(0, color="grey", lw=0.5)
      ax.legend()
    fig.suptitle(f"{Path(self.workdir).name}: System 2 gain to the best cell")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def _gain_row(dataset: str, shift, cells: list[dict], errors, references: dict,
              metric: str) -> dict:
  """A dataset's best (lowest-error) cell and the gain to it from each reference.

  `cells`: the row fields of each cell (e.g. {"best_steps": 2}); `errors`: the metric per
  cell; `references`: {name: index of its cell, None where the table lacks it}."""
  b = int(np.argmin(errors))
  best = float(errors[b])
  row = {"dataset": dataset, "family": shift and shift[0], "shift": shift and shift[1],
         **cells[b], f"{metric}_best": best}
  for name, i in references.items():
    ref = None if i is None else float(errors[i])
    row[f"{metric}_{name}"] = ref
    row[f"gain_vs_{name}"] = None if ref is None else 1 - best / ref
  return row


def gain_report(report, config) -> GainReport:
  """The gain of every dataset of an `evaluation.System2Report` of a text run with `config`."""
  default = system2.num_steps(tasks.build(config))
  steps, best_of = report.thinking_steps, report.best_of
  cells = [{"best_steps": k, "best_of": n} for k in steps for n in best_of]
  # A reference is best of 1 after k steps: the first column, when that is best of 1.
  index = lambda k: steps.index(k) * len(best_of) if k in steps and best_of[0] == 1 else None
  rows = [_gain_row(dataset, shift_of(config.data, dataset), cells,
                    [perplexity(c) for c in np.ravel(ce)],
                    {"1_step": index(1), "default": index(default)}, "perplexity")
          for dataset, ce in report.ce.items()]
  definition = ("System 2 gain per dataset: 1 - perplexity(best cell) / perplexity(reference), "
                f"references best of 1 after 1 step and after the run's default N={default} "
                "(inference.thinking_steps, else as trained)")
  columns = (("dataset", "<20", lambda r: r["dataset"]), ("shift", ">14", _shift_cell),
             ("1 step", ">10", _num("perplexity_1_step", ".4g")),
             ("default", ">10", _num("perplexity_default", ".4g")),
             ("best cell", ">12", lambda r: f"{r['best_steps']}x N={r['best_of']}"),
             ("best", ">10", _num("perplexity_best", ".4g")),
             ("gain vs 1", ">11", _num("gain_vs_1_step", "+.1%")),
             ("vs default", ">12", _num("gain_vs_default", "+.1%")))
  return GainReport(report.workdir, {"1_step": "N=1", "default": f"the default N={default}"},
                    rows, definition, columns,
                    (("System 2 gain: perplexity reduction (%)", "gain_vs_", 100),))


def image_gain_report(report, config) -> GainReport:
  """The gain at every noise level of an image EBT's `image_eval.ContinuousReport`."""
  trained = options.validation_steps(tasks.build(config).thinking)
  rows = []
  for dataset in dict.fromkeys(r["dataset"] for r in report.results):
    cells = [r for r in report.results if r["dataset"] == dataset]
    steps = [r["thinking_steps"] for r in cells]
    index = lambda k: steps.index(k) if k in steps else None
    level = cells[0]["noise_level"]
    row = _gain_row(dataset, ("noise", level), [{"best_steps": k} for k in steps],
                    [r["pixel_mse"] for r in cells],
                    {"1_step": index(1), "trained": index(trained)}, "pixel_mse")
    row["psnr_noisy"] = cells[0]["psnr_noisy"]
    row["psnr_best"] = psnr_of_mse(row["pixel_mse_best"])
    for name in ("1_step", "trained"):
      mse = row[f"pixel_mse_{name}"]
      row[f"psnr_{name}"] = None if mse is None else psnr_of_mse(mse)
      row[f"psnr_gain_vs_{name}"] = None if mse is None else row["psnr_best"] - row[f"psnr_{name}"]
    rows.append(row)
  definition = ("System 2 gain per noise level: 1 - MSE(best step count) / MSE(reference) "
                "(pixel MSE of the denoised images) and PSNR(best) - PSNR(reference) in dB, "
                "references 1 thinking step and the steps the model was trained with; "
                "PSNR (dB) of the noisy input, after 1 step, after the trained steps, at the "
                "best step count ('at'), then the gains")
  columns = (("dataset", "<18", lambda r: r["dataset"]),
             ("noise", ">7", lambda r: format(r["shift"], "g")),
             ("noisy", ">8", _num("psnr_noisy", ".2f")),
             ("1 step", ">8", _num("psnr_1_step", ".2f")),
             (f"{trained} steps", ">9", _num("psnr_trained", ".2f")),
             ("best", ">8", _num("psnr_best", ".2f")),
             ("at", ">4", lambda r: str(r["best_steps"])),
             ("dB vs 1", ">9", _num("psnr_gain_vs_1_step", "+.2f")),
             (f"vs {trained}", ">7", _num("psnr_gain_vs_trained", "+.2f")),
             ("MSE vs 1", ">10", _num("gain_vs_1_step", "+.1%")),
             (f"vs {trained}", ">8", _num("gain_vs_trained", "+.1%")))
  trained_label = f"the trained {trained} step{'s' * (trained != 1)}"
  return GainReport(report.workdir, {"1_step": "1 step", "trained": trained_label},
                    rows, definition, columns,
                    (("System 2 gain: pixel MSE reduction (%)", "gain_vs_", 100),
                     ("System 2 gain: PSNR (dB)", "psnr_gain_vs_", 1)))
