"""Sharded training on forced CPU devices, and multi-process runs on localhost.

Device counts are fixed when JAX starts, so each case runs in a fresh subprocess with
`--xla_force_host_platform_device_count` (tests/parallel_worker.py, or the `ebt` CLI).
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from ebt_jax import cli, tasks
from ebt_jax.models.layers import CANDIDATE
from ebt_jax.parallel.logical import MESH_AXES, spec_for
from ebt_jax.tasks import replay
from ebt_jax.training import trainer
from ebt_jax.training.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent


def _env(devices: int) -> dict:
  flags = os.environ.get("XLA_FLAGS", "")
  return dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}",
              PYTHONUNBUFFERED="1")


def _worker(*args, devices=8):
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "parallel_worker.py"), *args],
                       env=_env(devices), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
  return _worker(str(tmp_path_factory.mktemp("ckpt")))


@pytest.mark.slow
def test_sharded_meshes_match_one_device(worker_results):
  results = dict(worker_results["meshes"])
  base = results.pop("(1, 1, 1)")
  assert set(results) == {"(8, 1, 1)", "(2, 2, 2)"}
  for shape, r in results.items():
    np.testing.assert_allclose(r["losses"], base["losses"], rtol=2e-5, err_msg=shape)
    for name, values in base["params"].items():
      np.testing.assert_allclose(r["params"][name][:-1], values[:-1], atol=2e-4,
                                 err_msg=f"{shape} {name}")
  # FSDP and tensor parallelism really split the weights, and the replay buffer's [2 lanes,
  # 8 rows, 16 positions, 256] logits are split as the batch's candidates.
  assert results["(2, 2, 2)"]["wq_spec"] == "P(None, 'fsdp', 'tensor', None)"
  assert results["(2, 2, 2)"]["replay_shard"] == [2, 2, 16, 128]
  assert results["(8, 1, 1)"]["replay_shard"] == [2, 1, 16, 256]
  assert base["replay_shard"] == [2, 8, 16, 256]


@pytest.mark.slow
def test_checkpoint_restores_onto_other_meshes(worker_results):
  results = worker_results["restore"]
  assert set(results) == {"(8, 1, 1)", "(1, 2, 4)", "(1, 1, 1)"}
  for shape, r in results.items():
    assert r["step"] == 3 and r["equal"], shape
    assert r["data_state"]["step"] == 3
  assert results["(1, 2, 4)"]["spec"] == "P(None, 'fsdp', 'tensor', None)"
  assert results["(1, 1, 1)"]["devices"] == 1


def _record_collectives(ops):
  """(collective, dims) of the collectives moving float [..., 16 positions, 256] arrays:
  replay buffer records or candidates, not keys or counts."""
  shapes = [(op, t.split("{")[0]) for t, op in ops]
  return [(op, [int(d) for d in re.findall(r"\d+", t.split("[")[1])]) for op, t in shapes
          if t.startswith("f32") and t.endswith(",16,256]")]


@pytest.mark.slow
def test_replay_buffer_records_stay_within_their_group(worker_results):
  """On 8 devices with one group each (the official one buffer per GPU), storing a batch
  and drawing from the buffer move no record (the draw gathers its per-group random keys
  only). With 2 groups of 4 devices, each device's 3 of the 12 rows a group thinks over
  are 2 of its fresh rows and 1 replayed (`replay.append`'s units), so a push moves no
  row either (with each group's replayed rows after its fresh ones, the fresh rows moved
  between devices), and a draw sums one group's 4 draws over that group's devices; the
  [groups, slots] ring this replaced gathered the whole batch on every device."""
  r = worker_results["replay"]
  assert r["8"]["push"] == [] and r["8"]["draw"] == [["f32[8,5]{1,0}", "all-gather"]]
  assert r["2"]["push"] == []
  assert _record_collectives(r["2"]["draw"]) == [("all-reduce", [1, 4, 16, 256])]


@pytest.mark.parametrize("mesh_shape, expected", [
    ((4, 64, 1), P(None, ("data", "fsdp"), None, None)),   # a group per data slice, as official
    ((1, 64, 1), P(None, "fsdp", None, None)),
    ((1, 256, 1), P(None, "fsdp", None, None)),
    ((16, 16, 1), P(None, ("data", "fsdp"), None, None)),
    ((1, 128, 2), P(None, "fsdp", None, "tensor")),   # the padded vocabulary splits
])
def test_paper_s2_replay_buffer_is_split_as_its_batch(mesh_shape, expected):
  """configs/ebt_s2.py's buffer (39.5 GB of logits) on 64 and 256 chips: its lanes' 256
  rows go where the batch's rows go, whatever the mesh, and its vocabulary (50277 tokens
  padded to 50304) where the candidates' goes."""
  task = tasks.build(cli.load_config_file("ebt_s2:xxs")[0])
  logits = jax.eval_shape(lambda: replay.init(task)).logits
  assert logits.shape == (3, 256, 256, 50304)      # 192 records a group = 3 lanes of 64 rows
  mesh = AbstractMesh(mesh_shape, MESH_AXES)
  assert spec_for(logits.shape, replay.LOGICAL_AXES.logits, mesh) == expected
  assert spec_for((256, 256, 50304), CANDIDATE, mesh) == P(*expected[1:])


TRAIN_OVERRIDES = ["--config.model.n_layers=1", "--config.train.log_every=1",
                   "--config.train.checkpoint_every=2", "--config.train.eval_every=100"]


def _train(workdir, devices, *extra, processes):
  """`ebt train` in `processes` local processes of `devices` CPU devices each: the first's
  output."""
  base = [sys.executable, "-m", "ebt_jax.cli", "train", "--config", "tiny_cpu", "--workdir",
          str(workdir), "--no-progress", *TRAIN_OVERRIDES, *extra]
  with socket.socket() as s:   # a free port for the coordinator
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(base + ["--coordinator", f"localhost:{port}", "--num-processes",
                                    str(processes), "--process-id", str(i)],
                            env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(processes)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs[0][0]


def _losses(workdir):
  return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_checkpoint_and_resume(tmp_path):
  workdir = tmp_path / "two"
  _train(workdir, 4, "--config.train.num_steps=4", processes=2)
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4]
  out = _train(workdir, 4, "--config.train.num_steps=6", processes=2)
  assert "Resuming" in out and "Trained steps 4..6" in out
  # The same global batch in one process on one device (this one: no process start-up to
  # pay for again): the same losses, logged once (the mesh test above checks FSDP and
  # tensor-parallel steps against one device).
  config, _ = cli.load_config_file("tiny_cpu")
  cli.apply_overrides(config, TRAIN_OVERRIDES + ["--config.train.num_steps=6"])
  trainer.train(config, tmp_path / "single", progress=False, log=lambda *a: None)
  two, single = _losses(workdir), _losses(tmp_path / "single")
  assert sorted(two) == sorted(single) == list(range(1, 7))
  np.testing.assert_allclose([two[s] for s in range(1, 7)], [single[s] for s in range(1, 7)],
                             rtol=1e-4)
