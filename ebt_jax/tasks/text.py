"""Text: the candidate parametrisation, the S1 objective and its metrics; the baseline's CE.

A text candidate is a [B, S, V] array of logits. With `normalize_initial_condition` (the
official default) every step softmaxes it, embeds the probabilities p with W_v2e, takes
the gradient of the summed energy with respect to **p** and sets the next candidate to
p - alpha * grad (used as logits at the next step and in the loss). `grad_wrt="logits"`
is the paper's listing instead: the softmax is inside the energy and the step moves the
logits. The S1 loss is the mean over thinking steps of the cross-entropy of each step's
candidate against the next tokens, ignoring the pad id 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from ebt_jax import config as config_lib
from ebt_jax.models import ar_ebt, blocks, transformer
from ebt_jax.models.layers import CANDIDATE
from ebt_jax.models.params import Param, axes_tree, constant, init_tree
from ebt_jax.parallel.logical import constrain
from ebt_jax.thinking import loop, optimizers

PAD_ID = 0
MIN_STEP_SIZE = 1e-4       # the official clamp of alpha
MIN_LANGEVIN_STD = 1e-6    # the official clamp of the Langevin noise std


def param_specs(config: ml_collections.ConfigDict) -> dict:
  if config.model.kind == "transformer":
    return transformer.param_specs(config_lib.transformer_dims(config))
  specs = ar_ebt.param_specs(config_lib.text_ebt_dims(config))
  specs["alpha"] = Param((), (), constant(config.thinking.step_size))
  specs["langevin_std"] = Param((), (), constant(config.thinking.langevin_noise))
  return specs


def init_params(config: ml_collections.ConfigDict, key: jax.Array) -> dict:
  """Initial parameters (a plain nested dict of float32 arrays) for `config.model.kind`."""
  config_lib.validate(config)
  specs = param_specs(config)
  # One compiled program instead of a few hundred small eager dispatches.
  return jax.jit(lambda k: init_tree(specs, k))(key)


def param_axes(config: ml_collections.ConfigDict) -> dict:
  """Logical axis names of every parameter, shaped like `init_params`' output."""
  return axes_tree(param_specs(config))


def token_nll(logits_BxSxV: jax.Array, targets_BxS: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits_BxSxV.astype(jnp.promote_types(logits_BxSxV.dtype, jnp.float32)))
  return -jnp.take_along_axis(logp, targets_BxS[..., None], axis=-1)[..., 0]


def masked_mean(x_BxS: jax.Array, mask_BxS: jax.Array) -> jax.Array:
  return jnp.sum(x_BxS * mask_BxS) / jnp.maximum(jnp.sum(mask_BxS), 1)


def candidate_dtype(config: ml_collections.ConfigDict):
  """Candidates stay in float32 (or wider) whatever the activation dtype."""
  return jnp.promote_types(config_lib.DTYPES[config.model.dtype], jnp.float32)


def initial_candidate(key, shape, config: ml_collections.ConfigDict) -> jax.Array:
  """The official initial condition: N(0, scale^2) logits, or zeros."""
  dtype = candidate_dtype(config)
  if config.thinking.initial_condition == "zeros":
    return jnp.zeros(shape, dtype)
  return config.thinking.initial_noise_scale * jax.random.normal(key, shape, dtype)


def step_size(params: dict, config: ml_collections.ConfigDict) -> jax.Array:
  alpha = jnp.maximum(params["alpha"], MIN_STEP_SIZE)
  return alpha if config.thinking.step_size_learnable else jax.lax.stop_gradient(alpha)


def langevin_std(params: dict, config: ml_collections.ConfigDict):
  if config.thinking.langevin_noise == 0:
    return None
  return jnp.maximum(jax.lax.stop_gradient(params["langevin_std"]), MIN_LANGEVIN_STD)


def inner_optimizer(config: ml_collections.ConfigDict) -> optimizers.InnerOptimizer:
  t = config.thinking
  return optimizers.make(t.inner_optimizer, **dict(t.inner_optimizer_kwargs))


def num_landscapes(config: ml_collections.ConfigDict) -> int:
  """Distinct energy landscapes (context encodings) a thinking run can visit."""
  return 1 if config.model.ebt_type == "default" else config.thinking.num_steps


def encode_landscapes(params, tokens_BxS, config) -> ar_ebt.ContextCache:
  """Context caches of every landscape, stacked on a leading axis."""
  dims = config_lib.text_ebt_dims(config)
  caches = [ar_ebt.encode_context(params, tokens_BxS, landscape, dims)
            for landscape in range(num_landscapes(config))]
  return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *caches)


