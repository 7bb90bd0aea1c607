"""`ebt scale`: a scaling study of the EBT against the same-size Transformer++.

    ebt scale --grid cpu --workdir runs/scale_cpu [--config BASE] [--json OUT]
        [--print-commands] [--aggregate-only] [--grid.axes=data,params]
        [--config.train.batch_size=8]

The study (`--grid`: configs/scale.py's `get_config(variant)` or a study file; fields
overridden by `--grid.FIELD=VALUE`) names the grid's default base run config (`base`, a
config spec as `ebt train --config` takes it; `--config BASE` replaces it) and the settings
every point adds (`settings`, `field=value` strings, which the CLI extends with its
`--config.*` overrides); it is the one place a study's runs are defined. Each point of the
grid is a normal run directory, `WORKDIR/<axis>/<model>[-<value>]`, whose config is the
base config plus `--config.<setting>` overrides: exactly what the printed `ebt train`
command builds. Axes (`axes`):
* data: one run per model, evaluated at `data_steps` (the run's eval interval is their
  gcd); x = tokens seen (step x batch x context);
* params: the `sizes` ladder of (width, depth, heads); x = parameter count (all of them,
  embeddings and heads included);
* depth: `depths` at the base width; x = layers;
* batch: `batch_sizes` at the base size and step count; x = batch size;
* flops: no runs of its own; the evaluations of the params runs after their learning-rate
  warmup at their training FLOPs (the task's analytic FLOPs per step x step), keeping the
  compute frontier (records no cheaper record beats).
The two models (`models`: name -> the settings that make it, configs/scale.py: the EBT,
then the Transformer++ of configs/transformer.py) train at every point. The loss is the
validation cross-entropy of the final prediction (the EBT's last thinking step). Fits:
ebt_jax/commands/powerlaw.py. The scaling-rate ratio is the paper's: the first model's
log-log slope over the second's (of the pure power law, so both are the same kind of
number; > 1: the EBT's loss falls faster along the axis).

A point is finished when its run has a checkpoint at its last step and a validation record
of that step (metrics.jsonl): what the trainer writes at the end, not a marker. Finished
points are skipped, unfinished ones train (resuming where a killed study stopped); with
`--aggregate-only` nothing trains, and the runs may come from anywhere (`--print-commands`
prints an `ebt train` command per unfinished point for a launcher, see launch/README.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from pathlib import Path
from typing import Callable

import jax
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from flax import traverse_util  # noqa: E402

from ebt_jax import atomic, tasks  # noqa: E402
from ebt_jax.commands import powerlaw  # noqa: E402
from ebt_jax.errors import ConfigError, check  # noqa: E402
from ebt_jax.training import metrics as metrics_lib  # noqa: E402
from ebt_jax.training import runs  # noqa: E402
from ebt_jax.training import trainer  # noqa: E402

AXES = ("data", "params", "depth", "batch", "flops")
STUDY_FIELDS = ("base", "settings", "models", "axes", "data_steps", "sizes", "depths",
                "batch_sizes")
AXIS_LABELS = {"data": "tokens seen", "params": "parameters", "depth": "layers",
               "batch": "batch size", "flops": "training FLOPs (analytic)"}


@dataclasses.dataclass(frozen=True)
class Point:
  """One training run of the study: `overrides` ("field=value") on top of the base config
  give its `config`."""
  axis: str
  model: str
  value: str            # the point's label along its axis ("" for the data run)
  overrides: tuple[str, ...]
  workdir: Path
  config: ml_collections.ConfigDict

  @property
  def name(self) -> str:
    return f"{self.axis}/{self.model}" + (f"-{self.value}" if self.value else "")


def check_study(study: ml_collections.ConfigDict) -> None:
  """A one-line error unless `study` has a scaling study's fields (configs/scale.py's)."""
  if missing := [f for f in STUDY_FIELDS if f not in study]:
    raise ConfigError(f"--grid: not a scaling study (no {', '.join(missing)}); use one of "
                      "configs/scale.py's, e.g. --grid cpu")


def plan(study: ml_collections.ConfigDict, workdir, make_config: Callable) -> list[Point]:
  """The study's runs, in training order (axis by axis, both models per value).

  `make_config(overrides)`: the base run config with `--config.<field>=<value>` overrides
  applied, as `ebt train` builds it (the CLI passes its own loader)."""
  check_study(study)
  axes = tuple(study.axes)
  for axis in axes:
    check(axis in AXES, "--grid.axes", f"axes from {AXES}", axis)
  check(len(study.models) == 2, "--grid.models", "two models (the first's scaling rate "
        "is compared with the second's)", tuple(study.models.keys()))
  check(len(axes) > 0, "--grid.axes", "at least one axis", axes)
  grid: list[tuple[str, str, tuple[str, ...]]] = []
  if "data" in axes:
    steps = tuple(study.data_steps)
    check(len(steps) >= 2 and min(steps) >= 1, "--grid.data_steps",
          "at least 2 positive step counts", steps)
    grid.append(("data", "", (f"train.num_steps={max(steps)}",
                               f"train.eval_every={math.gcd(*steps)}")))
  if "params" in axes or "flops" in axes:
    grid += [("params", f"d{d}l{l}h{h}", (f"model.dim={d}", f"model.n_layers={l}",
                                           f"model.n_heads={h}")) for d, l, h in study.sizes]
  if "depth" in axes:
    grid += [("depth", f"l{l}", (f"model.n_layers={l}",)) for l in study.depths]
  if "batch" in axes:
    grid += [("batch", f"b{b}", (f"train.batch_size={b}",)) for b in study.batch_sizes]
  points = []
  for axis, value, extra in grid:
    for model, model_settings in study.models.items():
      overrides = tuple(study.settings) + tuple(model_settings) + extra
      points.append(Point(axis, model, value, overrides,
                          Path(workdir) / axis / (model + (f"-{value}" if value else "")),
                          make_config([f"--config.{o}" for o in overrides])))
  return points


def train_command(study, point: Point) -> str:
  """The `ebt train` command of a point (what a launcher runs; the same config as here)."""
  return shlex.join(["ebt", "train", "--config", study.base, "--workdir", str(point.workdir),
                     "--no-progress"] + [f"--config.{o}" for o in point.overrides])


def is_finished(point: Point) -> bool:
  """Whether the point's run reached the point's last step: a committed checkpoint of that
  step and the validation record the trainer writes after it."""
  last = point.config.train.num_steps
  return (point.workdir / "checkpoints" / str(last)).is_dir() and any(
      r["step"] == last and "eval/ce_step_1" in r for r in _history(point.workdir))


# Fields a run may change on resume (runs.RESUMABLE_CHANGES) that still make it another point.
_POINT_FIELDS = ("train.num_steps", "train.batch_size")


def mismatch(point: Point) -> list[str]:
  """The fields where the run in the point's directory differs from the point's config:
  those the trainer would refuse to resume with, and the point's length and batch."""
  def flat(config):
    return traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep=".")
  want, have = flat(point.config), flat(runs.load_config(point.workdir))
  return sorted(k for k in want if have.get(k) != want[k] and (
      k in _POINT_FIELDS or not k.startswith(runs.RESUMABLE_CHANGES)))


