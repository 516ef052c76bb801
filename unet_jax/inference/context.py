"""2.5D: a 2D U-Net that sees each slice with its k neighbours on either side as input channels.

The cheap middle ground between 2D and 3D (`model.context_slices` = k, 2k + 1 input channels): the
network and its cost are 2D except for the first convolution, but it can use the sections above
and below. Training patches come from `sampling.PatchSampler` (image f32[h, w, 2k + 1], the mask of
the centre slice); at the ends of a stack the missing neighbours are mirrored (slice -1 is slice 1).

Inference reuses the sliding window unchanged: slice z's neighbourhood is a slab f32[2k + 1, H, W]
and the window spans the slab's whole depth, (2k + 1, h, w), so each window position is one 2.5D
input; the predictor below moves the slab axis into channels and returns the centre slice's
probabilities on every slab slice, of which `predict_stack` keeps the centre.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.inference import windows
from unet_jax.network.model import UNet


def neighbour_slices(z: int, depth: int, k: int) -> np.ndarray:
  """Indices i32[2k + 1] of slices z - k ... z + k of a stack of `depth`, mirrored about the end slices."""
  if depth == 1:
    return np.zeros(2 * k + 1, np.int64)
  period = 2 * (depth - 1)
  offsets = np.mod(np.arange(z - k, z + k + 1), period)
  return np.where(offsets < depth, offsets, period - offsets)


@functools.lru_cache(maxsize=None)
def predictor(model: UNet, tta: str = "none") -> windows.Predict:
  """(variables, slabs f32[B, 2k + 1, h, w, 1]) -> the centre slices' probabilities, repeated over the slab.

  (h, w) are reflect-padded to the model's size factors and cropped back; `tta` flips/rotates the
  (h, w) plane (`windows.test_time_augmented`), all channels alike.
  """
  factors = model.plan().size_factors
  def predict(variables: Any, slabs: jax.Array) -> jax.Array:
    x = jnp.moveaxis(slabs[..., 0], 1, -1)  # f32[B, h, w, 2k + 1]
    spatial = x.shape[1:-1]
    pad = [(0, 0)] + [(0, -s % f) for s, f in zip(spatial, factors)] + [(0, 0)]
    if any(p for _, p in pad):
      x = jnp.pad(x, pad, mode="reflect")
    logits = model.apply(variables, x, train=False)[:, :spatial[0], :spatial[1]]
    return jnp.broadcast_to(jax.nn.sigmoid(logits)[:, None], slabs.shape)
  return windows.test_time_augmented(predict, tta)


def predict_stack(model: UNet, variables: Any, image: np.ndarray, eval_config: Any) -> np.ndarray:
  """Probabilities f32[Z, H, W] of a 2.5D model (`model.in_channels` = 2k + 1) for a stack f32[Z, H, W]."""
  k = (model.in_channels - 1) // 2
  settings = windows.window_settings(eval_config, 2)
  settings["window"] = (2 * k + 1, *settings["window"])
  predict = predictor(model, eval_config.tta)
  def one(z: int) -> np.ndarray:
    slab = image[neighbour_slices(z, image.shape[0], k)]
    return np.asarray(windows.sliding_window_predict(predict, variables, slab, **settings)[k])
  return np.stack([one(z) for z in range(image.shape[0])])
