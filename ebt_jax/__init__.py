"""ebt_jax: Energy-Based Transformers in JAX.

Public API (kept stable; see README.md):

* `ebt_jax.config.base_config()`, `ebt_jax.from_official_hparams(hparams)`
* `ebt_jax.tasks.build(config) -> Task` (the model kind's parameters, loss, evaluation)
* `ebt_jax.init_params(config, key) -> params` (a plain nested dict of arrays)
* `ebt_jax.text_ebt_loss(params, tokens, config, *, key=None, initial_logits=None)`
  (S2 training also passes `row_mask`, `randomize=True` and `warmed_up`)
* `ebt_jax.transformer_loss(params, tokens, config)` (the Transformer++ baseline)
* `ebt_jax.checkpoint.import_official(state_dict, config) -> params`
* `ebt_jax.thinking.think(...)` and the inner-optimizer registry `ebt_jax.thinking.optimizers`
"""

import importlib
import importlib.util

__version__ = "0.1.0"

# The API is imported on first use (PEP 562), not with the package: `ebt` and the modules
# that need no JAX (`atomic`, `errors`, `hugepages`) then start without importing JAX, and
# the training commands' restart (`hugepages`) happens before that import, not after it.
# Subpackages (`ebt_jax.tasks`, `ebt_jax.training`, ...) import on first use as well.
_WHERE = {"from_official_hparams": "ebt_jax.official_hparams", "init_params": "ebt_jax.tasks",
          "param_axes": "ebt_jax.tasks", "text_ebt_loss": "ebt_jax.tasks.text",
          "transformer_loss": "ebt_jax.tasks.text"}

__all__ = ["checkpoint", "config", "tasks", "thinking", *_WHERE]


def __getattr__(name: str):
  if name in _WHERE:
    value = getattr(importlib.import_module(_WHERE[name]), name)
  elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
    value = importlib.import_module(f"{__name__}.{name}")
  else:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  globals()[name] = value   # later reads skip this function
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *__all__})
