"""A run directory under faults: corrupted checkpoints, signals at any moment, a second
writer, a resume after a crash, a fresh start over an earlier run, the progress bar."""

import gc
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from tqdm.auto import tqdm

import ebt_jax
from ebt_jax.checkpoint.manager import CheckpointError, Checkpointer, CheckpointWarning
from ebt_jax.data import iterators
from ebt_jax.training import metrics as metrics_lib
from ebt_jax.training import program as program_lib
from ebt_jax.training import runs, trainer
from ebt_jax.training.metrics import read_metrics
from conftest import run_config

quiet = dict(progress=False, log=lambda *a: None)


def _config(**train):
  return run_config(**{"num_steps": 4, "checkpoint_every": 2, "eval_every": 2, **train})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Four steps, checkpoints and evaluations at 2 and 4; tests work on copies."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  trainer.train(_config(tensorboard=True), workdir, **quiet)
  return workdir


def _copy(trained, tmp_path) -> Path:
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  return workdir


def _one_history(workdir, last: int, evals) -> None:
  """Exactly one train record for each step 1..last and one evaluation at each of `evals`."""
  records = read_metrics(workdir)
  assert [r["step"] for r in records if "train/loss" in r] == list(range(1, last + 1))
  assert [r["step"] for r in records if "eval/perplexity" in r] == list(evals)
  assert all(r.get("train/loss") != 999.0 for r in records)


def _steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _moved_aside(workdir) -> list[str]:
  return sorted(p.name for p in (workdir / "checkpoints").iterdir() if ".corrupt-" in p.name)


# --- 1. A corrupted checkpoint is moved aside, saved again, and never read again ----------

@pytest.mark.slow
def test_corrupted_newest_checkpoint_is_moved_aside_then_saved_again(trained, tmp_path,
                                                                      monkeypatch):
  workdir = _copy(trained, tmp_path)
  rng = np.random.default_rng(0)
  for f in (workdir / "checkpoints" / "4").rglob("d/*"):   # random bytes in every data file
    f.write_bytes(rng.bytes(f.stat().st_size))
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  with pytest.warns(CheckpointWarning) as caught:
    summary = trainer.train(_config(num_steps=6), workdir, **quiet)
  messages = [str(w.message) for w in caught if w.category is CheckpointWarning]
  ckpts = workdir / "checkpoints"
  assert len(messages) == 1 and "\n" not in messages[0], messages
  assert messages[0].startswith(f"checkpoint step 4 in {ckpts} is unreadable or corrupted")
  moved = _moved_aside(workdir)
  assert len(moved) == 1 and moved[0].startswith("4.corrupt-")
  assert messages[0].endswith(
      f"; moved {ckpts / '4'} to {ckpts / moved[0]}; falling back to step 2")
  shown = warnings.formatwarning(caught[0].message, caught[0].category, caught[0].filename,
                                 caught[0].lineno)
  assert shown.count("\n") == 1   # one line on stderr, no echo of a source line
  # Resumed from 2, saved 4 again (Orbax's StepAlreadyExistsError before), went on to 6.
  assert (summary.start_step, summary.final_step) == (2, 6)
  assert _steps(workdir) == [2, 4, 6]
  _one_history(workdir, 6, [2, 4, 6])
  time.sleep(0.5)   # the reads left in flight by the failed restore have finished by now
  gc.collect()      # and what they left is collected
  assert not unraisable, [(str(u.exc_value), u.object) for u in unraisable]
  # `ebt eval`/`think`/`generate` (runs.restore_params) read step 6, silently.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert runs.restore_params(workdir)[1] == 6


def test_readers_move_a_corrupted_checkpoint_aside_unless_a_trainer_writes(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  for f in (workdir / "checkpoints" / "4").rglob("d/*"):
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2])
  with runs.WorkdirLock(workdir):   # a trainer is writing the run: skip, leave it in place
    with pytest.warns(CheckpointWarning, match="step 4 .* falling back to step 2 .*left in place"):
      assert runs.restore_params(workdir)[1] == 2
  assert _steps(workdir) == [2, 4] and not _moved_aside(workdir)
  with pytest.warns(CheckpointWarning, match=r"step 4 .*; moved .*4\.corrupt-"):
    assert runs.restore_params(workdir)[1] == 2
  assert _steps(workdir) == [2] and len(_moved_aside(workdir)) == 1
  with warnings.catch_warnings():   # the next `ebt eval` neither reads nor warns about it
    warnings.simplefilter("error")
    assert runs.restore_params(workdir)[1] == 2


def test_a_config_that_no_longer_matches_moves_nothing(trained, tmp_path):
  """Every step fails alike: the request is at fault, not the checkpoints."""
  workdir = _copy(trained, tmp_path)
  c = _config()
  c.model.dim = 32
  ckpt = Checkpointer(workdir / "checkpoints")
  with pytest.warns(CheckpointWarning, match="no older checkpoint could be read either"):
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
      ckpt.restore(program_lib.build(c).abstract_sharded_state())
  ckpt.close()
  assert _steps(workdir) == [2, 4] and not _moved_aside(workdir)


# --- 2. Preemption at any moment -----------------------------------------------------------

def _signal_at(monkeypatch, owner, name, sig, when, times=1):
  """Patches `owner.name` so that its call for which `when(*args)` holds first sends this
  process `sig` `times` times (the handler runs in this thread before the call goes on)."""
  original = getattr(owner, name)
  sent = []

  def patched(*args, **kwargs):
    if not sent and when(*args):
      sent.append(True)
      for _ in range(times):
        os.kill(os.getpid(), sig)
    return original(*args, **kwargs)

  monkeypatch.setattr(owner, name, patched)


@pytest.mark.slow
def test_signals_during_a_checkpoint_write_save_it_once_then_exit_143(trained, tmp_path,
                                                                       monkeypatch):
  workdir = _copy(trained, tmp_path)
  _signal_at(monkeypatch, Checkpointer, "save", signal.SIGTERM,
             lambda self, step, *a: step == 6, times=2)
  with pytest.raises(trainer.Preempted) as info:
    trainer.train(_config(num_steps=10), workdir, **quiet)
  assert info.value.exit_code == 143 and info.value.signal == "SIGTERM"
  assert str(info.value) == ("SIGTERM received: abandoned the evaluation at step 6 and saved a "
                             "checkpoint at step 6, the last completed step (1 more signal "
                             "ignored while stopping)")
  assert info.value.summary.final_step == 6 and info.value.summary.stopped_early
  monkeypatch.undo()
  assert _steps(workdir) == [2, 4, 6]
  ckpt = Checkpointer(workdir / "checkpoints")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    step, _, data_state = ckpt.restore(program_lib.build(_config()).abstract_sharded_state())
  ckpt.close()
  assert step == 6 and data_state["step"] == 6   # complete, and the iterator past step 6 only
  _one_history(workdir, 6, [2, 4])   # the evaluation due at 6 was not started
  summary = trainer.train(_config(num_steps=8), workdir, **quiet)
  assert (summary.start_step, summary.final_step) == (6, 8)
  _one_history(workdir, 8, [2, 4, 8])


def test_sigint_while_loading_data_saves_that_step_and_exits_130(trained, tmp_path, monkeypatch):
  workdir = _copy(trained, tmp_path)
  # The batch of step 5 is being read: step 5 still trains on it, and is the one saved.
  _signal_at(monkeypatch, iterators.StepBatches, "__next__", signal.SIGINT,
             lambda self: self.get_state()["step"] == 4)
  with pytest.raises(trainer.Preempted) as info:
    trainer.train(_config(num_steps=10), workdir, **quiet)
  assert info.value.exit_code == 130
  assert "saved a checkpoint at step 5, the last completed step" in str(info.value)
  assert _steps(workdir) == [2, 4, 5]
  _one_history(workdir, 5, [2, 4])


def _cli(*args):
  return [sys.executable, "-m", "ebt_jax.cli", *args]


