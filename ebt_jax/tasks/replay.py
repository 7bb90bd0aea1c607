"""The official MCMC replay buffer (`CausalReplayBuffer`) as an on-device ring buffer.

The official buffer is a Python list of (tokens [S+1], final candidate logits [S, V])
records, at most `mcmc_replay_buffer_size` of them, one buffer per GPU. Each training
batch of b rows gets min(n, filled) records drawn uniformly without replacement
(`random.sample`, n = int(b x mcmc_replay_buffer_sample_bs_percent)) *appended* after its
own rows; the appended rows start thinking from their stored logits instead of noise.
After the step the batch's own b rows and their final candidates are added, the oldest
records leaving first. Validation never touches the buffer.

Here the buffer is part of the `TrainState` (donated, sharded, checkpointed and restored
with it) and laid out like the batch that feeds it: `depth` K = ceil(C / b) lanes of one
batch each, [K, G*b, ...], with a pointer to the lane the next push writes and one fill
count (equal in every group, since every group receives b = B / G rows per step). Batch
row g*b + r belongs to group g and always lands in row g*b + r of a lane, so the rows of
a lane are split over the batch axes as the batch is. A step thinks over each group's b
fresh rows and n replayed ones in u = gcd(b, n) units of b/u fresh rows then n/u replayed
(`append`; the loss is a mean over rows, so the order is free): where a group's rows are
split over c devices and c divides u, each device holds whole units, its own share of the
fresh rows and of the replayed ones, and a push moves no row (with the replayed rows
after all fresh ones, they shifted the fresh rows across devices). A [G, C] ring of
slots, row r of group g at slot pointer + r, had every device gather the whole batch's
final logits at each push (docs/benchmarks.md). Of the
K*b records a group's lanes hold, the C newest are its buffer, as in the official FIFO: a
record whose lane is `age` pushes old and whose row is r within its group is the
(age*b+b-1-r)-th newest, and belongs to the buffer while that is below the fill count. So
with G equal to the data-parallel device count each device keeps its own buffer and rows,
and draws from it alone, as in the official code. Shapes are static, so the step compiles
once: the n replay rows are always present, and while fewer than n records are filled
(the first step: none) the rows past the filled count are masked out of the loss, as if
they were not there. Sampling draws a uniform random key per lane row and takes the n
largest among the group's filled records (a uniform subset in random order).

The text EBT's records are tokens [S+1] with logits [S, V] (`init`, `draw`); the latent
(video) EBT's are frame latents [S+1, L] with candidate latents [S, L] (the official video
model uses the same `CausalReplayBuffer`): it builds its buffer with `empty` and its
batches from `sample`, `append` and `row_mask`, whose pieces `draw` is made of. `push` and
`shape` serve both.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from ebt_jax.errors import check
from ebt_jax.models.layers import CANDIDATE
from ebt_jax.parallel.logical import constrain


class ReplayBuffer(NamedTuple):
  # (Field names are the text EBT's.)
  tokens: jax.Array    # [K, G*b, S+1, ...] sequences (inputs and targets): int32 tokens
  logits: jax.Array    # [K, G*b, S, ...] their final candidates: logits [S, V] for text
  pointer: jax.Array   # int32 []: the lane the next push writes
  fill: jax.Array      # int32 []: records each group holds, at most C


# A lane's rows are split as the batch's rows, its logits as the batch's candidates.
LOGICAL_AXES = ReplayBuffer(tokens=(None, "act_batch", None), logits=(None, *CANDIDATE),
                            pointer=(), fill=())


class ReplayBatch(NamedTuple):
  tokens: jax.Array          # [G*(b+n), S+1]: each group's b fresh and n replayed (`append`)
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


def depth(task) -> int:
  """K: the lanes (batches) holding a group's C newest records, ceil(C / b)."""
  _, C, b, _ = shape(task)
  return -(-C // b)


def empty(task, record: jax.ShapeDtypeStruct, candidate: jax.ShapeDtypeStruct) -> ReplayBuffer:
  """An empty buffer of `record`s (one batch row) and their `candidate`s."""
  G, _, b, _ = shape(task)
  K = depth(task)
  return ReplayBuffer(jnp.zeros((K, G * b, *record.shape), record.dtype),
                      jnp.zeros((K, G * b, *candidate.shape), candidate.dtype),
                      jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def init(task) -> ReplayBuffer:
  """The text EBT's empty buffer."""
  S, V = task.config.model.context_length, task.vocab_width
  return empty(task, jax.ShapeDtypeStruct((S + 1,), jnp.int32),
               jax.ShapeDtypeStruct((S, V), task.candidate_dtype))


def sample(buffer: ReplayBuffer, key: jax.Array, task):
  """(records [G, n, ...], candidates [G, n, ...], valid [n]): n records per group drawn
  uniformly without replacement from its filled ones (official `random.sample`); empty
  places are drawn only when fewer than n are filled, and are not valid."""
  G, _, b, n = shape(task)
  K = depth(task)
  age_K = (buffer.pointer - 1 - jnp.arange(K)) % K
  newest_KxB = age_K[:, None] * b + (b - 1 - jnp.arange(b))[None, :]
  filled_KB = (newest_KxB < buffer.fill).reshape(K * b)

  def pick(k):
    u = jax.random.uniform(k, (K * b,))
    return jax.lax.top_k(jnp.where(filled_KB, u, -1.0), n)[1]

  places_GxN = jax.vmap(pick)(jax.random.split(key, G))
  # Gathered group by group from [K, G, b, ...] views: the groups are a batch dimension
  # of the gather, so only the devices holding a group's rows exchange its draws (none
  # at all when each device holds one group, the official one buffer per GPU); a gather
  # from the flat rows would sum every group's draws over every device.
  take = jax.vmap(lambda lanes_KxBx, places_N: lanes_KxBx[places_N // b, places_N % b],
                  in_axes=(1, 0))
  group = lambda x: take(x.reshape(K, G, b, *x.shape[2:]), places_GxN)
  valid_N = (jnp.arange(n) < buffer.fill).astype(jnp.float32)
  return group(buffer.tokens), group(buffer.logits), valid_N


def _units(task) -> tuple[int, int, int, int]:
  """(G, units u = gcd(b, n) per group, fresh rows b/u and replayed rows n/u per unit)."""
  G, _, b, n = shape(task)
  u = math.gcd(b, n)
  return G, u, b // u, n // u


def append(fresh_Bx: jax.Array, replayed_GxNx: jax.Array, task) -> jax.Array:
  """[G*(b+n), ...]: each group's b fresh and n replayed rows, in u = gcd(b, n) units of
  b/u fresh rows followed by n/u replayed ones."""
  G, u, f, r = _units(task)
  rest = fresh_Bx.shape[1:]
  rows = jnp.concatenate([fresh_Bx.reshape(G, u, f, *rest),
                          replayed_GxNx.reshape(G, u, r, *rest)], 2)
  return rows.reshape(G * u * (f + r), *rest)


def split(rows_Bx: jax.Array, task) -> tuple[jax.Array, jax.Array]:
  """(fresh rows [G*b, ...], replayed rows [G, n, ...]) of `append`'s rows."""
  G, u, f, r = _units(task)
  rest = rows_Bx.shape[1:]
  units = rows_Bx.reshape(G, u, f + r, *rest)
  return (units[:, :, :f].reshape(G * u * f, *rest),
          units[:, :, f:].reshape(G, u * r, *rest))


def row_mask(valid_N: jax.Array, task) -> jax.Array:
  """[G*(b+n)]: 1 for fresh rows and valid replayed rows, 0 for the others."""
  G, _, b, n = shape(task)
  return append(jnp.ones((G * b,)), jnp.broadcast_to(valid_N, (G, n)), task)


def draw(buffer: ReplayBuffer, tokens_BxT: jax.Array, key: jax.Array, task) -> ReplayBatch:
  """The text batch with n replayed rows added to each group's b rows (`append`; official
  `get_batch`)."""
  G, _, b, n = shape(task)
  sample_key, noise_key = jax.random.split(key)
  records, candidates, valid_N = sample(buffer, sample_key, task)
  # Noise for the fresh rows only, split as they are, then the rows put in order as the
  # tokens are (writing the stored candidates into a [G, b+n] noise block instead made
  # every device gather a whole group's candidates).
  noise = task.initial_candidate(noise_key, (G * b, *buffer.logits.shape[2:]))
  initial = append(constrain(noise, CANDIDATE), candidates.astype(noise.dtype), task)
  return ReplayBatch(constrain(append(tokens_BxT, records, task), ("act_batch", None)),
                     constrain(initial, CANDIDATE), row_mask(valid_N, task))


def push(buffer: ReplayBuffer, tokens_BxT: jax.Array, final_logits: jax.Array,
         task) -> ReplayBuffer:
  """The buffer with the batch's fresh rows and their final candidates added, FIFO
  (official `update`). `final_logits` are the combined batch's [G*(b+n), S, V]."""
  _, C, b, _ = shape(task)
  logits = jax.lax.stop_gradient(split(final_logits, task)[0])
  write = lambda lanes, rows: jax.lax.dynamic_update_index_in_dim(
      lanes, rows.astype(lanes.dtype), buffer.pointer, 0)
  return ReplayBuffer(write(buffer.tokens, tokens_BxT), write(buffer.logits, logits),
                      (buffer.pointer + 1) % depth(task), jnp.minimum(buffer.fill + b, C))
