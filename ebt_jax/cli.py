"""The `ebt` command line: train | eval | think | generate | bench | sweep-inner | prepare |
import-torch | export-torch | compile-report | scale | plot.

Configs are Python files defining `get_config()` (a path, or the name of a file in
`configs/`, e.g. `--config tiny_cpu`), with a variant after a colon where the file has
several (`--config denoise:paper`, `--config configs/denoise.py:paper`); any field can
be overridden with `--config.section.field=value`. Errors in configs or inputs print one
line naming the field or file and exit with status 2.
"""

from __future__ import annotations

import argparse
import ast
import importlib.resources
import importlib.util
import json
import sys
from pathlib import Path

import ml_collections

from ebt_jax import atomic
from ebt_jax.errors import ConfigError, check

DEFAULT_CONFIG = "default"
DEFAULT_NEW_TOKENS = 64    # `ebt generate`'s most new tokens by default (fewer if the context ends)
# The commands that run XLA programs step after step: they start again with huge pages for
# XLA:CPU's per-step buffers (ebt_jax/hugepages.py).
STEP_COMMANDS = ("train", "eval", "think", "generate", "sweep-inner", "bench", "scale")


def load_config_file(spec: str, flag: str = "--config") -> tuple[ml_collections.ConfigDict, str]:
  """(config, name) from `FILE[:ARG]`, FILE a path or the name of a bundled config.

  A bundled config is a file of the repository's `configs/` (installed as
  `ebt_jax.configs`): `denoise` or `denoise.py`. With `:ARG` (`configs/denoise.py:paper`,
  `denoise:paper`) the file's `get_config(ARG)` gives the config, else `get_config()` (its
  default variant). A path that exists as written is taken whole, colon included. The
  name, for the default run directory, is the file's stem joined to ARG by `_`
  (`denoise:paper` -> `denoise_paper`).
  """
  import inspect
  import re
  file, arg = spec, None
  if not Path(spec).exists() and ":" in spec:
    file, arg = spec.split(":", 1)
  arg = arg or None
  bundled_dir = _bundled_dir()
  path = Path(file)
  if not path.exists():
    bundled = bundled_dir / f"{file.removesuffix('.py')}.py"
    if not bundled.is_file():
      raise ConfigError(f"{flag}: no file {file!r} and no bundled config of that name "
                        f"(bundled: {', '.join(bundled_config_names())})")
    path = Path(str(bundled))
  module_spec = importlib.util.spec_from_file_location(f"ebt_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:
    raise ConfigError(f"{flag}: {path} failed to load ({_one_line(e)})") from None
  get_config = getattr(module, "get_config", None)
  if get_config is None:
    raise ConfigError(f"{flag}: {path} defines no get_config()")
  if arg is not None and not inspect.signature(get_config).parameters:
    raise ConfigError(f"{flag} {spec}: {path.name} has no variants (its get_config() "
                      "takes no argument)")
  try:
    config = get_config() if arg is None else get_config(arg)
  except ConfigError as e:
    raise ConfigError(f"{flag} {spec}: {e}") from None
  except Exception as e:
    raise ConfigError(f"{flag} {spec}: get_config() failed ({_one_line(e)})") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{flag} {spec}: get_config() returned a {type(config).__name__}, "
                      "expected an ml_collections.ConfigDict (start from "
                      "ebt_jax.config.base_config())")
  name = path.stem if arg is None else f"{path.stem}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', arg)}"
  return config, name


def load_run_config(spec: str) -> tuple[ml_collections.ConfigDict, str]:
  """`load_config_file` for the commands that build a model (train, bench, prepare, ...):
  a one-line error for a config of another kind (a scaling study, configs/scale.py)."""
  from ebt_jax.config import base_config
  config, name = load_config_file(spec)
  if missing := [k for k in base_config() if k not in config]:
    raise ConfigError(f"--config {spec}: not a run config (no {', '.join(missing)}); expected "
                      "one built on ebt_jax.config.base_config(), e.g. default or ebt_s1:xxs")
  return config, name


