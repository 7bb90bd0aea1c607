"""Validation and out-of-distribution evaluation: cross-entropy after every thinking step.

Evaluation is deterministic: fixed batches per split and a fixed key for the initial
candidates (the official validation keeps random initial candidates; a fixed key makes
evaluations of different checkpoints comparable) and for Langevin noise, which the
official text model keeps in validation too. S2 runs evaluate without their training
randomness (no random step sizes or counts, no replay buffer): the official validation
takes the final landscape's step `random_steps + 1` times.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np


EVAL_KEY_SALT = 2


def perplexity(ce) -> float:
  """exp(ce), inf past float range (an untrained EBT's cross-entropy can exceed 700)."""
  ce = float(ce)
  return float("inf") if ce > 709 else float(np.exp(ce))


def evaluate(params, config: ml_collections.ConfigDict, datasets, fn, put, *,
             num_batches: int) -> dict[str, dict]:
  """{split: {"ce_steps": [K] mean cross-entropy after each step, "perplexity": final}}.

  `fn(params, batch, key)` is the (sharded) eval step, `put` makes a device array of a
  global batch of `train.batch_size` rows.
  """
  key = jax.random.fold_in(jax.random.key(config.seed), EVAL_KEY_SALT)
  results = {}
  for split in datasets.eval_splits:
    batches = datasets.eval_batches(split, config.train.batch_size, num_batches)
    per_batch = [jax.device_get(fn(params, put(b), jax.random.fold_in(key, i)))
                 for i, b in enumerate(batches)]
    ce = np.mean([m["ce_steps"] for m in per_batch], axis=0)
    results[split] = {"ce_steps": ce, "perplexity": perplexity(ce[-1])}
    if "energy_steps" in per_batch[0]:
      results[split]["energy_steps"] = np.mean([m["energy_steps"] for m in per_batch], axis=0)
  return results


def as_scalars(results: dict[str, dict]) -> dict[str, float]:
  """Flat metric names: eval/ce_step_k and eval/perplexity for validation, ood/<split>/..."""
  out = {}
  for split, r in results.items():
    prefix = "eval" if split == "validation" else f"ood/{split}"
    for k, ce in enumerate(r["ce_steps"], start=1):
      out[f"{prefix}/ce_step_{k}"] = float(ce)
    for k, e in enumerate(r.get("energy_steps", ()), start=1):
      out[f"{prefix}/energy_step_{k}"] = float(e)
    out[f"{prefix}/perplexity"] = r["perplexity"]
  return out
