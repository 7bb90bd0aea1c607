"""The System 2 gain per dataset against its shift (commands/shift.py), on a hand-made table."""

import math

import numpy as np
import pytest

from ebt_jax.commands import shift
from ebt_jax.commands.evaluation import System2Report
from ebt_jax.configs import dyck_ood
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
  assert gain.default_steps == 2
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
  assert gain.default_steps == 3
  assert gain.rows[0]["gain_vs_1_step"] is None and gain.rows[0]["gain_vs_default"] is None
  assert gain.plot("unused.png") is None and "  validation" in gain.table()
