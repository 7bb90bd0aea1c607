"""`ebt scale`: the power-law fits against synthetic curves of known exponents, and the
`micro` study end to end through the CLI: runs started elsewhere (by its printed commands),
a killed point that resumes, finished points left alone, aggregation and outputs."""

import contextlib
import io
import json
import shlex
import shutil

import numpy as np
import pytest

from ebt_jax import cli
from ebt_jax.commands import powerlaw
from ebt_jax.training import metrics as metrics_lib

REPEATS = 200


def test_t_quantiles_match_the_table():
  for df, want in ((1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042)):
    assert powerlaw.t_quantile(0.975, df) == pytest.approx(want, abs=1e-3)
  assert powerlaw.t_quantile(0.995, 7) == pytest.approx(3.499, abs=1e-3)


def test_pure_law_recovers_exponents_and_its_intervals_cover_them():
  x = np.geomspace(1e3, 1e8, 6)
  exact = powerlaw.fit(x, 3.0 * x ** -0.25)
  assert exact.pure.b == pytest.approx(0.25, abs=1e-10)
  assert exact.pure.a == pytest.approx(3.0, rel=1e-9)
  rng = np.random.default_rng(0)
  covered, ratio_covered = 0, 0
  for _ in range(REPEATS):
    ebt = powerlaw.fit(x, 3.0 * x ** -0.25 * np.exp(0.02 * rng.normal(size=x.size)))
    base = powerlaw.fit(x, 2.0 * x ** -0.2 * np.exp(0.02 * rng.normal(size=x.size)))
    lo, hi = ebt.pure.b_ci
    covered += lo <= 0.25 <= hi
    _, (rlo, rhi) = powerlaw.ratio(ebt.pure, base.pure)
    ratio_covered += rlo <= 1.25 <= rhi
  # 95% intervals: the binomial spread over 200 repeats is about +-3%.
  assert 0.90 <= covered / REPEATS <= 0.99
  assert 0.88 <= ratio_covered / REPEATS <= 0.995


def test_offset_law_is_chosen_where_there_is_a_floor_and_covers_its_exponent():
  x = np.geomspace(1e2, 1e6, 8)
  rng = np.random.default_rng(1)
  chosen, covered, repeats = 0, 0, REPEATS // 2
  for _ in range(repeats):
    f = powerlaw.fit(x, (2.0 * x ** -0.4 + 1.2) * np.exp(0.002 * rng.normal(size=x.size)))
    if f.offset is not None:
      chosen += 1
      covered += f.offset.b_ci[0] <= 0.4 <= f.offset.b_ci[1]
      assert f.offset.c == pytest.approx(1.2, rel=0.05)
  assert chosen >= 0.95 * repeats
  assert covered >= 0.85 * chosen
  # Without a floor the offset law rarely beats the straight line (F test at 5%).
  pure_chosen = sum(powerlaw.fit(x, 3.0 * x ** -0.1 * np.exp(0.01 * rng.normal(size=x.size)))
                    .offset is None for _ in range(repeats))
  assert pure_chosen >= 0.85 * repeats
  assert powerlaw.fit(x[:3], 2.0 * x[:3] ** -0.4 + 1.2).offset is None   # too few points


def _cli(*argv) -> str:
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert cli.main(list(argv)) == 0
  return out.getvalue()


def _mtime(path):
  return path.stat().st_mtime_ns


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """The micro study: the Transformer++ trained elsewhere from its printed command, the EBT
  killed at step 4 of 8 (its printed command, stopped early), then `ebt scale` twice."""
  root = tmp_path_factory.mktemp("scale")
  base = ("scale", "--grid", "micro", "--workdir", str(root))
  commands = _cli(*base, "--print-commands").strip().splitlines()
  transformer, ebt = root / "data" / "transformer", root / "data" / "ebt"
  by_dir = {shlex.split(c)[shlex.split(c).index("--workdir") + 1]: c for c in commands}
  _cli(*shlex.split(by_dir[str(transformer)])[1:])
  _cli(*shlex.split(by_dir[str(ebt)])[1:], "--config.train.num_steps=4")
  out = {"commands": commands,
         "unfinished": _cli(*base, "--print-commands").strip().splitlines(),
         "aggregated": json.loads(open(_cli_json(base, root, "agg.json", "--aggregate-only"))
                                  .read())}
  before = {"transformer": _mtime(transformer / "metrics.jsonl")}
  out["first"] = _cli(*base)
  before["ebt"] = _mtime(ebt / "metrics.jsonl")
  out["after_first"] = dict(before)
  out["second"] = _cli(*base, "--json", str(root / "out.json"))
  out["mtimes"] = {"transformer": _mtime(transformer / "metrics.jsonl"),
                   "ebt": _mtime(ebt / "metrics.jsonl")}
  out["root"] = root
  return out


def _cli_json(base, root, name, *flags):
  _cli(*base, *flags, "--json", str(root / name))
  return root / name


def _eval_losses(workdir, key):
  return {r["step"]: r[key] for r in metrics_lib.history(metrics_lib.read_metrics(workdir))
          if key in r}


@pytest.mark.slow
def test_print_commands_lists_unfinished_points_only(study):
  assert len(study["commands"]) == 2 and all(c.startswith("ebt train --config tiny_cpu ")
                                             for c in study["commands"])
  assert len(study["unfinished"]) == 1 and "data/ebt" in study["unfinished"][0]


@pytest.mark.slow
def test_aggregate_only_reads_runs_started_elsewhere(study):
  agg = study["aggregated"]["axes"]["data"]["models"]
  root = study["root"]
  want = _eval_losses(root / "data" / "transformer", "eval/ce_step_1")
  assert agg["transformer"]["loss"] == [want[s] for s in (2, 4, 6, 8)]
  assert agg["transformer"]["x"] == [s * 4 * 16 for s in (2, 4, 6, 8)]   # batch x context
  assert agg["ebt"]["loss"] == [] and study["aggregated"]["missing"] == ["data/ebt"]


