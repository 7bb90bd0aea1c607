"""The image-denoising EBT, the DiT baseline and the diffusion maths (official semantics)."""

import math
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import perturb, to_f64
from ebt_jax.data.images import EmbeddedImages
from ebt_jax.models import bi_ebt, diffusion, dit, dit_blocks
from ebt_jax.models.dit_blocks import DiTStackDims
from ebt_jax.tasks import image
from ebt_jax.tasks.options import ThinkingOptions


def directional_check(f, params, key, eps=1e-4, rtol=1e-7):
  """test_objective's check (grad(f) . v against Richardson-extrapolated central
  differences along a random unit direction v), with every step jitted: eager float64
  tree arithmetic would compile one small kernel per leaf shape and dominate the test."""

  @jax.jit
  def direction(key):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    v = [jax.random.normal(k, l.shape, l.dtype)
         for k, l in zip(jax.random.split(key, len(leaves)), leaves)]
    norm = jnp.sqrt(sum(jnp.sum(d * d) for d in v))
    return jax.tree_util.tree_unflatten(treedef, [d / norm for d in v])

  @jax.jit
  def gradient_along(v):
    g = jax.grad(f)(params)
    return g, sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g),
                                                  jax.tree_util.tree_leaves(v)))

  v = direction(key)
  g, analytic = gradient_along(v)
  along = jax.jit(lambda s: f(jax.tree_util.tree_map(lambda p, d: p + s * d, params, v)))
  central = lambda h: (along(h) - along(-h)) / (2 * h)
  numeric = (4 * central(eps / 2) - central(eps)) / 3
  np.testing.assert_allclose(analytic, numeric, rtol=rtol)
  return g


def moved(params, key, scale=0.3):
  """conftest.perturb, jitted (and cast to float64 under x64)."""
  return jax.jit(lambda p: to_f64(perturb(p, key, scale)) if jax.config.jax_enable_x64
                 else perturb(p, key, scale))(params)


def _dims(dtype=jnp.float32, image_size=4, patch_size=2, **stack):
  stack = {"dim": 8, "n_layers": 2, "n_heads": 2, "mlp_ratio": 2.0, "dtype": dtype, **stack}
  return bi_ebt.ImageEBTDims(DiTStackDims(**stack), image_size=image_size, patch_size=patch_size)


def _images(key, shape=(2, 4, 4, 3)):
  return jax.random.uniform(key, shape, minval=-1, maxval=1)


@pytest.mark.slow
def test_second_order_gradient_matches_finite_differences(x64):
  m = _dims(jnp.float64, n_layers=1)
  t = ThinkingOptions.create(num_steps=2, step_size=5.0, detach=False)
  params = moved(image.init_params(m, t, jax.random.key(0)), jax.random.key(1))
  clean = _images(jax.random.key(2)).astype(jnp.float64)
  opts = image.DenoiseOptions()
  loss = lambda p: image.image_ebt_loss(p, clean, m, t, opts, jax.random.key(3))[0]
  g = directional_check(loss, params, jax.random.key(4))
  # alpha's gradient is <dL/dy, -grad_y E>: only there through the thinking step.
  assert float(jnp.abs(g["alpha"])) > 0
  chex.assert_tree_all_finite(g)


def test_adaln_zero_init_gives_a_flat_energy_that_still_learns():
  m, t = _dims(), ThinkingOptions.create(num_steps=1, step_size=5.0)
  params = image.init_params(m, t, jax.random.key(0))
  clean = _images(jax.random.key(1))
  np.testing.assert_array_equal(bi_ebt.energy(params, clean, m), 0.0)
  g = jax.jit(jax.grad(lambda p: image.image_ebt_loss(p, clean, m, t, image.DenoiseOptions(),
                                                      jax.random.key(2))[0]))(params)
  # The zero head still gets a gradient (the energy's image gradient is linear in it).
  assert float(jnp.abs(g["head"]).sum()) > 0