def candidate_energy_fn(params, caches: ar_ebt.ContextCache, config):
  """energy(z, landscape) -> [B, S] for the thinking loop, z as the loop steps on it."""
  dims = config_lib.text_ebt_dims(config)
  t = config.thinking
  softmax_inside = t.normalize_initial_condition and t.grad_wrt == "logits"

  def energy_fn(z_BxSxV, landscape):
    cache = jax.tree_util.tree_map(lambda a: a[landscape], caches)
    probs = jax.nn.softmax(z_BxSxV, axis=-1) if softmax_inside else z_BxSxV
    return ar_ebt.prediction_energy(params, cache, probs, landscape, dims)

  return energy_fn


def candidate_reparam(config):
  t = config.thinking
  if t.normalize_initial_condition and t.grad_wrt == "probs":
    return functools.partial(jax.nn.softmax, axis=-1)
  return None


def default_landscapes(config) -> jnp.ndarray:
  """Landscape of each training step: 0..K-1 for time_embed/adaln, all 0 for default."""
  K = config.thinking.num_steps
  return jnp.arange(K) if config.model.ebt_type != "default" else jnp.zeros(K, jnp.int32)


def _step_remat(policy: str):
  if policy == "none":
    return None
  # A step's third argument (`second_order`) is a Python bool choosing its code path.
  return lambda step: blocks.remat(step, policy, static_argnums=(2,))


def text_ebt_loss(params: dict, tokens: jax.Array, config: ml_collections.ConfigDict, *,
                  key: jax.Array | None = None, initial_logits: jax.Array | None = None):
  """S1 objective of the text EBT on `tokens` [B, S+1]; returns (loss, metrics).

  Inputs are tokens[:, :-1], targets tokens[:, 1:]. `initial_logits` [B, S, V] replaces
  the random initial candidate. `key` drives the initial noise and any stochastic step;
  it may be omitted only when nothing is random.
  """
  inputs_BxS, targets_BxS = tokens[:, :-1], tokens[:, 1:]
  B, S = inputs_BxS.shape
  t = config.thinking
  opt = inner_optimizer(config)
  needs_key = (initial_logits is None and t.initial_condition == "random_noise") or \
      t.langevin_noise > 0 or opt.stochastic
  if key is None:
    if needs_key:
      raise ValueError("text_ebt_loss: `key` is required (random initial candidate, "
                       "Langevin noise or a stochastic inner optimizer)")
    key = jax.random.key(0)  # never drawn from
  init_key, think_key = jax.random.split(key)
  if initial_logits is None:
    y0 = initial_candidate(init_key, (B, S, config.model.vocab_size), config)
  else:
    y0 = initial_logits.astype(candidate_dtype(config))
  y0 = constrain(y0, CANDIDATE)

  caches = encode_landscapes(params, inputs_BxS, config)
  schedule = loop.Schedule(default_landscapes(config), step_size(params, config))
  traj = loop.think(candidate_energy_fn(params, caches, config), y0, opt, schedule, think_key,
                    reparam=candidate_reparam(config),
                    emit=lambda y: token_nll(y, targets_BxS),
                    detach=t.detach, truncate=t.truncate,
                    pre_noise_std=langevin_std(params, config), unroll=t.unroll,
                    remat=_step_remat(t.remat))
  mask_BxS = (targets_BxS != PAD_ID).astype(jnp.float32)
  ce_K = jax.vmap(masked_mean, in_axes=(0, None))(traj.outputs, mask_BxS)
  loss = ce_K[-1] if t.truncate else jnp.mean(ce_K)
  ce_K = jax.lax.stop_gradient(ce_K)
  energies_K = jax.lax.stop_gradient(jnp.mean(traj.energies, axis=(1, 2)))
  metrics = {
      "loss": jax.lax.stop_gradient(loss),
      "initial_loss": ce_K[0],
      "final_step_loss": ce_K[-1],
      "perplexity": jnp.exp(ce_K[-1]),
      "initial_final_pred_energies_gap": energies_K[0] - energies_K[-1],
      "ce_steps": ce_K,
      "energy_steps": energies_K,
  }
  return loss, metrics


def transformer_loss(params: dict, tokens: jax.Array, config: ml_collections.ConfigDict):
  """Next-token cross-entropy of the Transformer++ baseline on `tokens` [B, S+1]."""
  inputs_BxS, targets_BxS = tokens[:, :-1], tokens[:, 1:]
  logits = transformer.logits(params, inputs_BxS, config_lib.transformer_dims(config))
  ce = masked_mean(token_nll(logits, targets_BxS), (targets_BxS != PAD_ID).astype(jnp.float32))
  return ce, {"loss": jax.lax.stop_gradient(ce), "perplexity": jnp.exp(jax.lax.stop_gradient(ce))}
