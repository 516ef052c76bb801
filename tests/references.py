"""Plain references the tests compare the library's prediction paths against."""

import numpy as np

from unet_jax.inference import windows
from unet_jax.inference.context import neighbour_slices


def sliding_window_stack(model, variables, stack, eval_config):
  """Probabilities f32[Z, H, W] by `windows.sliding_window_predict` alone: each slice (2D), its
  neighbour slab with the centre kept (2.5D), or the whole volume (3D); no blocks, no tiling."""
  stack = np.asarray(stack, np.float32)
  settings = windows.window_settings(eval_config, model.ndim)
  predict = windows.predictor(model, eval_config.tta, eval_config.engine)
  if model.ndim == 3:
    return np.asarray(windows.sliding_window_predict(predict, variables, stack, **settings))
  k = (model.in_channels - 1) // 2
  if not k:
    return np.stack([np.asarray(windows.sliding_window_predict(predict, variables, s, **settings)) for s in stack])
  out = []
  for z in range(stack.shape[0]):  # a slab's slices as channels: a 2D window over f32[H, W, 2k + 1]
    slab = np.moveaxis(stack[neighbour_slices(z, stack.shape[0], k)], 0, -1)
    total, norm = windows.region_sums(predict, variables, slab, tuple(
        tuple(windows.window_starts(max(s, w), w, settings["overlap"])) for s, w in zip(slab.shape[:2],
                                                                                    settings["window"])),
        settings["window"], settings["blend"], settings["batch_size"], settings["sigma"])
    out.append(np.asarray(total / norm))
  return np.stack(out)