def _bundled_dir():
  """The folder of the bundled configs (`configs/`, installed as `ebt_jax.configs`)."""
  try:
    return importlib.resources.files("ebt_jax.configs")
  except ModuleNotFoundError:  # a checkout that is not installed: register its configs/ so
    folder = Path(__file__).parent.parent / "configs"  # config files can import shared parts
    package_spec = importlib.util.spec_from_file_location(
        "ebt_jax.configs", folder / "__init__.py", submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(package_spec)
    sys.modules["ebt_jax.configs"] = sys.modules["ebt_jax"].configs = package
    package_spec.loader.exec_module(package)
    return folder


def bundled_config_names() -> list[str]:
  """Names of the bundled configs, for `--config NAME` (sorted)."""
  return sorted(p.name.removesuffix(".py") for p in _bundled_dir().iterdir()
                if p.name.endswith(".py") and not p.name.startswith("_"))


def _one_line(e: BaseException) -> str:
  """`Type: message` of an exception, its message cut to its first line."""
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _parse_sequence(raw: str, target):
  """A tuple/list field's value: a Python literal (`('a', 'b')`, `(1, 2)`, `[1]`), or a
  comma-separated list (`a,b` -> ('a', 'b'); items that parse as numbers become ints or
  floats; one item without a comma gives a one-element tuple; an empty value, ())."""
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = None
    if raw.strip()[:1] in "([{" and raw.strip():
      raise ValueError("expected a Python literal like ('a', 'b') or a comma-separated "
                       "list like a,b") from None
  else:
    if isinstance(value, (tuple, list)):
      return target(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
      return target([value])
    raise ValueError(f"expected a sequence, got a {type(value).__name__}")

  from ebt_jax.config import parse_scalar
  return target(parse_scalar(v.strip()) for v in raw.split(",") if v.strip())


def _parse_value(raw: str, current, field_type):
  target = field_type if field_type is not None else type(current)
  if raw.lower() in ("none", "null") and target is not str:
    return None
  if target is bool:
    if raw.lower() in ("true", "1", "yes"):
      return True
    if raw.lower() in ("false", "0", "no"):
      return False
    raise ValueError("expected true or false")
  if target in (int, float):
    return target(raw)
  if target in (tuple, list):
    return _parse_sequence(raw, target)
  if target is dict:
    try:
      return dict(ast.literal_eval(raw))
    except (ValueError, TypeError, SyntaxError):
      raise ValueError("expected a Python dict literal like {'a': 1}") from None
  return raw


def split_overrides(overrides: list[str], flags=("--config",)) -> list[tuple[str, str, str]]:
  """(flag, field, value) of each `FLAG.a.b=value` or `FLAG.a.b value` argument, in order
  (`ebt scale` takes two: --grid.* for its study, --config.* for the run configs)."""
  out, i = [], 0
  while i < len(overrides):
    arg = overrides[i]
    flag = next((f for f in flags if arg.startswith(f"{f}.")), None)
    if flag is None:
      raise ConfigError(f"{arg}: unexpected argument (overrides look like "
                        f"{' or '.join(f + '.model.dim=64' for f in flags)})")
    if "=" in arg:
      name, raw = arg[len(flag) + 1:].split("=", 1)
    elif i + 1 < len(overrides):
      name, raw = arg[len(flag) + 1:], overrides[i + 1]
      i += 1
    else:
      raise ConfigError(f"{arg}: missing a value")
    out.append((flag, name, raw))
    i += 1
  return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str],
                    flag: str = "--config") -> None:
  """Applies `--config.a.b=value` (or `--config.a.b value`) overrides in order (`flag`:
  the prefix they take).

  Values are read by the field's type: `true`/`false` (also 1/0, yes/no) for booleans,
  Python literals or comma-separated lists for tuples (`--config.data.ood_suites=a,b`,
  `--config.inference.ddim_steps=(1, 5)`), `none`/`null` for None in any non-string field.

  Hand-written rather than `ml_collections.config_flags` (checked with ml_collections
  1.1), which cannot do what this must:
  * override a config that comes from no file: `ebt eval/think/generate/sweep-inner`
    change the `inference` fields of a run's saved config (config_flags wants a file
    flag, or a separate DEFINE_config_dict flag per config);
  * take the space-separated form for booleans: with absl's boolean flags,
    `--config.thinking.detach false` leaves `false` as a stray argument and the field
    silently keeps its value;
  * set a placeholder field (`optimizer.decay_steps`, `model.ffn_dim_multiplier`) back to
    None: its int and float parsers reject `none`;
  * find bundled configs by name (`--config denoise:cpu`): it opens paths only;
  * fail in one line naming the field: a misspelt field comes out as a bare
    AttributeError/KeyError with a multi-line "Did you mean" text, a missing file as an
    OSError deferred to the config's first use, a get_config() error with its traceback
    inside the message; and it reads the overrides out of an argv list by regex, so
    leftover arguments that are not overrides pass unreported.
  """
  for _, name, raw in split_overrides(overrides, (flag,)):
    *parents, leaf = name.split(".")
    node = config
    for p in parents:
      if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
        raise ConfigError(f"{flag}.{name}: the config has no section {p!r}")
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"{flag}.{name}: the config has no such field")
    try:
      node[leaf] = _parse_value(raw, node[leaf], node.get_type(leaf))
    except (ValueError, TypeError, SyntaxError) as e:
      raise ConfigError(f"{flag}.{name}: cannot use {raw!r} ({e})") from None


def _cmd_train(args, overrides):
  from ebt_jax.parallel import distributed
  from ebt_jax.training import trainer
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  config, name = load_run_config(args.config)
  apply_overrides(config, overrides)
  workdir = args.workdir or str(Path("runs") / name)
  trainer.train(config, workdir, progress=not args.no_progress, overwrite=args.overwrite)


def _int_list(flag: str, raw: str | None) -> list[int] | None:
  if raw is None:
    return None
  try:
    values = [int(v) for v in raw.split(",") if v.strip()]
  except ValueError:
    values = []
  if not values or min(values) < 1:
    raise ConfigError(f"{flag}: expected comma-separated positive integers, got {raw!r}")
  return values


def _float_list(flag: str, raw: str | None) -> list[float]:
  if raw is None:
    return []
  try:
    values = [float(v) for v in raw.split(",") if v.strip()]
  except ValueError:
    values = [-1.0]
  if not values or min(values) < 0:
    raise ConfigError(f"{flag}: expected comma-separated numbers >= 0, got {raw!r}")
  return values


