"""2.5D: a 2D U-Net that sees each slice with its k neighbours on either side as input channels.

The cheap middle ground between 2D and 3D (`model.context_slices` = k, 2k + 1 input channels): the
network and its cost are 2D except for the first convolution, but it can use the sections above
and below. Training patches come from `sampling.PatchSampler` (image f32[h, w, 2k + 1], the mask of
the centre slice); at the ends of a stack the missing neighbours are mirrored (slice -1 is slice 1).
Inference runs (1, h, w) windows whose channels are those neighbours (unet_jax/inference/tiling.py).
"""

import numpy as np


def neighbour_slices(z: int, depth: int, k: int) -> np.ndarray:
  """Indices i32[2k + 1] of slices z - k ... z + k of a stack of `depth`, mirrored about the end slices."""
  if depth == 1:
    return np.zeros(2 * k + 1, np.int64)
  period = 2 * (depth - 1)
  offsets = np.mod(np.arange(z - k, z + k + 1), period)
  return np.where(offsets < depth, offsets, period - offsets)
