"""Every user error ends in one line on stderr and exit status 2, never a traceback.

Each case feeds a bad input to the CLI in process (`ebt_jax.cli.main`): an exception that
escaped `main` would fail the test with its traceback. Nothing here trains or compiles.
"""

import collections
import io
import pickle
import subprocess
import zipfile
from unittest import mock

import numpy as np
import pytest

from ebt_jax import cli, tasks
from ebt_jax import config as config_lib
from ebt_jax.commands.evaluation import System2Report
from ebt_jax.commands.sweep import SweepReport
from ebt_jax.commands.uncertainty import TokenEnergies


def one_line_error(capsys, argv) -> str:
  """Runs `ebt ARGV`; asserts status 2 and a single line on stderr; returns that line."""
  status = cli.main(argv)
  err = capsys.readouterr().err
  assert status == 2, err
  assert "Traceback" not in err
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith(f"ebt {argv[0]}: error: "), lines[0]
  return lines[0]


# --- config files ---------------------------------------------------------------------------

@pytest.mark.parametrize("body,message", [
    ('def get_config():\n  raise RuntimeError("boom\\nsecond line")\n',
     "get_config() failed (RuntimeError: boom)"),
    ('def get_config():\n  return {"model": {"dim": 64}}\n',
     "get_config() returned a dict, expected an ml_collections.ConfigDict"),
    ("def get_config(:\n", "failed to load (SyntaxError: "),
    ("x = 1\n", "defines no get_config()"),
])
def test_bad_config_files(tmp_path, capsys, body, message):
  path = tmp_path / "my_config.py"
  path.write_text(body)
  line = one_line_error(capsys, ["train", "--config", str(path), "--workdir", str(tmp_path / "w")])
  assert message in line and str(path) in line
  assert not (tmp_path / "w").exists()


def test_missing_config_suggests_the_bundled_names(capsys):
  line = one_line_error(capsys, ["train", "--config", "tiny_cpuu"])
  assert "no file 'tiny_cpuu' and no bundled config of that name" in line
  names = cli.bundled_config_names()
  assert {"default", "tiny_cpu", "denoise", "ebt_s1"} <= set(names)
  assert f"(bundled: {', '.join(names)})" in line


def test_a_config_that_is_not_a_run_config(tmp_path, capsys):
  line = one_line_error(capsys, ["train", "--config", "scale:cpu", "--workdir", str(tmp_path)])
  assert line.startswith("ebt train: error: --config scale:cpu: not a run config (no data, "
                         "denoise,")
  assert "expected one built on ebt_jax.config.base_config()" in line


@pytest.mark.parametrize("command", ["train", "bench", "prepare", "import-torch",
                                     "compile-report"])
def test_help_shows_the_config_forms_and_bundled_names(capsys, command):
  with pytest.raises(SystemExit) as info:
    cli.main([command, "--help"])
  assert info.value.code == 0
  out = capsys.readouterr().out
  assert "--config.SECTION.FIELD=VALUE" in out and "NAME:VARIANT" in out
  assert "--config.data.ood_suites=dyck_depth_8,arithmetic_digits_5" in out
  for name in cli.bundled_config_names():
    assert name in out, name


@pytest.mark.parametrize("command", ["eval", "think", "generate", "sweep-inner"])
def test_help_of_the_thinking_commands_shows_inference_overrides(capsys, command):
  with pytest.raises(SystemExit):
    cli.main([command, "--help"])
  assert "--config.inference.FIELD=VALUE" in capsys.readouterr().out


# --- tuple fields from the command line -----------------------------------------------------

