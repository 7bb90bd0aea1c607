"""The data package: tokenizers, sources, synthetic suites, the grain pipeline and shards."""

import json
import os
import re
import sys

import chex
import grain
import numpy as np
import pytest

from ebt_jax import config as config_lib
from ebt_jax.errors import ConfigError
from ebt_jax.data import make_datasets, make_tokenizer, prepare_shards, sources, synthetic
from ebt_jax.data.tokenizers import ByteTokenizer


def data_config(context_length=16, **data):
  c = config_lib.base_config()
  c.model.context_length = context_length
  c.data.source = "arithmetic"
  c.data.arithmetic.num_documents = 400
  c.data.dyck.num_documents = 400
  for key, value in data.items():
    node, _, field = key.rpartition("__")
    (c.data[node] if node else c.data)[field] = value
  return c


@pytest.fixture
def text_dir(tmp_path):
  root = tmp_path / "corpus"
  (root / "sub").mkdir(parents=True)
  (root / "a.txt").write_text("alpha file\nsecond line\n")
  (root / "sub" / "b.txt").write_text("beta \u00e9t\u00e9 \u2713\n" * 20)
  (root / "ignored.md").write_text("not text for the directory rule")
  lines = [json.dumps({"text": f"record {i} " + "x" * (i % 7), "id": i}) for i in range(40)]
  (root / "sub" / "c.jsonl").write_text("\n".join(lines) + "\n\n")
  return root


# Tokenizers.

def test_byte_tokenizer_round_trip():
  tok = ByteTokenizer()
  assert (tok.vocab_size, tok.pad_id, tok.separator_id) == (256, 0, 0)
  text = "def f(x):\n  return x \u2192 \u00e9\U0001F600"
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.max() < 256
  assert tok.decode(ids) == text
  stream = tok.encode_documents(["ab", "c"])
  assert stream.tolist() == [97, 98, 0, 99, 0]
  assert tok.decode([104, 105, 300]) == "hi\ufffd"  # ids beyond the bytes never wrap around


def test_hf_tokenizer_missing_package_and_path(tmp_path, monkeypatch):
  c = data_config()
  c.data.tokenizer = str(tmp_path / "nope" / "tokenizer.json")
  with pytest.raises(ConfigError, match=r"data\.tokenizer.*nope/tokenizer\.json"):
    make_tokenizer(c.data)
  path = tmp_path / "tokenizer.json"
  path.write_text("{}")
  c.data.tokenizer = str(path)
  monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
  with pytest.raises(ConfigError, match=re.escape('pip install "ebt_jax[tokenizers]"')) as e:
    make_tokenizer(c.data)
  assert str(e.value).startswith("data.tokenizer") and "\n" not in str(e.value)


def test_hf_tokenizer(tmp_path):
  tokenizers = pytest.importorskip("tokenizers")
  words = ["the", "cat", "sat", "on", "mat"]
  vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.decoder = tokenizers.decoders.WordPiece()
  tok.save(str(tmp_path / "tokenizer.json"))
  c = data_config(tokenizer=str(tmp_path / "tokenizer.json"))
  hf = make_tokenizer(c.data)
  # The pad id is the end-of-text token (the official pad), not the real token at id 0.
  assert (hf.vocab_size, hf.pad_id, hf.eos_id, hf.separator_id) == (8, 2, 2, 2)
  assert hf.encode("the cat sat").tolist() == [3, 4, 5]
  assert hf.decode([3, 4, 5]) == "the cat sat"
  assert hf.encode_documents(["the cat", "on mat"]).tolist() == [3, 4, 2, 6, 7, 2]


# Sources.

def test_stdlib_corpus_split():
  files = sources.stdlib_files()
  assert len(files) > 300 and sum(len(text) for _, text in files) > 5_000_000
  assert all(not re.search(r"(^|/)(site-packages|tests?)/", key) for key, _ in files)
  held = [key for key, _ in files if sources.held_out(key, 0.05)]
  assert 0.02 < len(held) / len(files) < 0.09
  docs = sources.stdlib_documents(0.05)
  assert len(docs["validation"]) == len(held)
  assert len(docs["train"]) + len(held) == len([1 for _, text in files if text])
  assert not set(docs["train"]) & set(docs["validation"])
  again = sources.stdlib_documents(0.05)
  assert again["validation"] == docs["validation"] and again["train"] == docs["train"]


def test_text_source(text_dir):
  docs = sources.text_documents(str(text_dir), "text", 0.3)
  all_docs = docs["train"] + docs["validation"]
  assert len(all_docs) == 42 and not any("not text" in d for d in all_docs)
  assert docs["train"] and docs["validation"]  # jsonl lines are split one by one
  assert sources.text_documents(str(text_dir), "text", 0.3) == docs
  # A glob takes whatever it matches; keys are relative to its literal directory.
  globbed = sources.text_documents(str(text_dir / "**" / "*.txt"), "text", 0.3)
  assert sorted(globbed["train"] + globbed["validation"]) == sorted(
      d for d in all_docs if not d.startswith("record"))
  c = data_config(source="text", path=str(text_dir), validation_fraction=0.3)
  ds = make_datasets(c)
  expected = ByteTokenizer().encode_documents(docs["validation"])
  np.testing.assert_array_equal(ds.split_tokens("validation"), expected)


