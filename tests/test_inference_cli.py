"""`ebt eval | think | generate | bench` on tiny trained runs, in process."""

import gzip
import json

import numpy as np
import pytest

from ebt_jax import cli
from ebt_jax.tools import kernel_profile
from ebt_jax.training import trainer
from conftest import run_config

# Every test here trains or restores tiny runs (tens of seconds in all): CI runs them.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  ebt, base = tmp_path_factory.mktemp("ebt"), tmp_path_factory.mktemp("transformer")
  for kind, workdir in (("ebt", ebt), ("transformer", base)):
    config = run_config(kind, num_steps=3, eval_every=3, checkpoint_every=3)
    trainer.train(config, workdir, progress=False, log=lambda *a: None)
  return ebt, base


def test_eval_table_and_json(runs, tmp_path, capsys):
  ebt, base = runs
  out = tmp_path / "eval.json"
  assert cli.main(["eval", "--workdir", str(ebt), "--thinking-steps", "1,3", "--best-of", "1,2",
                   "--baseline", str(base), "--stop-thresholds", "0,1e9", "--batches", "1",
                   "--json", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "N=2" in printed and "Transformer++" in printed and "Adaptive compute" in printed
  assert "per landscape" in printed and "[12]" in printed   # 3 steps x 2 landscapes x 2
  report = json.loads(out.read_text())
  cells = {(r["dataset"], r["thinking_steps"], r["best_of"], r["energy_evaluations"])
           for r in report["results"]}
  assert cells == {("validation", k, n, 2 * k * n) for k in (1, 3) for n in (1, 2)}
  assert all(r["perplexity"] > 1 and r["baseline_perplexity"] > 1 for r in report["results"])
  assert len(report["ce_after_each_step"]["validation"]) == 6   # the N = 3 run's steps
  never, at_once = report["adaptive"]
  # Threshold 0 never stops: 6 steps per token and the 6-step perplexity. A huge threshold
  # stops every position after its first step (the first step always runs).
  assert never["mean_steps"] == 6
  assert never["ce"] == pytest.approx(report["ce_after_each_step"]["validation"][5], rel=1e-5)
  assert at_once["mean_steps"] == 1
  assert at_once["ce"] == pytest.approx(report["ce_after_each_step"]["validation"][0], rel=1e-5)


def test_think_prints_energies_and_writes_a_heatmap(runs, tmp_path, capsys):
  ebt, _ = runs
  png = tmp_path / "think.png"
  assert cli.main(["think", "--workdir", str(ebt), "--text", "x = 1\nprint(x)",
                   "--out", str(png), "--config.inference.thinking_steps=3"]) == 0
  printed = capsys.readouterr().out
  assert "final E" in printed and "perplexity of the text" in printed
  assert "thinking cost: 6 energy evaluations" in printed   # 3 steps x 2 landscapes
  assert len([l for l in printed.splitlines() if l.strip()[:1].isdigit()]) == 14   # one per byte
  assert png.stat().st_size > 5000


def test_generate_continues_the_prompt(runs, capsys):
  ebt, _ = runs
  assert cli.main(["generate", "--workdir", str(ebt), "--prompt", "import ", "--max-new-tokens",
                   "5", "--temperature", "0.8", "--top-p", "0.9", "--show-energies",
                   "--select", "max_gap"]) == 0
  printed = capsys.readouterr().out
  assert printed.startswith("import ")
  energies = printed.split("final energy / energy drop / steps\n")[1].splitlines()
  assert len(energies) == 5      # one line per generated token


def test_bench_prints_and_writes_the_figures(tmp_path, capsys):
  out, traces = tmp_path / "bench.json", tmp_path / "traces"
  assert cli.main(["bench", "--config", "tiny_cpu", "--repeats", "1", "--new-tokens", "4",
                   "--config.train.batch_size=2", "--config.model.n_layers=1",
                   "--json", str(out), "--profile", str(traces)]) == 0
  result = json.loads(out.read_text())
  for key in ("train_tokens_per_s", "think_step_ms", "generate_tokens_per_s",
              "generate_naive_tokens_per_s", "think_step_naive_ms", "peak_memory_bytes"):
    assert result[key] > 0, key
  printed = capsys.readouterr().out
  assert "tokens/s" in printed
  # The CPU backend's trace has no device timeline: the trace is written, the summary says so.
  assert result["train_profile"] is None and result["profile_dir"] == str(traces)
  assert list(traces.rglob(kernel_profile.TRACE_FILE))
  assert "profile: this backend's trace has no device timeline (CPU)" in printed


def _trace_event_file(path, events):
  """A Chrome trace-event file as jax.profiler writes it (gzipped JSON, durations in us)."""
  with gzip.open(path, "wt") as f:
    json.dump({"displayTimeUnit": "ns", "traceEvents": events}, f)
  return path


def test_kernel_profile_sums_the_first_devices_kernels(tmp_path):
  meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "process_name", "pid": 3, "args": {"name": "/device:GPU:1"}},
          {"ph": "M", "name": "thread_name", "pid": 2, "tid": 7,
           "args": {"name": "Stream #14(Compute,MemcpyD2D,Memset)"}},
          {"ph": "M", "name": "thread_name", "pid": 2, "tid": 8, "args": {"name": "XLA Modules"}}]

  def kernel(pid, tid, name, dur_us):
    return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": 0, "dur": dur_us}

  events = meta + [
      kernel(2, 7, "sm90_xmma_gemm_bf16bf16_bf16f32", 6000), kernel(2, 7, "memcpy128", 500),
      kernel(2, 7, "memcpy128", 1500), kernel(2, 7, "loop_select_fusion", 2400),
      kernel(2, 8, "jit_update", 10_000),          # spans the step: not a kernel
      kernel(3, 7, "memcpy128", 99_000),           # another device
      kernel(1, 1, "ThunkExecutor::Execute", 99_000)]     # the host
  summary = kernel_profile.summarize(_trace_event_file(tmp_path / "t.json.gz", events), steps=2)
  assert summary["device"] == "/device:GPU:0" and summary["kernels"] == 3
  np.testing.assert_allclose(summary["busy_ms"], 5.2)
  np.testing.assert_allclose([summary["by_kind_ms"][k] for k in ("matmul", "copy", "other")],
                             [3.0, 1.0, 1.2])
  assert [(k["name"], k["ms"], k["calls"]) for k in summary["top"]] == [
      ("sm90_xmma_gemm_bf16bf16_bf16f32", 3.0, 0.5), ("loop_select_fusion", 1.2, 0.5),
      ("memcpy128", 1.0, 1.0)]
  lines = kernel_profile.table(summary, step_ms=10.0, log_dir=tmp_path).splitlines()
  assert "kernels busy 5.2 ms per step (52.0% of the timed step)" in lines[0]
  assert "matmul 3.0 ms (30.0%), copy 1.0 ms (10.0%), other 1.2 ms (12.0%)" in lines[1]
  # A TPU-like device: only its "XLA Ops" thread counts, not the threads spanning programs.
  tpu = [{"ph": "M", "name": "process_name", "pid": 4, "args": {"name": "/device:TPU:0"}},
         {"ph": "M", "name": "thread_name", "pid": 4, "tid": 1, "args": {"name": "XLA Ops"}},
         {"ph": "M", "name": "thread_name", "pid": 4, "tid": 2, "args": {"name": "Steps"}},
         kernel(4, 1, "fusion.3", 700), kernel(4, 1, "convolution.1", 300),
         kernel(4, 2, "0", 5000)]
  summary = kernel_profile.summarize(_trace_event_file(tmp_path / "tpu.json.gz", tpu), steps=1)
  assert (summary["device"], summary["busy_ms"], summary["by_kind_ms"]["matmul"]) == (
      "/device:TPU:0", 1.0, 0.3)
  # A trace with no device timeline (the CPU backend) has no summary.
  assert kernel_profile.summarize(_trace_event_file(tmp_path / "cpu.json.gz", meta[:1] + [
      kernel(1, 1, "ThunkExecutor::Execute", 5)]), steps=1) is None


