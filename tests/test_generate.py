"""Generation: the KV-cached loop against the official re-encode-everything way; sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebt_jax.inference import generate, system2
from ebt_jax import tasks
from conftest import perturb, tiny_config, to_f64


@pytest.mark.slow
@pytest.mark.parametrize("ebt_type,best_of,temperature,top_p", [
    ("time_embed", 2, 0.0, 1.0), ("default", 1, 1.0, 0.9), ("adaln", 3, 0.7, 1.0)])
def test_cached_generation_gives_the_tokens_of_naive_generation(ebt_type, best_of, temperature,
                                                                 top_p, x64):
  # float64 so that the energies, not only the tokens, can be compared at rounding level.
  config = tiny_config(ebt_type)
  config.model.dtype = "float64"
  config.inference.best_of = best_of
  config.inference.thinking_steps = 3
  params = to_f64(perturb(tasks.init_params(config, jax.random.key(0)), jax.random.key(1), 0.3))
  prompt = jax.random.randint(jax.random.key(2), (2, 3), 1, 11)
  sampling = generate.Sampling(max_new_tokens=6, temperature=temperature, top_p=top_p)
  cached = generate.generate(params, prompt, tasks.build(config), jax.random.key(3), sampling)
  naive = generate.generate_naive(params, prompt, tasks.build(config), jax.random.key(3), sampling, bucket=4)
  np.testing.assert_array_equal(cached.tokens, naive.tokens)
  np.testing.assert_array_equal(cached.tokens[:, :3], prompt)
  np.testing.assert_allclose(cached.final_energy, naive.final_energy, rtol=1e-9)
  np.testing.assert_allclose(cached.energy_drop, naive.energy_drop, rtol=1e-9)
  # N = 3 per landscape: 3 steps per trained landscape (one landscape for a default EBT).
  np.testing.assert_array_equal(cached.steps_used, 3 * tasks.build(config).num_landscapes)
  assert system2.total_steps(tasks.build(config)) == 3 * tasks.build(config).num_landscapes
  if temperature > 0:   # sampling really samples: another key, other tokens
    other = generate.generate(params, prompt, tasks.build(config), jax.random.key(4), sampling)
    assert not np.array_equal(other.tokens, cached.tokens)


def test_sampling_greedy_and_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  assert int(generate.sample(logits, jax.random.key(0), 0.0, 1.0)[0]) == 0
  keys = jax.random.split(jax.random.key(1), 2000)
  draws = np.asarray(jax.vmap(lambda k: generate.sample(logits, k, 1.0, 0.7)[0])(keys))
  # The nucleus of mass 0.7 is {0, 1} (0.5 before token 1 is below 0.7; 0.8 before token 2 is not).
  assert set(np.unique(draws)) == {0, 1}
  assert abs(np.mean(draws == 0) - 0.5 / 0.8) < 0.04
  full = np.asarray(jax.vmap(lambda k: generate.sample(logits, k, 1.0, 1.0)[0])(keys))
  assert set(np.unique(full)) == {0, 1, 2, 3}
  with pytest.raises(Exception, match="--top-p"):
    generate.Sampling(max_new_tokens=1, top_p=0.0)
