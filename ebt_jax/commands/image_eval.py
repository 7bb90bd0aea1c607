"""`ebt eval` for the image and video kinds: PSNR against compute, beside the DiT baseline.

* image EBT workdir: PSNR (dB) after each thinking step at the training noise level
  (dataset `validation`) and at `denoise.ood_noise_level` (dataset `ood_noise_<level>`),
  or at every level of `noise_levels` (`ebt eval --noise-levels`), with the noisy input's
  PSNR; with `--baseline` a DiT workdir, the DiT's PSNR per DDIM step count (network
  evaluations, NFE) on the same noisy images beside it (the paper's Table 4); a PNG grid
  of clean / noisy / denoised images in WORKDIR/plots/denoise.png; the System 2 gain per
  noise level (commands/shift.py, printed by `ebt eval`);
* DiT workdir alone: its PSNR per DDIM step count, and the same PNG;
* latent EBT workdir (next frame): SmoothL1 and MSE to the true next latent per thinking
  step, teacher-forced (every frame predicted from the true frames before it) and rolled
  out (the official `generate_video`: from the first `inference.video_condition_frames`
  true frames, each later frame predicted from the frames generated before it, with that
  many thinking steps per frame), beside copying the last frame.

PSNR is that of the mean pixel MSE over all evaluated images (the official PSNR of one
batch holding them all). Batches, keys and noise are those of training's evaluation
(`training/evaluate.py`), so the thinking-step rows at the trained count equal the run's
last `eval/psnr_step_k` (tested). The JSON has the text report's shape: `{"results":
[{"dataset", "thinking_steps" (or "ddim_steps"), "psnr", "psnr_noisy", ...}], "baseline":
{"results": [...]}}`.

Each level other than the training one is evaluated like the run's out-of-distribution
level, with the same key (`_level_tasks`): every level noises the same images with the same
Gaussian draws, only scaled to its level, so the gain against level (commands/shift.py) is
not blurred by different draws. (Each extra level's pass also re-evaluates `validation`;
its rows are kept once.)

Compute: an EBT thinking step is one forward and one backward pass through the network
(the gradient of the energy with respect to the image); a DDIM step is one forward pass.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import ml_collections
import numpy as np

from ebt_jax import atomic, tasks
from ebt_jax.data import images
from ebt_jax.errors import ConfigError, check
from ebt_jax.tasks.base import mean_batches, per_batch
from ebt_jax.tasks.image import DiT, ImageEBT, ImageTask, psnr_of_mse, with_step_size
from ebt_jax.tasks.video import NextFrame
from ebt_jax.training import runs

PNG_COLUMNS = 8
PNG_MIN_SIDE = 64      # small images are enlarged (nearest neighbour) to at least this

# Inference options that only the text EBT implements: (field, neutral value, flag).
_TEXT_ONLY = (("best_of", 1, "--best-of"), ("select", "min", "--select"),
              ("stop_on", "none", "--stop-on"), ("accept_lower", False, "--accept-lower"),
              ("langevin_first_step_only", False, "--langevin-first-step-only"),
              ("langevin_noise", -1.0, "--langevin-noise"),
              ("initial_noise_scale", -1.0, "--initial-noise-scale"),
              ("step_count", "per_landscape", "--step-count"),
              ("step_size_final_landscape", False, "inference.step_size_final_landscape"))


@dataclasses.dataclass
class ContinuousReport:
  workdir: str
  step: int
  model: str                        # the task's name (the JSON's "kind")
  num_images: int
  results: list[dict]               # rows of the JSON "results"
  baseline: dict | None = None      # {"workdir", "checkpoint_step", "results"}
  png: str | None = None
  copy_last: dict | None = None     # latent EBT: SmoothL1 / MSE of copying the last frame
  rollout: list[dict] | None = None   # latent EBT: the rollout per thinking step count

  def as_json(self) -> dict:
    out = {"workdir": self.workdir, "checkpoint_step": self.step, "kind": self.model,
           "num_examples": self.num_images, "results": self.results}
    if self.baseline:
      out["baseline"] = self.baseline
    if self.copy_last:
      out["copy_last_frame"] = self.copy_last
    if self.rollout:
      out["rollout"] = self.rollout
    if self.png:
      out["png"] = self.png
    return out

  def table(self) -> str:
    if self.copy_last is not None:   # next-frame rows (no PSNR)
      return self._latent_table()
    datasets = list(dict.fromkeys(r["dataset"] for r in self.results))
    levels = {r["dataset"]: r["noise_level"] for r in self.results}
    noisy = {r["dataset"]: r["psnr_noisy"] for r in self.results}
    title = (f"PSNR (dB) of {self.workdir} (checkpoint {self.step}) on {self.num_images} "
             f"validation images")
    if self.baseline:
      title += f"; DiT baseline {self.baseline['workdir']} (checkpoint " \
               f"{self.baseline['checkpoint_step']})"
    width = max(24, *(len(d) + 4 for d in datasets))
    lines = [title, "", f"  {'':<22}" + "".join(f"{d:>{width}}" for d in datasets),
             f"  {'noise level':<22}" + "".join(f"{levels[d]:>{width}g}" for d in datasets),
             f"  {'noisy input':<22}" + "".join(f"{noisy[d]:>{width}.2f}" for d in datasets)]
    lines += self._method_rows(self.results, datasets, width)
    if self.baseline:
      lines += self._method_rows(self.baseline["results"], datasets, width)
    lines += ["", "An EBT thinking step is one forward and one backward pass; a DiT NFE (DDIM "
              "step) one forward pass."]
    if self.png:
      lines.append(f"Clean / noisy / denoised images: {self.png}")
    return "\n".join(lines)

  @staticmethod
  def _method_rows(rows, datasets, width) -> list[str]:
    by_label = {}
    for r in rows:
      if "thinking_steps" in r:
        k = r["thinking_steps"]
        label = f"EBT {k} thinking step" + ("s" if k > 1 else "")
      else:
        label = f"DiT {r['nfe']} NFE"
      by_label.setdefault(label, {})[r["dataset"]] = r["psnr"]
    return [f"  {label:<22}" + "".join(f"{cells.get(d, float('nan')):>{width}.2f}"
                                       for d in datasets)
            for label, cells in by_label.items()]

  def _latent_table(self) -> str:
    rolled = {r["thinking_steps"]: r for r in self.rollout or ()}
    lines = [f"Next-frame prediction of {self.workdir} (checkpoint {self.step}) on "
             f"{self.num_images} validation sequences: error to the true next frame latent",
             "", f"  {'':<24}{'teacher-forced':>36}{'rollout':>36}",
             f"  {'':<24}" + f"{'SmoothL1':>12}{'MSE':>12}{'energy':>12}" * 2]
    for r in self.results:
      k = r["thinking_steps"]
      row = rolled.get(k)
      cells = ("" if row is None else
               f"{row['smooth_l1']:>12.4g}{row['mse']:>12.4g}{row['energy']:>12.4g}")
      lines.append(f"  {str(k) + ' thinking step' + ('s' if k > 1 else ''):<24}"
                   f"{r['smooth_l1']:>12.4g}{r['mse']:>12.4g}{r['energy']:>12.4g}{cells}")
    if self.copy_last:
      lines.append(f"  {'copy the last frame':<24}{self.copy_last['smooth_l1']:>12.4g}"
                   f"{self.copy_last['mse']:>12.4g}{'':>12}")
    if rolled:
      first = next(iter(rolled.values()))
      lines += ["", f"Rollout: the {first['generated_frames']} frames after the first "
                f"{first['condition_frames']} true ones, each predicted from the true and "
                f"predicted frames before it (energy: where the last step started)."]
    return "\n".join(lines)


def _check_text_only_options(task) -> None:
  for field, neutral, flag in _TEXT_ONLY:
    value = task.config.inference[field]
    check(value == neutral, flag, f"the default ({neutral!r}) for {task.describe()} (text EBTs "
          f"only)", value)


def _mean(outputs: list[dict], split: str, name: str):
  return np.mean([b[split][name] for b in outputs], axis=0)


def _grid_rows(rows: list[np.ndarray]) -> np.ndarray:
  rows = [np.asarray(r[:PNG_COLUMNS], np.float32) for r in rows]
  side = rows[0].shape[1]
  scale = max(1, -(-PNG_MIN_SIDE // side))
  if scale > 1:
    rows = [np.repeat(np.repeat(r, scale, axis=1), scale, axis=2) for r in rows]
  return images.image_grid(rows)


def evaluate_workdir(workdir, *, thinking_steps=None, ddim_steps=None, baseline=None,
                     noise_levels=None, num_batches: int | None = None,
                     batch_size: int | None = None, overrides=None, write_png: bool = True,
                     log=print) -> ContinuousReport:
  """The report of an image EBT, DiT or latent EBT run directory's newest checkpoint.

  `overrides(config)` may edit the restored configs' `inference` sections (CLI flags);
  `thinking_steps` (default 1..inference.thinking_steps or thinking.num_steps) and
  `ddim_steps` (default inference.ddim_steps, or every timestep) pick the rows;
  `noise_levels` (image runs; default the training and `denoise.ood_noise_level`) the
  datasets, the training level always evaluated (as `validation`).
  """
  task, step, params = runs.restore_task(workdir, overrides)
  config = task.config
  check(isinstance(task, (ImageTask, NextFrame)), "--workdir",
        "a run of an image EBT, a DiT or a latent EBT", task.describe())
  _check_text_only_options(task)
  if baseline is not None:
    check(isinstance(task, ImageEBT), "--baseline", "given with an image EBT workdir only",
          baseline)
  if isinstance(task, NextFrame):
    check(noise_levels is None, "--noise-levels", "none for a latent EBT run (image runs "
          "only)", noise_levels)
  else:
    level_tasks = _level_tasks(task, noise_levels)
  if isinstance(task, DiT):
    check(not thinking_steps, "--thinking-steps", "none for a DiT run (use --ddim-steps)",
          thinking_steps)
  else:
    steps = sorted(set(thinking_steps or range(1, task.eval_steps + 1)))
    check(all(isinstance(k, int) and k >= 1 for k in steps), "--thinking-steps",
          "positive integers", steps)
    params = with_step_size(params, config)
  num_batches = num_batches or config.train.eval_batches
  batch_size = batch_size or config.train.batch_size
  program = runs.program_here(config)
  datasets = task.make_datasets()
  key = task.eval_key()
  log(f"evaluating {workdir}: {num_batches} batches of {batch_size}")
  with program.context():
    batches = [program.put_global(b)
               for b in datasets.eval_batches("validation", batch_size, num_batches)]
    if isinstance(task, NextFrame):
      return _latent_report(workdir, step, task, params, batches, key, steps)
    if isinstance(task, DiT):
      rows, outputs, counts = _dit_level_rows(level_tasks, params, batches, key, ddim_steps)
      report = ContinuousReport(str(workdir), step, task.name, num_batches * batch_size, rows)
      denoised = {f"DiT, {counts[-1]} NFE": outputs[0]}
    else:
      rows, outputs = _across_levels(
          level_tasks, lambda t, splits: _ebt_rows(t, params, batches, key, steps, splits))
      report = ContinuousReport(str(workdir), step, task.name, num_batches * batch_size, rows)
      denoised = {f"EBT, {max(steps)} step{'s' * (max(steps) != 1)}": outputs[0]}
      if baseline is not None:
        base, base_step, base_params = runs.restore_task(baseline, overrides)
        _check_baseline(base, task, baseline)
        log(f"evaluating the baseline {baseline}")
        base_rows, base_batches, counts = _dit_level_rows(
            _level_tasks(base, noise_levels), base_params, batches, key, ddim_steps)
        report.baseline = {"workdir": str(baseline), "checkpoint_step": base_step,
                           "kind": base.name, "results": base_rows}
        denoised[f"DiT, {counts[-1]} NFE"] = base_batches[0]
  if write_png:
    report.png = str(_write_png(Path(workdir), level_tasks[0], jax.device_get(batches[0]),
                                denoised))
  return report


def _level_tasks(task: ImageTask, levels) -> list[ImageTask]:
  """The run's task for the default levels; else one per level other than the training
  one, that level as its `denoise.ood_noise_level` (evaluated with the run's OOD key)."""
  if levels is None:
    return [task]
  training = task.denoise.noise_level
  others = sorted(set(levels) - {training})
  check(bool(others), "--noise-levels", f"a level other than the training level {training:g} "
        f"(always evaluated, as `validation`)", levels)
  out = []
  for level in others:
    c = ml_collections.ConfigDict(task.config.to_dict())
    c.denoise.ood_noise_level = float(level)
    try:
      out.append(tasks.build(c))
    except ConfigError as e:   # the level rules of ImageTask.validate, named by the flag
      raise ConfigError(f"--noise-levels {level:g}: {e}") from None
  return out


def _across_levels(level_tasks, rows_fn):
  """(rows, eval outputs of the first task) of `rows_fn(task, splits) -> (rows, outputs)`
  over the level tasks: the first evaluates every split (`splits` None), the others only
  their own level's, since `validation` is the same for all."""
  rows, first = [], None
  for i, t in enumerate(level_tasks):
    r, outputs = rows_fn(t, None if i == 0 else (t.ood_split,))
    rows += r
    first = outputs if first is None else first
  return rows, first


def _dit_level_rows(level_tasks, params, batches, key, ddim_steps):
  """`_across_levels` of a DiT and the first level's DDIM step counts."""
  rows, outputs = _across_levels(
      level_tasks,
      lambda t, splits: _dit_rows(t, params, batches, key, _ddim_counts(t, ddim_steps), splits))
  return rows, outputs, _ddim_counts(level_tasks[0], ddim_steps)


def _ddim_counts(task: DiT, ddim_steps) -> tuple[int, ...]:
  if ddim_steps:
    c = ml_collections.ConfigDict(task.config.to_dict())
    c.inference.ddim_steps = tuple(ddim_steps)
    return tasks.build(c).ddim_counts   # validates the counts
  return task.ddim_counts


def _check_baseline(base, task: ImageEBT, workdir) -> None:
  check(isinstance(base, DiT), "--baseline", f"a DiT run directory ({workdir} holds a "
        f"{base.describe()} model)", str(workdir))
  for field in ("model.image_size", "model.image_channels", "denoise.diffusion_steps",
                "denoise.noise_level", "denoise.ood_noise_level"):
    section, name = field.split(".")
    ours, theirs = task.config[section][name], base.config[section][name]
    check(theirs == ours, f"--baseline {field}", f"{ours!r} as in the EBT run", theirs)


def _ebt_rows(task: ImageEBT, params, batches, key, steps, splits=None):
  fn = jax.jit(functools.partial(task.eval_batch, num_steps=max(steps), images=True,
                                 splits=splits))
  outputs = per_batch(fn, params, batches, key)
  rows = []
  for _, (split, level) in task.split_items(splits):
    mse_steps = _mean(outputs, split, "pixel_mse_steps")
    energy = _mean(outputs, split, "energy_steps")
    noisy = psnr_of_mse(_mean(outputs, split, "pixel_mse_noisy"))
    for k in steps:
      rows.append({"dataset": split, "noise_level": level, "thinking_steps": k,
                   "psnr": psnr_of_mse(mse_steps[k - 1]), "psnr_noisy": noisy,
                   "pixel_mse": float(mse_steps[k - 1]), "energy": float(energy[k - 1])})
  return rows, outputs


def _dit_rows(task: DiT, params, batches, key, counts, splits=None):
  fn = jax.jit(functools.partial(task.eval_batch, counts=counts, images=True, splits=splits))
  outputs = per_batch(fn, params, batches, key)
  recursions = task.config.inference.recurse_diffusion
  rows = []
  for _, (split, level) in task.split_items(splits):
    mse = _mean(outputs, split, "pixel_mse")
    noisy = psnr_of_mse(_mean(outputs, split, "pixel_mse_noisy"))
    for n, m in zip(counts, mse):
      rows.append({"dataset": split, "noise_level": level, "ddim_steps": n,
                   "recursions": recursions, "nfe": n * (recursions + 1),
                   "psnr": psnr_of_mse(m), "psnr_noisy": noisy, "pixel_mse": float(m)})
  return rows, outputs


def _write_png(workdir: Path, task: ImageTask, clean: np.ndarray, denoised: dict) -> Path:
  """Rows: clean; then per noise level the noisy images and each model's output
  (`denoised`: {row label: a batch's eval output}), labelled on the left."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows, labels = [clean], ["clean"]
  for split, level in task.split_levels.items():
    first = next(iter(denoised.values()))
    rows.append(first[split]["noisy"])
    labels.append(f"noisy ({level:g})")
    for label, d in denoised.items():
      rows.append(d[split]["denoised"])
      labels.append(label)
  grid = _grid_rows(rows)
  out = workdir / "plots" / "denoise.png"
  out.parent.mkdir(parents=True, exist_ok=True)
  height, width = grid.shape[:2]
  fig, ax = plt.subplots(figsize=(1.3 + width / 100, 0.2 + height / 100), dpi=100)
  ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest")
  cell = (height - 2) / len(rows)
  ax.set_yticks([2 + cell * (i + 0.5) for i in range(len(rows))], labels)
  ax.set_xticks([])
  ax.tick_params(length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)
  fig.tight_layout()
  atomic.save_figure(fig, out)
  plt.close(fig)
  return out


def _latent_report(workdir, step, task: NextFrame, params, batches, key,
                   steps) -> ContinuousReport:
  fn = jax.jit(functools.partial(task.eval_batch, num_steps=max(steps)))
  outputs = per_batch(fn, params, batches, key)
  means = {name: _mean(outputs, "validation", name)
           for name in ("smooth_l1_steps", "mse_steps", "energy_steps")}
  rows = [{"dataset": "validation", "thinking_steps": k,
           "smooth_l1": float(means["smooth_l1_steps"][k - 1]),
           "mse": float(means["mse_steps"][k - 1]), "energy": float(means["energy_steps"][k - 1])}
          for k in steps]
  rollout = []
  for k in steps:
    fn = jax.jit(functools.partial(task.rollout_batch, num_steps=k))
    r = mean_batches(per_batch(fn, params, batches, key))
    rollout.append({"thinking_steps": k,
                    "condition_frames": task.config.inference.video_condition_frames,
                    "generated_frames": task.config.model.context_length + 1
                                        - task.config.inference.video_condition_frames,
                    **{name: float(r[name]) for name in ("smooth_l1", "mse",
                                                         "smooth_l1_first_frame",
                                                         "mse_first_frame")},
                    "energy": float(r["energy_steps"][k - 1])})
  host = [np.asarray(jax.device_get(b), np.float64) for b in batches]
  diff = [np.abs(b[:, 1:] - b[:, :-1]) for b in host]
  copy = {"smooth_l1": float(np.mean([np.mean(np.where(d < 1, 0.5 * d * d, d - 0.5))
                                      for d in diff])),
          "mse": float(np.mean([np.mean(d * d) for d in diff]))}
  n = sum(len(b) for b in host)
  return ContinuousReport(str(workdir), step, task.name, n, rows, copy_last=copy,
                          rollout=rollout)
