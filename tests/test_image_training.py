"""Image and video kinds through the trainer: metrics, exact resume, `ebt eval`, config errors."""

import json
import shutil

import chex
import numpy as np
import pytest

from ebt_jax import cli
from ebt_jax import config as config_lib
from ebt_jax.checkpoint.manager import Checkpointer
from ebt_jax.training import program as program_lib
from ebt_jax.training import trainer
from ebt_jax.training.metrics import read_metrics

quiet = lambda *a: None

# Every test here trains or restores tiny runs (tens of seconds in all): CI runs them.
pytestmark = pytest.mark.slow


def image_config(kind="image_ebt", **train):
  """8 x 8 crops in 4 patches, one block of width 16: compiles in a few seconds."""
  c = config_lib.base_config()
  c.model.update(kind=kind, image_size=8, patch_size=4, dim=16, n_layers=1, n_heads=2)
  c.thinking.update(num_steps=2, step_size=5.0)
  c.inference.ddim_steps = (1, 3)
  c.data.update(source="embedded_images", validation_fraction=0.2)
  c.optimizer.update(warmup_steps=1, decay_steps=100)   # schedule independent of num_steps
  c.train.update(batch_size=4, num_steps=4, log_every=1, eval_every=2, eval_batches=2,
                 checkpoint_every=2, keep_checkpoints=5, tensorboard=False)
  c.train.update(**train)
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("image_runs")
  out = {}
  for kind in ("image_ebt", "dit"):
    out[kind] = root / kind
    trainer.train(image_config(kind), out[kind], progress=False, log=quiet)
  return out


def _final_state(workdir, c):
  ckpt = Checkpointer(workdir / "checkpoints")
  try:
    return ckpt.restore(program_lib.build(c).abstract_sharded_state())
  finally:
    ckpt.close()


def test_image_runs_log_psnr_per_thinking_step_and_ddim_count(runs):
  ebt = read_metrics(runs["image_ebt"])
  last = [r for r in ebt if "eval/psnr" in r][-1]
  assert last["step"] == 4
  assert {"eval/psnr_step_1", "eval/psnr_step_2", "eval/psnr_noisy", "eval/energy_step_2",
          "ood/ood_noise_0.2/psnr_step_2", "ood/ood_noise_0.2/psnr_noisy"} <= set(last)
  assert last["eval/psnr"] == last["eval/psnr_step_2"]
  assert last["ood/ood_noise_0.2/psnr_noisy"] < last["eval/psnr_noisy"] - 3   # more noise
  assert any("train/alpha" in r and "train/tokens_per_s" in r for r in ebt)
  dit = [r for r in read_metrics(runs["dit"]) if "eval/psnr" in r][-1]
  assert {"eval/psnr_ddim_1", "eval/psnr_ddim_3", "ood/ood_noise_0.2/psnr_ddim_3"} <= set(dit)
  # The same validation images and noise for both models.
  assert dit["eval/psnr_noisy"] == pytest.approx(last["eval/psnr_noisy"], rel=1e-6)


def test_resuming_an_image_run_equals_the_uninterrupted_run(runs, tmp_path):
  """Resume from step 2 of the DiT run (its step-4 checkpoint removed): same params."""
  c = image_config("dit")
  step, straight, _ = _final_state(runs["dit"], c)
  resumed = tmp_path / "dit"
  shutil.copytree(runs["dit"], resumed)
  shutil.rmtree(resumed / "checkpoints" / "4")
  summary = trainer.train(c, resumed, progress=False, log=quiet)
  assert (summary.start_step, summary.final_step) == (2, 4)
  step_b, state, data_state = _final_state(resumed, c)
  assert step == step_b == 4 and data_state["step"] == 4
  chex.assert_trees_all_equal(straight, state)
  losses = lambda d: {r["step"]: r["train/loss"] for r in read_metrics(d) if "train/loss" in r}
  assert losses(resumed) == losses(runs["dit"])