# Flags of the commands that think (eval, think, generate) and the inference field each sets.
INFERENCE_FLAGS = {
    "select": ("--select", dict(choices=("min", "max", "max_gap"),
                                help="best-of-N choice per position (default: the config's)")),
    "initial_noise_scale": ("--initial-noise-scale", dict(type=float,
                                                          help="std of the initial candidates")),
    "step_size": ("--step-size", dict(type=float, help="replace alpha with this step size")),
    "step_size_scale": ("--step-size-scale", dict(type=float, help="multiply alpha")),
    "langevin_noise": ("--langevin-noise", dict(type=float, help="noise std before each step "
                                                "(-1: the trained one, 0: none)")),
    "langevin_first_step_only": ("--langevin-first-step-only", dict(
        action="store_true", default=None, help="noise before the first step only")),
    "accept_lower": ("--accept-lower", dict(action="store_true", default=None,
                                           help="keep a step only where it lowers the energy")),
    "stop_on": ("--stop-on", dict(choices=("none", "energy", "grad_norm"),
                                  help="adaptive stopping rule per position")),
    "stop_threshold": ("--stop-threshold", dict(type=float,
                                                help="stop a position below this change/norm")),
    "step_count": ("--step-count", dict(choices=("per_landscape", "final_landscape", "total"),
                                        help="text EBTs: how thinking steps N count: N on "
                                        "every landscape (official default), one on each "
                                        "earlier and N on the final one, or N in all")),
}


