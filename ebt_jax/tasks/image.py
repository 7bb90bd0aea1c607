"""Image denoising: the noise process, the EBT's S1 objective, the DiT baseline, PSNR.

Images are [B, H, W, C] in [-1, 1] (the official Normalize(0.5, 0.5)). Noise follows the
official `denoise_images_noise_level` semantics: a linear-beta diffusion of
T = int(diffusion_steps / level) steps (`diffusion.linear`), so noising to timestep
diffusion_steps - 1 reaches the fraction `level` of the standard process. Training noises
to t = diffusion_steps - 1 (or, with `randomize_noise_level`, a uniform t below it);
evaluation at a level noises to t = int(level * T) - 1 of that level's schedule (the
official `generate_image`; the same t as training when diffusion_steps / level is whole).
Out-of-distribution evaluation is evaluation at a higher level than training's.

EBT: the candidate starts at the noisy image and thinks under `bi_ebt.energy` (one
landscape); the loss is SmoothL1 to the clean image (`continuous.s1_objective`).

DiT: trained with the official hybrid loss on t ~ U{0..diffusion_steps-1} of the training
schedule; it denoises by DDIM from the noisy image's timestep with a chosen number of
network evaluations, optionally re-run on its own output (`recursions`, the official
`infer_recurse_diffusion_n_times`). As in the official evaluation, DDIM at a level uses
that level's schedule while the network is told the timestep index, so at a higher level
than trained the DiT sees indices it knows with more noise than they meant in training.

PSNR is the official one: both images mapped to [0, 255] and clamped, PSNR of the MSE over
the whole batch (`per_image=True` averages per-image PSNRs instead).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ebt_jax.models import bi_ebt, diffusion, dit
from ebt_jax.models.params import axes_tree, init_tree
from ebt_jax.tasks import continuous
from ebt_jax.tasks.continuous import Outcome, ThinkingOptions


@dataclasses.dataclass(frozen=True)
class DenoiseOptions:
  """The noise process (official names in brackets)."""

  diffusion_steps: int = 100           # [diffusion_steps] (100 in the denoising scripts)
  noise_level: float = 0.1             # [denoise_images_noise_level] training level
  randomize_noise_level: bool = False  # [randomize_denoise_images_noise_level]
  ood_noise_level: float = 0.2         # the inference scripts' out-of-distribution level

  def __post_init__(self):
    for name in ("noise_level", "ood_noise_level"):
      level = getattr(self, name)
      if not 0 < level <= 1:
        raise ValueError(f"denoise.{name}: expected a level in (0, 1], got {level}")
    if self.diffusion_steps < 1:
      raise ValueError(f"denoise.diffusion_steps: expected >= 1, got {self.diffusion_steps}")


# --- noise -------------------------------------------------------------------------------

def schedule(opts: DenoiseOptions, level: float | None = None) -> diffusion.Diffusion:
  """The diffusion whose first `diffusion_steps` steps reach `level` (default training's)."""
  level = opts.noise_level if level is None else level
  return diffusion.linear(int(opts.diffusion_steps / level))


def eval_timestep(opts: DenoiseOptions, level: float | None = None) -> int:
  """The timestep evaluation at `level` noises to: int(level * T) - 1."""
  level = opts.noise_level if level is None else level
  return int(level * schedule(opts, level).num_timesteps) - 1


def add_noise(clean: jax.Array, key: jax.Array, opts: DenoiseOptions,
              level: float | None = None, train: bool = False) -> tuple[jax.Array, jax.Array]:
  """(noisy images, timestep [B]). `train`: training's timestep (random with
  `randomize_noise_level`) at the training level; else `eval_timestep(level)`."""
  B = clean.shape[0]
  t_key, noise_key = jax.random.split(key)
  if train:
    d = schedule(opts)
    if opts.randomize_noise_level:
      t_B = jax.random.randint(t_key, (B,), 0, opts.diffusion_steps)
    else:
      t_B = jnp.full((B,), opts.diffusion_steps - 1, jnp.int32)
  else:
    d = schedule(opts, level)
    t_B = jnp.full((B,), eval_timestep(opts, level), jnp.int32)
  noise = jax.random.normal(noise_key, clean.shape, clean.dtype)
  return diffusion.q_sample(d, clean, t_B, noise), t_B


# --- metrics -----------------------------------------------------------------------------

def to_pixels(images: jax.Array) -> jax.Array:
  """[-1, 1] images as clamped [0, 255] pixel values (the official denormalize + clamp)."""
  return jnp.clip((images + 1) * 127.5, 0, 255)


def pixel_mse(pred: jax.Array, clean: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(to_pixels(pred) - to_pixels(clean)))


def psnr(pred: jax.Array, clean: jax.Array, per_image: bool = False) -> jax.Array:
  """PSNR in dB of [-1, 1] images on the [0, 255] scale (official `generate_image`)."""
  if per_image:
    return jnp.mean(jax.vmap(lambda p, c: psnr(p[None], c[None]))(pred, clean))
  return 10 * jnp.log10(255.0 ** 2 / pixel_mse(pred, clean))


# --- the EBT -----------------------------------------------------------------------------

def param_specs(m: bi_ebt.ImageEBTDims, t: ThinkingOptions) -> dict:
  return {**bi_ebt.param_specs(m), **continuous.param_specs(t)}


def init_params(m: bi_ebt.ImageEBTDims, t: ThinkingOptions, key: jax.Array) -> dict:
  specs = param_specs(m, t)
  return jax.jit(lambda k: init_tree(specs, k))(key)


def param_axes(m: bi_ebt.ImageEBTDims, t: ThinkingOptions) -> dict:
  return axes_tree(param_specs(m, t))


def energy_fn(params: dict, m: bi_ebt.ImageEBTDims):
  """energy(z, landscape) -> [B] for the thinking loop (one landscape)."""
  return lambda z, landscape: bi_ebt.energy(params, z, m)


def image_ebt_objective(params: dict, clean: jax.Array, m: bi_ebt.ImageEBTDims,
                        t: ThinkingOptions, opts: DenoiseOptions, key: jax.Array,
                        noisy: jax.Array | None = None) -> Outcome:
  """The S1 denoising objective on clean images [B, H, W, C] in [-1, 1].

  `noisy` replaces the training noise (evaluation passes images noised by `add_noise`).
  Metrics add `l1_loss` (final step), `psnr_noisy`, per-step `psnr_steps`, and
  `mse_raw_loss` (the official name of the final step's MSE).
  """
  noise_key, think_key = jax.random.split(key)
  if noisy is None:
    noisy, _ = add_noise(clean, noise_key, opts, train=True)
  noisy = jax.lax.stop_gradient(noisy)
  extra = lambda y: {"psnr": psnr(y, clean), "l1": jnp.mean(jnp.abs(y - clean))}
  out = continuous.s1_objective(params, energy_fn(params, m), noisy, clean,
                                jnp.zeros(t.num_steps, jnp.int32), t, think_key, extra)
  out.metrics.update({
      "l1_loss": out.steps["l1"][-1],
      "mse_raw_loss": out.steps["mse"][-1],
      "psnr_steps": out.steps["psnr"],
      "psnr": out.steps["psnr"][-1],
      "psnr_noisy": psnr(noisy, clean),
  })
  return out


def image_ebt_loss(params, clean, m, t, opts, key, noisy=None):
  """(loss, metrics) of `image_ebt_objective`."""
  out = image_ebt_objective(params, clean, m, t, opts, key, noisy)
  return out.loss, out.metrics


def ebt_denoise_eval(params: dict, clean: jax.Array, m: bi_ebt.ImageEBTDims,
                     t: ThinkingOptions, opts: DenoiseOptions, key: jax.Array, *,
                     level: float | None = None, num_steps: int | None = None) -> dict:
  """PSNR/MSE per thinking step at noise `level` (default training's; pass
  `opts.ood_noise_level` for out of distribution) with `num_steps` steps (default K)."""
  noise_key, think_key = jax.random.split(key)
  noisy, _ = add_noise(clean, noise_key, opts, level)
  emit = lambda y: {"psnr": psnr(y, clean), "mse": pixel_mse(y, clean)}
  traj = continuous.think(params, energy_fn(params, m), noisy, jnp.zeros(t.num_steps, jnp.int32),
                          t, think_key, emit, num_steps=num_steps)
  return {"psnr_steps": traj.outputs["psnr"], "pixel_mse_steps": traj.outputs["mse"],
          "psnr_noisy": psnr(noisy, clean), "pixel_mse_noisy": pixel_mse(noisy, clean),
          "energy_steps": jnp.mean(traj.energies, axis=1), "denoised": traj.final,
          "noisy": noisy}


# --- the DiT baseline --------------------------------------------------------------------

def dit_init_params(m: dit.DiTDims, key: jax.Array) -> dict:
  specs = dit.param_specs(m)
  return jax.jit(lambda k: init_tree(specs, k))(key)


def dit_loss(params: dict, clean: jax.Array, m: dit.DiTDims, opts: DenoiseOptions,
             key: jax.Array):
  """(loss, metrics): the official hybrid loss at t ~ U{0..diffusion_steps-1}."""
  t_key, noise_key = jax.random.split(key)
  t_B = jax.random.randint(t_key, (clean.shape[0],), 0, opts.diffusion_steps)
  noise = jax.random.normal(noise_key, clean.shape, clean.dtype)
  terms = diffusion.training_losses(lambda x, tt: dit.forward(params, x, tt, m), schedule(opts),
                                    clean, t_B, noise, learn_sigma=m.learn_sigma)
  metrics = {"loss": jnp.mean(terms["loss"]), "mse_conditioned_loss": jnp.mean(terms["mse"])}
  if "vb" in terms:
    metrics["vb_loss"] = jnp.mean(terms["vb"])
  return metrics["loss"], jax.lax.stop_gradient(metrics)


def dit_denoise(params: dict, noisy: jax.Array, m: dit.DiTDims, opts: DenoiseOptions,
                level: float | None = None, num_steps: int | None = None,
                recursions: int = 0, clip_denoised: bool = True) -> jax.Array:
  """DDIM (eta 0) from images noised at `level` with `num_steps` network evaluations
  (default every timestep, the official loop), then `recursions` more runs on the output."""
  d = schedule(opts, level)
  t_start = eval_timestep(opts, level)
  eps_fn = lambda x, tt: dit.predict_eps(params, x, tt, m)
  out = noisy
  for _ in range(recursions + 1):
    out = diffusion.ddim_sample(eps_fn, out, d, t_start, num_steps, clip_denoised=clip_denoised)
  return out


def dit_denoise_eval(params: dict, clean: jax.Array, m: dit.DiTDims, opts: DenoiseOptions,
                     key: jax.Array, *, level: float | None = None,
                     num_steps: int | None = None, recursions: int = 0) -> dict:
  """PSNR/MSE of DDIM denoising; `nfe` is the number of network evaluations."""
  noisy, _ = add_noise(clean, key, opts, level)
  den = dit_denoise(params, noisy, m, opts, level, num_steps, recursions)
  steps = eval_timestep(opts, level) + 1 if num_steps is None else num_steps
  return {"psnr": psnr(den, clean), "pixel_mse": pixel_mse(den, clean),
          "psnr_noisy": psnr(noisy, clean), "nfe": steps * (recursions + 1), "denoised": den}