def test_text_source_errors(text_dir, tmp_path):
  c = data_config(source="text", path=str(tmp_path / "missing"))
  with pytest.raises(ConfigError, match=r"^data\.path:.*missing"):
    make_datasets(c)
  c.data.path = str(tmp_path / "*.none")
  with pytest.raises(ConfigError, match=r"^data\.path:"):
    make_datasets(c)
  c.data.path, c.data.jsonl_field = str(text_dir), "body"
  with pytest.raises(ConfigError, match=r"^data\.jsonl_field:.*c\.jsonl:1"):
    make_datasets(c)


# Synthetic suites.

def dyck_depth(word, bracket_types):
  """Maximum nesting of a balanced word, None when unbalanced or using other brackets."""
  pairs = dict(synthetic.BRACKETS[:bracket_types])
  stack, deepest = [], 0
  for ch in word:
    if ch in pairs:
      stack.append(pairs[ch])
      deepest = max(deepest, len(stack))
    elif not stack or stack.pop() != ch:
      return None
  return None if stack else deepest


def test_dyck():
  c = data_config(source="dyck", dyck__bracket_types=2, dyck__train_max_depth=3)
  docs = synthetic.source_documents(c.data)
  assert len(docs["train"]) == 400 and len(docs["validation"]) == 20
  depths = [dyck_depth(d.rstrip("\n"), 2) for d in docs["train"] + docs["validation"]]
  assert None not in depths and max(depths) == 3 and min(depths) >= 1
  assert not set(docs["validation"]) <= set(docs["train"])  # a fresh stream
  for depth in (5, 9):
    suite = synthetic.suite_documents(c.data, f"dyck_depth_{depth}")
    assert suite and all(dyck_depth(d.rstrip("\n"), 2) == depth for d in suite)
  assert synthetic.source_documents(c.data) == docs


def test_arithmetic():
  c = data_config(arithmetic__train_max_digits=3)
  docs = synthetic.source_documents(c.data)
  seen_digits = set()
  for doc in docs["train"] + docs["validation"]:
    a, b, total = map(int, re.fullmatch(r"(\d+)\+(\d+)=(\d+)\n", doc).groups())
    assert a + b == total
    seen_digits |= {len(str(a)), len(str(b))}
  assert seen_digits == {1, 2, 3}
  for digits in (5, 25):  # beyond int64 too
    for doc in synthetic.suite_documents(c.data, f"arithmetic_digits_{digits}"):
      a, b, total = re.fullmatch(r"(\d+)\+(\d+)=(\d+)\n", doc).groups()
      assert len(a) == len(b) == digits and int(a) + int(b) == int(total)


def test_ood_suites_in_datasets():
  c = data_config(source="dyck", ood_suites=("dyck_depth_7", "arithmetic_digits_4"))
  ds = make_datasets(c)
  assert ds.eval_splits == ("validation", "dyck_depth_7", "arithmetic_digits_4")
  text = ds.tokenizer.decode(ds.split_tokens("arithmetic_digits_4"))
  assert re.fullmatch(r"(\d{4}\+\d{4}=\d{4,5}\n\x00)+", text)
  c.data.ood_suites = ("dyck_depth_7", "sorting_5")
  with pytest.raises(ConfigError, match=r"^data\.ood_suites:.*sorting_5"):
    make_datasets(c)


# The pipeline.

def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_train_batches_deterministic():
  ds = make_datasets(data_config())
  first = take(ds.train_iter(4, process_index=0, process_count=1), 5)
  second = take(ds.train_iter(4, process_index=0, process_count=1), 5)
  chex.assert_shape(first, (4, 17))
  chex.assert_type(first, np.int32)
  np.testing.assert_array_equal(np.stack(first), np.stack(second))
  # Windows are cut from the stream: each row is a contiguous slice of it.
  stream = ds.split_tokens("train").astype(np.int32)
  row = first[0][0]
  hits = np.flatnonzero(np.lib.stride_tricks.sliding_window_view(stream, 17) == row).size
  assert hits > 0
  other = make_datasets(data_config(seed=1))
  different = take(other.train_iter(4, process_index=0, process_count=1), 5)
  assert not np.array_equal(np.stack(first), np.stack(different))


def test_processes_split_the_global_batch():
  ds = make_datasets(data_config())
  single = take(ds.train_iter(6, process_index=0, process_count=1), 3)
  p0 = take(ds.train_iter(3, process_index=0, process_count=2), 3)
  p1 = take(ds.train_iter(3, process_index=1, process_count=2), 3)
  for whole, a, b in zip(single, p0, p1):
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(np.concatenate([a, b]), whole)