@pytest.mark.slow
def test_killed_point_resumes_and_finished_points_are_not_retrained(study):
  first = study["first"]
  assert "1 of 2 points finished; training 1." in first
  assert "Resuming" in first and "from step 4." in first
  assert study["mtimes"]["transformer"] == study["after_first"]["transformer"]
  assert "2 of 2 points finished; training 0." in study["second"]
  assert study["mtimes"]["ebt"] == study["after_first"]["ebt"]


@pytest.mark.slow
def test_study_outputs_fit_the_runs(study):
  root = study["root"]
  report = json.loads((root / "out.json").read_text())
  assert report == json.loads((root / "scale.json").read_text())
  assert (root / "plots" / "data.png").stat().st_size > 0
  data = report["axes"]["data"]
  losses = _eval_losses(root / "data" / "ebt", "eval/ce_step_2")   # the last thinking step
  assert data["models"]["ebt"]["loss"] == [losses[s] for s in (2, 4, 6, 8)]
  fits = {}
  for model, curve in data["models"].items():
    fits[model] = powerlaw.fit(curve["x"], curve["loss"])
    assert curve["fit"]["pure"]["b"] == pytest.approx(fits[model].pure.b, rel=1e-12)
  r, _ = powerlaw.ratio(fits["ebt"].pure, fits["transformer"].pure)
  assert data["rate_ratio_first_to_second"]["value"] == pytest.approx(r, rel=1e-12)
  assert "data   ebt" in study["second"] and "rate ratio (1st/2nd)" in study["second"]


def test_paper_grid_plans_every_axis_and_bad_axes_are_one_line_errors(tmp_path, capsys):
  commands = _cli("scale", "--grid", "paper", "--workdir", str(tmp_path),
                  "--print-commands").strip().splitlines()
  workdirs = [shlex.split(c)[shlex.split(c).index("--workdir") + 1] for c in commands]
  names = sorted(w[len(str(tmp_path)) + 1:] for w in workdirs)
  values = {"data": [""], "params": ["-d128l2h2", "-d256l4h4", "-d384l6h6", "-d384l12h6",
                                     "-d768l12h12"],
            "depth": ["-l2", "-l4", "-l6", "-l8", "-l12"],
            "batch": ["-b64", "-b128", "-b256", "-b512", "-b1024"]}
  assert names == sorted(f"{axis}/{model}{v}" for axis, vs in values.items() for v in vs
                         for model in ("ebt", "transformer"))
  small = next(c for c in commands if "params/transformer-d768l12h12" in c)
  assert small.startswith("ebt train --config ebt_s1:xxs ") and small.endswith(
      "--config.model.kind=transformer --config.model.ebt_type=default --config.model.dim=768 "
      "--config.model.n_layers=12 --config.model.n_heads=12")
  for argv, err in (
      (["--grid", "micro", "--grid.axes=data,size"], "--grid.axes: expected axes from ('data', "
       "'params', 'depth', 'batch', 'flops'), got 'size'"),
      (["--grid", "default.py"], "--grid: not a scaling study (no base, settings, models, axes,"),
      (["--grid", "mini"], "--grid scale:mini: unknown variant 'mini'; valid variants: micro,"),
      (["--grid", "micro", "--grid.base=default"], "--grid.base: give the base run config as "
       "--config"),
      (["--grid", "micro", "--config", "scale:cpu"], "--config scale:cpu: not a run config")):
    assert cli.main(["scale", *argv, "--workdir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"ebt scale: error: {err}")


def test_config_and_its_overrides_reach_every_point_and_grid_overrides_the_study(tmp_path):
  """--config replaces the grid's base, --config.* sets every point's run config where the
  grid's models and axes leave the field alone, --grid.* changes the study."""
  commands = _cli("scale", "--grid", "paper", "--config", "ebt_s1:small", "--workdir",
                  str(tmp_path), "--grid.axes=data,params", "--config.model.dim", "576",
                  "--config.data.path=/shards", "--print-commands").strip().splitlines()
  assert len(commands) == 12 and all(c.startswith("ebt train --config ebt_s1:small ")
                                     for c in commands)
  configs = {}
  for command in commands:
    argv = shlex.split(command)
    config, _ = cli.load_run_config(argv[3])
    cli.apply_overrides(config, argv[7:])
    configs[argv[5][len(str(tmp_path)) + 1:]] = config
  assert configs["data/ebt"].model.dim == 576 and configs["data/transformer"].model.dim == 576
  assert configs["params/ebt-d128l2h2"].model.dim == 128       # the axis sets its own width
  assert configs["data/transformer"].model.kind == "transformer"
  assert configs["data/ebt"].model.n_layers == 12               # ebt_s1:small, not the xxs base
  assert {c.data.path for c in configs.values()} == {"/shards"}


@pytest.mark.slow
def test_a_run_of_another_config_is_left_out(study, tmp_path):
  root = tmp_path / "copy"
  shutil.copytree(study["root"], root)
  config_file = root / "data" / "transformer" / "config.json"
  config = json.loads(config_file.read_text())
  config["model"]["dim"] = 32
  config_file.write_text(json.dumps(config))
  printed = _cli("scale", "--grid", "micro", "--workdir", str(root), "--aggregate-only")
  assert "data/transformer: left out, its run differs from the study's point in model.dim" \
      in printed
  report = json.loads((root / "scale.json").read_text())
  assert report["missing"] == ["data/transformer"]
  assert report["axes"]["data"]["models"]["ebt"]["loss"]   # the other point still counts
