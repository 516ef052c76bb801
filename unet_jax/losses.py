"""Segmentation losses on logits f32[B, *spatial, 1] and binary masks of the same shape.

Every loss is the mean of a per-example value, so a data-parallel mean of gradients equals the
gradient on the whole batch. `smooth` keeps Dice finite (and equal to 1) on empty masks.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from unet_jax.errors import InputError


def soft_dice(logits: jax.Array, mask: jax.Array, smooth: float = 1.0) -> jax.Array:
  """Per-example soft Dice of sigmoid(logits) against `mask`: f32[B]."""
  probs = jax.nn.sigmoid(logits)
  axes = tuple(range(1, logits.ndim))
  intersection = jnp.sum(probs * mask, axes)
  total = jnp.sum(probs, axes) + jnp.sum(mask, axes)
  return (2.0 * intersection + smooth) / (total + smooth)


def log_dice_loss(logits: jax.Array, mask: jax.Array, smooth: float = 1.0) -> jax.Array:
  """-ln(soft Dice), averaged over the batch; 0 for a perfect prediction."""
  return jnp.mean(-jnp.log(soft_dice(logits, mask, smooth)))


def seed_log_dice_loss(logits: jax.Array, mask: jax.Array, smooth: float = 1.0,
                       eps: float = 1e-6) -> jax.Array:
  """The seed's literal ln(1 - soft Dice), averaged; tends to ln(eps) for a perfect prediction."""
  return jnp.mean(jnp.log(jnp.maximum(1.0 - soft_dice(logits, mask, smooth), eps)))


def dice_loss(logits: jax.Array, mask: jax.Array, smooth: float = 1.0) -> jax.Array:
  """1 - soft Dice, averaged over the batch."""
  return jnp.mean(1.0 - soft_dice(logits, mask, smooth))


def bce_loss(logits: jax.Array, mask: jax.Array, smooth: float = 1.0) -> jax.Array:
  """Binary cross-entropy, averaged over pixels and batch (`smooth` unused)."""
  del smooth
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, mask))


def bce_dice_loss(logits: jax.Array, mask: jax.Array, smooth: float = 1.0) -> jax.Array:
  """Binary cross-entropy plus (1 - soft Dice)."""
  return bce_loss(logits, mask) + dice_loss(logits, mask, smooth)


LOSSES: dict[str, Callable[..., jax.Array]] = {
    "log_dice": log_dice_loss,
    "seed_log_dice": seed_log_dice_loss,
    "dice": dice_loss,
    "bce": bce_loss,
    "bce_dice": bce_dice_loss,
}


def get_loss(name: str) -> Callable[..., jax.Array]:
  """Returns the loss called `name`."""
  if name not in LOSSES:
    raise InputError(f"train.loss must be one of {sorted(LOSSES)}, got {name!r}")
  return LOSSES[name]
