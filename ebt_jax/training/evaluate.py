"""Evaluation results as the trainer logs and prints them.

The tasks compute the results (`Task.evaluate`: per-step cross-entropy for text, PSNR or
SmoothL1 per thinking step, or per DDIM step count, for images and video) with a fixed key
(`Task.eval_key`), so evaluations of different checkpoints compare; this module names
them (`as_scalars`) and writes the summary lines (`report_lines`). Both go by the metrics
present, not by the kind.
"""

from __future__ import annotations

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
