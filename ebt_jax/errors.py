"""The project's user-facing error type, in a module of its own so that every layer
(parallel/, data/, config.py, the CLI) can raise it without importing the config schema."""

from __future__ import annotations


class ConfigError(ValueError):
  """A config value or input the project cannot use; the message names the field or file."""


def check(ok: bool, field: str, expected: str, got) -> None:
  """Raises `ConfigError` "<field>: expected <expected>, got <got>" unless `ok`."""
  if not ok:
    raise ConfigError(f"{field}: expected {expected}, got {got!r}")