def test_bench_profile_must_be_a_directory(tmp_path, capsys):
  afile = tmp_path / "notadir"
  afile.write_text("")
  assert cli.main(["bench", "--config", "tiny_cpu", "--profile", str(afile)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--profile: expected a directory" in err[0], err


@pytest.mark.parametrize("args,message", [
    (["--best-of", "0"], "--best-of: expected"),
    (["--thinking-steps", "two"], "--thinking-steps: expected"),
    (["--config.model.dim=8"], "--config.model.dim: only --config.inference.*"),
    (["--config.inference.stop_on=sometimes"], "inference.stop_on: expected"),
])
def test_eval_rejects_bad_input_in_one_line(runs, capsys, args, message):
  ebt, _ = runs
  assert cli.main(["eval", "--workdir", str(ebt), *args]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0], err


def test_baseline_must_be_a_transformer_on_the_same_tokens(runs, capsys):
  ebt, _ = runs
  assert cli.main(["eval", "--workdir", str(ebt), "--baseline", str(ebt), "--batches", "1"]) == 2
  assert "--baseline" in capsys.readouterr().err


def test_sweep_inner_runs_every_optimizer(runs, tmp_path, capsys):
  ebt, _ = runs
  out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
  assert cli.main(["sweep-inner", "--workdir", str(ebt), "--steps", "1,2", "--batches", "1",
                   "--step-count", "total", "--json", str(out), "--plot", str(png)]) == 0
  rows = json.loads(out.read_text())["results"]
  from ebt_jax.commands import sweep
  assert {r["optimizer"] for r in rows} == set(sweep.DEFAULT_SWEEP)
  assert all(np.isfinite(r["ce"]) for r in rows)
  by = {(r["optimizer"], r["thinking_steps"]): r["ce"] for r in rows}
  # One step of momentum (zero initial velocity) and of nesterov's first step differ only by
  # beta * g; gd and momentum coincide after one step.
  assert by[("gd", 1)] == pytest.approx(by[('momentum:{"beta": 0.5}', 1)], rel=1e-6)
  assert png.stat().st_size > 5000
  assert cli.main(["sweep-inner", "--workdir", str(ebt), "--optimizers", "sgdd"]) == 2
  assert "--optimizers: expected names from" in capsys.readouterr().err
