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
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ebt_jax import config as config_lib
from ebt_jax.data import continuous as continuous_data
from ebt_jax.errors import check
from ebt_jax.models import bi_ebt, diffusion, dit
from ebt_jax.models.attention import Attention
from ebt_jax.models.dit_blocks import DiTStackDims
from ebt_jax.models.params import axes_tree
from ebt_jax.tasks import base, continuous, flops, options
from ebt_jax.tasks.continuous import Outcome, ThinkingOptions

OOD_KEY_SALT = 1


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
  return {**bi_ebt.param_specs(m), **options.param_specs(t)}


def init_params(m: bi_ebt.ImageEBTDims, t: ThinkingOptions, key: jax.Array) -> dict:
  return base.init_from_specs(param_specs(m, t), key)


def param_axes(m: bi_ebt.ImageEBTDims, t: ThinkingOptions) -> dict:
  return axes_tree(param_specs(m, t))


def energy_fn(params: dict, m: bi_ebt.ImageEBTDims):
  """energy(z, landscape) -> [B] for the thinking loop (one landscape)."""
  return lambda z, landscape: bi_ebt.energy(params, z, m)


def image_ebt_objective(params: dict, clean: jax.Array, m: bi_ebt.ImageEBTDims,
                        t: ThinkingOptions, opts: DenoiseOptions, key: jax.Array,
                        noisy: jax.Array | None = None, *, train: bool = False,
                        warmed_up=True) -> Outcome:
  """The denoising objective on clean images [B, H, W, C] in [-1, 1]: S1, or with `train`
  the S2 options' randomness (`continuous.s1_objective`; alpha randomized per image).

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
                                jnp.zeros(t.num_steps, jnp.int32), t, think_key, extra,
                                alpha_shape=(clean.shape[0], 1, 1, 1), train=train,
                                warmed_up=warmed_up)
  out.metrics.update({
      "l1_loss": out.steps["l1"][-1],
      "mse_raw_loss": out.steps["mse"][-1],
      "psnr_steps": out.steps["psnr"],
      "psnr": out.steps["psnr"][-1],
      "psnr_noisy": psnr(noisy, clean),
  })
  return out


def image_ebt_loss(params, clean, m, t, opts, key, noisy=None, *, train=False, warmed_up=True):
  """(loss, metrics) of `image_ebt_objective`."""
  out = image_ebt_objective(params, clean, m, t, opts, key, noisy, train=train,
                            warmed_up=warmed_up)
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
  return base.init_from_specs(dit.param_specs(m), key)


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
                recursions: int = 0, clip_denoised: bool = True,
                start: int | None = None) -> jax.Array:
  """DDIM (eta 0) from images noised at `level` with `num_steps` network evaluations
  (default every timestep, the official loop), then `recursions` more runs on the output.
  `start` replaces the timestep DDIM starts from (the official `infer_increase_steps`:
  the images stay noised at `level`, the sampler starts from a later timestep)."""
  d = schedule(opts, level)
  t_start = eval_timestep(opts, level) if start is None else start
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


def psnr_of_mse(mse) -> float:
  """PSNR in dB of a pixel MSE on the [0, 255] scale (inf for 0)."""
  mse = float(mse)
  return float("inf") if mse <= 0 else 10 * math.log10(255.0 ** 2 / mse)


# --- the tasks ---------------------------------------------------------------------------
#
# Evaluation (`eval_batch`) returns mean-squared errors, not PSNR, so that batches average
# correctly: the PSNR of a split is that of its mean pixel MSE, the official PSNR of all its
# images as one batch. Each batch is evaluated at `denoise.noise_level` (split
# `validation`) and `denoise.ood_noise_level` (split `ood_noise_<level>`) from the same
# clean images; the EBT over thinking steps 1..N (N = inference.thinking_steps, or
# thinking.num_steps), the DiT at every DDIM step count of `inference.ddim_steps` (empty:
# every timestep). The in-distribution noise is drawn from the batch's key exactly as
# `ebt_denoise_eval` / `dit_denoise_eval` draw it, so an EBT and a DiT evaluated with the
# same key see the same noisy images.

def dit_stack_dims(c: ml_collections.ConfigDict) -> DiTStackDims:
  m = c.model
  return DiTStackDims(dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads,
                      mlp_ratio=1.0 if m.ffn_dim_multiplier is None else m.ffn_dim_multiplier,
                      dtype=config_lib.DTYPES[m.dtype], scan_layers=m.scan_layers, remat=m.remat,
                      attention=Attention(m.attention, m.attention_block))


def ddim_step_limit(c: ml_collections.ConfigDict) -> int:
  """The most DDIM steps from both evaluated noise levels: the timesteps up to the one
  DDIM starts from, `inference.increase_steps` or the one images are noised to, int(level
  * T) - 1 with T = int(diffusion_steps / level) (about diffusion_steps; `eval_timestep`)."""
  if c.inference.increase_steps:
    return c.inference.increase_steps + 1
  d = c.denoise
  return min(int(level * int(d.diffusion_steps / level))
             for level in (d.noise_level, d.ood_noise_level))


def validate_continuous_thinking(c: ml_collections.ConfigDict, describe: str, *,
                                 replay_buffer: bool = False) -> None:
  """What the image and video EBTs do not run (the official image model raises for its
  replay buffer, which only `replay_buffer` kinds run; the contrastive loss and per-step
  remat are text-only here)."""
  t = c.thinking
  why = f"for {describe}"
  for field in ("contrastive_loss",) if replay_buffer else ("replay_buffer", "contrastive_loss"):
    check(not t[field], f"thinking.{field}", f"False {why}", t[field])
  check(t.remat == "none", "thinking.remat", f"'none' {why}", t.remat)
  for field in ("soften_target", "sharpen"):   # text EBT options (tasks/text.py)
    check(t[field] == 0, f"thinking.{field}", f"0 {why}", t[field])
  check(not t.normalize_first_step_only, "thinking.normalize_first_step_only", f"False {why}",
        t.normalize_first_step_only)


def with_step_size(params: dict, config: ml_collections.ConfigDict) -> dict:
  """Params with alpha replaced (inference.step_size > 0) or scaled (inference.step_size_scale)."""
  i = config.inference
  if "alpha" not in params or (i.step_size == 0 and i.step_size_scale == 1):
    return params
  alpha = jnp.asarray(i.step_size, params["alpha"].dtype) if i.step_size > 0 else params["alpha"]
  return {**params, "alpha": alpha * i.step_size_scale}


class ImageTask(base.Task):
  """What the image kinds share: clean images [B, H, W, C] in [-1, 1], the image sources,
  and evaluation at the training and the out-of-distribution noise level."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    d = config.denoise
    self.denoise = DenoiseOptions(diffusion_steps=d.diffusion_steps, noise_level=d.noise_level,
                                  randomize_noise_level=d.randomize_noise_level,
                                  ood_noise_level=d.ood_noise_level)

  @classmethod
  def validate(cls, c):
    super().validate(c)
    m, d, i = c.model, c.denoise, c.inference
    for field in ("image_size", "patch_size"):
      check(isinstance(m[field], int) and m[field] >= 1, f"model.{field}", "a positive integer",
            m[field])
    check(m.image_size % m.patch_size == 0, "model.patch_size",
          f"a divisor of model.image_size={m.image_size}", m.patch_size)
    check(m.image_channels in (1, 3), "model.image_channels", "1 or 3", m.image_channels)
    check(m.dim % 4 == 0, "model.dim", "a multiple of 4 (the 2-D sin-cos position table)", m.dim)
    check(isinstance(m.learn_sigma, bool), "model.learn_sigma", "true or false", m.learn_sigma)
    check(isinstance(d.diffusion_steps, int) and d.diffusion_steps >= 1,
          "denoise.diffusion_steps", "a positive integer", d.diffusion_steps)
    for field in ("noise_level", "ood_noise_level"):
      level = d[field]
      check(0 < level <= 1, f"denoise.{field}", "a level in (0, 1]", level)
      # The stretched linear schedule's largest beta is 0.02 * 1000 / T.
      check(int(d.diffusion_steps / level) >= 20, f"denoise.{field}",
            f"a level giving diffusion_steps / level >= 20 timesteps (diffusion_steps="
            f"{d.diffusion_steps})", level)
    # DDIM can start at most from the last timestep of either level's schedule.
    last = min(int(d.diffusion_steps / level) for level in (d.noise_level, d.ood_noise_level)) - 1
    check(isinstance(i.increase_steps, int) and 0 <= i.increase_steps <= last,
          "inference.increase_steps", f"0 (start where the images are noised) or a timestep "
          f"in [1, {last}]", i.increase_steps)
    ddim = tuple(i.ddim_steps) if isinstance(i.ddim_steps, (tuple, list)) else None
    most = ddim_step_limit(c)
    check(ddim is not None and all(isinstance(n, int) and 1 <= n <= most for n in ddim),
          "inference.ddim_steps", f"a tuple of step counts in [1, {most}] (the timesteps below "
          f"the evaluated noise levels)", i.ddim_steps)
    check(isinstance(i.recurse_diffusion, int) and i.recurse_diffusion >= 0,
          "inference.recurse_diffusion", "an integer >= 0", i.recurse_diffusion)

  def batch_spec(self, batch_size: int) -> jax.ShapeDtypeStruct:
    m = self.config.model
    return jax.ShapeDtypeStruct((batch_size, m.image_size, m.image_size, m.image_channels),
                                jnp.float32)

  def tokens_per_example(self) -> int:
    m = self.config.model
    return (m.image_size // m.patch_size) ** 2

  @property
  def ood_split(self) -> str:
    return f"ood_noise_{self.denoise.ood_noise_level:g}"

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return ("validation", self.ood_split)

  @property
  def split_levels(self) -> dict[str, float]:
    """Noise level of each split."""
    return {"validation": self.denoise.noise_level, self.ood_split: self.denoise.ood_noise_level}

  def split_items(self, splits: tuple[str, ...] | None = None) -> list:
    """[(index, (split, level))] of every split, or of those in `splits`; the index picks
    the split's key (`split_key`) whichever are evaluated."""
    return [(i, item) for i, item in enumerate(self.split_levels.items())
            if splits is None or item[0] in splits]

  @staticmethod
  def split_key(key: jax.Array, split_index: int) -> jax.Array:
    """The key a split's batch is evaluated with (validation: the batch's key itself)."""
    return key if split_index == 0 else jax.random.fold_in(key, OOD_KEY_SALT + split_index)

  def make_datasets(self):
    return continuous_data.make_datasets(self.config, continuous_data.IMAGE_SOURCES,
                                         self.eval_splits, self.describe())

  def evaluate(self, params, datasets, fn, put, *, num_batches: int) -> dict[str, dict]:
    """{split: metrics}, every metric the mean over `num_batches` validation batches, with
    PSNR from the mean pixel MSE (the PSNR of all the images as one batch)."""
    batches = datasets.eval_batches("validation", self.config.train.batch_size, num_batches)
    key = self.eval_key()
    results = base.mean_batches(base.per_batch(fn, params, map(put, batches), key))
    for r in results.values():
      r["psnr_noisy"] = psnr_of_mse(r["pixel_mse_noisy"])
      self.add_psnr(r)
    return results

  def add_psnr(self, r: dict) -> None:
    raise NotImplementedError


class ImageEBT(ImageTask):
  """The bidirectional image EBT that denoises by thinking on the image itself."""

  name = "image_ebt"

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    m = config.model
    self.dims = bi_ebt.ImageEBTDims(dit_stack_dims(config), image_size=m.image_size,
                                    patch_size=m.patch_size, channels=m.image_channels)
    self.thinking = ThinkingOptions.from_config(config.thinking)

  @classmethod
  def validate(cls, c):
    super().validate(c)
    validate_continuous_thinking(c, cls.describe())

  def param_specs(self) -> dict:
    return param_specs(self.dims, self.thinking)

  def loss(self, params, clean, key, *, train: bool, warmed_up=True):
    chex.assert_rank(clean, 4)
    return image_ebt_loss(params, clean, self.dims, self.thinking, self.denoise, key,
                          train=train, warmed_up=warmed_up)

  def flops(self, batch_size: int) -> float:
    """6x a forward per thinking step over the bidirectional (full-attention) stack."""
    m, t = self.config.model, self.thinking
    return flops.thinking_multiplier(t.num_steps, t.truncate) * flops.dit_forward(
        self.dims.stack, batch_size, image_size=m.image_size, patch_size=m.patch_size,
        channels=m.image_channels, out_per_token=1, per_sample_condition=False)

  @property
  def eval_steps(self) -> int:
    return continuous.eval_steps(self.config, self.thinking)

  def eval_batch(self, params, clean, key, *, num_steps: int | None = None,
                 images: bool = False, splits: tuple[str, ...] | None = None) -> dict:
    """{split: per-step pixel MSE and energy, the noisy input's MSE} of one batch, for
    every split or those in `splits`."""
    out = {}
    for i, (split, level) in self.split_items(splits):
      r = ebt_denoise_eval(params, clean, self.dims, self.thinking, self.denoise,
                           self.split_key(key, i), level=level,
                           num_steps=num_steps or self.eval_steps)
      out[split] = {"pixel_mse_steps": r["pixel_mse_steps"],
                    "pixel_mse_noisy": r["pixel_mse_noisy"], "energy_steps": r["energy_steps"]}
      if images:
        out[split].update(noisy=r["noisy"], denoised=r["denoised"])
    return out

  def add_psnr(self, r: dict) -> None:
    r["psnr_steps"] = np.array([psnr_of_mse(m) for m in r["pixel_mse_steps"]])
    r["psnr"] = float(r["psnr_steps"][-1])


class DiT(ImageTask):
  """The DiT baseline, denoising by DDIM."""

  name = "dit"

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    m = config.model
    self.dims = dit.DiTDims(dit_stack_dims(config), image_size=m.image_size,
                            patch_size=m.patch_size, channels=m.image_channels,
                            learn_sigma=m.learn_sigma)

  def param_specs(self) -> dict:
    return dit.param_specs(self.dims)

  def loss(self, params, clean, key, *, train: bool, warmed_up=True):
    chex.assert_rank(clean, 4)
    return dit_loss(params, clean, self.dims, self.denoise, key)

  def train_metrics(self, params) -> dict:
    return {}

  def flops(self, batch_size: int) -> float:
    """A forward and backward pass (3x the forward, the timestep MLP left out)."""
    m = self.config.model
    out = m.patch_size ** 2 * m.image_channels * (2 if m.learn_sigma else 1)
    return 3 * flops.dit_forward(self.dims.stack, batch_size, image_size=m.image_size,
                                 patch_size=m.patch_size, channels=m.image_channels,
                                 out_per_token=out, per_sample_condition=True)

  @property
  def ddim_counts(self) -> tuple[int, ...]:
    """The evaluated DDIM step counts (network evaluations), ascending; by default every
    timestep (at both noise levels)."""
    counts = tuple(self.config.inference.ddim_steps)
    return tuple(sorted(set(counts))) if counts else (ddim_step_limit(self.config),)

  def eval_batch(self, params, clean, key, *, counts: tuple[int, ...] | None = None,
                 images: bool = False, splits: tuple[str, ...] | None = None) -> dict:
    """{split: pixel MSE per DDIM step count, the noisy input's MSE} of one batch, for
    every split or those in `splits`."""
    inf, out = self.config.inference, {}
    for i, (split, level) in self.split_items(splits):
      # The noise `ebt_denoise_eval` draws from the same key.
      noise_key = jax.random.split(self.split_key(key, i))[0]
      noisy, _ = add_noise(clean, noise_key, self.denoise, level)
      mses, last = [], None
      for n in counts or self.ddim_counts:
        last = dit_denoise(params, noisy, self.dims, self.denoise, level, n,
                           inf.recurse_diffusion, inf.clip_denoised,
                           start=inf.increase_steps or None)
        mses.append(pixel_mse(last, clean))
      out[split] = {"pixel_mse": jnp.stack(mses), "pixel_mse_noisy": pixel_mse(noisy, clean)}
      if images:
        out[split].update(noisy=noisy, denoised=last)
    return out

  def add_psnr(self, r: dict) -> None:
    r["ddim_steps"] = list(self.ddim_counts)
    r["psnr_ddim"] = np.array([psnr_of_mse(m) for m in np.atleast_1d(r["pixel_mse"])])
    r["psnr"] = float(r["psnr_ddim"][-1])