@pytest.mark.parametrize("raw,expected", [
    ("dyck_depth_8,arithmetic_digits_5", ("dyck_depth_8", "arithmetic_digits_5")),
    (" dyck_depth_8 , arithmetic_digits_5 ,", ("dyck_depth_8", "arithmetic_digits_5")),
    ("dyck_depth_8", ("dyck_depth_8",)),
    ("('dyck_depth_8', 'arithmetic_digits_5')", ("dyck_depth_8", "arithmetic_digits_5")),
    ("['dyck_depth_8']", ("dyck_depth_8",)),
    ("()", ()),
    ("", ()),
])
def test_tuple_fields_take_comma_lists_and_literals(raw, expected):
  c = config_lib.base_config()
  cli.apply_overrides(c, [f"--config.data.ood_suites={raw}"])
  assert c.data.ood_suites == expected
  config_lib.validate(c)


def test_numbers_in_a_comma_list_become_numbers():
  c = config_lib.base_config()
  cli.apply_overrides(c, ["--config.inference.ddim_steps=1,5,100"])
  assert c.inference.ddim_steps == (1, 5, 100)
  cli.apply_overrides(c, ["--config.inference.ddim_steps=(2, 4)"])
  assert c.inference.ddim_steps == (2, 4)
  assert cli._parse_value("1,2.5,x", (), tuple) == (1, 2.5, "x")


def test_comma_list_of_suites_validates_for_a_text_run():
  config, _ = cli.load_config_file("tiny_cpu")
  cli.apply_overrides(config, ["--config.data.ood_suites=dyck_depth_8,arithmetic_digits_5"])
  tasks.build(config)   # validates, suites included


@pytest.mark.parametrize("raw,message", [
    ("a,b", "data.ood_suites: expected names like 'dyck_depth_8'"),
    ("('dyck_depth_8',", "--config.data.ood_suites: cannot use"),
    ("{1, 2}", "--config.data.ood_suites: cannot use '{1, 2}' (expected a sequence, got a set)"),
])
def test_bad_tuple_values_are_one_line(tmp_path, capsys, raw, message):
  line = one_line_error(capsys, ["train", "--config", "tiny_cpu", "--workdir", str(tmp_path / "w"),
                                 f"--config.data.ood_suites={raw}"])
  assert message in line and "ast." not in line


# --- tokenizer.json and a run's config.json -------------------------------------------------

@pytest.mark.parametrize("content", ["not json{", "{}"])
def test_tokenizer_json_that_is_not_a_tokenizer(tmp_path, capsys, content):
  bad = tmp_path / "bad.json"
  bad.write_text(content)
  line = one_line_error(capsys, ["train", "--config", "tiny_cpu", "--workdir",
                                 str(tmp_path / "w"), f"--config.data.tokenizer={bad}"])
  assert f"data.tokenizer: {bad}" in line
  if not line.endswith('pip install "ebt_jax[tokenizers]"'):   # `tokenizers` is installed
    assert "is not a valid tokenizer.json" in line
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("content", ["{bad", "[1, 2]", '"text"'])
def test_run_config_json_that_is_not_valid(tmp_path, capsys, content):
  (tmp_path / "config.json").write_text(content)
  line = one_line_error(capsys, ["eval", "--workdir", str(tmp_path)])
  assert f"--workdir: {tmp_path / 'config.json'} is not a valid run config" in line


# --- torch checkpoints ----------------------------------------------------------------------

