"""Shared tiny configs: every test model is small enough to compile in a few seconds."""

import os
import tempfile

# Tests run on CPU. With libtpu installed (the [tpu] extra, for the compile-report tests), a
# JAX start-up would otherwise look for TPUs and the TPU metadata server first.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

# Tests spend most of their time in XLA compiling tiny second-order programs. Two flags
# halve that (test_objective, test_video_ebt and test_memory in one process: 131 s against
# 270 s with the first alone, load average 4-5): the LLVM back end's cheapest optimisation level, and the CPU back end's loop
# emitters instead of its newer MLIR fusion emitters, which spend most of the compile time
# of these many-fusion programs. HLO-level optimisation (fusion, layout, algebraic
# simplification) is unaffected, and the tests check our math, not XLA's code generation:
# test_objective.py's test_suite_xla_flags_compute_what_users_run runs the S1 loss and its
# second-order gradients with the default flags in a subprocess and compares. Subprocesses
# (the CLI and multi-device tests) inherit the flags.
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", SUITE_XLA_FLAGS)
# Many tests compile the same programs again (a resumed run, the CLI after the library, each
# process of a multi-process run): a compilation cache shared by this run's processes (and
# pytest-xdist's workers) compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "ebt_jax_test_xla_cache",
    os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax
import jax.numpy as jnp
import pytest

from ebt_jax import config as config_lib

EBT_TYPES = ("default", "time_embed", "adaln", "adaln_zero")


def tiny_config(ebt_type="time_embed", kind="ebt", **thinking):
  c = config_lib.base_config()
  c.model.kind = kind
  c.model.ebt_type = ebt_type
  c.model.vocab_size = 11
  c.model.dim = 16
  c.model.n_layers = 2
  c.model.n_heads = 2
  c.model.context_length = 6
  c.thinking.step_size = 2.0
  c.thinking.num_steps = 2
  for k, v in thinking.items():
    c.thinking[k] = v
  return config_lib.validate(c)


def run_config(kind="ebt", **train):
  """A byte-level text model that trains on the embedded corpus in seconds."""
  c = tiny_config("time_embed", kind=kind)
  c.model.vocab_size = 256
  c.model.context_length = 16
  c.model.n_layers = 1
  c.thinking.step_size = 10.0
  c.optimizer.warmup_steps = 2
  c.train.update(batch_size=4, num_steps=8, log_every=1, eval_every=4, eval_batches=1,
                 checkpoint_every=2, keep_checkpoints=10, tensorboard=False)
  c.train.update(**train)
  return c


def perturb(params, key, scale=0.05):
  """Params with every leaf moved, so zero-initialised parts (adaLN-zero) matter."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [l + scale * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)])


def to_f64(tree):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield
