"""The training loop: `train(config, workdir)` is everything `ebt train` does.

One jitted step with donated state; the host never waits for the device to report
metrics: after dispatching step t it reads step t-1's (already finished, or nearly).
Checkpoints every `train.checkpoint_every` steps (written before that step's evaluation
starts), evaluation every `train.eval_every` steps, resume from the newest readable
checkpoint of the workdir.

The run directory has one writer: `train` holds its lock (`runs.WorkdirLock`, process 0)
from before anything is written to the end; a second `ebt train` on it stops at once
(`runs.WorkdirBusy`, a ConfigError). A fresh start where an earlier run left metrics,
events, plots or checkpoint debris but no checkpoint refuses (ConfigError) unless
`overwrite=True`, which moves those files into `previous-<time>/` first (`--overwrite`
also starts afresh beside checkpoints). On resume from step k, metrics.jsonl keeps exactly
the records of steps <= k and TensorBoard purges from k + 1 (metrics.py).

Preemption: SIGTERM and SIGINT set a flag (`_StopRequest`) that the loop checks before
each step and after it, and that evaluation checks before each batch (an evaluation due or
in progress is abandoned, its metrics unwritten). The loop then saves the last completed step
unless it is already saved, waits until every save is complete, logs the summary and raises
`Preempted`, whose `exit_code` (128 + the signal number: 143 for SIGTERM, 130 for SIGINT)
the CLI exits with. Later signals are counted, never raised: nothing interrupts that save.
(A step is never cut short: the step in flight when the signal comes completes and is the
one saved; the data iterator's state is taken after that step, so resume is exact.)

The progress bar reads "compiling" until the first step has ended, then restarts its
clock there, so its rate and ETA count training only.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from ebt_jax.checkpoint.manager import Checkpointer, CheckpointError
from ebt_jax.errors import ConfigError
from ebt_jax.training import evaluate as eval_lib
from ebt_jax.tasks.text import perplexity
from ebt_jax.training import flops as flops_lib
from ebt_jax.training import metrics as metrics_lib
from ebt_jax.training import program as program_lib
from ebt_jax.training import runs


class TrainingError(RuntimeError):
  pass


class Preempted(TrainingError):
  """SIGTERM/SIGINT stopped the run once its last completed step was checkpointed.

  `exit_code` is what schedulers expect of a process a signal stopped: 128 + its number
  (143 for SIGTERM, 130 for SIGINT). `summary` is the run's `Summary`, already logged."""

  def __init__(self, signal_name: str, message: str, summary: "Summary"):
    super().__init__(message)
    self.signal, self.summary = signal_name, summary
    self.exit_code = 128 + int(signal.Signals[signal_name])


@dataclasses.dataclass
class Summary:
  workdir: str
  start_step: int
  final_step: int
  wall_s: float
  tokens_per_s: float
  final_train_loss: float | None
  eval: dict
  stopped_early: bool = False
  stop_signal: str | None = None

  def report(self) -> str:
    lines = [f"Trained steps {self.start_step}..{self.final_step} in {self.wall_s:.0f} s "
             f"({self.tokens_per_s:,.0f} tokens/s while training)."]
    if self.final_train_loss is not None:
      lines.append(f"Final train loss: {self.final_train_loss:.4f}")
    lines += eval_lib.report_lines(self.eval)
    for split, r in self.eval.items():
      if "ce_steps" not in r:
        continue
      if len(r["ce_steps"]) == 1 and "energy_steps" not in r:   # the Transformer++ baseline
        lines.append(f"{split} perplexity: {perplexity(r['ce_steps'][0]):.5g}")
        continue
      per_step = "  ".join(f"step {k}: {perplexity(ce):.5g}"
                           for k, ce in enumerate(r["ce_steps"], 1))
      lines.append(f"{split} perplexity by thinking step: {per_step}")
    lines.append(f"Checkpoints: {self.workdir}/checkpoints   Metrics: {self.workdir}/"
                 f"{metrics_lib.METRICS_FILE}   Plots: ebt plot {self.workdir}")
    if self.stopped_early:
      lines.append(f"Stopped early by {self.stop_signal or 'a signal'}; `ebt train` on this "
                   f"workdir resumes.")
    return "\n".join(lines)


class _Abandoned(Exception):
  """Raised between evaluation batches once a stop was requested."""


class _StopRequest:
  """SIGTERM/SIGINT set a flag that the loop checks before and after each step and that
  evaluation checks between batches (`checked`). Only the first signal counts; later ones
  are counted and otherwise ignored, so they cannot interrupt the save that follows."""

  def __init__(self):
    self.signal = None
    self.count = 0
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    self.count += 1
    if self.signal is None:
      self.signal = signal.Signals(signum).name

  def checked(self, fn):
    """`fn` that raises `_Abandoned` instead of running once a stop was requested."""

    def call(*args, **kwargs):
      if self.signal is not None:
        raise _Abandoned
      return fn(*args, **kwargs)

    return call

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


