"""Text generation with an EBT: think about the next token only, against a KV cache.

The official code generates a token by re-encoding the whole sequence and re-optimising a
candidate at every position, then keeping the last one. Predictions are independent
given the context, so only the last position's candidate matters, and the real stream's
keys/values of the prefix never change: `generate` keeps them in a fixed-capacity buffer
per energy landscape (`ar_ebt.prefill_context` / `extend_context`) and thinks about one
[best_of, B, 1, V] candidate per new token, all inside one compiled `lax.scan`.
`generate_naive` is the official way, kept as the reference and the benchmark baseline.

Both give the same tokens for the same key: a position's initial candidates are drawn
from a key folded with its index, so the last position starts from the same point either
way, and sampling keys are folded with the token index. (Inference Langevin noise is
drawn per step over the whole candidate array, so with noise the two differ.)

Sampling reads the chosen candidate as logits, as the training loss does: greedy at
temperature 0, else softmax(logits / temperature) restricted to the top-p nucleus.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ebt_jax.errors import check
from ebt_jax.inference import system2
from ebt_jax.models import ar_ebt
from ebt_jax.tasks.text import TextEBT


@dataclasses.dataclass(frozen=True)
class Sampling:
  max_new_tokens: int
  temperature: float = 0.0     # 0: greedy
  top_p: float = 1.0

  def __post_init__(self):
    check(self.max_new_tokens >= 1, "--max-new-tokens", "a positive integer",
                     self.max_new_tokens)
    check(self.temperature >= 0, "--temperature", "a number >= 0", self.temperature)
    check(0 < self.top_p <= 1, "--top-p", "a number in (0, 1]", self.top_p)


class Generation(NamedTuple):
  tokens: jax.Array          # [B, P + max_new_tokens] prompt then generated tokens
  final_energy: jax.Array    # [B, max_new_tokens] energy of each token's chosen candidate
  energy_drop: jax.Array     # [B, max_new_tokens] its initial minus final energy
  steps_used: jax.Array      # [B, max_new_tokens] thinking steps it took


def sample(logits_BxV: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
  """Greedy (temperature 0) or nucleus sampling from logits; int32 [B]."""
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits = logits_BxV.astype(jnp.float32) / temperature
  if top_p < 1:
    probs_sorted = jnp.sort(jax.nn.softmax(logits, axis=-1), axis=-1)[..., ::-1]
    # The nucleus: the most probable tokens whose mass before them is still below top_p.
    mass_before = jnp.cumsum(probs_sorted, axis=-1) - probs_sorted
    kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(probs_sorted, kept - 1, axis=-1)
    logits = jnp.where(jax.nn.softmax(logits, axis=-1) >= threshold, logits, -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def position_candidates(key: jax.Array, best_of: int, batch: int, positions_S: jax.Array,
                        task: TextEBT) -> jax.Array:
  """Initial candidates [N, B, S, V], each position's drawn from `fold_in(key, position)`."""
  draw = lambda p: system2.initial_candidates(jax.random.fold_in(key, p),
                                              (best_of, batch, task.vocab_width), task)
  return jnp.moveaxis(jax.vmap(draw)(positions_S), 0, 2)


def _next_token(params, caches, pred_index_S, read, t, task, key, sampling: Sampling):
  """Thinks about the tokens after `pred_index_S` and samples the one at column `read`."""
  init_key, think_key, sample_key = jax.random.split(key, 3)
  batch = caches.k_LxBxCxNxH.shape[2]
  y0 = position_candidates(init_key, task.config.inference.best_of, batch, pred_index_S, task)
  thought = system2.think(params, caches, y0, task, jax.random.fold_in(think_key, t),
                          pred_index_S=pred_index_S, trajectory=False)
  token = sample(thought.logits[:, read], jax.random.fold_in(sample_key, t),
                 sampling.temperature, sampling.top_p)
  final = thought.final_energy[:, read]
  return token, (final, thought.initial_energy[:, read] - final, thought.steps_used[:, read])


@functools.partial(jax.jit, static_argnames=("task", "sampling"))
def generate(params: dict, prompt_BxP: jax.Array, task: TextEBT, key: jax.Array,
             sampling: Sampling) -> Generation:
  """KV-cached generation of `sampling.max_new_tokens` tokens after each prompt."""
  dims = task.dims
  B, P = prompt_BxP.shape
  capacity = dims.prefix + P + sampling.max_new_tokens
  landscapes = range(task.num_landscapes)
  caches = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[
      ar_ebt.prefill_context(params, prompt_BxP, l, capacity, dims) for l in landscapes])

  def body(caches, t):
    pred_index = P - 1 + t
    token, stats = _next_token(params, caches, pred_index[None], 0, t, task, key, sampling)
    caches = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[
        ar_ebt.extend_context(params, jax.tree_util.tree_map(lambda a: a[l], caches),
                              token[:, None], pred_index + 1, l, dims) for l in landscapes])
    return caches, (token, *stats)

  # The last generated token needs no cache entry, but one scan body keeps one program.
  _, (tokens_N, *stats) = jax.lax.scan(body, caches, jnp.arange(sampling.max_new_tokens))
  tokens = jnp.concatenate([prompt_BxP.astype(jnp.int32), tokens_N.T], axis=1)
  return Generation(tokens, *(s.T for s in stats))


def generate_naive(params: dict, prompt_BxP: jax.Array, task: TextEBT, key: jax.Array,
                   sampling: Sampling, bucket: int = 16) -> Generation:
  """The official way: per new token, re-encode the sequence and think at every position.

  Sequences are padded to a multiple of `bucket` so a few compiled shapes serve all
  lengths (padding after the last real token cannot change it: attention is causal).
  """
  tokens = jnp.asarray(prompt_BxP, jnp.int32)
  out = []
  for t in range(sampling.max_new_tokens):
    length = tokens.shape[1]
    padded = -(-length // bucket) * bucket
    seq = jnp.pad(tokens, ((0, 0), (0, padded - length)), constant_values=task.pad_id)
    token, stats = _naive_step(params, seq, jnp.int32(length - 1), jnp.int32(t), key,
                               task=task, sampling=sampling)
    out.append(stats)
    tokens = jnp.concatenate([tokens, token[:, None]], axis=1)
  return Generation(tokens, *(jnp.stack(s, axis=1) for s in zip(*out)))


@functools.partial(jax.jit, static_argnames=("task", "sampling"))
def _naive_step(params, seq_BxS, last, t, key, *, task, sampling):
  caches = task.encode_landscapes(params, seq_BxS)
  # Every position is thought about; the ones after `last` are padding and are not read.
  return _next_token(params, caches, jnp.arange(seq_BxS.shape[1]), last, t, task, key,
                     sampling)
