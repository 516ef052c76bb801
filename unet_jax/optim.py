"""The optimiser of `config.optim`: Adam/AdamW/SGD after a linear warm-up, cosine or constant, with clipping.

Field values are checked by `config_check.validate`; OPTIMIZERS and SCHEDULES are the valid names.
"""

from typing import Any

import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")


def learning_rate(optim: Any, total_steps: int) -> optax.Schedule:
  """Linear warm-up over `optim.warmup_steps`, then cosine decay to the final fraction at `total_steps`, or constant."""
  if optim.schedule == "constant":
    return optax.linear_schedule(0.0, optim.learning_rate, max(optim.warmup_steps, 1))
  return optax.warmup_cosine_decay_schedule(0.0, optim.learning_rate, optim.warmup_steps,
                                            max(total_steps, optim.warmup_steps + 1),
                                            optim.learning_rate * optim.final_lr_fraction)


def make_optimizer(optim: Any, total_steps: int) -> optax.GradientTransformation:
  """Optax optimiser from `config.optim` for a run of `total_steps`."""
  lr = learning_rate(optim, total_steps)
  makers = {"adam": lambda: optax.adam(lr), "adamw": lambda: optax.adamw(lr, weight_decay=optim.weight_decay),
            "sgd": lambda: optax.sgd(lr, momentum=0.9, nesterov=True)}
  chain = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip else []
  return optax.chain(*chain, makers[optim.name]())
