"""Developer tools: `ebt bench` (speed against the naive way; `--profile` for the device's
time by kernel, `kernel_profile`), `ebt compile-report --topology` and `ebt plan` (TPU
slices compiled from any host), and the side-by-side run against the official PyTorch code
(`python -m ebt_jax.tools.official_side_by_side`)."""
