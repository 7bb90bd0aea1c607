"""`ebt bench --config F`: speed of training, thinking and generation, against the naive way.

    ebt bench --config configs/default.py --json bench.json

Each workload is compiled (timed apart), warmed up, then timed as the median of repeats,
each ended by `block_until_ready`. Parameters are freshly initialised: speed does not
depend on training. In the same run the naive way of doing the same work is timed:
* thinking: the official way re-encodes the whole sequence (real and prediction streams)
  at every thinking step; ours encodes the context once per landscape and steps only the
  prediction stream against its keys/values. (Compiled, XLA would hoist a `default`
  model's loop-invariant encoding out of the loop by itself; the naive version blocks
  that, to time what the eager official code does.)
* generation: the official way re-encodes the sequence and thinks at every position for
  each new token (`generate.generate_naive`, lengths padded to a multiple of 16 so a few
  compiled shapes serve); ours thinks about the new token only, against a KV cache.
Peak memory is the device's own peak where the backend reports it (GPU/TPU), else XLA's
compile-time estimate of the largest program (arguments + temporaries + outputs).

`--profile DIR` also traces a few more train steps with `jax.profiler` into DIR and
prints where the device's time goes, by kernel (`tools/kernel_profile.py`).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ebt_jax import tasks
from ebt_jax.errors import check
from ebt_jax.inference import generate, system2
from ebt_jax.models import ar_ebt
from ebt_jax.tasks import options
from ebt_jax.tasks.text import TextEBT
from ebt_jax.thinking import inference, loop
from ebt_jax.tools import kernel_profile
from ebt_jax.training import flops as flops_lib
from ebt_jax.training import memory
from ebt_jax.training import program as program_lib


@dataclasses.dataclass
class Timing:
  compile_s: float
  median_s: float
  compiled_bytes: int | None = None
  profile: dict | None = None


PROFILE_STEPS = 2


def _time(fn, args, repeats: int, threads_state: bool = False, profile_dir=None) -> Timing:
  """Compile (ahead of time), warm up once, then the median of `repeats` synchronised runs;
  then, with `profile_dir`, `PROFILE_STEPS` more runs under the profiler.

  With `threads_state`, the first argument is donated state: each run feeds the next.
  """
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0

  def run() -> None:
    """One synchronised run (feeding the next one its state)."""
    nonlocal args
    out = jax.block_until_ready(compiled(*args))
    if threads_state:
      args = (out[0],) + tuple(args[1:])

  times = []
  for _ in range(repeats + 1):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  times = times[1:]      # the first run warms up
  used = memory.peak_bytes(compiled)
  profile = None
  if profile_dir is not None:
    profile = kernel_profile.trace(run, PROFILE_STEPS, profile_dir)
  return Timing(compile_s, statistics.median(times), used, profile)


def _think_fns(task: TextEBT, steps: int):
  """(cached, naive) inference thinking with N = `steps` on a batch; both -> final logits."""
  opt = options.inner_optimizer(task.thinking)
  reparam = task.candidate_reparam()
  lands = system2.landscapes(task, steps)

  def cached(params, inputs, y0, key):
    caches = task.encode_landscapes(params, inputs)
    return system2.think(params, caches, y0[None], task, key, steps=steps,
                         trajectory=False).logits

  def naive(params, inputs, y0, key):
    def energy_fn(z, landscape):
      # The barrier ties the tokens to this step's candidate. Otherwise XLA hoists the
      # loop-invariant context encoding out of the loop by itself (it does for a
      # `default` model), and this would time the cached way, not the official one.
      tokens, z = jax.lax.optimization_barrier((inputs, z))
      return ar_ebt.energy(params, tokens, task.candidate_probs(z), landscape, task.dims)

    schedule = loop.Schedule(lands[:-1], system2.step_size(params, task))
    return inference.think_per_position(energy_fn, y0, opt, schedule, key, reparam=reparam,
                                        final_landscape=lands[-1], trajectory=False).final

  return jax.jit(cached), jax.jit(naive)


def _peak_bytes(timings) -> tuple[int | None, str]:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device"
  compiled = [t.compiled_bytes for t in timings if t.compiled_bytes is not None]
  return (max(compiled) if compiled else None), "compile-time estimate"


def run_bench(config: ml_collections.ConfigDict, *, repeats: int = 5, prompt_len: int | None = None,
              new_tokens: int | None = None, batch_size: int | None = None,
              think_steps: int | None = None, profile_dir=None, log=print) -> dict:
  task = tasks.build(config)
  check(isinstance(task, TextEBT), "--config", "a text EBT (bench times one)", task.describe())
  S, V = config.model.context_length, config.model.vocab_size
  B = batch_size or config.train.batch_size
  prompt_len = prompt_len or S // 2
  new_tokens = new_tokens or S - prompt_len
  n = think_steps or system2.num_steps(task)
  steps = system2.total_steps(task, n)   # N counts as inference.step_count says
  rng = np.random.default_rng(config.seed)
  key = jax.random.key(config.seed)
  out = {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
         "batch_size": B, "context_length": S, "thinking_steps": steps}

  log(f"[1/3] train step (batch {B} x {S})")
  program = program_lib.build(config)
  with program.context():
    state = program.init_state()
    batch = program.put_global(rng.integers(1, V, (config.train.batch_size, S + 1), np.int32))
    train = _time(program.train_step, (state, batch), repeats, threads_state=True,
                  profile_dir=profile_dir)
  train_tokens = config.train.batch_size * S
  out.update(train_step_ms=1e3 * train.median_s, train_compile_s=train.compile_s,
             train_tokens_per_s=train_tokens / train.median_s)
  if profile_dir is not None:
    out["train_profile"] = train.profile
    out["profile_dir"] = str(profile_dir)
  peak = flops_lib.device_peak_flops(config)
  if peak:
    flops = task.flops(config.train.batch_size)
    out["train_mfu"] = flops / train.median_s / peak

  log(f"[2/3] thinking: {steps} step{'s' if steps != 1 else ''} on a batch of {B} x {S}, "
      f"cached context vs re-encoded")
  params = task.init_params(key)
  inputs = jnp.asarray(rng.integers(1, V, (B, S), np.int32))
  y0 = task.initial_candidate(jax.random.fold_in(key, 1), (B, S, task.vocab_width))
  cached_fn, naive_fn = _think_fns(task, n)
  think_args = (params, inputs, y0, jax.random.fold_in(key, 2))
  think = _time(cached_fn, think_args, repeats)
  think_naive = _time(naive_fn, think_args, repeats)
  out.update(think_step_ms=1e3 * think.median_s / steps, think_compile_s=think.compile_s,
             think_step_naive_ms=1e3 * think_naive.median_s / steps,
             think_speedup=think_naive.median_s / think.median_s)

  log(f"[3/3] generation: {new_tokens} tokens after a {prompt_len}-token prompt, batch {B}")
  prompt = jnp.asarray(rng.integers(1, V, (B, prompt_len), np.int32))
  sampling = generate.Sampling(max_new_tokens=new_tokens)
  gen_args = (params, prompt, jax.random.fold_in(key, 3))
  gen = _time(_bound_generate(task, sampling), gen_args, repeats)
  generate.generate_naive(params, prompt, task, key, sampling)     # compiles every bucket
  naive_times = []
  for _ in range(max(1, repeats // 2)):
    t0 = time.perf_counter()
    jax.block_until_ready(generate.generate_naive(params, prompt, task, key, sampling).tokens)
    naive_times.append(time.perf_counter() - t0)
  naive_s = statistics.median(naive_times)
  out.update(generate_tokens_per_s=B * new_tokens / gen.median_s,
             generate_compile_s=gen.compile_s,
             generate_naive_tokens_per_s=B * new_tokens / naive_s,
             generate_speedup=naive_s / gen.median_s)
  out["peak_memory_bytes"], out["peak_memory_source"] = _peak_bytes(
      [train, think, think_naive, gen])
  return out


def _bound_generate(task: TextEBT, sampling):
  return jax.jit(lambda p, prompt, k: generate.generate(p, prompt, task, k, sampling).tokens)


def table(result: dict) -> str:
  r = result
  lines = [f"ebt bench on {r['num_devices']} x {r['device']} (batch {r['batch_size']}, "
           f"context {r['context_length']}, {r['thinking_steps']} thinking steps)",
           f"  train step        {r['train_step_ms']:10.1f} ms   {r['train_tokens_per_s']:12.0f} "
           f"tokens/s   compile {r['train_compile_s']:.1f} s"
           + (f"   MFU {100 * r['train_mfu']:.1f}%" if "train_mfu" in r else ""),
           f"  thinking step     {r['think_step_ms']:10.2f} ms   naive (re-encode every step) "
           f"{r['think_step_naive_ms']:.2f} ms   x{r['think_speedup']:.2f}",
           f"  generation        {r['generate_tokens_per_s']:10.1f} tokens/s   naive (no cache) "
           f"{r['generate_naive_tokens_per_s']:.1f} tokens/s   x{r['generate_speedup']:.1f}"]
  if r.get("peak_memory_bytes") is not None:
    lines.append(f"  peak memory       {r['peak_memory_bytes'] / 2**20:10.1f} MiB "
                 f"({r['peak_memory_source']})")
  if "profile_dir" in r:
    lines.append(kernel_profile.table(r["train_profile"], r["train_step_ms"], r["profile_dir"]))
  return "\n".join(lines)
