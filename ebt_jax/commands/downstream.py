"""`ebt eval --downstream gsm8k=PATH,...`: a text EBT on downstream tasks from local files.

Per task (formats and prompts: data/downstream.py), beside a Transformer++ `--baseline`:
* answer perplexity: exp of the mean NLL of the answer tokens given the question (question
  tokens are not scored), for every (thinking steps, best-of-N) cell: `ebt eval`'s cells
  (`evaluation.cells_ce`) with the answer mask in place of the pad mask;
* LAMBADA accuracy: the last word is right when every one of its tokens is the greedy
  (argmax) choice given the true tokens before it: the EBT's candidate after thinking with
  the run's inference settings (`inference.thinking_steps`, `best_of`), the baseline's
  argmax;
* multiple-choice accuracy (ARC's labels, BigBench's multiple_choice_targets): the choice of
  lowest energy for the EBT (the energy of the choice's tokens, one-hot, summed, on the
  final landscape) and of highest log-likelihood for the baseline;
* exact match and F1 of generated answers (the official `nlp_eval_acc`: lower case, no
  punctuation, whitespace collapsed; F1 over whitespace tokens, which is what nltk's word
  tokenizer gives on such text), the best over a task's references, generated greedily by
  `inference/generate.py` with the run's inference settings, cut at the end-of-text token.
  As with the official metric, an answer made only of punctuation (dyck_languages'
  brackets) normalises to the empty string: every punctuation-only generation matches it
  (EM 1) with F1 0.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import string

import jax
import jax.numpy as jnp
import numpy as np

from ebt_jax.commands import evaluation
from ebt_jax.data import downstream
from ebt_jax.data.tokenizers import make_tokenizer
from ebt_jax.errors import check
from ebt_jax.inference import generate, system2
from ebt_jax.models import ar_ebt, transformer
from ebt_jax.tasks.base import per_batch
from ebt_jax.tasks.text import masked_mean, perplexity, token_nll
from ebt_jax.training import runs


# --- answer metrics (the official utils/metrics_calculator.py) --------------------------

def normalize_text(s: str) -> str:
  s = "".join(ch for ch in s.lower() if ch not in string.punctuation)
  return " ".join(s.split())


def exact_match(prediction: str, references) -> float:
  return float(any(normalize_text(prediction) == normalize_text(r) for r in references))


def f1(prediction: str, references) -> float:
  """Token F1 of the normalized texts, the best over the references."""
  best = 0.0
  pred = normalize_text(prediction).split()
  for ref in (normalize_text(r).split() for r in references):
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common:
      precision, recall = common / len(pred), common / len(ref)
      best = max(best, 2 * precision * recall / (precision + recall))
  return best


# --- per-batch computations ---------------------------------------------------------------

def greedy_hits(logits_BxSxV, targets_BxS, mask_BxS) -> jax.Array:
  """[B] 1.0 where every masked target is its position's argmax."""
  wrong = (jnp.argmax(logits_BxSxV, -1) != targets_BxS) * mask_BxS
  return (jnp.sum(wrong, axis=1) == 0).astype(jnp.float32)


def ebt_cells(params, batch, key, *, task, steps_list, best_of_list) -> dict:
  """Answer NLL per (steps, best-of) cell [len(steps_list), len(best_of_list)] (`ebt
  eval`'s cells with the answer mask) and its token count."""
  tokens, mask = batch
  ce, _ = evaluation.cells_ce(params, tokens, key, task=task, steps_list=steps_list,
                              best_of_list=best_of_list, mask_BxS=mask)
  return {"ce": ce, "count": jnp.sum(mask)}


def ebt_greedy_hits(params, batch, key, *, task) -> jax.Array:
  """[B] greedy hits of the candidates the run's inference settings choose."""
  tokens, mask = batch
  thought = system2.think_tokens(params, tokens[:, :-1], task, key, trajectory=False)
  return greedy_hits(thought.logits, tokens[:, 1:], mask)


def ebt_choice_scores(params, batch, key, *, task) -> jax.Array:
  """[B] minus the summed energy of the answer tokens themselves (one-hot candidates) on
  the landscape thinking ends on: higher is a better choice."""
  del key
  tokens, mask = batch
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  landscape = system2.landscapes(task, system2.num_steps(task))[-1]
  cache = jax.tree_util.tree_map(lambda a: a[landscape], task.encode_landscapes(params, inputs))
  one_hot = jax.nn.one_hot(targets, task.vocab_width, dtype=task.candidate_dtype)
  energy = ar_ebt.prediction_energy(params, cache, one_hot, landscape, task.dims)
  return -jnp.sum(energy * mask, axis=1)