def _write_config(path: Path, c) -> Path:
  path.write_text("import json\nimport ml_collections\n\n"
                  f"def get_config():\n  return ml_collections.ConfigDict(json.loads({c.to_json()!r}))\n")
  return path


@pytest.mark.slow
def test_sigterm_during_evaluation_saves_and_exits_143_and_a_second_writer_stops(tmp_path):
  # An evaluation of thousands of batches (seconds) after every fourth step; no periodic
  # checkpoints, so the only one is what the signal saves.
  c = run_config(num_steps=10_000, eval_every=4, eval_batches=4000, checkpoint_every=10_000)
  cfg = _write_config(tmp_path / "cfg.py", c)
  workdir = tmp_path / "run"
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  with open(tmp_path / "first.out", "w") as out:
    first = subprocess.Popen(_cli("train", "--config", str(cfg), "--workdir", str(workdir),
                                  "--no-progress"), stdout=out, stderr=subprocess.STDOUT, env=env)
  try:
    deadline = time.time() + 300
    lock = workdir / runs.LOCK_FILE
    while time.time() < deadline and first.poll() is None and not (
        lock.exists() and lock.read_text().startswith(f"{first.pid} ")):
      time.sleep(0.1)
    # 3. A second writer on the same run directory stops at once, naming the first.
    second = subprocess.run(_cli("train", "--config", str(cfg), "--workdir", str(workdir),
                                 "--no-progress"), capture_output=True, text=True, env=env)
    assert second.returncode == 2, second.stderr[-3000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"PID {first.pid} on {socket.gethostname()}" in lines[0], lines
    # Wait until the first is evaluating: step m (a multiple of 4) logged, its evaluation not.
    in_eval = None
    while time.time() < deadline and first.poll() is None and in_eval is None:
      records = read_metrics(workdir)
      trained_to = max([r["step"] for r in records if "train/loss" in r], default=0)
      evaluated = {r["step"] for r in records if "eval/perplexity" in r}
      if trained_to and trained_to % 4 == 0 and trained_to not in evaluated:
        time.sleep(1.0)   # past the (asynchronous) save's start, well inside the evaluation
        records = read_metrics(workdir)
        if (max(r["step"] for r in records if "train/loss" in r) == trained_to
            and trained_to not in {r["step"] for r in records if "eval/perplexity" in r}):
          in_eval = trained_to
      time.sleep(0.05)
    assert in_eval, (tmp_path / "first.out").read_text()[-3000:]
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
  finally:
    if first.poll() is None:
      first.kill()
  output = (tmp_path / "first.out").read_text()
  assert first.returncode == 143, output[-3000:]
  assert (f"ebt train: SIGTERM received: abandoned the evaluation at step {in_eval} and saved a "
          f"checkpoint at step {in_eval}, the last completed step\n") in output
  assert _steps(workdir) == [in_eval]
  _one_history(workdir, in_eval, range(4, in_eval, 4))   # no record of the abandoned evaluation
  # Resumed in this process: the signal is what the subprocess is for.
  said = []
  c.train.update(num_steps=in_eval + 2, eval_batches=1)
  assert trainer.train(c, workdir, progress=False, log=said.append).start_step == in_eval
  assert f"Resuming {workdir} from step {in_eval}." in said
  _one_history(workdir, in_eval + 2, [*range(4, in_eval, 4), in_eval + 2])


# --- 3. One writer per run directory -------------------------------------------------------

def test_a_second_trainer_on_a_locked_workdir_stops_at_once(tmp_path):
  with runs.WorkdirLock(tmp_path):
    with pytest.raises(runs.WorkdirBusy) as info:
      trainer.train(_config(), tmp_path, **quiet)
  message = str(info.value)
  assert "\n" not in message and isinstance(info.value, ebt_jax.errors.ConfigError)
  holder = f"(PID {os.getpid()} on {socket.gethostname()})"
  assert f"is in use by another `ebt train` {holder}" in message
  assert sorted(p.name for p in tmp_path.iterdir()) == [runs.LOCK_FILE]   # nothing written
  with runs.WorkdirLock(tmp_path):   # released by the failed trainer's end, and by ours
    pass


# --- 4. One history ------------------------------------------------------------------------

def _tensorboard_purges(workdir) -> list[int]:
  """Steps of the SessionLog.START events (what `purge_step` writes) in the event files."""
  from tensorboardX.proto import event_pb2
  starts = []
  for f in sorted((workdir / "tensorboard").glob("events.out.tfevents*")):
    data = f.read_bytes()
    i = 0
    while i + 12 <= len(data):
      (length,) = np.frombuffer(data[i:i + 8], "<u8")
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + int(length)])
      i += 12 + int(length) + 4
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        starts.append(event.step)
  return starts


