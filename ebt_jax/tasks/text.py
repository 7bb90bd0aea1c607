"""Text: the candidate parametrisation, the S1/S2 objective and its metrics; the baseline's CE.

A text candidate is a [B, S, V] array of logits. With `normalize_initial_condition` (the
official default) every step softmaxes it, embeds the probabilities p with W_v2e, takes
the gradient of the summed energy with respect to **p** and sets the next candidate to
p - alpha * grad (used as logits at the next step and in the loss). `grad_wrt="logits"`
is the paper's listing instead: the softmax is inside the energy and the step moves the
logits. The S1 loss is the mean over thinking steps of the cross-entropy of each step's
candidate against the next tokens, ignoring the pad id 0.

The System 2 options follow the official `EBT_NLP.forward` (`randomize=True` is its
training mode, `no_randomness=False`):
* random step size: alpha x U[1/s, s] drawn per (sample, position), the same at every step;
* random step count: landscape l's step is repeated randint(min, R+2) times (only the
  final landscape's with `random_steps_final_landscape`), drawn once per batch. The scan
  has the static length of the most repeats; the unused repeats of a landscape come first
  and are skipped (`loop.Schedule.active_K`), so the last step is always taken (where
  truncation puts the second-order step) and the loss is the mean over the steps taken.
  Without randomness the official code repeats only the final landscape's step, R+1 times;
* `clamp_grad` bounds the energy gradient by max_change / alpha with the model's alpha,
  not the randomized one (as the official code), switching to the after-warmup max change
  once warmup is over; `absolute_clamp` bounds the candidate after each step;
* a learnable Langevin std receives gradients only after warmup (the official
  `warm_up_finished` turns on its requires_grad);
* the contrastive loss: softplus(E(true token) - E(final step's candidate)) per position,
  the official cross-entropy over the pair (-E_true, -E_fake) with target "true".
Validation keeps the official code's remaining randomness: random initial candidates and
Langevin noise.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ebt_jax import config as config_lib
from ebt_jax.models import ar_ebt, blocks, transformer
from ebt_jax.models.layers import CANDIDATE
from ebt_jax.models.params import Param, axes_tree, constant, init_tree
from ebt_jax.parallel.logical import constrain
from ebt_jax.tasks import kinds
from ebt_jax.thinking import loop, optimizers

PAD_ID = 0
MIN_STEP_SIZE = 1e-4       # the official clamp of alpha
MIN_LANGEVIN_STD = 1e-6    # the official clamp of the Langevin noise std


def param_specs(config: ml_collections.ConfigDict) -> dict:
  """The parameter table of `config.model.kind` (image and video kinds: tasks/kinds.py)."""
  if config.model.kind in config_lib.CONTINUOUS_KINDS:
    return kinds.param_specs(config)
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
  # Leading axes of the logits beyond the targets' (best-of-N candidates) broadcast.
  targets = jnp.broadcast_to(targets_BxS[..., None], logp.shape[:-1] + (1,))
  return -jnp.take_along_axis(logp, targets, axis=-1)[..., 0]


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


def langevin_std(params: dict, config: ml_collections.ConfigDict, trainable=False):
  """The Langevin std (None without noise); `trainable` (a bool, traced or not) lets the
  loss's gradient reach it."""
  if config.thinking.langevin_noise == 0:
    return None
  std = jnp.maximum(params["langevin_std"], MIN_LANGEVIN_STD)
  if trainable is False:
    return jax.lax.stop_gradient(std)
  return jnp.where(trainable, std, jax.lax.stop_gradient(std))


def random_step_size(alpha: jax.Array, key: jax.Array, shape, config) -> jax.Array:
  """alpha x U[1/s, s] per (sample, position), drawn as the official low + u * (high - low)."""
  scale = config.thinking.step_size_random_scale
  u = jax.random.uniform(key, shape, candidate_dtype(config))
  low, high = alpha / scale, alpha * scale
  return low + u * (high - low)


def grad_clip_bound(params: dict, config: ml_collections.ConfigDict, warmed_up=True):
  """The official clamp_futures_grad bound max_change / alpha, or None when off. Uses the
  model's alpha as is (not clamped, not randomized), as the official code does."""
  t = config.thinking
  if not t.clamp_grad:
    return None
  alpha = params["alpha"] if t.step_size_learnable else jax.lax.stop_gradient(params["alpha"])
  max_change = t.clamp_grad_max_change
  if t.clamp_grad_max_change_after_warmup != 0:
    max_change = jnp.where(warmed_up, t.clamp_grad_max_change_after_warmup, max_change)
  return max_change / alpha


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


def candidate_energy_fn(params, caches: ar_ebt.ContextCache, config, pred_index_S=None):
  """energy(z, landscape) -> [B, S] for the thinking loop, z as the loop steps on it.

  `pred_index_S` (default 0..S-1) is the token index each candidate predicts after.
  """
  dims = config_lib.text_ebt_dims(config)

  def energy_fn(z_BxSxV, landscape):
    cache = jax.tree_util.tree_map(lambda a: a[landscape], caches)
    return ar_ebt.prediction_energy(params, cache, candidate_probs(z_BxSxV, config), landscape,
                                    dims, pred_index_S)

  return energy_fn