def baseline_cells(params, batch, key, *, base) -> dict:
  """The Transformer++'s answer NLL, token count, greedy hits [B] and log-likelihoods [B]."""
  del key
  tokens, mask = batch
  targets = tokens[:, 1:]
  logits = transformer.logits(params, tokens[:, :-1], base.dims)
  nll = token_nll(logits, targets)
  return {"ce": masked_mean(nll, mask), "count": jnp.sum(mask),
          "hits": greedy_hits(logits, targets, mask), "score": -jnp.sum(nll * mask, axis=1)}


# --- the report ---------------------------------------------------------------------------

@dataclasses.dataclass
class TaskResult:
  examples: int
  answer_tokens: int
  ce: np.ndarray                        # [len(thinking_steps), len(best_of)]
  accuracy: float | None = None         # LAMBADA greedy / multiple choice by lowest energy
  exact_match: float | None = None
  f1: float | None = None
  baseline_ce: float | None = None
  baseline_accuracy: float | None = None
  generations: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DownstreamReport:
  workdir: str
  step: int
  thinking_steps: list[int]
  best_of: list[int]
  max_new_tokens: int
  results: dict                         # task -> TaskResult
  baseline: dict | None = None          # {"workdir", "step"}

  def table(self) -> str:
    lines = [f"Downstream tasks of {self.workdir} (checkpoint {self.step}): perplexity of the "
             f"answer tokens given the question; rows thinking steps, columns best-of-N"]
    for name, r in self.results.items():
      header = (f"  {name} ({r.examples} example{'s' * (r.examples != 1)}, "
                f"{r.answer_tokens} answer tokens)")
      width = max(40, len(header) + 1)
      lines += ["", f"{header:<{width}}" + "".join(f"{'N=' + str(n):>11}" for n in self.best_of)
                + (f"{'Transformer++':>15}" if self.baseline else "")]
      for i, k in enumerate(self.thinking_steps):
        line = f"  {str(k) + (' step' if k == 1 else ' steps'):<{width - 2}}" + "".join(
            f"{perplexity(c):>11.5g}" for c in r.ce[i])
        if self.baseline:
          line += f"{perplexity(r.baseline_ce):>15.5g}"
        lines.append(line)
      if r.accuracy is not None:
        how = ("last word, greedy" if name == "lambada" else
               "choice of lowest energy (EBT) / highest likelihood (Transformer++)")
        base = f", Transformer++ {r.baseline_accuracy:.3f}" if self.baseline else ""
        lines.append(f"  accuracy ({how}): EBT {r.accuracy:.3f}{base}")
      if r.exact_match is not None:
        lines.append(f"  generated answers ({self.max_new_tokens} new tokens, greedy): exact "
                     f"match {r.exact_match:.3f}, F1 {r.f1:.3f}")
    return "\n".join(lines)

  def as_json(self) -> dict:
    out = {"workdir": self.workdir, "checkpoint_step": self.step, "baseline": self.baseline,
           "tasks": {}}
    for name, r in self.results.items():
      cells = [{"thinking_steps": k, "best_of": n, "ce": float(r.ce[i][j]),
                "perplexity": perplexity(r.ce[i][j])}
               for i, k in enumerate(self.thinking_steps) for j, n in enumerate(self.best_of)]
      out["tasks"][name] = {
          "examples": r.examples, "answer_tokens": r.answer_tokens, "answer_perplexity": cells,
          "accuracy": r.accuracy, "exact_match": r.exact_match, "f1": r.f1,
          "baseline_answer_perplexity": None if r.baseline_ce is None else perplexity(r.baseline_ce),
          "baseline_accuracy": r.baseline_accuracy, "generations": r.generations}
    return out


def _weighted_ce(cells: list[dict]):
  counts = np.array([c["count"] for c in cells], np.float64)
  ce = np.array([c["ce"] for c in cells], np.float64)
  return np.tensordot(counts, ce, axes=1) / max(counts.sum(), 1), int(counts.sum())


def _choice_accuracy(scores: np.ndarray, examples) -> float:
  right, start = [], 0
  for ex in examples:
    pick = int(np.argmax(scores[start:start + len(ex.choices)]))
    right.append(pick in ex.correct)
    start += len(ex.choices)
  return float(np.mean(right))


