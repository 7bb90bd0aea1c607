"""TPU slices without TPUs: compile-only devices of a named topology (`v5e:16x16`).

libtpu (the `ebt_jax[tpu]` extra) describes any TPU slice, and XLA compiles for its
devices on a CPU host (`jax.experimental.topologies`); nothing runs. The compile report
and the layout planner (`ebt_jax/tools`) compile the real sharded programs this way.

On a host without TPUs, a process that loads libtpu first asks the TPU metadata server
about itself (about 50 s of retries where the server's address does not answer) and
warns that it cannot tell its accelerator type or worker names. `prepare_environment`
says all of that in advance: call it before anything initialises a JAX backend.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax
from jax._src import xla_bridge   # whether a backend started (no public API says)

from ebt_jax.errors import ConfigError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
  dims: int              # chip-grid dimensions of the names: 2 (AxB) or 3 (AxBxC)
  hbm_bytes: int         # per chip
  hbm_bytes_per_s: float  # HBM bandwidth per chip
  megacore: bool         # the chip's two TensorCores are one JAX device
  accelerator: str       # Cloud's accelerator-type prefix (v5litepod-16 is a v5e:4x4)


# Cloud TPU docs' HBM per chip (v5p's "95 GB" and v5e's "16 GB" read as GiB, as
# `memory_stats()["bytes_limit"]` on the chips comes close to) and HBM bandwidth per chip
# (GB/s: v4 1200, v5e 819, v5p 2765, v6e 1638); peaks per chip are in
# ebt_jax/training/flops.py by device kind.
GENERATIONS = {
    "v4": Generation(3, 32 * GiB, 1200e9, True, "v4"),
    "v5e": Generation(2, 16 * GiB, 819e9, False, "v5litepod"),
    "v5p": Generation(3, 95 * GiB, 2765e9, True, "v5p"),
    "v6e": Generation(2, 32 * GiB, 1638e9, False, "v6e"),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str              # as given, e.g. v5e:16x16
  generation: str
  chips_per_slice: int
  num_slices: int = 1

  @property
  def spec(self) -> Generation:
    return GENERATIONS[self.generation]

  @property
  def num_chips(self) -> int:
    return self.chips_per_slice * self.num_slices

  def describe(self) -> str:
    return self.name + (f" x {self.num_slices} slices (DCN)" if self.num_slices > 1 else "")


def parse(name: str, num_slices: int = 1) -> Topology:
  """A validated topology name, GENERATION:AxB (v5e, v6e) or GENERATION:AxBxC (v4, v5p)."""
  valid = ", ".join(f"{g}:{'x'.join('N' * s.dims)}" for g, s in GENERATIONS.items())
  match = re.fullmatch(r"(\w+):(\d+(?:x\d+)*)", name or "")
  spec = GENERATIONS.get(match.group(1)) if match else None
  shape = [int(n) for n in match.group(2).split("x")] if match else []
  if spec is None or len(shape) != spec.dims or min(shape) < 1:
    raise ConfigError(f"--topology: expected one of {valid} (e.g. v5e:16x16, v5p:4x4x4), "
                      f"got {name!r}")
  if not isinstance(num_slices, int) or num_slices < 1:
    raise ConfigError(f"--num-slices: expected a positive integer, got {num_slices!r}")
  return Topology(name, match.group(1), math.prod(shape), num_slices)


def prepare_environment(topology: Topology) -> None:
  """Env and JAX settings for compile-only TPU devices on any host, before JAX starts.

  CPU is the only backend this process runs on (so no TPU is looked for); libtpu skips
  the metadata server and is told an accelerator type and worker, which it would
  otherwise look up and warn about, and may be loaded by several processes at once (it
  takes a lock file meant for processes sharing chips; compile-only devices are nobody's).
  Values a TPU VM already set are kept. The persistent
  compilation cache is off: compile-only executables cannot be read back (there is no
  TPU client to load them into), so a cached one would only warn.
  """
  spec = topology.spec
  cores = topology.chips_per_slice * (2 if spec.megacore else 1)
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{spec.accelerator}-{cores}")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if not xla_bridge.backends_are_initialized():
    jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])
    jax.config.update("jax_enable_compilation_cache", False)


def devices(topology: Topology) -> list:
  """The topology's compile-only devices (all slices), one per chip."""
  prepare_environment(topology)
  from jax.experimental import topologies
  kwargs = {"chip_config_name": "megacore"} if topology.spec.megacore else {}
  if topology.num_slices > 1:
    kwargs["num_slices"] = topology.num_slices
  try:
    desc = topologies.get_topology_desc(topology_name=topology.name, platform="tpu", **kwargs)
  except RuntimeError as e:   # libtpu missing, or a shape libtpu has no slice of
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "not installed" in message:
      message = 'TPU support is not installed: pip install "ebt_jax[tpu]"'
    raise ConfigError(f"--topology {topology.name}: {message}") from None
  return list(desc.devices)
