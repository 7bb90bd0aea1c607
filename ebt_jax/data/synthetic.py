"""Synthetic languages for out-of-distribution tests of thinking: Dyck words and addition.

Each is a training source (`data.source = "dyck" | "arithmetic"`) and a family of
evaluation suites that lie just outside the training distribution:
- Dyck: balanced words over `data.dyck.bracket_types` bracket kinds, one word and a
  newline per document. Training words nest at most `train_max_depth` deep; suite
  `dyck_depth_<D>` holds words whose deepest nesting is exactly D.
- Addition: `"123+4567=4690\\n"`, one sum per document. Training operands have 1 to
  `train_max_digits` digits each (digit count uniform, then value uniform); suite
  `arithmetic_digits_<N>` has two N-digit operands.

Everything is drawn from `np.random.default_rng([data.seed, hash(stream name)])`, one
stream per (family, split or suite), so validation is fresh in-distribution data, a suite
does not change when another is added, and the same seed always gives the same text.
Validation and every suite hold `ceil(num_documents * validation_fraction)` documents.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np

from ebt_jax.errors import ConfigError

FAMILIES = ("dyck", "arithmetic")
BRACKETS = ("()", "[]", "{}", "<>")
_SUITE_RE = re.compile(r"^(dyck_depth|arithmetic_digits)_([1-9][0-9]*)$")


def stream_rng(seed: int, *names) -> np.random.Generator:
  words = [int.from_bytes(hashlib.sha256(str(n).encode()).digest()[:4], "little") for n in names]
  return np.random.default_rng([int(seed), *words])


def dyck_word(rng: np.random.Generator, bracket_types: int, max_depth: int, exact: bool) -> str:
  """A uniform-coin random balanced word with nesting <= max_depth (== when `exact`)."""
  n_pairs = int(rng.integers(max_depth, 4 * max_depth + 1))
  coins = rng.random(2 * n_pairs)
  kinds = rng.integers(bracket_types, size=2 * n_pairs)
  out, stack = [], []
  for step in range(2 * n_pairs):
    remaining = 2 * n_pairs - step
    depth = len(stack)
    must_close = depth == remaining or depth == max_depth
    if depth > 0 and (must_close or coins[step] >= 0.5):
      out.append(BRACKETS[stack.pop()][1])
    else:
      stack.append(int(kinds[step]))
      out.append(BRACKETS[stack[-1]][0])
  if exact:
    # Reaching depth D by chance gets rare as D grows, so splice a nested run that climbs
    # from the depth at a random cut to exactly D; the word stays balanced and within D.
    cut = int(rng.integers(0, len(out) + 1))
    base = sum(1 if ch in "([{<" else -1 for ch in out[:cut])
    spike = rng.integers(bracket_types, size=max_depth - base)
    opens = [BRACKETS[k][0] for k in spike]
    closes = [BRACKETS[k][1] for k in spike[::-1]]
    out[cut:cut] = opens + closes
  return "".join(out)


def number(rng: np.random.Generator, digits: int) -> int:
  # Python ints from digit strings: suites may ask for more digits than int64 holds.
  first = str(int(rng.integers(1 if digits > 1 else 0, 10)))
  rest = "".join(str(int(x)) for x in rng.integers(0, 10, size=digits - 1))
  return int(first + rest)


def dyck_documents(seed: int, stream: str, count: int, bracket_types: int, max_depth: int,
                   exact: bool) -> list[str]:
  rng = stream_rng(seed, "dyck", stream)
  return [dyck_word(rng, bracket_types, max_depth, exact) + "\n" for _ in range(count)]


def arithmetic_documents(seed: int, stream: str, count: int, max_digits: int,
                         exact: bool) -> list[str]:
  rng = stream_rng(seed, "arithmetic", stream)
  docs = []
  for _ in range(count):
    if exact:
      a_digits = b_digits = max_digits
    else:
      a_digits, b_digits = (int(k) for k in rng.integers(1, max_digits + 1, size=2))
    a, b = number(rng, a_digits), number(rng, b_digits)
    docs.append(f"{a}+{b}={a + b}\n")
  return docs


def eval_count(family_config, validation_fraction: float) -> int:
  return max(1, math.ceil(family_config.num_documents * validation_fraction))


def _training_distribution(d, stream: str, count: int) -> list[str]:
  if d.source == "dyck":
    return dyck_documents(d.seed, stream, count, d.dyck.bracket_types, d.dyck.train_max_depth,
                          exact=False)
  return arithmetic_documents(d.seed, stream, count, d.arithmetic.train_max_digits, exact=False)


def source_documents(data_config) -> dict:
  """Train/validation documents of a synthetic `data.source` (the same distribution)."""
  d = data_config
  n_val = eval_count(d[d.source], d.validation_fraction)
  return {"train": _training_distribution(d, "train", d[d.source].num_documents),
          "validation": _training_distribution(d, "validation", n_val)}


def parse_suite(name: str) -> tuple[str, int]:
  """("dyck", D) or ("arithmetic", N); an unknown name is a config error."""
  match = _SUITE_RE.match(name) if isinstance(name, str) else None
  if match is None:
    raise ConfigError(f"data.ood_suites: expected names like 'dyck_depth_8' or "
                      f"'arithmetic_digits_5', got {name!r}")
  family = "dyck" if match.group(1) == "dyck_depth" else "arithmetic"
  return family, int(match.group(2))


def suite_documents(data_config, name: str) -> list[str]:
  d = data_config
  family, size = parse_suite(name)
  n = eval_count(d[family], d.validation_fraction)
  if family == "dyck":
    return dyck_documents(d.seed, name, n, d.dyck.bracket_types, size, exact=True)
  return arithmetic_documents(d.seed, name, n, size, exact=True)