def _history(workdir) -> list[dict]:
  return metrics_lib.history(metrics_lib.read_metrics(workdir))


def validation_losses(workdir) -> dict[int, float]:
  """step -> validation cross-entropy of the final prediction (the last thinking step)."""
  out = {}
  for r in _history(workdir):
    steps = [k for k in r if k.startswith("eval/ce_step_")]
    if steps:
      out[r["step"]] = r[max(steps, key=lambda k: int(k.rsplit("_", 1)[1]))]
  return out


@dataclasses.dataclass
class Curve:
  """One model's points along one axis and their fit (None with fewer than 2 points)."""
  x: list[float]
  loss: list[float]
  fit: powerlaw.Fit | None


@dataclasses.dataclass
class Report:
  curves: dict[str, dict[str, Curve]]     # axis -> model -> curve
  missing: list[str]                      # points without a finished run
  failed: list[str]                       # points whose training stopped with an error

  def ratio(self, axis: str):
    """The first model's scaling rate over the second's along `axis` (None without fits)."""
    first, second = self.curves[axis].values()
    if first.fit is None or second.fit is None:
      return None
    return powerlaw.ratio(first.fit.pure, second.fit.pure)

  def table(self) -> str:
    head = (f"{'axis':<7}{'model':<12}{'points':>7}  {'slope b (L = a x^-b)':<28}"
            f"{'offset law: b, c':<32}rate ratio (1st/2nd)")
    lines = [head, "-" * len(head)]
    for axis, models in self.curves.items():
      r = self.ratio(axis)
      for i, (model, c) in enumerate(models.items()):
        cells = [f"{axis:<7}{model:<12}{len(c.x):>7}  "]
        if c.fit is None:
          cells.append(f"{'(too few points)':<28}{'':<32}")
        else:
          p, o = c.fit.pure, c.fit.offset
          cells.append(f"{_with_ci(p):<28}")
          cells.append(f"{_with_ci(o) + f', c={o.c:.3g}' if o else '-':<32}")
        if i == 0 and r is not None:
          cells.append(f"{r[0]:.3f} [{r[1][0]:.3f}, {r[1][1]:.3f}]")
        lines.append("".join(cells).rstrip())
    lines.append(f"b with its {powerlaw.LEVEL:.0%} interval (fit covariance, Student t); the "
                 "ratio of the pure laws' slopes (delta method).")
    if self.missing:
      lines.append(f"Not finished ({len(self.missing)}): {', '.join(self.missing)}")
    if self.failed:
      lines.append(f"Failed ({len(self.failed)}): {', '.join(self.failed)}")
    return "\n".join(lines)

  def as_json(self) -> dict:
    out = {"axes": {}, "missing": self.missing, "failed": self.failed,
           "confidence_level": powerlaw.LEVEL}
    for axis, models in self.curves.items():
      r = self.ratio(axis)
      out["axes"][axis] = {
          "models": {m: {"x": c.x, "loss": c.loss,
                         "fit": c.fit.as_json() if c.fit else None} for m, c in models.items()},
          "rate_ratio_first_to_second": None if r is None else {
              "value": r[0], "ci": [v if math.isfinite(v) else None for v in r[1]]}}
    return out

  def plot(self, folder) -> list[Path]:
    """One log-log PNG per axis with points: both models' points and fitted laws."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for axis, models in self.curves.items():
      if not any(c.x for c in models.values()):
        continue
      fig, ax = plt.subplots(figsize=(6, 4.2))
      for (model, c), color in zip(models.items(), ("C0", "C1")):
        if not c.x:
          continue
        ax.plot(c.x, c.loss, "o", color=color, label=f"{model} (validation)")
        if c.fit is not None:
          law = c.fit.best
          grid = np.geomspace(min(c.x), max(c.x), 100)
          kind = f" + {law.c:.3g}" if c.fit.offset else ""
          ax.plot(grid, law(grid), "-", color=color,
                  label=f"{model} fit: {law.a:.3g} x^-{law.b:.3g}{kind}")
      ax.set_xscale("log")
      ax.set_yscale("log")
      ax.set_xlabel(AXIS_LABELS[axis])
      ax.set_ylabel("validation loss (nats/token)")
      r = self.ratio(axis)
      names = "/".join(models)
      ax.set_title(f"scaling along {axis}" + (f": rate ratio {names} {r[0]:.2f}" if r else ""))
      ax.legend(fontsize=8)
      fig.tight_layout()
      path = folder / f"{axis}.png"
      atomic.save_figure(fig, path, dpi=120)
      plt.close(fig)
      paths.append(path)
    return paths


def _with_ci(law: powerlaw.Law) -> str:
  lo, hi = law.b_ci
  return f"{law.b:.4f}" + (f" [{lo:.4f}, {hi:.4f}]" if math.isfinite(lo) else "")


def _points_of(study, point: Point) -> list[tuple[float, float]]:
  """(x, loss) of a finished point along its axis (flops: its whole curve, before the
  frontier is taken)."""
  losses = validation_losses(point.workdir)
  config = point.config
  m, tr = config.model, config.train
  if point.axis == "data":
    return [(float(s * tr.batch_size * m.context_length), losses[s])
            for s in study.data_steps if s in losses]
  final = losses[tr.num_steps]
  if point.axis == "params":
    shapes = jax.eval_shape(tasks.build(config).init_params, jax.random.key(0))
    return [(float(sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(shapes))),
             final)]
  return [(float({"depth": m.n_layers, "batch": tr.batch_size}[point.axis]), final)]


def _frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
  """The points that no cheaper-or-equal point beats (compute-optimal frontier)."""
  out, best = [], math.inf
  for x, loss in sorted(points):
    if loss < best:
      out.append((x, loss))
      best = loss
  return out


def aggregate(study, points: list[Point], failed=(), log=print) -> Report:
  """Fits the finished points; a run whose config is not its point's is left out (named)."""
  curves: dict[str, dict[str, list]] = {a: {m: [] for m in study.models.keys()}
                                        for a in study.axes}
  missing = []
  for p in points:
    if not is_finished(p):
      missing.append(p.name)
      continue
    if wrong := mismatch(p):
      log(f"{p.name}: left out, its run differs from the study's point in {', '.join(wrong)}")
      missing.append(p.name)
      continue
    if p.axis in curves:
      curves[p.axis][p.model] += _points_of(study, p)
    if p.axis == "params" and "flops" in curves:
      config = p.config
      per_step = tasks.build(config).flops(config.train.batch_size)
      curves["flops"][p.model] += [(per_step * s, loss)
                                   for s, loss in validation_losses(p.workdir).items()
                                   if s > config.optimizer.warmup_steps]
  out = {}
  for axis, models in curves.items():
    out[axis] = {}
    for model, pts in models.items():
      pts = _frontier(pts) if axis == "flops" else sorted(pts)
      x, loss = [p[0] for p in pts], [p[1] for p in pts]
      enough = len(set(x)) >= 2
      out[axis][model] = Curve(x, loss, powerlaw.fit(x, loss) if enough else None)
  return Report(out, missing, list(failed))


