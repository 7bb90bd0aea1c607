"""Downstream evaluation sets read from local files: formats, prompts and answer masks.

The tasks of the paper's downstream tables and of the official code's `data/nlp` loaders,
each read from the files of its dataset card (jsonl, or parquet when pyarrow is
installed: `pip install "ebt_jax[parquet]"`); nothing is downloaded:

| task | published fields read | prompt (official `inference` mode) | answer |
|---|---|---|---|
| gsm8k | question, answer | `[[Question]]: {question}\\n[[Answer]]: ` | answer (EM/F1 against the text after `####`) |
| squad | context, question, answers{text, answer_start} | `[[Question]]: {context}\\n{question}\\n[[Answer]]: ` | answers.text[0]; records without an answer (SQuAD v2) are skipped, as official |
| arc | question, choices{text, label}, answerKey | `[[Question]]: {question}\\n{label}: {text}\\n...\\n[[Answer]]: ` | answerKey; the choices are the labels |
| lambada | text | every word but the last | " " + the last word |
| elementary_math_qa, dyck_languages, matrixshapes (BigBench, tasksource/bigbench) | inputs, targets, multiple_choice_targets, multiple_choice_scores | `[[Question]]: {inputs without ' Answer:'}\\n[[Answer]]: ` | targets[0]; choices: multiple_choice_targets, correct where the score is 1 |

An example is scored as one sequence, prompt tokens then answer tokens (each tokenized on
its own, as the official collator does), and only the answer's targets count: `encode`
returns the sequence and a mask over next-token targets that is 1 exactly where the target
is an answer token. A sequence longer than the context loses prompt tokens from the left.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ebt_jax.data import sources
from ebt_jax.errors import ConfigError

BIGBENCH = ("elementary_math_qa", "dyck_languages", "matrixshapes")
TASKS = ("gsm8k", "squad", "arc", "lambada", *BIGBENCH)


@dataclasses.dataclass(frozen=True)
class Example:
  prompt: str
  answer: str                        # the continuation whose perplexity is measured
  references: tuple[str, ...]        # what a generated answer is compared with (EM/F1)
  choices: tuple[str, ...] = ()      # multiple-choice continuations of the prompt
  correct: tuple[int, ...] = ()      # indices of the right choices


def parse_spec(raw: str) -> dict[str, str]:
  """`gsm8k=PATH,squad=PATH` -> {task: path}, checking the names and that the files exist."""
  out = {}
  for item in (s.strip() for s in raw.split(",")):
    if not item:
      continue
    name, sep, path = item.partition("=")
    if not sep or name not in TASKS or not path:
      raise ConfigError(f"--downstream: expected TASK=PATH items with TASK one of "
                        f"{', '.join(TASKS)}, got {item!r}")
    if not Path(path).is_file():
      raise ConfigError(f"--downstream: {name}: no such file {path}")
    out[name] = path
  if not out:
    raise ConfigError(f"--downstream: expected TASK=PATH items, got {raw!r}")
  return out


def read_records(path) -> list[tuple[str, dict]]:
  """(where, record) of every record of a .jsonl (or .json lines) or .parquet file."""
  path = Path(path)
  if path.suffix == ".parquet":
    try:
      import pyarrow.parquet as pq
    except ImportError:
      raise ConfigError(f"{path}: reading parquet needs pyarrow (pip install "
                        f"'ebt_jax[parquet]'), or give the jsonl file") from None
    try:
      rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow's errors have no common base class
      raise ConfigError(f"{path}: not a readable parquet file ({e})") from None
    return [(f"{path}:row {i + 1}", row) for i, row in enumerate(rows)]
  out = []
  for n, record in sources.jsonl_lines(path):
    if not isinstance(record, dict):
      raise ConfigError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
    out.append((f"{path}:{n}", record))
  return out


def _field(record: dict, name: str, kind, where: str, what: str):
  value = record.get(name) if isinstance(record, dict) else None
  ok = isinstance(value, kind) and (kind is not list or all(isinstance(v, (str, int, float))
                                                             for v in value))
  if not ok:
    got = "missing" if not isinstance(record, dict) or name not in record else repr(value)[:60]
    raise ConfigError(f"{where}: field {name!r}: expected {what}, got {got}")
  return value


def _strings(record, name, where, nonempty=False) -> list[str]:
  value = _field(record, name, list, where, "a list of strings")
  if not all(isinstance(v, str) for v in value) or (nonempty and not value):
    raise ConfigError(f"{where}: field {name!r}: expected a {'non-empty ' * nonempty}list of "
                      f"strings, got {repr(value)[:60]}")
  return value


def _gsm8k(r, where):
  q = _field(r, "question", str, where, "a string")
  a = _field(r, "answer", str, where, "a string")
  # The official nlp_eval_acc compares generations with the text after the last '\n####'.
  return Example(f"[[Question]]: {q}\n[[Answer]]: ", a, (a.split("\n####")[-1].strip(),))


def _squad(r, where):
  context = _field(r, "context", str, where, "a string")
  question = _field(r, "question", str, where, "a string")
  answers = _field(r, "answers", dict, where, "an object {text: [...], answer_start: [...]}")
  texts = _strings(answers, "text", f"{where}: answers")
  starts = _field(answers, "answer_start", list, f"{where}: answers", "a list of integers")
  if len(starts) != len(texts):
    raise ConfigError(f"{where}: answers: expected as many answer_start as text entries, got "
                      f"{len(starts)} and {len(texts)}")
  if not texts:
    return None   # SQuAD v2's unanswerable questions: the official loader filters them out
  return Example(f"[[Question]]: {context}\n{question}\n[[Answer]]: ", texts[0], tuple(texts))


def _arc(r, where):
  question = _field(r, "question", str, where, "a string")
  choices = _field(r, "choices", dict, where, "an object {text: [...], label: [...]}")
  texts = _strings(choices, "text", f"{where}: choices", nonempty=True)
  labels = _strings(choices, "label", f"{where}: choices", nonempty=True)
  key = _field(r, "answerKey", str, where, "a string")
  if len(labels) != len(texts) or key not in labels:
    raise ConfigError(f"{where}: expected choices.label and choices.text of one length with "
                      f"answerKey among the labels, got labels {labels} and answerKey {key!r}")
  q = question + "\n" + "".join(f"{l}: {t}\n" for l, t in zip(labels, texts))
  return Example(f"[[Question]]: {q}\n[[Answer]]: ", key, (key,), tuple(labels),
                 (labels.index(key),))


def _lambada(r, where):
  words = _field(r, "text", str, where, "a string").split()
  if len(words) < 2:
    raise ConfigError(f"{where}: field 'text': expected at least two words, got {len(words)}")
  return Example(" ".join(words[:-1]), " " + words[-1], (words[-1],))


def _bigbench(r, where):
  inputs = _field(r, "inputs", str, where, "a string")
  targets = _strings(r, "targets", where, nonempty=True)
  choices = _strings(r, "multiple_choice_targets", where)
  scores = _field(r, "multiple_choice_scores", list, where, "a list of 0/1 scores")
  if len(scores) != len(choices):
    raise ConfigError(f"{where}: expected as many multiple_choice_scores as "
                      f"multiple_choice_targets, got {len(scores)} and {len(choices)}")
  correct = tuple(i for i, s in enumerate(scores) if s == 1)
  return Example(f"[[Question]]: {inputs.replace(' Answer:', '')}\n[[Answer]]: ", targets[0],
                 tuple(targets), tuple(choices) if correct else (), correct)


PARSERS = {"gsm8k": _gsm8k, "squad": _squad, "arc": _arc, "lambada": _lambada,
           **{name: _bigbench for name in BIGBENCH}}


def load(task: str, path, limit: int | None = None) -> list[Example]:
  """The first `limit` (all by default) usable examples of a task's file."""
  examples = []
  for where, record in read_records(path):
    example = PARSERS[task](record, where)
    if example is not None:
      examples.append(example)
    if limit and len(examples) == limit:
      break
  if not examples:
    raise ConfigError(f"--downstream: {task}: {path} holds no usable records")
  return examples


