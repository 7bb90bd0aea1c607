"""The training system: optimizer groups and schedule, NaN guard, checkpoints and resume."""

import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ebt_jax
from ebt_jax import cli
from ebt_jax.checkpoint.manager import Checkpointer, CheckpointWarning, abstract_like
from ebt_jax.commands import evaluation
from ebt_jax.training import optimizer as optimizer_lib
from ebt_jax.training import program as program_lib
from ebt_jax.training import trainer
from ebt_jax.training import step as step_lib
from ebt_jax.training.metrics import read_metrics
from conftest import run_config, tiny_config


def test_schedule_values_and_groups():
  c = tiny_config("time_embed")
  c.optimizer.update(peak_lr=1e-3, warmup_steps=10, decay_steps=110, min_lr_scale=10.0)
  c.thinking.step_size_lr_multiplier = 1000.0
  lrs = lambda step: {k: float(v) for k, v in optimizer_lib.learning_rates(c, step).items()}
  assert lrs(0)["default"] == 0.0
  np.testing.assert_allclose(lrs(5)["default"], 5e-4, rtol=1e-6)
  np.testing.assert_allclose(lrs(10)["default"], 1e-3, rtol=1e-6)
  # Half-way through the cosine: (peak + floor) / 2.
  np.testing.assert_allclose(lrs(60)["default"], (1e-3 + 1e-4) / 2, rtol=1e-5)
  np.testing.assert_allclose(lrs(110)["default"], 1e-4, rtol=1e-6)
  np.testing.assert_allclose(lrs(500)["default"], 1e-4, rtol=1e-6)
  # alpha: x1000 peak and its own floor (the official code floors it at 1e-4 too).
  np.testing.assert_allclose(lrs(10)["alpha"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(lrs(110)["alpha"], 0.1, rtol=1e-6)
  c.optimizer.warmup_base_lr_divider = 4.0
  np.testing.assert_allclose(lrs(0)["default"], 2.5e-4, rtol=1e-6)


def test_optimizer_groups_decay_and_freeze():
  c = tiny_config("time_embed", langevin_noise=0.3)
  c.optimizer.update(peak_lr=1e-2, warmup_steps=0, weight_decay=0.5, grad_clip=0.0)
  params = ebt_jax.init_params(c, jax.random.key(0))
  labels = optimizer_lib.param_labels(params, c)
  assert labels["alpha"] == "alpha" and labels["langevin_std"] == "frozen"
  assert labels["blocks"]["wq"] == "default"
  tx = optimizer_lib.make_optimizer(c, params)
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  # With zero gradients only weight decay moves weights: never alpha or frozen leaves.
  np.testing.assert_allclose(new["embed"], params["embed"] * (1 - 1e-2 * 0.5), rtol=1e-6)
  assert float(new["alpha"]) == float(params["alpha"])
  assert float(new["langevin_std"]) == float(params["langevin_std"])
  c.thinking.step_size_learnable = False
  assert optimizer_lib.param_labels(params, c)["alpha"] == "frozen"


def test_gradients_are_clipped_by_global_norm():
  c = tiny_config("default")
  c.optimizer.update(grad_clip=1.0, warmup_steps=0, b1=0.5)
  params = {"w": jnp.ones(4), "alpha": jnp.asarray(1.0), "langevin_std": jnp.asarray(0.0)}
  tx = optimizer_lib.make_optimizer(c, params)
  grads = {"w": jnp.full(4, 100.0), "alpha": jnp.asarray(100.0), "langevin_std": jnp.asarray(0.0)}
  _, state = tx.update(grads, tx.init(params), params)
  # Adam's first moment after one step is (1 - b1) * the clipped gradient.
  clipped = {name: value / 0.5
             for _, mu in optax.tree_utils.tree_get_all_with_path(state, "mu")
             for name, value in mu.items() if isinstance(value, jax.Array)}
  total = jnp.sqrt(sum(jnp.sum(v**2) for v in clipped.values()))
  np.testing.assert_allclose(total, 1.0, rtol=1e-5)      # the norm over all groups together
  np.testing.assert_allclose(clipped["w"], 100.0 / math.sqrt(5 * 100.0**2), rtol=1e-5)


@pytest.mark.slow
def test_nan_guard_stops_and_keeps_clean_checkpoints(tmp_path):
  c = run_config(num_steps=12, checkpoint_every=1)
  c.optimizer.update(peak_lr=1e4, warmup_steps=0)   # diverges within a few steps
  with pytest.raises(trainer.TrainingError, match=r"step (\d+): the loss or gradients are NaN") as info:
    trainer.train(c, tmp_path, progress=False, log=lambda *a: None)
  bad_step = int(info.value.args[0].split()[1].rstrip(":"))
  ckpt = Checkpointer(tmp_path / "checkpoints")
  saved = ckpt.all_steps()
  assert saved and max(saved) < bad_step
  _, state, _ = ckpt.restore(program_lib.build(c).abstract_sharded_state())
  ckpt.close()
  chex.assert_tree_all_finite(state)


def _damage(step_dir: Path, how: str) -> None:
  """Damages every data file of a checkpoint, so that no read can miss the damage."""
  for f in sorted(step_dir.rglob("d/*")):
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2] if how == "truncate" else bytes(b ^ 0xFF for b in raw))