def run_study(study: ml_collections.ConfigDict, workdir, make_config: Callable,
              *, train: bool = True, log=print) -> Report:
  """Trains the unfinished points (unless `train` is False), then fits what is finished
  (`make_config`: see `plan`)."""
  points = plan(study, workdir, make_config)
  failed = []
  if train:
    todo = [p for p in points if not is_finished(p)]
    log(f"{len(points) - len(todo)} of {len(points)} points finished; training {len(todo)}.")
    for i, p in enumerate(todo, 1):
      log(f"[{i}/{len(todo)}] {p.name}: {train_command(study, p)}")
      try:
        trainer.train(p.config, p.workdir, progress=False, log=log)
      except trainer.Preempted:
        raise
      except (trainer.TrainingError, ConfigError) as e:
        log(f"{p.name} failed: {e}")
        failed.append(p.name)
  return aggregate(study, points, failed, log)


def write_outputs(report: Report, workdir, json_path=None) -> list[Path]:
  """The plots (WORKDIR/plots/<axis>.png), WORKDIR/scale.json and `json_path` if given."""
  workdir = Path(workdir)
  written = report.plot(workdir / "plots")
  for path in (workdir / "scale.json", json_path):
    if path:
      atomic.write_json(path, report.as_json())
      written.append(Path(path))
  return written
