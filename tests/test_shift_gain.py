"""The System 2 gain per dataset against its shift (commands/shift.py), on hand-made tables:
perplexity per Dyck suite (text), pixel MSE / PSNR per noise level (images)."""

import math
import re

import numpy as np
import pytest

from ebt_jax import tasks
from ebt_jax.commands import image_eval, shift
from ebt_jax.commands.evaluation import System2Report
from ebt_jax.commands.image_eval import ContinuousReport
from ebt_jax.configs import denoise, dyck_ood
from ebt_jax.errors import ConfigError


def _report(ce):
  return System2Report("runs/dyck", 600, [1, 2, 4], [1, 4], ce, {}, [])


def test_gain_per_suite_and_plot(tmp_path):
  config = dyck_ood.get_config()          # S1: depth <= 4, suites 8 and 12
  config.inference.thinking_steps = 2     # the default row the second gain starts from
  ce = {"validation": [[1.0, 0.9], [0.8, 0.7], [0.75, 0.72]],
        "dyck_depth_8": [[2.0, 1.9], [1.5, 1.6], [1.2, 1.3]],
        "dyck_depth_12": [[3.0, 3.0], [3.0, 3.0], [3.0, 3.0]]}
  gain = shift.gain_report(_report(ce), config)
  assert gain.references == {"1_step": "N=1", "default": "the default N=2"}
  rows = {r["dataset"]: r for r in gain.rows}
  assert [(r["family"], r["shift"]) for r in gain.rows] == [("dyck", 4), ("dyck", 8), ("dyck", 12)]
  v, d8 = rows["validation"], rows["dyck_depth_8"]
  assert (v["best_steps"], v["best_of"], d8["best_steps"], d8["best_of"]) == (2, 4, 4, 1)
  # 1 - ppl_best / ppl_ref = 1 - exp(ce_best - ce_ref)
  assert v["gain_vs_1_step"] == pytest.approx(1 - math.exp(0.7 - 1.0))
  assert v["gain_vs_default"] == pytest.approx(1 - math.exp(0.7 - 0.8))
  assert d8["gain_vs_1_step"] == pytest.approx(1 - math.exp(1.2 - 2.0))
  assert d8["perplexity_default"] == pytest.approx(math.exp(1.5))
  assert rows["dyck_depth_12"]["gain_vs_default"] == 0
  text = gain.table()
  assert "dyck 8" in text and "+55.1%" in text    # 1 - exp(-0.8)
  path = gain.plot(tmp_path / "gain.png")
  assert path.read_bytes()[:4] == b"\x89PNG"


def test_shift_values_and_missing_references():
  config = dyck_ood.get_config("s2")
  config.inference.thinking_steps = 3
  config.data.source = "arithmetic"
  config.data.arithmetic.train_max_digits = 3
  assert shift.shift_of(config.data, "validation") == ("arithmetic", 3)
  assert shift.shift_of(config.data, "arithmetic_digits_6") == ("arithmetic", 6)
  config.data.source = "embedded"
  assert shift.shift_of(config.data, "validation") is None
  with pytest.raises(ConfigError, match="dyck_depth_8"):
    shift.shift_of(config.data, "depth_8")
  report = System2Report("r", 1, [2, 4], [2], {"validation": np.zeros((2, 1))}, {}, [])
  gain = shift.gain_report(report, config)     # no 1-step cell, no best-of-1 column
  assert gain.references["default"] == "the default N=3"
  assert gain.rows[0]["gain_vs_1_step"] is None and gain.rows[0]["gain_vs_default"] is None
  assert gain.plot("unused.png") is None and "  validation" in gain.table()


def _image_report(mse):
  """Rows of `ebt eval` on an image EBT: {(dataset, level): pixel MSE per thinking step 1..}."""
  rows = [{"dataset": d, "noise_level": level, "thinking_steps": k, "pixel_mse": m,
           "psnr": 10 * math.log10(255 ** 2 / m), "psnr_noisy": 10.0}
          for (d, level), per_step in mse.items() for k, m in enumerate(per_step, start=1)]
  return ContinuousReport("runs/denoise", 2000, "image_ebt", 256, rows)


