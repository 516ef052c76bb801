"""The optimiser of `config.optim`: Adam/AdamW/SGD after a linear warm-up, cosine or constant, with clipping.

The length of the cosine schedule is part of the optimiser state (`ScheduleState.total_steps`), not
a constant of the compiled step: a run with a time budget (`train.budget_minutes`) fixes it after
measuring its first steps (`set_total_steps`), a resumed run reads it back from the checkpoint, and
the same total always gives the same learning rates. Field values are checked by
`config_check.validate`; OPTIMIZERS and SCHEDULES are the valid names.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")


class ScheduleState(NamedTuple):
  """Steps taken and the schedule's total length (int32 scalars)."""
  count: jax.Array
  total_steps: jax.Array


def learning_rate(optim: Any, step: jax.Array, total_steps: jax.Array) -> jax.Array:
  """The learning rate at `step`: linear warm-up from 0, then cosine down to the final fraction at `total_steps`."""
  step = jnp.asarray(step, jnp.float32)
  peak, warmup = optim.learning_rate, max(optim.warmup_steps, 1 if optim.schedule == "constant" else 0)
  warm = peak * step / warmup if warmup else peak
  if optim.schedule == "constant":
    return jnp.where(step < warmup, warm, peak)
  span = jnp.maximum(jnp.asarray(total_steps, jnp.float32) - warmup, 1.0)
  progress = jnp.clip((step - warmup) / span, 0.0, 1.0)
  final = peak * optim.final_lr_fraction
  cosine = final + (peak - final) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
  return jnp.where(step < warmup, warm, cosine)


def scale_by_schedule(optim: Any, total_steps: int) -> optax.GradientTransformation:
  """Multiplies updates by -learning_rate(count, total_steps), the total kept in the state."""
  def init(params: Any) -> ScheduleState:
    del params
    return ScheduleState(jnp.zeros([], jnp.int32), jnp.asarray(total_steps, jnp.int32))

  def update(updates: Any, state: ScheduleState, params: Any = None) -> tuple[Any, ScheduleState]:
    del params
    lr = learning_rate(optim, state.count, state.total_steps)
    return jax.tree.map(lambda u: -lr * u, updates), ScheduleState(state.count + 1, state.total_steps)
  return optax.GradientTransformation(init, update)


def make_optimizer(optim: Any, total_steps: int) -> optax.GradientTransformation:
  """Optax optimiser from `config.optim` whose schedule ends at `total_steps` (changeable in the state)."""
  direction = {"adam": lambda: [optax.scale_by_adam()],
               "adamw": lambda: [optax.scale_by_adam(), optax.add_decayed_weights(optim.weight_decay)],
               "sgd": lambda: [optax.trace(decay=0.9, nesterov=True)]}[optim.name]()
  clip = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip else []
  return optax.chain(*clip, *direction, scale_by_schedule(optim, total_steps))


def total_steps(opt_state: Any) -> int:
  """The schedule length held in an optimiser state."""
  return int(optax.tree_utils.tree_get(opt_state, "total_steps"))


def set_total_steps(opt_state: Any, steps: int) -> Any:
  """The optimiser state with the schedule length set to `steps`."""
  return optax.tree_utils.tree_set(opt_state, total_steps=jnp.asarray(steps, jnp.int32))