def _agree(flag: bool) -> bool:
  """Process 0's `flag` on every process (what only process 0 can know)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def train(config: ml_collections.ConfigDict, workdir, *, progress: bool = True,
          log=print, overwrite: bool = False) -> Summary:
  """Trains (or resumes) the run in `workdir`; raises `Preempted` after a signal.

  `overwrite`: start from step 0 even where the workdir holds an earlier run, moving its
  files (config, metrics, checkpoints, events, plots) into `previous-<UTC time>/`."""
  program = program_lib.build(config)   # validates the config and the mesh
  datasets = program.task.make_datasets()   # checks data paths and lengths before anything is written
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  lock = runs.WorkdirLock(workdir)
  if not _agree(jax.process_index() != 0 or lock.acquire()):
    raise lock.busy_error() if jax.process_index() == 0 else runs.WorkdirBusy(
        f"--workdir: {workdir} is in use by another `ebt train` (see process 0)")
  try:
    return _train(program, datasets, workdir, progress=progress, log=log, overwrite=overwrite)
  finally:
    lock.release()


def _train(program, datasets, workdir: Path, *, progress, log, overwrite) -> Summary:
  config = program.config
  tr = config.train
  say = log if jax.process_index() == 0 else (lambda *a: None)
  train_iter = datasets.train_iter(tr.batch_size // jax.process_count())
  if overwrite:
    moved = runs.move_aside(workdir) if jax.process_index() == 0 else None
    _barrier("ebt_jax run files moved aside")
    if moved is not None:
      say(f"Moved the earlier run's files in {workdir} to {moved}.")

  checkpointer = Checkpointer(workdir / "checkpoints", keep=tr.keep_checkpoints)
  try:
    if checkpointer.latest_step() is None and (earlier := runs.earlier_run_files(workdir)):
      raise ConfigError(
          f"--workdir: {workdir} holds an earlier run's {', '.join(earlier)} but no checkpoint "
          f"to resume from; --overwrite starts afresh, moving them to {workdir}/previous-<time>/")
    runs.save_config(config, workdir)
    restored = None
    if checkpointer.latest_step() is not None:
      try:
        restored = checkpointer.restore(program.abstract_sharded_state())
      except CheckpointError as e:
        raise CheckpointError(f"{e}; --overwrite starts afresh, moving the run's files to "
                              f"{workdir}/previous-<time>/") from None
  except BaseException:
    checkpointer.close()
    raise
  if restored is None:
    state, start = program.init_state(), 0
  else:
    start, state, data_state = restored
    if data_state is not None:
      train_iter.set_state(data_state)
    metrics_lib.drop_records_after(workdir, start)
    say(f"Resuming {workdir} from step {start}.")

  writer = metrics_lib.MetricWriter(workdir, tensorboard=tr.tensorboard,
                                    purge_step=start + 1 if restored is not None else None)
  reporter = _Reporter(program.task, writer, tqdm(
      total=tr.num_steps, initial=start, unit="step", dynamic_ncols=True, desc="compiling",
      disable=not progress or jax.process_index() != 0))
  t_start = time.perf_counter()
  pending, results, step = None, {}, start
  saved = start if restored is not None else None   # the newest step whose save was started
  abandoned = None                                  # the step whose evaluation a signal cut
  stop = _StopRequest()
  try:
    with stop, program.context():
      while step < tr.num_steps and stop.signal is None:
        state, metrics = program.train_step(state, program.put_local(next(train_iter)))
        step += 1
        if pending is not None:   # step t is queued; step t-1 is done or nearly
          reporter.report(*pending)
        pending = (step, metrics)
        evaluate_now = step % tr.eval_every == 0 or step == tr.num_steps
        save_now = step % tr.checkpoint_every == 0 or step == tr.num_steps
        if not (evaluate_now or save_now or stop.signal):
          continue
        reporter.report(*pending)   # the NaN guard runs before any save
        pending = None
        if save_now or stop.signal:
          checkpointer.save(step, state, train_iter.get_state())
          saved = step
        if evaluate_now:
          try:
            results = program.task.evaluate(
                state.params, datasets, stop.checked(program.eval_step),
                stop.checked(program.put_global), num_batches=tr.eval_batches)
          except _Abandoned:   # a signal came before or during it
            abandoned = step
          else:
            writer.write(step, eval_lib.as_scalars(results))
        reporter.restart_window()   # evaluation and saving are not training throughput
      if pending is not None:
        reporter.report(*pending)
      if stop.signal is not None and step > start and saved != step:
        checkpointer.save(step, state, train_iter.get_state())   # a signal during evaluation
        saved = step
      checkpointer.wait()   # every save complete before anything says so
  finally:
    reporter.close()
    checkpointer.close()
    writer.close()
  wall = time.perf_counter() - t_start
  summary = Summary(str(workdir), start, step, wall, reporter.mean_tokens_per_s(),
                    reporter.last_loss, results, stopped_early=stop.signal is not None,
                    stop_signal=stop.signal)
  if jax.process_index() == 0:
    log(summary.report())
  if stop.signal is not None:
    raise _preempted(stop, summary, saved, abandoned)
  return summary


def _preempted(stop: _StopRequest, summary: Summary, saved: int | None,
               abandoned: int | None) -> Preempted:
  if saved is None:
    what = "no step had completed, so there is no checkpoint"
  elif saved == summary.start_step:
    what = f"no step had completed since step {saved}, whose checkpoint stands"
  else:
    what = f"saved a checkpoint at step {saved}, the last completed step"
  if abandoned is not None:
    what = f"abandoned the evaluation at step {abandoned} and {what}"
  later = stop.count - 1
  if later:
    what += f" ({later} more signal{'s' if later > 1 else ''} ignored while stopping)"
  return Preempted(stop.signal, f"{stop.signal} received: {what}", summary)


class _Reporter:
  """Reads each step's metrics (blocking on that step only), stops on NaN, logs.

  Throughput counts the time between consecutive reports, leaving out the first step
  (compilation) and whatever `restart_window` marks (evaluation, checkpointing). The bar
  says "compiling" until the first report and then restarts its clock (`_clock_from_here`)."""

  def __init__(self, task, writer, bar):
    config = task.config
    self.tr, self.writer, self.bar = config.train, writer, bar
    # Transformer tokens: text tokens, image patches, or frames of a latent sequence.
    self.tokens_per_step = config.train.batch_size * task.tokens_per_example()
    self.flops_per_step = task.flops(config.train.batch_size)
    self.peak = flops_lib.device_peak_flops(config)
    self.last_loss = None
    self._prev = None                     # (time, step) of the previous report
    self._time, self._steps = 0.0, 0      # training time and steps counted so far
    self._log_mark = (0.0, 0)             # (_time, _steps) at the last log line

  def report(self, step: int, metrics) -> None:
    m = jax.device_get(metrics)
    if not bool(m["finite"]):
      raise TrainingError(
          f"step {step}: the loss or gradients are NaN/Inf (loss={float(m['loss'])}); that "
          f"update was not applied and no checkpoint holds it. Lower optimizer.peak_lr or "
          f"thinking.step_size, then resume from the last good checkpoint")
    self.last_loss = float(m["loss"])
    if self._prev is None:   # the first step (and its compilation) has ended
      _clock_from_here(self.bar, step)
    else:
      self.bar.update(step - self.bar.n)
    now = time.perf_counter()
    if self._prev is not None:
      self._time += now - self._prev[0]
      self._steps += step - self._prev[1]
    self._prev = (now, step)
    if step % self.tr.log_every:
      return
    scalars = {f"train/{k}": v for k, v in m.items() if k != "finite"}
    window_time, window_steps = self._time - self._log_mark[0], self._steps - self._log_mark[1]
    if window_steps:
      steps_per_s = window_steps / max(window_time, 1e-9)
      scalars["train/tokens_per_s"] = steps_per_s * self.tokens_per_step
      if self.peak:
        scalars["train/mfu"] = steps_per_s * self.flops_per_step / self.peak
      self.bar.set_postfix(loss=f"{self.last_loss:.4f}",
                           tok_s=f"{scalars['train/tokens_per_s']:,.0f}")
    self.writer.write(step, scalars)
    self._log_mark = (self._time, self._steps)

  def restart_window(self) -> None:
    if self._prev is not None:
      self._prev = (time.perf_counter(), self._prev[1])

  def mean_tokens_per_s(self) -> float:
    """Training throughput over the whole run (no compile, eval or checkpoint time)."""
    return self._steps * self.tokens_per_step / max(self._time, 1e-9)

  def close(self) -> None:
    self.bar.close()


def _clock_from_here(bar, n: int) -> None:
  """Moves the bar to `n` and makes that its starting point (count and clock), with the
  "compiling" description gone, so its rate and ETA leave compilation out. No update was
  counted before, so the rate's moving averages hold nothing to forget."""
  bar.n = bar.last_print_n = bar.initial = n
  if bar.disable:
    return
  bar.start_t = bar.last_print_t = bar._time()
  bar.set_description_str("")   # and redraw