def test_image_gain_per_noise_level_and_plot(tmp_path):
  config = denoise.get_config("cpu")      # trained with 2 thinking steps
  mse = {("validation", 0.1): [40.0, 20.0, 25.0, 30.0],
         ("ood_noise_0.2", 0.2): [200.0, 100.0, 80.0, 50.0],
         ("ood_noise_0.3", 0.3): [500.0, 500.0, 500.0, 600.0]}
  gain = shift.image_gain_report(_image_report(mse), config)
  assert gain.references == {"1_step": "1 step", "trained": "the trained 2 steps"}
  rows = {r["dataset"]: r for r in gain.rows}
  assert [(r["family"], r["shift"], r["best_steps"]) for r in gain.rows] == [
      ("noise", 0.1, 2), ("noise", 0.2, 4), ("noise", 0.3, 1)]
  v, o2, o3 = rows["validation"], rows["ood_noise_0.2"], rows["ood_noise_0.3"]
  assert v["gain_vs_1_step"] == pytest.approx(0.5) and v["gain_vs_trained"] == 0
  assert o2["gain_vs_1_step"] == pytest.approx(0.75) and o2["gain_vs_trained"] == pytest.approx(0.5)
  # PSNR gain = 10 log10(MSE(ref) / MSE(best)): a halved MSE is +3.01 dB.
  assert v["psnr_gain_vs_1_step"] == pytest.approx(10 * math.log10(2))
  assert o2["psnr_gain_vs_1_step"] == pytest.approx(10 * math.log10(4))
  assert o2["psnr_best"] == pytest.approx(10 * math.log10(255 ** 2 / 50))
  assert o3["gain_vs_1_step"] == 0 and o3["psnr_gain_vs_trained"] == 0
  text = gain.table()
  assert "ood_noise_0.2" in text and "+6.02" in text and "+75.0%" in text
  assert gain.as_json()["rows"][1]["pixel_mse_trained"] == 100.0
  path = gain.plot(tmp_path / "gain.png")
  assert path.read_bytes()[:4] == b"\x89PNG"
  # Without a 1-step row the gain from it is unknown, not zero.
  partial = {k: [m] for k, (_, m, *_) in mse.items()}
  report = _image_report(partial)
  for r in report.results:
    r["thinking_steps"] = 2
  row = shift.image_gain_report(report, config).rows[0]
  assert row["gain_vs_1_step"] is None and row["psnr_gain_vs_1_step"] is None
  assert row["gain_vs_trained"] == 0


def test_noise_levels_become_tasks_evaluating_validation_once():
  """`ebt eval --noise-levels` (image_eval._level_tasks): a task per level besides the
  training one; bad levels fail in one line naming the flag. End to end (the run's own
  level through this path, and the gain from real rows): tests/test_image_training.py."""
  task = tasks.build(denoise.get_config("cpu"))     # trained at 0.1
  assert image_eval._level_tasks(task, None) == [task]
  level_tasks = image_eval._level_tasks(task, [0.3, 0.1, 0.05, 0.3])
  assert [t.split_levels for t in level_tasks] == [{"validation": 0.1, "ood_noise_0.05": 0.05},
                                                   {"validation": 0.1, "ood_noise_0.3": 0.3}]
  asked = []

  def rows_fn(t, splits):
    asked.append(splits)
    return [{"dataset": split} for _, (split, _) in t.split_items(splits)], t.ood_split

  rows, first = image_eval._across_levels(level_tasks, rows_fn)
  assert asked == [None, ("ood_noise_0.3",)]       # the second level skips validation
  assert [r["dataset"] for r in rows] == ["validation", "ood_noise_0.05", "ood_noise_0.3"]
  assert first == "ood_noise_0.05"
  for levels, message in (([1.5], "--noise-levels 1.5: denoise.ood_noise_level: expected a "
                                  "level in (0, 1], got 1.5"),
                          ([0.1], "--noise-levels: expected a level other than the training "
                                  "level 0.1")):
    with pytest.raises(ConfigError, match=re.escape(message)):
      image_eval._level_tasks(task, levels)
