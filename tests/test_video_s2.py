"""The video EBT's official semantics: Langevin noise seen only by the gradient evaluation,
the autoregressive rollout from condition frames (`ebt eval`), and the S2 replay buffer."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebt_jax import tasks
from ebt_jax.checkpoint.manager import Checkpointer
from ebt_jax.configs import nextframe
from ebt_jax.models import latent_ebt
from ebt_jax.models.blocks import StackDims
from ebt_jax.tasks import options, video
from ebt_jax.tasks.options import ThinkingOptions
from ebt_jax.training import program as program_lib
from conftest import perturb


def dims(latent_dim=6):
  return latent_ebt.LatentEBTDims(StackDims(dim=8, n_layers=1, n_heads=2, ffn_hidden=16),
                                  latent_dim=latent_dim, ebt_type="time_embed",
                                  num_landscapes=2)


def params_of(m, t):
  return perturb(video.init_params(m, t, jax.random.key(0)), jax.random.key(1), 0.1)


@functools.partial(jax.jit, static_argnums=(3, 4))
def energy_grad(params, inputs, z, m, landscape):
  return jax.grad(lambda z: latent_ebt.energy(params, inputs, z, landscape, m).sum())(z)


def plain_think(params, inputs, y, m, alpha, num_steps, noise_of=None):
  """y <- y - alpha grad E(inputs, .) at y + noise_k, landscape k (the official video step:
  the noise moves only where the gradient is evaluated)."""
  for k in range(num_steps):
    noise = 0.0 if noise_of is None else noise_of(k)
    y = y - alpha * energy_grad(params, inputs, y + noise, m, k)
  return y


def test_langevin_noise_moves_the_evaluation_point_not_the_candidate():
  # Latents of the model width: the official noise on the projected candidate is then noise
  # on the latent itself, which the plain loop can add.
  m = dims(latent_dim=8)
  t = ThinkingOptions.create(num_steps=2, step_size=2.0, langevin_noise=0.3)
  params, key = params_of(m, t), jax.random.key(2)
  alpha, std = options.step_size(params, t), options.langevin_std(params, t)
  latents = jax.random.normal(jax.random.key(3), (2, 5, 8))
  opts = video.NextFrameOptions("zeros")
  got = jax.jit(lambda p: video.next_frame_eval(p, latents, m, t, opts, key)["final"])(params)
  step_keys = jax.random.split(jax.random.split(key)[1], 2)   # the eval's think key, per step
  noise_of = lambda k: std * jax.random.normal(jax.random.fold_in(step_keys[k], 2), (2, 4, 8))
  inputs, y0 = latents[:, :-1], jnp.zeros((2, 4, 8))
  want = plain_think(params, inputs, y0, m, alpha, 2, noise_of)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Not the carried variant (the step starts from the noised candidate), nor noise-free.
  carried = y0
  for k in range(2):
    z = carried + noise_of(k)
    carried = z - alpha * energy_grad(params, inputs, z, m, k)
  assert not np.allclose(got, carried, atol=1e-3)
  assert not np.allclose(got, plain_think(params, inputs, y0, m, alpha, 2), atol=1e-3)


@pytest.fixture(scope="module")
def rollout_case():
  m = dims()
  t = ThinkingOptions.create(num_steps=2, step_size=2.0, langevin_noise=0.2)
  latents = jax.random.normal(jax.random.key(4), (2, 5, 6))   # S = 4 inputs, T = 5 frames
  rollout = jax.jit(video.next_frame_rollout, static_argnums=(2, 3, 4, 6))
  return m, t, params_of(m, t), latents, rollout


def test_rollout_equals_a_plain_autoregressive_loop(rollout_case):
  m, t, params, latents, rollout = rollout_case
  t = ThinkingOptions.create(num_steps=2, step_size=2.0)      # deterministic: zeros, no noise
  C = 2
  got = rollout(params, latents, m, t, video.NextFrameOptions("zeros"), jax.random.key(5), C)
  frames = list(latents[:, :C].transpose(1, 0, 2))
  for index in range(C, 5):
    inputs = jnp.stack(frames, axis=1)                        # only the frames so far
    y = plain_think(params, inputs, jnp.zeros_like(inputs), m, options.step_size(params, t), 2)
    frames.append(y[:, -1])
  want = jnp.stack(frames[C:], axis=1)
  np.testing.assert_allclose(got["frames"], want, rtol=1e-4, atol=1e-5)
  truth = np.asarray(latents[:, C:])
  d = np.abs(np.asarray(want) - truth)
  np.testing.assert_allclose(got["smooth_l1"], np.mean(np.where(d < 1, 0.5 * d * d, d - 0.5)),
                             rtol=1e-5)
  np.testing.assert_allclose(got["mse_first_frame"], np.mean(d[:, 0] ** 2), rtol=1e-5)
  assert got["energy_steps"].shape == (2,)


def test_rollout_first_frame_is_the_teacher_forced_prediction(rollout_case):
  # Random initial candidates and Langevin noise: frame C is thought with the key the
  # teacher-forced evaluation is given here; later frames read predictions, not the truth.
  m, t, params, latents, rollout = rollout_case
  C, key, opts = 3, jax.random.key(6), video.NextFrameOptions()
  got = rollout(params, latents, m, t, opts, key, C)["frames"]
  forced = jax.jit(lambda k: video.next_frame_eval(params, latents, m, t, opts, k)["final"])
  np.testing.assert_allclose(got[:, 0], forced(jax.random.fold_in(key, C))[:, C - 1],
                             rtol=1e-4, atol=1e-5)
  assert not np.allclose(got[:, 1], forced(jax.random.fold_in(key, C + 1))[:, C], atol=1e-3)
  with pytest.raises(ValueError, match="condition_frames: expected 1..4"):
    video.next_frame_rollout(params, latents, m, t, opts, key, 5)


def replay_config(replay_buffer=True, **thinking):
  c = nextframe.get_config("s2_cpu")
  c.model.update(latent_dim=6, dim=8, n_layers=1, n_heads=2, context_length=3)
  c.train.update(batch_size=4, tensorboard=False)
  c.thinking.update(replay_buffer=replay_buffer, replay_buffer_groups=2, **thinking)
  return c


def test_replay_buffer_holds_the_last_rows_and_their_final_candidates():
  # Deterministic thinking (zeros, no S2 randomness or noise), so a row's final candidate
  # depends on the row alone; one buffer slot per fresh row and every record replayed, so
  # the loss is the mean over fresh and replayed rows whatever order they are drawn in.
  c = replay_config(replay_buffer_size=2, replay_buffer_sample_fraction=1.0,
                    initial_condition="zeros", random_steps=0, random_steps_min=0,
                    step_size_random_scale=1.0,
                    langevin_noise=0.0, num_steps=2, truncate=False, step_size=2.0)
  task = tasks.build(c)
  m, t, opts = task.dims, task.thinking, task.next_frame
  params = perturb(task.init_params(jax.random.key(0)), jax.random.key(1), 0.1)
  step = jax.jit(lambda carry, x, k: task.training_loss(params, x, k, carry, True))
  row = jax.jit(lambda x, y0: video.next_frame_objective(params, x[None], m, t, opts,
                                                         jax.random.key(0), y0[None]))
  carry, previous = task.init_carry(), None
  for i in range(3):
    latents = jax.random.normal(jax.random.key(10 + i), (4, 4, 6))
    loss, (metrics, carry) = step(carry, latents, jax.random.key(20 + i))
    fresh = [row(x, jnp.zeros((3, 6))) for x in latents]
    per_row = [o.loss for o in fresh]
    if previous is not None:                    # last step's rows, from their final candidates
      per_row += [row(x, y).loss for x, y in zip(*previous)]
    assert int(metrics["replayed_rows"]) == (0 if previous is None else 4)
    np.testing.assert_allclose(loss, np.mean(per_row), rtol=1e-5)
    previous = (latents, [o.final[0] for o in fresh])
    # Group g holds batch rows 2g, 2g+1 (FIFO: this step's rows replaced the last step's).
    np.testing.assert_array_equal(carry.tokens.reshape(4, 4, 6), latents)
    np.testing.assert_allclose(carry.logits.reshape(4, 3, 6), jnp.stack(previous[1]),
                               rtol=1e-5, atol=1e-6)
  assert (int(carry.pointer), int(carry.fill)) == (0, 2)


def test_replay_buffer_wraps_fifo_and_survives_a_checkpoint(tmp_path):
  c = replay_config(replay_buffer_size=3)          # 2 fresh rows and 1 replayed per group
  task = tasks.build(c)
  assert task.flops(4) > tasks.build(replay_config(replay_buffer=False)).flops(4)
  params = perturb(task.init_params(jax.random.key(0)), jax.random.key(1), 0.1)
  step = jax.jit(lambda carry, x, k: task.training_loss(params, x, k, carry, True))
  carry, pushed = task.init_carry(), [[], []]
  for i in range(3):
    latents = jax.random.normal(jax.random.key(30 + i), (4, 4, 6))
    loss, (metrics, carry) = step(carry, latents, jax.random.key(40 + i))
    assert np.isfinite(float(loss)) and 2 <= int(metrics["thinking_steps"]) <= 3
    for g in range(2):
      pushed[g] += list(latents[2 * g:2 * g + 2])
  # The official list after 6 adds with max_size 3: the last 3, oldest first; the ring
  # holds them from its pointer on.
  order = (int(carry.pointer) + np.arange(3)) % 3
  for g in range(2):
    np.testing.assert_array_equal(carry.tokens[g][order], np.stack(pushed[g][-3:]))
  program = program_lib.build(c)
  state = program.init_state()._replace(replay=carry)
  ckpt = Checkpointer(tmp_path)
  ckpt.save(3, state, {"position": 1})
  _, restored, _ = ckpt.restore(program.abstract_sharded_state())
  ckpt.close()
  chex.assert_trees_all_equal(restored.replay, carry)

