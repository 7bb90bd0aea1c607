"""Downstream tasks from local files (data/downstream.py, commands/downstream.py): the
published formats in tests/data, answer masks, EM/F1 and accuracy against hand-computed
values, answer perplexity against a plain per-example reference, `ebt eval --downstream`."""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebt_jax import cli, tasks
from ebt_jax.commands import downstream as report_lib
from ebt_jax.data import downstream
from ebt_jax.data.tokenizers import ByteTokenizer
from ebt_jax.errors import ConfigError
from ebt_jax.inference import system2
from ebt_jax.models import transformer
from ebt_jax.training import runs, trainer

from conftest import run_config

DATA = Path(__file__).parent / "data"
BYTES = ByteTokenizer()


def test_published_formats():
  gsm = downstream.load("gsm8k", DATA / "gsm8k.jsonl")
  assert gsm[1].prompt == "[[Question]]: What is 4 times 2?\n[[Answer]]: "
  assert gsm[1].answer == "4 * 2 = <<4*2=8>>8\n#### 8" and gsm[1].references == ("8",)
  squad = downstream.load("squad", DATA / "squad.jsonl")
  assert len(squad) == 2   # the unanswerable record is left out, as the official loader
  assert squad[0].prompt == ("[[Question]]: The Grotto is a Marian place of prayer and "
                             "reflection.\nWhat is the Grotto?\n[[Answer]]: ")
  assert squad[0].references == ("a Marian place of prayer", "Marian place of prayer")
  arc = downstream.load("arc", DATA / "arc.jsonl")
  assert arc[1].prompt == ("[[Question]]: Ice is water that is\n1: hot\n2: frozen\n3: boiling\n"
                           "\n[[Answer]]: ")
  assert (arc[1].answer, arc[1].choices, arc[1].correct) == ("2", ("1", "2", "3"), (1,))
  lam = downstream.load("lambada", DATA / "lambada.jsonl", limit=1)
  assert len(lam) == 1 and lam[0].answer == " there" and lam[0].references == ("there",)
  assert lam[0].prompt == "she opened the door and saw her old friend standing"
  math = downstream.load("elementary_math_qa", DATA / "elementary_math_qa.jsonl")
  assert math[0].prompt == "[[Question]]: What is 2 + 2?\n[[Answer]]: "
  assert (math[0].choices, math[0].correct, math[1].correct) == (("3", "4", "5"), (1,), (0,))
  dyck = downstream.load("dyck_languages", DATA / "dyck_languages.jsonl")
  assert dyck[0].answer == "]" and dyck[0].choices == ()


