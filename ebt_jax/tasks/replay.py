"""The official MCMC replay buffer (`CausalReplayBuffer`) as an on-device ring buffer.

The official buffer is a Python list of (tokens [S+1], final candidate logits [S, V])
records, at most `mcmc_replay_buffer_size` of them, one buffer per GPU. Each training
batch of b rows gets min(n, filled) records drawn uniformly without replacement
(`random.sample`, n = int(b x mcmc_replay_buffer_sample_bs_percent)) *appended* after its
own rows; the appended rows start thinking from their stored logits instead of noise.
After the step the batch's own b rows and their final candidates are added, the oldest
records leaving first. Validation never touches the buffer.

Here the buffer is part of the `TrainState` (donated, sharded, checkpointed and restored
with it): fixed arrays of `groups` independent buffers [G, C, ...] with one write pointer
and one fill count (equal in every group, since every group receives b = B / G rows per
step). Group g is fed and sampled by batch rows g*b..(g+1)*b-1, and its replayed rows
follow those rows, so with G equal to the data-parallel device count each device keeps
its own buffer and rows as in the official code, and no buffer row ever crosses devices.
Shapes are static, so the step compiles once: the n replay rows are always present, and
while fewer than n records are filled (the first step: none) the rows past the filled
count are masked out of the loss, as if they were not there. Filled slots are always the
prefix [0, fill) of each group, and sampling draws a uniform random key per slot and
takes the n largest among the filled ones (a uniform subset in random order).

The text EBT's records are tokens [S+1] with logits [S, V] (`init`, `draw`); the latent
(video) EBT's are frame latents [S+1, L] with candidate latents [S, L] (the official video
model uses the same `CausalReplayBuffer`): it builds its buffer with `empty` and its
batches from `sample`, `append` and `row_mask`, whose pieces `draw` is made of. `push` and
`shape` serve both.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from ebt_jax.errors import check
from ebt_jax.models.layers import CANDIDATE
from ebt_jax.parallel.logical import constrain


class ReplayBuffer(NamedTuple):
  # (Field names are the text EBT's, kept so its checkpoints restore.)
  tokens: jax.Array    # [G, C, S+1, ...] sequences (inputs and targets): int32 tokens
  logits: jax.Array    # [G, C, S, ...] their final candidates: logits [S, V] for text
  pointer: jax.Array   # int32 []: the slot the next record goes to, in every group
  fill: jax.Array      # int32 []: filled slots [0, fill) of every group


# The batch mesh axes go to the groups, else the slots, else the candidates' positions
# (the rules in parallel/logical.py), so the buffer is split whenever one of them divides:
# S2's 4 groups x 192 slots leave a 256-way FSDP mesh to the 256 positions. A record's
# S+1 positions rarely divide, and its tokens are small.
LOGICAL_AXES = ReplayBuffer(tokens=("replay_groups", "replay_slots", None),
                            logits=("replay_groups", "replay_slots", "replay_seq", "act_vocab"),
                            pointer=(), fill=())


class ReplayBatch(NamedTuple):
  tokens: jax.Array          # [G*(b+n), S+1]: each group's b fresh rows, then its n replayed
  initial_logits: jax.Array  # [G*(b+n), S, V]: noise for fresh rows, stored logits for replayed
  row_mask: jax.Array        # [G*(b+n)]: 0 for replayed rows past the filled count


def validate(c: ml_collections.ConfigDict) -> None:
  """The replay buffer's config fields against the batch it is fed from."""
  t = c.thinking
  groups = t.replay_buffer_groups
  check(isinstance(groups, int) and groups >= 1 and c.train.batch_size % groups == 0,
        "thinking.replay_buffer_groups",
        f"a positive divisor of train.batch_size={c.train.batch_size}", groups)
  check(isinstance(t.replay_buffer_size, int) and t.replay_buffer_size >= 1,
        "thinking.replay_buffer_size", "a positive integer", t.replay_buffer_size)
  rows = c.train.batch_size // groups
  check(int(rows * t.replay_buffer_sample_fraction) >= 1, "thinking.replay_buffer_sample_fraction",
        f"a fraction giving at least one replayed row of the {rows} rows per buffer",
        t.replay_buffer_sample_fraction)


# `task` below is a task with a buffer: its frozen `thinking` options and its config's
# batch size; `init` and `draw` also use the text EBT's shapes and initial candidates.

