"""Optimizer-state shardings from `optax.tree_map_params`: every copy of the parameter tree
in the state (per-group Adam moments behind multi_transform masks included) takes the
parameters' shardings, everything else is replicated. An abstract 2x2x2 mesh needs no
devices."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AbstractMesh, PartitionSpec

from ebt_jax.parallel import sharding


class State(NamedTuple):
  step: jax.Array
  params: dict
  opt_state: object
  rng: jax.Array


def test_param_copies_take_param_shardings_and_the_rest_is_replicated():
  mesh = AbstractMesh((2, 2, 2), ("data", "fsdp", "tensor"))
  params = {"w": jnp.zeros((8, 4)), "b": jnp.zeros((8,)), "alpha": jnp.zeros(()),
            "frozen": jnp.zeros((8, 4))}
  axes = {"w": ("embed", "mlp"), "b": ("embed",), "alpha": (), "frozen": ("embed", "mlp")}
  labels = {"w": "main", "b": "main", "alpha": "alpha", "frozen": "frozen"}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.multi_transform(
      {"main": optax.adamw(optax.linear_schedule(1.0, 0.0, 10)), "alpha": optax.adam(0.1),
       "frozen": optax.set_to_zero()}, labels))
  abstract = jax.eval_shape(lambda: State(jnp.zeros((), jnp.int32), params, tx.init(params),
                                          jnp.zeros((2,), jnp.uint32)))
  got = sharding.state_shardings(abstract, axes, mesh, tx=tx)

  assert jax.tree.structure(got) == jax.tree.structure(abstract)
  w_spec, b_spec = got.params["w"].spec, got.params["b"].spec
  assert w_spec == PartitionSpec("fsdp", "tensor") and b_spec == PartitionSpec("fsdp")
  replicated = PartitionSpec()
  assert got.step.spec == replicated and got.rng.spec == replicated
  moments, others = [], []
  for path, s in jax.tree_util.tree_leaves_with_path(got.opt_state):
    name = jax.tree_util.keystr(path)
    (moments if (".mu" in name or ".nu" in name) else others).append((name, s.spec))
  # Adam's mu and nu of w, b (group main) and alpha (group alpha); nothing for `frozen`.
  assert len(moments) == 6
  for name, spec in moments:
    want = {"['w']": w_spec, "['b']": b_spec, "['alpha']": replicated}[name[name.rindex("["):]]
    assert spec == want, name
  assert others and all(spec == replicated for _, spec in others), others
