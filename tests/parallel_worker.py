"""Runs inside a subprocess with forced host devices (tests/test_parallel.py starts it).

    python tests/parallel_worker.py meshes       # losses/params per mesh vs one device
    python tests/parallel_worker.py restore DIR  # save on (2,2,2), restore on other meshes

Prints one JSON line of results for the test to check.
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
  c.thinking.update(num_steps=2, step_size=10.0, detach=False)
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
  batches = None
  results = {}
  for shape in [(1, 1, 1), (8, 1, 1), (2, 2, 2), (1, 4, 2), (1, 1, 8)]:
    c = worker_config(*shape)
    if batches is None:
      it = make_datasets(c).train_iter(8, process_index=0, process_count=1)
      batches = [next(it) for _ in range(3)]
    devices = jax.devices()[: int(np.prod(shape))]
    program, state, losses = run(c, devices, batches)
    params = jax.device_get(state.params)
    wq_spec = str(program.state_shardings.params["blocks"]["wq"].spec)
    results[str(shape)] = {"losses": losses, "wq_spec": wq_spec,
                           "params": {jax.tree_util.keystr(k): np.asarray(v).ravel()[:50].tolist()
                                      + [float(np.sum(v))]
                                      for k, v in jax.tree_util.tree_leaves_with_path(params)}}
  print(json.dumps(results))


def restore(directory):
  c = worker_config(2, 2, 2)
  it = make_datasets(c).train_iter(8, process_index=0, process_count=1)
  program, state, _ = run(c, jax.devices(), [next(it) for _ in range(2)])
  ckpt = Checkpointer(directory)
  ckpt.save(2, state, it.get_state())
  ckpt.wait()
  saved = jax.device_get(state.params)
  out = {}
  for shape in [(8, 1, 1), (1, 2, 4), (1, 1, 1)]:
    c2 = worker_config(*shape)
    devices = jax.devices()[: int(np.prod(shape))]
    target = program_lib.build(c2, mesh_lib.make_mesh(c2.mesh, devices=devices))
    step, restored, data_state = ckpt.restore(target.abstract_sharded_state())
    same = jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(np.array_equal(a, b)), saved, jax.device_get(restored.params)))
    wq = restored.params["blocks"]["wq"]
    out[str(shape)] = {"step": step, "equal": same, "spec": str(wq.sharding.spec),
                       "devices": len(wq.sharding.device_set), "data_state": data_state}
  ckpt.close()
  print(json.dumps(out))


if __name__ == "__main__":
  {"meshes": meshes, "restore": lambda: restore(sys.argv[2])}[sys.argv[1]]()
