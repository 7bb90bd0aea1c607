"""The README's walkthrough runs as written: its commands are read out of README.md (the
block between the `<!-- walkthrough` markers), so the README and this test cannot drift.

The run directory becomes a temporary one and the training command gets a few more
overrides (2 steps, one layer), so the whole walkthrough takes seconds, not a minute.
"""

import contextlib
import io
import shlex
from pathlib import Path

import pytest

from ebt_jax import cli

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"
FAST_TRAIN = ["--no-progress", "--config.train.num_steps=2", "--config.train.eval_every=2",
              "--config.train.checkpoint_every=2", "--config.model.n_layers=1"]


def walkthrough_commands() -> list[str]:
  text = README.read_text()
  start = text.index("<!-- walkthrough")
  block = text[start:text.index("<!-- /walkthrough -->", start)]
  fence = block.index("```bash\n") + len("```bash\n")
  lines = [line.strip() for line in block[fence:block.index("```", fence)].splitlines()]
  return [line for line in lines if line]


def run(argv) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = cli.main(argv)
  return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("walkthrough") / "tiny")
  results = {}
  for line in walkthrough_commands():
    words = shlex.split(line)
    assert words[0] == "ebt", line
    argv = [workdir if w == "runs/tiny" else w for w in words[1:]]
    if argv[0] == "train":
      argv += FAST_TRAIN
    results[argv[0]] = (line, *run(argv))
  return workdir, results


def test_the_readme_block_is_the_walkthrough():
  commands = walkthrough_commands()
  assert [shlex.split(c)[1] for c in commands] == ["train", "eval", "think", "generate", "plot"]
  text = README.read_text()
  for command in commands:   # the README shows each command's real output under it
    assert f"$ {command}\n" in text, command


def test_every_walkthrough_command_exits_0(walkthrough):
  _, results = walkthrough
  for command, (line, status, out, err) in results.items():
    assert status == 0, (line, err)
    assert "1 steps" not in out, (line, out)
  assert "validation perplexity by thinking step" in results["train"][2]
  assert "  1 step " in results["eval"][2] and "  4 steps" in results["eval"][2]
  think = results["think"][2]
  assert "final E" in think and "energy landscape changes after 1 step" in think
  assert results["generate"][2].startswith("import ")
  assert "curves.png" in results["plot"][2]


def test_generate_fills_the_context_and_escapes_control_bytes(walkthrough):
  workdir, _ = walkthrough
  # 8 prompt bytes in a 32-byte context: 24 new tokens by default, the BEL byte escaped.
  status, out, err = run(["generate", "--workdir", workdir, "--prompt", "import\x07 ",
                          "--show-energies"])
  assert status == 0 and err == "", err
  assert out.startswith("import\\x07 ") and "\x07" not in out
  energies = out.split("final energy / energy drop / steps\n")[1].splitlines()
  assert len(energies) == 32 - 8


def test_generate_with_a_prompt_that_fills_the_context(walkthrough):
  workdir, _ = walkthrough
  prompt = "x" * 40
  status, out, err = run(["generate", "--workdir", workdir, "--prompt", prompt])
  assert status == 2 and "Traceback" not in err
  assert err.strip().splitlines() == [
      "ebt generate: error: --prompt: its 40 tokens fill the trained context of 32; shorten "
      "it, or pass --max-new-tokens to generate past the context anyway"]
  # An explicit count still generates past the context, with a note.
  status, out, err = run(["generate", "--workdir", workdir, "--prompt", prompt,
                          "--max-new-tokens", "2"])
  assert status == 0 and out.startswith(prompt)
  assert "note: 40 prompt + 2 new tokens exceed the trained context of 32" in err
