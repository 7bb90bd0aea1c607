"""`ebt plan --config F --topology T`: the layout (mesh x remat) to train a config on a TPU
slice, chosen by compiling the candidates for that slice (ebt_jax/tools/compile_report.py).

    ebt plan --config configs/ebt_s1.py:medium --topology v5p:4x4x4 \\
        [--global-batch 1024] [--time-budget 600] [--remat none,dots,full] [--tensor 1,2] \\
        [--unrolled-top 3 [--extrapolate-layers [--no-settle]] | --no-unrolled-cost] \\
        [--jobs 8] [--json F [--resume]]

Candidates are the (data, fsdp, tensor) factorizations of the chip count, pruned before
compiling: tensor must divide the attention heads (it splits them), fsdp must divide the
model width (it splits parameters along it; otherwise they stay replicated), data x fsdp
must divide the global batch (both split it), data must be a multiple of the slices
(multi-slice traffic is data parallel), and `--tensor`, if given, names the tensor sizes to
try (a narrower search where one compile takes minutes: at the paper's sizes no layout with
tensor above 2 has come out best with every layer counted, docs/benchmarks.md). Every mesh
compiles without remat first; remat trades compute for memory, so the next remat (dots,
then full) compiles only where the previous one does not fit (a mesh the config refuses,
e.g. one that cannot split the S2 step's replayed rows, is listed once). Candidates run
from the most sharded state (all fsdp) to the least, and once the next compile would
overrun the time budget the rest are listed as not compiled.

The table ranks layouts that fit by the roofline step time (XLA's FLOPs at peak or bytes
at HBM bandwidth per chip, an estimate), then the XLA cost model's step time (another
estimate, which libtpu gives for few real programs: ebt_jax/tools/compile_report.py),
then collective bytes per chip. XLA's cost analysis counts the layer scan's body once, so
those figures of a scanned program see one layer. Each layout is compiled as configured
first (its memory, which a run would need); then the `--unrolled-top` N best by those
figures (default 3), and as a baseline the first layout in the search's order that fits
(the most FSDP: what a config with no searched mesh runs), are compiled again with their
layers unrolled, within the same time budget, and rank first on figures that count every
layer (the `layers` column: all or one); a note gives the baseline's place where it was
not among the N. An unrolled compile takes up to 17x as long as the scanned one at the paper's
sizes (S1 medium on v5e-256: 852 s against 49 s), so unrolling every layout would
dominate a search; the scanned figures' order is only a first cut (docs/benchmarks.md
compares the two). `--no-unrolled-cost` is N = 0. `--extrapolate-layers` compiles those N
with 2, 3 and 4 layers unrolled instead and extends the difference of 2 and 3 to the
config's depth (compile_report.with_unrolled_cost): an estimate, and the way to rank the
deepest models on a host whose memory an unrolled compile of every layer exceeds; a note
names each layout whose figures from 3 and 4 layers disagree by over 10%, which then
ranks by the larger of the two estimates (within 9% of every layer's in eight of ten
cases measured and up to 31% over in two, where the smaller was up to 74% short:
docs/benchmarks.md); where the smaller beats the leader's figure, that layout is
compiled again with every layer (within the budget, one at a time: `flagged_contender`;
`--no-settle` leaves it), since ranking by the larger misplaced such a layout
(docs/benchmarks.md).
`--jobs N` compiles N meshes at once (threads; each compile holds its own program, so
memory grows with N), for hosts with more cores than one compile keeps busy: libtpu's
compiler is itself multithreaded, and on a 2-core host `--jobs 2` gained nothing
(docs/benchmarks.md). The last line gives the overrides selecting the best; a note above
it says where a searched `tensor` does not divide the vocabulary, which those layouts then
keep whole on every chip (`vocabulary_note`), and another where the best layout needs
remat with its layers scanned, since unrolled they may fit without (`unrolled_note`).

A search at the paper's sizes takes hours on a small host, so `--json FILE` is rewritten
(atomically) after every compile with the plan so far (`"complete": false`), and
`--resume` reuses the layouts FILE holds where its `fingerprint` matches (the config less
mesh and remat, the slice, batch, HBM, and the JAX, libtpu and ebt_jax versions) and
compiles the rest; the `--unrolled-top` N are chosen by the configured programs' figures,
kept for layouts the earlier run unrolled, so it unrolls what an uninterrupted search would.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import threading
import time

import jax
import ml_collections

from ebt_jax import tasks
from ebt_jax.errors import ConfigError, check
from ebt_jax.models import layers
from ebt_jax.parallel import topology as topology_lib
from ebt_jax.tasks.base import REMAT_CHOICES
from ebt_jax.tools import compile_report
from ebt_jax.training import memory


@dataclasses.dataclass(frozen=True)
class Layout:
  data: int
  fsdp: int
  tensor: int
  remat: str

  def __str__(self) -> str:
    return f"{self.data}x{self.fsdp}x{self.tensor} {self.remat}"

  def overrides(self) -> list[str]:
    return [f"--config.mesh.data={self.data}", f"--config.mesh.fsdp={self.fsdp}",
            f"--config.mesh.tensor={self.tensor}", f"--config.model.remat={self.remat}"]


@dataclasses.dataclass
class Candidate:
  layout: Layout
  report: compile_report.TopologyReport | None = None
  error: str | None = None       # the compile failed (one line)
  refused: bool = False          # the config refuses the mesh: no remat changes that

  @property
  def fits(self) -> bool:
    return self.report is not None and bool(self.report.memory.fits)

  def rank_key(self):
    # The roofline's step time (which leaves communication out) first: libtpu's cost model
    # gives none for most real programs and incredible ones for some (docs/benchmarks.md),
    # so ranking by it where it answers put such layouts above better ones without. Then
    # the cost model's, fewer collective bytes per chip, less memory.
    # Figures that count one scanned layer are not comparable with those of every layer,
    # so the layouts whose cost was compiled unrolled rank first among those that fit.
    # Extrapolations that fail their check rank by the larger of their two estimates.
    r = self.report
    if r is None:
      return (True, True, True, 0.0, True, 0.0, 0, 0)
    return (not self.fits, not r.counts_every_layer, r.roofline_seconds is None,
            r.cautious.roofline_seconds or 0.0,
            r.optimal_seconds is None, r.optimal_seconds or 0.0,
            sum(c["bytes"] for c in r.collectives.values()), r.memory.peak_bytes)

  def first_cut_key(self):
    """The order in which layouts get their unrolled compiles: by the configured (scanned)
    program's roofline, also for a layout an earlier run (`--resume`) already unrolled, so
    a resumed search unrolls what an uninterrupted one would. (Such a layout from a file
    that lacks its scanned figure ranks first.)"""
    r = self.report
    if not self.fits:
      return (True, False, 0.0)
    seconds = r.roofline_seconds
    if r.cost_program in (compile_report.UNROLLED, compile_report.EXTRAPOLATED):
      seconds = (-float("inf") if r.scanned_roofline_seconds is None
                 else r.scanned_roofline_seconds)
    return (False, seconds is None, seconds or 0.0)


@dataclasses.dataclass
class Plan:
  topology: str
  global_batch: int
  hbm_bytes: int
  candidates: list[Candidate]         # compiled (or failed), ranked
  pruned: dict[str, list[str]]        # reason -> meshes skipped before compiling
  not_compiled: list[Layout]          # over the time budget
  elapsed_s: float
  # the best layouts whose unrolled compile the time budget left out, or that failed
  not_unrolled: list[Layout] = dataclasses.field(default_factory=list)
  fingerprint: str = ""               # of what the figures depend on (`fingerprint`)
  complete: bool = True               # False: written while the search was running
  notes: list[str] = dataclasses.field(default_factory=list)   # about the config, for users

  @property
  def best(self) -> Candidate | None:
    return self.candidates[0] if self.candidates and self.candidates[0].fits else None

  def overrides(self) -> list[str]:
    return self.best.layout.overrides() + [f"--config.train.batch_size={self.global_batch}"]

  def table(self) -> str:
    gib = memory.GiB
    cost_programs = sorted({c.report.cost_program for c in self.candidates
                            if c.report and c.report.xla_flops is not None})
    lines = [f"ebt plan on {self.topology}: global batch {self.global_batch}, "
             f"{self.hbm_bytes / gib:.1f} GiB HBM per chip, {len(self.candidates)} layouts "
             f"compiled in {self.elapsed_s:.0f} s; step time, tokens/s and MFU are "
             f"{compile_report.ESTIMATE}; roofline s and MFU are "
             f"{compile_report.ROOFLINE}"
             + ("; FLOPs, step time and collectives of the program "
                + " / ".join(("with " if p.startswith(compile_report.UNROLLED) else "") + p
                             for p in cost_programs) if cost_programs else ""),
             f"  {'#':>3} {'data':>5} {'fsdp':>5} {'tensor':>6} {'remat':>6} {'fits':>5} "
             f"{'GiB/chip':>9} {'layers':>6} {'step s':>10} {'MFU %':>7} {'tok/s/chip':>11} "
             f"{'roofline s':>10} {'MFU %':>7} {'TFLOP/chip':>10} {'coll. GiB':>9}"]
    for i, c in enumerate(self.candidates, 1):
      lay, r = c.layout, c.report
      head = f"  {i:>3} {lay.data:>5} {lay.fsdp:>5} {lay.tensor:>6} {lay.remat:>6}"
      if r is None:
        lines.append(f"{head}  failed: {c.error}")
        continue
      # "n/a" padded to the column's width (the format's digits before the point).
      num = lambda v, f, scale=1: ("n/a".rjust(int(f.split(".")[0])) if v is None
                                   else format(v * scale, f))
      # The roofline a layout ranks by: a flagged extrapolation's larger (its note gives both).
      rank = r.cautious
      lines.append(f"{head} {'yes' if c.fits else 'NO':>5} {r.memory.peak_bytes / gib:9.2f} "
                   f"{'all' if r.counts_every_layer else 'one':>6} "
                   f"{num(r.optimal_seconds, '10.4g')} {num(r.mfu, '7.1f', 100)} "
                   f"{num(r.tokens_per_s_per_chip, '11.4g')} {num(rank.roofline_seconds, '10.4g')} "
                   f"{num(rank.roofline_mfu, '7.1f', 100)} {num(r.xla_flops, '10.3f', 1e-12)} "
                   f"{sum(c['bytes'] for c in r.collectives.values()) / gib:9.3f}")
    for reason, meshes in self.pruned.items():
      lines.append(f"  skipped {len(meshes)} mesh{'es' if len(meshes) > 1 else ''} "
                   f"(data x fsdp x tensor) {', '.join(meshes[:6])}"
                   f"{' ...' if len(meshes) > 6 else ''}: {reason}")
    if self.not_compiled:
      lines.append(f"  not compiled, over the time budget: {len(self.not_compiled)} layouts ("
                   + ", ".join(map(str, self.not_compiled[:6]))
                   + (" ..." if len(self.not_compiled) > 6 else "") + ")")
    if self.not_unrolled:
      lines.append("  cost of one layer only (unrolled compile over the time budget or failed): "
                   + ", ".join(map(str, self.not_unrolled)))
    lines += [f"  note: {note}" for note in self.notes]
    if self.best is None:
      lines.append("No compiled layout fits: more chips, a smaller batch, or a larger "
                   "--time-budget for the layouts not compiled.")
    else:
      lines.append("Best: " + " ".join(self.overrides()))
    return "\n".join(lines)

  def to_json(self) -> dict:
    return {"topology": self.topology, "global_batch": self.global_batch,
            "hbm_bytes": self.hbm_bytes, "elapsed_s": self.elapsed_s,
            "fingerprint": self.fingerprint, "complete": self.complete,
            "best_overrides": self.overrides() if self.best else None,
            "candidates": [{**dataclasses.asdict(c.layout), "fits": c.fits, "error": c.error,
                            "refused": c.refused, "report": c.report and c.report.to_json()}
                           for c in self.candidates],
            "pruned": self.pruned,
            "not_compiled": [dataclasses.asdict(l) for l in self.not_compiled],
            "not_unrolled": [dataclasses.asdict(l) for l in self.not_unrolled],
            "notes": self.notes}


def fingerprint(config: ml_collections.ConfigDict, topology: topology_lib.Topology,
                global_batch: int, hbm_bytes: int) -> str:
  """A hash of what a search's figures depend on but the layouts it tries: the config
  (less its mesh and remat), the slice, batch and HBM, and the JAX, libtpu and ebt_jax
  versions. A `--resume` reuses a file's results only where it matches."""
  c = config.copy_and_resolve_references()
  c.mesh.update(data=0, fsdp=0, tensor=0)
  c.model.remat = ""
  c.train.batch_size = global_batch
  versions = {name: _version(name) for name in ("jax", "libtpu", "ebt_jax")}
  text = json.dumps([c.to_json_best_effort(sort_keys=True), topology.describe(), hbm_bytes,
                     versions], sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version(distribution: str) -> str | None:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None


def _previous_candidates(previous: dict, expected: str) -> dict[Layout, Candidate]:
  """The compiled candidates of an earlier run's JSON, by layout."""
  check(previous.get("fingerprint") == expected, "--resume",
        "a --json file an `ebt plan` of the same config, slice, --global-batch, --hbm-gib "
        "and versions wrote", f"one of another search (fingerprint "
        f"{previous.get('fingerprint')!r}, this search's {expected!r})")
  out = {}
  for entry in previous["candidates"]:
    layout = Layout(entry["data"], entry["fsdp"], entry["tensor"], entry["remat"])
    report = entry["report"] and compile_report.TopologyReport.from_json(entry["report"])
    # (Files from before `refused` was kept: their refusals are retried with more remat.)
    out[layout] = Candidate(layout, report, entry["error"], entry.get("refused", False))
  return out


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def candidate_meshes(config: ml_collections.ConfigDict, num_chips: int, num_slices: int,
                     global_batch: int, tensors=None) -> tuple[list[tuple[int, int, int]], dict]:
  """(data, fsdp, tensor) meshes worth compiling, most fsdp first, and the pruned ones by
  reason; `tensors`, if given, the only tensor sizes to try (`--tensor`)."""
  m = config.model
  keep, pruned = [], collections.defaultdict(list)
  for tensor in _divisors(num_chips):
    for fsdp in reversed(_divisors(num_chips // tensor)):
      data = num_chips // tensor // fsdp
      reason = (
          f"tensor not in --tensor {','.join(map(str, tensors))}"
          if tensors is not None and tensor not in tensors else
          f"tensor must divide model.n_heads={m.n_heads}" if m.n_heads % tensor else
          f"fsdp must divide model.dim={m.dim}" if m.dim % fsdp else
          f"data x fsdp must divide the global batch {global_batch}"
          if global_batch % (data * fsdp) else
          f"data must be a multiple of the {num_slices} slices" if data % num_slices else None)
      if reason:
        pruned[reason].append(f"{data}x{fsdp}x{tensor}")
      else:
        keep.append((data, fsdp, tensor))
  return keep, dict(pruned)


def uncertain_rank_notes(candidates: list[Candidate]) -> list[str]:
  """A line for each layout whose extrapolated cost figures fail their check (XLA compiled
  the shallow programs' layers unlike each other: `TopologyReport.extrapolation_unreliable`)."""
  return [f"{c.layout}: its bytes "
          f"extrapolated from 3 and 4 layers differ by "
          f"{100 * c.report.extrapolation_difference:+.0f}% from those from 2 and 3, so its "
          f"rank is uncertain; it ranks by the larger (roofline "
          f"{c.report.cautious.roofline_seconds:.4g} s, in the table; the smaller "
          f"{c.report.hopeful_roofline_seconds:.4g} s)" for c in candidates
          if c.report and c.report.extrapolation_unreliable]


def flagged_contender(ranked: list[Candidate], tried: list[Candidate]) -> Candidate | None:
  """The best placed layout below the leader, not in `tried`, whose extrapolation failed
  its check and whose smaller estimate beats the leader's figure: it ranks by its larger
  estimate, and with every layer counted it may lead (the Transformer++ xl on v5e-256:
  4x16x4 ranked behind 1x64x4 by an estimate 18% high, and was 7% faster with every
  layer: docs/benchmarks.md). None where there is none."""
  if not ranked or not ranked[0].fits or ranked[0].report.cautious.roofline_seconds is None:
    return None
  bar = ranked[0].report.cautious.roofline_seconds
  return next((c for c in ranked[1:] if c.fits and c not in tried
               and c.report.extrapolation_unreliable
               and c.report.hopeful_roofline_seconds < bar), None)


def baseline(in_search_order: list[Candidate]) -> Candidate | None:
  """The layout every search also unrolls: the first in the search's order that fits, i.e.
  the most FSDP with the least tensor and remat, what a config with no searched mesh
  runs. The scanned figures' order misplaces layouts (S1 xxs on v6e-64: its top 3 were 7%
  slower with every layer than full FSDP, sixth by those figures: docs/benchmarks.md), so
  a leader is only recommended over it on every layer's figures."""
  return next((c for c in in_search_order if c.fits), None)


def baseline_note(base: Candidate | None, by_first_cut: list[Candidate],
                  ranked: list[Candidate], unrolled_top: int) -> str | None:
  """Where the baseline was unrolled beyond the `--unrolled-top` N: its place by the
  scanned figures and by every layer's, so a reader sees when the first cut misjudged it."""
  if base is None or not unrolled_top or base in by_first_cut[:unrolled_top]:
    return None
  done = base.report.counts_every_layer
  return (f"{base.layout}, the most sharded layout that fits, was "
          f"{'unrolled' if done else 'to be unrolled'} as a baseline: "
          f"#{by_first_cut.index(base) + 1} by the scanned figures; "
          + (f"it ranks #{ranked.index(base) + 1} with every layer counted" if done else
             "the time budget left its unrolled compile out, or it failed"))


def unrolled_note(config: ml_collections.ConfigDict, ranked: list[Candidate]) -> str | None:
  """Where the best layout needs remat with its layers scanned: unrolled, the layers need
  less memory (no loop keeps stacked residuals and state), so it may fit without remat.
  The search does not try that itself, since an unrolled compile takes 2.5-17x as long
  (docs/benchmarks.md); the note gives the command's overrides."""
  best = ranked[0] if ranked and ranked[0].fits else None
  if best is None or best.layout.remat == "none" or not config.model.scan_layers:
    return None
  plain = dataclasses.replace(best.layout, remat="none")
  return (f"{best.layout} needs remat with its layers scanned; unrolled they need less memory "
          f"(S1 xl at 1x64x1 on v6e-64: 24.2 GiB unrolled without remat, 47.8 GiB scanned), "
          f"so it may fit without: `ebt compile-report` with {' '.join(plain.overrides())} "
          f"--config.model.scan_layers=False tells (a 2.5-17x longer compile)")


def vocabulary_note(config: ml_collections.ConfigDict, tensors) -> str | None:
  """What to tell a user whose vocabulary (as padded) some `tensor` of the search does not
  divide: those layouts keep every vocabulary-sized array whole on each chip and repeat
  its work (docs/benchmarks.md, "The padded vocabulary"). None where nothing is
  vocabulary-sized (image and video EBTs) or every `tensor` divides it."""
  if "vocab" not in jax.tree.leaves(tasks.param_axes(config)):
    return None
  m = config.model
  width = layers.vocab_width(m.vocab_size, m.vocab_multiple)
  odd = sorted({t for t in tensors if width % t})
  if not odd:
    return None
  # A multiple of 128 also fills the TPU's 128-wide lanes.
  multiple = math.lcm(128, *odd)
  return (f"tensor {', '.join(map(str, odd))} does not divide the vocabulary ({width} "
          f"entries): those layouts keep every vocabulary-sized array whole on each chip; "
          f"--config.model.vocab_multiple={multiple} pads it to "
          f"{layers.vocab_width(m.vocab_size, multiple)} (masked, the same model)")


def plan(config: ml_collections.ConfigDict, topology: topology_lib.Topology, *,
         global_batch: int | None = None, time_budget_s: float | None = None,
         remats=REMAT_CHOICES, hbm_bytes: int | None = None, unrolled_top: int = 3,
         extrapolate_layers: bool = False, settle: bool = True, jobs: int = 1,
         previous: dict | None = None, progress=None, tensors=None, log=print) -> Plan:
  """The search. `previous`: an earlier search's `Plan.to_json` whose results are reused
  (`--resume`); `progress(plan)` is called with the partial plan after every compile;
  `tensors`: the tensor sizes to try (default every divisor of the chips); `settle`:
  compile a flagged extrapolation that may lead with every layer (`flagged_contender`)."""
  for r in remats:
    check(r in REMAT_CHOICES, "--remat", f"a comma-separated subset of {REMAT_CHOICES}", r)
  # Least memory saved (and compute spent) first: none, dots (keeps matmul outputs), full.
  remats = tuple(sorted(set(remats), key=lambda r: {"none": 0, "dots": 1}.get(r, 2)))
  batch = global_batch or config.train.batch_size
  check(isinstance(batch, int) and batch >= 1, "--global-batch", "a positive integer", batch)
  check(time_budget_s is None or time_budget_s > 0, "--time-budget", "seconds > 0",
        time_budget_s)
  check(isinstance(jobs, int) and jobs >= 1, "--jobs", "a positive number of compiles at once",
        jobs)
  check(isinstance(unrolled_top, int) and unrolled_top >= 0, "--unrolled-top",
        "a number of layouts >= 0", unrolled_top)
  check(tensors is None or (tensors and all(isinstance(t, int) and t >= 1 for t in tensors)),
        "--tensor", "comma-separated tensor sizes >= 1", tensors)
  hbm = hbm_bytes or topology.spec.hbm_bytes
  compile_report.topology_devices(topology)   # a topology error stops here, as one line
  meshes, pruned = candidate_meshes(config, topology.num_chips, topology.num_slices, batch,
                                    tensors)
  if not meshes:
    raise ConfigError(f"--topology {topology.describe()}: no mesh of {topology.num_chips} "
                      f"chips suits this config ({'; '.join(pruned)})")
  key = fingerprint(config, topology, batch, hbm)
  reused = {} if previous is None else _previous_candidates(previous, key)
  t0 = time.perf_counter()
  compile_times = []        # of every compile so far, appended from the worker threads
  unrolled_times = []       # of every unrolled (cost) compile so far
  finished: list[Candidate] = []    # for `progress`, appended under the lock
  lock, progress_lock = threading.Lock(), threading.Lock()

  def snapshot(candidate: Candidate) -> Plan:
    """The plan so far, `candidate` added (an unrolled one is there already)."""
    with lock:
      if all(c is not candidate for c in finished):
        finished.append(candidate)
      return Plan(topology.describe(), batch, hbm, sorted(finished, key=Candidate.rank_key),
                  pruned, [], time.perf_counter() - t0, fingerprint=key, complete=False)

  def report_progress(candidate: Candidate) -> None:
    with progress_lock:      # one at a time, in order: the threads' plans go to one file
      plan_so_far = snapshot(candidate)
      if progress is not None:
        progress(plan_so_far)

  def over_budget(times) -> bool:
    expected = max(times, default=0.0)
    return time_budget_s is not None and time.perf_counter() - t0 + expected > time_budget_s

  def layout_config(layout: Layout) -> ml_collections.ConfigDict:
    c = config.copy_and_resolve_references()
    c.mesh.update(data=layout.data, fsdp=layout.fsdp, tensor=layout.tensor)
    c.model.remat = layout.remat
    c.train.batch_size = batch
    return c

  def search(i: int, data: int, fsdp: int, tensor: int):
    """One mesh's candidates, less remat first (more only where less does not fit), and
    its first layout not compiled for the time budget (None: within it)."""
    done = []
    for remat in remats:
      layout = Layout(data, fsdp, tensor, remat)
      if layout in reused:
        candidate = reused[layout]
        log(f"[{i + 1}/{len(meshes)}] data={data} fsdp={fsdp} tensor={tensor} remat={remat}: "
            "from the earlier search")
        snapshot(candidate)
        done.append(candidate)
        if candidate.fits or candidate.refused:
          break
        continue
      if over_budget(compile_times):
        return done, layout
      log(f"[{i + 1}/{len(meshes)}] compiling data={data} fsdp={fsdp} tensor={tensor} "
          f"remat={remat}")
      start = time.perf_counter()
      try:
        candidate = Candidate(layout, compile_report.compile_report(
            layout_config(layout), topology, hbm_bytes=hbm, unrolled_cost=False))
      except ConfigError as e:   # the mesh does not suit the config
        candidate = Candidate(layout, error=str(e), refused=True)
      except Exception as e:     # an XLA failure of one layout (e.g. out of memory in
        # compilation) must not lose the others' results
        candidate = Candidate(layout, error=f"{type(e).__name__}: {str(e).splitlines()[0]}")
      compile_times.append(time.perf_counter() - start)
      done.append(candidate)
      report_progress(candidate)
      if candidate.fits or candidate.refused:
        break        # more remat only costs compute, or cannot help
    return done, None

  def unroll(i: int, candidate: Candidate, of: int,
             extrapolate: bool = extrapolate_layers) -> Layout | None:
    """The candidate's cost figures from its program compiled with the layers unrolled
    (every one, or extrapolated); its layout if the time budget leaves that compile out or
    it fails."""
    # Before the first, an unrolled compile is expected to take at least as long as the
    # longest scanned one (up to 17x as long at the paper's sizes: docs/benchmarks.md).
    if over_budget(unrolled_times or compile_times):
      return candidate.layout
    lay = candidate.layout
    log(f"[{i + 1}/{of}] compiling data={lay.data} fsdp={lay.fsdp} tensor={lay.tensor} "
        f"remat={lay.remat} with the layers unrolled"
        + (" (2, 3 and 4 of them, extrapolated)" if extrapolate else
           " (every one: its extrapolation failed its check and may lead)"
           if candidate.report.extrapolation_unreliable else "")
        + ", for its cost figures")
    start = time.perf_counter()
    try:
      candidate.report = compile_report.with_unrolled_cost(
          candidate.report, layout_config(lay), topology, extrapolate=extrapolate)
    except Exception as e:       # keeps the scanned figures, listed as not unrolled
      log(f"  the unrolled compile failed: {type(e).__name__}: {str(e).splitlines()[0]}")
      return lay
    finally:
      unrolled_times.append(time.perf_counter() - start)
    report_progress(candidate)
    return None

  # XLA compiles outside the GIL, so threads compile several meshes at once (tracing, a
  # small part at real sizes, takes turns); the sharding context is a contextvar, per thread.
  with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    results = list(pool.map(lambda args: search(args[0], *args[1]), enumerate(meshes)))
    compiled = [c for candidates, _ in results for c in candidates]     # in search order
    done = sorted(compiled, key=Candidate.rank_key)
    # Every layout compiled once, the best by those (one layer's) figures get every layer
    # counted: unrolled compiles take several times as long as scanned ones.
    by_first_cut = sorted((c for c in done if c.fits), key=Candidate.first_cut_key)
    top = by_first_cut[:unrolled_top]
    base = baseline(compiled)
    if top and base is not None and base not in top:
      top.insert(1, base)     # second: the leader against it decides whether to move at all
    top = [c for c in top if not c.report.counts_every_layer]
    left_out = list(pool.map(lambda args: unroll(*args, len(top)),
                             ((i, c) for i, c in enumerate(top))))
  done.sort(key=Candidate.rank_key)
  # A flagged extrapolation ranks by its larger estimate; where its smaller one beats the
  # leader, every layer decides (one at a time: each can change the leader).
  tried, settle_notes = [], []
  while settle and (c := flagged_contender(done, tried)) is not None:
    tried.append(c)
    hopeful, bar = c.report.hopeful_roofline_seconds, done[0].report.cautious.roofline_seconds
    missed = unroll(len(tried) - 1, c, len(tried), extrapolate=False)
    done.sort(key=Candidate.rank_key)
    settle_notes.append(
        f"{c.layout}: its smaller extrapolated estimate (roofline {hopeful:.4g} s) beat the "
        f"leader's ({bar:.4g} s), so "
        + ("its every-layer compile was due, but the time budget left it out or it failed"
           if missed else f"it was compiled with every layer: {c.report.roofline_seconds:.4g} "
           f"s, #{done.index(c) + 1}"))
  not_compiled = [layout for _, layout in results if layout is not None]
  notes = [*uncertain_rank_notes(done), *settle_notes,
           baseline_note(base, by_first_cut, done, unrolled_top),
           vocabulary_note(config, [tensor for *_, tensor in meshes]),
           unrolled_note(config, done)]
  return Plan(topology.describe(), batch, hbm, done, pruned, not_compiled,
              time.perf_counter() - t0, [l for l in left_out if l is not None], key,
              notes=[n for n in notes if n])