@pytest.mark.parametrize("line, message", [
    ('{"question": "q"}', ":2: field 'answer': expected a string, got missing"),
    ('{"question": "q", "answer": 3}', ":2: field 'answer': expected a string, got 3"),
    ('{"question": "q", "answer": "a"', ":2: not a JSON line"),
    ('["q", "a"]', ":2: expected a JSON object, got list"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
  path = tmp_path / "gsm8k.jsonl"
  path.write_text('{"question": "q", "answer": "a"}\n' + line + "\n")
  with pytest.raises(ConfigError, match=f"^{path}{message}"):
    downstream.load("gsm8k", path)


def test_bad_records_and_specs(tmp_path):
  path = tmp_path / "arc.jsonl"
  path.write_text('{"question": "q", "choices": {"text": ["x"], "label": ["A"]}, '
                  '"answerKey": "B"}\n')
  with pytest.raises(ConfigError, match=f"^{path}:1: .*answerKey among the labels"):
    downstream.load("arc", path)
  with pytest.raises(ConfigError, match="TASK one of gsm8k"):
    downstream.parse_spec(f"mmlu={path}")
  with pytest.raises(ConfigError, match="arc: no such file"):
    downstream.parse_spec("arc=/nonexistent.jsonl")


def test_parquet(tmp_path):
  rows = [r for _, r in downstream.read_records(DATA / "squad.jsonl")]
  path = tmp_path / "squad.parquet"
  try:
    import pyarrow as pa
    import pyarrow.parquet as pq
  except ImportError:
    path.write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match="needs pyarrow"):
      downstream.load("squad", path)
    return
  pq.write_table(pa.Table.from_pylist(rows), path)
  assert downstream.load("squad", path) == downstream.load("squad", DATA / "squad.jsonl")


def test_answer_mask_scores_only_answer_targets():
  tokens, mask = downstream.encode(BYTES, "ab", "cde", 8)
  assert BYTES.decode(tokens[:5]) == "abcde" and not tokens[5:].any()
  # target i is token i + 1: c, d and e are targets 1, 2 and 3.
  np.testing.assert_array_equal(mask, [0, 1, 1, 1, 0, 0, 0, 0])
  tokens, mask = downstream.encode(BYTES, "abcdefgh", "xyz", 5)   # the prompt loses its left
  assert BYTES.decode(tokens) == "fghxyz"
  np.testing.assert_array_equal(mask, [0, 0, 1, 1, 1])
  batches = downstream.encode_all(BYTES, [("ab", "c")] * 3, 4, batch_size=2)
  assert [t.shape for t, _ in batches] == [(2, 5), (2, 5)] and batches[1][1][1].sum() == 0


def test_exact_match_and_f1():
  assert report_lib.exact_match("The  Cat!", ["a dog", "the cat"]) == 1.0
  assert report_lib.exact_match("the cats", ["the cat"]) == 0.0
  # common tokens {cat, sat}: precision 2/3, recall 2/4, F1 = 2 pr / (p + r) = 4/7.
  assert report_lib.f1("The cat sat.", ["a cat sat down"]) == pytest.approx(4 / 7)
  assert report_lib.f1("x", ["y", "x"]) == 1.0 and report_lib.f1("", ["x"]) == 0.0
  # The official normalisation empties punctuation-only answers (dyck_languages).
  assert report_lib.exact_match("] )", ["]"]) == 1.0 and report_lib.f1("]", ["]"]) == 0.0
  arc = downstream.load("arc", DATA / "arc.jsonl")   # 4 + 3 choices, right: 1 and 1
  scores = np.array([0, 5, 1, 2, 9, 3, 0], np.float32)
  assert report_lib._choice_accuracy(scores, arc) == 0.5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A one-step run of a `default` EBT: one landscape, so row k of the table is k thinking
  steps however steps are counted."""
  config = run_config(num_steps=1)
  config.model.ebt_type = "default"
  config.thinking.num_steps = 1
  workdir = tmp_path_factory.mktemp("ebt")
  trainer.train(config, workdir, progress=False, log=lambda *a: None)
  return workdir


def _reference(params, tokens, key, *, task):
  """The raw trajectory (NLL per step, first candidate), the default run's argmax and the
  energies of the true tokens, from which the downstream figures are read."""
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  nll = system2.think_tokens(params, inputs, task, key, steps=2, best_of=1,
                             targets_BxS=targets).outputs[:, 0]
  argmax = jnp.argmax(system2.think_tokens(params, inputs, task, key,
                                           trajectory=False).logits, -1)
  caches = task.encode_landscapes(params, inputs)
  landscape = system2.landscapes(task, system2.num_steps(task))[-1]
  energy = task.candidate_energy_fn(params, caches)(jax.nn.one_hot(targets, 256), landscape)
  return nll, argmax, energy


@pytest.mark.slow
def test_eval_downstream_against_reference(run_dir, tmp_path, capsys):
  """`ebt eval --downstream` on LAMBADA and ARC: answer perplexity per step, LAMBADA's
  greedy accuracy and ARC's lowest-energy accuracy against the trajectory read by hand at
  the answer positions; EM against the generations; bad flags."""
  out = tmp_path / "downstream.json"
  spec = f"lambada={DATA / 'lambada.jsonl'},arc={DATA / 'arc.jsonl'}"
  assert cli.main(["eval", "--workdir", str(run_dir), "--downstream", spec, "--thinking-steps",
                   "1,2", "--downstream-new-tokens", "2", "--batch-size", "4",
                   "--json", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "lambada (2 examples, 10 answer tokens)" in printed
  assert "accuracy (choice of lowest energy" in printed
  for bad in (["--batches", "1"], ["--downstream-limit", "0"]):
    assert cli.main(["eval", "--workdir", str(run_dir), "--downstream", spec, *bad]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"ebt eval: error: {bad[0]}")
  data = json.loads(out.read_text())["tasks"]

  task, _, params = runs.restore_ebt(run_dir)
  reference = jax.jit(functools.partial(_reference, task=task))
  key = jax.random.fold_in(task.eval_key(), 0)   # evaluation's key of the first batch
  lam = downstream.load("lambada", DATA / "lambada.jsonl")
  # Both sequences are longer than the context: the answer ends at the last target.
  (tokens, _), = downstream.encode_all(BYTES, [(e.prompt, e.answer) for e in lam], 16, 4)
  nll, argmax, _ = jax.device_get(reference(params, tokens, key))
  answer = [np.arange(16 - len(e.answer), 16) for e in lam]
  for k, cell in enumerate(data["lambada"]["answer_perplexity"]):
    assert cell["thinking_steps"] == k + 1
    ce = np.concatenate([nll[k, b][i] for b, i in enumerate(answer)]).mean()
    np.testing.assert_allclose(cell["ce"], ce, rtol=1e-5)
  hits = [np.all(argmax[b][i] == tokens[b][i + 1]) for b, i in enumerate(answer)]
  assert data["lambada"]["accuracy"] == np.mean(hits)

  arc = downstream.load("arc", DATA / "arc.jsonl")   # 4 + 3 one-token choices
  pairs = [(e.prompt, c) for e in arc for c in e.choices]
  energies = np.concatenate([jax.device_get(reference(params, t, key)[2])[:, -1]
                             for t, _ in downstream.encode_all(BYTES, pairs, 16, 4)])
  picks = [np.argmin(energies[:4]), np.argmin(energies[4:7])]
  assert data["arc"]["accuracy"] == np.mean([p in e.correct for p, e in zip(picks, arc)])
  for name, refs in (("lambada", [["there"], ["mat"]]), ("arc", [["B"], ["2"]])):
    r = data[name]
    assert r["baseline_accuracy"] is None and len(r["generations"]) == 2
    assert r["exact_match"] == np.mean([report_lib.exact_match(g, ref)
                                        for g, ref in zip(r["generations"], refs)])


def test_baseline_answer_perplexity_against_reference():
  config = run_config("transformer")
  base = tasks.build(config)
  params = tasks.init_params(config, jax.random.key(3))
  examples = downstream.load("lambada", DATA / "lambada.jsonl")
  batches = downstream.encode_all(BYTES, [(e.prompt, e.answer) for e in examples], 16, 1)
  cells_fn = jax.jit(functools.partial(report_lib.baseline_cells, key=None, base=base))
  cells = [jax.device_get(cells_fn(params, b)) for b in batches]
  ce, count = report_lib._weighted_ce(cells)
  logits_fn = jax.jit(lambda p, seq: jax.nn.log_softmax(transformer.logits(p, seq, base.dims)))
  nll, scores = [], []
  for e in examples:   # each example alone, its last 17 tokens, no batching or masks
    seq = np.frombuffer((e.prompt + e.answer).encode(), np.uint8).astype(np.int32)[-17:]
    logp = np.asarray(logits_fn(params, seq[None, :-1]))[0]
    a = len(e.answer)
    picked = -logp[np.arange(16 - a, 16), seq[17 - a:]]
    nll += list(picked)
    scores.append(-picked.sum())
  assert count == len(nll)
  np.testing.assert_allclose(ce, np.mean(nll), rtol=1e-5)
  np.testing.assert_allclose([c["score"][0] for c in cells], scores, rtol=1e-5)