def test_patch_energies_are_permutation_equivariant_only_with_their_positions():
  m = _dims(image_size=8, patch_size=2)        # 16 patches
  params = moved(image.init_params(m, ThinkingOptions.create(), jax.random.key(0)), jax.random.key(1))
  img = _images(jax.random.key(2), (2, 8, 8, 3))
  perm = np.random.default_rng(0).permutation(m.num_patches)
  tokens = jax.jit(lambda x: bi_ebt.token_energies(params, x, m))
  energy = jax.jit(lambda x: bi_ebt.energy(params, x, m))
  emb, pos = bi_ebt.embed_patches(params, img, m), bi_ebt.pos_embed(m)
  base = tokens(emb + pos)
  permuted = tokens(emb[:, perm] + pos[perm])
  np.testing.assert_allclose(permuted, base[:, perm], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(permuted.mean(-1), base.mean(-1), rtol=1e-5, atol=1e-6)
  # Moving the patches of the image (positions stay with the places) changes the energy.
  patches = dit_blocks.patchify(img, m.patch_size)
  shuffled = dit_blocks.unpatchify(patches[:, perm], m.patch_size, m.grid, m.grid)
  assert np.all(np.abs(energy(shuffled) - energy(img)) > 1e-5)
  np.testing.assert_allclose(energy(img), base.mean(-1), rtol=1e-6)


def _official_sincos(embed_dim, grid_size):
  """The official get_2d_sincos_pos_embed, transcribed."""
  def one_d(d, pos):
    omega = np.arange(d // 2, dtype=np.float64)
    omega /= d / 2.0
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
  grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
  return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


def test_sincos_table_and_patch_embedding_match_the_official_layout():
  np.testing.assert_allclose(dit_blocks.sincos_2d(16, 3), _official_sincos(16, 3), atol=1e-12)
  # The patch embedding is the official stride-p convolution with weight [D, C, p, p].
  key_w, key_x = jax.random.split(jax.random.key(0))
  w_DxCxPxP = jax.random.normal(key_w, (8, 3, 2, 2))
  img = jax.random.normal(key_x, (2, 4, 6, 3))
  conv = jax.lax.conv_general_dilated(img.transpose(0, 3, 1, 2), w_DxCxPxP, (2, 2), "VALID")
  conv_BxTxD = conv.reshape(2, 8, -1).transpose(0, 2, 1)   # flatten(2).transpose(1, 2)
  params = {"patch_w": w_DxCxPxP.transpose(2, 3, 1, 0), "patch_b": jnp.zeros(8)}
  np.testing.assert_allclose(dit_blocks.embed_patches(params, img, 2, jnp.float32), conv_BxTxD,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(dit_blocks.unpatchify(dit_blocks.patchify(img, 2), 2, 2, 3), img)


def test_noise_level_semantics_follow_the_official_schedule():
  opts = image.DenoiseOptions(diffusion_steps=100, noise_level=0.1)
  assert image.schedule(opts).num_timesteps == 1000
  assert image.eval_timestep(opts) == 99
  assert image.schedule(opts, 0.2).num_timesteps == 500 and image.eval_timestep(opts, 0.2) == 99
  # The same fraction of the (stretched) process: the standard 1000-step schedule's
  # abar at t = 99 (0.1) or about t = 199 (0.2).
  std = lambda level: math.sqrt(1 - image.schedule(opts, level).alphas_cumprod[99])
  assert std(0.1) == pytest.approx(math.sqrt(1 - diffusion.linear(1000).alphas_cumprod[99]))
  assert std(0.2) == pytest.approx(math.sqrt(1 - diffusion.linear(1000).alphas_cumprod[199]),
                                   rel=0.02)
  clean = jnp.zeros((64, 4, 4, 3))
  noisy, t = image.add_noise(clean, jax.random.key(0), opts, 0.2)
  assert np.all(t == 99) and float(jnp.std(noisy)) == pytest.approx(std(0.2), rel=0.1)
  _, t_train = image.add_noise(clean, jax.random.key(0),
                               image.DenoiseOptions(randomize_noise_level=True), train=True)
  assert 0 <= int(t_train.min()) and int(t_train.max()) < 100 and len(np.unique(t_train)) > 1
  with pytest.raises(ValueError, match="denoise.noise_level"):
    image.DenoiseOptions(noise_level=1.5)


def test_spaced_timesteps_follow_the_official_rule():
  np.testing.assert_array_equal(diffusion.spaced_timesteps(100, 10), np.arange(0, 100, 11))
  np.testing.assert_array_equal(diffusion.spaced_timesteps(100, 3), [0, 50, 99])
  np.testing.assert_array_equal(diffusion.spaced_timesteps(7, 7), np.arange(7))
  np.testing.assert_array_equal(diffusion.spaced_timesteps(100, 1), [99])
  with pytest.raises(ValueError, match="cannot take 101 steps"):
    diffusion.spaced_timesteps(100, 101)


@pytest.mark.parametrize("num_steps", [None, 4, 1])
def test_ddim_is_deterministic_and_the_exact_denoiser_recovers_the_image(x64, num_steps):
  d = diffusion.linear(500)
  clean = _images(jax.random.key(0), (2, 4, 4, 3)).astype(jnp.float64) * 0.9
  t_start = 99
  noisy = diffusion.q_sample(d, clean, jnp.full((2,), t_start),
                             jax.random.normal(jax.random.key(1), clean.shape, jnp.float64))
  ab = jnp.asarray(d.alphas_cumprod)
  calls = []

  def true_eps(x, t_B):
    calls.append(t_B)
    a = ab[t_B][:, None, None, None]
    return (x - jnp.sqrt(a) * clean) / jnp.sqrt(1 - a)

  sample = jax.jit(lambda x: diffusion.ddim_sample(true_eps, x, d, t_start, num_steps))
  out = sample(noisy)
  np.testing.assert_allclose(out, clean, atol=1e-9)
  np.testing.assert_array_equal(sample(noisy), out)
  # A model that is not exact: still the same output for the same input (eta = 0).
  rough = lambda x, t_B: 0.5 * x
  once = diffusion.ddim_sample(rough, noisy, d, t_start, num_steps)
  np.testing.assert_array_equal(diffusion.ddim_sample(rough, noisy, d, t_start, num_steps), once)
  assert not np.allclose(once, noisy)
  # eta > 0 draws noise: reproducible by key, different across keys.
  a = diffusion.ddim_sample(rough, noisy, d, t_start, 5, eta=1.0, key=jax.random.key(0))
  b = diffusion.ddim_sample(rough, noisy, d, t_start, 5, eta=1.0, key=jax.random.key(1))
  assert not np.allclose(a, b)


def test_dit_starts_at_zero_and_its_hybrid_loss_is_finite():
  m = dit.DiTDims(DiTStackDims(dim=8, n_layers=1, n_heads=2, mlp_ratio=2.0), 4, 2)
  params = image.dit_init_params(m, jax.random.key(0))
  x = _images(jax.random.key(1))
  out = jax.jit(lambda p: dit.forward(p, x, jnp.array([0, 7]), m))(params)
  assert out.shape == (2, 4, 4, 6)
  np.testing.assert_array_equal(out, 0.0)       # adaLN-zero and a zero output layer
  dit_loss = jax.jit(lambda p: image.dit_loss(p, x, m, image.DenoiseOptions(), jax.random.key(3)))
  loss, metrics = dit_loss(moved(params, jax.random.key(2)))
  assert np.isfinite(loss) and metrics["vb_loss"] > 0
  np.testing.assert_allclose(loss, metrics["mse_conditioned_loss"] + metrics["vb_loss"], rtol=1e-6)
  # The official timestep sinusoid: [cos, sin] halves.
  emb = dit.timestep_embedding(jnp.array([3.0]), 8)
  freqs = np.exp(-math.log(10000) * np.arange(4) / 4)
  np.testing.assert_allclose(emb[0], np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)]),
                             rtol=1e-6)


