"""Next-frame prediction in latent space with the autoregressive latent EBT (`latent_ebt`).

A batch is frame latents [B, S+1, L] (pre-encoded, from an encoder the user supplies, or
`data.images`' moving digits). Inputs are frames 0..S-1, targets frames 1..S; the
candidate for each position is a latent, initially N(0, 1) (`random_noise`, the
official default), zeros, or the current frame (`most_recent_embedding`). Thinking steps
on the candidate in latent space; the S1 loss is SmoothL1 (beta 1) to the true next
latents (`continuous.s1_objective`). Landscapes are 0..K-1 for `time_embed`/`adaln`
(one per step, as for text) and 0 for `default`.

One difference from the official code: Langevin noise (off by default) is added to the
candidate latent before the down projection, where the official code adds it to the
projected embedding.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import ml_collections

from ebt_jax.data import continuous as continuous_data
from ebt_jax.errors import check
from ebt_jax.models import latent_ebt
from ebt_jax.models.params import axes_tree
from ebt_jax.tasks import base, continuous, flops, image, options, text
from ebt_jax.tasks.continuous import Outcome, ThinkingOptions

INITIAL_CONDITIONS = ("random_noise", "zeros", "most_recent_embedding")


@dataclasses.dataclass(frozen=True)
class NextFrameOptions:
  initial_condition: str = "random_noise"   # [denoising_initial_condition]

  def __post_init__(self):
    if self.initial_condition not in INITIAL_CONDITIONS:
      raise ValueError(f"thinking.initial_condition: expected one of {INITIAL_CONDITIONS}, "
                       f"got {self.initial_condition!r}")


def param_specs(m: latent_ebt.LatentEBTDims, t: ThinkingOptions) -> dict:
  return {**latent_ebt.param_specs(m), **options.param_specs(t)}


def init_params(m: latent_ebt.LatentEBTDims, t: ThinkingOptions, key: jax.Array) -> dict:
  return base.init_from_specs(param_specs(m, t), key)


def param_axes(m: latent_ebt.LatentEBTDims, t: ThinkingOptions) -> dict:
  return axes_tree(param_specs(m, t))


def landscapes(m: latent_ebt.LatentEBTDims, t: ThinkingOptions) -> jax.Array:
  """Landscape of each thinking step: 0..K-1, or all 0 for `default`."""
  if m.ebt_type == "default":
    return jnp.zeros(t.num_steps, jnp.int32)
  if m.num_landscapes < t.num_steps:
    raise ValueError(f"model.num_landscapes {m.num_landscapes} < thinking.num_steps "
                     f"{t.num_steps} for ebt_type {m.ebt_type!r}")
  return jnp.arange(t.num_steps, dtype=jnp.int32)


def initial_candidate(inputs_BxSxL: jax.Array, key: jax.Array, opts: NextFrameOptions):
  if opts.initial_condition == "random_noise":
    return jax.random.normal(key, inputs_BxSxL.shape, inputs_BxSxL.dtype)
  if opts.initial_condition == "zeros":
    return jnp.zeros_like(inputs_BxSxL)
  return inputs_BxSxL


def energy_fn(params: dict, inputs_BxSxL: jax.Array, m: latent_ebt.LatentEBTDims,
              num_landscapes: int):
  """energy(z, landscape) -> [B, S], the context encoded once per landscape."""
  caches = [latent_ebt.encode_context(params, inputs_BxSxL, l, m) for l in range(num_landscapes)]
  caches = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *caches)

  def fn(z_BxSxL, landscape):
    cache = jax.tree_util.tree_map(lambda a: a[landscape], caches)
    return latent_ebt.prediction_energy(params, cache, z_BxSxL, landscape, m)

  return fn


def next_frame_objective(params: dict, latents_BxTxL: jax.Array,
                         m: latent_ebt.LatentEBTDims, t: ThinkingOptions,
                         opts: NextFrameOptions, key: jax.Array,
                         initial: jax.Array | None = None, *, train: bool = False,
                         warmed_up=True) -> Outcome:
  """The objective on a latent sequence [B, S+1, L]: S1, or with `train` the S2 options'
  randomness (alpha randomized per sample and frame); `initial` replaces the initial
  candidate [B, S, L]."""
  inputs, targets = latents_BxTxL[:, :-1], latents_BxTxL[:, 1:]
  init_key, think_key = jax.random.split(key)
  y0 = initial_candidate(inputs, init_key, opts) if initial is None else initial
  y0 = jax.lax.stop_gradient(y0.astype(jnp.promote_types(inputs.dtype, jnp.float32)))
  landscape_K = landscapes(m, t)
  fn = energy_fn(params, inputs, m, 1 if m.ebt_type == "default" else t.num_steps)
  return continuous.s1_objective(params, fn, y0, targets, landscape_K, t, think_key,
                                 alpha_shape=(*inputs.shape[:2], 1), train=train,
                                 warmed_up=warmed_up)


def next_frame_loss(params, latents, m, t, opts, key, initial=None, *, train=False,
                    warmed_up=True):
  """(loss, metrics) of `next_frame_objective`."""
  out = next_frame_objective(params, latents, m, t, opts, key, initial, train=train,
                             warmed_up=warmed_up)
  return out.loss, out.metrics


def next_frame_eval(params: dict, latents_BxTxL: jax.Array, m: latent_ebt.LatentEBTDims,
                    t: ThinkingOptions, opts: NextFrameOptions, key: jax.Array, *,
                    num_steps: int | None = None) -> dict:
  """SmoothL1 / MSE to the true next latents [K'] and mean energy [K'] after each of
  `num_steps` thinking steps (default K; steps past the trained landscapes repeat the
  last one), with the same initial candidate draw as `next_frame_objective`."""
  inputs, targets = latents_BxTxL[:, :-1], latents_BxTxL[:, 1:]
  init_key, think_key = jax.random.split(key)
  y0 = initial_candidate(inputs, init_key, opts).astype(jnp.promote_types(inputs.dtype,
                                                                          jnp.float32))
  fn = energy_fn(params, inputs, m, 1 if m.ebt_type == "default" else t.num_steps)
  emit = lambda y: {"smooth_l1": continuous.smooth_l1(y, targets),
                    "mse": continuous.mse(y, targets)}
  traj = continuous.think(params, fn, y0, landscapes(m, t), t, think_key, emit,
                          num_steps=num_steps)
  energies = traj.energies.reshape(traj.energies.shape[0], -1)
  return {"smooth_l1_steps": traj.outputs["smooth_l1"], "mse_steps": traj.outputs["mse"],
          "energy_steps": jnp.mean(energies, axis=1), "final": traj.final}


class NextFrame(base.Task):
  """Next-frame prediction with the autoregressive latent EBT: batches of frame latents
  [B, S+1, L]."""

  name = "latent_ebt"

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    m = config.model
    self.dims = latent_ebt.LatentEBTDims(
        text.stack_dims(config, adaln=m.ebt_type in ("adaln", "adaln_zero")),
        latent_dim=m.latent_dim, ebt_type=m.ebt_type, num_landscapes=config.thinking.num_steps,
        weight_init=m.weight_init, weight_init_gain=m.weight_init_gain)
    self.thinking = ThinkingOptions.from_config(config.thinking)
    self.next_frame = NextFrameOptions(initial_condition=config.thinking.initial_condition)

  @classmethod
  def validate(cls, c):
    super().validate(c)
    text.validate_rope_stack(c)
    check(isinstance(c.model.latent_dim, int) and c.model.latent_dim >= 1, "model.latent_dim",
          "a positive integer", c.model.latent_dim)
    check(c.thinking.initial_condition in INITIAL_CONDITIONS, "thinking.initial_condition",
          f"one of {INITIAL_CONDITIONS}", c.thinking.initial_condition)
    image.validate_continuous_thinking(c, cls.describe())

  def param_specs(self) -> dict:
    return param_specs(self.dims, self.thinking)

  def loss(self, params, latents, key, *, train: bool, warmed_up=True):
    chex.assert_rank(latents, 3)
    return next_frame_loss(params, latents, self.dims, self.thinking, self.next_frame, key,
                           train=train, warmed_up=warmed_up)

  def flops(self, batch_size: int) -> float:
    """The text EBT's count with the down projection (L -> D, when L != D) in place of the
    vocabulary maps, one frame per token."""
    m, t = self.config.model, self.thinking
    project = 2 * m.latent_dim * m.dim if m.latent_dim != m.dim else 0
    return flops.ar_ebt_step(self.dims.stack, batch_size, m.context_length, m.ebt_type,
                             per_token_in=project, per_token_out=2 * m.dim, steps=t.num_steps,
                             truncate=t.truncate,
                             landscapes=1 if m.ebt_type == "default" else t.num_steps)

  @property
  def eval_steps(self) -> int:
    return continuous.eval_steps(self.config, self.thinking)

  def eval_batch(self, params, latents, key, *, num_steps: int | None = None) -> dict:
    """{"validation": per-step SmoothL1, MSE and energy} of one batch of frame latents."""
    r = next_frame_eval(params, latents, self.dims, self.thinking, self.next_frame, key,
                        num_steps=num_steps or self.eval_steps)
    return {"validation": {k: r[k] for k in ("smooth_l1_steps", "mse_steps", "energy_steps")}}

  def evaluate(self, params, datasets, fn, put, *, num_batches: int) -> dict[str, dict]:
    """{"validation": smooth_l1_steps / mse_steps / energy_steps [N]}, means over batches."""
    batches = datasets.eval_batches("validation", self.config.train.batch_size, num_batches)
    key = self.eval_key()
    return base.mean_batches(base.per_batch(fn, params, map(put, batches), key))

  def batch_spec(self, batch_size: int) -> jax.ShapeDtypeStruct:
    m = self.config.model
    return jax.ShapeDtypeStruct((batch_size, m.context_length + 1, m.latent_dim), jnp.float32)

  def tokens_per_example(self) -> int:
    return self.config.model.context_length

  def make_datasets(self):
    return continuous_data.make_datasets(self.config, continuous_data.LATENT_SOURCES,
                                         ("validation",), self.describe())
