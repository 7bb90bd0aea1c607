"""The training loop: `train(config, workdir)` is everything `ebt train` does.

One jitted step with donated state; the host never waits for the device to report
metrics: after dispatching step t it reads step t-1's (already finished, or nearly).
Evaluation every `train.eval_every` steps, checkpoints every `train.checkpoint_every`
steps and on SIGTERM/SIGINT, resume from the newest readable checkpoint of the workdir.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

import jax
import ml_collections
from tqdm.auto import tqdm

from ebt_jax.checkpoint.manager import Checkpointer
from ebt_jax.training import evaluate as eval_lib
from ebt_jax.training import flops as flops_lib
from ebt_jax.training import metrics as metrics_lib
from ebt_jax.training import program as program_lib
from ebt_jax.training import runs


class TrainingError(RuntimeError):
  pass


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
        lines.append(f"{split} perplexity: {eval_lib.perplexity(r['ce_steps'][0]):.5g}")
        continue
      per_step = "  ".join(f"step {k}: {eval_lib.perplexity(ce):.5g}"
                           for k, ce in enumerate(r["ce_steps"], 1))
      lines.append(f"{split} perplexity by thinking step: {per_step}")
    lines.append(f"Checkpoints: {self.workdir}/checkpoints   Metrics: {self.workdir}/"
                 f"{metrics_lib.METRICS_FILE}   Plots: ebt plot {self.workdir}")
    if self.stopped_early:
      lines.append("Stopped early on a signal; `ebt train` on this workdir resumes.")
    return "\n".join(lines)


class _StopRequest:
  """SIGTERM/SIGINT set a flag the loop checks after each step (save, then exit)."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    if self.signal is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


def train(config: ml_collections.ConfigDict, workdir, *, progress: bool = True,
          log=print) -> Summary:
  program = program_lib.build(config)   # validates the config and the mesh
  tr = config.train
  datasets = program.task.make_datasets()   # checks data paths and lengths before anything is written
  train_iter = datasets.train_iter(tr.batch_size // jax.process_count())
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  runs.save_config(config, workdir)
  say = log if jax.process_index() == 0 else (lambda *a: None)

  checkpointer = Checkpointer(workdir / "checkpoints", keep=tr.keep_checkpoints)
  restored = None
  if checkpointer.latest_step() is not None:
    restored = checkpointer.restore(program.abstract_sharded_state())
  if restored is None:
    state, start = program.init_state(), 0
  else:
    start, state, data_state = restored
    if data_state is not None:
      train_iter.set_state(data_state)
    metrics_lib.drop_records_after(workdir, start)
    say(f"Resuming {workdir} from step {start}.")

  writer = metrics_lib.MetricWriter(workdir, tensorboard=tr.tensorboard)
  reporter = _Reporter(program.task, writer, tqdm(
      total=tr.num_steps, initial=start, unit="step", dynamic_ncols=True,
      disable=not progress or jax.process_index() != 0))
  t_start = time.perf_counter()
  pending, results, step, stopped = None, {}, start, None
  try:
    with _StopRequest() as stop, program.context():
      while step < tr.num_steps:
        state, metrics = program.train_step(state, program.put_local(next(train_iter)))
        step += 1
        if pending is not None:   # step t is queued; step t-1 is done or nearly
          reporter.report(*pending)
        pending = (step, metrics)
        evaluate_now = step % tr.eval_every == 0 or step == tr.num_steps
        save_now = step % tr.checkpoint_every == 0 or step == tr.num_steps or stop.signal
        if evaluate_now or save_now:
          reporter.report(*pending)
          pending = None
          if evaluate_now:
            results = program.task.evaluate(state.params, datasets, program.eval_step,
                                            program.put_global, num_batches=tr.eval_batches)
            writer.write(step, eval_lib.as_scalars(results))
          if save_now:
            checkpointer.save(step, state, train_iter.get_state())
          reporter.restart_window()   # evaluation and saving are not training throughput
        if stop.signal:
          stopped = stop.signal
          say(f"\n{stop.signal} received: saved a checkpoint at step {step}; exiting.")
          break
      if pending is not None:
        reporter.report(*pending)
  finally:
    reporter.close()
    checkpointer.close()
    writer.close()
  wall = time.perf_counter() - t_start
  summary = Summary(str(workdir), start, step, wall, reporter.mean_tokens_per_s(),
                    reporter.last_loss, results, stopped_early=stopped is not None)
  if jax.process_index() == 0:
    log(summary.report())
  return summary


class _Reporter:
  """Reads each step's metrics (blocking on that step only), stops on NaN, logs.

  Throughput counts the time between consecutive reports, leaving out the first step
  (compilation) and whatever `restart_window` marks (evaluation, checkpointing)."""

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
