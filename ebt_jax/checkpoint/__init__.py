"""Checkpoints: the official PyTorch weight import/export (and, with training, Orbax)."""

from ebt_jax.checkpoint.official import export_official, import_official

__all__ = ["export_official", "import_official"]
