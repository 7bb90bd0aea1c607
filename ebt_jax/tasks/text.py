"""Text tasks: the EBT (`ebt`) and its Transformer++ baseline (`transformer`).

The EBT's candidate parametrisation, the S1/S2 objective and its metrics; the baseline's CE.

A text candidate is a [B, S, V] array of logits. With `normalize_initial_condition` (the
official default) every step softmaxes it, embeds the probabilities p with W_v2e, takes
the gradient of the summed energy with respect to **p** and sets the next candidate to
p - alpha * grad (used as logits at the next step and in the loss). `grad_wrt="logits"`
is the paper's listing instead: the softmax is inside the energy and the step moves the
logits. The S1 loss is the mean over thinking steps of the cross-entropy of each step's
candidate against the next tokens, ignoring the tokenizer's pad id (bytes: 0).

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

Three official options the paper's runs left off, as its `forward` and
`forward_loss_wrapper` define them:
* `soften_target` v: the loss of step k of the K steps taken is the cross-entropy against
  targets label-smoothed by eps_k = (K-1-k)/(K-1) * v (torch's `label_smoothing`: (1 - eps)
  NLL + eps * mean over the vocabulary of -log p), so early steps aim at softer targets.
  The `ce_steps` metrics stay the plain cross-entropy (the final step's eps is 0);
* `sharpen` s: after each step (and the absolute clamp) the candidate is divided by s, in
  training and validation; the official advanced inference does not, nor does system2;
* `normalize_first_step_only`: the candidate is softmaxed only at official step index 0
  (`mcmc_step == 0`: every repeat of the first landscape's step, or the first step of a
  `default` EBT); later steps embed p - alpha * grad as it is.
Validation keeps the official code's remaining randomness: random initial candidates and
Langevin noise.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ebt_jax import config as config_lib
from ebt_jax.data import pipeline
from ebt_jax.data.tokenizers import make_tokenizer
from ebt_jax.errors import check
from ebt_jax.models import ar_ebt, blocks, layers, transformer
from ebt_jax.models.ar_ebt import EBT_TYPES
from ebt_jax.models.attention import Attention
from ebt_jax.models.layers import CANDIDATE
from ebt_jax.parallel.logical import constrain
from ebt_jax.tasks import base, flops, options, replay
from ebt_jax.tasks.options import Outcome, ThinkingOptions
from ebt_jax.thinking import loop

REPLAY_KEY_SALT = 3


def log_probs(logits_BxSxV: jax.Array) -> jax.Array:
  return jax.nn.log_softmax(logits_BxSxV.astype(jnp.promote_types(logits_BxSxV.dtype,
                                                                   jnp.float32)))


def token_nll(logits_BxSxV: jax.Array, targets_BxS: jax.Array) -> jax.Array:
  logp = log_probs(logits_BxSxV)
  # Leading axes of the logits beyond the targets' (best-of-N candidates) broadcast.
  targets = jnp.broadcast_to(targets_BxS[..., None], logp.shape[:-1] + (1,))
  return -jnp.take_along_axis(logp, targets, axis=-1)[..., 0]


def uniform_nll(logits_BxSxV: jax.Array, vocab: int) -> jax.Array:
  """-mean over the `vocab` real tokens of log p: the cross-entropy against a uniform
  target (the padding, at -inf, left out)."""
  return -jnp.sum(layers.mask_vocab(log_probs(logits_BxSxV), vocab, 0), axis=-1) / vocab


def masked_mean(x_BxS: jax.Array, mask_BxS: jax.Array) -> jax.Array:
  return jnp.sum(x_BxS * mask_BxS) / jnp.maximum(jnp.sum(mask_BxS), 1)


def stack_dims(c: ml_collections.ConfigDict, adaln: bool = False) -> blocks.StackDims:
  m = c.model
  ffn_hidden = m.dim if m.ffn_dim_multiplier is None else int(m.dim * m.ffn_dim_multiplier)
  return blocks.StackDims(dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads,
                          ffn_hidden=ffn_hidden, norm_eps=m.norm_eps, rope_theta=m.rope_theta,
                          adaln=adaln, dtype=config_lib.DTYPES[m.dtype],
                          scan_layers=m.scan_layers, remat=m.remat,
                          attention=Attention(m.attention, m.attention_block))


def text_ebt_dims(c: ml_collections.ConfigDict) -> ar_ebt.TextEBTDims:
  m = c.model
  return ar_ebt.TextEBTDims(
      stack=stack_dims(c, adaln=m.ebt_type in ("adaln", "adaln_zero")),
      vocab_size=m.vocab_size, ebt_type=m.ebt_type, num_landscapes=c.thinking.num_steps,
      tied_v2e=m.tied_v2e, weight_init=m.weight_init, weight_init_gain=m.weight_init_gain,
      vocab_multiple=m.vocab_multiple, wide_candidate_embedding=m.wide_candidate_embedding)


def validate_rope_stack(config: ml_collections.ConfigDict) -> None:
  """Checks of the RoPE block stack the text and latent models share."""
  m = config.model
  check(m.ebt_type in EBT_TYPES, "model.ebt_type", f"one of {EBT_TYPES}", m.ebt_type)
  check((m.dim // m.n_heads) % 2 == 0, "model.n_heads",
        f"a count giving an even head size for RoPE (model.dim={m.dim})", m.n_heads)


class TextTask(base.Task):
  """What the two text kinds share: token batches [B, S+1] and the text datasets."""

  @classmethod
  def validate(cls, config):
    super().validate(config)
    validate_rope_stack(config)

  def batch_spec(self, batch_size: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch_size, self.config.model.context_length + 1), jnp.int32)

  def tokens_per_example(self) -> int:
    return self.config.model.context_length

  def make_datasets(self):
    return pipeline.make_datasets(self.config)

  @functools.cached_property
  def pad_id(self) -> int:
    """The target id the loss ignores: the tokenizer's (data/tokenizers.py; bytes: 0)."""
    return make_tokenizer(self.config.data).pad_id

  def target_mask(self, targets_BxS: jax.Array) -> jax.Array:
    """1.0 where a target counts in the loss, 0.0 at the pad id."""
    return (targets_BxS != self.pad_id).astype(jnp.float32)

  def evaluate(self, params, datasets, fn, put, *, num_batches: int) -> dict[str, dict]:
    """{split: {"ce_steps": [K] mean cross-entropy after each step, "perplexity": final,
    "energy_steps" (EBTs)}} for validation and every OOD suite."""
    key, results = self.eval_key(), {}
    for split in datasets.eval_splits:
      batches = datasets.eval_batches(split, self.config.train.batch_size, num_batches)
      r = base.mean_batches(base.per_batch(fn, params, map(put, batches), key))
      results[split] = {**r, "perplexity": perplexity(r["ce_steps"][-1])}
    return results


