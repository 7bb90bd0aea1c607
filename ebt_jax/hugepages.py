"""Transparent huge pages for XLA:CPU's per-step host buffers.

XLA:CPU allocates a step's temporaries as one block (2.1 GiB for the reference S1 step of
docs/benchmarks.md) with `posix_memalign` and frees it when the step ends. glibc maps a
block that large afresh and unmaps it on free, so each step faults its temporaries in
again, 4 KiB at a time: 545,000 page faults and 0.9 s of kernel time in a 1.7-1.9 s step on
a 2-core VM. glibc's tunable `glibc.malloc.hugetlb=1` (glibc 2.35 on) has malloc advise
transparent huge pages for its mappings, which the kernel then fills 2 MiB at a time: the
step above took 1.25-1.36 s instead of 1.69-1.72 s. Keeping freed blocks in the heap instead
(`mallopt`: one arena, no mmap, no trimming) avoided the faults too, but the heap grew by a
block every few steps (3.3 to 7.7 GB in 40 steps).

glibc reads its tunables only when a process starts, so the step-running commands of `ebt`
start themselves again with the tunable added (`restart_with_huge_pages`), where it helps:
Linux with glibc 2.35 or later and the kernel's THP mode `madvise` (with `always` the kernel
already does it; with `never` nothing can). `EBT_JAX_HUGE_PAGES=0` turns this off. Python
code driving ebt_jax sets `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in its own environment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT_ENV = "EBT_JAX_HUGE_PAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def step_environ(env: dict[str, str]) -> dict[str, str]:
  """A copy of `env` for a process that runs steps: GLIBC_TUNABLES also sets `TUNABLE` (a
  hugetlb value already there stays), unless `EBT_JAX_HUGE_PAGES=0`."""
  tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
  if env.get(OPT_OUT_ENV, "1") == "0" or any(t.startswith("glibc.malloc.hugetlb=")
                                              for t in tunables):
    return dict(env)
  return {**env, "GLIBC_TUNABLES": ":".join([*tunables, TUNABLE])}


def _glibc_version() -> tuple[int, ...]:
  try:
    _, version = os.confstr("CS_GNU_LIBC_VERSION").split()   # "glibc 2.36"
  except (AttributeError, ValueError, OSError):   # not glibc (musl, macOS, Windows)
    return ()
  return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def _thp_mode() -> str:
  """The kernel's transparent huge page mode (`always`, `madvise`, `never`), or ''."""
  try:
    text = Path(THP_MODE_FILE).read_text()
  except OSError:
    return ""
  return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def restart_needed(env: dict[str, str]) -> bool:
  """Whether a process started with `env` would gain from starting again with the tunable."""
  return (sys.platform.startswith("linux") and step_environ(env) != env
          and _glibc_version() >= (2, 35) and _thp_mode() == "madvise")


def restart_with_huge_pages() -> None:
  """Replaces this process by the same command with the tunable set, where it helps.

  Call it first thing in a program's entry point: it does not return when it restarts, and
  whatever ran before runs again.
  """
  if not restart_needed(dict(os.environ)):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], step_environ(os.environ))
