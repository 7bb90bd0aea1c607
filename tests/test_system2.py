"""System 2 thinking of the text EBT: shared-context best-of-N, longer thinking, the table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebt_jax import tasks
from ebt_jax.inference import system2
from ebt_jax.tasks import options, text
from ebt_jax.thinking import inference, loop
from conftest import perturb, tiny_config, to_f64


@pytest.fixture
def model(x64):
  """A float64 model: comparisons of differently batched runs stay at rounding level."""
  config = tiny_config("time_embed")
  config.model.dtype = "float64"
  params = to_f64(perturb(tasks.init_params(config, jax.random.key(0)), jax.random.key(1)))
  tokens = jax.random.randint(jax.random.key(2), (2, 7), 1, 11)
  return config, params, tokens[:, :-1], tokens[:, 1:]


def test_best_of_n_equals_n_separate_runs_on_one_shared_context(model):
  config, params, inputs, targets = model
  caches = tasks.build(config).encode_landscapes(params, inputs)
  y0 = jax.random.normal(jax.random.key(3), (3,) + inputs.shape + (11,))
  think = jax.jit(lambda y: system2.think(params, caches, y, tasks.build(config), jax.random.key(4), steps=3))
  together = think(y0)
  for n in range(3):
    alone = think(y0[n:n + 1])
    np.testing.assert_allclose(together.energies[:, n], alone.energies[:, 0], rtol=1e-10)
  # The chosen candidate has the lowest final energy of the three at every position.
  np.testing.assert_allclose(together.final_energy, together.energies[-1].min(axis=0), rtol=1e-6)
  np.testing.assert_array_equal(together.choice, together.energies[-1].argmin(axis=0))


def test_longer_thinking_matches_a_plain_loop_over_the_landscapes(model):
  config, params, inputs, targets = model
  config.inference.step_count = "total"     # 4 steps in all, the extras on the final landscape
  caches = tasks.build(config).encode_landscapes(params, inputs)
  y0 = jax.random.normal(jax.random.key(5), (1,) + inputs.shape + (11,))
  thought = system2.think(params, caches, y0, tasks.build(config), jax.random.key(6), steps=4,
                          emit=lambda y: text.token_nll(y, targets))
  reference = loop.think(tasks.build(config).candidate_energy_fn(params, caches), y0[0],
                         options.inner_optimizer(tasks.build(config).thinking),
                         loop.Schedule(jnp.array([0, 1, 1, 1]), options.step_size(params, tasks.build(config).thinking)),
                         jax.random.key(6), reparam=tasks.build(config).candidate_reparam(),
                         emit=lambda y: text.token_nll(y, targets))
  np.testing.assert_allclose(thought.outputs[:, 0], reference.outputs, rtol=1e-10)
  np.testing.assert_allclose(thought.energies[:4, 0], reference.energies, rtol=1e-10)
  np.testing.assert_allclose(thought.logits, reference.final, rtol=1e-10)


def test_table_cells_select_among_the_first_n_candidates(model):
  config, params, inputs, targets = model
  thought = system2.think_tokens(params, inputs, tasks.build(config), jax.random.key(7), steps=3, best_of=4,
                                 targets_BxS=targets)
  mask = jnp.ones(targets.shape)
  table = system2.table_ce(thought, mask, [1, 3], [1, 2, 4], "min")
  for i, k in enumerate([1, 3]):
    for j, n in enumerate([1, 2, 4]):
      pick = jnp.argmin(thought.energies[k, :n], axis=0)
      nll = jnp.take_along_axis(thought.outputs[k - 1, :n], pick[None], axis=0)[0]
      np.testing.assert_allclose(table[i, j], nll.mean(), rtol=1e-6)


def test_inference_step_size_override_and_validation(model):
  config, params, _, _ = model
  config = tiny_config("time_embed")
  config.inference.step_size_scale = 0.5
  np.testing.assert_allclose(system2.step_size(params, tasks.build(config)), 0.5 * params["alpha"])
  config.inference.step_size = 7.0
  np.testing.assert_allclose(system2.step_size(params, tasks.build(config)), 3.5)
  config.inference.stop_on = "sometimes"
  with pytest.raises(Exception, match="inference.stop_on: expected"):
    from ebt_jax import config as config_lib
    config_lib.validate(config)
  with pytest.raises(ValueError, match="inference.select"):
    inference.selection_scores(jnp.zeros(2), jnp.zeros(2), "best")


@pytest.mark.parametrize("clamps", [dict(clamp_grad=True, clamp_grad_max_change=0.05),
                                    dict(absolute_clamp=0.3),
                                    dict(clamp_grad=True, clamp_grad_max_change=9.0,
                                         clamp_grad_max_change_after_warmup=0.05)])
def test_inference_thinks_with_the_trained_clamps(x64, clamps):
  """System 2 thinking of a model trained with clamps equals its evaluation objective (the
  official inference clamps too), and the clamps really change the result."""
  from ebt_jax.commands import evaluation
  config = tiny_config("time_embed", **clamps)
  config.model.dtype = "float64"
  params = to_f64(perturb(tasks.init_params(config, jax.random.key(0)), jax.random.key(1)))
  params["alpha"] = jnp.asarray(40.0)   # large steps, so both clamps bite
  tokens = jax.random.randint(jax.random.key(2), (2, 7), 1, 11)
  task, key = tasks.build(config), jax.random.key(3)
  # One step per landscape (N = 1) is validation's schedule.
  cells, every_step = evaluation.cells_ce(params, tokens, key, task=task, steps_list=(1,),
                                          best_of_list=(1,))
  want = task.eval_batch(params, tokens, key)["ce_steps"]
  np.testing.assert_allclose(every_step, want, rtol=1e-10)
  np.testing.assert_allclose(cells[:, 0], want[-1:], rtol=1e-10)
  unclamped = config.copy_and_resolve_references()
  unclamped.thinking.update(clamp_grad=False, absolute_clamp=0.0)
  free = evaluation.cells_ce(params, tokens, key, task=tasks.build(unclamped),
                             steps_list=(1,), best_of_list=(1,))[1]
  assert np.max(np.abs(free - every_step)) > 1e-3