def perplexity(ce) -> float:
  """exp(ce), inf past float range (an untrained EBT's cross-entropy can exceed 700)."""
  ce = float(ce)
  return float("inf") if ce > 709 else float(np.exp(ce))


class TextEBT(TextTask):
  """The autoregressive text EBT (every official variant, S1 and S2 recipes)."""

  name = "ebt"
  thinks_over_tokens = True

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.dims = text_ebt_dims(config)
    self.thinking = ThinkingOptions.from_config(config.thinking)
    self.vocab_size = config.model.vocab_size
    self.vocab_width = self.dims.vocab_width      # the candidates' last axis, padding included
    # Candidates stay in float32 (or wider) whatever the activation dtype.
    self.candidate_dtype = jnp.promote_types(self.dims.stack.dtype, jnp.float32)

  @classmethod
  def validate(cls, config):
    super().validate(config)
    t = config.thinking
    check(t.initial_condition in ("random_noise", "zeros"), "thinking.initial_condition",
          "'random_noise' or 'zeros'", t.initial_condition)
    check(not t.contrastive_loss or t.contrastive_true_logit != 0
          or t.normalize_initial_condition, "thinking.contrastive_true_logit",
          "a non-zero value when normalize_initial_condition is off (as the official code)",
          t.contrastive_true_logit)
    check(not t.normalize_first_step_only or t.grad_wrt == "probs",
          "thinking.normalize_first_step_only",
          "False with grad_wrt='logits' (the official option steps on probabilities)",
          t.normalize_first_step_only)
    if t.replay_buffer:
      replay.validate(config)

  def param_specs(self) -> dict:
    return {**ar_ebt.param_specs(self.dims), **options.param_specs(self.thinking)}

  # --- the candidate and the thinking schedule --------------------------------------------
  def initial_candidate(self, key, shape) -> jax.Array:
    """The official initial condition: N(0, scale^2) logits, or zeros."""
    t = self.thinking
    if t.initial_condition == "zeros":
      return jnp.zeros(shape, self.candidate_dtype)
    return t.initial_noise_scale * jax.random.normal(key, shape, self.candidate_dtype)

  @property
  def num_landscapes(self) -> int:
    """Distinct energy landscapes (context encodings) a thinking run can visit."""
    return 1 if self.dims.ebt_type == "default" else self.thinking.num_steps

  def encode_landscapes(self, params, tokens_BxS) -> ar_ebt.ContextCache:
    """Context caches of every landscape, stacked on a leading axis."""
    caches = [ar_ebt.encode_context(params, tokens_BxS, landscape, self.dims)
              for landscape in range(self.num_landscapes)]
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *caches)

  def candidate_energy_fn(self, params, caches: ar_ebt.ContextCache, pred_index_S=None):
    """energy(z, landscape) -> [B, S] for the thinking loop, z as the loop steps on it.

    `pred_index_S` (default 0..S-1) is the token index each candidate predicts after.
    """

    def energy_fn(z_BxSxV, landscape):
      cache = jax.tree_util.tree_map(lambda a: a[landscape], caches)
      return ar_ebt.prediction_energy(params, cache, self.candidate_probs(z_BxSxV), landscape,
                                      self.dims, pred_index_S)

    return energy_fn

  def candidate_probs(self, z_BxSxV: jax.Array) -> jax.Array:
    """What the model embeds of the variable the loop steps on: z itself (the official
    gradient with respect to probabilities), or its softmax (`grad_wrt="logits"`)."""
    t = self.thinking
    if t.normalize_initial_condition and t.grad_wrt == "logits":
      return self.softmax(z_BxSxV)
    return z_BxSxV

  def candidate_reparam(self):
    t = self.thinking
    if t.normalize_initial_condition and t.grad_wrt == "probs":
      return self.softmax
    return None

  def logits(self, z_xV: jax.Array) -> jax.Array:
    """The candidate read as logits: -inf at the padded vocabulary (`model.vocab_multiple`),
    so no softmax, loss, argmax or sample sees it."""
    return layers.mask_vocab(z_xV, self.vocab_size, -jnp.inf)

  def softmax(self, z_xV: jax.Array) -> jax.Array:
    return jax.nn.softmax(self.logits(z_xV), axis=-1)

  def given_candidate(self, y_xV: jax.Array) -> jax.Array:
    """A caller's initial candidate in the candidates' dtype and width: one over the real
    vocabulary gets zeros in the padding (masked anyway)."""
    check(y_xV.shape[-1] in (self.vocab_size, self.vocab_width), "initial_logits",
          f"a last axis of model.vocab_size {self.vocab_size}"
          + (f" or its padded {self.vocab_width}" if self.vocab_width != self.vocab_size else ""),
          tuple(y_xV.shape))
    pad = [(0, 0)] * (y_xV.ndim - 1) + [(0, self.vocab_width - y_xV.shape[-1])]
    return jnp.pad(y_xV.astype(self.candidate_dtype), pad)

  def default_landscapes(self) -> jnp.ndarray:
    """Landscape of each training step: 0..K-1 for time_embed/adaln, all 0 for default."""
    K = self.thinking.num_steps
    return jnp.arange(K) if self.dims.ebt_type != "default" else jnp.zeros(K, jnp.int32)

  def official_steps(self, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """(the official step index `mcmc_step` of every thinking step [K], taken [K] or None):
    `options.step_schedule` over the official steps (training's random repeats with `key`)."""
    return options.step_schedule(self.thinking, jnp.arange(self.thinking.num_steps), key)

  def step_schedule(self, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """(landscape of every thinking step [K], taken [K] or None), as `official_steps`."""
    step_K, active_K = self.official_steps(key)
    return self.default_landscapes()[step_K], active_K

  def reparam_steps(self, step_K: jax.Array) -> jax.Array | None:
    """Which steps softmax the candidate (bool, as `step_K`), given their official step
    indices: step 0 only with `normalize_first_step_only`; None: every step."""
    if not self.thinking.normalize_first_step_only or self.candidate_reparam() is None:
      return None
    return step_K == 0

  def step_losses(self, outputs, active_K, mask_BxS) -> tuple[jax.Array, jax.Array]:
    """(loss of every step [K], its plain cross-entropy [K]) from the emitted (NLL,
    uniform NLL) per step: the cross-entropy, or with `soften_target` the label-smoothed
    one of the official `forward_loss_wrapper` (eps_k over the k-th of the steps taken)."""
    nll_K, uniform_K = outputs
    per_step = jax.vmap(masked_mean, in_axes=(0, None))
    ce_K = per_step(nll_K, mask_BxS)
    v = self.thinking.soften_target
    if v == 0:
      return ce_K, ce_K
    taken_K = jnp.ones(ce_K.shape) if active_K is None else active_K.astype(ce_K.dtype)
    index_K, taken = jnp.cumsum(taken_K) - 1, jnp.sum(taken_K)
    eps_K = jnp.where(taken > 1, (taken - 1 - index_K) / jnp.maximum(taken - 1, 1) * v, 0.0)
    return (1 - eps_K) * ce_K + eps_K * per_step(uniform_K, mask_BxS), ce_K

  def contrastive_loss(self, params, caches: ar_ebt.ContextCache, targets_BxS: jax.Array,
                       fake_energy_BxS: jax.Array, mask_BxS: jax.Array) -> jax.Array:
    """The official `calculate_contrastive_loss`: per position the cross-entropy of the
    energy pair (-E_true, -E_fake) with target "true", i.e. softplus(E_true - E_fake),
    averaged over `mask_BxS`. E_true is the energy of the true token (one-hot, or logits of
    +-v softmaxed with `normalize_initial_condition`) on the final landscape; E_fake the
    energy the final step started from. Neither is detached."""
    t = self.thinking
    one_hot = jax.nn.one_hot(targets_BxS, self.vocab_width, dtype=self.candidate_dtype)
    if t.contrastive_true_logit == 0:
      true_probs = one_hot
    else:
      true_logits = (2 * one_hot - 1) * t.contrastive_true_logit
      true_probs = self.softmax(true_logits) if t.normalize_initial_condition else true_logits
    landscape = self.default_landscapes()[-1]
    cache = jax.tree_util.tree_map(lambda a: a[landscape], caches)
    true_energy = ar_ebt.prediction_energy(params, cache, true_probs, landscape, self.dims)
    return masked_mean(jax.nn.softplus(true_energy - fake_energy_BxS), mask_BxS)

  def _step_remat(self):
    if self.thinking.remat == "none":
      return None
    # A step's third argument (`second_order`) is a Python bool choosing its code path.
    return lambda step: blocks.remat(step, self.thinking.remat, static_argnums=(2,))

  # --- the objective ----------------------------------------------------------------------
  def objective(self, params: dict, tokens: jax.Array, *, key: jax.Array | None = None,
                initial_logits: jax.Array | None = None, row_mask: jax.Array | None = None,
                randomize: bool = False, warmed_up=True) -> Outcome:
    """The text EBT's objective on `tokens` [B, S+1], with the final candidates.

    Inputs are tokens[:, :-1], targets tokens[:, 1:]. `initial_logits` [B, S, V] (V the
    vocabulary or its padded width) replaces the random initial candidate; `row_mask` [B] (1/0) leaves rows out of the loss and
    metrics (replay rows not yet filled). `randomize` draws the S2 random step sizes and
    counts (training; the official no_randomness=False). `warmed_up` (a bool, may be
    traced) says whether the outer optimizer's warmup has finished. `key` drives every
    random draw; it may be omitted only when nothing is random.
    """
    chex.assert_rank(tokens, 2)
    inputs_BxS, targets_BxS = tokens[:, :-1], tokens[:, 1:]
    B, S = inputs_BxS.shape
    t = self.thinking
    opt = options.inner_optimizer(t)
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
      y0 = self.initial_candidate(init_key, (B, S, self.vocab_width))
    else:
      y0 = self.given_candidate(initial_logits)
    y0 = constrain(y0, CANDIDATE)

    step_K, active_K = self.official_steps(steps_key if randomize else None)
    landscape_K = self.default_landscapes()[step_K]
    alpha = options.step_size(params, t)
    if randomize and t.step_size_random_scale != 1:
      alpha = options.random_step_size(alpha, alpha_key, (B, S, 1), t, self.candidate_dtype)
    caches = self.encode_landscapes(params, inputs_BxS)
    traj = loop.think(self.candidate_energy_fn(params, caches), y0, opt,
                      loop.Schedule(landscape_K, alpha, active_K), think_key,
                      reparam=self.candidate_reparam(),
                      emit=lambda y: (token_nll(self.logits(y), targets_BxS),
                                      uniform_nll(self.logits(y), self.vocab_size)
                                      if t.soften_target else None),
                      detach=t.detach, truncate=t.truncate,
                      pre_noise_std=options.langevin_std(
                          params, t, trainable=t.langevin_noise_learnable and warmed_up),
                      unroll=t.unroll, remat=self._step_remat(),
                      grad_clip=options.grad_clip_bound(params, t, warmed_up),
                      value_clip=t.absolute_clamp_value, divide_by=t.sharpen or None,
                      reparam_K=self.reparam_steps(step_K))
    row_B = jnp.ones(B, jnp.float32) if row_mask is None else row_mask.astype(jnp.float32)
    mask_BxS = self.target_mask(targets_BxS) * row_B[:, None]
    loss_K, ce_K = self.step_losses(traj.outputs, active_K, mask_BxS)
    taken_K = jnp.ones(ce_K.shape) if active_K is None else active_K.astype(ce_K.dtype)
    reconstruction = loss_K[-1] if t.truncate else options.taken_mean(loss_K, active_K)
    loss = t.reconstruction_coeff * reconstruction
    metrics = {}
    if t.contrastive_loss:
      contrastive = self.contrastive_loss(params, caches, targets_BxS, traj.energies[-1],
                                          mask_BxS)
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

  def loss(self, params, tokens, key, *, train: bool, warmed_up=True):
    """(loss, metrics): S1, or S2 with its randomness when `train`."""
    out = self.objective(params, tokens, key=key, randomize=train, warmed_up=warmed_up)
    return out.loss, out.metrics

  # --- training state: the S2 replay buffer ------------------------------------------------
  def init_carry(self):
    return replay.init(self) if self.thinking.replay_buffer else None

  def carry_axes(self):
    return replay.LOGICAL_AXES if self.thinking.replay_buffer else None

  def training_loss(self, params, tokens, key, carry, warmed_up):
    if carry is None:
      return super().training_loss(params, tokens, key, carry, warmed_up)
    batch = replay.draw(carry, tokens, jax.random.fold_in(key, REPLAY_KEY_SALT), self)
    outcome = self.objective(params, batch.tokens, key=key, initial_logits=batch.initial_logits,
                             row_mask=batch.row_mask, randomize=True, warmed_up=warmed_up)
    metrics = dict(outcome.metrics, replayed_rows=jnp.sum(batch.row_mask) - tokens.shape[0])
    return outcome.loss, (metrics, replay.push(carry, tokens, outcome.final, self))

  def flops(self, batch_size: int) -> float:
    """The paper's count (tasks/flops.py), with S2's expected steps and replayed rows."""
    m, t = self.config.model, self.thinking
    if t.replay_buffer:
      groups, _, _, replayed = replay.shape(self)
      batch_size += groups * replayed
    return flops.ar_ebt_step(self.dims.stack, batch_size, m.context_length, self.dims.ebt_type,
                             per_token_out=2 * m.vocab_size * m.dim + 2 * m.dim,
                             per_token_in=0, steps=flops.expected_training_steps(t),
                             truncate=t.truncate, landscapes=self.num_landscapes)

  def eval_batch(self, params, tokens, key) -> dict:
    """{"ce_steps": [K], "energy_steps": [K]} after each thinking step."""
    _, metrics = self.loss(params, tokens, key, train=False)
    return {"ce_steps": metrics["ce_steps"], "energy_steps": metrics["energy_steps"]}


class Transformer(TextTask):
  """The Transformer++ baseline: next-token cross-entropy of a softmax head."""

  name = "transformer"

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    m = config.model
    self.dims = transformer.TransformerDims(stack=stack_dims(config), vocab_size=m.vocab_size,
                                            vocab_multiple=m.vocab_multiple,
                                            weight_init=m.weight_init,
                                            weight_init_gain=m.weight_init_gain)

  def param_specs(self) -> dict:
    return transformer.param_specs(self.dims)

  def loss(self, params, tokens, key=None, *, train: bool = False, warmed_up=True):
    """Next-token cross-entropy on `tokens` [B, S+1] (no randomness)."""
    chex.assert_rank(tokens, 2)
    inputs_BxS, targets_BxS = tokens[:, :-1], tokens[:, 1:]
    logits = transformer.logits(params, inputs_BxS, self.dims)
    ce = masked_mean(token_nll(logits, targets_BxS), self.target_mask(targets_BxS))
    return ce, {"loss": jax.lax.stop_gradient(ce), "perplexity": jnp.exp(jax.lax.stop_gradient(ce))}

  def flops(self, batch_size: int) -> float:
    m = self.config.model
    tokens = batch_size * m.context_length
    return 3 * (flops.stack_forward(self.dims.stack, tokens, (m.context_length + 1) / 2)
                + 2 * tokens * m.dim * m.vocab_size)

  def eval_batch(self, params, tokens, key) -> dict:
    """{"ce_steps": [1]}: the baseline's cross-entropy."""
    ce, _ = self.loss(params, tokens)
    return {"ce_steps": ce[None]}


# --- the library entry points (README "Library use") --------------------------------------

def text_ebt_loss(params: dict, tokens: jax.Array, config: ml_collections.ConfigDict, *,
                  key: jax.Array | None = None, initial_logits: jax.Array | None = None,
                  row_mask: jax.Array | None = None, randomize: bool = False, warmed_up=True):
  """(loss, metrics) of the text EBT's objective: S1, or S2 with its options."""
  outcome = TextEBT.from_config(config).objective(
      params, tokens, key=key, initial_logits=initial_logits, row_mask=row_mask,
      randomize=randomize, warmed_up=warmed_up)
  return outcome.loss, outcome.metrics


def transformer_loss(params: dict, tokens: jax.Array, config: ml_collections.ConfigDict):
  """Next-token cross-entropy of the Transformer++ baseline on `tokens` [B, S+1]."""
  return Transformer.from_config(config).loss(params, tokens)
