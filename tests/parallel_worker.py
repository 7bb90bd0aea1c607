"""Runs inside a subprocess with forced host devices (tests/test_parallel.py starts it).

    python tests/parallel_worker.py DIR   # losses/params per mesh of an S2 run; (2,2,2)'s
                                          # state saved in DIR, restored onto other meshes

Prints one JSON line of results, {"meshes": ..., "restore": ...}, for the tests to check:
one process serves both, so the (2,2,2) program compiles once and JAX starts once.
"""

import json
import sys

import jax
import numpy as np

from ebt_jax import config as config_lib
from ebt_jax.checkpoint.manager import Checkpointer
from ebt_jax.data.pipeline import make_datasets
from ebt_jax.parallel import mesh as mesh_lib
from ebt_jax.training import program as program_lib


def worker_config(data, fsdp, tensor):
  c = config_lib.base_config()
  c.model.update(ebt_type="adaln", vocab_size=256, dim=32, n_layers=1, n_heads=4,
                 context_length=16)
  # The S2 recipe's random step counts and sizes, Langevin noise, truncation and replay
  # buffer (2 groups x 5 slots x 16 positions: the 8 data-parallel devices split only the
  # positions, 2x2x2 the groups over data and the positions over fsdp), with every group's
  # rows replayed, so each mesh splits the 16 rows.
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


if __name__ == "__main__":
  mesh_results, state, it = meshes()
  print(json.dumps({"meshes": mesh_results, "restore": restore(sys.argv[1], state, it)}))