def candidate_probs(z_BxSxV: jax.Array, config) -> jax.Array:
  """What the model embeds of the variable the loop steps on: z itself (the official
  gradient with respect to probabilities), or its softmax (`grad_wrt="logits"`)."""
  t = config.thinking
  if t.normalize_initial_condition and t.grad_wrt == "logits":
    return jax.nn.softmax(z_BxSxV, axis=-1)
  return z_BxSxV


def candidate_reparam(config):
  t = config.thinking
  if t.normalize_initial_condition and t.grad_wrt == "probs":
    return functools.partial(jax.nn.softmax, axis=-1)
  return None


def default_landscapes(config) -> jnp.ndarray:
  """Landscape of each training step: 0..K-1 for time_embed/adaln, all 0 for default."""
  K = config.thinking.num_steps
  return jnp.arange(K) if config.model.ebt_type != "default" else jnp.zeros(K, jnp.int32)


def step_schedule(config, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
  """(landscape of every thinking step [K], whether it is taken [K] or None for all).

  With `key`, the training schedule with random repeats (see the module docstring);
  without, the deterministic one the official validation runs (final landscape R+1 times).
  """
  t = config.thinking
  landscapes_L = default_landscapes(config)
  L, R = t.num_steps, t.random_steps
  if R == 0:
    return landscapes_L, None
  if key is None:
    return landscapes_L[np.array([*range(L - 1)] + [L - 1] * (R + 1))], None
  randomized = [L - 1] if t.random_steps_final_landscape else list(range(L))
  slots_L = np.array([R + 1 if l in randomized else 1 for l in range(L)])
  landscape_of_K = np.repeat(np.arange(L), slots_L)
  slot_K = np.concatenate([np.arange(n) for n in slots_L])
  repeats = jax.random.randint(key, (len(randomized),), max(1, t.random_steps_min), R + 2,
                               jnp.int32)
  repeats_L = jnp.ones(L, jnp.int32).at[np.array(randomized)].set(repeats)
  # The unused repeats of a landscape come first: skipped steps change nothing, so only
  # their order would differ, and the final step is always taken.
  active_K = slot_K >= slots_L[landscape_of_K] - repeats_L[landscape_of_K]
  return landscapes_L[landscape_of_K], active_K


def contrastive_loss(params, caches: ar_ebt.ContextCache, targets_BxS: jax.Array,
                     fake_energy_BxS: jax.Array, mask_BxS: jax.Array, config) -> jax.Array:
  """The official `calculate_contrastive_loss`: per position the cross-entropy of the energy
  pair (-E_true, -E_fake) with target "true", i.e. softplus(E_true - E_fake), averaged over
  `mask_BxS`. E_true is the energy of the true token (one-hot, or logits of +-v softmaxed
  with `normalize_initial_condition`) on the final landscape; E_fake the energy the final
  step started from. Neither is detached."""
  t = config.thinking
  one_hot = jax.nn.one_hot(targets_BxS, config.model.vocab_size, dtype=candidate_dtype(config))
  if t.contrastive_true_logit == 0:
    true_probs = one_hot
  else:
    true_logits = (2 * one_hot - 1) * t.contrastive_true_logit
    true_probs = jax.nn.softmax(true_logits, -1) if t.normalize_initial_condition else true_logits
  landscape = default_landscapes(config)[-1]
  cache = jax.tree_util.tree_map(lambda a: a[landscape], caches)
  true_energy = ar_ebt.prediction_energy(params, cache, true_probs, landscape,
                                         config_lib.text_ebt_dims(config))
  return masked_mean(jax.nn.softplus(true_energy - fake_energy_BxS), mask_BxS)


def _step_remat(policy: str):
  if policy == "none":
    return None
  # A step's third argument (`second_order`) is a Python bool choosing its code path.
  return lambda step: blocks.remat(step, policy, static_argnums=(2,))


class Outcome(NamedTuple):
  loss: jax.Array
  metrics: dict
  final: jax.Array        # [B, S, V] the candidate after the last step taken


def text_ebt_objective(params: dict, tokens: jax.Array, config: ml_collections.ConfigDict, *,
                       key: jax.Array | None = None, initial_logits: jax.Array | None = None,
                       row_mask: jax.Array | None = None, randomize: bool = False,
                       warmed_up=True) -> Outcome:
  """The text EBT's objective on `tokens` [B, S+1], with the final candidates.

  Inputs are tokens[:, :-1], targets tokens[:, 1:]. `initial_logits` [B, S, V] replaces
  the random initial candidate; `row_mask` [B] (1/0) leaves rows out of the loss and
  metrics (replay rows not yet filled). `randomize` draws the S2 random step sizes and
  counts (training; the official no_randomness=False). `warmed_up` (a bool, may be traced)
  says whether the outer optimizer's warmup has finished. `key` drives every random draw;
  it may be omitted only when nothing is random.
  """
  inputs_BxS, targets_BxS = tokens[:, :-1], tokens[:, 1:]
  B, S = inputs_BxS.shape
  t = config.thinking
  opt = inner_optimizer(config)
  randomize = randomize and (t.random_steps > 0 or t.step_size_random_scale != 1)
  needs_key = (initial_logits is None and t.initial_condition == "random_noise") or \
      t.langevin_noise > 0 or opt.stochastic or randomize
  if key is None:
    if needs_key:
      raise ValueError("text_ebt_loss: `key` is required (random initial candidate, "
                       "Langevin noise, random steps or a stochastic inner optimizer)")
    key = jax.random.key(0)  # never drawn from
  init_key, think_key = jax.random.split(key)
  steps_key, alpha_key = jax.random.split(jax.random.fold_in(key, 1))
  if initial_logits is None:
    y0 = initial_candidate(init_key, (B, S, config.model.vocab_size), config)
  else:
    y0 = initial_logits.astype(candidate_dtype(config))
  y0 = constrain(y0, CANDIDATE)

  landscape_K, active_K = step_schedule(config, steps_key if randomize else None)
  alpha = step_size(params, config)
  if randomize and t.step_size_random_scale != 1:
    alpha = random_step_size(alpha, alpha_key, (B, S, 1), config)
  caches = encode_landscapes(params, inputs_BxS, config)
  absolute_clamp = t.absolute_clamp if t.absolute_clamp != 0 else None
  traj = loop.think(candidate_energy_fn(params, caches, config), y0, opt,
                    loop.Schedule(landscape_K, alpha, active_K), think_key,
                    reparam=candidate_reparam(config),
                    emit=lambda y: token_nll(y, targets_BxS),
                    detach=t.detach, truncate=t.truncate,
                    pre_noise_std=langevin_std(params, config,
                                               trainable=t.langevin_noise_learnable and warmed_up),
                    unroll=t.unroll, remat=_step_remat(t.remat),
                    grad_clip=grad_clip_bound(params, config, warmed_up),
                    value_clip=absolute_clamp)
  row_B = jnp.ones(B, jnp.float32) if row_mask is None else row_mask.astype(jnp.float32)
  mask_BxS = (targets_BxS != PAD_ID).astype(jnp.float32) * row_B[:, None]
  ce_K = jax.vmap(masked_mean, in_axes=(0, None))(traj.outputs, mask_BxS)
  taken_K = jnp.ones(ce_K.shape) if active_K is None else active_K.astype(ce_K.dtype)
  reconstruction = ce_K[-1] if t.truncate else jnp.sum(taken_K * ce_K) / jnp.sum(taken_K)
  loss = t.reconstruction_coeff * reconstruction
  metrics = {}
  if t.contrastive_loss:
    contrastive = contrastive_loss(params, caches, targets_BxS, traj.energies[-1], mask_BxS,
                                   config)
    loss = loss + t.contrastive_loss_coeff * contrastive
    metrics["contrastive_loss"] = jax.lax.stop_gradient(contrastive)
  ce_K = jax.lax.stop_gradient(ce_K)
  # Energies averaged over every position of the rows in use (pads included, as official).
  energies_K = jax.lax.stop_gradient(
      jnp.sum(traj.energies * row_B[None, :, None], axis=(1, 2)) / (jnp.sum(row_B) * S))
  first = jnp.argmax(taken_K)
  metrics.update({
      "loss": jax.lax.stop_gradient(loss),
      "initial_loss": ce_K[first],
      "final_step_loss": ce_K[-1],
      "perplexity": jnp.exp(ce_K[-1]),
      "initial_final_pred_energies_gap": energies_K[first] - energies_K[-1],
      "ce_steps": ce_K,
      "energy_steps": energies_K,
  })
  if active_K is not None:
    metrics["thinking_steps"] = jnp.sum(taken_K)
  return Outcome(loss, metrics, traj.final)


def text_ebt_loss(params: dict, tokens: jax.Array, config: ml_collections.ConfigDict, *,
                  key: jax.Array | None = None, initial_logits: jax.Array | None = None,
                  row_mask: jax.Array | None = None, randomize: bool = False, warmed_up=True):
  """(loss, metrics) of `text_ebt_objective`: the S1 objective, or S2 with its options."""
  outcome = text_ebt_objective(params, tokens, config, key=key, initial_logits=initial_logits,
                               row_mask=row_mask, randomize=randomize, warmed_up=warmed_up)
  return outcome.loss, outcome.metrics


def transformer_loss(params: dict, tokens: jax.Array, config: ml_collections.ConfigDict):
  """Next-token cross-entropy of the Transformer++ baseline on `tokens` [B, S+1]."""
  inputs_BxS, targets_BxS = tokens[:, :-1], tokens[:, 1:]
  logits = transformer.logits(params, inputs_BxS, config_lib.transformer_dims(config))
  ce = masked_mean(token_nll(logits, targets_BxS), (targets_BxS != PAD_ID).astype(jnp.float32))
  return ce, {"loss": jax.lax.stop_gradient(ce), "perplexity": jnp.exp(jax.lax.stop_gradient(ce))}
