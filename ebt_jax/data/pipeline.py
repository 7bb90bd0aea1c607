"""The data pipeline the trainer uses: `make_datasets(config)` -> `Datasets`.

(Text. The image and video kinds' sources are in data/continuous.py, with the same
interface; each task picks its own.)

Every split (train, validation, each OOD suite) is one token stream: its documents
tokenized and concatenated, each followed by the tokenizer's `separator_id`, which is its
pad id (the NUL byte for bytes, a Hugging Face tokenizer's end-of-text token), so document
ends are not trained on. Examples are windows of `context_length + 1` tokens
(inputs and shifted targets), int32, cut anywhere in the stream, across document ends.

Training: example `e` (a global counter, 0, 1, 2, ...) is the window starting at
`splitmix64(seed, e) mod (len - context_length)`: a pure function of (data.seed, e), so a
run's data never depends on threads, prefetching or restarts. Batch `t` of a run with
per-process batch B on P processes is examples `t*B*P .. (t+1)*B*P - 1`; process p takes
the contiguous block `t*B*P + p*B + [0, B)`. So the processes read disjoint windows, and
their batches stacked in process order are exactly the batch a single process with batch
B*P reads: the global batch depends on the global batch size only, which is also the row
order `jax.make_array_from_process_local_data` assembles along a data-sharded axis, and a
run may resume on a different number of processes with the same global batch size.

The training iterator is a grain `DatasetIterator` (so grain's and Orbax's checkpoint
handlers accept it) over `MapDataset.range(step, ...).map(make_batch)` with a small
thread prefetch. Its state is `{"step", "seed", "global_batch_size", "train_tokens"}`, plain
JSON; `set_state` refuses a state from a different seed, global batch or corpus instead of
silently continuing with other data.

Evaluation: `num_batches * batch_size` windows at evenly spaced starts from the first to
the last possible one, so a fixed list that covers the whole split, identical on every call
and independent of `data.seed` (runs with different data seeds stay comparable).
"""

from __future__ import annotations

from typing import Iterator

import jax
import numpy as np

from ebt_jax.data import continuous, prepare, sources, synthetic
from ebt_jax.data.iterators import StepBatches
from ebt_jax.data.tokenizers import make_tokenizer
from ebt_jax.errors import ConfigError, check

TEXT_SOURCES = ("stdlib", "text", "shards", *synthetic.FAMILIES)
SOURCES = TEXT_SOURCES + continuous.SOURCES
# One background thread keeps a few batches ready; data are in memory, so more threads
# would only contend for the GIL.

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """A well-mixed 64-bit hash (SplitMix64's finaliser); uint64 arithmetic wraps."""
  x = x + _GOLDEN
  x = (x ^ (x >> np.uint64(30))) * _M1
  x = (x ^ (x >> np.uint64(27))) * _M2
  return x ^ (x >> np.uint64(31))


def window_starts(seed: int, example_ids: np.ndarray, num_starts: int) -> np.ndarray:
  key = _splitmix64(np.asarray([seed], np.uint64))
  mixed = _splitmix64(np.asarray(example_ids, np.uint64) ^ key)
  return (mixed % np.uint64(num_starts)).astype(np.int64)


def _suite_names(ood_suites) -> tuple[str, ...]:
  if isinstance(ood_suites, str):  # e.g. --config.data.ood_suites=dyck_depth_8,arithmetic_digits_5
    ood_suites = [s for s in ood_suites.split(",") if s]
  names = tuple(ood_suites)
  for name in names:
    synthetic.parse_suite(name)
  if len(set(names)) != len(names):
    raise ConfigError(f"data.ood_suites: expected distinct names, got {names!r}")
  return names


def validate_data_config(config) -> None:
  """Checks `config.data` for a text model (the model and thinking fields are the task's)."""
  d = config.data
  check(d.source in TEXT_SOURCES, "data.source",
        f"one of {TEXT_SOURCES} for a text model" if d.source in SOURCES else f"one of {SOURCES}",
        d.source)
  check(isinstance(d.tokenizer, str) and d.tokenizer != "", "data.tokenizer",
         "'byte' or a tokenizer.json path", d.tokenizer)
  check(0 < d.validation_fraction < 1, "data.validation_fraction", "a number in (0, 1)",
         d.validation_fraction)
  check(isinstance(d.seed, int) and d.seed >= 0, "data.seed", "an integer >= 0", d.seed)
  if d.source in ("text", "shards"):
    check(isinstance(d.path, str) and d.path != "", "data.path",
           f"a path (data.source={d.source!r})", d.path)
  check(isinstance(d.jsonl_field, str) and d.jsonl_field != "", "data.jsonl_field",
         "a field name", d.jsonl_field)
  check(isinstance(d.dyck.bracket_types, int) and 1 <= d.dyck.bracket_types
         <= len(synthetic.BRACKETS), "data.dyck.bracket_types",
         f"an integer in [1, {len(synthetic.BRACKETS)}]", d.dyck.bracket_types)
  for field, value in (("dyck.train_max_depth", d.dyck.train_max_depth),
                       ("dyck.num_documents", d.dyck.num_documents),
                       ("arithmetic.train_max_digits", d.arithmetic.train_max_digits),
                       ("arithmetic.num_documents", d.arithmetic.num_documents)):
    check(isinstance(value, int) and value >= 1, f"data.{field}", "a positive integer", value)
  _suite_names(d.ood_suites)


