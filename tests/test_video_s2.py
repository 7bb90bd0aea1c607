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
from ebt_jax.tasks import options, replay, video
from ebt_jax.tasks.options import ThinkingOptions
from ebt_jax.training import program as program_lib
from conftest import perturb


M = latent_ebt.LatentEBTDims(StackDims(dim=8, n_layers=1, n_heads=2, ffn_hidden=16),
                             latent_dim=8, ebt_type="time_embed", num_landscapes=2)
# Latents of the model width: the official noise on the projected candidate is then noise on
# the latent itself, which a plain loop can add.
T = ThinkingOptions.create(num_steps=2, step_size=2.0, langevin_noise=0.3)
OPTS = video.NextFrameOptions()


@functools.partial(jax.jit, static_argnums=3)
def energy_grad(params, inputs, z, m, landscape):
  return jax.grad(lambda z: latent_ebt.energy(params, inputs, z, landscape, m).sum())(z)


@pytest.fixture(scope="module")
def model():
  params = perturb(video.init_params(M, T, jax.random.key(0)), jax.random.key(1), 0.1)
  latents = jax.random.normal(jax.random.key(4), (2, 5, 8))   # S = 4 inputs, T = 5 frames
  forced = jax.jit(lambda k: video.next_frame_eval(params, latents, M, T, OPTS, k)["final"])
  return params, latents, forced


def eval_draws(params, key, index):
  """The initial candidate [B, S, L] and Langevin noise of step k that teacher-forced
  evaluation draws with `key` for sequences of S = 4 frames, cut to the first `index`."""
  init_key, think_key = jax.random.split(key)
  step_keys = jax.random.split(think_key, 2)
  std = options.langevin_std(params, T)
  noise_of = lambda k: std * jax.random.normal(jax.random.fold_in(step_keys[k], 2),
                                               (2, 4, 8))[:, :index]
  return jax.random.normal(init_key, (2, 4, 8))[:, :index], noise_of


def plain_think(params, inputs, y, noise_of=None):
  """y <- y - alpha grad E(inputs, .) at y + noise_k, landscape k (the official video step:
  the noise moves only where the gradient is evaluated)."""
  for k in range(2):
    noise = 0.0 if noise_of is None else noise_of(k)
    y = y - options.step_size(params, T) * energy_grad(params, inputs, y + noise, M, k)
  return y


def test_langevin_noise_moves_the_evaluation_point_not_the_candidate(model):
  params, latents, forced = model
  key, inputs = jax.random.key(2), latents[:, :-1]
  y0, noise_of = eval_draws(params, key, 4)
  got = forced(key)
  np.testing.assert_allclose(got, plain_think(params, inputs, y0, noise_of), rtol=1e-4,
                             atol=1e-5)
  # Not the carried variant (the step starts from the noised candidate), nor noise-free.
  carried = y0
  for k in range(2):
    z = carried + noise_of(k)
    carried = z - options.step_size(params, T) * energy_grad(params, inputs, z, M, k)
  assert not np.allclose(got, carried, atol=1e-3)
  assert not np.allclose(got, plain_think(params, inputs, y0), atol=1e-3)


