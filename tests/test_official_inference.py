"""The official inference step semantics (`system2.predict`) and the three official text
options (`soften_target`, `sharpen`, `normalize_first_step_only`), each against a plain
reference written here from the official code's loops with the model's full-sequence
energy (`ar_ebt.energy`), in float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebt_jax import official_hparams, tasks
from ebt_jax.commands import evaluation
from ebt_jax.errors import ConfigError
from ebt_jax.inference import system2
from ebt_jax.models import ar_ebt
from conftest import perturb, tiny_config, to_f64

V = 11


def _model(ebt_type="time_embed", **thinking):
  config = tiny_config(ebt_type, **thinking)
  config.model.update(dtype="float64", n_layers=1)
  params = to_f64(perturb(tasks.init_params(config, jax.random.key(0)), jax.random.key(1)))
  tokens = jax.random.randint(jax.random.key(2), (2, 7), 1, V)
  return config, params, tokens


@functools.partial(jax.jit, static_argnums=1)
def _energy_and_grad(params, dims, inputs, probs, landscape):
  energy = lambda p: ar_ebt.energy(params, inputs, p, landscape, dims)
  return energy(probs), jax.grad(lambda p: energy(p).sum())(probs)


def _reference(params, config, inputs, y0, plan, *, first_step_softmax_only=False):
  """The official `_run_ebt_inference_steps`: `plan` lists (step_idx, landscape, alpha,
  clamp bound or None) per step; then the final `get_energy` on the last landscape."""
  dims = tasks.build(config).dims
  y, energies = y0, []
  for step_idx, landscape, alpha, bound in plan:
    p = jax.nn.softmax(y, -1) if (step_idx == 0 or not first_step_softmax_only) else y
    e, g = _energy_and_grad(params, dims, inputs, p, landscape)
    energies.append(e)
    if bound is not None:
      g = jnp.clip(g, -bound, bound)
    y = p - alpha * g
  last = tasks.build(config).num_landscapes - 1
  final = y if first_step_softmax_only and config.thinking.num_steps > 1 else jax.nn.softmax(y, -1)
  energies.append(_energy_and_grad(params, dims, inputs, final, last)[0])
  return y, jnp.stack(energies)


def _y0(inputs):
  return jax.random.normal(jax.random.key(9), inputs.shape + (V,), jnp.float64)


@pytest.mark.slow
def test_predict_is_the_official_advanced_inference(x64):
  """N steps on every landscape (the official default), the override alpha only on the
  final landscape, the gradient clamp at each step's alpha, and the softmax only at
  official step index 0 (here landscape 0; the final scoring of a 2-step model without)."""
  config, params, tokens = _model(clamp_grad=True, clamp_grad_max_change=0.3,
                                  normalize_first_step_only=True)
  config.inference.update(thinking_steps=2, step_size=3.0, step_size_final_landscape=True)
  inputs, y0 = tokens[:, :-1], _y0(tokens[:, :-1])
  got = jax.jit(lambda p, x, y: system2.predict(p, x, config, key=jax.random.key(0),
                                                initial_logits=y))(params, inputs, y0)
  model_alpha = params["alpha"]
  plan = [(l, l, a, 0.3 / a) for l, a in ((0, model_alpha), (1, 3.0)) for _ in range(2)]
  want_logits, want_energies = _reference(params, config, inputs, y0, plan,
                                          first_step_softmax_only=True)
  assert got.energies.shape == (len(plan) + 1, 1) + inputs.shape
  np.testing.assert_allclose(got.energies[:, 0], want_energies, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(got.logits, want_logits, rtol=1e-9, atol=1e-12)
  assert system2.energy_evaluations(tasks.build(config), None, 4) == 4 * len(plan)


def test_softmax_steps_follow_the_official_step_index():
  """normalize_first_step_only: a default EBT softmaxes at its first step only, a
  time_embed one on every step of landscape 0; the final scoring where num_steps is 1."""
  for ebt_type, num_steps, landscape_K, want in (
      ("default", 2, [0, 0, 0], [1, 0, 0, 0]), ("time_embed", 2, [0, 0, 1, 1], [1, 1, 0, 0, 0]),
      ("default", 1, [0, 0], [1, 0, 1])):
    task = tasks.build(tiny_config(ebt_type, num_steps=num_steps, normalize_first_step_only=True))
    np.testing.assert_array_equal(system2.reparam_steps(task, np.array(landscape_K)), want)
  assert system2.reparam_steps(tasks.build(tiny_config()), np.zeros(2, int)) is None


def test_step_counts_and_the_official_fallback():
  task = lambda ebt_type, **i: tasks.build(_with_inference(tiny_config(ebt_type), **i))
  np.testing.assert_array_equal(system2.landscapes(task("time_embed"), 2), [0, 0, 1, 1, 1])
  np.testing.assert_array_equal(
      system2.landscapes(task("time_embed", step_count="final_landscape"), 3), [0, 1, 1, 1, 1])
  np.testing.assert_array_equal(system2.landscapes(task("time_embed", step_count="total"), 1),
                                [0, 1])
  np.testing.assert_array_equal(system2.landscapes(task("default"), 3), [0, 0, 0, 0])
  # N = 0: the official infer_ebt_num_steps=1 fallback.
  assert system2.total_steps(task("default")) == 2            # thinking.num_steps
  assert system2.total_steps(task("time_embed")) == 2          # one per landscape
  s2 = tiny_config("time_embed", random_steps=2, random_steps_min=2)
  assert system2.total_steps(tasks.build(s2)) == 4             # random_steps_min per landscape
  assert system2.total_steps(tasks.build(_with_inference(s2, step_count="total"))) == 4


def _with_inference(config, **fields):
  config.inference.update(**fields)
  return config


@pytest.mark.slow
def test_eval_rows_that_are_not_a_prefix_think_on_their_own(x64):
  """Per landscape, N = 1 is not the start of the N = 2 run: its cell equals a run of its own."""
  config, params, tokens = _model()
  task, key = tasks.build(config), jax.random.key(3)
  cells, every_step = jax.jit(functools.partial(
      evaluation.cells_ce, task=task, steps_list=(1, 2), best_of_list=(1,)))(params, tokens, key)
  assert not system2.shares_run(task, 1, 2) and every_step.shape == (4,)
  # N = 1 per landscape is validation's schedule, thought from the same start.
  validation = jax.jit(task.eval_batch)(params, tokens, key)["ce_steps"]
  np.testing.assert_allclose(cells[0, 0], validation[-1], rtol=1e-10)
  np.testing.assert_allclose(cells[1, 0], every_step[-1], rtol=1e-10)
  assert abs(cells[0, 0] - every_step[1]) > 1e-6     # not the longer run's second step


# --- the official text options in training ----------------------------------------------

def _objective_reference(params, config, tokens, y0, *, soften=0.0, sharpen=0.0,
                         first_only=False):
  """The official `forward` + `forward_loss_wrapper` (S1, K steps, no randomness)."""
  task = tasks.build(config)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  K, alpha = config.thinking.num_steps, params["alpha"]
  y, losses = y0, []
  for k in range(K):
    p = jax.nn.softmax(y, -1) if (k == 0 or not first_only) else y
    _, g = _energy_and_grad(params, task.dims, inputs, p, k)
    y = p - alpha * g
    if sharpen:
      y = y / sharpen
    logp = jax.nn.log_softmax(y, -1)
    nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    eps = ((K - 1) - k) / (K - 1) * soften
    losses.append(jnp.mean((1 - eps) * nll - eps * logp.mean(-1)))
  return jnp.mean(jnp.stack(losses))


@pytest.mark.slow
def test_official_text_options_in_training(x64):
  """The three together (one compilation), against the reference; each changes the loss."""
  config, params, tokens = _model(num_steps=3, soften_target=0.4, sharpen=0.7,
                                  normalize_first_step_only=True)
  y0 = _y0(tokens[:, :-1])
  loss = jax.jit(lambda p, t, y: tasks.build(config).objective(p, t, initial_logits=y).loss)(
      params, tokens, y0)
  option = dict(soften=0.4, sharpen=0.7, first_only=True)
  want = _objective_reference(params, config, tokens, y0, **option)
  np.testing.assert_allclose(loss, want, rtol=1e-9)
  for name in option:
    without = _objective_reference(params, config, tokens, y0,
                                   **{k: v for k, v in option.items() if k != name})
    assert abs(float(want - without)) > 1e-4, name


def test_official_inference_flags_are_mapped():
  base = {"model_name": "ebt", "vocab_size": 11, "ebt_type": "time_embed", "mcmc_num_steps": 2,
          "model_size": "4xs", "context_length": 8}
  c = official_hparams.from_official_hparams({
      **base, "infer_ebt_advanced": True, "infer_ebt_num_steps": 4,
      "infer_steps_final_landscape": True, "infer_alpha_final_landscape": True,
      "infer_ebt_override_alpha": 0.5, "infer_generated_samples": 3,
      "infer_energy_sampling_technique": "max_gap", "infer_langevin_dynamics_noise": 0.1,
      "infer_langevin_first_step": True, "infer_accept_lower_energies": True,
      "soften_target_prob_dist": 0.2, "sharpen_predicted_distribution": 1.5,
      "normalize_initial_condition": True,
      "normalize_initial_condition_only_first_step": True})
  want = dict(thinking_steps=4, step_count="final_landscape", step_size_final_landscape=True,
              step_size=0.0, step_size_scale=0.5, best_of=3, select="max_gap",
              langevin_noise=0.1, langevin_first_step_only=True, accept_lower=True)
  assert {k: c.inference[k] for k in want} == want
  assert (c.thinking.soften_target, c.thinking.sharpen, c.thinking.normalize_first_step_only) \
      == (0.2, 1.5, True)
  # Without infer_ebt_advanced the official code evaluates with its plain forward
  # (validation's steps: N = 0 here), whatever the infer_* flags say.
  plain = official_hparams.from_official_hparams({**base, "infer_ebt_num_steps": 4})
  assert plain.inference.thinking_steps == 0
  # infer_ebt_num_steps=1 is the official fallback; an override alpha >= 1 replaces alpha.
  c = official_hparams.from_official_hparams({**base, "infer_ebt_advanced": True,
                                              "infer_ebt_override_alpha": 7.0})
  assert (c.inference.thinking_steps, c.inference.step_size) == (0, 7.0)
  with pytest.raises(ConfigError, match="infer_ebt_num_steps"):
    official_hparams.from_official_hparams({**base, "infer_ebt_advanced": True,
                                            "infer_ebt_num_steps": 0})
