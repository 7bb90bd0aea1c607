"""Blockwise attention (models/attention.py) against the dense form, and its memory.

Float64 (the x64 fixture): values, first- and second-order gradients of every attention
pattern agree with the dense functions to 1e-10 relative, with block sizes that divide
neither the queries nor the keys; with `model.attention=blockwise` the text EBT gives the
dense model's S1 gradients (second order through thinking) and the image EBT its
energies. Memory: XLA's temporaries of the S1 train step grow by at most 1.5x from
context 1024 to 4096 at the same tokens per batch (dense attention: about 4x).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebt_jax import config as config_lib
from ebt_jax import tasks
from ebt_jax.errors import ConfigError
from ebt_jax.models import bi_ebt
from ebt_jax.models.attention import Attention
from ebt_jax.training import memory
from conftest import perturb, tiny_config

DENSE, BLOCKWISE = Attention("dense"), Attention("blockwise", block=3)


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-300))


def _patterns(S, C):
  """name -> attend(impl, q, k, v, ctx_k, ctx_v): the four patterns the stacks use."""
  last_S = jnp.minimum(jnp.arange(S) + 1, C - 1)
  return {
      "causal": lambda a, q, k, v, ck, cv: a.causal(q, k, v),
      "prediction": lambda a, q, k, v, ck, cv: a.prediction(q, k, v, ck, cv, last_S),
      "buffer": lambda a, q, k, v, ck, cv: a.buffer(q, ck, cv, last_S),
      "bidirectional": lambda a, q, k, v, ck, cv: a.bidirectional(q, k, v),
  }


@pytest.mark.parametrize("name", ["causal", "prediction", "buffer", "bidirectional"])
def test_blockwise_equals_dense_to_second_order_in_float64(x64, name):
  B, S, C, N, H = 2, 7, 8, 2, 4
  keys = jax.random.split(jax.random.key(0), 6)
  q, k, v = (jax.random.normal(kk, (B, S, N, H), jnp.float64) for kk in keys[:3])
  ck, cv = (jax.random.normal(kk, (B, C, N, H), jnp.float64) for kk in keys[3:5])
  w = jax.random.normal(keys[5], (B, S, N, H), jnp.float64)
  attend = _patterns(S, C)[name]

  def loss(impl, *args):
    return jnp.sum(jnp.sin(attend(impl, *args)) * w)

  def grad_loss(impl, *args):   # a function of the first-order gradients, as S1 training
    grads = jax.grad(loss, argnums=(1, 2, 3, 4, 5))(impl, *args)
    return sum(jnp.sum(jnp.cos(g)) for g in grads)

  @jax.jit
  def outputs(*args):   # values, first- and second-order gradients of both forms
    return [(attend(impl, *args), jax.grad(loss, argnums=(1, 2, 3, 4, 5))(impl, *args),
             jax.grad(grad_loss, argnums=(1, 2, 3, 4, 5))(impl, *args))
            for impl in (BLOCKWISE, DENSE)]

  got, want = outputs(q, k, v, ck, cv)
  for g, ref in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    if np.any(ref):   # the patterns that ignore an input give it zeros on both sides
      assert _rel(g, ref) <= 1e-10


def _model_outputs(config, batch):
  """The S1 training loss and its parameter gradients (text), or the energies (images)."""
  task = tasks.build(config)
  params = perturb(task.init_params(jax.random.key(0)), jax.random.key(1))
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
  if config.model.kind == "image_ebt":
    return jax.jit(lambda p: bi_ebt.energy(p, batch, task.dims))(params)
  loss = lambda p: task.loss(p, batch, jax.random.key(3), train=True)[0]
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("kind", [pytest.param("ebt", marks=pytest.mark.slow), "image_ebt"])
def test_models_with_blockwise_attention_equal_dense(x64, kind):
  """The text EBT's S1 gradients (second order through thinking; causal and prediction
  attention) and the image EBT's energies (bidirectional) with either attention."""
  c = tiny_config("time_embed", kind=kind, num_steps=1)
  c.model.update(dtype="float64", n_layers=1)
  if kind == "ebt":   # the real stream has 7 entries (step token + 6), 6 predictions
    batch = jax.random.randint(jax.random.key(2), (2, 7), 0, c.model.vocab_size)
  else:               # 16 patches of an 8 x 8 image
    c.model.update(image_size=8, patch_size=2)
    batch = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3), jnp.float64, -1, 1)
  dense = _model_outputs(c, batch)
  c.model.update(attention="blockwise", attention_block=3)
  blockwise = _model_outputs(config_lib.validate(c), batch)
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(blockwise),
                               jax.tree_util.tree_leaves(dense)):
    if np.any(want):
      assert _rel(got, want) <= 1e-10, jax.tree_util.keystr(path)


def test_attention_fields_are_validated():
  c = tiny_config()
  c.model.attention = "flash"
  with pytest.raises(ConfigError, match=r"^model.attention: expected 'dense' or 'blockwise'"):
    config_lib.validate(c)
  c.model.update(attention="blockwise", attention_block=0)
  with pytest.raises(ConfigError, match=r"^model.attention_block: expected a positive integer"):
    config_lib.validate(c)


def memory_config(attention: str, context: int, batch: int):
  """A tiny byte-level S1 text EBT whose attention dominates its temporaries."""
  c = tiny_config("time_embed", num_steps=1)
  c.model.update(vocab_size=256, dim=16, n_layers=1, n_heads=2, context_length=context,
                 attention=attention, attention_block=512)
  c.train.batch_size = batch
  c.mesh.data = 1
  return config_lib.validate(c)


@pytest.mark.slow
def test_blockwise_temporaries_grow_linearly_with_context():
  short = memory.compile_report(memory_config("blockwise", 1024, 4)).temp_bytes
  long = memory.compile_report(memory_config("blockwise", 4096, 1)).temp_bytes
  assert long <= 1.5 * short, (short, long)
