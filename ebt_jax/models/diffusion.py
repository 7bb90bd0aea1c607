"""Gaussian diffusion for the denoising task and the DiT baseline (official `model/diffusion`).

Pure functions over a `Diffusion` (its beta and cumulative-alpha tables, float64 numpy as
the official code keeps them; cast to the data's dtype at use):
* `linear(T)`: the official linear schedule extended to any T (betas from 1e-4 to 0.02,
  both scaled by 1000 / T), so T = diffusion_steps / noise_level stretches the schedule
  and its first diffusion_steps steps reach the fraction noise_level of the full process;
* `q_sample`: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps;
* `ddim_sample`: deterministic DDIM (eta 0) from x_t at `t_start` down to 0, over all
  t_start + 1 timesteps (the official `ddim_sample_loop(..., timestep_start=t)`) or over
  `num_steps` of them chosen by the official `space_timesteps` rule (`respace.py`): the
  respaced process keeps abar at the chosen timesteps and the model is told the original
  timestep index. Unlike the official rule, one step means t_start (not 0), so a one-step
  sample predicts x_0 from x_t at the level it was noised to. `clip_denoised` clips the
  x_0 prediction to [-1, 1] and re-derives epsilon from it (the official default);
* `training_losses`: the DiT's hybrid objective, epsilon MSE plus (with a learned
  variance, `LEARNED_RANGE`) the variational-bound term on a stop-gradient mean.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Diffusion(NamedTuple):
  betas: np.ndarray               # float64 [T]
  alphas_cumprod: np.ndarray      # float64 [T]

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])

  @property
  def alphas_cumprod_prev(self) -> np.ndarray:
    return np.append(1.0, self.alphas_cumprod[:-1])

  @property
  def posterior_variance(self) -> np.ndarray:
    return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

  @property
  def posterior_log_variance_clipped(self) -> np.ndarray:
    # The posterior variance is 0 at t = 0; the official table repeats the t = 1 value.
    var = self.posterior_variance
    if len(var) < 2:
      return np.log(np.maximum(var, 1e-20))
    return np.log(np.append(var[1], var[1:]))


def linear(num_timesteps: int) -> Diffusion:
  """The official `get_named_beta_schedule("linear", T)`."""
  if num_timesteps < 1:
    raise ValueError(f"diffusion: need at least one timestep, got {num_timesteps}")
  scale = 1000.0 / num_timesteps
  betas = np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
  if not np.all((betas > 0) & (betas <= 1)):
    raise ValueError(f"diffusion: {num_timesteps} timesteps give betas outside (0, 1]")
  return Diffusion(betas, np.cumprod(1.0 - betas))


def _at(table: np.ndarray, t_B: jax.Array, like: jax.Array) -> jax.Array:
  """table[t] per sample, shaped [B, 1, ..., 1] to broadcast against `like`."""
  values = jnp.asarray(table, like.dtype)[t_B]
  return values.reshape(values.shape + (1,) * (like.ndim - 1))


def q_sample(d: Diffusion, x0: jax.Array, t_B: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t ~ q(x_t | x_0) with the given standard-normal `noise`."""
  return (_at(np.sqrt(d.alphas_cumprod), t_B, x0) * x0
          + _at(np.sqrt(1.0 - d.alphas_cumprod), t_B, x0) * noise)


def predict_xstart(d: Diffusion, x_t, t_B, eps) -> jax.Array:
  return (_at(np.sqrt(1.0 / d.alphas_cumprod), t_B, x_t) * x_t
          - _at(np.sqrt(1.0 / d.alphas_cumprod - 1), t_B, x_t) * eps)


def posterior_mean(d: Diffusion, x0, x_t, t_B) -> jax.Array:
  """The mean of q(x_{t-1} | x_t, x_0)."""
  ab, ab_prev = d.alphas_cumprod, d.alphas_cumprod_prev
  coef1 = d.betas * np.sqrt(ab_prev) / (1.0 - ab)
  coef2 = (1.0 - ab_prev) * np.sqrt(1.0 - d.betas) / (1.0 - ab)
  return _at(coef1, t_B, x_t) * x0 + _at(coef2, t_B, x_t) * x_t


def spaced_timesteps(num_timesteps: int, count: int) -> np.ndarray:
  """`count` of the timesteps 0..num_timesteps-1, ascending, by the official
  `space_timesteps(num_timesteps, [count])` rule (evenly strided, Python rounding), except
  that one step keeps the last timestep rather than the first."""
  if not 1 <= count <= num_timesteps:
    raise ValueError(f"ddim: cannot take {count} steps from {num_timesteps} timesteps")
  if count == 1:
    return np.array([num_timesteps - 1])
  stride = (num_timesteps - 1) / (count - 1)
  return np.array(sorted({round(i * stride) for i in range(count)}))


def ddim_sample(eps_fn: Callable, x_t: jax.Array, d: Diffusion, t_start: int,
                num_steps: int | None = None, *, clip_denoised: bool = True, eta: float = 0.0,
                key: jax.Array | None = None) -> jax.Array:
  """DDIM from x_t (noised to timestep `t_start`, static) to x_0.

  `eps_fn(x, t_B) -> eps` is the model, called with original timestep indices. With
  eta = 0 (the official `use_deterministic_reverse`) the sampler is a deterministic map;
  eta > 0 adds the DDIM noise and needs `key`. One model call per step: `num_steps`
  (default t_start + 1, every timestep) is the number of network evaluations.
  """
  steps = spaced_timesteps(t_start + 1, t_start + 1 if num_steps is None else num_steps)
  ab = d.alphas_cumprod[steps]
  ab_prev = np.append(1.0, ab[:-1])
  if eta > 0 and key is None:
    raise ValueError("ddim_sample: eta > 0 needs a key")
  # Descending order; each scan step is (original t, abar, previous abar, spaced index).
  xs = tuple(jnp.asarray(a[::-1]) for a in (steps, ab, ab_prev, np.arange(len(steps))))
  key = jax.random.key(0) if key is None else key
  batch = x_t.shape[0]

  def step(x, inputs):
    t, abar, abar_prev, index = inputs
    abar, abar_prev = abar.astype(x.dtype), abar_prev.astype(x.dtype)
    eps = eps_fn(x, jnp.full((batch,), t, jnp.int32)).astype(x.dtype)
    x0 = jnp.sqrt(1 / abar) * x - jnp.sqrt(1 / abar - 1) * eps
    if clip_denoised:
      x0 = jnp.clip(x0, -1, 1)
      eps = (jnp.sqrt(1 / abar) * x - x0) / jnp.sqrt(1 / abar - 1)
    x_prev = x0 * jnp.sqrt(abar_prev)
    if eta > 0:
      sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar)) * jnp.sqrt(1 - abar / abar_prev)
      noise = jax.random.normal(jax.random.fold_in(key, index), x.shape, x.dtype)
      x_prev = x_prev + jnp.sqrt(1 - abar_prev - sigma ** 2) * eps
      return x_prev + jnp.where(index > 0, sigma, 0) * noise, None
    return x_prev + jnp.sqrt(1 - abar_prev) * eps, None

  return jax.lax.scan(step, x_t, xs)[0]


def normal_kl(mean1, logvar1, mean2, logvar2):
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _approx_standard_normal_cdf(x):
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """Log-likelihood (nats) of images in [-1, 1] quantised to 256 levels."""
  centered = x - means
  inv_std = jnp.exp(-log_scales)
  cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def training_losses(model_fn: Callable, d: Diffusion, x0: jax.Array, t_B: jax.Array,
                    noise: jax.Array, *, learn_sigma: bool) -> dict:
  """Per-sample [B] terms of the official `training_losses` (loss type MSE, epsilon mean).

  `model_fn(x_t, t_B)` returns [..., C] epsilon or, with `learn_sigma`, [..., 2C] epsilon
  and variance values v in [-1, 1] (log variance = interpolation between the clipped
  posterior log variance and log beta_t). "vb" (bits per dim) trains only the variance:
  the mean it sees is built from a stop-gradient epsilon.
  """
  x_t = q_sample(d, x0, t_B, noise)
  out = model_fn(x_t, t_B).astype(x0.dtype)
  C = x0.shape[-1]
  eps = out[..., :C]
  terms = {"mse": _mean_flat(jnp.square(noise - eps))}
  if learn_sigma:
    v = out[..., C:]
    min_log = _at(d.posterior_log_variance_clipped, t_B, x0)
    max_log = _at(np.log(d.betas), t_B, x0)
    frac = (v + 1) / 2
    model_log_var = frac * max_log + (1 - frac) * min_log
    pred_x0 = predict_xstart(d, x_t, t_B, jax.lax.stop_gradient(eps))
    model_mean = posterior_mean(d, pred_x0, x_t, t_B)
    true_mean = posterior_mean(d, x0, x_t, t_B)
    kl = _mean_flat(normal_kl(true_mean, min_log, model_mean, model_log_var)) / math.log(2.0)
    nll = -_mean_flat(discretized_gaussian_log_likelihood(
        x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
    terms["vb"] = jnp.where(t_B == 0, nll, kl)
    terms["loss"] = terms["mse"] + terms["vb"]
  else:
    terms["loss"] = terms["mse"]
  return terms
