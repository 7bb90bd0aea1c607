"""The autoregressive latent EBT (next-frame prediction) and its S1 objective."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ebt_jax.data.images import MovingDigits
from ebt_jax.models import ar_ebt, latent_ebt
from ebt_jax.models.blocks import StackDims
from ebt_jax.tasks import video
from ebt_jax.tasks.options import ThinkingOptions
from test_image_ebt import directional_check, moved


def _dims(ebt_type="time_embed", latent_dim=6, dtype=jnp.float32, num_landscapes=2, **stack):
  stack = {"dim": 8, "n_layers": 2, "n_heads": 2, "ffn_hidden": 16, "dtype": dtype, **stack}
  return latent_ebt.LatentEBTDims(StackDims(**stack), latent_dim=latent_dim, ebt_type=ebt_type,
                                  num_landscapes=num_landscapes)


@pytest.mark.slow
@pytest.mark.parametrize("ebt_type", ["time_embed", "adaln"])
def test_second_order_gradient_matches_finite_differences(x64, ebt_type):
  m = _dims(ebt_type, dtype=jnp.float64, n_layers=1)
  t = ThinkingOptions.create(num_steps=2, step_size=2.0, detach=False)
  params = moved(video.init_params(m, t, jax.random.key(0)), jax.random.key(1), 0.1)
  latents = jax.random.normal(jax.random.key(2), (2, 4, 6), jnp.float64)
  loss = lambda p: video.next_frame_loss(p, latents, m, t, video.NextFrameOptions(),
                                         jax.random.key(3))[0]
  g = directional_check(loss, params, jax.random.key(4))
  assert float(jnp.abs(g["alpha"])) > 0 and float(jnp.abs(g["proj_w"]).sum()) > 0


@pytest.mark.parametrize("ebt_type", ["default", "adaln"])
def test_latent_ebt_is_the_text_ebt_with_a_linear_input_map(ebt_type):
  # One-hot latents through a bias-free projection equal token embeddings, and
  # probabilities through it equal the tied candidate embedding: same energies.
  V = 6
  m = _dims(ebt_type, latent_dim=V)
  lp = moved(video.init_params(m, ThinkingOptions.create(), jax.random.key(0)), jax.random.key(1), 0.1)
  lp["proj_b"] = jnp.zeros_like(lp["proj_b"])
  tp = {k: v for k, v in lp.items() if k not in ("proj_w", "proj_b")}
  tp["embed"] = lp["proj_w"]
  tokens = jax.random.randint(jax.random.key(2), (2, 5), 0, V)
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(3), (2, 5, V)))
  dims_t = ar_ebt.TextEBTDims(m.stack, V, ebt_type=ebt_type, num_landscapes=2, tied_v2e=True)
  landscapes = jnp.arange(2)
  text = jax.jit(jax.vmap(lambda l: ar_ebt.energy(tp, tokens, probs, l, dims_t)))(landscapes)
  latent = jax.jit(jax.vmap(lambda l: latent_ebt.energy(lp, jax.nn.one_hot(tokens, V), probs,
                                                        l, m)))(landscapes)
  np.testing.assert_allclose(latent, text, rtol=1e-5, atol=1e-6)


def test_predictions_see_only_past_frames_and_themselves():
  m = _dims("time_embed")
  params = moved(video.init_params(m, ThinkingOptions.create(), jax.random.key(0)), jax.random.key(1))
  ctx = jax.random.normal(jax.random.key(2), (1, 5, 6))
  cand = jax.random.normal(jax.random.key(3), (1, 5, 6))
  energy = jax.jit(lambda c, y: latent_ebt.energy(params, c, y, 1, m))
  base = energy(ctx, cand)
  # Frame 3 is context of predictions 3 and 4 only.
  changed = np.abs(energy(ctx.at[0, 3].add(1.0), cand) - base)[0] > 1e-6
  np.testing.assert_array_equal(changed, [False, False, False, True, True])
  # A candidate affects its own energy only.
  changed = np.abs(energy(ctx, cand.at[0, 1].add(1.0)) - base)[0] > 1e-6
  np.testing.assert_array_equal(changed, [False, True, False, False, False])


def test_identity_projection_when_widths_match_and_initial_conditions():
  m = _dims("default", latent_dim=8)
  assert "proj_w" not in latent_ebt.param_specs(m)
  assert _dims().projects and "proj_w" in latent_ebt.param_specs(_dims())
  x = jnp.arange(12.0).reshape(1, 2, 6)
  key = jax.random.key(0)
  np.testing.assert_array_equal(
      video.initial_candidate(x, key, video.NextFrameOptions("most_recent_embedding")), x)
  np.testing.assert_array_equal(
      video.initial_candidate(x, key, video.NextFrameOptions("zeros")), 0.0)
  assert video.initial_candidate(x, key, video.NextFrameOptions()).std() > 0.3
  with pytest.raises(ValueError, match="thinking.initial_condition"):
    video.NextFrameOptions("copy")
  with pytest.raises(ValueError, match="model.num_landscapes 1 < thinking.num_steps 2"):
    video.landscapes(_dims(num_landscapes=1), ThinkingOptions.create(num_steps=2))


def test_metrics_follow_the_official_definitions():
  m, t = _dims(), ThinkingOptions.create(num_steps=2, step_size=2.0)
  params = video.init_params(m, t, jax.random.key(0))
  latents = jax.random.normal(jax.random.key(1), (2, 4, 6))
  run = jax.jit(lambda p, truncate: video.next_frame_objective(
      p, latents, m, ThinkingOptions.create(num_steps=2, step_size=2.0, truncate=truncate),
      video.NextFrameOptions(), jax.random.key(2)), static_argnums=1)
  out = run(params, False)
  sl1 = out.steps["smooth_l1"]
  np.testing.assert_allclose(out.loss, sl1.mean(), rtol=1e-6)
  np.testing.assert_allclose(out.metrics["initial_loss"], sl1[0])
  np.testing.assert_allclose(out.metrics["final_step_loss"], sl1[-1])
  e = out.metrics["energy_steps"]
  np.testing.assert_allclose(out.metrics["initial_final_pred_energies_gap"], e[0] - e[-1])
  assert out.final.shape == (2, 3, 6)
  np.testing.assert_allclose(run(params, True).loss, sl1[-1], rtol=1e-6)


@pytest.mark.slow
def test_next_frame_loss_falls_on_moving_digits():
  source = MovingDigits(frames=5, canvas=12, digit_size=6, num_digits=1, latent_dim=16)
  m = _dims("time_embed", latent_dim=16, dim=16, n_layers=1)
  t = ThinkingOptions.create(num_steps=2, step_size=20.0)
  params = video.init_params(m, t, jax.random.key(0))
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, batch, key):
    (loss, _), grads = jax.value_and_grad(video.next_frame_loss, has_aux=True)(
        params, batch, m, t, video.NextFrameOptions(), key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = tx.init(params), []
  for i in range(60):
    params, opt_state, loss = step(params, opt_state, jnp.asarray(source.batch(i, 8)),
                                   jax.random.key(i))
    losses.append(float(loss))
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), losses
