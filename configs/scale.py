"""Scaling studies for `ebt scale --grid VARIANT` (ebt_jax/commands/scale.py).

A study names its default base run config (`base`, as `ebt train --config` takes it; `ebt
scale --config F` gives another), the settings every point adds to it (`settings`,
"field=value"; `--config.FIELD=VALUE` adds more), the models (`ebt`, and the
same-size Transformer++ of configs/transformer.py, each with the settings that make it),
the axes to run and each axis's values.

* `micro` (tests, seconds): a 16-wide one-layer model, both models along the data axis,
  evaluated every 2 of 8 steps:

      ebt scale --grid micro --workdir runs/scale_micro

* `cpu` (39 minutes on a 2-core VM shared with other jobs, load 16-23): configs/
  default.py's byte-level models on the embedded corpus (the Python standard library's
  source) at context 64 and batch 16: the data axis at width 32 and depth 2 (1200 steps,
  evaluated every 75), and a width/depth ladder of four sizes (400 steps each, evaluated
  every 50, which also gives the FLOPs axis):

      ebt scale --grid cpu --workdir runs/scale_cpu

* `paper` (accelerators): the paper's S1 recipe (configs/ebt_s1.py) along the official size
  ladder 4xs..small, the data axis at xxs, depth 2..12 at width 384 and batch 64..1024. Data
  and tokenizer are files you provide (see configs/ebt_s1.py for `ebt prepare`; `--config.
  data.path=...`, `--config.data.tokenizer=...` point every run at them); print the runs
  for a launcher and aggregate once they are done:

      ebt scale --grid paper --workdir /shared/runs/scale --print-commands
      ebt scale --grid paper --workdir /shared/runs/scale --aggregate-only

Any field but `base` can be overridden: `--grid.axes=data,params`,
`--grid.data_steps=100,200,400`.
"""

import ml_collections

from ebt_jax.configs import choose
from ebt_jax.official_hparams import MODEL_SIZES

VARIANTS = ("micro", "cpu", "paper")


def _settings(**fields) -> tuple:
  """{"section__field": value} -> ("section.field=value", ...) as the CLI parses them."""
  def text(v):
    return str(v).lower() if isinstance(v, bool) else str(v)
  return tuple(f"{k.replace('__', '.')}={text(v)}" for k, v in fields.items())


def get_config(arg=None):
  variant = choose(arg, VARIANTS, default="cpu")
  c = ml_collections.ConfigDict()
  # name -> what makes it; the first's scaling rate is compared with the second's.
  c.models = ml_collections.ConfigDict({
      "ebt": (), "transformer": _settings(model__kind="transformer", model__ebt_type="default")})
  c.depths = ()
  c.batch_sizes = ()
  if variant == "micro":
    c.base = "tiny_cpu"
    c.settings = _settings(
        model__dim=16, model__n_layers=1, model__n_heads=2, model__context_length=16,
        optimizer__warmup_steps=2, optimizer__decay_steps=8, train__batch_size=4,
        train__log_every=1, train__eval_batches=1, train__checkpoint_every=2,
        train__keep_checkpoints=10, train__tensorboard=False)
    c.axes = ("data",)
    c.data_steps = (2, 4, 6, 8)
    c.sizes = ((16, 1, 2), (32, 1, 2))
  elif variant == "cpu":
    c.base = "default"   # its recipe (time_embed, 2 undetached steps), smaller and shorter
    c.settings = _settings(
        model__dim=32, model__n_layers=2, model__n_heads=2, model__context_length=64,
        optimizer__warmup_steps=50, train__batch_size=16,
        train__num_steps=400, train__log_every=50, train__eval_every=50,
        train__eval_batches=8, train__checkpoint_every=400, train__tensorboard=False)
    c.axes = ("data", "params", "flops")
    c.data_steps = (75, 150, 300, 600, 1200)
    c.sizes = ((16, 1, 2), (32, 2, 2), (48, 2, 4), (64, 3, 4))
  else:
    c.base = "ebt_s1:xxs"
    c.settings = _settings(data__source="shards", data__path="data/pile_shards",
                           data__tokenizer="tokenizer.json")
    c.axes = ("data", "params", "flops", "depth", "batch")
    c.data_steps = (62500, 125000, 250000, 500000, 1000000)
    c.sizes = tuple(MODEL_SIZES[s] for s in ("4xs", "3xs", "xxs", "xs", "small"))
    c.depths = (2, 4, 6, 8, 12)
    c.batch_sizes = (64, 128, 256, 512, 1024)
  return c