class TrainIterator(StepBatches):
  """Endless training batches, int32 [batch_size, context_length + 1]; checkpointable."""

  def __init__(self, data: "Datasets", batch_size: int, process_index: int,
               process_count: int):
    self._data = data
    self._batch_size = batch_size
    self._first = process_index * batch_size
    self._global_batch = batch_size * process_count
    super().__init__({"seed": data.seed, "global_batch_size": self._global_batch,
                      "train_tokens": int(data.split_tokens("train").size)})

  def _make_batch(self, step: int) -> np.ndarray:
    first = step * self._global_batch + self._first
    example_ids = np.arange(first, first + self._batch_size, dtype=np.uint64)
    return self._data.windows("train", window_starts(self._data.seed, example_ids,
                                                     self._data.num_starts("train")))



class Datasets:
  """The token streams of every split and the iterators over them."""

  def __init__(self, tokenizer, streams: dict, context_length: int, seed: int,
               eval_splits: tuple[str, ...]):
    self.tokenizer = tokenizer
    self.context_length = context_length
    self.window_length = context_length + 1
    self.seed = seed
    self.eval_splits = eval_splits
    self._streams = streams

  def split_tokens(self, split: str) -> np.ndarray:
    if split not in self._streams:
      raise KeyError(f"unknown split {split!r}; have {tuple(self._streams)}")
    return self._streams[split]

  def num_starts(self, split: str) -> int:
    return self.split_tokens(split).size - self.window_length + 1

  def windows(self, split: str, starts: np.ndarray) -> np.ndarray:
    offsets = np.arange(self.window_length, dtype=np.int64)
    return self.split_tokens(split)[starts[:, None] + offsets].astype(np.int32)

  def train_iter(self, batch_size: int, *, process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[np.ndarray]:
    """`batch_size` is this process's share of the global batch."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
      raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return TrainIterator(self, int(batch_size), int(process_index), int(process_count))

  def eval_batches(self, split: str, batch_size: int, num_batches: int) -> list[np.ndarray]:
    count = batch_size * num_batches
    starts = np.linspace(0, self.num_starts(split) - 1, count).round().astype(np.int64)
    windows = self.windows(split, starts)
    return [windows[i * batch_size:(i + 1) * batch_size] for i in range(num_batches)]


def _check_lengths(streams: dict, window_length: int, source: str) -> None:
  for split, tokens in streams.items():
    if tokens.size == 0:
      where = "data.path" if source in ("text", "shards") else "data.validation_fraction"
      raise ConfigError(f"{where}: the {split!r} split of data.source={source!r} has no "
                        f"documents (too few files or data.validation_fraction too small)")
    if tokens.size < window_length:
      raise ConfigError(f"model.context_length: expected at most {tokens.size - 1} (the "
                        f"{split!r} split has only {tokens.size} tokens), got {window_length - 1}")


def make_datasets(config) -> Datasets:
  """The text datasets: reads `config.data` and `config.model.context_length`; every
  start-up error is here."""
  validate_data_config(config)
  d = config.data
  tokenizer = make_tokenizer(d)
  if config.model.vocab_size < tokenizer.vocab_size:
    raise ConfigError(f"model.vocab_size: expected at least the tokenizer's vocabulary "
                      f"{tokenizer.vocab_size} (data.tokenizer={d.tokenizer!r}), "
                      f"got {config.model.vocab_size}")
  if d.source == "shards":
    streams = prepare.read_shards(d.path, tokenizer)
  else:
    docs = sources.documents(d)
    streams = {split: tokenizer.encode_documents(docs[split]) for split in sources.SPLITS}
  suites = _suite_names(d.ood_suites)
  for name in suites:
    streams[name] = tokenizer.encode_documents(synthetic.suite_documents(d, name))
  window_length = config.model.context_length + 1
  _check_lengths(streams, window_length, d.source)
  return Datasets(tokenizer, streams, config.model.context_length, d.seed,
                  ("validation", *suites))
