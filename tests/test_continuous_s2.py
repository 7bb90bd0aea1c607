"""System 2 training for the image and video EBTs: random step counts and sizes,
validation's repeated final step, learnable Langevin noise after warmup, no Langevin
during evaluation, and the S2 CPU configs training with finite losses."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebt_jax import tasks
from ebt_jax.configs import denoise, nextframe
from ebt_jax.tasks import continuous, image, options
from ebt_jax.thinking import Schedule, optimizers, think
from ebt_jax.training import trainer
from ebt_jax.training.metrics import read_metrics
from conftest import perturb


def image_config(**thinking):
  c = denoise.get_config("s2_cpu")
  c.model.update(image_size=8, patch_size=4, dim=16, n_layers=1, n_heads=2)
  c.thinking.update(step_size=5.0, **thinking)
  c.inference.ddim_steps = ()
  c.data.validation_fraction = 0.2
  c.optimizer.update(warmup_steps=1, decay_steps=100)
  c.train.update(batch_size=4, num_steps=3, log_every=1, eval_every=3, eval_batches=1,
                 checkpoint_every=3, tensorboard=False)
  return c


def clean_images(key, shape=(3, 8, 8, 3)):
  return jnp.tanh(jax.random.normal(key, shape))


@pytest.mark.slow
def test_random_steps_and_sizes_follow_the_drawn_schedule():
  """The S2 image loss equals the mean SmoothL1 of a plain think() over the steps the
  batch's key draws, each image with its own alpha in [alpha/2, 2 alpha]."""
  task = tasks.build(image_config(truncate=False))
  t = task.thinking
  params = perturb(task.init_params(jax.random.key(0)), jax.random.key(1))
  clean, key = clean_images(jax.random.key(2)), jax.random.key(3)
  loss, metrics = jax.jit(lambda p: task.loss(p, clean, key, train=True))(params)

  noise_key, think_key = jax.random.split(key)
  noisy, _ = image.add_noise(clean, noise_key, task.denoise, train=True)
  steps_key, alpha_key = jax.random.split(jax.random.fold_in(think_key, 1))
  landscapes, active = options.step_schedule(t, jnp.zeros(1, jnp.int32), steps_key)
  alpha = options.random_step_size(options.step_size(params, t), alpha_key, (3, 1, 1, 1), t,
                                   jnp.float32)
  assert 2 <= int(np.sum(active)) <= 3 and len(active) == 3     # randint(2, 4) of 3 slots
  assert np.all((alpha >= params["alpha"] / 2) & (alpha <= 2 * params["alpha"]))
  traj = think(image.energy_fn(params, task.dims), noisy, optimizers.make("gd"),
               Schedule(landscapes, alpha, active), think_key,
               emit=lambda y: continuous.smooth_l1(y, clean))
  taken = np.asarray(active, np.float64)
  np.testing.assert_allclose(loss, np.sum(taken * traj.outputs) / taken.sum(), rtol=1e-5)
  assert int(metrics["thinking_steps"]) == int(taken.sum())
  # Evaluation draws nothing: the final step R+1 = 3 times, the model's alpha.
  eval_loss, eval_metrics = task.loss(params, clean, key, train=False)
  assert eval_metrics["mse_steps"].shape == (3,) and "thinking_steps" not in eval_metrics
  assert task.eval_steps == 4     # the config's inference.thinking_steps


def test_validation_repeats_the_final_step():
  t = options.ThinkingOptions.create(num_steps=2, random_steps=2)
  landscapes, active = options.step_schedule(t, jnp.arange(2))
  np.testing.assert_array_equal(landscapes, [0, 1, 1, 1])
  assert active is None
  c = image_config()
  c.inference.thinking_steps = 0
  assert tasks.build(c).eval_steps == 3       # num_steps + random_steps


