"""The continuous model kinds as the trainer sees them: a config in, pure functions out.

`config.model.kind` picks the task: `image_ebt` (the bidirectional denoising EBT,
tasks/image.py), `dit` (its DiT baseline) and `latent_ebt` (next-frame prediction,
tasks/video.py); `ebt` and `transformer` stay in tasks/text.py, which hands the other
kinds to this module. Everything here is a function of (params, batch, key) closed over
the frozen dims and options derived from the config, so the trainer's one jitted step,
its shardings, checkpoints and resume work unchanged for every kind. A batch is clean
images [B, H, W, C] in [-1, 1] for the image kinds and frame latents [B, S+1, L] for
`latent_ebt`; all noise is drawn from the step's key.

Evaluation (`eval_batch`) returns mean-squared errors, not PSNR, so that batches average
correctly: the PSNR of a split is that of its mean pixel MSE, the official PSNR of all its
images as one batch. Image kinds evaluate each batch at `denoise.noise_level` (split
`validation`) and `denoise.ood_noise_level` (split `ood_noise_<level>`) from the same
clean images; the EBT over thinking steps 1..N (N = inference.thinking_steps, or
thinking.num_steps), the DiT at every DDIM step count of `inference.ddim_steps` (empty:
every timestep). The in-distribution noise is drawn from the batch's key exactly as
`image.ebt_denoise_eval` / `image.dit_denoise_eval` draw it, so an EBT and a DiT evaluated
with the same key see the same noisy images.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from ebt_jax import config as config_lib
from ebt_jax.models import dit
from ebt_jax.tasks import image, video
from ebt_jax.tasks.continuous import ThinkingOptions

KINDS = config_lib.CONTINUOUS_KINDS
OOD_KEY_SALT = 1


def thinking_options(config: ml_collections.ConfigDict) -> ThinkingOptions:
  return ThinkingOptions.from_config(config.thinking)


def denoise_options(config: ml_collections.ConfigDict) -> image.DenoiseOptions:
  d = config.denoise
  return image.DenoiseOptions(diffusion_steps=d.diffusion_steps, noise_level=d.noise_level,
                              randomize_noise_level=d.randomize_noise_level,
                              ood_noise_level=d.ood_noise_level)


def next_frame_options(config: ml_collections.ConfigDict) -> video.NextFrameOptions:
  return video.NextFrameOptions(initial_condition=config.thinking.initial_condition)


def param_specs(config: ml_collections.ConfigDict) -> dict:
  kind = config.model.kind
  if kind == "image_ebt":
    return image.param_specs(config_lib.image_ebt_dims(config), thinking_options(config))
  if kind == "dit":
    return dit.param_specs(config_lib.dit_dims(config))
  if kind == "latent_ebt":
    return video.param_specs(config_lib.latent_ebt_dims(config), thinking_options(config))
  raise ValueError(f"model.kind {kind!r} is not one of {KINDS}")


def batch_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The global training batch's shape for `config.model.kind` (text: tokens [B, S+1])."""
  m, B = config.model, config.train.batch_size
  if m.kind in config_lib.IMAGE_KINDS:
    return (B, m.image_size, m.image_size, m.image_channels)
  if m.kind == "latent_ebt":
    return (B, m.context_length + 1, m.latent_dim)
  return (B, m.context_length + 1)


