"""Inner optimizers of the thinking loop: a registry of pure (init, update) pairs.

`update(grad, state, cand, step_size, key) -> (new_cand, new_state)` must be a pure,
twice-differentiable function: training backpropagates through it, so parameters get a
Hessian-vector product through every step. `step_size` is the model's alpha (a scalar or
an array broadcastable to the candidate). Research code adds a variant with

    @register("my_opt")
    def my_opt(**hyperparameters) -> InnerOptimizer: ...

and selects it with `config.thinking.inner_optimizer = "my_opt"`; the loop never changes.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import optax


class InnerOptimizer(NamedTuple):
  init: Callable[[jax.Array], Any]
  update: Callable[..., tuple[jax.Array, Any]]
  stochastic: bool = False     # whether `update` draws from its key


_REGISTRY: dict[str, Callable[..., InnerOptimizer]] = {}


def register(name: str):
  def wrap(factory: Callable[..., InnerOptimizer]):
    if name in _REGISTRY:
      raise ValueError(f"inner optimizer {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory

  return wrap


def names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def make(name: str, **hyperparameters) -> InnerOptimizer:
  """The registered inner optimizer `name`, built with `hyperparameters`."""
  if name not in _REGISTRY:
    raise ValueError(f"thinking.inner_optimizer: expected one of {names()}, got {name!r}")
  try:
    return _REGISTRY[name](**hyperparameters)
  except TypeError as e:
    raise ValueError(f"thinking.inner_optimizer_kwargs for {name!r}: {e}") from None


@register("gd")
def gd() -> InnerOptimizer:
  """Plain gradient descent, the official update: y <- y - alpha * grad."""
  return InnerOptimizer(
      init=lambda cand: (),
      update=lambda g, state, cand, step_size, key: (cand - step_size * g, state))


@register("langevin")
def langevin(noise_std: float = 0.1) -> InnerOptimizer:
  """Gradient descent plus Gaussian noise: y <- y - alpha * grad + noise_std * N(0, 1)."""

  def update(g, state, cand, step_size, key):
    noise = noise_std * jax.random.normal(key, cand.shape, cand.dtype)
    return cand - step_size * g + noise, state

  return InnerOptimizer(init=lambda cand: (), update=update, stochastic=True)


# Momentum, Nesterov and Adam are optax's own transforms with learning rate 1 (which flips
# the update's sign), stepped through `from_optax`: y <- y + alpha * update = y - alpha * (...).


@register("momentum")
def momentum(beta: float = 0.9) -> InnerOptimizer:
  """Heavy ball: v <- beta v + grad; y <- y - alpha v (optax.sgd's `trace`)."""
  return from_optax(optax.sgd(1.0, momentum=beta))


@register("nesterov")
def nesterov(beta: float = 0.9) -> InnerOptimizer:
  """Nesterov momentum in its gradient-at-current-point form: v <- beta v + grad;
  y <- y - alpha (grad + beta v) (optax's `trace(nesterov=True)`)."""
  return from_optax(optax.sgd(1.0, momentum=beta, nesterov=True))


@register("adam")
def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> InnerOptimizer:
  """Adam with bias correction; y <- y - alpha * m_hat / sqrt(v_hat + eps^2).

  eps sits inside the square root (optax's `eps_root`, with its outer `eps` 0): sqrt(v)
  has an infinite derivative at v = 0, which would turn a zero gradient (an adaLN-zero
  model at init) into NaN second-order terms.
  """
  return from_optax(optax.adam(1.0, b1=b1, b2=b2, eps=0.0, eps_root=eps * eps))


@register("optax")
def from_optax(transform: optax.GradientTransformation | str = "sgd", **kwargs) -> InnerOptimizer:
  """Any optax GradientTransformation; its updates are scaled by alpha.

  `transform` is a GradientTransformation, or the name of an optax constructor called with
  `kwargs` (so configs can say `{"transform": "sgd", "learning_rate": 1.0}`). A kwarg given
  as `{"schedule": "cosine_decay_schedule", ...}` becomes that optax schedule, counted in
  thinking steps. Pass learning rate 1 to keep alpha as the step size.
  """
  if isinstance(transform, str):
    ctor = getattr(optax, transform, None)
    if not callable(ctor):
      raise ValueError(f"thinking.inner_optimizer_kwargs.transform: optax has no {transform!r}")
    transform = ctor(**{k: _maybe_schedule(v) for k, v in kwargs.items()})
  elif kwargs:
    raise TypeError(f"unexpected arguments {sorted(kwargs)} beside a GradientTransformation")

  def update(g, state, cand, step_size, key):
    updates, state = transform.update(g, state, cand)
    return cand + step_size * updates, state

  return InnerOptimizer(init=transform.init, update=update)


def _maybe_schedule(value):
  if isinstance(value, dict) or hasattr(value, "to_dict"):
    spec = dict(value)
    name = spec.pop("schedule")
    return getattr(optax, name)(**spec)
  return value
