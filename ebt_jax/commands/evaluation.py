"""`ebt eval`: System 2 tables of a trained text EBT, with a Transformer++ baseline beside.

For every dataset (validation, then each OOD suite) and every (thinking steps N, best-of
n) cell: the mean next-token cross-entropy and perplexity of the candidate chosen among
n after thinking with `inference.thinking_steps` = N, counted as `inference.step_count`
says (system2.py: per landscape by default, as the official `infer_ebt_num_steps`). Each
cell also says what it cost: energy evaluations (forward + gradient) per token, steps x n.
Rows whose steps are the first steps of the longest row's run (every row of a `default`
EBT or with step_count "total"/"final_landscape") and all best-of columns come from that
one run (see `system2.table_ce`); other rows think on their own.

Adaptive compute (`stop_thresholds`): the same model with per-position stopping up to
max(k) steps; each row reports the steps used per token and the compute saved against
the fewest fixed steps that reach the same perplexity (thinking steps being the unit of
compute: each is one forward and one backward pass of the prediction stream).

Evaluation is deterministic: the same fixed key as training's evaluation, so the k-step,
best-of-1 column equals training's `eval/ce_step_k` (tested).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ebt_jax import tasks
from ebt_jax.errors import ConfigError, check
from ebt_jax.inference import system2
from ebt_jax.tasks.base import per_batch
from ebt_jax.tasks import text
from ebt_jax.tasks.text import perplexity
from ebt_jax.training import runs


@dataclasses.dataclass
class System2Report:
  workdir: str
  step: int
  thinking_steps: list[int]
  best_of: list[int]
  ce: dict                     # dataset -> [len(thinking_steps), len(best_of)]
  fixed_ce: dict               # dataset -> [max(k)] CE after each step, best of 1
  adaptive: list[dict]         # rows of the adaptive-compute table
  baseline: dict | None = None  # {"workdir", "step", "ce": {dataset: ce}}
  step_count: str = "per_landscape"   # how thinking steps N count (inference.step_count)
  evaluations: dict = dataclasses.field(default_factory=dict)  # N -> energy evaluations
                               # (forward + gradient) per token at best of 1

  def rows(self) -> list[dict]:
    out = []
    for dataset, ce in self.ce.items():
      for i, k in enumerate(self.thinking_steps):
        for j, n in enumerate(self.best_of):
          row = {"dataset": dataset, "thinking_steps": k, "best_of": n, "ce": float(ce[i][j]),
                 "perplexity": perplexity(ce[i][j]), "step_count": self.step_count,
                 "energy_evaluations": self.evaluations.get(k, 0) * n}
          if self.baseline:
            row["baseline_perplexity"] = perplexity(self.baseline["ce"][dataset])
          out.append(row)
    return out

  def table(self) -> str:
    unit = {"per_landscape": " per landscape", "final_landscape": " on the final landscape",
            "total": ""}[self.step_count]
    lines = [f"Perplexity of {self.workdir} (checkpoint {self.step}): rows thinking steps"
             f"{unit}, columns best-of-N; [energy evaluations (forward + gradient) per token]"]
    for dataset, ce in self.ce.items():
      header = f"  {dataset:<20}" + "".join(f"{'N=' + str(n):>16}" for n in self.best_of)
      if self.baseline:
        header += f"{'Transformer++':>15}"
      lines += ["", header]
      for i, k in enumerate(self.thinking_steps):
        line = f"  {str(k) + (' step' if k == 1 else ' steps'):<20}" + "".join(
            f"{perplexity(c):>11.5g}{self._cost(k, n):>5}"
            for c, n in zip(ce[i], self.best_of))
        if self.baseline:
          line += f"{perplexity(self.baseline['ce'][dataset]):>15.5g}"
        lines.append(line)
    if self.adaptive:
      lines += ["", "Adaptive compute (per-token stopping, best of 1). 'fixed steps': the "
                "fewest fixed steps reaching the same perplexity ('-': none does); 'saved': "
                "thinking steps saved against those, and against always taking the most:",
                f"  {'dataset':<20}{'threshold':>10}{'steps/token':>13}{'perplexity':>12}"
                f"{'fixed steps':>13}{'saved':>8}{'vs max':>8}"]
      for r in self.adaptive:
        saved = "-" if r["compute_saved"] is None else f"{100 * r['compute_saved']:.0f}%"
        fixed = "-" if r["fixed_steps_equal_perplexity"] is None else \
            str(r["fixed_steps_equal_perplexity"])
        lines.append(f"  {r['dataset']:<20}{r['threshold']:>10.3g}{r['mean_steps']:>13.3f}"
                     f"{r['perplexity']:>12.5g}{fixed:>13}{saved:>8}"
                     f"{100 * (1 - r['mean_steps'] / r['max_steps']):>7.0f}%")
    return "\n".join(lines)

  def _cost(self, k: int, n: int) -> str:
    return f"[{self.evaluations[k] * n}]" if k in self.evaluations else ""

  def as_json(self) -> dict:
    out = {"workdir": self.workdir, "checkpoint_step": self.step, "results": self.rows(),
           "ce_after_each_step": {d: [float(c) for c in ce] for d, ce in self.fixed_ce.items()},
           "adaptive": self.adaptive}
    if self.baseline:
      out["baseline"] = {"workdir": self.baseline["workdir"], "checkpoint_step": self.baseline["step"],
                         "results": [{"dataset": d, "ce": float(c),
                                      "perplexity": perplexity(c)}
                                     for d, c in self.baseline["ce"].items()]}
    return out


def cells_ce(params, tokens, key, *, task, steps_list, best_of_list, mask_BxS=None):
  """(CE [len(steps_list), len(best_of_list)] of a batch [B, S+1], CE after every step of
  the longest row's run with best of 1): one run for the rows it answers, one per other row."""
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  # Downstream answers pass their own mask (only answer tokens scored).
  mask = task.target_mask(targets) if mask_BxS is None else mask_BxS
  select = task.config.inference.select
  longest = max(steps_list)
  run = lambda n: system2.think_tokens(params, inputs, task, key, steps=n,
                                       best_of=max(best_of_list), targets_BxS=targets)
  thought = run(longest)
  rows = {}
  for n in steps_list:
    own = thought if system2.shares_run(task, n, longest) else run(n)
    rows[n] = system2.table_ce(own, mask, [system2.total_steps(task, n)], best_of_list,
                               select)[0]
  every_step = range(1, system2.total_steps(task, longest) + 1)
  return (jnp.stack([rows[n] for n in steps_list]),
          system2.table_ce(thought, mask, every_step, [1], select)[:, 0])


def _adaptive(params, tokens, key, *, task, steps):
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  thought = system2.think_tokens(params, inputs, task, key, steps=steps, best_of=1,
                                 trajectory=False)
  mask = task.target_mask(targets)
  return (text.masked_mean(text.token_nll(thought.logits, targets), mask),
          text.masked_mean(thought.steps_used.astype(np.float32), mask))


def _fewest_fixed_steps(fixed_ce, ce) -> int | None:
  for k, c in enumerate(fixed_ce, start=1):
    if c <= ce:
      return k
  return None


def evaluate_system2(workdir, *, thinking_steps=None, best_of=(1,), baseline=None,
                     stop_thresholds=(), num_batches: int | None = None,
                     batch_size: int | None = None, overrides=None,
                     log=print) -> System2Report:
  """The System 2 report of a run directory's newest checkpoint.

  `overrides(config)` may edit the restored config's `inference` section (CLI flags).
  """
  task, step, params = runs.restore_ebt(workdir, overrides)
  config = task.config
  steps_list = sorted(set(thinking_steps or range(1, system2.num_steps(task) + 1)))
  best_of = sorted(set(best_of))
  for name, values in (("--thinking-steps", steps_list), ("--best-of", best_of)):
    check(all(isinstance(v, int) and v >= 1 for v in values), name,
                     "positive integers", values)
  num_batches = num_batches or config.train.eval_batches
  batch_size = batch_size or config.train.batch_size
  program = runs.program_here(config)
  datasets = task.make_datasets()
  base = baseline_params(baseline, config) if baseline else None
  key = task.eval_key()
  cells_fn = jax.jit(functools.partial(cells_ce, task=task, steps_list=tuple(steps_list),
                                       best_of_list=tuple(best_of)))
  adaptive_fns = {}
  for threshold in stop_thresholds:
    c = ml_collections.ConfigDict(config.to_dict())
    c.inference.stop_threshold = float(threshold)
    if c.inference.stop_on == "none":
      c.inference.stop_on = "energy"
    adaptive_fns[threshold] = (c.inference.stop_on, jax.jit(
        functools.partial(_adaptive, task=tasks.build(c), steps=max(steps_list))))
  evaluations = {n: system2.energy_evaluations(task, n) for n in steps_list}
  ce, fixed_ce, base_ce, adaptive_rows = {}, {}, {}, []
  with program.context():
    for split in datasets.eval_splits:
      most = system2.total_steps(task, max(steps_list))
      log(f"evaluating {split}: {num_batches} batches of {batch_size}, up to "
          f"{most} step{'s' * (most != 1)} x best of {max(best_of)}")
      batches = [program.put_global(b)
                 for b in datasets.eval_batches(split, batch_size, num_batches)]
      cells = per_batch(cells_fn, params, batches, key)
      ce[split] = np.mean([c for c, _ in cells], axis=0)
      fixed_ce[split] = np.mean([f for _, f in cells], axis=0)
      for threshold, (stop_on, fn) in adaptive_fns.items():
        out = per_batch(fn, params, batches, key)
        a_ce, steps = (float(np.mean(v)) for v in zip(*out))
        fixed = _fewest_fixed_steps(fixed_ce[split], a_ce)
        adaptive_rows.append({
            "dataset": split, "stop_on": stop_on, "threshold": float(threshold),
            "max_steps": system2.total_steps(task, max(steps_list)), "mean_steps": steps,
            "ce": a_ce,
            "perplexity": perplexity(a_ce), "fixed_steps_equal_perplexity": fixed,
            "compute_saved": None if fixed is None else 1 - steps / fixed})
      if base:
        base_ce[split] = float(np.mean([jax.device_get(base["fn"](base["params"], b))
                                        for b in batches]))
  baseline_report = None if not base else {"workdir": str(baseline), "step": base["step"],
                                           "ce": base_ce}
  return System2Report(str(workdir), step, steps_list, best_of, ce, fixed_ce, adaptive_rows,
                       baseline_report, config.inference.step_count, evaluations)


def baseline_params(workdir, config: ml_collections.ConfigDict) -> dict:
  """The baseline's parameters, CE function and task; it must read the same tokens."""
  base, step, params = runs.restore_task(workdir)
  if not isinstance(base, text.Transformer):
    raise ConfigError(f"--baseline: {workdir} holds a {base.describe()} model, expected a "
                      f"Transformer++ run")
  for field in ("vocab_size", "context_length"):
    check(base.config.model[field] == config.model[field], f"--baseline model.{field}",
          f"{config.model[field]} as in the EBT run", base.config.model[field])
  fn = jax.jit(lambda p, tokens: base.loss(p, tokens)[0])
  return {"params": params, "fn": fn, "step": step, "task": base}