def _add_inference_flags(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group("thinking at inference (override the run's config.inference; "
                           "--config.inference.FIELD=VALUE works too)")
  for field, (flag, kwargs) in INFERENCE_FLAGS.items():
    g.add_argument(flag, dest=f"inference_{field}", **kwargs)


def _inference_overrides(args, overrides: list[str]):
  """config -> None editing `config.inference` from flags and --config.inference.* overrides."""
  for arg in overrides:
    if arg.startswith("--config.") and not arg.startswith("--config.inference."):
      raise ConfigError(f"{arg.split('=')[0]}: only --config.inference.* can change a trained run")

  def apply(config):
    apply_overrides(config, overrides)
    for field in INFERENCE_FLAGS:
      value = getattr(args, f"inference_{field}")
      if value is not None:
        config.inference[field] = value

  return apply


def _cmd_eval(args, overrides):
  from ebt_jax import tasks
  from ebt_jax.training import runs
  if not tasks.build(runs.load_config(args.workdir)).thinks_over_tokens:
    return _eval_continuous(args, overrides)
  if args.ddim_steps is not None:
    raise ConfigError("--ddim-steps: only for image runs (a DiT, or an image EBT's --baseline)")
  if args.noise_levels is not None:
    raise ConfigError("--noise-levels: only for image runs (an image EBT or a DiT)")
  if args.downstream:
    return _eval_downstream(args, overrides)
  from ebt_jax.commands import evaluation
  report = evaluation.evaluate_system2(
      args.workdir, thinking_steps=_int_list("--thinking-steps", args.thinking_steps),
      best_of=_int_list("--best-of", args.best_of) or [1], baseline=args.baseline,
      stop_thresholds=_float_list("--stop-thresholds", args.stop_thresholds),
      num_batches=args.batches, batch_size=args.batch_size,
      overrides=_inference_overrides(args, overrides))
  print(report.table())
  results = report.as_json()
  config = runs.load_config(args.workdir)
  _inference_overrides(args, overrides)(config)   # the table's step counting and default N
  if config.data.ood_suites:
    from ebt_jax.commands import shift
    gain = shift.gain_report(report, config)
    results["system2_gain"] = gain.as_json()
    print(gain.table())
    plot = gain.plot(Path(args.workdir) / "plots" / "shift_gain.png")
    if plot:
      print(f"Wrote {plot}")
  if args.json:
    atomic.write_json(args.json, results)
    print(f"Wrote {args.json}")


def _eval_downstream(args, overrides):
  """`ebt eval --downstream TASK=PATH,...` of a text EBT run (commands/downstream.py)."""
  from ebt_jax.commands import downstream
  from ebt_jax.data.downstream import parse_spec
  for flag, value in (("--stop-thresholds", args.stop_thresholds), ("--batches", args.batches)):
    if value is not None:
      raise ConfigError(f"{flag}: not with --downstream (it scores every example of each file)")
  report = downstream.evaluate_downstream(
      args.workdir, parse_spec(args.downstream),
      thinking_steps=_int_list("--thinking-steps", args.thinking_steps),
      best_of=_int_list("--best-of", args.best_of) or [1], baseline=args.baseline,
      batch_size=args.batch_size, limit=args.downstream_limit,
      max_new_tokens=args.downstream_new_tokens, overrides=_inference_overrides(args, overrides))
  print(report.table())
  if args.json:
    atomic.write_json(args.json, report.as_json())
    print(f"Wrote {args.json}")


def _eval_continuous(args, overrides):
  """`ebt eval` of an image EBT, DiT or latent EBT run (commands/image_eval.py)."""
  from ebt_jax.commands import image_eval
  for flag, value in (("--best-of", args.best_of), ("--stop-thresholds", args.stop_thresholds),
                      ("--downstream", args.downstream)):
    if value is not None:
      raise ConfigError(f"{flag}: only for text EBT runs")
  report = image_eval.evaluate_workdir(
      args.workdir, thinking_steps=_int_list("--thinking-steps", args.thinking_steps),
      ddim_steps=_int_list("--ddim-steps", args.ddim_steps), baseline=args.baseline,
      noise_levels=_float_list("--noise-levels", args.noise_levels) or None,
      num_batches=args.batches, batch_size=args.batch_size,
      overrides=_inference_overrides(args, overrides))
  print(report.table())
  results = report.as_json()
  if report.model == "image_ebt":
    from ebt_jax.commands import shift
    from ebt_jax.training import runs
    config = runs.load_config(args.workdir)
    _inference_overrides(args, overrides)(config)
    gain = shift.image_gain_report(report, config)
    results["system2_gain"] = gain.as_json()
    print(gain.table())
    print(f"Wrote {gain.plot(Path(args.workdir) / 'plots' / 'shift_gain.png')}")
  if args.json:
    atomic.write_json(args.json, results)
    print(f"Wrote {args.json}")


def _cmd_think(args, overrides):
  from ebt_jax.commands import uncertainty
  report = uncertainty.think_about_text(args.workdir, args.text, seed=args.seed,
                                        overrides=_inference_overrides(args, overrides))
  print(report.table())
  out = args.out or str(Path(args.workdir) / "plots" / "think.png")
  print(f"Wrote {report.heatmap(out)}")


def _cmd_generate(args, overrides):
  import jax
  import numpy as np
  from ebt_jax.data.tokenizers import make_tokenizer
  from ebt_jax.inference import generate
  from ebt_jax.training import runs
  task, _, params = runs.restore_ebt(args.workdir, _inference_overrides(args, overrides))
  config = task.config
  tokenizer = make_tokenizer(config.data)
  prompt = np.asarray(tokenizer.encode(args.prompt), np.int32)
  check(len(prompt) >= 1, "--prompt", "at least one token", args.prompt)
  context, max_new = config.model.context_length, args.max_new_tokens
  if max_new is None:   # by default, what fits the trained context after the prompt
    if len(prompt) >= context:
      raise ConfigError(f"--prompt: its {len(prompt)} tokens fill the trained context of "
                        f"{context}; shorten it, or pass --max-new-tokens to generate past "
                        "the context anyway")
    max_new = min(DEFAULT_NEW_TOKENS, context - len(prompt))
  elif len(prompt) + max_new > context:
    print(f"note: {len(prompt)} prompt + {max_new} new tokens exceed the trained "
          f"context of {context}", file=sys.stderr)
  sampling = generate.Sampling(max_new, args.temperature, args.top_p)
  prompts = np.repeat(prompt[None], args.num_samples, axis=0)
  out = jax.device_get(generate.generate(params, prompts, task, jax.random.key(args.seed),
                                         sampling))
  for i, row in enumerate(out.tokens):
    if args.num_samples > 1:
      print(f"--- sample {i + 1}")
    print(escape_control(tokenizer.decode(row.tolist())))
  if args.show_energies:
    print("per generated token of sample 1: final energy / energy drop / steps")
    for t, token in enumerate(out.tokens[0, len(prompt):]):
      text = tokenizer.decode([int(token)]).encode("unicode_escape").decode("ascii")
      print(f"  {text:<8}{out.final_energy[0, t]:>10.4g}{out.energy_drop[0, t]:>10.4g}"
            f"{int(out.steps_used[0, t]):>6}")


def escape_control(text: str) -> str:
  """`text` with every non-printable character escaped (`\\x07`, `\\r`, `\\u200b`) except
  newlines and tabs, so generated control bytes cannot act on the terminal."""
  return "".join(c if c.isprintable() or c in "\n\t"
                 else c.encode("unicode_escape").decode("ascii") for c in text)


def _cmd_sweep_inner(args, overrides):
  from ebt_jax.commands import sweep
  specs = args.optimizers or sweep.DEFAULT_SWEEP
  report = sweep.sweep_inner(args.workdir, _int_list("--steps", args.steps), specs,
                             num_batches=args.batches, batch_size=args.batch_size,
                             overrides=_inference_overrides(args, overrides))
  print(report.table())
  if args.json:
    atomic.write_json(args.json, report.as_json())
    print(f"Wrote {args.json}")
  print(f"Wrote {report.plot(args.plot or Path(args.workdir) / 'plots' / 'sweep_inner.png')}")


def _cmd_bench(args, overrides):
  from ebt_jax.tools import bench
  if args.profile is not None:
    check(Path(args.profile).is_dir() or not Path(args.profile).exists(), "--profile",
          "a directory for the trace", f"the file {args.profile}")
  config, _ = load_run_config(args.config)
  apply_overrides(config, overrides)
  result = bench.run_bench(config, repeats=args.repeats, batch_size=args.batch_size,
                           prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                           think_steps=args.think_steps, profile_dir=args.profile)
  print(bench.table(result))
  if args.json:
    atomic.write_json(args.json, result)
    print(f"Wrote {args.json}")


def _cmd_prepare(args, overrides):
  from ebt_jax.data.prepare import prepare_shards
  config, _ = load_run_config(args.config)
  apply_overrides(config, overrides)
  meta = prepare_shards(config, args.out)
  print(json.dumps(meta, indent=2))
  print(f"Train on it with: --config.data.source=shards --config.data.path={args.out}")


def _cmd_import_torch(args, overrides):
  from ebt_jax.checkpoint.torch_file import TorchFileError
  from ebt_jax.training import runs
  config, hparams, gpus = None, None, 1
  if args.config and args.job_script:
    raise ConfigError("--config, --job-script: give one of them (or neither, for a .ckpt)")
  if args.config:
    config, _ = load_run_config(args.config)
    apply_overrides(config, overrides)
  if args.job_script:
    from ebt_jax import official_hparams
    hparams, gpus = official_hparams.parse_job_script(_read_text("--job-script", args.job_script))
  try:
    out = runs.import_torch_checkpoint(args.checkpoint, args.out, config, hparams=hparams,
                                       num_devices=gpus or 1, log=print)
  except (ConfigError, TorchFileError) as e:
    if str(args.checkpoint) in str(e):
      raise
    raise type(e)(f"{args.checkpoint}: {e}") from None
  print(f"Imported {args.checkpoint} into {out}; evaluate with: ebt eval --workdir {out}")


def _read_text(flag: str, path) -> str:
  try:
    return Path(path).read_text()
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f"{flag}: cannot read {path} ({type(e).__name__})") from None


