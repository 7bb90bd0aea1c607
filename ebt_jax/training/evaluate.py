"""Validation and out-of-distribution evaluation: cross-entropy after every thinking step.

Evaluation is deterministic: fixed batches per split and a fixed key for the initial
candidates (the official validation keeps random initial candidates; a fixed key makes
evaluations of different checkpoints comparable) and for Langevin noise, which the
official text model keeps in validation too. S2 runs evaluate without their training
randomness (no random step sizes or counts, no replay buffer): the official validation
takes the final landscape's step `random_steps + 1` times. The image and video kinds
report PSNR / SmoothL1 per thinking step (or per DDIM step count) instead
(`evaluate_continuous`), at the training and the out-of-distribution noise level.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from ebt_jax.tasks import kinds


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
  if config.model.kind in kinds.KINDS:
    return evaluate_continuous(params, config, datasets, fn, put, key, num_batches=num_batches)
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


def evaluate_continuous(params, config: ml_collections.ConfigDict, datasets, fn, put, key, *,
                        num_batches: int) -> dict[str, dict]:
  """{split: metrics} of an image or video kind (tasks/kinds.py), every metric the mean over
  `num_batches` validation batches; image kinds add PSNR from the mean pixel MSE (the PSNR
  of all the images as one batch):
  * image_ebt: psnr_steps / pixel_mse_steps / energy_steps [N], psnr_noisy, psnr (last step);
  * dit: ddim_steps, psnr / pixel_mse per DDIM step count, psnr_noisy;
  * latent_ebt: smooth_l1_steps / mse_steps / energy_steps [N].
  """
  batches = datasets.eval_batches("validation", config.train.batch_size, num_batches)
  per_batch = [jax.device_get(fn(params, put(b), jax.random.fold_in(key, i)))
               for i, b in enumerate(batches)]
  results = {split: {name: np.mean([m[split][name] for m in per_batch], axis=0)
                     for name in per_batch[0][split]}
             for split in kinds.eval_splits(config)}
  return with_psnr(results, config)


def with_psnr(results: dict[str, dict], config: ml_collections.ConfigDict) -> dict[str, dict]:
  """Adds PSNR (dB) to image results averaged as pixel MSEs (and the DiT's step counts)."""
  for r in results.values():
    if "pixel_mse_noisy" in r:
      r["psnr_noisy"] = kinds.psnr_of_mse(r["pixel_mse_noisy"])
    if "pixel_mse_steps" in r:
      r["psnr_steps"] = np.array([kinds.psnr_of_mse(m) for m in r["pixel_mse_steps"]])
      r["psnr"] = float(r["psnr_steps"][-1])
    elif "pixel_mse" in r:
      r["ddim_steps"] = list(kinds.ddim_counts(config))
      r["psnr_ddim"] = np.array([kinds.psnr_of_mse(m) for m in np.atleast_1d(r["pixel_mse"])])
      r["psnr"] = float(r["psnr_ddim"][-1])
  return results


_PER_STEP = ("psnr_steps", "pixel_mse_steps", "energy_steps", "smooth_l1_steps", "mse_steps")


def _continuous_scalars(r: dict, prefix: str) -> dict[str, float]:
  out = {}
  for name in _PER_STEP:
    for k, v in enumerate(r.get(name, ()), start=1):
      out[f"{prefix}/{name.removesuffix('_steps')}_step_{k}"] = float(v)
  for n, v in zip(r.get("ddim_steps", ()), r.get("psnr_ddim", ())):
    out[f"{prefix}/psnr_ddim_{n}"] = float(v)
  for name in ("psnr", "psnr_noisy"):
    if name in r:
      out[f"{prefix}/{name}"] = float(r[name])
  if "smooth_l1_steps" in r:
    out[f"{prefix}/loss"] = float(r["smooth_l1_steps"][-1])
  return out


def report_lines(results: dict[str, dict]) -> list[str]:
  """One line per split of an image or video evaluation (the trainer's summary)."""
  lines = []
  for split, r in results.items():
    if "psnr_steps" in r:
      steps = "  ".join(f"step {k}: {v:.2f}" for k, v in enumerate(r["psnr_steps"], 1))
      lines.append(f"{split} PSNR (dB): noisy input {r['psnr_noisy']:.2f}; by thinking step: "
                   f"{steps}")
    elif "psnr_ddim" in r:
      counts = "  ".join(f"{n} NFE: {v:.2f}" for n, v in zip(r["ddim_steps"], r["psnr_ddim"]))
      lines.append(f"{split} PSNR (dB): noisy input {r['psnr_noisy']:.2f}; DDIM {counts}")
    elif "smooth_l1_steps" in r:
      steps = "  ".join(f"step {k}: {v:.4g}" for k, v in enumerate(r["smooth_l1_steps"], 1))
      lines.append(f"{split} SmoothL1 to the next frame latent by thinking step: {steps}")
  return lines


def as_scalars(results: dict[str, dict]) -> dict[str, float]:
  """Flat metric names: eval/ce_step_k and eval/perplexity for validation, ood/<split>/...
  (image and video kinds: eval/psnr_step_k, eval/psnr_noisy, eval/psnr, eval/psnr_ddim_n,
  eval/smooth_l1_step_k, ...)."""
  out = {}
  for split, r in results.items():
    prefix = "eval" if split == "validation" else f"ood/{split}"
    if "ce_steps" not in r:
      out.update(_continuous_scalars(r, prefix))
      continue
    for k, ce in enumerate(r["ce_steps"], start=1):
      out[f"{prefix}/ce_step_{k}"] = float(ce)
    for k, e in enumerate(r.get("energy_steps", ()), start=1):
      out[f"{prefix}/energy_step_{k}"] = float(e)
    out[f"{prefix}/perplexity"] = r["perplexity"]
  return out