def test_psnr_is_the_official_batch_psnr():
  clean = jnp.zeros((2, 2, 2, 3))
  pred = clean.at[0].set(2 / 255)                # one pixel step on half the images
  np.testing.assert_allclose(image.psnr(pred, clean), 10 * np.log10(255 ** 2 / 0.5), rtol=1e-5)
  # Values past [-1, 1] are clamped before the error is taken.
  low = jnp.full((1, 2, 2, 3), -1.0)
  assert np.isinf(image.psnr(low - 5, low))
  two = clean.at[0].set(2 / 255).at[1].set(4 / 255)     # pixel errors 1 and 2
  np.testing.assert_allclose(image.psnr(two, clean), 10 * np.log10(255 ** 2 / 2.5), rtol=1e-5)
  np.testing.assert_allclose(image.psnr(two, clean, per_image=True),
                             10 * np.log10(255 ** 2) - 10 * np.log10(4) / 2, rtol=1e-5)


@pytest.mark.slow
def test_a_tiny_trained_denoiser_beats_the_noisy_input():
  start = time.time()
  m = _dims(image_size=8, patch_size=2, dim=32, n_layers=1, n_heads=2)
  t = ThinkingOptions.create(num_steps=2, step_size=5.0)
  opts = image.DenoiseOptions(diffusion_steps=100, noise_level=0.1)
  params = image.init_params(m, t, jax.random.key(0))
  source = EmbeddedImages(8, kind="photos", seed=0, max_zoom=4)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, clean, key):
    (loss, metrics), grads = jax.value_and_grad(image.image_ebt_loss, has_aux=True)(
        params, clean, m, t, opts, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state = tx.init(params)
  for i in range(300):
    params, opt_state, metrics = step(params, opt_state, jnp.asarray(source.batch(i, 16)),
                                      jax.random.key(i))
  val = jnp.asarray(EmbeddedImages(8, kind="photos", split="validation").batch(0, 64))
  result = jax.jit(lambda p: image.ebt_denoise_eval(p, val, m, t, opts, jax.random.key(7)))(params)
  gain = float(result["psnr_steps"][-1] - result["psnr_noisy"])
  print(f"psnr noisy {float(result['psnr_noisy']):.2f} -> {float(result['psnr_steps'][-1]):.2f}"
        f" dB in {time.time() - start:.1f}s")
  assert gain > 1.0, result
