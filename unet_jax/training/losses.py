"""Segmentation losses as functions of batch sums, so data-parallel training is exact.

Every loss is computed over the whole (global) batch from a few sums over pixels (`batch_sums`):
soft-Dice intersection and totals, and the summed binary cross-entropy. Under data parallelism each
device computes the sums of its shard, the sums are added over devices, and the loss of the global
batch follows; its gradient is the sum over devices of each shard's vector-Jacobian product
(`trainer.train_step`). `smooth` keeps Dice finite (and equal to 1) on empty masks.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from unet_jax.errors import InputError

Sums = dict[str, jax.Array]


def batch_sums(logits: jax.Array, mask: jax.Array, weight: jax.Array | None = None) -> Sums:
  """Sums over all pixels of logits/mask f32[B, *spatial, 1]: the statistics every loss needs.

  `weight` (same shape, default 1) scales each pixel's terms; 0 leaves a pixel out of the loss (a
  blanked section, unet_jax/training/sections.py).
  """
  probs = jax.nn.sigmoid(logits)
  bce = optax.sigmoid_binary_cross_entropy(logits, mask)
  if weight is None:
    return {"intersection": jnp.sum(probs * mask), "probs": jnp.sum(probs), "mask": jnp.sum(mask),
            "bce": jnp.sum(bce), "pixels": jnp.asarray(mask.size, jnp.float32)}
  return {"intersection": jnp.sum(weight * probs * mask), "probs": jnp.sum(weight * probs),
          "mask": jnp.sum(weight * mask), "bce": jnp.sum(weight * bce),
          "pixels": jnp.sum(jnp.broadcast_to(weight, mask.shape))}


def soft_dice(s: Sums, smooth: float = 1.0) -> jax.Array:
  """Soft Dice of the batch: (2 sum(p m) + smooth) / (sum p + sum m + smooth)."""
  return (2.0 * s["intersection"] + smooth) / (s["probs"] + s["mask"] + smooth)


def log_dice_loss(s: Sums, smooth: float = 1.0) -> jax.Array:
  """-ln(soft Dice); 0 for a perfect prediction."""
  return -jnp.log(soft_dice(s, smooth))


def log_one_minus_dice_loss(s: Sums, smooth: float = 1.0, eps: float = 1e-6) -> jax.Array:
  """ln(1 - soft Dice), as the project's original code wrote log-Dice; tends to ln(eps) when perfect."""
  return jnp.log(jnp.maximum(1.0 - soft_dice(s, smooth), eps))


def dice_loss(s: Sums, smooth: float = 1.0) -> jax.Array:
  """1 - soft Dice."""
  return 1.0 - soft_dice(s, smooth)


def bce_loss(s: Sums, smooth: float = 1.0) -> jax.Array:
  """Mean binary cross-entropy per pixel (`smooth` unused)."""
  del smooth
  return s["bce"] / s["pixels"]


def bce_dice_loss(s: Sums, smooth: float = 1.0) -> jax.Array:
  """Binary cross-entropy plus (1 - soft Dice)."""
  return bce_loss(s) + dice_loss(s, smooth)


LOSSES: dict[str, Callable[..., jax.Array]] = {
    "log_dice": log_dice_loss,
    "log_one_minus_dice": log_one_minus_dice_loss,
    "dice": dice_loss,
    "bce": bce_loss,
    "bce_dice": bce_dice_loss,
}


def get_loss(name: str) -> Callable[..., jax.Array]:
  """Returns the loss called `name`, a function of (`batch_sums`, smooth)."""
  if name not in LOSSES:
    raise InputError(f"train.loss must be one of {sorted(LOSSES)}, got {name!r}")
  return LOSSES[name]


def loss_value(name: str, logits: jax.Array, mask: jax.Array, smooth: float = 1.0) -> jax.Array:
  """The loss `name` of logits against mask on one device."""
  return get_loss(name)(batch_sums(logits, mask), smooth)