def test_checkpoint_falls_back_past_a_corrupted_latest(tmp_path):
  state = {"w": jnp.arange(600.0).reshape(20, 30), "step": jnp.int32(0)}
  at = lambda step: {"w": state["w"] + step, "step": jnp.int32(step)}
  ckpt = Checkpointer(tmp_path, keep=5)
  for step in (1, 2, 3):
    ckpt.save(step, at(step), {"position": step})
  ckpt.wait()
  for how in ("truncate", "flip"):
    _damage(tmp_path / "3", how)
    with pytest.warns(CheckpointWarning) as caught:
      step, restored, data_state = ckpt.restore(abstract_like(state))
    assert step == 2 and data_state == {"position": 2}
    np.testing.assert_array_equal(restored["w"], state["w"] + 2)
    assert len(caught) == 1 and re.fullmatch(
        rf"checkpoint step 3 in {re.escape(str(tmp_path))} is unreadable or corrupted \(.*\); "
        rf"moved {re.escape(str(tmp_path / '3'))} to {re.escape(str(tmp_path))}/3\.corrupt-"
        rf"\d{{8}}T\d{{6}}Z(-\d+)?; falling back to step 2", str(caught[0].message))
    assert ckpt.all_steps() == [1, 2]
    ckpt.save(3, at(3), {"position": 3})   # the step saves again (StepAlreadyExistsError before)
    ckpt.wait()
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      assert ckpt.restore(abstract_like(state))[0] == 3
  assert len([p for p in tmp_path.iterdir() if ".corrupt-" in p.name]) == 2   # kept, not deleted
  with pytest.raises(Exception, match="refusing to checkpoint step 4"):
    ckpt.save(4, {"w": state["w"] * jnp.nan, "step": jnp.int32(4)})
  ckpt.close()


def test_params_alone_restore_with_the_same_checks(tmp_path):
  """Inference reads a TrainState's params only; damage still sends it to the previous step."""
  w = jnp.arange(600.0).reshape(20, 30)
  ckpt = Checkpointer(tmp_path, keep=5)
  for step in (1, 2):
    ckpt.save(step, step_lib.TrainState(jnp.int32(step), {"w": w + step}, {"mu": w * 0},
                                        jnp.zeros(2, jnp.uint32)))
  ckpt.wait()
  abstract = {"w": abstract_like(w)}
  step, params, _ = ckpt.restore_params(abstract)
  assert step == 2
  np.testing.assert_array_equal(params["w"], w + 2)
  _damage(tmp_path / "2", "flip")
  with pytest.warns(CheckpointWarning, match="step 2 .* unreadable or corrupted.*falling back"):
    step, params, _ = ckpt.restore_params(abstract)
  assert step == 1
  np.testing.assert_array_equal(params["w"], w + 1)
  ckpt.close()


def _cli(*args, env=None):
  return [sys.executable, "-m", "ebt_jax.cli", *args]


def _write_config(path: Path, c) -> Path:
  path.write_text("import json\nimport ml_collections\n\n"
                  f"def get_config():\n  return ml_collections.ConfigDict(json.loads({c.to_json()!r}))\n")
  return path


def _final_params(workdir, c):
  ckpt = Checkpointer(Path(workdir) / "checkpoints")
  step, state, _ = ckpt.restore(program_lib.build(c).abstract_sharded_state())
  ckpt.close()
  return step, state


