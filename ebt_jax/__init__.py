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

from ebt_jax import checkpoint, config, tasks, thinking
from ebt_jax.official_hparams import from_official_hparams
from ebt_jax.tasks import init_params, param_axes
from ebt_jax.tasks.text import text_ebt_loss, transformer_loss

__version__ = "0.1.0"

__all__ = ["checkpoint", "config", "tasks", "thinking", "from_official_hparams", "init_params",
           "param_axes", "text_ebt_loss", "transformer_loss"]
