"""The library side of inference: System 2 thinking (system2.py) and KV-cached generation
(generate.py). The commands that report on them are in ebt_jax/commands/."""