def _cmd_export_torch(args, overrides):
  from ebt_jax.training import runs
  out, step = runs.export_torch_checkpoint(args.workdir, args.out)
  print(f"Wrote {out}: step {step} of {args.workdir} as an official Lightning checkpoint "
        f"(state_dict + hyper_parameters)")


def _cmd_compile_report(args, overrides):
  if args.topology is None:
    for flag, value in (("--num-slices", args.num_slices), ("--program", args.program),
                        ("--hbm-gib", args.hbm_gib), ("--json", args.json),
                        ("--no-unrolled-cost", args.no_unrolled_cost or None),
                        ("--extrapolate-layers", args.extrapolate_layers or None)):
      if value is not None:
        raise ConfigError(f"{flag}: only with --topology")
    from ebt_jax.training import memory
    config, _ = load_run_config(args.config)
    apply_overrides(config, overrides)
    print(memory.compile_report(config).table())
    return
  from ebt_jax.tools import compile_report
  topology, config = _topology_and_config(args, overrides)
  report = compile_report.compile_report(config, topology, program=args.program or "train",
                                         hbm_bytes=_hbm_bytes(args),
                                         unrolled_cost=not args.no_unrolled_cost,
                                         extrapolate_layers=args.extrapolate_layers,
                                         log=lambda line: print(line, file=sys.stderr))
  _print_and_write(report.table(), report.to_json(), args.json)


def _cmd_plan(args, overrides):
  from ebt_jax.tools import plan
  topology, config = _topology_and_config(args, overrides)
  remats = plan.REMAT_CHOICES if args.remat is None else tuple(args.remat.split(","))
  tensors = None
  if args.tensor is not None:
    try:
      tensors = tuple(int(t) for t in args.tensor.split(","))
    except ValueError:
      raise ConfigError(f"--tensor: expected comma-separated tensor sizes, e.g. 1,2, got "
                        f"{args.tensor!r}") from None
  if args.no_unrolled_cost and args.unrolled_top:
    raise ConfigError("--unrolled-top: not with --no-unrolled-cost (which means 0)")
  top = 0 if args.no_unrolled_cost else 3 if args.unrolled_top is None else args.unrolled_top
  if args.extrapolate_layers and not top:
    raise ConfigError("--extrapolate-layers: needs unrolled compiles (--unrolled-top > 0)")
  if args.no_settle and not args.extrapolate_layers:
    raise ConfigError("--no-settle: only with --extrapolate-layers (nothing else is settled)")
  previous, progress = None, None
  if args.resume:
    if args.json in (None, "-"):
      raise ConfigError("--resume: needs --json FILE (the file to resume from and write)")
    if Path(args.json).exists():
      try:
        previous = json.loads(_read_text("--resume", args.json))
      except json.JSONDecodeError as e:
        raise ConfigError(f"--resume: {args.json} is not JSON ({e})") from None
  if args.json not in (None, "-"):
    # The partial plan after every compile: a killed search loses only the compiles in flight.
    progress = lambda partial: atomic.write_json(args.json, partial.to_json())
  result = plan.plan(config, topology, global_batch=args.global_batch,
                     time_budget_s=args.time_budget, remats=remats, hbm_bytes=_hbm_bytes(args),
                     unrolled_top=top, extrapolate_layers=args.extrapolate_layers,
                     settle=not args.no_settle, jobs=args.jobs, previous=previous,
                     progress=progress, tensors=tensors,
                     log=lambda line: print(line, file=sys.stderr))
  _print_and_write(result.table(), result.to_json(), args.json)


def _topology_and_config(args, overrides):
  """The --topology (its environment set before JAX starts a backend) and the config."""
  from ebt_jax.parallel import topology
  parsed = topology.parse(args.topology, args.num_slices or 1)
  topology.prepare_environment(parsed)
  config, _ = load_run_config(args.config)
  apply_overrides(config, overrides)
  return parsed, config


def _hbm_bytes(args) -> int | None:
  if args.hbm_gib is None:
    return None
  check(args.hbm_gib > 0, "--hbm-gib", "a number of GiB > 0", args.hbm_gib)
  return int(args.hbm_gib * 2**30)


def _print_and_write(table: str, as_json: dict, path: str | None) -> None:
  """The table, and with --json FILE the figures as JSON (FILE `-`: the JSON instead)."""
  if path == "-":
    print(json.dumps(as_json, indent=2))
    return
  print(table)
  if path:
    atomic.write_json(path, as_json)
    print(f"Wrote {path}")


