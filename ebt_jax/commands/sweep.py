"""`ebt sweep-inner`: a trained model's thinking under every inner optimizer.

    ebt sweep-inner --workdir runs/default --steps 1,2,4,8 [--json OUT] [--plot OUT.png]

For each inner optimizer (by default one of each registered kind, see `DEFAULT_SWEEP`;
`--optimizers` takes `name` or `name:{json kwargs}` entries) the run's model thinks with
that optimizer in place of the one it was trained with, on the same validation batches
and initial candidates, and the sweep reports perplexity after each thinking step. The
step size is the model's alpha for every optimizer (`--step-size`/`--step-size-scale`
change it for all), so differences come from the update rule alone; models are trained
with one rule, so the others run out of their training distribution, which is the
question such a sweep asks.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from ebt_jax.errors import ConfigError, check  # noqa: E402
from ebt_jax import atomic, tasks  # noqa: E402
from ebt_jax.commands import evaluation  # noqa: E402
from ebt_jax.tasks.base import per_batch  # noqa: E402
from ebt_jax.thinking import optimizers  # noqa: E402
from ebt_jax.tasks.text import perplexity  # noqa: E402
from ebt_jax.training import runs  # noqa: E402

# One variant of each registered rule; the optax entry is SGD whose learning-rate factor
# follows a cosine schedule over 8 thinking steps (schedules count thinking steps).
DEFAULT_SWEEP = (
    "gd",
    'langevin:{"noise_std": 0.01}',
    'momentum:{"beta": 0.5}',
    'nesterov:{"beta": 0.5}',
    "adam",
    'optax:{"transform": "sgd", "learning_rate": {"schedule": "cosine_decay_schedule", '
    '"init_value": 1.0, "decay_steps": 8}}',
)


def parse_optimizer(spec: str) -> tuple[str, dict]:
  """'name' or 'name:{json}' -> (name, kwargs), checked against the registry."""
  name, _, raw = spec.partition(":")
  try:
    kwargs = json.loads(raw) if raw else {}
  except json.JSONDecodeError as e:
    raise ConfigError(f"--optimizers: {spec!r}: kwargs are not JSON ({e})") from None
  check(name in optimizers.names(), "--optimizers", f"names from {optimizers.names()}",
                   name)
  check(isinstance(kwargs, dict), "--optimizers", "name:{json object}", spec)
  try:
    optimizers.make(name, **kwargs)
  except ValueError as e:
    raise ConfigError(f"--optimizers: {e}") from None
  return name, kwargs


@dataclasses.dataclass
class SweepReport:
  workdir: str
  step: int
  steps: list[int]
  ce: dict                     # optimizer spec -> [len(steps)] validation CE

  def table(self) -> str:
    label = lambda spec: spec if len(spec) <= 36 else spec[:33] + "..."
    width = max(len(label(s)) for s in self.ce) + 2
    lines = [f"Validation perplexity by inner optimizer and thinking steps "
             f"({self.workdir}, checkpoint {self.step})",
             f"{'optimizer':<{width}}" + "".join(
                 f"{str(k) + (' step' if k == 1 else ' steps'):>12}" for k in self.steps)]
    for spec, ce in self.ce.items():
      lines.append(f"{label(spec):<{width}}" + "".join(f"{perplexity(c):>12.5g}"
                                                        for c in ce))
    return "\n".join(lines)

  def as_json(self) -> dict:
    return {"workdir": self.workdir, "checkpoint_step": self.step, "results": [
        {"optimizer": spec, "thinking_steps": k, "ce": float(c), "perplexity": perplexity(c)}
        for spec, ce in self.ce.items() for k, c in zip(self.steps, ce)]}

  def plot(self, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for spec, ce in self.ce.items():
      ax.plot(self.steps, [perplexity(c) for c in ce], marker="o", label=spec[:40])
    ax.set_xscale("log", base=2)
    ax.set_xticks(self.steps, [str(k) for k in self.steps])
    ax.set_yscale("log")
    ax.set_xlabel("thinking steps")
    ax.set_ylabel("validation perplexity")
    ax.set_title("Thinking with each inner optimizer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def sweep_inner(workdir, steps, specs=DEFAULT_SWEEP, *, num_batches=None, batch_size=None,
                overrides=None, log=print) -> SweepReport:
  task, step, params = runs.restore_ebt(workdir, overrides)
  config = task.config
  parsed = [parse_optimizer(s) for s in specs]
  steps = sorted(set(steps))
  num_batches = num_batches or config.train.eval_batches
  batch_size = batch_size or config.train.batch_size
  program = runs.program_here(config)
  key = task.eval_key()
  ce = {}
  with program.context():
    batches = [program.put_global(b) for b in
               task.make_datasets().eval_batches("validation", batch_size, num_batches)]
    for spec, (name, kwargs) in zip(specs, parsed):
      log(f"thinking with {spec}")
      c = ml_collections.ConfigDict(config.to_dict())
      c.thinking.inner_optimizer = name
      c.thinking.inner_optimizer_kwargs = ml_collections.ConfigDict(kwargs)
      fn = jax.jit(lambda p, b, k, t=tasks.build(c): evaluation.cells_ce(
          p, b, k, task=t, steps_list=tuple(steps), best_of_list=(1,))[0][:, 0])
      ce[spec] = np.mean(per_batch(fn, params, batches, key), axis=0)
  return SweepReport(str(workdir), step, steps, ce)
