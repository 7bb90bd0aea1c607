"""The `ebt` command line: train | eval | prepare | import-torch | compile-report | plot.

Configs are Python files defining `get_config()` (a path, or the name of a file in
`configs/`, e.g. `--config tiny_cpu`); any field can be overridden with
`--config.section.field=value`. Errors in configs or inputs print one line naming the
field or file and exit with status 2.
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

from ebt_jax.config import ConfigError

DEFAULT_CONFIG = "default"


def load_config_file(spec: str) -> tuple[ml_collections.ConfigDict, str]:
  """(config, name) from a file path or the name of a bundled config."""
  path = Path(spec)
  if not path.exists():
    try:
      bundled = importlib.resources.files("ebt_jax.configs") / f"{spec.removesuffix('.py')}.py"
    except ModuleNotFoundError:  # running from a checkout that is not installed
      bundled = Path(__file__).parent.parent / "configs" / f"{spec.removesuffix('.py')}.py"
    if not bundled.is_file():
      raise ConfigError(f"--config: no file {spec!r} and no bundled config of that name")
    path = Path(str(bundled))
  module_spec = importlib.util.spec_from_file_location(f"ebt_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:
    raise ConfigError(f"--config: {path} failed to load ({type(e).__name__}: {e})") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config: {path} defines no get_config()")
  return module.get_config(), path.stem


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
  if target in (tuple, list, dict):
    return target(ast.literal_eval(raw))
  return raw


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
  """Applies `--config.a.b=value` (or `--config.a.b value`) overrides in order."""
  i = 0
  while i < len(overrides):
    arg = overrides[i]
    if not arg.startswith("--config."):
      raise ConfigError(f"{arg}: unexpected argument (overrides look like --config.model.dim=64)")
    if "=" in arg:
      name, raw = arg[len("--config."):].split("=", 1)
    elif i + 1 < len(overrides):
      name, raw = arg[len("--config."):], overrides[i + 1]
      i += 1
    else:
      raise ConfigError(f"{arg}: missing a value")
    *parents, leaf = name.split(".")
    node = config
    for p in parents:
      if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
        raise ConfigError(f"--config.{name}: the config has no section {p!r}")
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"--config.{name}: the config has no such field")
    try:
      node[leaf] = _parse_value(raw, node[leaf], node.get_type(leaf))
    except (ValueError, TypeError, SyntaxError) as e:
      raise ConfigError(f"--config.{name}: cannot use {raw!r} ({e})") from None
    i += 1


def _cmd_train(args, overrides):
  from ebt_jax.parallel import distributed
  from ebt_jax.training import trainer
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  config, name = load_config_file(args.config)
  apply_overrides(config, overrides)
  workdir = args.workdir or str(Path("runs") / name)
  trainer.train(config, workdir, progress=not args.no_progress)


def _cmd_eval(args, overrides):
  from ebt_jax.training import runs
  report = runs.evaluate_workdir(args.workdir, num_batches=args.batches)
  print(report.table())
  if args.json:
    Path(args.json).write_text(json.dumps(report.as_json(), indent=2))
    print(f"Wrote {args.json}")


def _cmd_prepare(args, overrides):
  from ebt_jax.data.prepare import prepare_shards
  config, _ = load_config_file(args.config)
  apply_overrides(config, overrides)
  meta = prepare_shards(config, args.out)
  print(json.dumps(meta, indent=2))
  print(f"Train on it with: --config.data.source=shards --config.data.path={args.out}")


def _cmd_import_torch(args, overrides):
  from ebt_jax.training import runs
  config = None
  if args.config:
    config, _ = load_config_file(args.config)
    apply_overrides(config, overrides)
  out = runs.import_torch_checkpoint(args.checkpoint, args.out, config)
  print(f"Imported {args.checkpoint} into {out}; evaluate with: ebt eval --workdir {out}")


def _cmd_compile_report(args, overrides):
  from ebt_jax.training import memory
  config, _ = load_config_file(args.config)
  apply_overrides(config, overrides)
  print(memory.compile_report(config).table())


def _cmd_plot(args, overrides):
  from ebt_jax.training import plots
  for path in plots.plot_workdir(args.workdir):
    print(f"Wrote {path}")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="ebt", description="Energy-Based Transformers in JAX.")
  parser.add_argument("--version", action="version", version=_version())
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("train", help="train (or resume) a model; --config.a.b=value overrides")
  p.add_argument("--config", default=DEFAULT_CONFIG, help="config file or bundled name")
  p.add_argument("--workdir", help="run directory (default runs/<config name>)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--coordinator", help="host:port of process 0, for multi-process runs not "
                 "started by SLURM or on TPU VMs (those are detected)")
  p.add_argument("--num-processes", type=int, help="with --coordinator")
  p.add_argument("--process-id", type=int, help="with --coordinator")
  p.set_defaults(fn=_cmd_train)

  p = sub.add_parser("eval", help="evaluate a run's latest checkpoint on validation and OOD sets")
  p.add_argument("--workdir", required=True)
  p.add_argument("--batches", type=int, default=None, help="eval batches per split")
  p.add_argument("--json", help="also write the results to this JSON file")
  p.set_defaults(fn=_cmd_eval)

  p = sub.add_parser("prepare", help="tokenize a text source into token shards")
  p.add_argument("--config", default=DEFAULT_CONFIG)
  p.add_argument("--out", required=True, help="output directory for the shards")
  p.set_defaults(fn=_cmd_prepare)

  p = sub.add_parser("import-torch", help="import an official PyTorch checkpoint into a run dir")
  p.add_argument("checkpoint", help="a Lightning .ckpt or a .pt state_dict")
  p.add_argument("--config", help="config of the model (default: from the .ckpt's hparams)")
  p.add_argument("--out", required=True, help="run directory to create")
  p.set_defaults(fn=_cmd_import_torch)

  p = sub.add_parser("compile-report", help="compile a config's train step for these devices "
                     "and print its memory per device, without running it")
  p.add_argument("--config", default=DEFAULT_CONFIG)
  p.set_defaults(fn=_cmd_compile_report)

  p = sub.add_parser("plot", help="PNG plots of a run's curves and thinking")
  p.add_argument("workdir")
  p.set_defaults(fn=_cmd_plot)
  return parser


def _version() -> str:
  from ebt_jax import __version__
  return __version__


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, overrides = parser.parse_known_args(argv)
  if overrides and args.command not in ("train", "prepare", "import-torch", "compile-report"):
    parser.error(f"unrecognized arguments: {' '.join(overrides)}")
  from ebt_jax.checkpoint.manager import CheckpointError
  from ebt_jax.checkpoint.torch_file import TorchFileError
  from ebt_jax.training.trainer import TrainingError
  try:
    args.fn(args, overrides)
  except (ConfigError, TorchFileError) as e:
    print(f"ebt {args.command}: error: {e}", file=sys.stderr)
    return 2
  except (TrainingError, CheckpointError) as e:
    print(f"ebt {args.command}: error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"ebt {args.command}: interrupted", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
