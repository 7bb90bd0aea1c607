"""TPU compile report and layout planner, compiled for compile-only TPU devices (libtpu,
the [tpu] extra; skipped without it): figures against plain formulas, FLOPs of every
layer (the cost analysis of the layers-unrolled program), the planner's choice where the
default layout does not fit, multi-slice meshes, the HLO collective count, and one-line
errors for bad topologies."""

import contextlib
import dataclasses
import functools
import io
import json

import jax
import ml_collections
import pytest

from ebt_jax import cli
from ebt_jax.errors import ConfigError
from ebt_jax.parallel import mesh as mesh_lib, topology
from ebt_jax.tools import compile_report, plan
from ebt_jax.training import program as program_lib

pytest.importorskip("libtpu", reason="needs the [tpu] extra: pip install -e '.[dev,tpu]'")
# A program the other pytest-xdist worker compiled first is found in the run's shared
# compilation cache (tests/conftest.py) but cannot be loaded without a TPU; JAX warns and
# compiles it.
pytestmark = pytest.mark.filterwarnings("ignore:Error reading persistent compilation cache")

# One attention head (tensor parallelism has nothing to split), width 16, two layers: XLA
# drops a scan of one layer, so one layer would not show what the layer scan hides from the
# cost analysis. Every program here has this base, so that the searches, the report and
# the resumed searches share their compiles (`shared_compiles`).
OVERRIDES = ["--config.model.dim=16", "--config.model.n_layers=2", "--config.model.n_heads=1",
             "--config.model.vocab_size=16", "--config.model.context_length=8",
             "--config.thinking.num_steps=1", "--config.train.batch_size=4"]
V5E_PEAK = 197e12


@pytest.fixture(scope="module", autouse=True)
def tpu_env():
  # What `ebt compile-report --topology` sets, undone after this module so later tests'
  # subprocesses do not inherit it.
  with pytest.MonkeyPatch.context() as mp:
    for name, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
                        ("TPU_WORKER_HOSTNAMES", "localhost"),
                        ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
      mp.setenv(name, value)
    yield


@pytest.fixture(scope="module", autouse=True)
def shared_compiles():
  """Each program compiles once in this module: its searches compile the same layouts
  again (a resumed search, the CLI beside the library, a plan beside a report). The cache
  is keyed by all that `_build` reads, so a layout the planner configured differently
  still compiles afresh."""
  build, built = compile_report._build, {}

  def cached_build(config, topology_, program):
    key = (config.to_json_best_effort(sort_keys=True), topology_, program)
    if key not in built:
      prog, compile_, *rest = build(config, topology_, program)
      built[key] = (prog, functools.cache(compile_), *rest)
    return built[key]
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(compile_report, "_build", cached_build)
    yield


def tiny_config(overrides=OVERRIDES):
  config, _ = cli.load_config_file("tiny_cpu")
  cli.apply_overrides(config, overrides)
  return config


@pytest.fixture(scope="module")
def cli_report(tmp_path_factory):
  """`ebt compile-report --topology v5e:2x2 --json F` on the default layout: (table, JSON,
  what it said on stderr while compiling)."""
  path = tmp_path_factory.mktemp("report") / "report.json"
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = cli.main(["compile-report", "--config", "tiny_cpu", *OVERRIDES,
                   "--topology", "v5e:2x2", "--json", str(path)])
  assert rc == 0
  return out.getvalue(), json.loads(path.read_text()), err.getvalue()


