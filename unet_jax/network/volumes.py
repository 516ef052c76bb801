"""Which data a 2D, 2.5D or 3D model accepts: clear errors when dimensions do not fit.

A 3D model needs a volume: coherent sections at least one training patch deep. A stack of
independent 2D images (the 2D synthetic generator, a single image) has no third dimension to learn
from, so it is an error rather than a silent waste of compute. A 2D model accepts any stack (it
runs slice by slice, and 2.5D adds the neighbours as channels), but not 3D patch or window shapes.
"""

from typing import Any

import jax
import numpy as np

from unet_jax.errors import InputError


def _sizes(value: Any, ndim: int) -> tuple[int, ...]:
  return tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim


def check_config(config: Any) -> None:
  """Raises InputError when the model's dimensions do not fit the configured data, patch and window."""
  ndim, k = config.model.ndim, config.model.get("context_slices", 0)
  if not isinstance(k, int) or not 0 <= k <= 8:
    raise InputError(f"model.context_slices={k!r} must be an integer in [0, 8] (neighbours on each side)")
  if ndim == 3 and k:
    raise InputError(f"model.context_slices={k} (2.5D) is for 2D models; a 3D model sees its neighbouring "
                     "slices already: set it to 0")
  for field, value in (("train.patch_size", config.train.patch_size), ("eval.window", config.eval.window)):
    if len(_sizes(value, ndim)) != ndim:
      hint = ("use configs/unet3d.py for 3D data" if ndim == 2 else "give (depth, height, width)")
      raise InputError(f"{field}={value!r} has {len(_sizes(value, ndim))} sizes but model.ndim={ndim}; {hint}")
  if ndim == 3 and config.data.name == "synthetic" and config.data.synthetic.ndim != 3:
    raise InputError("a 3D model needs a volume, but data.synthetic.ndim=2 generates independent 2D slices; "
                     "set data.synthetic.ndim=3 (configs/unet3d.py:synthetic does)")


def check_splits(config: Any, splits: dict[str, Any]) -> None:
  """Raises InputError when a 3D model gets stacks too thin for its training patch or its poolings, or a 3D or
  2.5D model a val stack shallower than what it sees at once (eval.window's depth, or 2k + 1 slices).

  A shallower val stack would be mirrored into the window ([v0, v1, v0, v1] for 2 sections and a depth of
  4): a volume that does not exist, so its scores would choose checkpoints and thresholds on fiction.
  """
  ndim, k = config.model.ndim, config.model.get("context_slices", 0)
  if ndim == 2 and k and "val" in splits and splits["val"].image.shape[0] < 2 * k + 1:
    z = splits["val"].image.shape[0]
    raise InputError(f"the val stack has {z} slice(s), fewer than the {2 * k + 1} a 2.5D model sees "
                     f"(model.context_slices={k}); validate on real contiguous sections: "
                     f"--config.data.val_slices={2 * k + 1} or more")
  if ndim != 3:
    return
  depth = _sizes(config.train.patch_size, 3)[0]
  for name, split in splits.items():
    z = split.image.shape[0]
    if z < 2 or (name == "train" and z < depth):
      raise InputError(f"a 3D model needs volumes: the {name} stack has {z} slice(s) (shape {split.image.shape}), "
                       f"the training patch is {depth} deep; use configs/unet2d.py for single images or "
                       "stacks of unrelated slices, or a smaller train.patch_size depth")
  window = _sizes(config.eval.window, 3)[0]
  if "val" in splits and splits["val"].image.shape[0] < window:
    z = splits["val"].image.shape[0]
    raise InputError(f"the val stack has {z} section(s) but eval.window is {window} deep, so validation would "
                     f"score mirrored copies of them; validate on real contiguous sections: "
                     f"--config.data.val_slices={window} or more (the training stack keeps the rest)")


def in_plane_variables(variables_2d: Any, variables_3d: Any) -> Any:
  """The 2D U-Net's variables reshaped into the in-plane 3D U-Net's (`model.in_plane=True`, same depth and widths).

  Every in-plane 3D layer holds the 2D layer's numbers: 3x3 convolutions run section by section with the
  same kernels (`model.conv_by_sections`), and the 1x1(x1) convolutions, 1x2x2 transposed convolutions and
  norms differ only by leading axes of size 1. `variables_3d` gives the target shapes (arrays or
  jax.ShapeDtypeStruct, e.g. `model.abstract_variables`); a leaf whose size differs is an InputError.
  """
  flat_2d = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(variables_2d)[0]}

  def lift(path: Any, target: Any) -> Any:
    name = jax.tree_util.keystr(path)
    source = flat_2d.get(name)
    if source is None or np.size(source) != int(np.prod(target.shape)):
      raise InputError(f"the 2D variables do not fit the in-plane 3D network at {name}: "
                       f"{'absent' if source is None else np.shape(source)} vs {tuple(target.shape)}; "
                       "build both with the same model.depth, base_features, norm and upsample")
    return jax.numpy.reshape(source, target.shape).astype(target.dtype)
  return jax.tree_util.tree_map_with_path(lift, variables_3d)
