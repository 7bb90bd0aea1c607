"""ebt_jax/atomic.py: a failed or killed write leaves the previous file whole."""

import json
import signal
import subprocess
import sys

import matplotlib
import pytest

from ebt_jax import atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def test_write_json_replaces_and_leaves_nothing_beside(tmp_path):
  path = tmp_path / "out.json"
  atomic.write_json(path, {"b": 1, "a": [2]}, sort_keys=True)
  atomic.write_json(path, {"b": 3, "a": [4]}, sort_keys=True)
  assert path.read_text() == '{\n  "a": [\n    4\n  ],\n  "b": 3\n}\n'
  assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_an_error_mid_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "out.json"
  atomic.write_json(path, {"old": True})
  with pytest.raises(RuntimeError):
    with atomic.replacing(path) as f:
      f.write('{"new": ')
      raise RuntimeError("the writer failed half-way")
  assert json.loads(path.read_text()) == {"old": True}
  assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_killed_writer_leaves_the_old_file(tmp_path):
  path = tmp_path / "out.json"
  atomic.write_json(path, {"old": True})
  code = ("import os, signal, sys\nfrom ebt_jax import atomic\n"
          "with atomic.replacing(sys.argv[1]) as f:\n"
          "  f.write('{\"new\": ' * 10000); f.flush()\n"
          "  os.kill(os.getpid(), signal.SIGKILL)\n")
  proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True)
  assert proc.returncode == -signal.SIGKILL, proc.stderr
  assert json.loads(path.read_text()) == {"old": True}


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_save_figure_writes_the_format_its_suffix_names(tmp_path, suffix, magic):
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  path = atomic.save_figure(fig, tmp_path / f"plot{suffix}", dpi=50)
  plt.close(fig)
  assert path.read_bytes().startswith(magic)
  assert [p.name for p in tmp_path.iterdir()] == [path.name]