def _generate(params, task, tokenizer, examples, *, max_new_tokens, batch_size, key) -> list[str]:
  """Greedy answers, batched by prompt length (one compiled program per length)."""
  C = task.config.model.context_length
  check(1 <= max_new_tokens < C, "--downstream-new-tokens",
        f"an integer in [1, {C - 1}] (model.context_length {C})", max_new_tokens)
  prompts = [tokenizer.encode(ex.prompt)[-(C - max_new_tokens):] for ex in examples]
  by_length = collections.defaultdict(list)
  for i, p in enumerate(prompts):
    by_length[len(p)].append(i)
  sampling = generate.Sampling(max_new_tokens)
  out = [""] * len(examples)
  for length, rows in sorted(by_length.items()):
    for start in range(0, len(rows), batch_size):
      chunk = rows[start:start + batch_size]
      # Fill the batch with copies of its first row: one shape per prompt length.
      batch = np.stack([prompts[i] for i in chunk + chunk[:1] * (batch_size - len(chunk))])
      new = np.asarray(generate.generate(params, jnp.asarray(batch), task, key, sampling)
                       .tokens)[:, length:]
      for i, row in zip(chunk, new):
        end = np.flatnonzero(row == tokenizer.pad_id)
        out[i] = tokenizer.decode(row[:end[0]] if end.size else row)
  return out


def evaluate_downstream(workdir, files: dict[str, str], *, thinking_steps=None, best_of=(1,),
                        baseline=None, batch_size: int | None = None, limit: int | None = None,
                        max_new_tokens: int = 32, overrides=None, log=print) -> DownstreamReport:
  """The downstream report of a run directory's newest checkpoint on `files` ({task: path}).

  `max_new_tokens` 0 skips generation (no exact match / F1).
  """
  task, step, params = runs.restore_ebt(workdir, overrides)
  config = task.config
  steps_list = sorted(set(thinking_steps or range(1, system2.num_steps(task) + 1)))
  best_of = sorted(set(best_of))
  for name, values in (("--thinking-steps", steps_list), ("--best-of", best_of)):
    check(all(isinstance(v, int) and v >= 1 for v in values), name, "positive integers", values)
  check(limit is None or limit >= 1, "--downstream-limit", "a positive integer", limit)
  batch_size = batch_size or config.train.batch_size
  tokenizer = make_tokenizer(config.data)
  C = config.model.context_length
  base = evaluation.baseline_params(baseline, config) if baseline else None
  key = task.eval_key()
  cells_fn = jax.jit(functools.partial(ebt_cells, task=task, steps_list=tuple(steps_list),
                                       best_of_list=tuple(best_of)))
  choice_fn = jax.jit(functools.partial(ebt_choice_scores, task=task))
  hits_fn = jax.jit(functools.partial(ebt_greedy_hits, task=task))
  base_fn = base and jax.jit(functools.partial(baseline_cells, base=base["task"]))
  program = runs.program_here(config)
  put = lambda batch: tuple(program.put_global(x) for x in batch)
  results = {}
  with program.context():
    for name, path in files.items():
      examples = downstream.load(name, path, limit)
      log(f"evaluating {name}: {len(examples)} examples from {path}")
      batches = [put(b) for b in downstream.encode_all(
          tokenizer, [(ex.prompt, ex.answer) for ex in examples], C, batch_size)]
      cells = per_batch(cells_fn, params, batches, key)
      ce, count = _weighted_ce(cells)
      r = TaskResult(len(examples), count, ce)
      if name == "lambada":
        hits = per_batch(hits_fn, params, batches, key)
        r.accuracy = float(np.concatenate(hits)[:len(examples)].mean())
      if base:
        b_cells = per_batch(base_fn, base["params"], batches, key)
        r.baseline_ce = float(_weighted_ce(b_cells)[0])
        if name == "lambada":
          r.baseline_accuracy = float(
              np.concatenate([c["hits"] for c in b_cells])[:len(examples)].mean())
      choosing = [ex for ex in examples if ex.choices]
      if choosing:
        pairs = [(ex.prompt, c) for ex in choosing for c in ex.choices]
        choice_batches = [put(b) for b in downstream.encode_all(tokenizer, pairs, C, batch_size)]
        scores = np.concatenate(per_batch(choice_fn, params, choice_batches, key))
        r.accuracy = _choice_accuracy(scores, choosing)
        if base:
          b_scores = np.concatenate([c["score"] for c in per_batch(
              base_fn, base["params"], choice_batches, key)])
          r.baseline_accuracy = _choice_accuracy(b_scores, choosing)
      if max_new_tokens:
        answers = _generate(params, task, tokenizer, examples, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, key=key)
        r.exact_match = float(np.mean([exact_match(a, ex.references)
                                       for a, ex in zip(answers, examples)]))
        r.f1 = float(np.mean([f1(a, ex.references) for a, ex in zip(answers, examples)]))
        r.generations = answers
      results[name] = r
  return DownstreamReport(str(workdir), step, steps_list, best_of, max_new_tokens, results,
                          None if not base else {"workdir": str(baseline), "step": base["step"]})
