"""Device peak FLOP/s, for MFU (the model FLOPs of a step are each task's `flops()`,
counted in ebt_jax/tasks/flops.py).
"""

from __future__ import annotations

import jax
import ml_collections

# device_kind substring -> (bf16 peak, float32 peak) in FLOP/s per device (dense).
# float32 matmuls on these GPUs run as TF32 under JAX's default precision, on TPUs as bf16 passes.
DEVICE_PEAKS = {
    "TPU v6": (918e12, 918e12), "TPU v5p": (459e12, 459e12), "TPU v5 lite": (197e12, 197e12),
    "TPU v5e": (197e12, 197e12), "TPU v5": (459e12, 459e12), "TPU v4": (275e12, 275e12),
    "H200": (989e12, 494e12), "H100": (989e12, 494e12), "A100": (312e12, 156e12),
    "L4": (121e12, 60e12), "A10G": (70e12, 35e12),
}


def device_peak_flops(config: ml_collections.ConfigDict) -> float | None:
  """Peak FLOP/s of all devices together, from `train.peak_tflops` or the table; None if unknown."""
  per_device = config.train.get("peak_tflops")
  devices = jax.devices()
  if per_device:
    return per_device * 1e12 * len(devices)
  per_device = peak_per_device(devices[0].device_kind, config.model.dtype)
  return None if per_device is None else per_device * len(devices)


def peak_per_device(device_kind: str, dtype: str) -> float | None:
  """Peak FLOP/s of one device of `device_kind` for a model in `dtype`; None if unknown."""
  bf16 = dtype in ("bfloat16", "float16")
  for name, (bf16_peak, f32_peak) in DEVICE_PEAKS.items():
    if name in device_kind:
      return bf16_peak if bf16 else f32_peak
  return None
