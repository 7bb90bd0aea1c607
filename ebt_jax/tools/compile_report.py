"""`ebt compile-report --topology v5e:16x16`: a config's sharded program compiled for a TPU
slice that is not here, with XLA's figures per chip.

    pip install "ebt_jax[tpu]"
    ebt compile-report --config configs/ebt_s1.py:small --topology v5e:16x16 \\
        [--num-slices 2] [--program train|think|generate] [--json report.json]

The program is the one a run on that slice compiles (`ebt_jax.training.program`: mesh,
shardings, donation) over libtpu's compile-only devices (`ebt_jax.parallel.topology`).
Programs: `train` (one training step), `think` (the evaluation step: System 2 thinking on
a batch), `generate` (KV-cached generation of context/2 tokens after a context/2 prompt,
text EBTs). Per chip it reports
* memory: XLA's memory analysis against the chip's HBM, and whether it fits;
* FLOPs and bytes accessed from XLA's cost analysis of the partitioned program, and
  compiled FLOPs x chips over the analytic model FLOPs (ebt_jax/tasks/flops.py; train only;
  remat raises it, and a width of 16 does, where elementwise work the model does not
  count is large);
* the XLA cost model's step time, and from it tokens/s per chip and MFU: estimates of
  the compiler's model, not measurements, and labelled so everywhere. Where libtpu's model
  gives a negative figure, the report says so and has no step-time estimate: every
  multi-slice program, and most at the paper's sizes, with the layers scanned or not (an
  xxs S1 step at batch 32 on v5e:2x2: -71 s scanned, -740 s unrolled; a tiny one on two
  v5e:2x2 slices: -27 s unrolled);
* a roofline step time, and from it tokens/s per chip and MFU: the longer of XLA's FLOPs
  at the chip's peak and XLA's bytes accessed at its HBM bandwidth, per chip. It leaves
  out communication and any imperfect overlap, so it is a lower bound on the step time
  (an upper bound on MFU), labelled an estimate too; it is given wherever the program
  compiled, so it ranks `ebt plan`'s layouts where the cost model gives no step time;
* the collectives in the compiled HLO by kind: instructions and the bytes of their
  results per chip.

XLA's cost analysis and the collective count see a loop body once, so with the layer
scan (`model.scan_layers`, the default) they miss all layers but one (compiled/model
FLOPs of an xxs S1 step at batch 32 on v5e:2x2: 0.64 scanned, 0.95 unrolled; the
unrolled compile took 2.5x as long, 347 s against 139 s). Memory comes from the program
as configured (the unrolled one needed 5.1 GiB per chip there, the scanned 6.3); FLOPs,
bytes, step time and collectives come from the same program compiled a second time with
`model.scan_layers=False` (`cost_analysis_program` in the JSON: "layers unrolled"),
unless the config already unrolls them, `--no-unrolled-cost` skips the second compile, or
libtpu refuses the unrolled program as over HBM ("as configured", with the reason).
That compile's peak memory is reported beside the configured one's (`unrolled_peak_bytes`,
`unrolled_fits`): the layer loops' stacked residuals and state cost memory, so where the
scanned program is over HBM the unrolled one may fit (S1 xl on v6e-64, full FSDP: 47.8 GiB
scanned, 24.2 GiB unrolled), and a configured program libtpu refuses is compiled unrolled
for that figure alone. `--extrapolate-layers` makes that second compile three smaller
ones, with 2, 3 and 4 layers unrolled, and extends the difference of 2 and 3 (one layer's
figures) to the config's depth ("layers unrolled, extrapolated from 2 and 3 layers"):
exact where the layers between the first and the last compile alike, an estimate where
XLA's scheduling of the deep program differs (more all-gathers of the embedding, say).
The bytes extended from 3 and 4 layers check it: more than 10% apart, the report calls the
extrapolation unreliable (the Transformer++ medium at 1x128x2 on v5e-256: 2.81, 2.81 and
3.14 GiB at 2, 3 and 4 layers, so 2 and 3 extend to 2.8 GiB and 3 and 4 to 9.7, against
10.6 GiB with every layer unrolled). Against unrolling every layer: S1 xxs on v5e:2x2
(batch 32, 4-way FSDP) FLOPs +0.003%, bytes +2.4%, all-gather bytes -54% (the deep
program gathers the embedding 35 times, the shallow ones 14-15); S1 large on v5p-128 FLOPs
-0.2%, bytes -1.7%; S2 xxs on v5p-128 bytes -0.2%; but on v6e-64 the Transformer++ small's
bytes -9.2%, where XLA's bytes per layer vary with the depth (2 to 3 layers 0.67 GiB, 3 to 4
0.49, from 6 layers on 0.83-0.87), S1 small's +3.2%, S1 medium's +16%. It needs a fraction
of the host memory (5.9 GB for S1 large on v5p-128; the unrolled S2 large was killed at
20.5 GB) but not less time where the thinking steps, not the layers, make the program large.
Loops that remain (`generate`'s scan over tokens, blockwise attention, a thinking loop
that is not unrolled) are counted in `cost_analysis_while_loops`; their bodies still
count once (none in a tiny S1 `train` or `think` program).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
import time

import jax
import ml_collections

from ebt_jax.errors import ConfigError
from ebt_jax.inference import generate
from ebt_jax.parallel import mesh as mesh_lib, sharding
from ebt_jax.parallel import topology as topology_lib
from ebt_jax.training import flops as flops_lib
from ebt_jax.training import memory
from ebt_jax.training import program as program_lib

PROGRAMS = ("train", "think", "generate")
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
ESTIMATE = "estimate (XLA cost model)"
ROOFLINE = ("estimate (roofline: XLA's FLOPs at the chip's peak or its bytes at the HBM "
            "bandwidth, whichever takes longer; no communication, so a lower bound)")
UNROLLED, AS_CONFIGURED = "layers unrolled", "as configured"
EXTRAPOLATED = "layers unrolled, extrapolated from 2 and 3 layers"
# Beyond this relative difference between the bytes extrapolated from 2 and 3 layers and
# from 3 and 4, the extrapolation is flagged: at the paper's sizes the agreeing cases were
# within 2.5% of every layer unrolled, the failing ones 9% to 74% off (docs/benchmarks.md).
EXTRAPOLATION_TOLERANCE = 0.1
UNRELIABLE = ("the shallow programs' layers differ, so the extrapolation is unreliable "
              "here: compile every layer (without --extrapolate-layers) where host memory "
              "allows")

# An HLO instruction whose opcode is a collective (sync, or the start of an async one).
_COLLECTIVE = re.compile(r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(?P<type>.+?)\s(?P<op>"
                         + "|".join(COLLECTIVES) + r")(?P<start>-start)?\(", re.M)
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")


def _array_bytes(hlo_type: str) -> list[int]:
  out = []
  for dtype, dims in _ARRAY.findall(hlo_type):
    bits = re.match(r"[a-z]+(\d+)", dtype)
    size = 1
    for d in filter(None, dims.split(",")):
      size *= int(d)
    out.append(size * (int(bits.group(1)) // 8 if bits else 1) if dtype != "token" else 0)
  return out


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {"count", "bytes"}} of the collective instructions in compiled HLO text.

  Bytes are each instruction's result per device. An async all-reduce starts with its
  results' shape; other async starts hold their operands, then their results, then scalar
  contexts: the results are the second half of the arrays once the scalars are dropped.
  """
  out = {kind: collections.Counter() for kind in COLLECTIVES}
  for m in _COLLECTIVE.finditer(hlo_text):
    sizes = _array_bytes(m.group("type"))
    if m.group("start") and m.group("op") != "all-reduce":
      arrays = [s for s, (_, dims) in zip(sizes, _ARRAY.findall(m.group("type"))) if dims]
      sizes = arrays[len(arrays) // 2:] if len(arrays) > 1 else arrays
    out[m.group("op")].update(count=1, bytes=sum(sizes))
  return {kind: {"count": c["count"], "bytes": c["bytes"]} for kind, c in out.items()}


@dataclasses.dataclass
class TopologyReport:
  topology: str
  program: str
  memory: memory.MemoryReport     # per chip, device_limit_bytes the chip's HBM
  xla_flops: float | None         # per chip (None: not compiled, out of memory)
  xla_bytes_accessed: float | None   # per chip
  optimal_seconds: float | None   # the XLA cost model's step time (None: it gave none)
  raw_optimal_seconds: float | None   # what the cost model gave (negative: no estimate)
  tokens_per_step: int
  peak_flops: float | None        # per chip
  collectives: dict
  hbm_bytes_per_s: float | None = None   # per chip, for the roofline
  out_of_memory: str | None = None   # XLA's refusal where the program needs more than HBM
  cost_program: str = AS_CONFIGURED  # which compile the FLOPs, time and collectives are of
  cost_while_loops: int = 0       # while loops left in it (each body counted once)
  cost_compile_s: float = 0.0     # the second compile's time (0: none)
  layers_scanned: bool = True     # the configured program scans its layers
  # The configured program's roofline step time, kept where an unrolled compile replaced
  # the cost figures: `ebt plan` picks the layouts to unroll by it (None: not replaced)
  scanned_roofline_seconds: float | None = None
  # Extrapolated figures only: the bytes per chip extrapolated from 3 and 4 layers instead
  # of 2 and 3, a check on them (`with_unrolled_cost`)
  check_bytes_accessed: float | None = None
  # Peak bytes per chip of the program with every layer unrolled (`model.scan_layers=False`):
  # from its compile for the cost figures, or, where the configured program is over HBM,
  # from one compiled (or refused, with what it needs) to see whether unrolling fits it.
  # None: not compiled so (extrapolated, or asked for no unrolled compile).
  unrolled_peak_bytes: int | None = None

  @property
  def unrolled_fits(self) -> bool | None:
    limit = self.memory.device_limit_bytes
    if self.unrolled_peak_bytes is None or not limit:
      return None
    return self.unrolled_peak_bytes <= limit

  @property
  def counts_every_layer(self) -> bool:
    """Whether the cost figures see every layer (not one scanned layer's body once)."""
    return not self.layers_scanned or self.cost_program in (UNROLLED, EXTRAPOLATED)

  @property
  def extrapolation_difference(self) -> float | None:
    """How far the bytes extrapolated from 3 and 4 layers are from those from 2 and 3
    (relative; None where nothing was extrapolated): where XLA compiles shallow programs'
    layers unlike each other, the two disagree and neither is to be trusted."""
    if self.check_bytes_accessed is None or not self.xla_bytes_accessed:
      return None
    return self.check_bytes_accessed / self.xla_bytes_accessed - 1

  @property
  def extrapolation_unreliable(self) -> bool:
    d = self.extrapolation_difference
    return d is not None and abs(d) > EXTRAPOLATION_TOLERANCE

  @property
  def num_chips(self) -> int:
    return self.memory.num_devices

  @property
  def flops_ratio(self) -> float | None:
    model = self.memory.model_flops_per_step
    return self.xla_flops * self.num_chips / model if model and self.xla_flops else None

  @property
  def tokens_per_s_per_chip(self) -> float | None:
    if not self.optimal_seconds:
      return None
    return self.tokens_per_step / self.optimal_seconds / self.num_chips

  @property
  def mfu(self) -> float | None:
    model = self.memory.model_flops_per_step
    if not (model and self.optimal_seconds and self.peak_flops):
      return None
    return model / (self.optimal_seconds * self.num_chips * self.peak_flops)

  @property
  def _roofline_terms(self) -> tuple[float, float] | None:
    """(seconds at the chip's peak FLOP/s, seconds at its HBM bandwidth) per chip."""
    if not (self.xla_flops and self.peak_flops and self.hbm_bytes_per_s):
      return None
    return (self.xla_flops / self.peak_flops,
            (self.xla_bytes_accessed or 0.0) / self.hbm_bytes_per_s)

  @property
  def roofline_seconds(self) -> float | None:
    terms = self._roofline_terms
    return max(terms) if terms else None

  @property
  def cautious(self) -> "TopologyReport":
    """This report with the larger of the two extrapolations' bytes where they disagree
    (`extrapolation_unreliable`), else itself: `ebt plan` ranks a layout by its roofline.
    In ten disagreements measured against every layer (docs/benchmarks.md, "The
    extrapolated cells, checked"), the larger was within 1-9% of every layer's bytes in
    eight and 17-31% over in two; the smaller was 6-74% short in nine (3% over in the
    tenth). So a flagged layout whose smaller estimate beats the leader's is compiled
    with every layer (`plan.flagged_contender`)."""
    if not self.extrapolation_unreliable or self.check_bytes_accessed <= self.xla_bytes_accessed:
      return self
    return dataclasses.replace(self, xla_bytes_accessed=self.check_bytes_accessed,
                               check_bytes_accessed=None)

  @property
  def hopeful_roofline_seconds(self) -> float | None:
    """The roofline step time with the smaller of the two extrapolations' bytes where they
    disagree, else `roofline_seconds`: the fastest a flagged layout may turn out."""
    if not self.extrapolation_unreliable:
      return self.roofline_seconds
    return min(self.roofline_seconds, dataclasses.replace(
        self, xla_bytes_accessed=self.check_bytes_accessed).roofline_seconds)

  @property
  def roofline_bound(self) -> str | None:
    terms = self._roofline_terms
    if terms is None:
      return None
    return "compute" if terms[0] >= terms[1] else "HBM bandwidth"

  @property
  def roofline_tokens_per_s_per_chip(self) -> float | None:
    s = self.roofline_seconds
    return self.tokens_per_step / s / self.num_chips if s else None

  @property
  def roofline_mfu(self) -> float | None:
    model, s = self.memory.model_flops_per_step, self.roofline_seconds
    return model / (s * self.num_chips * self.peak_flops) if model and s else None

  def to_json(self) -> dict:
    m = self.memory
    return {
        "topology": self.topology, "program": self.program, "device_kind": m.device_kind,
        "num_chips": self.num_chips, "mesh": m.mesh, "compile_s": m.compile_s,
        "memory_per_chip": {"argument_bytes": m.argument_bytes, "output_bytes": m.output_bytes,
                            "alias_bytes": m.alias_bytes, "temp_bytes": m.temp_bytes,
                            "peak_bytes": m.peak_bytes, "hbm_bytes": m.device_limit_bytes,
                            "fits": m.fits, "unrolled_peak_bytes": self.unrolled_peak_bytes,
                            "unrolled_fits": self.unrolled_fits},
        "xla_flops_per_chip": self.xla_flops, "xla_bytes_accessed_per_chip":
            self.xla_bytes_accessed, "model_flops_per_step": m.model_flops_per_step,
        "compiled_over_model_flops": self.flops_ratio, "tokens_per_step": self.tokens_per_step,
        "peak_flops_per_chip": self.peak_flops,
        "estimate": {"source": ESTIMATE, "step_seconds": self.optimal_seconds,
                     "raw_optimal_seconds": self.raw_optimal_seconds,
                     "tokens_per_s_per_chip": self.tokens_per_s_per_chip, "mfu": self.mfu},
        "roofline": {"source": ROOFLINE, "step_seconds": self.roofline_seconds,
                     "bound": self.roofline_bound, "hbm_bytes_per_s": self.hbm_bytes_per_s,
                     "tokens_per_s_per_chip": self.roofline_tokens_per_s_per_chip,
                     "mfu": self.roofline_mfu,
                     "scanned_program_step_seconds": self.scanned_roofline_seconds},
        "collectives": self.collectives, "out_of_memory": self.out_of_memory,
        "cost_analysis_program": self.cost_program,
        "cost_analysis_while_loops": self.cost_while_loops,
        "cost_analysis_compile_s": self.cost_compile_s,
        "cost_analysis_counts_every_layer": self.counts_every_layer,
        "layers_scanned": self.layers_scanned,
        "extrapolation_check": None if self.check_bytes_accessed is None else {
            "bytes_accessed_from_3_and_4_layers": self.check_bytes_accessed,
            "relative_difference": self.extrapolation_difference,
            "unreliable": self.extrapolation_unreliable,
            "roofline_step_seconds_with_larger_bytes": self.cautious.roofline_seconds},
    }

  @classmethod
  def from_json(cls, d: dict) -> "TopologyReport":
    """The report `to_json` wrote (a plan's `--resume` reads its candidates back)."""
    m = d["memory_per_chip"]
    mem = memory.MemoryReport(
        device_kind=d["device_kind"], num_devices=d["num_chips"], mesh=d["mesh"],
        argument_bytes=m["argument_bytes"], output_bytes=m["output_bytes"],
        alias_bytes=m["alias_bytes"], temp_bytes=m["temp_bytes"],
        device_limit_bytes=m["hbm_bytes"], compile_s=d["compile_s"],
        model_flops_per_step=d["model_flops_per_step"],
        program=f"{d['program'].capitalize()} program")
    return cls(topology=d["topology"], program=d["program"], memory=mem,
               xla_flops=d["xla_flops_per_chip"],
               xla_bytes_accessed=d["xla_bytes_accessed_per_chip"],
               optimal_seconds=d["estimate"]["step_seconds"],
               raw_optimal_seconds=d["estimate"]["raw_optimal_seconds"],
               tokens_per_step=d["tokens_per_step"], peak_flops=d["peak_flops_per_chip"],
               collectives=d["collectives"], hbm_bytes_per_s=d["roofline"]["hbm_bytes_per_s"],
               out_of_memory=d["out_of_memory"], cost_program=d["cost_analysis_program"],
               cost_while_loops=d["cost_analysis_while_loops"],
               cost_compile_s=d["cost_analysis_compile_s"], layers_scanned=d["layers_scanned"],
               # (absent from files written before 2026-12-02)
               scanned_roofline_seconds=d["roofline"].get("scanned_program_step_seconds"),
               check_bytes_accessed=(d.get("extrapolation_check") or {}).get(
                   "bytes_accessed_from_3_and_4_layers"),
               unrolled_peak_bytes=m.get("unrolled_peak_bytes"))   # (absent before 2026-12-04)

  def table(self) -> str:
    m = self.memory
    gib = memory.GiB
    fmt = lambda v, f: "n/a" if v is None else format(v, f)
    lines = [m.table().replace(f"{m.num_devices} x {m.device_kind}",
                               f"{self.topology} ({m.num_devices} x {m.device_kind})")]
    if self.unrolled_peak_bytes is not None and self.layers_scanned:
      lines.append(f"  with the layers unrolled (--config.model.scan_layers=False): peak "
                   f"{self.unrolled_peak_bytes / gib:.3f} GiB per chip, "
                   + ("fits" if self.unrolled_fits else "DOES NOT FIT either"
                      if self.unrolled_fits is False else "no HBM figure to fit"))
    if self.out_of_memory:
      return "\n".join(lines[:1] + [f"  DOES NOT FIT: {self.out_of_memory}"] + lines[1:])
    larger = self.cautious
    lines += [
        "  FLOPs, bytes, step time and collectives of the program "
        + ("with " if self.cost_program.startswith(UNROLLED) else "") + self.cost_program
        + (f" ({self.cost_compile_s:.1f} s to compile)" if self.cost_compile_s else "")
        + (f"; {self.cost_while_loops} while loops left, each body counted once"
           if self.cost_while_loops else "; no loops left"),
        f"  XLA FLOPs per chip {self.xla_flops:.4g}, bytes accessed per chip "
        f"{self.xla_bytes_accessed / gib:.3f} GiB; compiled x chips / model FLOPs "
        f"{fmt(self.flops_ratio, '.3f')}",
        f"  step time {fmt(self.optimal_seconds, '.4g')} s, "
        f"{fmt(self.tokens_per_s_per_chip, '.4g')} tokens/s per chip, MFU "
        f"{fmt(self.mfu and 100 * self.mfu, '.1f')} %: {ESTIMATE}"
        + ("" if self.optimal_seconds else
           f" (none: the cost model gave {fmt(self.raw_optimal_seconds, '.3g')} s)")
        + (" (over 100%: faster than the chips' peak, "
           + ("the model prices each loop body left once" if self.cost_while_loops else
              "not a credible step time") + ")" if self.mfu and self.mfu > 1 else ""),
        f"  roofline step time {fmt(self.roofline_seconds, '.4g')} s ({self.roofline_bound}), "
        f"{fmt(self.roofline_tokens_per_s_per_chip, '.4g')} tokens/s per chip, MFU "
        f"{fmt(self.roofline_mfu and 100 * self.roofline_mfu, '.1f')} %: {ROOFLINE}",
        *([f"  check: extrapolated from 3 and 4 layers instead, "
           f"{self.check_bytes_accessed / gib:.3f} GiB accessed per chip "
           f"({100 * self.extrapolation_difference:+.1f}%)"
           + (f": {UNRELIABLE}" if self.extrapolation_unreliable else ", within "
              f"{100 * EXTRAPOLATION_TOLERANCE:.0f}%")]
          if self.check_bytes_accessed is not None else []),
        *([f"  with the larger bytes (what `ebt plan` ranks this layout by): roofline step "
           f"time {larger.roofline_seconds:.4g} s ({larger.roofline_bound}), MFU "
           f"{fmt(larger.roofline_mfu and 100 * larger.roofline_mfu, '.1f')} %"]
          if larger is not self else []),
        "  collectives (instructions in the compiled HLO, result bytes per chip):"]
    lines += [f"    {kind:<20} {c['count']:6d}   {c['bytes'] / gib:10.4f} GiB"
              for kind, c in self.collectives.items()]
    return "\n".join(lines)


def _lowerable(program: program_lib.Program, which: str):
  """(jitted function, abstract sharded args, tokens per call, analytic model FLOPs)."""
  config, task = program.config, program.task
  B = config.train.batch_size
  tokens = B * task.tokens_per_example()
  if which == "train":
    return program.train_step, memory.train_step_args(program), tokens, task.flops(B)
  state = program.abstract_sharded_state()
  key = jax.eval_shape(task.eval_key)
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=program.replicated)
  if which == "think":
    batch = memory.train_step_args(program)[1]
    return program.eval_step, (state.params, batch, key), tokens, None
  if not task.thinks_over_tokens:
    raise ConfigError(f"--program generate: needs a text EBT, got {task.describe()}")
  S = config.model.context_length
  prompt_shape = (B, S // 2)
  sampling = generate.Sampling(max_new_tokens=S - S // 2)
  fn = jax.jit(lambda p, prompt, k: generate.generate(p, prompt, task, k, sampling).tokens,
               in_shardings=(program.state_shardings.params, sharding.batch_sharding(
                   program.mesh, prompt_shape, program.rules), program.replicated))
  prompt = jax.ShapeDtypeStruct(prompt_shape, jax.numpy.int32)
  return fn, (state.params, prompt, key), B * sampling.max_new_tokens, None


# "... memory required for HLO temporaries (34.41G) exceeds available HBM (31.25G)."
_OUT_OF_MEMORY = re.compile(r"\(([\d.]+[KMGTP]?)\) exceeds available HBM \(([\d.]+[KMGTP]?)\)")


def _over_hbm(error: jax.errors.JaxRuntimeError) -> str:
  """The first line of libtpu's refusal of a program that needs more than the chip's usable
  HBM; any other compile error raises again."""
  if "RESOURCE_EXHAUSTED" not in str(error):
    raise error
  return str(error).splitlines()[0].removeprefix("RESOURCE_EXHAUSTED: ")


def _parse_bytes(text: str) -> int:
  """XLA's human-readable bytes (binary prefixes): 34.41G -> 36947637616."""
  scale = 1024 ** (" KMGTP".index(text[-1]) if text[-1] in "KMGTP" else 0)
  return int(float(text.rstrip("KMGTP")) * scale)


@functools.cache
def topology_devices(topology: topology_lib.Topology) -> list:
  """The topology's compile-only devices, made once per process."""
  return topology_lib.devices(topology)


_WHILE = re.compile(r"\swhile\(")


def _build(config: ml_collections.ConfigDict, topology: topology_lib.Topology, program: str):
  """(the program on `topology`'s chips, a function compiling it, tokens per call, model
  FLOPs)."""
  prog = program_lib.build(config, mesh_lib.make_mesh(config.mesh, topology_devices(topology)))
  fn, args, tokens, model_flops = _lowerable(prog, program)

  def compile_():
    with prog.context():
      return fn.lower(*args).compile()
  return prog, compile_, tokens, model_flops


def _cost_figures(compiled) -> dict:
  """The TopologyReport fields that come from a compiled program's cost analysis and HLO."""
  cost = compiled.cost_analysis()
  seconds = cost.get("optimal_seconds")
  hlo = compiled.as_text()
  return dict(
      xla_flops=float(cost.get("flops", 0.0)),
      xla_bytes_accessed=float(cost.get("bytes accessed", 0.0)),
      # Negative for every multi-slice program and most at the paper's sizes, with or
      # without loops: no estimate.
      optimal_seconds=seconds if seconds and seconds > 0 else None,
      raw_optimal_seconds=seconds, collectives=collectives(hlo),
      cost_while_loops=len(_WHILE.findall(hlo)))


def compile_report(config: ml_collections.ConfigDict, topology: topology_lib.Topology, *,
                   program: str = "train", hbm_bytes: int | None = None,
                   unrolled_cost: bool = True, extrapolate_layers: bool = False,
                   log=None) -> TopologyReport:
  """Compiles `program` of `config` for `topology`'s chips; `hbm_bytes` replaces the
  generation's HBM per chip (headroom, or a test's small chip). With `unrolled_cost` and
  scanned layers, the cost figures come from a second compile with the layers unrolled
  (`with_unrolled_cost`; `extrapolate_layers`: three compiles, with 2, 3 and 4 layers).
  `log(line)`, if given, hears what is compiling and how long each compile took (minutes
  at the paper's sizes)."""
  log = log or (lambda line: None)
  if program not in PROGRAMS:
    raise ConfigError(f"--program: expected one of {', '.join(PROGRAMS)}, got {program!r}")
  devices = topology_devices(topology)
  kind = devices[0].device_kind
  peak = config.train.get("peak_tflops")
  peak = peak * 1e12 if peak else flops_lib.peak_per_device(kind, config.model.dtype)
  t0 = time.perf_counter()
  prog, compile_, tokens, model_flops = _build(config, topology, program)
  fields = dict(device_kind=kind, num_devices=len(devices), mesh=dict(prog.mesh.shape),
                model_flops_per_step=model_flops, program=f"{program.capitalize()} program")
  log(f"compiling the {program} program for {topology.describe()} ({len(devices)} chips, "
      f"{' '.join(f'{k}={v}' for k, v in prog.mesh.shape.items())})")
  try:
    compiled = compile_()
  except jax.errors.JaxRuntimeError as e:
    message = _over_hbm(e)
    need = _OUT_OF_MEMORY.search(message)
    mem = memory.MemoryReport(
        argument_bytes=0, output_bytes=0, alias_bytes=0,
        temp_bytes=_parse_bytes(need.group(1)) if need else 0,
        device_limit_bytes=_parse_bytes(need.group(2)) if need else 0,
        compile_s=time.perf_counter() - t0, **fields)
    report = TopologyReport(topology.describe(), program, mem, None, None, None, None, tokens,
                            peak, {}, out_of_memory=f"XLA: {message}",
                            layers_scanned=config.model.scan_layers)
    if not (unrolled_cost and config.model.scan_layers):
      return report
    # The layer loops' stacked residuals and state cost memory (S1 xl on v6e-64: 47.8 GiB
    # scanned, 24.2 GiB unrolled, docs/benchmarks.md), so say whether unrolling
    # would fit it.
    log("over HBM; compiling it with the layers unrolled to see whether that fits "
        "(--no-unrolled-cost skips this)")
    return dataclasses.replace(report, unrolled_peak_bytes=_unrolled_peak(config, topology,
                                                                          program))
  mem = memory.MemoryReport.of(compiled, device_limit_bytes=hbm_bytes or topology.spec.hbm_bytes,
                               compile_s=time.perf_counter() - t0, **fields)
  report = TopologyReport(topology=topology.describe(), program=program, memory=mem,
                          tokens_per_step=tokens, peak_flops=peak,
                          hbm_bytes_per_s=topology.spec.hbm_bytes_per_s,
                          layers_scanned=config.model.scan_layers, **_cost_figures(compiled))
  log(f"  compiled in {mem.compile_s:.0f} s")
  if not unrolled_cost or report.counts_every_layer:
    return report
  log("compiling it again with the layers unrolled"
      + (" (2, 3 and 4 of them, extrapolated)" if extrapolate_layers else "")
      + ", for its cost figures (--no-unrolled-cost skips this)")
  report = with_unrolled_cost(report, config, topology, extrapolate=extrapolate_layers)
  log(f"  compiled in {report.cost_compile_s:.0f} s")
  return report


def _unrolled(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with `model.scan_layers=False`."""
  unrolled = config.copy_and_resolve_references()
  unrolled.model.scan_layers = False
  return unrolled


def _unrolled_peak(config: ml_collections.ConfigDict, topology: topology_lib.Topology,
                   program: str) -> int | None:
  """Peak bytes per chip of `program` with every layer unrolled: compiled, or what libtpu
  says it needs where it refuses it (None where it says no figure)."""
  try:
    return memory.peak_bytes(_build(_unrolled(config), topology, program)[1]())
  except jax.errors.JaxRuntimeError as e:
    need = _OUT_OF_MEMORY.search(_over_hbm(e))
    return _parse_bytes(need.group(1)) if need else None


def with_unrolled_cost(report: TopologyReport, config: ml_collections.ConfigDict,
                       topology: topology_lib.Topology, *,
                       extrapolate: bool = False) -> TopologyReport:
  """`report` (of `config` on `topology`) with its FLOPs, bytes, step time and collectives
  from the same program compiled again with the layers unrolled; unchanged where nothing is
  scanned or the configured program did not compile.

  XLA's cost analysis counts a while loop's body once, and the layer scan is one. The
  unrolled program's peak memory comes along (`unrolled_peak_bytes`, every layer only):
  the report's memory stays the configured program's, which a run compiles.
  `extrapolate`: instead of unrolling every layer, compile the program with 2, 3 and 4
  layers unrolled and extend the difference of 2 and 3, one layer's figures, to the
  config's layer count (`_extrapolated`): small compiles instead of one that grows with
  the depth. The bytes extended from 3 and 4 layers instead are kept as a check
  (`check_bytes_accessed`): XLA can compile a shallow stack's layers unlike each other
  (memory-space assignment, fusion), and then the two disagree. An extrapolated `report`
  with `extrapolate` False gets every layer's figures instead (`ebt plan` settles a
  flagged extrapolation so)."""
  # An extrapolation is compiled again with every layer when asked without `extrapolate`.
  settle = report.cost_program == EXTRAPOLATED and not extrapolate
  if (report.counts_every_layer and not settle) or report.out_of_memory:
    return report
  unrolled = _unrolled(config)
  t0 = time.perf_counter()
  n_layers = config.model.n_layers
  depths = (2, 3, 4) if extrapolate and n_layers > 4 else (n_layers,)
  figures = []
  try:
    for depth in depths:
      unrolled.model.n_layers = depth
      compiled = _build(unrolled, topology, report.program)[1]()
      figures.append(_cost_figures(compiled))
  except jax.errors.JaxRuntimeError as e:
    _over_hbm(e)
    # libtpu refuses an unrolled program over HBM; the scanned one's figures remain.
    return dataclasses.replace(
        report, cost_program=f"{AS_CONFIGURED} (the unrolled program is over HBM)",
        cost_compile_s=time.perf_counter() - t0)
  kept = (dict(cost_compile_s=report.cost_compile_s + time.perf_counter() - t0,
               scanned_roofline_seconds=report.scanned_roofline_seconds) if settle else
          dict(cost_compile_s=time.perf_counter() - t0,
               scanned_roofline_seconds=report.roofline_seconds))
  if len(figures) == 3:
    check = _extrapolated(figures[1], figures[2], n_layers - 4)["xla_bytes_accessed"]
    return dataclasses.replace(report, **_extrapolated(*figures[:2], n_layers - 3),
                               cost_program=EXTRAPOLATED, check_bytes_accessed=check, **kept)
  return dataclasses.replace(report, **figures[0], cost_program=UNROLLED,
                             check_bytes_accessed=None,
                             unrolled_peak_bytes=memory.peak_bytes(compiled), **kept)


def _extrapolated(two: dict, three: dict, more_layers: int) -> dict:
  """The `_cost_figures` of a program `more_layers` layers deeper than `three`, from those
  of the same program with 2 and 3 layers: each figure plus `more_layers` times one
  layer's share (3 layers' figure less 2 layers'). Exact where every layer between the
  first and the last compiles to the same instructions, as an unrolled stack of identical
  blocks does (the last may differ, e.g. a context stream's last block computes keys and
  values only, so one layer is not a base); the step time is XLA's cost model's sum over
  instructions, extended the same way, and none where either compile gave none."""
  grow = lambda a, b: b + more_layers * (b - a)
  seconds = (grow(two["raw_optimal_seconds"], three["raw_optimal_seconds"])
             if None not in (two["raw_optimal_seconds"], three["raw_optimal_seconds"]) else None)
  return dict(
      xla_flops=grow(two["xla_flops"], three["xla_flops"]),
      xla_bytes_accessed=grow(two["xla_bytes_accessed"], three["xla_bytes_accessed"]),
      optimal_seconds=seconds if two["optimal_seconds"] and three["optimal_seconds"] else None,
      raw_optimal_seconds=seconds,
      collectives={kind: {k: grow(two["collectives"][kind][k], c[k]) for k in c}
                   for kind, c in three["collectives"].items()},
      cost_while_loops=three["cost_while_loops"])
