"""Where a compiled step's device time goes: a `jax.profiler` trace, summarised by kernel.

    ebt bench --config ebt_s1:small --profile traces/small      # on a GPU or TPU

`trace(run, steps, log_dir)` calls `run` (one synchronised run of a compiled, warmed-up
program) `steps` times under `jax.profiler.trace` with a Perfetto trace (the Chrome
trace-event JSON, gzipped; open it at ui.perfetto.dev), and `summarize` reads that file
back: the first device's kernel time per step, by kernel name, with a coarse split into
matmuls, copies and the rest. Only device timelines count (`/device:GPU:0`,
`/device:TPU:0`, ...); a CPU backend has none, and then the summary says so and only the
trace is left. Checked against an H200's trace (docs/benchmarks.md); the TPU rule (its
"XLA Ops" threads) is from the trace format, not yet from a TPU.

Parsing the trace's JSON here, rather than depending on xprof/TensorBoard's profile
plugin, keeps the summary to the standard library; the file itself is what those tools
read too.
"""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path

import jax

# Kernel names by kind, lower-cased substrings. cuBLAS/cuBLASLt and XLA's own GEMMs on
# NVIDIA GPUs (xmma, nvjet, cutlass, gemm fusions), and TPU convolution/dot ops.
MATMUL_MARKS = ("gemm", "xmma", "nvjet", "cutlass", "cublas", "convolution", "dot")
COPY_MARKS = ("memcpy", "memset", "copy")
# A TPU device's ops are on its "XLA Ops" threads, beside threads whose events span whole
# programs, steps or source lines (counting those would count each op twice): where a
# device has an "XLA Ops" thread only those count. A GPU's kernels are on its streams; a
# thread there named as a spanning one is left out all the same.
OPS_THREAD = "XLA Ops"
SPANNING_THREADS = ("XLA Modules", "Steps")
TRACE_FILE = "perfetto_trace.json.gz"


def trace(run, steps: int, log_dir) -> dict | None:
  """Calls `run()` (one synchronised run) `steps` times under the profiler; the summary
  (None on a backend with no device timeline)."""
  with jax.profiler.trace(str(log_dir), create_perfetto_trace=True):
    for _ in range(steps):
      run()
  found = sorted(Path(log_dir).rglob(TRACE_FILE), key=lambda p: p.stat().st_mtime)
  if not found:
    raise FileNotFoundError(f"{log_dir}: the profiler wrote no {TRACE_FILE}")
  return summarize(found[-1], steps)


def kind(name: str) -> str:
  low = name.lower()
  if any(mark in low for mark in COPY_MARKS):
    return "copy"
  if any(mark in low for mark in MATMUL_MARKS):
    return "matmul"
  return "other"


def summarize(path, steps: int, top: int = 12) -> dict | None:
  """Kernel time per step on the trace's first device, by name; None if it has no device
  timeline (a CPU backend)."""
  with gzip.open(path, "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  processes, threads = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      processes[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e["pid"], e["tid"])] = e["args"]["name"]
  devices = sorted((name, pid) for pid, name in processes.items()
                   if name.startswith("/device:") and "CUSTOM" not in name)
  if not devices:
    return None
  device, pid = devices[0]
  ops_threads = {tid for (p, tid), name in threads.items() if p == pid and name == OPS_THREAD}
  total_us, calls = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or e.get("pid") != pid:
      continue
    if (e.get("tid") not in ops_threads if ops_threads
        else threads.get((pid, e.get("tid"))) in SPANNING_THREADS):
      continue
    total_us[e["name"]] += e.get("dur", 0)
    calls[e["name"]] += 1
  busy_ms = sum(total_us.values()) / 1e3 / steps
  by_kind = collections.Counter()
  for name, us in total_us.items():
    by_kind[kind(name)] += us / 1e3 / steps
  return {"device": device, "steps": steps, "trace": str(path), "busy_ms": busy_ms,
          "kernels": len(total_us),
          "by_kind_ms": {k: by_kind.get(k, 0.0) for k in ("matmul", "copy", "other")},
          "top": [{"name": name, "ms": us / 1e3 / steps, "calls": calls[name] / steps,
                   "kind": kind(name)} for name, us in total_us.most_common(top)]}


def table(summary: dict | None, step_ms: float, log_dir) -> str:
  """The summary as lines, shares against the timed step `step_ms`."""
  if summary is None:
    return (f"  profile: this backend's trace has no device timeline (CPU); the trace is "
            f"under {log_dir}")
  s = summary

  def share(ms):
    return f"{100 * ms / step_ms:5.1f}%"

  kinds = ", ".join(f"{k} {ms:.1f} ms ({share(ms).strip()})" for k, ms in s["by_kind_ms"].items())
  lines = [f"  profile of {s['steps']} train steps on {s['device']}: kernels busy "
           f"{s['busy_ms']:.1f} ms per step ({share(s['busy_ms']).strip()} of the timed step), "
           f"{s['kernels']} kernel names",
           f"    by kind (from the names): {kinds}"]
  lines += [f"    {k['ms']:9.2f} ms {share(k['ms'])} {k['calls']:7.0f}x  {k['kind']:<6}  "
            f"{k['name'][:100]}" for k in s["top"]]
  lines.append(f"  trace: {s['trace']} (ui.perfetto.dev)")
  return "\n".join(lines)
