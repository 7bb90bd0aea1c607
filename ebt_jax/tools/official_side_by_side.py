"""This project against the official PyTorch EBT code, in one process: parity and speed.

    python -m ebt_jax.tools.official_side_by_side --official-repo PATH/TO/EBT [--parity] [--bench]
    python -m ebt_jax.tools.official_side_by_side --official-repo PATH/TO/EBT --bench \
        --config ebt_s1:small --json side_by_side_small.json      # a recipe, on a GPU
    python -m ebt_jax.tools.official_side_by_side --official-repo PATH/TO/EBT --bench \
        --config ebt_s1:small --config.model.scan_layers=False    # with overrides (ours)

Needs `torch` and a checkout of the official repository (github.com/alexiglad/EBT); neither
is a dependency of the project. The official NLP model imports Lightning, torchvision,
diffusers and transformers only for features these checks do not touch; they are replaced
by inert stand-ins before import, and its tokenizer by one of the configured size.

* `--parity`: for every ebt_type and step option (detach, no detach, truncation, the
  official soften/sharpen/first-step-softmax options), the same weights (through
  `import_official`) and the same initial candidate give the official loss, metrics and
  every parameter gradient, in float64 (both sides upcast as one); and
  `system2.predict` gives the official `ebt_advanced_inference`'s final logits and
  per-step energies for each step-count mode, the final-landscape alpha and the clamp.
* `--bench`: the S1 training step of the issue's reference size (D=384, 6 layers, 6 heads,
  S=128, B=8, V=4096, two steps, time_embed, float32, AdamW update included), each side
  timed in its own fresh processes, alternating; prints the medians and their ratio. Both
  sides' processes get the huge-page tunable that `ebt`'s step commands start with
  (ebt_jax/hugepages.py; `EBT_JAX_HUGE_PAGES=0` times both without it).
* `--bench --config SPEC`: the same for a bundled recipe or config file (e.g.
  `ebt_s1:small`) as configured (its dtype, context, vocabulary, thinking), at `--batch`
  rows (default 32, the official S1 job scripts' `batch_size_per_device`). The official
  side runs in float32 with `torch.set_float32_matmul_precision("medium")`, as those job
  scripts set it (reduced-precision tensor-core matmuls on a GPU). Torch runs on the GPU
  when it sees one and JAX on its default backend; each side names its device. Where the
  device's peak is known (training/flops.py), both sides' MFU is printed against the same
  count, this project's model FLOPs of the step (`task.flops`). `--config.FIELD=VALUE`
  overrides change this project's side, as in `ebt bench`, and the official side where it
  reads the field (model size, vocabulary, context, thinking steps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from unittest import mock

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import ebt_jax
from ebt_jax import atomic, hugepages, official_hparams, tasks
from ebt_jax import config as config_lib
from ebt_jax.checkpoint import import_official
from ebt_jax.errors import ConfigError, check
from ebt_jax.tasks.text import TextEBT
from ebt_jax.training import flops as flops_lib


def load_official(repo: str, vocab_size: int):
  """The official EBT_NLP and Baseline_Transformer_NLP classes, importable without their
  training stack."""
  import torch

  class HParams(dict):
    __getattr__ = dict.__getitem__

    def __setattr__(self, key, value):
      self[key] = value

  class LightningModule(torch.nn.Module):
    def __init__(self):
      super().__init__()
      object.__setattr__(self, "_hparams", HParams())

    @property
    def hparams(self):
      return self._hparams

    @property
    def device(self):
      # Lightning's own answer: where the module's parameters are (the official code draws
      # its initial candidates on it).
      first = next(self.parameters(), None)
      return torch.device("cpu") if first is None else first.device

  lightning = types.ModuleType("pytorch_lightning")
  lightning.LightningModule = LightningModule
  sys.modules["pytorch_lightning"] = lightning
  for name in ("torchmetrics", "torchvision", "torchvision.transforms",
               "torchvision.transforms.functional", "torchvision.models", "torchvision.utils",
               "diffusers", "PIL", "PIL.Image", "transformers"):
    sys.modules.setdefault(name, mock.MagicMock())

  class Tokenizer:
    eos_token_id = 0

    def __len__(self):
      return vocab_size

  sys.modules["transformers"].AutoTokenizer.from_pretrained = lambda *a, **k: Tokenizer()
  sys.path.insert(0, repo)
  from model.nlp.baseline_transformer import Baseline_Transformer_NLP
  from model.nlp.ebt import EBT_NLP
  return EBT_NLP, Baseline_Transformer_NLP


def official_namespace(c) -> argparse.Namespace:
  """The official flags that build the model `c` describes and its advanced inference:
  `to_official_hparams` (what a checkpoint of it holds), the flags the official model
  reads that no config field sets (at their official values), and the `infer_*` flags."""
  i = c.inference
  return argparse.Namespace(
      **official_hparams.to_official_hparams(c), tokenizer="-", ebt_norm="rms",
      ebt_act_func="silu", dyt_alpha_init=0.5, num_modality_processing_mlp_layers=1,
      debug_unused_parameters=False, execution_mode="pretrain",
      infer_ebt_num_steps=i.thinking_steps or 1,
      infer_steps_final_landscape=i.step_count == "final_landscape",
      infer_alpha_final_landscape=i.step_size_final_landscape,
      infer_ebt_override_alpha=i.step_size or (i.step_size_scale if i.step_size_scale != 1 else 0),
      infer_generated_samples=i.best_of, infer_energy_sampling_technique=i.select,
      infer_langevin_dynamics_noise=0.0, infer_langevin_first_step=False,
      infer_accept_lower_energies=i.accept_lower, infer_debug_sample_distances=False)


def _max_rel_err(ours, theirs) -> float:
  errs = jax.tree_util.tree_map(
      lambda a, b: float(np.max(np.abs(np.asarray(a) - b)) / (np.max(np.abs(b)) + 1e-30)),
      ours, theirs)
  return max(jax.tree_util.tree_leaves(errs))


def parity(repo: str) -> float:
  import torch
  torch.set_default_dtype(torch.float64)
  torch.Tensor.float = lambda self: self  # the official RMSNorm/RoPE upcast; keep float64
  vocab = 61
  EBT_NLP, Baseline = load_official(repo, vocab)
  worst = 0.0
  print(f"{'model':<12} {'options':<20} {'loss (ours)':>14} {'loss (official)':>16} "
        f"{'max rel grad err':>17}")
  with jax.enable_x64(True):
    for kind, ebt_type in [("ebt", t) for t in ("default", "time_embed", "adaln", "adaln_zero")] + \
        [("transformer", "default")]:
      options = [dict(detach=True, truncate=False), dict(detach=False, truncate=False),
                 dict(detach=False, truncate=True),
                 dict(soften_target=0.3, sharpen=1.5, normalize_first_step_only=True)] \
          if kind == "ebt" else [{}]
      for opts in options:
        c = config_lib.base_config()
        c.model.update(kind=kind, ebt_type=ebt_type, vocab_size=vocab, dim=32, n_layers=2,
                       n_heads=4, context_length=12, dtype="float64")
        c.thinking.update(num_steps=3, step_size=5.0, **opts)
        torch.manual_seed(0)
        tokens = torch.randint(0, vocab, (3, 13))
        tokens[0, -3:] = 0
        model = (EBT_NLP if kind == "ebt" else Baseline)(official_namespace(c))
        with torch.no_grad():  # move every weight so zero-initialised parts matter too
          for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        y0 = torch.randn(3, 12, vocab)
        model.corrupt_embeddings = lambda emb: y0.clone()
        out = model.forward_loss_wrapper({"input_ids": tokens[:, None]}, phase="val")
        model.zero_grad()
        out["loss"].backward()
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p))
                 for n, p in model.named_parameters()}
        params = import_official(model.state_dict(), c, dtype=np.float64)
        tok = jnp.asarray(tokens.numpy())
        if kind == "ebt":
          f = lambda p: ebt_jax.text_ebt_loss(p, tok, c, initial_logits=jnp.asarray(y0.numpy()))[0]
        else:
          f = lambda p: ebt_jax.transformer_loss(p, tok, c)[0]
        loss, g = jax.value_and_grad(f)(params)
        err = _max_rel_err(g, import_official(grads, c, dtype=np.float64))
        loss_err = abs(float(loss) - out["loss"].item()) / abs(out["loss"].item())
        worst = max(worst, err, loss_err)
        label = ",".join(k for k, v in opts.items() if (v if k != "detach" else not v)) or "-"
        label = label.replace("detach", "no_detach").replace(
            "soften_target,sharpen,normalize_first_step_only", "soften,sharpen,first")
        print(f"{ebt_type if kind == 'ebt' else 'transformer':<12} {label:<20} "
              f"{float(loss):>14.8f} {out['loss'].item():>16.8f} {err:>17.2e}")
  print(f"worst relative difference (loss or any gradient): {worst:.2e}")
  return max(worst, parity_inference(EBT_NLP, vocab))


def parity_inference(EBT_NLP, vocab: int) -> float:
  """`system2.predict` against the official `ebt_advanced_inference` (float64, no noise)."""
  import torch
  from ebt_jax.inference import system2
  worst = 0.0
  print(f"\n{'advanced inference':<24} {'steps':>5} {'max rel err logits':>19} "
        f"{'max rel err energies':>21}")
  with jax.enable_x64(True):
    for ebt_type, count in (("default", "per_landscape"), ("time_embed", "per_landscape"),
                            ("time_embed", "final_landscape"), ("adaln", "per_landscape")):
      c = config_lib.base_config()
      c.model.update(ebt_type=ebt_type, vocab_size=vocab, dim=32, n_layers=2, n_heads=4,
                     context_length=12, dtype="float64")
      c.thinking.update(num_steps=3, step_size=5.0, clamp_grad=True, clamp_grad_max_change=2.0)
      c.inference.update(thinking_steps=2, step_count=count, step_size=8.0,
                         step_size_final_landscape=True)
      torch.manual_seed(1)
      tokens = torch.randint(1, vocab, (3, 12))
      model = EBT_NLP(official_namespace(c))
      with torch.no_grad():
        for p in model.parameters():
          p.add_(0.02 * torch.randn_like(p))
        # Its advanced inference adds noise of this std whatever the flags say: none here.
        model.langevin_dynamics_noise_std.zero_()
      y0 = torch.randn(3, 12, vocab)
      model.corrupt_embeddings = lambda emb: y0.clone()
      logits, energies, _ = model.ebt_advanced_inference(tokens, learning=False)
      params = import_official(model.state_dict(), c, dtype=np.float64)
      ours = system2.predict(params, jnp.asarray(tokens.numpy()), c, key=jax.random.key(0),
                             initial_logits=jnp.asarray(y0.numpy()))
      e_err = _max_rel_err(ours.energies[:, 0], np.stack([e.numpy() for e in energies]))
      l_err = _max_rel_err(ours.logits, logits.detach().numpy())
      worst = max(worst, e_err, l_err)
      print(f"{ebt_type + ', ' + count:<24} {len(energies) - 1:>5} {l_err:>19.2e} {e_err:>21.2e}")
  print(f"worst relative difference (advanced inference): {worst:.2e}")
  return worst


REFERENCE_BATCH = 8
RECIPE_BATCH = 32   # the official S1 job scripts' batch_size_per_device


def bench_config(spec: str | None, batch: int | None, overrides: tuple[str, ...] = ()
                 ) -> tuple[ml_collections.ConfigDict, TextEBT, int]:
  """(config, its task, rows per step): the issue's CPU reference step (D=384, 6 layers,
  6 heads, S=128, V=4096, time_embed, 2 steps, float32), or the text EBT config `spec`
  names, with `--config.FIELD=VALUE` `overrides` applied."""
  from ebt_jax.cli import apply_overrides, load_run_config
  if spec is None:
    c = config_lib.base_config()
    c.model.update(ebt_type="time_embed", vocab_size=4096, dim=384, n_layers=6, n_heads=6,
                   context_length=128)
    c.thinking.update(num_steps=2, step_size=500.0)
    batch = batch or REFERENCE_BATCH
  else:
    c, _ = load_run_config(spec)
    batch = batch or RECIPE_BATCH
  apply_overrides(c, list(overrides))
  task = tasks.build(c)
  check(isinstance(task, TextEBT), "--config", "a text EBT (the official step timed is EBT_NLP's)",
        task.describe())
  return c, task, batch


def _time_one_side(repo: str, side: str, repeats: int, spec: str | None,
                   batch: int | None, overrides: tuple[str, ...] = ()) -> dict:
  """Median step time of one implementation, alone in this process."""
  import torch
  c, task, B = bench_config(spec, batch, overrides)
  vocab, S = c.model.vocab_size, c.model.context_length
  torch.manual_seed(0)
  tokens = torch.randint(1, vocab, (B, S + 1))
  compile_s = 0.0
  measured = {}
  if side == "torch":
    cuda = torch.cuda.is_available()
    if spec is not None:
      torch.set_float32_matmul_precision("medium")   # as the official job scripts
    EBT_NLP, _ = load_official(repo, vocab)
    model = EBT_NLP(official_namespace(c))
    if cuda:
      model, tokens = model.cuda(), tokens.cuda()
    torch_opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    measured["device"] = torch.cuda.get_device_name() if cuda else "cpu"

    def step(i):
      out = model.forward_loss_wrapper({"input_ids": tokens[:, None]}, phase="train")
      torch_opt.zero_grad()
      out["loss"].backward()
      torch_opt.step()
      if cuda:
        torch.cuda.synchronize()
  else:
    tx = optax.adamw(1e-4)
    params = ebt_jax.init_params(c, jax.random.key(0))
    state = [params, tx.init(params)]
    tok = jnp.asarray(tokens.numpy())

    def update(params, opt_state, key):
      grads = jax.grad(lambda p: ebt_jax.text_ebt_loss(p, tok, c, key=key)[0])(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    t0 = time.perf_counter()
    compiled = jax.jit(update, donate_argnums=(0, 1)).lower(*state, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0

    def step(i):
      state[:] = compiled(*state, jax.random.key(i))
      jax.block_until_ready(state)

    device = jax.devices()[0].device_kind
    measured.update(device=device, model_flops=task.flops(B),
                    peak_flops=flops_lib.peak_per_device(device, c.model.dtype))

  step(0)  # warm-up
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    step(i + 1)
    times.append(time.perf_counter() - t0)
  return {"times": times, "compile_s": compile_s, "threads": torch.get_num_threads(), **measured}


def bench(repo: str, repeats: int = 5, rounds: int = 3, spec: str | None = None,
          batch: int | None = None, overrides: tuple[str, ...] = ()) -> dict:
  """Alternates fresh processes of each side (`rounds` each, `repeats` steps per process):
  in one process, torch's and XLA's spinning thread pools slow whichever runs second, and
  on a GPU each would hold memory the other needs. This process touches no device."""
  # A bad --config or override fails here, before any process starts.
  c, _, B = bench_config(spec, batch, overrides)
  S, m = c.model.context_length, c.model
  times = {"torch": [], "jax": []}
  compile_s, runs = [], {}
  extra = ((["--config", spec] if spec else []) + (["--batch", str(batch)] if batch else [])
           + list(overrides))
  for r in range(rounds):
    for side in ("torch", "jax"):
      print(f"  round {r + 1}/{rounds}: {side}, {repeats} steps ...", flush=True)
      proc = subprocess.run([sys.executable, "-m", "ebt_jax.tools.official_side_by_side",
                             "--official-repo", repo, "--time-side", side,
                             "--repeats", str(repeats), *extra],
                            capture_output=True, text=True,
                            env=hugepages.step_environ(os.environ))
      if proc.returncode:
        # Its stdout is one JSON line; what went wrong is on stderr, which would be lost.
        raise RuntimeError(f"the {side} side's process failed (exit {proc.returncode}):\n"
                           + proc.stderr[-4000:])
      runs[side] = json.loads(proc.stdout.strip().splitlines()[-1])
      times[side] += runs[side]["times"]
      if side == "jax":
        compile_s.append(runs[side]["compile_s"])
  result = {"config": spec or "reference", "overrides": list(overrides), "batch": B,
            "context_length": S,
            "torch_step_s": statistics.median(times["torch"]),
            "jax_step_s": statistics.median(times["jax"]),
            "jax_compile_s": statistics.median(compile_s),
            "torch_device": runs["torch"]["device"], "jax_device": runs["jax"]["device"],
            "model_flops_per_step": runs["jax"]["model_flops"],
            "peak_flops": runs["jax"]["peak_flops"], "steps_per_side": len(times["jax"])}
  result["speedup"] = result["torch_step_s"] / result["jax_step_s"]
  peak = result["peak_flops"]
  mfu = {side: result["model_flops_per_step"] / result[f"{side}_step_s"] / peak
         for side in ("torch", "jax")} if peak else {}
  result.update({f"{side}_mfu": v for side, v in mfu.items()})
  print(f"S1 training step (AdamW update included), D={m.dim} L={m.n_layers} H={m.n_heads} "
        f"S={S} B={B} V={m.vocab_size}, {m.ebt_type}, {c.thinking.num_steps} thinking steps")
  for side, label, how in (("torch", "official PyTorch", "float32"
                            + (', matmul precision "medium"' if spec else "")),
                           ("jax", "ebt_jax", f"{m.dtype}; compile {result['jax_compile_s']:.1f} s")):
    step_s = result[f"{side}_step_s"]
    print(f"  {label + ':':<17} {step_s * 1e3:8.0f} ms/step ({B * S / step_s:,.0f} tokens/s"
          + (f", MFU {100 * mfu[side]:.1f}%" if mfu else "")
          + f") on {result[f'{side}_device']}, {how}")
  if mfu:
    print(f"  MFU: {result['model_flops_per_step']:.3g} model FLOPs per step (task.flops) over "
          f"the device's {peak / 1e12:.0f} TFLOP/s {m.dtype} peak, for both sides")
  if result["torch_device"].lower() not in result["jax_device"].lower() and \
      result["jax_device"].lower() not in result["torch_device"].lower():
    print(f"  warning: the sides ran on different devices ({result['torch_device']} and "
          f"{result['jax_device']})")
  print(f"  ebt_jax speed / official speed: {result['speedup']:.2f}x (medians of "
        f"{result['steps_per_side']} steps per side, {rounds} alternating process pairs)")
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--official-repo", required=True)
  parser.add_argument("--parity", action="store_true")
  parser.add_argument("--bench", action="store_true")
  parser.add_argument("--repeats", type=int, default=5, help="timed steps per process")
  parser.add_argument("--rounds", type=int, default=3, help="process pairs for --bench")
  parser.add_argument("--config", help="--bench: time this text EBT config (FILE[:ARG] or a "
                      "bundled name, e.g. ebt_s1:small) instead of the CPU reference step")
  parser.add_argument("--batch", type=int, help=f"--bench: rows per step (default "
                      f"{REFERENCE_BATCH} for the reference step, {RECIPE_BATCH} with --config)")
  parser.add_argument("--json", help="--bench: also write the figures to this JSON file")
  parser.add_argument("--time-side", choices=("torch", "jax"), help=argparse.SUPPRESS)
  args, overrides = parser.parse_known_args(argv)
  if overrides and not (args.bench or args.time_side):
    parser.error(f"unrecognized arguments: {' '.join(overrides)} (--config.FIELD=VALUE "
                 "overrides go with --bench)")
  if args.time_side:
    print(json.dumps(_time_one_side(args.official_repo, args.time_side, args.repeats,
                                    args.config, args.batch, tuple(overrides))))
    return 0
  if args.bench:
    try:
      result = bench(args.official_repo, args.repeats, args.rounds, args.config, args.batch,
                     tuple(overrides))
    except ConfigError as e:
      parser.exit(2, f"error: {e}\n")
    if args.json:
      atomic.write_json(args.json, result)
      print(f"Wrote {args.json}")
  if args.parity or not args.bench:
    worst = parity(args.official_repo)
    return 0 if worst < 1e-8 else 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