def _cmd_scale(args, overrides):
  from ebt_jax.commands import scale
  # A bare name is a variant of configs/scale.py; FILE.py[:ARG] (or NAME:ARG) a study file.
  grid = args.grid if ":" in args.grid or args.grid.endswith(".py") else f"scale:{args.grid}"
  study, _ = load_config_file(grid, flag="--grid")
  split = split_overrides(overrides, ("--grid", "--config"))
  if any(f == "--grid" and n == "base" for f, n, _ in split):
    raise ConfigError("--grid.base: give the base run config as --config")
  apply_overrides(study, [f"{f}.{n}={v}" for f, n, v in split if f == "--grid"], "--grid")
  scale.check_study(study)
  # --config.* goes into every point after the grid's settings (its models and axes still
  # set their own fields), so the printed `ebt train` commands carry it too.
  study.settings = tuple(study.settings) + tuple(f"{n}={v}" for f, n, v in split
                                                 if f == "--config")
  study.base = args.config or study.base

  def make_config(point_overrides):
    config, _ = load_run_config(study.base)
    apply_overrides(config, point_overrides)
    return config

  if args.print_commands:
    for point in scale.plan(study, args.workdir, make_config):
      if not scale.is_finished(point):
        print(scale.train_command(study, point))
    return
  report = scale.run_study(study, args.workdir, make_config, train=not args.aggregate_only)
  print(report.table())
  for path in scale.write_outputs(report, args.workdir, args.json):
    print(f"Wrote {path}")


def _cmd_plot(args, overrides):
  from ebt_jax.training import plots
  for path in plots.plot_workdir(args.workdir):
    print(f"Wrote {path}")


def config_epilog() -> str:
  """The `--help` text of the commands that take `--config`: the spec forms, the bundled
  names and the override syntax."""
  return (
      "--config takes a config file (a .py defining get_config()) or the name of a bundled\n"
      f"config: {', '.join(bundled_config_names())}.\n"
      "A file with variants takes one after a colon, NAME:VARIANT or PATH:VARIANT\n"
      "(--config denoise:paper, --config configs/ebt_s1.py:small).\n\n"
      "Any config field can be overridden, in order, with --config.SECTION.FIELD=VALUE (or\n"
      "--config.SECTION.FIELD VALUE), e.g.\n"
      "  --config.model.dim=64 --config.train.num_steps=100 --config.thinking.detach=false\n"
      "  --config.data.ood_suites=dyck_depth_8,arithmetic_digits_5   (tuples: a,b or ('a', 'b'))\n"
      "  --config.optimizer.decay_steps=none                         (None)\n"
      "Fields and defaults: ebt_jax/config.py.")