def encode(tokenizer, prompt: str, answer: str, context_length: int):
  """(tokens int32 [context_length + 1], answer mask float32 [context_length]).

  mask[i] is 1 where target i (token i + 1) is an answer token; pads and prompt are 0.
  """
  p, a = tokenizer.encode(prompt), tokenizer.encode(answer)[:context_length]
  seq = np.concatenate([p, a])[-(context_length + 1):]
  tokens = np.full(context_length + 1, tokenizer.pad_id, np.int32)
  tokens[:len(seq)] = seq
  mask = np.zeros(context_length, np.float32)
  mask[len(seq) - 1 - len(a):len(seq) - 1] = 1
  return tokens, mask


def encode_all(tokenizer, pairs, context_length: int, batch_size: int):
  """Batches (tokens [B, C+1], mask [B, C]) of (prompt, answer) pairs; the last batch is
  filled with pad rows whose mask is 0."""
  rows = [encode(tokenizer, p, a, context_length) for p, a in pairs]
  fill = -len(rows) % batch_size
  rows += [(np.full(context_length + 1, tokenizer.pad_id, np.int32),
            np.zeros(context_length, np.float32))] * fill
  return [(np.stack([t for t, _ in rows[i:i + batch_size]]),
           np.stack([m for _, m in rows[i:i + batch_size]]))
          for i in range(0, len(rows), batch_size)]
