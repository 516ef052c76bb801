"""Segmentation losses as functions of batch sums, so data-parallel training is exact.

Every loss is computed over the whole (global) batch from a few sums over pixels (`batch_sums`):
soft-Dice intersection and totals, and the summed binary cross-entropy. Under data parallelism each
device computes the sums of its shard, the sums are added over devices, and the loss of the global
batch follows; its gradient is the sum over devices of each shard's vector-Jacobian product
(`trainer.train_step`). `smooth` keeps Dice finite (and equal to 1) on empty masks.

Multi-class models (K = model.num_classes > 1) use `class_sums` on integer label maps: the Dice sums are
per class (f32[K]), so every loss below becomes its K-class form with no new code: soft Dice is the
(class-weighted) mean of the per-class soft Dice, log-Dice its -ln, and the cross-entropy is the softmax
one (weighted per pixel by its true class's weight, normalised by the weights' sum) or, for per-class
sigmoids, the weighted mean of the per-class binary cross-entropies. Class weights are constants of the
loss, never summed over devices.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from unet_jax.errors import InputError
from unet_jax.network.model import class_probabilities

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


def boundary_weights(mask: jax.Array, width: int, gain: float) -> jax.Array:
  """Per-pixel loss weights f32 of mask f32[B, *spatial, 1]: 1 + `gain` on the band of pixels within `width`
  pixels (in the plane, square neighbourhood) of a foreground/background edge, on both sides; 1 elsewhere.

  The edges of mitochondria are where a segmentation is least sure and where instance IoU is lost; the
  weight makes the loss count them more (as the U-Net paper's border weights do, with a band instead of a
  distance decay, so it costs two pooling passes on the device). The band is taken per section in 3D:
  50 nm sections make the z neighbours of an edge a different place."""
  window = (1,) * (mask.ndim - 3) + (2 * width + 1, 2 * width + 1, 1)
  pool = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, (1,) * mask.ndim, "SAME")
  dilated, eroded = pool(mask), -pool(-mask)
  return 1.0 + gain * (dilated - eroded)


def class_sums(logits: jax.Array, labels: jax.Array, output: str = "softmax",
               class_weights: Sequence[float] = ()) -> Sums:
  """Sums of a K-class model: logits f32[B, *spatial, K], labels [B, *spatial, 1] of class ids 0..K-1.

  Per class (f32[K]): soft-Dice intersection, probability and label totals; 'bce': the softmax
  cross-entropy summed with each pixel's class weight (scalar) and 'pixels' the sum of those weights,
  or for `output='sigmoid'` the per-class binary cross-entropy sums (f32[K]) and the pixel count.
  """
  k = logits.shape[-1]
  ids = labels[..., 0].astype(jnp.int32)
  onehot = jax.nn.one_hot(ids, k, dtype=jnp.float32)
  probs = class_probabilities(logits, output)
  axes = tuple(range(logits.ndim - 1))
  sums = {"intersection": jnp.sum(probs * onehot, axes), "probs": jnp.sum(probs, axes),
          "mask": jnp.sum(onehot, axes)}
  if output == "softmax":
    weights = jnp.asarray(class_weights, jnp.float32)[ids] if len(class_weights) else jnp.ones(ids.shape, jnp.float32)
    ce = -jnp.sum(jax.nn.log_softmax(logits, -1) * onehot, -1)
    return {**sums, "bce": jnp.sum(weights * ce), "pixels": jnp.sum(weights)}
  return {**sums, "bce": jnp.sum(optax.sigmoid_binary_cross_entropy(logits, onehot), axes),
          "pixels": jnp.asarray(ids.size, jnp.float32)}


def class_mean(values: jax.Array, weights: Sequence[float] | None = None) -> jax.Array:
  """A per-class value f32[K] averaged over the classes (weighted by `weights`); a scalar as it is."""
  if values.ndim == 0:
    return values
  if not weights:
    return jnp.mean(values)
  w = jnp.asarray(weights, jnp.float32)
  return jnp.sum(w * values) / jnp.sum(w)


def soft_dice(s: Sums, smooth: float = 1.0, weights: Sequence[float] | None = None) -> jax.Array:
  """Soft Dice of the batch: (2 sum(p m) + smooth) / (sum p + sum m + smooth); for K classes the
  (weighted) mean over classes of each class's soft Dice."""
  return class_mean((2.0 * s["intersection"] + smooth) / (s["probs"] + s["mask"] + smooth), weights)


def log_dice_loss(s: Sums, smooth: float = 1.0, weights: Sequence[float] | None = None) -> jax.Array:
  """-ln(soft Dice); 0 for a perfect prediction."""
  return -jnp.log(soft_dice(s, smooth, weights))


def log_one_minus_dice_loss(s: Sums, smooth: float = 1.0, weights: Sequence[float] | None = None,
                            eps: float = 1e-6) -> jax.Array:
  """ln(1 - soft Dice), as the project's original code wrote log-Dice; tends to ln(eps) when perfect."""
  return jnp.log(jnp.maximum(1.0 - soft_dice(s, smooth, weights), eps))


def dice_loss(s: Sums, smooth: float = 1.0, weights: Sequence[float] | None = None) -> jax.Array:
  """1 - soft Dice."""
  return 1.0 - soft_dice(s, smooth, weights)


def bce_loss(s: Sums, smooth: float = 1.0, weights: Sequence[float] | None = None) -> jax.Array:
  """Mean (binary or softmax) cross-entropy per pixel (`smooth` unused)."""
  del smooth
  return class_mean(s["bce"] / s["pixels"], weights)


def bce_dice_loss(s: Sums, smooth: float = 1.0, weights: Sequence[float] | None = None) -> jax.Array:
  """Cross-entropy plus (1 - soft Dice)."""
  return bce_loss(s, weights=weights) + dice_loss(s, smooth, weights)


LOSSES: dict[str, Callable[..., jax.Array]] = {
    "log_dice": log_dice_loss,
    "log_one_minus_dice": log_one_minus_dice_loss,
    "dice": dice_loss,
    "bce": bce_loss,
    "bce_dice": bce_dice_loss,
}


def get_loss(name: str) -> Callable[..., jax.Array]:
  """Returns the loss called `name`, a function of (`batch_sums` or `class_sums`, smooth, class weights)."""
  if name not in LOSSES:
    raise InputError(f"train.loss must be one of {sorted(LOSSES)}, got {name!r}")
  return LOSSES[name]


def loss_value(name: str, logits: jax.Array, mask: jax.Array, smooth: float = 1.0) -> jax.Array:
  """The loss `name` of logits against mask on one device."""
  return get_loss(name)(batch_sums(logits, mask), smooth)


def class_loss_value(name: str, logits: jax.Array, labels: jax.Array, output: str = "softmax", smooth: float = 1.0,
                     class_weights: Sequence[float] = ()) -> jax.Array:
  """The loss `name` of K-class logits against a label map on one device."""
  return get_loss(name)(class_sums(logits, labels, output, class_weights), smooth, tuple(class_weights))
