"""Runs inside a subprocess with forced host devices (tests/test_parallel.py starts it).

    python tests/parallel_worker.py DIR   # losses/params per mesh of an S2 run; (2,2,2)'s
                                          # state saved in DIR, restored onto other meshes;
                                          # the replay buffer's collectives on 8 devices

Prints one JSON line of results, {"meshes": ..., "restore": ..., "replay": ...}, for the
tests to check: one process serves them all, so the (2,2,2) program compiles once and JAX
starts once.
"""

import functools
import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ebt_jax import config as config_lib
from ebt_jax import tasks
from ebt_jax.checkpoint.manager import Checkpointer
from ebt_jax.data.pipeline import make_datasets
from ebt_jax.models.layers import CANDIDATE
from ebt_jax.parallel import logical, mesh as mesh_lib
from ebt_jax.tasks import replay
from ebt_jax.training import program as program_lib


def worker_config(data, fsdp, tensor):
  c = config_lib.base_config()
  c.model.update(ebt_type="adaln", vocab_size=256, dim=32, n_layers=1, n_heads=4,
                 context_length=16)
  # The S2 recipe's random step counts and sizes, Langevin noise, truncation and replay
  # buffer (2 groups of 5 records: 2 lanes of the 8 fresh rows, split as the batch), with
  # every group's rows replayed, so each mesh splits the 16 rows.
  c.thinking.update(num_steps=1, random_steps=1, step_size=10.0, step_size_random_scale=2.0,
                    langevin_noise=0.5, truncate=True, detach=False, replay_buffer=True,
                    replay_buffer_groups=2, replay_buffer_size=5,
                    replay_buffer_sample_fraction=1.0)
  c.optimizer.update(warmup_steps=1, peak_lr=3e-3)
  c.train.update(batch_size=8, num_steps=3)
  c.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
  return c


def run(c, devices, batches):
  mesh = mesh_lib.make_mesh(c.mesh, devices=devices)
  program = program_lib.build(c, mesh)
  state = program.init_state()
  losses = []
  with program.context():
    for batch in batches:
      state, metrics = program.train_step(state, program.put_local(batch))
      losses.append(float(jax.device_get(metrics["loss"])))  # block on every step
  return program, state, losses


def meshes():
  """(results per mesh shape, the (2,2,2) run's state and data iterator)."""
  results, saved = {}, None
  c = worker_config(1, 1, 1)
  it = make_datasets(c).train_iter(8, process_index=0, process_count=1)
  batches = [next(it) for _ in range(3)]
  for shape in [(1, 1, 1), (8, 1, 1), (2, 2, 2)]:
    c = worker_config(*shape)
    devices = jax.devices()[: int(np.prod(shape))]
    program, state, losses = run(c, devices, batches)
    if shape == (2, 2, 2):
      saved = state
    params = jax.device_get(state.params)
    wq_spec = str(program.state_shardings.params["blocks"]["wq"].spec)
    results[str(shape)] = {"losses": losses, "wq_spec": wq_spec,
                           "replay_shard": state.replay.logits.addressable_shards[0].data.shape,
                           "params": {jax.tree_util.keystr(k): np.asarray(v).ravel()[:50].tolist()
                                      + [float(np.sum(v))]
                                      for k, v in jax.tree_util.tree_leaves_with_path(params)}}
  return results, saved, it


def restore(directory, state, it):
  """Saves `state` (step 3 of the (2,2,2) run) and restores it onto other meshes."""
  ckpt = Checkpointer(directory)
  ckpt.save(3, state, it.get_state())
  ckpt.wait()
  saved = jax.device_get((state.params, state.replay))
  out = {}
  for shape in [(8, 1, 1), (1, 2, 4), (1, 1, 1)]:
    c2 = worker_config(*shape)
    devices = jax.devices()[: int(np.prod(shape))]
    target = program_lib.build(c2, mesh_lib.make_mesh(c2.mesh, devices=devices))
    step, restored, data_state = ckpt.restore(target.abstract_sharded_state())
    same = jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(np.array_equal(a, b)), saved,
        jax.device_get((restored.params, restored.replay))))
    wq = restored.params["blocks"]["wq"]
    out[str(shape)] = {"step": step, "equal": same, "spec": str(wq.sharding.spec),
                       "devices": len(wq.sharding.device_set), "data_state": data_state}
  ckpt.close()
  return out


def replay_collectives():
  """{groups: {"push"/"draw": [collective and result type, ...]}}: the compiled replay
  buffer steps on 8 data-parallel devices, with 8 groups (one per device) and with 2."""
  out = {}
  mesh = mesh_lib.make_mesh(worker_config(8, 1, 1).mesh, devices=jax.devices()[:8])
  for groups in (8, 2):
    c = worker_config(8, 1, 1)
    c.thinking.replay_buffer_groups = groups
    task = tasks.build(c)
    G, _, b, n = replay.shape(task)
    S, V = c.model.context_length, c.model.vocab_size
    carry = jax.eval_shape(task.init_carry)
    carry_sharding = logical.tree_shardings(carry, task.carry_axes(), mesh)
    carry = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), carry, carry_sharding)
    sharded = lambda shape, dtype, axes: jax.ShapeDtypeStruct(
        shape, dtype, sharding=logical.sharding_for(shape, axes, mesh))
    tokens = sharded((G * b, S + 1), jnp.int32, ("act_batch", None))
    final = sharded((G * (b + n), S, V), jnp.float32, CANDIDATE)
    with logical.use_mesh(mesh):
      push = jax.jit(functools.partial(replay.push, task=task), out_shardings=carry_sharding)
      draw = jax.jit(lambda buf, tok, key: replay.draw(buf, tok, key, task))
      texts = {"push": push.lower(carry, tokens, final).compile().as_text(),
               "draw": draw.lower(carry, tokens, jax.random.key(0)).compile().as_text()}
    out[groups] = {name: re.findall(r"= (\S+) (all-gather|all-reduce|reduce-scatter|all-to-all|"
                                    r"collective-permute)(?:-start)?\(", text)
                   for name, text in texts.items()}
  return out


if __name__ == "__main__":
  mesh_results, state, it = meshes()
  print(json.dumps({"meshes": mesh_results, "restore": restore(sys.argv[1], state, it),
                    "replay": replay_collectives()}))