def test_iterator_state_round_trip():
  ds = make_datasets(data_config())
  it = ds.train_iter(4, process_index=0, process_count=1)
  assert isinstance(it, grain.DatasetIterator)
  take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  assert state["step"] == 3
  expected = take(it, 2)
  restored = ds.train_iter(4, process_index=0, process_count=1)
  restored.set_state(state)
  np.testing.assert_array_equal(np.stack(take(restored, 2)), np.stack(expected))
  assert restored.get_state()["step"] == 5
  other = make_datasets(data_config(seed=3)).train_iter(4, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="seed"):
    other.set_state(state)


def test_eval_batches_fixed():
  ds = make_datasets(data_config())
  batches = ds.eval_batches("validation", 3, 4)
  assert len(batches) == 4
  chex.assert_shape(batches, (3, 17))
  chex.assert_type(batches, np.int32)
  np.testing.assert_array_equal(np.stack(batches), np.stack(ds.eval_batches("validation", 3, 4)))
  stream = ds.split_tokens("validation")
  np.testing.assert_array_equal(batches[0][0], stream[:17])  # first and last windows
  np.testing.assert_array_equal(batches[-1][-1], stream[-17:])


def test_startup_errors():
  with pytest.raises(ConfigError, match=r"^model\.context_length:.*'validation'"):
    make_datasets(data_config(context_length=64, arithmetic__num_documents=20))
  c = data_config()
  c.model.vocab_size = 100
  with pytest.raises(ConfigError, match=r"^model\.vocab_size:"):
    make_datasets(c)
  with pytest.raises(ConfigError, match=r"^data\.source:"):
    make_datasets(data_config(source="wiki"))
  with pytest.raises(ConfigError, match=r"^data\.validation_fraction:"):
    make_datasets(data_config(validation_fraction=0.0))


# Shards.

def test_prepare_shards_matches_text_source(text_dir, tmp_path):
  c = data_config(source="text", path=str(text_dir), validation_fraction=0.3)
  out = tmp_path / "shards"
  meta = prepare_shards(c, str(out), progress=False)
  assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "validation.bin"]
  assert meta["dtype"] == "uint16" and meta["vocab_size"] == 256
  assert json.loads((out / "meta.json").read_text()) == meta
  from_text = make_datasets(c)
  s = data_config(source="shards", path=str(out))
  from_shards = make_datasets(s)
  for split in ("train", "validation"):
    np.testing.assert_array_equal(from_shards.split_tokens(split), from_text.split_tokens(split))
  assert meta["tokens"]["train"] == from_text.split_tokens("train").size
  np.testing.assert_array_equal(
      next(from_shards.train_iter(2, process_index=0, process_count=1)),
      next(from_text.train_iter(2, process_index=0, process_count=1)))

  meta["tokenizer"]["vocab_size"] = 300
  (out / "meta.json").write_text(json.dumps(meta))
  with pytest.raises(ConfigError, match=r"^data\.path:.*tokenizer"):
    make_datasets(s)
  s.data.path = str(tmp_path)
  with pytest.raises(ConfigError, match=r"^data\.path:"):
    make_datasets(s)


def test_the_loss_ignores_the_tokenizers_pad_id(tmp_path):
  """With a tokenizer.json whose end-of-text token is id 2, targets 2 leave the loss and
  target 0 (a real token) counts; bytes keep ignoring 0."""
  import jax
  import jax.numpy as jnp
  from ebt_jax import tasks
  from ebt_jax.tasks import text
  tokenizers = pytest.importorskip("tokenizers")
  vocab = {"!": 0, "<unk>": 1, "<|endoftext|>": 2, **{w: i + 3 for i, w in enumerate("abcde")}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.save(str(tmp_path / "tokenizer.json"))
  c = config_lib.base_config()
  c.model.update(vocab_size=8, dim=16, n_layers=1, n_heads=2, context_length=3)
  c.thinking.initial_condition = "zeros"
  byte_task = tasks.build(c)
  c_hf = c.copy_and_resolve_references()
  c_hf.data.tokenizer = str(tmp_path / "tokenizer.json")
  hf_task = tasks.build(c_hf)
  assert (byte_task.pad_id, hf_task.pad_id) == (0, 2)
  targets = jnp.array([[0, 2, 5]])
  np.testing.assert_array_equal(hf_task.target_mask(targets), [[1, 0, 1]])
  np.testing.assert_array_equal(byte_task.target_mask(targets), [[0, 1, 1]])
  params = hf_task.init_params(jax.random.key(0))
  tokens = jnp.array([[4, 0, 5, 2]])                  # targets 0 (a real token), 5, 2 (pad)
  out = jax.jit(lambda p: hf_task.objective(p, tokens))(params)
  nll = np.asarray(text.token_nll(out.final, tokens[:, 1:]))[0]
  np.testing.assert_allclose(out.metrics["ce_steps"][-1], nll[:2].mean(), rtol=1e-5)
  assert not np.isclose(nll[:2].mean(), nll.mean(), rtol=1e-3)