@pytest.mark.slow
def test_learnable_langevin_noise_trains_after_warmup_only():
  c = nextframe.get_config("s2_cpu")
  c.model.update(latent_dim=6, dim=16, n_layers=1, n_heads=2, context_length=4)
  c.thinking.update(langevin_noise_learnable=True, truncate=False)
  task = tasks.build(c)
  params = perturb(task.init_params(jax.random.key(0)), jax.random.key(1))
  latents = jax.random.normal(jax.random.key(2), (2, 5, 6))
  grad = jax.jit(jax.grad(lambda p, w: task.loss(p, latents, jax.random.key(3), train=True,
                                                   warmed_up=w)[0]))
  assert float(grad(params, jnp.bool_(False))["langevin_std"]) == 0.0
  assert abs(float(grad(params, jnp.bool_(True))["langevin_std"])) > 0.0
  assert "langevin_std" in task.train_metrics(params)


@pytest.mark.slow
def test_no_langevin_during_eval():
  c = image_config(langevin_noise=0.5)
  params = perturb(tasks.build(c).init_params(jax.random.key(0)), jax.random.key(1))
  clean, key = clean_images(jax.random.key(2)), jax.random.key(3)

  def evaluate(**thinking):
    c2 = c.copy_and_resolve_references()
    c2.thinking.update(**thinking)
    return jax.jit(tasks.build(c2).eval_batch)(params, clean, key)

  quiet = evaluate(no_langevin_during_eval=True)
  chex.assert_trees_all_close(quiet, evaluate(langevin_noise=0.0), rtol=1e-6)
  noisy = evaluate()
  assert not np.allclose(noisy["validation"]["pixel_mse_steps"],
                         quiet["validation"]["pixel_mse_steps"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["denoise", "nextframe"])
def test_s2_cpu_configs_train_with_finite_losses(tmp_path, name):
  if name == "denoise":
    c = image_config()
  else:
    c = nextframe.get_config("s2_cpu")
    c.model.update(latent_dim=16, dim=16, n_layers=1, n_heads=2, context_length=4)
    c.data.moving_digits.update(canvas=8, digit_size=4, num_digits=1)
    c.train.update(batch_size=4, num_steps=3, log_every=1, eval_every=3, eval_batches=1,
                   checkpoint_every=3, tensorboard=False)
  summary = trainer.train(c, tmp_path, progress=False, log=lambda *a: None)
  losses = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
  assert summary.final_step == 3 and len(losses) == 3 and np.all(np.isfinite(losses))
  steps = [r["train/thinking_steps"] for r in read_metrics(tmp_path) if "train/loss" in r]
  assert all(2 <= s <= 3 for s in steps)


def test_ddim_increase_steps_starts_from_the_given_timestep():
  """`inference.increase_steps` (the official infer_increase_steps): the DiT's evaluation
  denoises the same noisy images by DDIM from that timestep, as a direct ddim_sample call
  from it does; 0 keeps the noised timestep."""
  from ebt_jax.models import diffusion, dit
  c = image_config()
  c.model.kind = "dit"
  c.inference.ddim_steps = (2,)
  c.inference.clip_denoised = False   # an untrained DiT's clipped outputs saturate alike
  base = tasks.build(c)
  params = perturb(base.init_params(jax.random.key(0)), jax.random.key(1), 0.1)
  clean, key = clean_images(jax.random.key(2)), jax.random.key(3)
  c.inference.increase_steps = 40
  task = tasks.build(c)
  got = jax.jit(task.eval_batch)(params, clean, key)["validation"]["pixel_mse"]
  noisy, _ = image.add_noise(clean, jax.random.split(key)[0], task.denoise,
                             task.denoise.noise_level)
  eps_fn = lambda x, t: dit.predict_eps(params, x, t, task.dims)
  want = diffusion.ddim_sample(eps_fn, noisy, image.schedule(task.denoise), 40, 2,
                               clip_denoised=False)
  np.testing.assert_allclose(got[0], image.pixel_mse(want, clean), rtol=1e-5)
  plain = jax.jit(base.eval_batch)(params, clean, key)["validation"]["pixel_mse"]
  assert not np.allclose(plain, got)
  assert task.ddim_counts == (2,)
  c.inference.increase_steps = 10_000
  with pytest.raises(Exception, match="inference.increase_steps: expected"):
    tasks.build(c)