@pytest.mark.slow
def test_rollout_is_a_plain_autoregressive_loop_starting_as_teacher_forcing(model):
  params, latents, forced = model
  key, C = jax.random.key(5), 2
  got = jax.jit(video.next_frame_rollout, static_argnums=(2, 3, 4, 6))(
      params, latents, M, T, OPTS, key, C)
  # Frame i: thinking on the frames so far only, with the draws evaluation makes from key
  # fold_in(key, i) for the whole sequence.
  frames = list(latents[:, :C].transpose(1, 0, 2))
  for index in range(C, 5):
    y0, noise_of = eval_draws(params, jax.random.fold_in(key, index), index)
    frames.append(plain_think(params, jnp.stack(frames, axis=1), y0, noise_of)[:, -1])
  want = jnp.stack(frames[C:], axis=1)
  np.testing.assert_allclose(got["frames"], want, rtol=1e-4, atol=1e-5)
  d = np.abs(np.asarray(want) - np.asarray(latents[:, C:]))
  np.testing.assert_allclose(got["smooth_l1"], np.mean(np.where(d < 1, 0.5 * d * d, d - 0.5)),
                             rtol=1e-4)
  np.testing.assert_allclose(got["mse_first_frame"], np.mean(d[:, 0] ** 2), rtol=1e-4)
  assert got["energy_steps"].shape == (2,)
  # Frame C is the teacher-forced prediction given that key; frame C+1 reads a prediction.
  np.testing.assert_allclose(got["frames"][:, 0], forced(jax.random.fold_in(key, C))[:, C - 1],
                             rtol=1e-4, atol=1e-5)
  assert not np.allclose(got["frames"][:, 1], forced(jax.random.fold_in(key, C + 1))[:, C],
                         atol=1e-3)
  with pytest.raises(ValueError, match="condition_frames: expected 1..4"):
    video.next_frame_rollout(params, latents, M, T, OPTS, key, 5)


def replay_config(replay_buffer=True, **thinking):
  c = nextframe.get_config("s2_cpu")
  c.model.update(latent_dim=6, dim=8, n_layers=1, n_heads=2, context_length=3)
  c.train.update(batch_size=4, tensorboard=False)
  c.thinking.update(replay_buffer=replay_buffer, replay_buffer_groups=2, **thinking)
  return c


@pytest.mark.slow
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


@pytest.mark.slow
def test_replay_buffer_wraps_fifo_and_survives_a_checkpoint(tmp_path):
  c = replay_config(replay_buffer_size=3)          # 2 fresh rows and 1 replayed per group
  task = tasks.build(c)
  assert replay.shape(task) == (2, 3, 2, 1)
  assert task.flops(4) > tasks.build(replay_config(replay_buffer=False)).flops(4)
  push = jax.jit(lambda carry, x, final: replay.push(carry, x, final, task))
  carry, pushed = task.init_carry(), []
  for i in range(3):
    latents = jax.random.normal(jax.random.key(30 + i), (4, 4, 6))
    final = jax.random.normal(jax.random.key(40 + i), (6, 3, 6))   # fresh and replayed rows
    carry = push(carry, latents, final)
    pushed.append((latents, final[jnp.array([0, 1, 3, 4])]))       # the fresh rows' finals
  # Two lanes of one batch each: the third push overwrote the first.
  assert (int(carry.pointer), int(carry.fill)) == (1, 3)
  for lane, (latents, finals) in zip((1, 0), pushed[1:]):
    np.testing.assert_array_equal(carry.tokens[lane], latents)
    np.testing.assert_array_equal(carry.logits[lane], finals)
  # The official list after 6 adds with max_size 3 holds the last 3 of each group: the
  # second push's last row and the third push's two; sampling draws those and only those.
  final_of = {float(x[r, 0, 0]): f[r] for x, f in pushed for r in range(4)}
  sample = jax.jit(lambda carry, key: replay.sample(carry, key, task))
  drawn = [set(), set()]
  for seed in range(30):
    records, candidates, valid = sample(carry, jax.random.key(seed))
    assert valid.tolist() == [1.0]
    for g in range(2):
      drawn[g].add(float(records[g, 0, 0, 0]))
      np.testing.assert_array_equal(candidates[g, 0], final_of[float(records[g, 0, 0, 0])])
  for g in range(2):
    assert drawn[g] == {float(pushed[1][0][2 * g + 1, 0, 0]), float(pushed[2][0][2 * g, 0, 0]),
                        float(pushed[2][0][2 * g + 1, 0, 0])}
  program = program_lib.build(c)
  state = program.init_state()._replace(replay=carry)
  ckpt = Checkpointer(tmp_path)
  ckpt.save(3, state, {"position": 1})
  _, restored, _ = ckpt.restore(program.abstract_sharded_state())
  ckpt.close()
  chex.assert_trees_all_equal(restored.replay, carry)