def _losses(workdir):
  return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
  c = run_config(num_steps=10, checkpoint_every=2)
  cfg = _write_config(tmp_path / "cfg.py", c)
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  straight, broken = tmp_path / "straight", tmp_path / "broken"
  # The uninterrupted run in this process: no process start-up to pay for again.
  trainer.train(c, straight, progress=False, log=lambda *a: None)
  proc = subprocess.Popen(_cli("train", "--config", str(cfg), "--workdir", str(broken),
                               "--no-progress"), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (broken / "checkpoints" / "4").exists() and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(int(p.name) for p in (broken / "checkpoints").iterdir() if p.name.isdigit())
  assert killed_at < 10, "the run finished before it could be killed"
  # The resumed run in this process too: the kill is what the subprocess is for.
  # (From the newest complete checkpoint, which may be older than the one the kill cut.)
  assert trainer.train(c, broken, progress=False, log=lambda *a: None).start_step > 0
  step_a, a = _final_params(straight, c)
  step_b, b = _final_params(broken, c)
  assert step_a == step_b == 10
  chex.assert_trees_all_equal(a, b)
  assert _losses(straight) == _losses(broken)
  assert sorted(_losses(broken)) == list(range(1, 11))


@pytest.mark.slow
def test_sigterm_saves_then_resumes(tmp_path):
  c = run_config(num_steps=400, checkpoint_every=1000, eval_every=1000)
  cfg = _write_config(tmp_path / "cfg.py", c)
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_cli("train", "--config", str(cfg), "--workdir", str(workdir),
                               "--no-progress"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  deadline = time.time() + 300
  while len(_losses(workdir)) < 3 and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 143, out   # 128 + SIGTERM, as schedulers expect of a stopped job
  saved = Checkpointer(workdir / "checkpoints").all_steps()
  assert len(saved) == 1 and 3 <= saved[0] < 400
  assert (f"ebt train: SIGTERM received: saved a checkpoint at step {saved[0]}, the last "
          f"completed step\n") in out
  assert max(_losses(workdir)) == saved[0]


def test_cli_reports_bad_configs_in_one_line(tmp_path, capsys):
  """In process (`cli.main`, as tests/test_user_errors.py), and once as a real process for
  the exit status and stderr a shell sees."""
  cases = [
      (["--config.model.n_heads=5"], "model.n_heads: expected a divisor of model.dim=16"),
      (["--config.thinking.num_steps=-2"], "thinking.num_steps: expected a positive integer"),
      (["--config.model.ebt_type=bogus"], "model.ebt_type: expected one of"),
      (["--config.model.context_length=100000000"], "model.context_length"),
      (["--config.data.source=text", "--config.data.path=/no/such/corpus"], "data.path"),
      (["--config.model.dimm=3"], "--config.model.dimm: the config has no such field"),
      (["--config.model.dim=wide"], "--config.model.dim: cannot use 'wide'"),
  ]
  cfg = _write_config(tmp_path / "cfg.py", run_config())
  for i, (overrides, message) in enumerate(cases):
    status = cli.main(["train", "--config", str(cfg), "--workdir", str(tmp_path / str(i)),
                       "--no-progress", *overrides])
    err = capsys.readouterr().err
    assert status == 2, (overrides, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], (overrides, err[-2000:])
    assert not (tmp_path / str(i)).exists()   # nothing written for a config that cannot run
  missing = subprocess.run(_cli("train", "--config", "no_such_config"), capture_output=True, text=True)
  assert missing.returncode == 2 and "--config: no file 'no_such_config'" in missing.stderr
  assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_train_eval_plot_and_resume_in_process(tmp_path, monkeypatch):
  c = run_config(num_steps=6, checkpoint_every=3, eval_every=3, tensorboard=True)
  monkeypatch.chdir(tmp_path.parent)   # a relative workdir, as `ebt train` gets by default
  summary = trainer.train(c, tmp_path.name, progress=False, log=lambda *a: None)
  assert summary.final_step == 6 and set(summary.eval) == {"validation"}
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents*"))  # tensorboardX is a dev extra
  records = read_metrics(tmp_path)
  evals = [r for r in records if "eval/perplexity" in r]
  assert [r["step"] for r in evals] == [3, 6]
  assert math.isclose(evals[-1]["eval/perplexity"], math.exp(evals[-1]["eval/ce_step_2"]), rel_tol=1e-6)
  assert all(f"train/{k}" in records[-2] or f"train/{k}" in records[-3]
             for k in ("loss", "tokens_per_s", "grad_norm", "alpha"))
  # `ebt eval`'s default row (one step per landscape) is training's evaluation.
  report = evaluation.evaluate_system2(tmp_path, log=lambda *a: None)
  assert report.step == 6
  want = [evals[-1]["eval/ce_step_1"], evals[-1]["eval/ce_step_2"]]
  np.testing.assert_allclose(report.fixed_ce["validation"], want, rtol=1e-5)
  np.testing.assert_allclose(report.ce["validation"][:, 0], want[-1:], rtol=1e-5)
  rows = report.as_json()["results"]
  assert {(r["dataset"], r["thinking_steps"], r["best_of"], r["energy_evaluations"])
          for r in rows} == {("validation", 1, 1, 2)}
  from ebt_jax.training import plots
  assert all(p.stat().st_size > 1000 for p in plots.plot_workdir(tmp_path))
  # Asking for more steps resumes; changing the model does not.
  c.train.num_steps = 8
  assert trainer.train(c, tmp_path, progress=False, log=lambda *a: None).start_step == 6
  c.model.dim = 32
  with pytest.raises(ebt_jax.errors.ConfigError, match="model.dim: the run in"):
    trainer.train(c, tmp_path, progress=False, log=lambda *a: None)