class _Name:
  """A module-level name in the pickle stream (torch.save's classes and functions)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle checks only that a reduce function is callable
    raise NotImplementedError


class _Storage:
  def __init__(self, pid):
    self.pid = pid


class _Tensor:
  def __init__(self, storage, size, stride):
    self.storage, self.size, self.stride = storage, size, stride


class _TorchPickler(pickle._Pickler):
  """Writes what torch.save writes: tensor rebuild calls over storages named by persistent
  ids; here each storage carries the persistent id to write, well formed or not."""

  dispatch = pickle._Pickler.dispatch.copy()

  def __init__(self, file):
    super().__init__(file, protocol=2)

  def _save_name(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  def _save_tensor(self, t):
    self.save_reduce(_Name("torch._utils", "_rebuild_tensor_v2"),
                     (t.storage, 0, t.size, t.stride, False, collections.OrderedDict()), obj=t)

  dispatch[_Name] = _save_name
  dispatch[_Tensor] = _save_tensor

  def persistent_id(self, obj):
    return obj.pid if isinstance(obj, _Storage) else None


def write_torch_file(path, obj, storages=None):
  buffer = io.BytesIO()
  _TorchPickler(buffer).dump(obj)
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", buffer.getvalue())
    z.writestr("archive/version", "3\n")
    for key, raw in (storages or {}).items():
      z.writestr(f"archive/data/{key}", raw)
  return path


FLOAT = _Name("torch", "FloatStorage")
FOUR_FLOATS = {"0": np.arange(4, dtype=np.float32).tobytes()}


def test_checkpoint_whose_names_do_not_match_the_config(tmp_path, capsys):
  ckpt = write_torch_file(tmp_path / "other.ckpt", {
      "state_dict": {"encoder.weight": 1.0, "decoder.bias": 2.0}, "hyper_parameters": {}})
  line = one_line_error(capsys, ["import-torch", str(ckpt), "--config", "tiny_cpu",
                                 "--out", str(tmp_path / "run")])
  assert f"{ckpt}: import_official: state_dict lacks" in line
  # Right names, but not tensors.
  from ebt_jax.checkpoint.official import _entries
  config, _ = cli.load_config_file("tiny_cpu")
  names = {name: "text" for name in _entries(config)}
  ckpt = write_torch_file(tmp_path / "strings.ckpt", {"state_dict": names})
  line = one_line_error(capsys, ["import-torch", str(ckpt), "--config", "tiny_cpu",
                                 "--out", str(tmp_path / "run")])
  assert f"{ckpt}: import_official:" in line and "is not a tensor (a str)" in line


def _tensor(pid, size=(4,), stride=(1,)):
  return {"state_dict": collections.OrderedDict(w=_Tensor(_Storage(pid), size, stride))}


@pytest.mark.parametrize("obj,message", [
    (_tensor(("storage", "x")), "malformed persistent id ('storage', 'x')"),
    (_tensor(7), "malformed persistent id 7"),
    (_tensor(("storage", "FloatStorage", "0", "cpu", 4)),
     "'FloatStorage' is not a torch storage type"),
    (_tensor(("module", FLOAT, "0", "cpu", 4)), "unsupported persistent id 'module'"),
    (_tensor(("storage", FLOAT, 0, "cpu", 4)), "malformed persistent id: storage key 0"),
    (_tensor(("storage", FLOAT, "0", "cpu", -1)), "element count -1"),
    (_tensor(("storage", FLOAT, "9", "cpu", 4)), "the archive has no storage 'archive/data/9'"),
    (_tensor(("storage", FLOAT, "0", "cpu", 1000)), "holds 16 bytes, fewer than its 1000"),
    (_tensor(("storage", _Name("torch", "ComplexStorage"), "0", "cpu", 4)),
     "unsupported tensor storage type torch.ComplexStorage"),
    (_tensor(("storage", FLOAT, "0", "cpu", 4), size=(100,)),
     "a tensor of size (100,), stride (1,) at offset 0 does not fit its storage of 4"),
    (_tensor(("storage", FLOAT, "0", "cpu", 4), size=(2, 2), stride=(1, -1)), "does not fit"),
    ({"state_dict": [1, 2]}, "'state_dict' and 'hyper_parameters' must be dictionaries"),
])
def test_malformed_torch_files(tmp_path, capsys, obj, message):
  ckpt = write_torch_file(tmp_path / "bad.ckpt", obj, FOUR_FLOATS)
  line = one_line_error(capsys, ["import-torch", str(ckpt), "--config", "tiny_cpu",
                                 "--out", str(tmp_path / "run")])
  assert line.startswith(f"ebt import-torch: error: {ckpt}: ") and message in line, line
  assert not (tmp_path / "run").exists()


def test_truncated_pickle_is_one_line(tmp_path, capsys):
  ckpt = tmp_path / "cut.ckpt"
  with zipfile.ZipFile(ckpt, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"state_dict": {"a": 1}}, protocol=2)[:-5])
  line = one_line_error(capsys, ["import-torch", str(ckpt), "--out", str(tmp_path / "run")])
  assert f"{ckpt}: unreadable" in line


def test_side_by_side_bench_times_a_text_ebt_only(capsys):
  """The GPU side-by-side (launch/gpu_bench.sh) refuses a config it cannot time on both
  sides before it starts a process, and times a recipe at the official per-GPU batch."""
  from ebt_jax.tools import official_side_by_side as side_by_side
  with pytest.raises(SystemExit) as exit_info:
    side_by_side.main(["--official-repo", "unused", "--bench", "--config", "transformer:xxs"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err == ("error: --config: expected a text EBT (the official step timed is "
                 "EBT_NLP's), got \"model.kind='transformer'\""), err
  config, _, batch = side_by_side.bench_config("ebt_s1:xxs", None)
  assert (batch, config.model.dtype, config.model.context_length) == (32, "bfloat16", 256)
  config, _, batch = side_by_side.bench_config(None, None)
  assert (batch, config.model.dim, config.model.dtype) == (8, 384, "float32")
  # Overrides reach the timed config (launch/gpu_bench.sh unrolls the layers on a GPU), and
  # a bad one fails in one line before any process starts.
  config, _, _ = side_by_side.bench_config("ebt_s1:xxs", None, ("--config.model.scan_layers",
                                                                "False"))
  assert config.model.scan_layers is False
  with pytest.raises(SystemExit) as exit_info:
    side_by_side.main(["--official-repo", "unused", "--bench", "--config", "ebt_s1:xxs",
                       "--config.model.scan_layer=False"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip() == (
      "error: --config.model.scan_layer: the config has no such field")
  # A side's process that fails brings its stderr along (its stdout is only the JSON line).
  failed = subprocess.CompletedProcess([], 1, stdout="", stderr="Traceback ...\nImportError: torch")
  with mock.patch.object(side_by_side.subprocess, "run", return_value=failed) as run, \
      pytest.raises(RuntimeError, match=r"(?s)torch side's process failed \(exit 1\).*"
                                        r"ImportError: torch"):
    side_by_side.bench("unused", repeats=1, rounds=1, overrides=("--config.model.dim=192",))
  assert run.call_args.args[0][-1] == "--config.model.dim=192"   # each side gets them


# --- output wording -------------------------------------------------------------------------

def test_one_step_rows_are_singular():
  report = System2Report("runs/x", 3, [1, 2], [1], {"validation": [[1.0], [0.5]]},
                         {"validation": [1.0, 0.5]}, [])
  table = report.table()
  assert "  1 step " in table and "  2 steps" in table and "1 steps" not in table
  sweep = SweepReport("runs/x", 3, [1, 2], {"gd": [1.0, 0.5]}).table()
  assert " 1 step " in sweep and "2 steps" in sweep and "1 steps" not in sweep


def test_think_marks_landscape_changes(tmp_path):
  energies = np.array([[3.0, 2.0, 1.0], [4.0, 3.5, 2.0], [3.0, 3.0, 1.5]])   # rises at step 1
  report = TokenEnergies(tokens=list("abc"), energies=energies, steps_used=np.full(3, 2),
                         next_token_prob=np.array([0.5, 0.25]), predicted=list("bcd"),
                         landscapes=np.array([0, 1, 1]))
  assert report.landscape_changes == [1]
  assert "energy landscape changes after 1 step" in report.table()
  assert "expected" in report.table().splitlines()[-1]
  assert report.heatmap(tmp_path / "think.png").stat().st_size > 5000
  report.landscapes = np.zeros(3, np.int32)   # a `default` EBT: one landscape
  assert report.landscape_changes == [] and "landscape" not in report.table()


def test_control_characters_are_escaped():
  assert cli.escape_control("a\x07b\x00\r\x1b[2J\tc\nd\u200be é\ufffd") == \
      "a\\x07b\\x00\\r\\x1b[2J\tc\nd\\u200be é\ufffd"