def test_resume_after_a_crash_keeps_one_history(trained, tmp_path, monkeypatch):
  workdir = _copy(trained, tmp_path)
  # A crash after step 7 of an attempt whose newest checkpoint is step 4: stale records past
  # it, train and evaluation, and a torn last line.
  with open(workdir / metrics_lib.METRICS_FILE, "a") as f:
    for step in (5, 6, 7):
      f.write(json.dumps({"step": step, "train/loss": 999.0}) + "\n")
    f.write(json.dumps({"step": 6, "eval/perplexity": 999.0, "eval/ce_step_2": 999.0}) + "\n")
    f.write('{"step": 8, "train/lo')
  bars = []

  def bar(**kwargs):   # the progress bar, into a buffer, kept for the checks below
    bars.append(tqdm(**kwargs, file=io.StringIO()))
    bars[-1].seen = [(bars[-1].n, bars[-1].desc)]
    return bars[-1]

  monkeypatch.setattr(trainer, "tqdm", bar)
  summary = trainer.train(_config(num_steps=6, tensorboard=True), workdir, progress=True,
                          log=lambda *a: None)
  assert summary.start_step == 4
  _one_history(workdir, 6, [2, 4, 6])
  assert _tensorboard_purges(workdir) == [5]   # TensorBoard hides the earlier events from 5 on
  # 5. The bar said "compiling" until the first step ended, then counted from there.
  (b,) = bars
  assert b.seen[0] == (4, "compiling")
  assert b.desc == "" and b.initial == 5 and b.n == 6


@pytest.mark.slow
def test_fresh_start_over_an_earlier_run_refuses_then_overwrite_moves_it_aside(trained,
                                                                               tmp_path):
  workdir = _copy(trained, tmp_path)
  shutil.rmtree(workdir / "checkpoints")   # an earlier run's metrics and events, no checkpoint
  before = (workdir / metrics_lib.METRICS_FILE).read_text()
  with pytest.raises(ebt_jax.errors.ConfigError) as info:
    trainer.train(_config(num_steps=2), workdir, **quiet)
  message = str(info.value)
  assert "\n" not in message and "metrics.jsonl, tensorboard/" in message
  assert "no checkpoint to resume from; --overwrite starts afresh" in message
  assert (workdir / metrics_lib.METRICS_FILE).read_text() == before
  summary = trainer.train(_config(num_steps=2), workdir, overwrite=True, **quiet)
  assert summary.start_step == 0
  (previous,) = workdir.glob("previous-*")
  assert (previous / metrics_lib.METRICS_FILE).read_text() == before
  assert (previous / "config.json").exists() and (previous / "tensorboard").is_dir()
  _one_history(workdir, 2, [2])


def test_history_keeps_the_last_attempt_and_plots_draw_it():
  first = [{"step": s, "train/loss": 10.0 - s} for s in range(1, 7)]
  first.append({"step": 6, "eval/perplexity": 3.0})
  second = [{"step": s, "train/loss": 100.0 + s} for s in range(1, 4)]
  assert metrics_lib.history(first + second) == second        # a fresh start appended
  resumed = [{"step": s, "train/loss": 50.0 + s} for s in (4, 5)]
  assert metrics_lib.history(first + resumed) == first[:3] + resumed   # resumed from step 3
  from ebt_jax.training import plots
  steps, loss = plots._series(metrics_lib.history(first + second), "train/loss")
  assert list(steps) == [1, 2, 3] and list(loss) == [101.0, 102.0, 103.0]