@pytest.mark.slow
def test_report_figures(cli_report):
  table, r, progress = cli_report
  assert progress.splitlines()[0] == (
      "compiling the train program for v5e:2x2 (4 chips, data=4 fsdp=1 tensor=1)")
  assert "compiling it again with the layers unrolled" in progress
  assert progress.count("  compiled in ") == 2, progress
  config = tiny_config()
  mem = r["memory_per_chip"]
  assert (r["topology"], r["num_chips"], r["device_kind"]) == ("v5e:2x2", 4, "TPU v5 lite")
  assert r["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  assert mem["hbm_bytes"] == 16 * 2**30 and mem["fits"] is True
  assert mem["argument_bytes"] > 0 and mem["output_bytes"] > 0
  assert mem["peak_bytes"] == (mem["argument_bytes"] + mem["temp_bytes"] + mem["output_bytes"]
                               - mem["alias_bytes"])
  flops, seconds = r["model_flops_per_step"], r["estimate"]["step_seconds"]
  assert flops > 0 and r["xla_flops_per_chip"] > 0 and r["xla_bytes_accessed_per_chip"] > 0
  assert seconds > 0 and r["estimate"]["source"] == "estimate (XLA cost model)"
  assert r["compiled_over_model_flops"] == pytest.approx(4 * r["xla_flops_per_chip"] / flops)
  # The cost figures are of the program compiled again with its layers unrolled: no loop
  # left, so every layer counts. Compiled / model FLOPs was 1.66 (the model's count has
  # only the matmuls and attention; the cost analysis also counts the elementwise work,
  # which a width of 16 makes large); with the layer scan (--no-unrolled-cost) it was 1.11.
  assert r["cost_analysis_program"] == "layers unrolled"
  assert r["cost_analysis_while_loops"] == 0 and r["cost_analysis_compile_s"] > 0
  assert 1.3 < r["compiled_over_model_flops"] < 2.0
  tokens = config.train.batch_size * config.model.context_length
  assert r["tokens_per_step"] == tokens
  assert r["estimate"]["tokens_per_s_per_chip"] == pytest.approx(tokens / seconds / 4)
  assert r["estimate"]["mfu"] == pytest.approx(flops / (seconds * 4 * V5E_PEAK))
  # The roofline: XLA's FLOPs at v5e's peak or its bytes at v5e's 819 GB/s, the longer.
  roof = r["roofline"]
  compute, hbm = r["xla_flops_per_chip"] / V5E_PEAK, r["xla_bytes_accessed_per_chip"] / 819e9
  assert roof["source"] == compile_report.ROOFLINE and roof["hbm_bytes_per_s"] == 819e9
  assert roof["step_seconds"] == pytest.approx(max(compute, hbm))
  assert roof["bound"] == ("compute" if compute >= hbm else "HBM bandwidth")
  assert roof["tokens_per_s_per_chip"] == pytest.approx(tokens / max(compute, hbm) / 4)
  assert roof["mfu"] == pytest.approx(flops / (max(compute, hbm) * 4 * V5E_PEAK))
  # Data parallelism over 4 chips: the gradients are all-reduced, nothing is gathered.
  assert r["collectives"]["all-reduce"]["count"] >= 1
  assert r["collectives"]["all-reduce"]["bytes"] > 0
  assert r["collectives"]["all-gather"]["count"] == 0
  assert "estimate (XLA cost model)" in table and "v5e:2x2 (4 x TPU v5 lite)" in table
  assert "device memory 16.000 GiB: fits" in table
  assert f"roofline step time {roof['step_seconds']:.4g} s ({roof['bound']})" in table
  assert "of the program with layers unrolled" in table and "no loops left" in table
  # That compile's peak memory comes along: the peak of the config compiled unrolled.
  unrolled = compile_report.compile_report(
      tiny_config(OVERRIDES + ["--config.model.scan_layers=False"]), topology.parse("v5e:2x2"),
      unrolled_cost=False)
  assert mem["unrolled_peak_bytes"] == unrolled.memory.peak_bytes > 0
  assert mem["unrolled_fits"] is True
  assert ("  with the layers unrolled (--config.model.scan_layers=False): peak "
          f"{unrolled.memory.peak_bytes / 2**30:.3f} GiB per chip, fits") in table
  assert compile_report.TopologyReport.from_json(r).unrolled_peak_bytes == mem[
      "unrolled_peak_bytes"]


@pytest.fixture(scope="module")
def scanned_plan():
  """The search on v5e:2x2, each layout compiled once (no unrolled compile), and
  the plan so far as it stood after each compile: (plan, partial plans)."""
  partials = []
  result = plan.plan(tiny_config(), topology.parse("v5e:2x2"), remats=("none",),
                     unrolled_top=0, progress=partials.append, log=lambda line: None)
  return result, partials


@pytest.mark.slow
def test_plan_shards_what_does_not_fit_replicated(scanned_plan):
  """On chips one byte short of the replicated layout, the planner picks an FSDP layout."""
  plan_, _ = scanned_plan
  default_peak = next(c for c in plan_.candidates
                      if c.layout.fsdp == 1).report.memory.peak_bytes
  # No unrolled second compile: this test is about memory. Two meshes at a time, as
  # `--jobs 2` (their compiles are the shared search's: only the chip's HBM differs).
  result = plan.plan(tiny_config(), topology.parse("v5e:2x2"), remats=("none",),
                     hbm_bytes=default_peak - 1, unrolled_top=0, jobs=2,
                     log=lambda line: None)
  by_layout = {(c.layout.data, c.layout.fsdp, c.layout.tensor): c for c in result.candidates}
  assert set(by_layout) == {(1, 4, 1), (2, 2, 1), (4, 1, 1)}
  replicated = by_layout[(4, 1, 1)]
  assert replicated.report.memory.peak_bytes == default_peak and not replicated.fits
  best = result.best
  assert best is not None and best.fits and best.layout.fsdp > 1
  assert best.report.memory.peak_bytes < default_peak
  assert result.candidates[0] is best and not result.candidates[-1].fits
  # one head: tensor parallelism (2 or 4 ways) is pruned before compiling
  assert result.pruned == {"tensor must divide model.n_heads=1": ["1x2x2", "2x1x2", "1x1x4"]}
  assert {c.report.cost_program for c in result.candidates} == {"as configured"}
  table = result.table()
  assert _aligned(table, len(result.candidates))
  assert table.splitlines()[0].endswith("collectives of the program as configured")
  assert table.splitlines()[-1] == "Best: " + " ".join(
      [f"--config.mesh.data={best.layout.data}", f"--config.mesh.fsdp={best.layout.fsdp}",
       "--config.mesh.tensor=1", "--config.model.remat=none", "--config.train.batch_size=4"])
  # Where the cost model gives no step time (most real programs), its cells say n/a, in line.
  best.report = dataclasses.replace(best.report, optimal_seconds=None)
  assert "n/a" in result.table().splitlines()[2]
  assert _aligned(result.table(), len(result.candidates))
  # The roofline ranks first: a cost-model step time, however short, does not lift a
  # layout whose roofline is slower above one the cost model is silent on.
  slow, fast = (plan.Candidate(c.layout, c.report) for c in plan_.candidates[:2])
  fast.report = dataclasses.replace(slow.report, xla_flops=slow.report.xla_flops / 2,
                                    xla_bytes_accessed=slow.report.xla_bytes_accessed / 2,
                                    optimal_seconds=None)
  slow.report = dataclasses.replace(slow.report, optimal_seconds=1e-12)
  assert sorted([slow, fast], key=plan.Candidate.rank_key) == [fast, slow]
  # A best layout that fits only with remat: unrolled layers may fit without it, and the
  # note gives the overrides that check it (none where remat is not needed, or the
  # layers are unrolled already).
  assert plan.unrolled_note(tiny_config(), result.candidates) is None
  dots = plan.Candidate(dataclasses.replace(best.layout, remat="dots"), best.report)
  note = plan.unrolled_note(tiny_config(), [dots])
  assert note.startswith(f"{dots.layout} needs remat with its layers scanned;")
  assert note.endswith(f"`ebt compile-report` with {' '.join(best.layout.overrides())} "
                       "--config.model.scan_layers=False tells (a 2.5-17x longer compile)")
  unrolled = tiny_config(OVERRIDES + ["--config.model.scan_layers=False"])
  assert plan.unrolled_note(unrolled, [dots]) is None
  assert plan.unrolled_note(tiny_config(), [plan.Candidate(dots.layout, error="over")]) is None


@pytest.fixture(scope="module")
def unrolled_plan():
  """A two-layer search on v5e:2x2 whose best layout by the scanned figures is unrolled."""
  return plan.plan(tiny_config(), topology.parse("v5e:2x2"), remats=("none",),
                   unrolled_top=1, log=lambda line: None)


@pytest.mark.slow
def test_plan_unrolls_the_best_layouts_only(unrolled_plan):
  """Every layout compiles once (scanned: one layer's cost); the best by those figures
  compiles again unrolled and ranks first, on figures that count both layers."""
  config = tiny_config()
  result = unrolled_plan
  best, *rest = result.candidates
  assert len(rest) == 2 and best.report.counts_every_layer
  assert best.report.cost_program == "layers unrolled"
  # The others keep their first compile's figures, which rank below the best's.
  assert [c.report.counts_every_layer for c in rest] == [False] * len(rest)
  first = plan.Candidate(best.layout, compile_report.compile_report(
      _with_mesh(config, best.layout), topology.parse("v5e:2x2"), unrolled_cost=False))
  assert all(first.rank_key() <= c.rank_key() for c in rest)
  assert best.report.xla_flops > first.report.xla_flops      # the second layer counts
  assert best.report.scanned_roofline_seconds == first.report.roofline_seconds
  assert best.report.memory.peak_bytes == first.report.memory.peak_bytes
  rows = result.table().splitlines()[2:2 + len(result.candidates)]
  assert [row.split()[7] for row in rows] == ["all"] + ["one"] * len(rest)
  assert result.to_json()["candidates"][0]["report"]["cost_analysis_counts_every_layer"]
  # Unrolled figures rank above scanned ones, whatever the scanned roofline says.
  fast = dataclasses.replace(rest[0].report, xla_flops=1.0, xla_bytes_accessed=1.0)
  assert plan.Candidate(rest[0].layout, fast).rank_key() > best.rank_key()


def test_plan_keeps_the_first_figures_where_the_unrolled_compile_fails(monkeypatch,
                                                                      scanned_plan):
  def fail(*args, **kwargs):
    raise RuntimeError("no unrolled program\nsecond line")
  monkeypatch.setattr(compile_report, "with_unrolled_cost", fail)
  logged = []
  # The scanned compiles come from the shared search (as `--resume` reuses them); the
  # unrolled ones, all that this test is about, run here and fail.
  result = plan.plan(tiny_config(), topology.parse("v5e:2x2"), remats=("none",),
                     unrolled_top=2, previous=scanned_plan[0].to_json(), log=logged.append)
  assert len(result.candidates) == 3 and result.best is not None
  assert not any(c.report.counts_every_layer for c in result.candidates)
  assert result.not_unrolled == [c.layout for c in result.candidates[:2]]
  assert "  the unrolled compile failed: RuntimeError: no unrolled program" in logged
  assert ("  cost of one layer only (unrolled compile over the time budget or failed): "
          f"{result.candidates[0].layout.data}x") in result.table()


def test_plan_unrolls_the_most_sharded_layout_as_a_baseline(scanned_plan):
  """The scanned figures can misplace a layout. Here the most sharded one (1x4x1, the
  best with every layer) has its first-cut figures tripled, to last place: N = 1 unrolls
  the first cut's leader and that baseline, not the third, and the baseline comes out best,
  with a note giving both of its places."""
  previous = scanned_plan[0].to_json()
  for entry in previous["candidates"]:
    if entry["fsdp"] == 4:
      report = compile_report.TopologyReport.from_json(entry["report"])
      entry["report"] = dataclasses.replace(
          report, xla_flops=3 * report.xla_flops,
          xla_bytes_accessed=3 * report.xla_bytes_accessed).to_json()
  logged = []
  result = plan.plan(tiny_config(), topology.parse("v5e:2x2"), remats=("none",),
                     unrolled_top=1, previous=previous, log=logged.append)
  unrolled = [line.split("compiling ")[1].split(" remat")[0] for line in logged
              if "with the layers unrolled" in line]
  assert unrolled == ["data=2 fsdp=2 tensor=1", "data=1 fsdp=4 tensor=1"]
  assert [c.report.counts_every_layer for c in result.candidates] == [True, True, False]
  assert result.best.layout == plan.Layout(1, 4, 1, "none")
  assert result.notes == ["1x4x1 none, the most sharded layout that fits, was unrolled as a "
                          "baseline: #3 by the scanned figures; it ranks #1 with every layer "
                          "counted"]
  assert f"  note: {result.notes[0]}" in result.table()
  # Where it is among the N, nothing more is unrolled and there is no note.
  assert plan.baseline_note(result.best, [result.best], result.candidates, 1) is None
  # Where the time budget left its unrolled compile out, the note says so.
  scanned = scanned_plan[0].candidates
  assert plan.baseline_note(scanned[1], scanned, scanned, 1) == (
      f"{scanned[1].layout}, the most sharded layout that fits, was to be unrolled as a "
      "baseline: #2 by the scanned figures; the time budget left its unrolled compile out, "
      "or it failed")


def test_plan_settles_a_flagged_extrapolation_that_may_lead(scanned_plan, capsys):
  """A layout whose extrapolation fails its check ranks by its larger estimate; where its
  smaller one beats the leader, the plan compiles it with every layer, which decides. Here
  (figures set in the shared search's file, bytes in units of the largest real count):
  2x2x1 leads at 100 agreeing, 1x4x1 is flagged between 50 and 300 and is settled (its
  real bytes, below 1, make it lead), 4x1x1 is flagged between 200 and 400 and is not."""
  previous = scanned_plan[0].to_json()
  unit = max(e["report"]["xla_bytes_accessed_per_chip"] for e in previous["candidates"])
  estimates = {4: (50, 300), 2: (100, 100), 1: (200, 400)}     # fsdp: (bytes, check)
  for entry in previous["candidates"]:
    report = compile_report.TopologyReport.from_json(entry["report"])
    low, check = estimates[entry["fsdp"]]
    entry["report"] = dataclasses.replace(
        report, cost_program=compile_report.EXTRAPOLATED, xla_bytes_accessed=low * unit,
        check_bytes_accessed=check * unit,
        scanned_roofline_seconds=report.roofline_seconds).to_json()
  # `--no-settle` compiles nothing here: the file holds every layout's figures.
  kept = plan.plan(tiny_config(), topology.parse("v5e:2x2"), remats=("none",),
                   previous=previous, settle=False, log=lambda line: None)
  assert [c.layout.fsdp for c in kept.candidates] == [2, 4, 1]
  assert kept.notes == plan.uncertain_rank_notes(kept.candidates)
  assert cli.main(["plan", "--config", "tiny_cpu", "--topology", "v5e:2x2", "--no-settle"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "--no-settle: only with --extrapolate-layers" in err
  logged = []
  result = plan.plan(tiny_config(), topology.parse("v5e:2x2"), remats=("none",),
                     previous=previous, log=logged.append)
  unrolled = [line for line in logged if "with the layers unrolled" in line]
  assert unrolled == ["[1/1] compiling data=1 fsdp=4 tensor=1 remat=none with the layers "
                      "unrolled (every one: its extrapolation failed its check and may lead), "
                      "for its cost figures"]
  settled, leader, flagged = result.candidates
  assert [c.layout.fsdp for c in result.candidates] == [4, 2, 1]
  assert settled.report.cost_program == compile_report.UNROLLED
  assert settled.report.check_bytes_accessed is None and settled.report.xla_bytes_accessed < unit
  assert settled.report.scanned_roofline_seconds == next(
      e for e in previous["candidates"]
      if e["fsdp"] == 4)["report"]["roofline"]["scanned_program_step_seconds"]
  assert flagged.report.extrapolation_unreliable
  hopeful = dataclasses.replace(leader.report, xla_bytes_accessed=50 * unit).roofline_seconds
  assert result.notes == [
      *plan.uncertain_rank_notes([flagged]),
      f"1x4x1 none: its smaller extrapolated estimate (roofline {hopeful:.4g} s) beat the "
      f"leader's ({leader.report.roofline_seconds:.4g} s), so it was compiled with every "
      f"layer: {settled.report.roofline_seconds:.4g} s, #1"]
  # Nothing is settled where no flagged layout's smaller estimate beats the leader's.
  assert plan.flagged_contender([leader, flagged], []) is None
  assert plan.flagged_contender(result.candidates, []) is None


@pytest.mark.slow
def test_plan_notes_a_vocabulary_tensor_cannot_split(unrolled_plan):
  """Layouts whose `tensor` does not divide the vocabulary repeat its work on every chip;
  the plan says so and names the padding that fixes it."""
  config = tiny_config()                                   # vocabulary 16
  assert plan.vocabulary_note(config, [1, 2, 4]) is None
  config.model.vocab_size = 61
  note = plan.vocabulary_note(config, [1, 2, 4, 8])
  assert note.startswith("tensor 2, 4, 8 does not divide the vocabulary (61 entries)")
  assert note.endswith("--config.model.vocab_multiple=128 pads it to 128 (masked, the same "
                       "model)")
  config.model.vocab_multiple = 4                          # 64 entries: 2 and 4 divide them
  assert plan.vocabulary_note(config, [1, 2, 4]) is None
  note3 = plan.vocabulary_note(config, [3])
  assert note3.startswith("tensor 3 does not divide the vocabulary (64 entries)")
  assert "vocab_multiple=384 pads it to 384 " in note3     # a multiple of 3 and of 128
  image, _ = cli.load_config_file("denoise")               # nothing vocabulary-sized
  assert plan.vocabulary_note(image, [3]) is None
  lines = dataclasses.replace(unrolled_plan, notes=[note]).table().splitlines()
  assert lines[-2] == f"  note: {note}" and lines[-1].startswith("Best: ")
  assert unrolled_plan.notes == [] and unrolled_plan.to_json()["notes"] == []


def test_plan_writes_progress_and_resumes(tmp_path, capsys, scanned_plan):
  """The plan so far after every compile; `--resume` from a killed search's file compiles
  only the layouts it lacks, and refuses a file of another search."""
  full, partials = scanned_plan
  assert [len(p.candidates) for p in partials] == [1, 2, 3]
  assert not any(p.complete for p in partials) and full.complete
  first = partials[0].candidates[0]
  # The report reads back from JSON as it was.
  assert compile_report.TopologyReport.from_json(first.report.to_json()) == first.report
  path = tmp_path / "plan.json"
  path.write_text(json.dumps(partials[0].to_json()))      # as a killed search left it
  args = ["plan", "--config", "tiny_cpu", *OVERRIDES, "--topology", "v5e:2x2",
          "--remat", "none", "--no-unrolled-cost", "--json", str(path), "--resume"]
  assert cli.main(args) == 0
  err = capsys.readouterr().err
  lay = first.layout
  assert (f"data={lay.data} fsdp={lay.fsdp} tensor=1 remat=none: from the earlier search"
          in err) and err.count("compiling") == 2
  resumed = json.loads(path.read_text())
  assert resumed["complete"] and len(resumed["candidates"]) == 3
  assert resumed["fingerprint"] == full.fingerprint
  by_layout = {(c["data"], c["fsdp"]): c["report"] for c in resumed["candidates"]}
  assert by_layout[(lay.data, lay.fsdp)] == first.report.to_json()
  # Another config's file is not reused.
  assert cli.main(args + ["--config.model.dim=32"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert "--resume: expected a --json file an `ebt plan` of the same" in err


@pytest.mark.slow
def test_resumed_plan_unrolls_what_an_uninterrupted_one_does(unrolled_plan):
  """A killed search's file holds two layouts, the worst of all by the scanned figures
  unrolled there because it was the best so far: the resumed search (N = 1) compiles the
  third and still unrolls the scanned best, as the uninterrupted one did, with the same
  figures."""
  config, v5e = tiny_config(), topology.parse("v5e:2x2")
  by_scanned = sorted(unrolled_plan.candidates, key=plan.Candidate.first_cut_key)
  best, middle, worst = by_scanned
  assert best.layout == unrolled_plan.best.layout and not worst.report.counts_every_layer
  assert worst.first_cut_key() > best.first_cut_key()
  # Its unrolled figures, as the killed search wrote them (made up: only their reuse counts).
  early = plan.Candidate(worst.layout, dataclasses.replace(
      worst.report, cost_program=compile_report.UNROLLED, xla_flops=2 * worst.report.xla_flops,
      scanned_roofline_seconds=worst.report.roofline_seconds))
  killed = plan.Plan(unrolled_plan.topology, unrolled_plan.global_batch,
                     unrolled_plan.hbm_bytes, [early, middle], {}, [], 1.0,
                     fingerprint=unrolled_plan.fingerprint, complete=False)
  # Through JSON, as `--resume` reads it.
  previous = json.loads(json.dumps(killed.to_json()))
  logged = []
  resumed = plan.plan(config, v5e, remats=("none",), unrolled_top=1, previous=previous,
                      log=logged.append)
  assert sum("compiling" in line for line in logged) == 2      # the best, scanned and unrolled
  unrolled = {c.layout: c.report for c in resumed.candidates if c.report.counts_every_layer}
  assert set(unrolled) == {best.layout, worst.layout}
  assert _untimed(unrolled[best.layout]) == _untimed(best.report)
  assert _untimed(unrolled[worst.layout]) == _untimed(early.report)


def _untimed(report):
  return dataclasses.replace(report, cost_compile_s=0.0,
                             memory=dataclasses.replace(report.memory, compile_s=0.0))


def _with_mesh(config, layout):
  c = config.copy_and_resolve_references()
  c.mesh.update(data=layout.data, fsdp=layout.fsdp, tensor=layout.tensor)
  return c


def test_plan_lists_what_the_time_budget_leaves_out():
  result = plan.plan(tiny_config(), topology.parse("v5e:2x2"), time_budget_s=1e-9, jobs=2,
                     log=lambda line: None)
  assert result.candidates == [] and result.best is None
  assert [(l.data, l.fsdp, l.tensor, l.remat) for l in result.not_compiled] == [
      (1, 4, 1, "none"), (2, 2, 1, "none"), (4, 1, 1, "none")]
  table = result.table()
  assert ("not compiled, over the time budget: 3 layouts (1x4x1 none, 2x2x1 none, "
          "4x1x1 none)") in table
  assert table.splitlines()[-1].startswith("No compiled layout fits")
  with pytest.raises(ConfigError, match="--jobs: expected a positive number"):
    plan.plan(tiny_config(), topology.parse("v5e:2x2"), jobs=0)


def test_plan_tries_only_the_tensor_sizes_asked_for(capsys):
  """`--tensor 1,2` narrows a search (v5e:4x4, 4 heads: every mesh of tensor 1, 2 and 4
  otherwise); the others are listed as pruned, and a bad list is one line."""
  config = tiny_config(OVERRIDES + ["--config.model.n_heads=4", "--config.train.batch_size=16"])
  every, _ = plan.candidate_meshes(config, 16, 1, 16)
  assert {t for *_, t in every} == {1, 2, 4}
  narrow, pruned = plan.candidate_meshes(config, 16, 1, 16, tensors=(1, 2))
  assert narrow == [m for m in every if m[2] in (1, 2)]
  assert pruned["tensor not in --tensor 1,2"] == [f"{d}x{f}x4" for d, f, t in every if t == 4] \
      + ["1x2x8", "2x1x8", "1x1x16"]
  # Each compile is stubbed out: only the meshes tried matter here.
  result = plan.plan(config, topology.parse("v5e:4x4"), time_budget_s=1e-9, tensors=(2,),
                     log=lambda line: None)
  assert {l.tensor for l in result.not_compiled} == {2}
  for bad in ("1,x", "0"):
    assert cli.main(["plan", "--config", "tiny_cpu", "--topology", "v5e:2x2",
                     "--tensor", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--tensor: expected comma-separated tensor sizes" in err


def _aligned(table: str, candidates: int) -> bool:
  header, *rows = table.splitlines()[1:2 + candidates]
  return {len(row) for row in rows} == {len(header)}


def test_replayed_rows_the_batch_axes_cannot_split_are_refused():
  """With the S2 replay buffer a step thinks over the batch plus the replayed rows: 4 + 2
  rows on 4 data-parallel chips would leave each chip all 6 (the paper's S2 recipe on 256
  chips of full FSDP: 384 rows, 83 GiB per chip)."""
  config = tiny_config(OVERRIDES + ["--config.thinking.replay_buffer=true",
                                    "--config.thinking.replay_buffer_groups=1",
                                    "--config.thinking.replay_buffer_sample_fraction=0.5"])
  mesh = mesh_lib.make_mesh(config.mesh, topology.devices(topology.parse("v5e:2x2")))
  with pytest.raises(ConfigError, match=r"data x fsdp = 4 must divide the 6 rows each step "
                                        r"thinks over \(train.batch_size 4 \+ "
                                        r"thinking.replay_buffer_groups 1 x 2 replayed\)"):
    program_lib.build(config, mesh)
  config.thinking.replay_buffer_sample_fraction = 1.0     # 4 + 4 rows: 2 per chip
  assert program_lib.build(config, mesh).state_shardings.replay is not None
  # The planner lists each refused mesh once: no remat would change a refusal.
  config.thinking.replay_buffer_sample_fraction = 0.5
  result = plan.plan(config, topology.parse("v5e:2x2"), log=lambda line: None)
  assert [(c.layout.data, c.layout.fsdp, c.layout.remat) for c in result.candidates] == [
      (1, 4, "none"), (2, 2, "none"), (4, 1, "none")]
  assert all("must divide the 6 rows" in c.error for c in result.candidates)
  assert result.best is None
  # A search resumed from its file does not try the next remat of a refused mesh either.
  lines = []
  resumed = plan.plan(config, topology.parse("v5e:2x2"), log=lines.append,
                      previous=json.loads(json.dumps(result.to_json())))
  assert [c.layout for c in resumed.candidates] == [c.layout for c in result.candidates]
  assert all(c.refused for c in resumed.candidates)
  assert not [line for line in lines if "compiling" in line], lines


def test_multislice_mesh_puts_slices_on_data():
  devices = topology.devices(topology.parse("v5e:2x2", num_slices=2))
  config = tiny_config()
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  assert [d.slice_index for d in mesh.devices[:, 0, 0]] == [0] * 4 + [1] * 4
  config.mesh.update(data=1, fsdp=8)
  with pytest.raises(ConfigError, match="mesh.data: expected a multiple of the 2 slices"):
    mesh_lib.make_mesh(config.mesh, devices)


def test_collectives_from_hlo_text():
  hlo = """
  %all-gather.1 = bf16[128,16]{0,1:T(8,128)(2,1)} all-gather(%p.0), dimensions={1}
  %ags = (bf16[8]{0}, bf16[32]{0}) all-gather-start(%p.1), dimensions={0}
  %agd = bf16[32]{0} all-gather-done(%ags)
  %ars = (f32[2]{0}, f32[8,4]{1,0}) all-reduce-start(%a, %b), to_apply=%add
  %ard = (f32[2]{0}, f32[8,4]{1,0}) all-reduce-done(%ars)
  %cps = (s32[4,4]{1,0}, s32[4,4]{1,0}, u32[], u32[]) collective-permute-start(%x)
  ROOT %rs = f32[4]{0} reduce-scatter(%y), dimensions={0}
  %not = f32[4]{0} add(%all-gather.1, %y)
  """
  got = compile_report.collectives(hlo)
  assert got == {"all-gather": {"count": 2, "bytes": 128 * 16 * 2 + 32 * 2},
                 "reduce-scatter": {"count": 1, "bytes": 4 * 4},
                 "all-reduce": {"count": 1, "bytes": (2 + 8 * 4) * 4},
                 "all-to-all": {"count": 0, "bytes": 0},
                 "collective-permute": {"count": 1, "bytes": 4 * 4 * 4}}


@pytest.mark.parametrize("command", ["compile-report", "plan"])
@pytest.mark.parametrize("name,message", [
    ("v5e:4x4x4", "--topology: expected one of v4:NxNxN, v5e:NxN, v5p:NxNxN, v6e:NxN"),
    ("tpu:2x2", "--topology: expected one of"),
    ("v5e:3x3", "--topology v5e:3x3: INVALID_ARGUMENT"),      # libtpu has no such slice
])
def test_bad_topology_is_one_line(command, name, message, capsys):
  assert cli.main([command, "--config", "tiny_cpu", "--topology", name]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err, err


def test_meshes_split_physical_axes_where_jax_does_not():
  """On v6e (as on v5p and v4) jax.make_mesh needs each mesh axis to be whole physical
  axes (v6e:4x4: 1, 4 or 16 chips); the run's mesh splits one where it must, so every
  factorization of the chips is a layout (`ebt plan` found 11 of v5p-128's 18 failing)."""
  devices = compile_report.topology_devices(topology.parse("v6e:4x4"))
  with pytest.raises(NotImplementedError):
    jax.make_mesh((2, 8, 1), ("data", "fsdp", "tensor"), devices=devices)
  for shape in ((2, 8, 1), (4, 2, 2), (1, 16, 1)):
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(zip(("data", "fsdp", "tensor"),
                                                                  shape))), devices)
    assert tuple(mesh.shape.values()) == shape and len(set(mesh.devices.flat)) == 16
  # Where jax.make_mesh can, the mesh is its own.
  whole = jax.make_mesh((1, 16, 1), ("data", "fsdp", "tensor"), devices=devices)
  assert (mesh.devices == whole.devices).all()
  # Two slices: data crosses them, each slice's 2 x 8 (a split 4x4) within one slice.
  two = compile_report.topology_devices(topology.parse("v6e:4x4", 2))
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=4, fsdp=8, tensor=1)), two)
  assert len(set(mesh.devices.flat)) == 32
  assert [len({d.slice_index for d in row.flat}) for row in mesh.devices] == [1] * 4


def test_xla_out_of_memory_message_is_read():
  """libtpu refuses programs over the chip's usable HBM; the report keeps both figures."""
  message = ("Ran out of memory on HBM, the total memory required for HLO temporaries "
             "(34.41G) exceeds available HBM (31.25G).")
  need, have = compile_report._OUT_OF_MEMORY.search(message).groups()
  assert compile_report._parse_bytes(need) == int(34.41 * 2**30)
  assert compile_report._parse_bytes(have) == int(31.25 * 2**30)
  assert compile_report._parse_bytes("1.43T") == int(1.43 * 2**40)


def test_a_refused_scanned_program_is_compiled_unrolled(monkeypatch):
  """Where libtpu refuses the configured (scanned) program as over HBM, the report says
  whether the layers unrolled fit (they may: S1 xl on v6e-64, 47.8 GiB scanned against
  24.2 GiB unrolled), by compiling that program; with --no-unrolled-cost it does not."""
  build = compile_report._build

  def refuse_scanned(config, topology_, program):
    prog, compile_, *rest = build(config, topology_, program)
    if not config.model.scan_layers:
      return prog, compile_, *rest

    def refused():
      raise jax.errors.JaxRuntimeError(
          "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
          "temporaries (34.41G) exceeds available HBM (31.25G).\nsecond line")
    return prog, refused, *rest

  monkeypatch.setattr(compile_report, "_build", refuse_scanned)
  slice_ = topology.parse("v5e:2x2")
  logged = []
  report = compile_report.compile_report(tiny_config(), slice_, log=logged.append)
  unrolled = compile_report.compile_report(
      tiny_config(OVERRIDES + ["--config.model.scan_layers=False"]), slice_, unrolled_cost=False)
  assert report.out_of_memory and report.memory.temp_bytes == int(34.41 * 2**30)
  assert report.unrolled_peak_bytes == unrolled.memory.peak_bytes > 0 and report.unrolled_fits
  assert any("compiling it with the layers unrolled to see whether that fits" in line
             for line in logged)
  lines = report.table().splitlines()
  assert lines[-2].startswith("  DOES NOT FIT: XLA: Ran out of memory on HBM")
  assert lines[-1] == ("  with the layers unrolled (--config.model.scan_layers=False): peak "
                       f"{unrolled.memory.peak_bytes / 2**30:.3f} GiB per chip, fits")
  assert report.to_json()["memory_per_chip"]["unrolled_fits"] is True
  # Unrolled and refused too: libtpu's figure of what it needs, over HBM.
  monkeypatch.setattr(compile_report, "_build",
                      lambda c, t, p: refuse_scanned(_scanned(c), t, p))
  both = compile_report.compile_report(tiny_config(), slice_)
  assert both.unrolled_peak_bytes == int(34.41 * 2**30) and both.unrolled_fits is False
  assert both.table().splitlines()[-1].endswith("GiB per chip, DOES NOT FIT either")
  assert compile_report.compile_report(tiny_config(), slice_,
                                       unrolled_cost=False).unrolled_peak_bytes is None


def _scanned(config):
  c = config.copy_and_resolve_references()
  c.model.scan_layers = True
  return c


def test_extrapolated_figures_extend_one_layer():
  """Each figure is the 3-layer program's plus one layer's share (3 layers' less 2 layers')
  per further layer; no step time where either compile gave none."""
  def figures(flops, seconds, gathers):
    coll = {kind: {"count": 0, "bytes": 0} for kind in compile_report.COLLECTIVES}
    coll["all-gather"] = {"count": gathers, "bytes": 8 * gathers}
    return dict(xla_flops=flops, xla_bytes_accessed=2.0 * flops, collectives=coll,
                optimal_seconds=seconds if seconds > 0 else None, raw_optimal_seconds=seconds,
                cost_while_loops=1)
  out = compile_report._extrapolated(figures(10.0, 1.0, 3), figures(14.0, 1.5, 5), 9)
  assert out["xla_flops"] == 14.0 + 9 * 4.0 and out["xla_bytes_accessed"] == 2 * 50.0
  assert out["optimal_seconds"] == out["raw_optimal_seconds"] == 1.5 + 9 * 0.5
  assert out["collectives"]["all-gather"] == {"count": 5 + 9 * 2, "bytes": 8 * (5 + 9 * 2)}
  assert out["collectives"]["all-reduce"] == {"count": 0, "bytes": 0}
  assert out["cost_while_loops"] == 1
  negative = compile_report._extrapolated(figures(10.0, -1.0, 3), figures(14.0, 1.5, 5), 9)
  assert negative["optimal_seconds"] is None and negative["raw_optimal_seconds"] == 1.5 + 9 * 2.5


def test_extrapolation_that_fails_its_check_is_flagged(cli_report, unrolled_plan):
  """Where the bytes extended from 3 and 4 layers differ from those from 2 and 3 by over
  10% (the Transformer++ medium at 1x128x2 on v5e-256: 9.7 against 2.8 GiB), the report
  and the plan say the figures are unreliable; within 10% they say the check agrees."""
  report = compile_report.TopologyReport.from_json(cli_report[1])
  assert report.check_bytes_accessed is None and report.extrapolation_difference is None
  assert "check:" not in report.table() and cli_report[1]["extrapolation_check"] is None
  bytes_ = report.xla_bytes_accessed
  close = dataclasses.replace(report, cost_program=compile_report.EXTRAPOLATED,
                              check_bytes_accessed=1.05 * bytes_)
  assert close.extrapolation_difference == pytest.approx(0.05)
  assert not close.extrapolation_unreliable
  assert "(+5.0%), within 10%" in close.table()
  assert "with the larger bytes" not in close.table()
  far = dataclasses.replace(close, check_bytes_accessed=3.5 * bytes_)
  assert far.extrapolation_unreliable
  line = next(l for l in far.table().splitlines() if l.startswith("  check:"))
  assert line.endswith(f"(+250.0%): {compile_report.UNRELIABLE}")
  # The report also gives the figures the plan ranks a flagged layout by.
  larger = next(l for l in far.table().splitlines() if "with the larger bytes" in l)
  assert f"roofline step time {far.cautious.roofline_seconds:.4g} s (HBM bandwidth)" in larger
  assert f"MFU {100 * far.cautious.roofline_mfu:.1f} %" in larger
  assert far.cautious.roofline_mfu == pytest.approx(far.roofline_mfu / 3.5, rel=1e-3)
  assert far.to_json()["extrapolation_check"]["roofline_step_seconds_with_larger_bytes"] == (
      far.cautious.roofline_seconds)
  again = compile_report.TopologyReport.from_json(far.to_json())
  assert again.check_bytes_accessed == far.check_bytes_accessed and again.extrapolation_unreliable
  low = dataclasses.replace(close, check_bytes_accessed=0.8 * bytes_)
  assert low.extrapolation_unreliable                       # either way
  assert low.cautious is low and "with the larger bytes" not in low.table()
  best, *rest = unrolled_plan.candidates
  flagged = [plan.Candidate(best.layout, far), *rest]
  # A flagged layout ranks by the larger of its two byte counts (docs/benchmarks.md: within
  # 9% of every layer's each time it was measured, the smaller up to 74% short).
  assert far.roofline_bound == "HBM bandwidth"
  assert far.cautious.roofline_seconds == pytest.approx(3.5 * far.roofline_seconds, rel=1e-3)
  assert low.cautious.roofline_seconds == low.roofline_seconds
  assert close.cautious.roofline_seconds == close.roofline_seconds
  assert plan.uncertain_rank_notes(flagged) == [
      f"{best.layout.data}x{best.layout.fsdp}x{best.layout.tensor} none: its bytes "
      "extrapolated from 3 and 4 layers differ by +250% from those from 2 and 3, so its "
      f"rank is uncertain; it ranks by the larger (roofline "
      f"{far.cautious.roofline_seconds:.4g} s, in the table; the smaller "
      f"{far.roofline_seconds:.4g} s)"]
  assert plan.uncertain_rank_notes(unrolled_plan.candidates) == []
  # The table shows the figures it ranks by: the larger estimate, and its MFU.
  row = dataclasses.replace(unrolled_plan, candidates=flagged).table().splitlines()[2].split()
  assert row[11:13] == [format(far.cautious.roofline_seconds, ".4g"),
                        format(100 * far.cautious.roofline_mfu, ".1f")]
  slower = dataclasses.replace(close, check_bytes_accessed=None, xla_bytes_accessed=1.5 * bytes_)
  assert slower.roofline_seconds > far.roofline_seconds
  ranked = sorted([plan.Candidate(best.layout, far), plan.Candidate(rest[0].layout, slower)],
                  key=plan.Candidate.rank_key)
  assert [c.report for c in ranked] == [slower, far]


@pytest.mark.slow
def test_extrapolated_layers_match_every_layer_unrolled(tmp_path):
  """`--extrapolate-layers` (2-, 3- and 4-layer compiles, extended to 5 layers) against the
  5-layer program unrolled: the same FLOPs and bytes within the tolerances measured at the
  paper's sizes where the check agrees (docs/benchmarks.md), and the check agreeing.

  The think program: the extrapolation unrolls whichever program is asked for the same way,
  and its five compiles take about a third of the train program's (16 s against 51 s)."""
  path = tmp_path / "extrapolated.json"
  overrides = OVERRIDES + ["--config.model.n_layers=5", "--config.mesh.data=1",
                           "--config.mesh.fsdp=4"]
  with contextlib.redirect_stdout(io.StringIO()) as out:
    assert cli.main(["compile-report", "--config", "tiny_cpu", *overrides, "--topology",
                     "v5e:2x2", "--program", "think", "--extrapolate-layers", "--json",
                     str(path)]) == 0
  assert "of the program with layers unrolled, extrapolated from 2 and 3 layers" in (
      out.getvalue())
  assert "  check: extrapolated from 3 and 4 layers instead, " in out.getvalue()
  written = json.loads(path.read_text())
  extrapolated = compile_report.TopologyReport.from_json(written)
  assert extrapolated.program == "think"
  assert extrapolated.cost_program == compile_report.EXTRAPOLATED
  assert extrapolated.counts_every_layer and extrapolated.cost_compile_s > 0
  check = written["extrapolation_check"]
  assert check["bytes_accessed_from_3_and_4_layers"] == extrapolated.check_bytes_accessed > 0
  assert abs(check["relative_difference"]) < 0.03 and check["unreliable"] is False
  scanned = dataclasses.replace(extrapolated, cost_program=compile_report.AS_CONFIGURED)
  full = compile_report.with_unrolled_cost(scanned, tiny_config(overrides),
                                           topology.parse("v5e:2x2"))
  assert full.cost_program == compile_report.UNROLLED
  assert extrapolated.xla_flops == pytest.approx(full.xla_flops, rel=0.02)
  assert extrapolated.xla_bytes_accessed == pytest.approx(full.xla_bytes_accessed, rel=0.03)
  # FSDP gathers parameters for each layer; the extrapolation sees every layer's gathers.
  gathers = lambda r: r["all-gather"]["count"]
  assert gathers(extrapolated.collectives) == pytest.approx(gathers(full.collectives), rel=0.1)
  assert gathers(full.collectives) > 0


@pytest.mark.parametrize("flag", ["--no-unrolled-cost", "--json=r.json", "--num-slices=2",
                                  "--extrapolate-layers"])
def test_topology_flags_need_a_topology(flag, capsys):
  assert cli.main(["compile-report", "--config", "tiny_cpu", flag]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"{flag.split('=')[0]}: only with --topology" in err, err