def tokens_per_example(config: ml_collections.ConfigDict) -> int:
  """Transformer tokens of one example: patches of an image, frames of a sequence."""
  m = config.model
  if m.kind in config_lib.IMAGE_KINDS:
    return (m.image_size // m.patch_size) ** 2
  return m.context_length


def training_loss(params: dict, batch: jax.Array, key: jax.Array,
                  config: ml_collections.ConfigDict):
  """(loss, metrics) of a training batch."""
  kind = config.model.kind
  if kind == "image_ebt":
    return image.image_ebt_loss(params, batch, config_lib.image_ebt_dims(config),
                                thinking_options(config), denoise_options(config), key)
  if kind == "dit":
    return image.dit_loss(params, batch, config_lib.dit_dims(config), denoise_options(config), key)
  return video.next_frame_loss(params, batch, config_lib.latent_ebt_dims(config),
                               thinking_options(config), next_frame_options(config), key)


# --- evaluation --------------------------------------------------------------------------

def eval_steps(config: ml_collections.ConfigDict) -> int:
  """Thinking steps evaluated: inference.thinking_steps, or the trained thinking.num_steps."""
  return config.inference.thinking_steps or config.thinking.num_steps


def ddim_counts(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The DiT's evaluated DDIM step counts (network evaluations), ascending; by default
  every timestep (at both noise levels)."""
  counts = tuple(config.inference.ddim_steps)
  return tuple(sorted(set(counts))) if counts else (config_lib.ddim_step_limit(config),)


def ood_split(config: ml_collections.ConfigDict) -> str:
  return f"ood_noise_{config.denoise.ood_noise_level:g}"


def eval_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  if config.model.kind in config_lib.IMAGE_KINDS:
    return ("validation", ood_split(config))
  return ("validation",)


def split_levels(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Noise level of each image split."""
  return {"validation": config.denoise.noise_level,
          ood_split(config): config.denoise.ood_noise_level}


def split_key(key: jax.Array, split_index: int) -> jax.Array:
  """The key a split's batch is evaluated with (validation: the batch's key itself)."""
  return key if split_index == 0 else jax.random.fold_in(key, OOD_KEY_SALT + split_index)


def with_step_size(params: dict, config: ml_collections.ConfigDict) -> dict:
  """Params with alpha replaced (inference.step_size > 0) or scaled (inference.step_size_scale)."""
  i = config.inference
  if "alpha" not in params or (i.step_size == 0 and i.step_size_scale == 1):
    return params
  alpha = jnp.asarray(i.step_size, params["alpha"].dtype) if i.step_size > 0 else params["alpha"]
  return {**params, "alpha": alpha * i.step_size_scale}


def image_ebt_eval(params, clean, key, config, *, num_steps: int, images: bool = False) -> dict:
  """{split: per-step pixel MSE and energy, the noisy input's MSE} of one batch."""
  m, t, opts = config_lib.image_ebt_dims(config), thinking_options(config), denoise_options(config)
  out = {}
  for i, (split, level) in enumerate(split_levels(config).items()):
    r = image.ebt_denoise_eval(params, clean, m, t, opts, split_key(key, i), level=level,
                               num_steps=num_steps)
    out[split] = {"pixel_mse_steps": r["pixel_mse_steps"], "pixel_mse_noisy": r["pixel_mse_noisy"],
                  "energy_steps": r["energy_steps"]}
    if images:
      out[split].update(noisy=r["noisy"], denoised=r["denoised"])
  return out


def dit_eval(params, clean, key, config, *, counts: tuple[int, ...], images: bool = False) -> dict:
  """{split: pixel MSE per DDIM step count, the noisy input's MSE} of one batch."""
  m, opts, inf = config_lib.dit_dims(config), denoise_options(config), config.inference
  out = {}
  for i, (split, level) in enumerate(split_levels(config).items()):
    # The noise `image.ebt_denoise_eval` draws from the same key.
    noise_key = jax.random.split(split_key(key, i))[0]
    noisy, _ = image.add_noise(clean, noise_key, opts, level)
    mses, last = [], None
    for n in counts:
      last = image.dit_denoise(params, noisy, m, opts, level, n, inf.recurse_diffusion,
                               inf.clip_denoised)
      mses.append(image.pixel_mse(last, clean))
    out[split] = {"pixel_mse": jnp.stack(mses), "pixel_mse_noisy": image.pixel_mse(noisy, clean)}
    if images:
      out[split].update(noisy=noisy, denoised=last)
  return out


def latent_ebt_eval(params, latents, key, config, *, num_steps: int) -> dict:
  """{"validation": per-step SmoothL1, MSE and energy} of one batch of frame latents."""
  m, t = config_lib.latent_ebt_dims(config), thinking_options(config)
  r = video.next_frame_eval(params, latents, m, t, next_frame_options(config), key,
                            num_steps=num_steps)
  return {"validation": {k: r[k] for k in ("smooth_l1_steps", "mse_steps", "energy_steps")}}


def eval_batch(params: dict, batch: jax.Array, key: jax.Array,
               config: ml_collections.ConfigDict) -> dict:
  """Training's evaluation of one batch: {split: {metric: array}} (see the docstring)."""
  kind = config.model.kind
  if kind == "image_ebt":
    return image_ebt_eval(params, batch, key, config, num_steps=eval_steps(config))
  if kind == "dit":
    return dit_eval(params, batch, key, config, counts=ddim_counts(config))
  return latent_ebt_eval(params, batch, key, config, num_steps=eval_steps(config))


def psnr_of_mse(mse) -> float:
  """PSNR in dB of a pixel MSE on the [0, 255] scale (inf for 0)."""
  mse = float(mse)
  return float("inf") if mse <= 0 else 10 * math.log10(255.0 ** 2 / mse)