def shape(task) -> tuple[int, int, int, int]:
  """(groups G, capacity C per group, fresh rows b per group, replayed rows n per group)."""
  t = task.thinking
  groups = t.replay_buffer_groups
  fresh = task.config.train.batch_size // groups
  # The official min(sample_size, len(buffer)) never exceeds the capacity.
  replayed = min(int(fresh * t.replay_buffer_sample_fraction), t.replay_buffer_size)
  return groups, t.replay_buffer_size, fresh, replayed


def empty(task, record: jax.ShapeDtypeStruct, candidate: jax.ShapeDtypeStruct) -> ReplayBuffer:
  """An empty buffer of `record`s (one batch row) and their `candidate`s."""
  G, C, _, _ = shape(task)
  return ReplayBuffer(jnp.zeros((G, C, *record.shape), record.dtype),
                      jnp.zeros((G, C, *candidate.shape), candidate.dtype),
                      jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def init(task) -> ReplayBuffer:
  """The text EBT's empty buffer."""
  S, V = task.config.model.context_length, task.vocab_size
  return empty(task, jax.ShapeDtypeStruct((S + 1,), jnp.int32),
               jax.ShapeDtypeStruct((S, V), task.candidate_dtype))


def sample(buffer: ReplayBuffer, key: jax.Array, task):
  """(records [G, n, ...], candidates [G, n, ...], valid [n]): n records per group drawn
  uniformly without replacement from its filled slots (official `random.sample`); slots
  past the filled count are drawn only when fewer than n are filled, and are not valid."""
  G, C, _, n = shape(task)

  def pick(k):
    u = jax.random.uniform(k, (C,))
    return jax.lax.top_k(jnp.where(jnp.arange(C) < buffer.fill, u, -1.0), n)[1]

  slots_GxN = jax.vmap(pick)(jax.random.split(key, G))
  take = jax.vmap(lambda rows, slots: rows[slots])
  valid_N = (jnp.arange(n) < buffer.fill).astype(jnp.float32)
  return take(buffer.tokens, slots_GxN), take(buffer.logits, slots_GxN), valid_N


def append(fresh_Bx: jax.Array, replayed_GxNx: jax.Array, task) -> jax.Array:
  """[G*(b+n), ...]: each group's b fresh rows followed by its n replayed rows."""
  G, _, b, n = shape(task)
  rows = jnp.concatenate([fresh_Bx.reshape(G, b, *fresh_Bx.shape[1:]), replayed_GxNx], 1)
  return rows.reshape(G * (b + n), *fresh_Bx.shape[1:])


def row_mask(valid_N: jax.Array, task) -> jax.Array:
  """[G*(b+n)]: 1 for fresh rows and valid replayed rows, 0 for the others."""
  G, _, b, n = shape(task)
  return append(jnp.ones((G * b,)), jnp.broadcast_to(valid_N, (G, n)), task)


def draw(buffer: ReplayBuffer, tokens_BxT: jax.Array, key: jax.Array, task) -> ReplayBatch:
  """The text batch with replayed rows appended to each group's rows (official
  `get_batch`)."""
  G, _, b, n = shape(task)
  sample_key, noise_key = jax.random.split(key)
  records, candidates, valid_N = sample(buffer, sample_key, task)
  rows = G * (b + n)
  S, V = buffer.logits.shape[2:]
  noise = task.initial_candidate(noise_key, (G, b + n, S, V))
  initial = noise.at[:, b:].set(candidates)
  return ReplayBatch(constrain(append(tokens_BxT, records, task), ("act_batch", None)),
                     constrain(initial.reshape(rows, S, V), CANDIDATE),
                     row_mask(valid_N, task))


def push(buffer: ReplayBuffer, tokens_BxT: jax.Array, final_logits: jax.Array,
         task) -> ReplayBuffer:
  """The buffer with the batch's fresh rows and their final candidates added, FIFO
  (official `update`). `final_logits` are the combined batch's [G*(b+n), S, V]."""
  G, C, b, n = shape(task)
  # Of more fresh rows than slots only the last C survive the official pop(0); writing
  # just those keeps the scatter free of duplicate indices.
  kept = min(b, C)
  slots = (buffer.pointer + (b - kept) + jnp.arange(kept)) % C
  tokens = tokens_BxT.reshape(G, b, *tokens_BxT.shape[1:])[:, b - kept:]
  logits = final_logits.reshape(G, b + n, *final_logits.shape[1:])[:, b - kept:b]
  logits = jax.lax.stop_gradient(logits).astype(buffer.logits.dtype)
  return ReplayBuffer(buffer.tokens.at[:, slots].set(tokens),
                      buffer.logits.at[:, slots].set(logits),
                      (buffer.pointer + b) % C, jnp.minimum(buffer.fill + b, C))
