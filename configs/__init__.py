"""Experiment configs (config-as-code): each file defines `get_config()`; installed as `ebt_jax.configs`."""
