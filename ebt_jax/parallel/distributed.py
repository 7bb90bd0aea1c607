"""Multi-host start-up: one JAX process per host (or per GPU), joined by a coordinator.

`initialize` is called once before anything touches devices. On Cloud TPU VMs and under
SLURM, `jax.distributed.initialize()` finds the coordinator, process count and index by
itself; elsewhere they are given explicitly (`ebt train --coordinator host:port
--num-processes N --process-id I`). A single process with none of these does nothing.
CPU processes exchange collectives through gloo.
"""

from __future__ import annotations

import os

import jax

_initialized = False


def cluster_detected() -> bool:
  """Whether this process is one of several of a TPU pod slice or a SLURM job."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  global _initialized
  if _initialized:
    return
  explicit = coordinator is not None or num_processes is not None or process_id is not None
  if explicit and None in (coordinator, num_processes, process_id):
    raise ValueError("--coordinator, --num-processes and --process-id go together")
  if explicit or cluster_detected():
    # Only the CPU backend uses this (accelerators have their own collectives).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  _initialized = True
