"""Developer tools: `ebt bench` (speed against the naive way) and the side-by-side run against
the official PyTorch code (`python -m ebt_jax.tools.official_side_by_side`)."""
