"""The thinking loop and its inner optimizers; independent of any model."""

from ebt_jax.thinking import optimizers
from ebt_jax.thinking.loop import Schedule, Trajectory, steps_schedule, think

__all__ = ["optimizers", "Schedule", "Trajectory", "steps_schedule", "think"]