def test_ebt_eval_beside_the_dit_baseline_writes_json_and_png(runs, tmp_path, capsys):
  out = tmp_path / "eval.json"
  # --noise-levels: the run's own and one more (bad levels: tests/test_shift_gain.py).
  assert cli.main(["eval", "--workdir", str(runs["image_ebt"]), "--baseline", str(runs["dit"]),
                   "--thinking-steps", "1,2,3", "--noise-levels", "0.2,0.3,0.1",
                   "--json", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "EBT 3 thinking steps" in printed and "DiT 3 NFE" in printed and "noisy input" in printed
  report = json.loads(out.read_text())
  rows = report["results"]
  datasets = ("validation", "ood_noise_0.2", "ood_noise_0.3")
  assert sorted((r["dataset"], r["thinking_steps"]) for r in rows) == sorted(
      (d, k) for d in datasets for k in (1, 2, 3))       # validation once, for every level
  assert all({"psnr", "psnr_noisy", "noise_level"} <= set(r) for r in rows)
  base = report["baseline"]["results"]
  assert sorted((r["dataset"], r["nfe"]) for r in base) == sorted(
      (d, n) for d in datasets for n in (1, 3))
  # The trained step count's row is training's last evaluation (same batches, keys, noise).
  metrics = [r for r in read_metrics(runs["image_ebt"]) if "eval/psnr" in r][-1]
  row = {(r["dataset"], r["thinking_steps"]): r for r in rows}
  np.testing.assert_allclose(row["validation", 2]["psnr"], metrics["eval/psnr_step_2"], rtol=1e-5)
  np.testing.assert_allclose(row["ood_noise_0.2", 2]["psnr"],
                             metrics["ood/ood_noise_0.2/psnr_step_2"], rtol=1e-5)
  assert row["validation", 1]["psnr_noisy"] == pytest.approx(base[0]["psnr_noisy"], rel=1e-6)
  png = runs["image_ebt"] / "plots" / "denoise.png"
  assert report["png"] == str(png) and png.stat().st_size > 500
  # The System 2 gain per noise level from those rows (trained with 2 steps).
  gain = {r["dataset"]: r for r in report["system2_gain"]["rows"]}
  assert row["ood_noise_0.3", 1]["psnr_noisy"] < row["ood_noise_0.2", 1]["psnr_noisy"]
  for d in datasets:
    mse = [row[d, k]["pixel_mse"] for k in (1, 2, 3)]
    assert gain[d]["best_steps"] == 1 + int(np.argmin(mse))
    assert gain[d]["gain_vs_1_step"] == pytest.approx(1 - min(mse) / mse[0])
    assert gain[d]["gain_vs_trained"] == pytest.approx(1 - min(mse) / mse[1])
    assert gain[d]["psnr_gain_vs_1_step"] == pytest.approx(10 * np.log10(mse[0] / min(mse)))
  assert (runs["image_ebt"] / "plots" / "shift_gain.png").stat().st_size > 500
  # A DiT alone: its table per DDIM count.
  assert cli.main(["eval", "--workdir", str(runs["dit"]), "--ddim-steps", "1,2"]) == 0
  assert "DiT 2 NFE" in capsys.readouterr().out
  assert cli.main(["eval", "--workdir", str(runs["image_ebt"]), "--best-of", "4"]) == 2
  assert "--best-of: only for text EBT runs" in capsys.readouterr().err


def test_latent_ebt_trains_and_evaluates_next_frames(tmp_path, capsys):
  c = config_lib.base_config()
  c.model.update(kind="latent_ebt", latent_dim=8, dim=8, n_layers=1, n_heads=2,
                 context_length=3)
  c.thinking.update(num_steps=2, step_size=5.0)
  c.data.source = "moving_digits"
  c.data.moving_digits.update(canvas=8, digit_size=4, num_digits=1)
  c.train.update(batch_size=4, num_steps=2, log_every=1, eval_every=2, eval_batches=1,
                 checkpoint_every=2, tensorboard=False)
  summary = trainer.train(c, tmp_path, progress=False, log=quiet)
  last = read_metrics(tmp_path)[-1]
  assert {"eval/smooth_l1_step_2", "eval/mse_step_2", "eval/loss"} <= set(last)
  assert "SmoothL1" in summary.report()
  out = tmp_path / "eval.json"
  assert cli.main(["eval", "--workdir", str(tmp_path), "--thinking-steps", "1,2",
                   "--json", str(out)]) == 0
  assert "copy the last frame" in capsys.readouterr().out
  rows = json.loads(out.read_text())["results"]
  assert [r["thinking_steps"] for r in rows] == [1, 2]
  np.testing.assert_allclose(rows[1]["smooth_l1"], last["eval/smooth_l1_step_2"], rtol=1e-5)


def test_bad_image_and_video_configs_fail_in_one_line(tmp_path, capsys):
  cfg = tmp_path / "cfg.py"
  cfg.write_text("import json\nimport ml_collections\n\ndef get_config():\n  return "
                 f"ml_collections.ConfigDict(json.loads({image_config().to_json()!r}))\n")
  np.save(tmp_path / "gray.npy", np.zeros((6, 8, 8, 1), np.uint8))
  np.save(tmp_path / "latents.npy", np.zeros((6, 5, 7), np.float32))
  cases = [
      (["--config.data.source=stdlib"], "data.source: expected one of ('embedded_images'"),
      (["--config.model.kind=ebt"], "data.source: expected one of ('stdlib'"),
      (["--config.model.patch_size=3"], "model.patch_size: expected a divisor of model.image_size=8"),
      (["--config.denoise.ood_noise_level=1.5"], "denoise.ood_noise_level: expected a level in (0, 1]"),
      (["--config.thinking.replay_buffer=True"],
       "thinking.replay_buffer: expected False for model.kind='image_ebt'"),
      (["--config.inference.ddim_steps=(0, 5)"], "inference.ddim_steps: expected a tuple"),
      (["--config.data.source=image_npy"], "data.path: expected a path"),
      (["--config.data.source=image_npy", f"--config.data.path={tmp_path / 'gray.npy'}"],
       "data.path: expected images of shape [N, 8, 8, 3]"),
      (["--config.model.kind=latent_ebt", "--config.data.source=latent_npy",
        f"--config.data.path={tmp_path / 'latents.npy'}"], "model.latent_dim: expected the "
       "latent width of data.path (7)"),
      (["--config.model.kind=latent_ebt", "--config.data.source=moving_digits",
        "--config.data.moving_digits.project=False"], "model.latent_dim: expected "
       "data.moving_digits.canvas^2 = 1024"),
  ]
  for i, (overrides, message) in enumerate(cases):
    workdir = tmp_path / f"run{i}"
    assert cli.main(["train", "--config", str(cfg), "--workdir", str(workdir), "--no-progress",
                     *overrides]) == 2, overrides
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], (overrides, lines)
    assert not workdir.exists()
