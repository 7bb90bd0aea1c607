"""`hugepages`: the tunable reaches a restarted process's glibc, and a thread's large
per-step block is then faulted in 2 MiB at a time instead of 4 KiB."""

import json
import os
import subprocess
import sys

import pytest

from ebt_jax import hugepages

# Where a restart helps at all (as on the CI and development VMs).
NEEDS_RESTART = pytest.mark.skipif(
    not hugepages.restart_needed({}),
    reason="needs Linux, glibc 2.35 or later and the kernel's transparent huge pages in "
    "madvise mode")


def test_step_environ_adds_the_tunable_once():
  assert hugepages.step_environ({})["GLIBC_TUNABLES"] == hugepages.TUNABLE
  env = hugepages.step_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "1"})
  assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:" + hugepages.TUNABLE, "A": "1"}
  assert hugepages.step_environ(env) == env
  # A user's own hugetlb setting, or the opt-out, leaves the environment as it is.
  assert hugepages.step_environ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == {
      "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
  assert hugepages.step_environ({hugepages.OPT_OUT_ENV: "0"}) == {hugepages.OPT_OUT_ENV: "0"}


# Restarts where it helps, then does what XLA:CPU's worker threads do each step: allocates a
# block far past glibc's mmap threshold, writes it and frees it. Prints each step's minor
# page faults.
_STEP_FAULTS = r"""
import ctypes, ctypes.util, json, os, resource, threading
from ebt_jax import hugepages
print("started", flush=True)
hugepages.restart_with_huge_pages()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = []

def steps(size=256 << 20):
  for _ in range(3):
    block = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(block), 64, size) == 0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(block, 1, size)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(block)

worker = threading.Thread(target=steps)
worker.start()
worker.join()
print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES"), "faults": faults}))
"""
PAGES = (256 << 20) // 4096


def _clean_environ(**env) -> dict:
  """This process's environment without the tunable or the opt-out, plus `env`."""
  drop = ("GLIBC_TUNABLES", hugepages.OPT_OUT_ENV)
  return {**{k: v for k, v in os.environ.items() if k not in drop}, **env}


def _step_faults(**env) -> tuple[int, dict]:
  out = subprocess.run([sys.executable, "-c", _STEP_FAULTS], check=True, capture_output=True,
                       text=True, env=_clean_environ(**env)).stdout.strip().splitlines()
  return out.count("started"), json.loads(out[-1])


@NEEDS_RESTART
def test_a_restarted_process_faults_its_blocks_in_huge_pages():
  starts, huge = _step_faults()
  assert starts == 2 and huge["tunables"] == hugepages.TUNABLE, huge
  starts, small = _step_faults(**{hugepages.OPT_OUT_ENV: "0"})
  assert starts == 1 and small["tunables"] is None, small
  # glibc unmaps a freed block this large, so every step faults it in again: a fault per
  # 4 KiB page by default, one per 2 MiB page with the tunable (some 4 KiB pages allowed for
  # where the kernel finds no free 2 MiB page).
  assert min(small["faults"]) > PAGES // 2, small
  assert max(huge["faults"]) < PAGES // 10, huge


@NEEDS_RESTART
def test_step_commands_restart_once_and_others_do_not(tmp_path):
  def starts(*argv):
    code = ("import sys; print('started', flush=True); from ebt_jax.cli import main; "
            f"sys.argv = ['ebt', *{list(argv)!r}]; sys.exit(main())")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_clean_environ())
    assert run.returncode == 2, run.stderr   # the missing run directory, after the restart
    return run.stdout.splitlines().count("started")

  assert starts("eval", "--workdir", str(tmp_path / "none")) == 2
  assert starts("export-torch", "--workdir", str(tmp_path / "none"), "--out", "x.ckpt") == 1


def test_the_cli_restarts_before_importing_jax():
  """The step commands' restart re-runs whatever was imported before it: the CLI and the
  package import no JAX (nor NumPy) until a command needs it, and the package's API still
  resolves on first use."""
  code = ("import sys, ebt_jax, ebt_jax.cli, ebt_jax.hugepages; "
          "print(sorted(m for m in ('jax', 'jaxlib', 'numpy', 'flax', 'optax') "
          "if m in sys.modules)); "
          "print(sorted(n for n in ebt_jax.__all__ if getattr(ebt_jax, n) is None)); "
          "print('jax' in sys.modules, set(ebt_jax.__all__) <= set(dir(ebt_jax)), "
          "hasattr(ebt_jax, 'no_such_name'), ebt_jax.training.__name__)")
  out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       text=True).stdout.splitlines()
  assert out == ["[]", "[]", "True True False ebt_jax.training"], out
