"""Next-frame prediction in latent space with the autoregressive latent EBT (`latent_ebt`).

A batch is frame latents [B, S+1, L] (pre-encoded, from an encoder the user supplies, or
`data.images`' moving digits). Inputs are frames 0..S-1, targets frames 1..S; the
candidate for each position is a latent, initially N(0, 1) (`random_noise`, the
official default), zeros, or the current frame (`most_recent_embedding`). Thinking steps
on the candidate in latent space; the S1 loss is SmoothL1 (beta 1) to the true next
latents (`continuous.s1_objective`). Landscapes are 0..K-1 for `time_embed`/`adaln`
(one per step, as for text) and 0 for `default`.

Langevin noise follows the official `EBT_VID.forward`: each step draws N(0, std^2) noise
of the model width, adds it to the *projected* candidate the energy is evaluated at, and
steps from the un-noised latent (the image and text models instead carry the noise in the
candidate).

S2's replay buffer (`thinking.replay_buffer`, the official job_scripts/vid/pretrain/
ebt_s2_vae.sh) is tasks/replay.py's, as for text: each group's fresh sequences are
followed by sequences drawn from its buffer, which start thinking from their stored final
candidate latents; the fresh rows and their final candidates are then added.

`next_frame_rollout` is the official `generate_video` (inference/vid/generate_video.py):
condition on the first C true frames (`inference.video_condition_frames`, the official
infer_video_condition_frames), predict frame C by thinking, append it, predict frame C+1
from those frames, and so on to the last frame; `ebt eval` reports it beside the
teacher-forced figures.
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
from ebt_jax.tasks import base, continuous, flops, image, options, replay, text
from ebt_jax.tasks.continuous import Outcome, ThinkingOptions

INITIAL_CONDITIONS = ("random_noise", "zeros", "most_recent_embedding")

# The replay buffer's records are frame latents [S+1, L], its candidates latents [S, L],
# their lanes' rows split as the batch's (replay.LOGICAL_AXES); the latent width stays whole.
REPLAY_AXES = replay.ReplayBuffer(tokens=(None, "act_batch", None, None),
                                  logits=(None, "act_batch", None, None), pointer=(), fill=())


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
  """energy(z, landscape[, key, noise_std]) -> [B, S], the context encoded once per
  landscape; with `noise_std`, N(0, noise_std^2) noise drawn from `key` is added to the
  projected candidate (the official Langevin noise)."""
  caches = [latent_ebt.encode_context(params, inputs_BxSxL, l, m) for l in range(num_landscapes)]
  caches = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *caches)

  def fn(z_BxSxL, landscape, key=None, noise_std=None):
    cache = jax.tree_util.tree_map(lambda a: a[landscape], caches)
    noise = None
    if noise_std is not None:
      shape = (*z_BxSxL.shape[:-1], m.stack.dim)
      noise = noise_std * jax.random.normal(key, shape, z_BxSxL.dtype)
    return latent_ebt.prediction_energy(params, cache, z_BxSxL, landscape, m, noise)

  return fn


def next_frame_objective(params: dict, latents_BxTxL: jax.Array,
                         m: latent_ebt.LatentEBTDims, t: ThinkingOptions,
                         opts: NextFrameOptions, key: jax.Array,
                         initial: jax.Array | None = None, *, train: bool = False,
                         warmed_up=True, row_mask: jax.Array | None = None) -> Outcome:
  """The objective on a latent sequence [B, S+1, L]: S1, or with `train` the S2 options'
  randomness (alpha randomized per sample and frame); `initial` replaces the initial
  candidate [B, S, L]; `row_mask` [B] (1/0) leaves rows out of the loss and metrics."""
  inputs, targets = latents_BxTxL[:, :-1], latents_BxTxL[:, 1:]
  init_key, think_key = jax.random.split(key)
  y0 = initial_candidate(inputs, init_key, opts) if initial is None else initial
  y0 = jax.lax.stop_gradient(y0.astype(jnp.promote_types(inputs.dtype, jnp.float32)))
  landscape_K = landscapes(m, t)
  fn = energy_fn(params, inputs, m, 1 if m.ebt_type == "default" else t.num_steps)
  return continuous.s1_objective(params, fn, y0, targets, landscape_K, t, think_key,
                                 alpha_shape=(*inputs.shape[:2], 1), train=train,
                                 warmed_up=warmed_up, row_mask=row_mask, noise_in_energy=True)


def next_frame_loss(params, latents, m, t, opts, key, initial=None, *, train=False,
                    warmed_up=True):
  """(loss, metrics) of `next_frame_objective`."""
  out = next_frame_objective(params, latents, m, t, opts, key, initial, train=train,
                             warmed_up=warmed_up)
  return out.loss, out.metrics


def _eval_think(params: dict, inputs_BxSxL: jax.Array, m: latent_ebt.LatentEBTDims,
                t: ThinkingOptions, opts: NextFrameOptions, key: jax.Array, emit,
                num_steps: int | None):
  """Evaluation's thinking on the inputs (no S2 randomness), with the same initial
  candidate draw as `next_frame_objective`."""
  init_key, think_key = jax.random.split(key)
  y0 = initial_candidate(inputs_BxSxL, init_key, opts).astype(
      jnp.promote_types(inputs_BxSxL.dtype, jnp.float32))
  fn = energy_fn(params, inputs_BxSxL, m, 1 if m.ebt_type == "default" else t.num_steps)
  return continuous.think(params, fn, y0, landscapes(m, t), t, think_key, emit,
                          num_steps=num_steps, noise_in_energy=True)


def next_frame_eval(params: dict, latents_BxTxL: jax.Array, m: latent_ebt.LatentEBTDims,
                    t: ThinkingOptions, opts: NextFrameOptions, key: jax.Array, *,
                    num_steps: int | None = None) -> dict:
  """SmoothL1 / MSE to the true next latents [K'] and mean energy [K'] after each of
  `num_steps` thinking steps (default K; steps past the trained landscapes repeat the
  last one), teacher-forced: every position reads the true frames before it."""
  targets = latents_BxTxL[:, 1:]
  emit = lambda y: {"smooth_l1": continuous.smooth_l1(y, targets),
                    "mse": continuous.mse(y, targets)}
  traj = _eval_think(params, latents_BxTxL[:, :-1], m, t, opts, key, emit, num_steps)
  energies = traj.energies.reshape(traj.energies.shape[0], -1)
  return {"smooth_l1_steps": traj.outputs["smooth_l1"], "mse_steps": traj.outputs["mse"],
          "energy_steps": jnp.mean(energies, axis=1), "final": traj.final}


def next_frame_rollout(params: dict, latents_BxTxL: jax.Array, m: latent_ebt.LatentEBTDims,
                       t: ThinkingOptions, opts: NextFrameOptions, key: jax.Array,
                       condition_frames: int, *, num_steps: int | None = None) -> dict:
  """The official `generate_video` on a sequence of S+1 frames: frames C..S predicted one
  at a time from the first C true frames and the predictions before them.

  Frame i is `next_frame_eval`'s thinking with key fold_in(key, i) on the frames so far
  (the rest zero, as the official buffer; a prediction reads only the frames before it),
  its prediction at position i-1 appended. Returns the generated frames [B, S+1-C, L],
  their SmoothL1 / MSE to the true frames (the official `smooth_l1_loss` / `mse_loss`)
  and those of the first generated frame (`temp_*_first_frame`), and the mean energy
  [K'] each thinking step started from, over the generated frames (`mcmc_step_k_energy`).
  """
  chex.assert_rank(latents_BxTxL, 3)
  C, T = condition_frames, latents_BxTxL.shape[1]
  if not 1 <= C < T:
    raise ValueError(f"condition_frames: expected 1..{T - 1} for sequences of {T} frames, "
                     f"got {C}")

  def frame(generated_BxTxL, index):
    traj = _eval_think(params, generated_BxTxL[:, :-1], m, t, opts,
                       jax.random.fold_in(key, index), None, num_steps)
    pred_BxL = jax.lax.dynamic_index_in_dim(traj.final, index - 1, axis=1, keepdims=False)
    energy_K = jnp.mean(jax.lax.dynamic_index_in_dim(traj.energies, index - 1, axis=2,
                                                     keepdims=False), axis=1)
    generated_BxTxL = jax.lax.dynamic_update_index_in_dim(
        generated_BxTxL, pred_BxL.astype(generated_BxTxL.dtype), index, axis=1)
    return generated_BxTxL, energy_K

  start = latents_BxTxL.at[:, C:].set(0)
  generated, energies_NxK = jax.lax.scan(frame, start, jnp.arange(C, T))
  frames, truth = generated[:, C:], latents_BxTxL[:, C:]
  return {"frames": frames,
          "smooth_l1": continuous.smooth_l1(frames, truth), "mse": continuous.mse(frames, truth),
          "smooth_l1_first_frame": continuous.smooth_l1(frames[:, 0], truth[:, 0]),
          "mse_first_frame": continuous.mse(frames[:, 0], truth[:, 0]),
          "energy_steps": jnp.mean(energies_NxK, axis=0)}


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
    image.validate_continuous_thinking(c, cls.describe(), replay_buffer=True)
    if c.thinking.replay_buffer:
      replay.validate(c)

  def param_specs(self) -> dict:
    return param_specs(self.dims, self.thinking)

  def loss(self, params, latents, key, *, train: bool, warmed_up=True):
    chex.assert_rank(latents, 3)
    return next_frame_loss(params, latents, self.dims, self.thinking, self.next_frame, key,
                           train=train, warmed_up=warmed_up)

  # --- training state: the S2 replay buffer (tasks/replay.py) -----------------------------
  def init_carry(self):
    if not self.thinking.replay_buffer:
      return None
    S, L = self.config.model.context_length, self.config.model.latent_dim
    return replay.empty(self, jax.ShapeDtypeStruct((S + 1, L), jnp.float32),
                        jax.ShapeDtypeStruct((S, L), jnp.float32))

  def carry_axes(self):
    return REPLAY_AXES if self.thinking.replay_buffer else None

  def training_loss(self, params, latents, key, carry, warmed_up):
    if carry is None:
      return super().training_loss(params, latents, key, carry, warmed_up)
    sample_key, init_key = jax.random.split(jax.random.fold_in(key, text.REPLAY_KEY_SALT))
    records, stored, valid_N = replay.sample(carry, sample_key, self)
    fresh = initial_candidate(latents[:, :-1], init_key, self.next_frame)
    row_mask = replay.row_mask(valid_N, self)
    outcome = next_frame_objective(
        params, replay.append(latents, records, self), self.dims, self.thinking,
        self.next_frame, key, replay.append(fresh, stored.astype(fresh.dtype), self),
        train=True, warmed_up=warmed_up, row_mask=row_mask)
    metrics = dict(outcome.metrics, replayed_rows=jnp.sum(row_mask) - latents.shape[0])
    return outcome.loss, (metrics, replay.push(carry, latents, outcome.final, self))

  def flops(self, batch_size: int) -> float:
    """The text EBT's count with the down projection (L -> D, when L != D) in place of the
    vocabulary maps, one frame per token."""
    m, t = self.config.model, self.thinking
    if t.replay_buffer:
      groups, _, _, replayed = replay.shape(self)
      batch_size += groups * replayed
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

  def rollout_batch(self, params, latents, key, *, num_steps: int | None = None) -> dict:
    """`next_frame_rollout`'s figures (not its frames) from `inference.video_condition_frames`
    frames, thinking `num_steps` steps per frame (default the evaluated count)."""
    C = self.config.inference.video_condition_frames
    T = self.config.model.context_length + 1
    check(isinstance(C, int) and 1 <= C < T, "inference.video_condition_frames",
          f"1..{T - 1} (sequences of model.context_length + 1 = {T} frames)", C)
    r = next_frame_rollout(params, latents, self.dims, self.thinking, self.next_frame, key, C,
                           num_steps=num_steps or self.eval_steps)
    return {k: v for k, v in r.items() if k != "frames"}

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
