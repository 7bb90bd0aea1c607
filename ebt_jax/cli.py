"""The `ebt` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="ebt", description="Energy-Based Transformers in JAX.")
  parser.add_argument("--version", action="store_true", help="print the version and exit")
  args = parser.parse_args(argv)
  if args.version:
    import ebt_jax
    print(ebt_jax.__version__)
  return 0


if __name__ == "__main__":
  sys.exit(main())
