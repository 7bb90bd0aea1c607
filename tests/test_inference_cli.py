"""`ebt eval | think | generate | bench` on tiny trained runs, in process."""

import json

import numpy as np
import pytest

from ebt_jax import cli
from ebt_jax.training import trainer
from conftest import run_config

# Every test here trains or restores tiny runs (tens of seconds in all): CI runs them.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  ebt, base = tmp_path_factory.mktemp("ebt"), tmp_path_factory.mktemp("transformer")
  for kind, workdir in (("ebt", ebt), ("transformer", base)):
    config = run_config(kind, num_steps=3, eval_every=3, checkpoint_every=3)
    trainer.train(config, workdir, progress=False, log=lambda *a: None)
  return ebt, base


def test_eval_table_and_json(runs, tmp_path, capsys):
  ebt, base = runs
  out = tmp_path / "eval.json"
  assert cli.main(["eval", "--workdir", str(ebt), "--thinking-steps", "1,3", "--best-of", "1,2",
                   "--baseline", str(base), "--stop-thresholds", "0,1e9", "--batches", "1",
                   "--json", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "N=2" in printed and "Transformer++" in printed and "Adaptive compute" in printed
  assert "per landscape" in printed and "[12]" in printed   # 3 steps x 2 landscapes x 2
  report = json.loads(out.read_text())
  cells = {(r["dataset"], r["thinking_steps"], r["best_of"], r["energy_evaluations"])
           for r in report["results"]}
  assert cells == {("validation", k, n, 2 * k * n) for k in (1, 3) for n in (1, 2)}
  assert all(r["perplexity"] > 1 and r["baseline_perplexity"] > 1 for r in report["results"])
  assert len(report["ce_after_each_step"]["validation"]) == 6   # the N = 3 run's steps
  never, at_once = report["adaptive"]
  # Threshold 0 never stops: 6 steps per token and the 6-step perplexity. A huge threshold
  # stops every position after its first step (the first step always runs).
  assert never["mean_steps"] == 6
  assert never["ce"] == pytest.approx(report["ce_after_each_step"]["validation"][5], rel=1e-5)
  assert at_once["mean_steps"] == 1
  assert at_once["ce"] == pytest.approx(report["ce_after_each_step"]["validation"][0], rel=1e-5)


def test_think_prints_energies_and_writes_a_heatmap(runs, tmp_path, capsys):
  ebt, _ = runs
  png = tmp_path / "think.png"
  assert cli.main(["think", "--workdir", str(ebt), "--text", "x = 1\nprint(x)",
                   "--out", str(png), "--config.inference.thinking_steps=3"]) == 0
  printed = capsys.readouterr().out
  assert "final E" in printed and "perplexity of the text" in printed
  assert "thinking cost: 6 energy evaluations" in printed   # 3 steps x 2 landscapes
  assert len([l for l in printed.splitlines() if l.strip()[:1].isdigit()]) == 14   # one per byte
  assert png.stat().st_size > 5000


def test_generate_continues_the_prompt(runs, capsys):
  ebt, _ = runs
  assert cli.main(["generate", "--workdir", str(ebt), "--prompt", "import ", "--max-new-tokens",
                   "5", "--temperature", "0.8", "--top-p", "0.9", "--show-energies",
                   "--select", "max_gap"]) == 0
  printed = capsys.readouterr().out
  assert printed.startswith("import ")
  energies = printed.split("final energy / energy drop / steps\n")[1].splitlines()
  assert len(energies) == 5      # one line per generated token


def test_bench_prints_and_writes_the_figures(tmp_path, capsys):
  out = tmp_path / "bench.json"
  assert cli.main(["bench", "--config", "tiny_cpu", "--repeats", "1", "--new-tokens", "4",
                   "--config.train.batch_size=2", "--config.model.n_layers=1",
                   "--json", str(out)]) == 0
  result = json.loads(out.read_text())
  for key in ("train_tokens_per_s", "think_step_ms", "generate_tokens_per_s",
              "generate_naive_tokens_per_s", "think_step_naive_ms", "peak_memory_bytes"):
    assert result[key] > 0, key
  assert "tokens/s" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--best-of", "0"], "--best-of: expected"),
    (["--thinking-steps", "two"], "--thinking-steps: expected"),
    (["--config.model.dim=8"], "--config.model.dim: only --config.inference.*"),
    (["--config.inference.stop_on=sometimes"], "inference.stop_on: expected"),
])
def test_eval_rejects_bad_input_in_one_line(runs, capsys, args, message):
  ebt, _ = runs
  assert cli.main(["eval", "--workdir", str(ebt), *args]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0], err


def test_baseline_must_be_a_transformer_on_the_same_tokens(runs, capsys):
  ebt, _ = runs
  assert cli.main(["eval", "--workdir", str(ebt), "--baseline", str(ebt), "--batches", "1"]) == 2
  assert "--baseline" in capsys.readouterr().err


def test_sweep_inner_runs_every_optimizer(runs, tmp_path, capsys):
  ebt, _ = runs
  out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
  assert cli.main(["sweep-inner", "--workdir", str(ebt), "--steps", "1,2", "--batches", "1",
                   "--step-count", "total", "--json", str(out), "--plot", str(png)]) == 0
  rows = json.loads(out.read_text())["results"]
  from ebt_jax.commands import sweep
  assert {r["optimizer"] for r in rows} == set(sweep.DEFAULT_SWEEP)
  assert all(np.isfinite(r["ce"]) for r in rows)
  by = {(r["optimizer"], r["thinking_steps"]): r["ce"] for r in rows}
  # One step of momentum (zero initial velocity) and of nesterov's first step differ only by
  # beta * g; gd and momentum coincide after one step.
  assert by[("gd", 1)] == pytest.approx(by[('momentum:{"beta": 0.5}', 1)], rel=1e-6)
  assert png.stat().st_size > 5000
  assert cli.main(["sweep-inner", "--workdir", str(ebt), "--optimizers", "sgdd"]) == 2
  assert "--optimizers: expected names from" in capsys.readouterr().err