INFERENCE_EPILOG = (
    "A trained run's config changes only in its inference section: the flags above, or\n"
    "--config.inference.FIELD=VALUE (e.g. --config.inference.thinking_steps=4); see\n"
    "config.inference in ebt_jax/config.py.")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="ebt", description="Energy-Based Transformers in JAX.")
  parser.add_argument("--version", action="version", version=_version())
  sub = parser.add_subparsers(dest="command", required=True)
  epilog = config_epilog()
  with_config = dict(epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
  thinking = dict(epilog=INFERENCE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  config_help = (f"config file or bundled name, NAME:VARIANT for a variant (default: the "
                 f"bundled {DEFAULT_CONFIG!r}; the names and the override syntax are below)")

  p = sub.add_parser("train", help="train (or resume) a model; --config.a.b=value overrides",
                     **with_config)
  p.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
  p.add_argument("--workdir", help="run directory (default runs/<config name>)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--overwrite", action="store_true", help="start afresh (step 0) even where "
                 "--workdir holds an earlier run; its files move into WORKDIR/previous-<time>/")
  p.add_argument("--coordinator", help="host:port of process 0, for multi-process runs not "
                 "started by SLURM or on TPU VMs (those are detected)")
  p.add_argument("--num-processes", type=int, help="with --coordinator")
  p.add_argument("--process-id", type=int, help="with --coordinator")
  p.set_defaults(fn=_cmd_train)

  p = sub.add_parser("eval", help="System 2 table of a run's latest checkpoint: perplexity per "
                     "dataset for every (thinking steps, best-of-N) cell; for image runs PSNR "
                     "per thinking step (EBT) or DDIM step count (DiT) and a PNG", **thinking)
  p.add_argument("--workdir", required=True)
  p.add_argument("--thinking-steps", help="comma-separated step counts N, e.g. 1,2,4,8, "
                 "counted as --step-count says (default 1..inference.thinking_steps)")
  p.add_argument("--best-of", help="comma-separated candidate counts, e.g. 1,4,16 (default 1)")
  p.add_argument("--baseline", help="a Transformer++ run directory to put beside the table "
                 "(an image EBT: a DiT run directory)")
  p.add_argument("--noise-levels", help="image runs: comma-separated noise levels to evaluate "
                 "at, e.g. 0.1,0.2,0.3 (default denoise.noise_level and ood_noise_level; the "
                 "training level is always evaluated, as validation)")
  p.add_argument("--ddim-steps", help="DiT: comma-separated DDIM step counts (network "
                 "evaluations), e.g. 1,5,100 (default inference.ddim_steps, else every timestep)")
  p.add_argument("--stop-thresholds", help="comma-separated thresholds: also report adaptive "
                 "per-token stopping (rule --stop-on, default energy) up to the most steps")
  p.add_argument("--batches", type=int, default=None, help="eval batches per dataset "
                 "(default train.eval_batches)")
  p.add_argument("--batch-size", type=int, default=None, help="sequences per batch "
                 "(default train.batch_size)")
  p.add_argument("--json", help="also write the results to this JSON file")
  p.add_argument("--downstream", help="text EBT: instead of the table, downstream tasks from "
                 "local files, e.g. gsm8k=test.jsonl,arc=ARC-Challenge.parquet (tasks: gsm8k, "
                 "squad, arc, lambada, elementary_math_qa, dyck_languages, matrixshapes)")
  p.add_argument("--downstream-limit", type=int, help="first N examples of each task file")
  p.add_argument("--downstream-new-tokens", type=int, default=32, help="tokens generated per "
                 "answer for exact match / F1 (0: no generation)")
  _add_inference_flags(p)
  p.set_defaults(fn=_cmd_eval)

  p = sub.add_parser("think", help="per-token energies of a text over thinking steps (how sure "
                     "the model is of each prediction) and a heat-map PNG", **thinking)
  p.add_argument("--workdir", required=True)
  p.add_argument("--text", required=True)
  p.add_argument("--out", help="heat-map PNG (default WORKDIR/plots/think.png)")
  p.add_argument("--seed", type=int, default=0, help="seed of the initial candidates")
  _add_inference_flags(p)
  p.set_defaults(fn=_cmd_think)

  p = sub.add_parser("generate", help="generate text with KV-cached thinking per new token",
                     **thinking)
  p.add_argument("--workdir", required=True)
  p.add_argument("--prompt", required=True)
  p.add_argument("--max-new-tokens", type=int, default=None,
                 help=f"tokens to generate (default: {DEFAULT_NEW_TOKENS}, or fewer to stay "
                 "within the trained context after the prompt)")
  p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
  p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
  p.add_argument("--num-samples", type=int, default=1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--show-energies", action="store_true",
                 help="also print each generated token's energy, drop and steps")
  _add_inference_flags(p)
  p.set_defaults(fn=_cmd_generate)

  p = sub.add_parser("sweep-inner", help="perplexity against thinking steps of a trained "
                     "model under every inner optimizer (table, JSON, PNG)", **thinking)
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", default="1,2,4,8", help="comma-separated thinking step counts")
  p.add_argument("--optimizers", nargs="+", help="entries 'name' or 'name:{json kwargs}' "
                 "(default: one of each registered kind)")
  p.add_argument("--batches", type=int, help="validation batches (default train.eval_batches)")
  p.add_argument("--batch-size", type=int, help="sequences per batch (default train.batch_size)")
  p.add_argument("--json", help="also write the results to this JSON file")
  p.add_argument("--plot", help="PNG path (default WORKDIR/plots/sweep_inner.png)")
  _add_inference_flags(p)
  p.set_defaults(fn=_cmd_sweep_inner)

  p = sub.add_parser("bench", help="time a training step, a thinking step and generation "
                     "against the naive way (re-encoding, no KV cache)", **with_config)
  p.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
  p.add_argument("--json", help="also write the figures to this JSON file")
  p.add_argument("--repeats", type=int, default=5, help="timed runs per workload (median)")
  p.add_argument("--batch-size", type=int, help="thinking/generation batch (default "
                 "train.batch_size)")
  p.add_argument("--prompt-len", type=int, help="generation prompt (default context/2)")
  p.add_argument("--new-tokens", type=int, help="tokens generated (default context/2)")
  p.add_argument("--think-steps", type=int, help="thinking steps timed (default "
                 "inference.thinking_steps); the cache pays off past the trained landscapes")
  p.add_argument("--profile", metavar="DIR", help="also trace 2 train steps with "
                 "jax.profiler into DIR and print the device's time by kernel (GPU/TPU)")
  p.set_defaults(fn=_cmd_bench)

  p = sub.add_parser("prepare", help="tokenize a text source into token shards", **with_config)
  p.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
  p.add_argument("--out", required=True, help="output directory for the shards")
  p.set_defaults(fn=_cmd_prepare)

  p = sub.add_parser("import-torch", help="import an official PyTorch checkpoint into a run dir",
                     **with_config)
  p.add_argument("checkpoint", help="a Lightning .ckpt or a .pt state_dict")
  p.add_argument("--config", help="config of the model, a file or bundled name, optionally "
                 "NAME:VARIANT (default: from the .ckpt's hparams)")
  p.add_argument("--job-script", help="for a bare state_dict: the official job script (.sh) "
                 "whose train_model.py flags built it (GPU count from its #SBATCH lines)")
  p.add_argument("--out", required=True, help="run directory to create")
  p.set_defaults(fn=_cmd_import_torch)

  p = sub.add_parser("export-torch", help="write a run's newest checkpoint as an official "
                     "Lightning .ckpt (official names, layouts and flags; no torch needed)")
  p.add_argument("--workdir", required=True, help="run directory")
  p.add_argument("--out", required=True, help="the .ckpt file to write")
  p.set_defaults(fn=_cmd_export_torch)

  p = sub.add_parser("compile-report", help="compile a config's train step for these devices "
                     "(or a TPU slice's, --topology) and print its memory per device, without "
                     "running it", **with_config)
  p.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
  _add_topology_flags(p)
  p.add_argument("--program", choices=("train", "think", "generate"), default=None,
                 help="with --topology: the program compiled (default train)")
  p.set_defaults(fn=_cmd_compile_report)

  p = sub.add_parser("plan", help="compile candidate layouts (mesh x remat) for a TPU slice and "
                     "rank them; prints the overrides selecting the best", **with_config)
  p.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
  _add_topology_flags(p, required=True)
  p.add_argument("--global-batch", type=int, help="sequences per step (default "
                 "train.batch_size)")
  p.add_argument("--time-budget", type=float, default=600.0, help="seconds of compiling; "
                 "layouts past it are listed, not compiled (default 600)")
  p.add_argument("--remat", help="comma-separated model.remat values to try (default "
                 "none,dots,full; more remat only where less does not fit)")
  p.add_argument("--tensor", help="comma-separated mesh.tensor sizes to try (default every "
                 "divisor of the chips that divides the heads), e.g. 1,2 to narrow a search "
                 "at the largest sizes")
  p.add_argument("--jobs", type=int, default=1, help="meshes compiled at once (threads; memory "
                 "grows with it; worth it where one compile leaves cores idle; default 1)")
  p.add_argument("--resume", action="store_true", help="with --json FILE: reuse the layouts "
                 "an earlier run of the same search wrote to FILE (it is written after every "
                 "compile) and compile the rest")
  p.add_argument("--unrolled-top", type=int, default=None, help="the best N layouts by the "
                 "first compile's figures (one scanned layer's), and the most sharded layout "
                 "that fits as a baseline, are compiled again with the layers unrolled and "
                 "ranked on every layer's figures (default 3; --no-unrolled-cost: 0, no "
                 "baseline either)")
  p.add_argument("--no-settle", action="store_true", help="with --extrapolate-layers: rank a "
                 "layout whose extrapolation fails its check by its larger estimate only, "
                 "instead of compiling it with every layer where its smaller estimate beats "
                 "the leader's (for hosts whose memory such a compile exceeds)")
  p.set_defaults(fn=_cmd_plan)

  p = sub.add_parser("scale", help="scaling study of the EBT against the same-size "
                     "Transformer++: train a grid of runs, fit power laws (table, JSON, PNGs)",
                     **with_config)
  p.add_argument("--grid", required=True, help="the study: micro, cpu or paper "
                 "(configs/scale.py), or a study file FILE.py[:ARG]; --grid.FIELD=VALUE "
                 "overrides its fields (--grid.axes=data,params)")
  p.add_argument("--config", help="the base run config of every point, as `ebt train` takes "
                 "it (default: the grid's own, e.g. cpu's default); --config.SECTION.FIELD="
                 "VALUE overrides apply to every point")
  p.add_argument("--workdir", required=True, help="study folder: one run directory per point")
  p.add_argument("--json", help="also write the fits to this JSON file (always: "
                 "WORKDIR/scale.json)")
  p.add_argument("--print-commands", action="store_true", help="print an `ebt train` command "
                 "per unfinished point (for a launcher) and stop")
  p.add_argument("--aggregate-only", action="store_true", help="train nothing: fit the "
                 "finished runs found in WORKDIR")
  p.set_defaults(fn=_cmd_scale)

  p = sub.add_parser("plot", help="PNG plots of a run's curves and thinking")
  p.add_argument("workdir")
  p.set_defaults(fn=_cmd_plot)
  return parser


def _add_topology_flags(p, required: bool = False) -> None:
  p.add_argument("--topology", required=required, help="a TPU slice to compile for without "
                 "TPUs (needs ebt_jax[tpu]): v4:AxBxC, v5e:AxB, v5p:AxBxC, v6e:AxB, e.g. "
                 "v5e:16x16 (v5e-256)")
  p.add_argument("--num-slices", type=int, default=None, help="with --topology: that many "
                 "slices joined by the data-centre network (data parallel across them)")
  p.add_argument("--hbm-gib", type=float, default=None, help="with --topology: HBM per chip "
                 "to fit in (default the chip's: v4 32, v5e 16, v5p 95, v6e 32)")
  p.add_argument("--json", help="with --topology: also write the figures to this JSON file "
                 "(- prints the JSON instead of the table)")
  p.add_argument("--no-unrolled-cost", action="store_true", help="with --topology: take FLOPs, "
                 "step time and collectives from the program as configured (its layer scan "
                 "counted once) instead of compiling it again with the layers unrolled")
  p.add_argument("--extrapolate-layers", action="store_true", help="with --topology: the "
                 "unrolled cost figures from the program with 2 and with 3 layers unrolled, "
                 "extended to the config's depth, and checked against 3 and 4 layers (an "
                 "estimate, 0.2-2.4%% off unrolling every layer in most cases measured, "
                 "-9%% to +16%% on v6e, flagged where the check differs by over 10%%; a "
                 "fraction of the host memory; `ebt plan` compiles a flagged layout with "
                 "every layer where its smaller estimate beats the leader's)")


def _version() -> str:
  from ebt_jax import __version__
  return __version__


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, overrides = parser.parse_known_args(argv)
  if overrides and args.command not in ("train", "prepare", "import-torch", "compile-report",
                                        "eval", "think", "generate", "bench", "sweep-inner", "plan",
                                        "scale"):
    parser.error(f"unrecognized arguments: {' '.join(overrides)}")
  if argv is None and args.command in STEP_COMMANDS:   # a command line, not a caller's list
    from ebt_jax import hugepages
    hugepages.restart_with_huge_pages()
  from ebt_jax.checkpoint.manager import CheckpointError
  from ebt_jax.checkpoint.torch_file import TorchFileError
  from ebt_jax.training.trainer import Preempted, TrainingError
  try:
    args.fn(args, overrides)
  except (ConfigError, TorchFileError) as e:
    print(f"ebt {args.command}: error: {e}", file=sys.stderr)
    return 2
  except Preempted as e:   # a signal stopped training once its last step was checkpointed
    print(f"ebt {args.command}: {e}", file=sys.stderr)
    return e.exit_code
  except (TrainingError, CheckpointError) as e:
    print(f"ebt {args.command}: error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"ebt {args.command}: interrupted", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
