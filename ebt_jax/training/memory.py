"""Ahead-of-time memory report: compile a config's train step without running it.

    ebt compile-report --config configs/ebt_s1.py:xxs [--config.mesh.fsdp=8 ...]

Lowers and compiles the sharded train step for the current devices from shapes alone
(no parameter is allocated), and prints XLA's memory analysis per device: arguments
(state and batch shard), outputs, temporaries (activations kept for the backward pass,
which remat trades for recomputation), and their sum against the device's memory where
the backend reports it. So an out-of-memory layout shows on a laptop or one host of a
slice before a pod is booked; compile on the target device type for exact figures, which
`--topology` does for TPU slices without TPUs (ebt_jax/tools/compile_report.py).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import ml_collections

from ebt_jax.training import program as program_lib

GiB = 2**30


@dataclasses.dataclass
class MemoryReport:
  device_kind: str
  num_devices: int
  mesh: dict
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  device_limit_bytes: int | None
  compile_s: float
  model_flops_per_step: float | None
  program: str = "Train step"

  @classmethod
  def of(cls, compiled, **fields) -> "MemoryReport":
    """The report of a compiled program from XLA's memory analysis, plus `fields`."""
    stats = compiled.memory_analysis()
    return cls(argument_bytes=stats.argument_size_in_bytes,
               output_bytes=stats.output_size_in_bytes, alias_bytes=stats.alias_size_in_bytes,
               temp_bytes=stats.temp_size_in_bytes, **fields)

  @property
  def peak_bytes(self) -> int:
    """Live at once, per device: inputs, temporaries, and outputs not written in place."""
    return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

  @property
  def fits(self) -> bool | None:
    return None if self.device_limit_bytes is None else self.peak_bytes <= self.device_limit_bytes

  def table(self) -> str:
    rows = [("state + batch (arguments)", self.argument_bytes),
            ("temporaries (activations, gradients)", self.temp_bytes),
            ("outputs not aliased to donated inputs", self.output_bytes - self.alias_bytes),
            ("peak per device", self.peak_bytes)]
    flops = ("" if self.model_flops_per_step is None
             else f"; {self.model_flops_per_step:.3g} model FLOPs per step")
    lines = [f"{self.program} compiled in {self.compile_s:.1f} s for {self.num_devices} x "
             f"{self.device_kind}, mesh {self.mesh}{flops}"]
    lines += [f"  {name:<40} {value / GiB:10.3f} GiB" for name, value in rows]
    if self.device_limit_bytes is None:
      lines.append("  device memory: not reported by this backend (compare with the target's)")
    else:
      verdict = "fits" if self.fits else "DOES NOT FIT"
      lines.append(f"  device memory {self.device_limit_bytes / GiB:.3f} GiB: {verdict}")
    return "\n".join(lines)


def train_step_args(program: program_lib.Program) -> tuple:
  """Abstract (state, batch) of `program.train_step`, sharded as the program shards them."""
  spec = program.task.batch_spec(program.config.train.batch_size)
  batch = jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=program.batch_sharding)
  return program.abstract_sharded_state(), batch


def compile_report(config: ml_collections.ConfigDict) -> MemoryReport:
  program = program_lib.build(config)
  t0 = time.perf_counter()
  with program.context():
    compiled = program.train_step.lower(*train_step_args(program)).compile()
  compile_s = time.perf_counter() - t0
  device = jax.devices()[0]
  return MemoryReport.of(
      compiled, device_kind=device.device_kind, num_devices=len(jax.devices()),
      mesh=dict(program.mesh.shape), device_limit_bytes=(device.memory_stats() or {}).get(
          "bytes_limit"), compile_s=compile_s,
      model_flops_per_step=program.task.flops(config.train.batch_size))


def peak_bytes(compiled) -> int | None:
  """`MemoryReport.peak_bytes` of a compiled program (None where the backend gives no
  memory analysis)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return (stats.argument_size_in_bytes + stats.temp_size_in_bytes
          + stats.output_size_in_bytes - stats.alias_size_in_bytes)
