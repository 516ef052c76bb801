"""Which data a 2D, 2.5D or 3D model accepts: clear errors when dimensions do not fit.

A 3D model needs a volume: coherent sections at least one training patch deep. A stack of
independent 2D images (the 2D synthetic generator, a single image) has no third dimension to learn
from, so it is an error rather than a silent waste of compute. A 2D model accepts any stack (it
runs slice by slice, and 2.5D adds the neighbours as channels), but not 3D patch or window shapes.
"""

from typing import Any

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
  """Raises InputError when a 3D model gets stacks too thin for its training patch or its poolings."""
  if config.model.ndim != 3:
    return
  depth = _sizes(config.train.patch_size, 3)[0]
  for name, split in splits.items():
    z = split.image.shape[0]
    if z < 2 or (name == "train" and z < depth):
      raise InputError(f"a 3D model needs volumes: the {name} stack has {z} slice(s) (shape {split.image.shape}), "
                       f"the training patch is {depth} deep; use configs/unet2d.py for single images or "
                       "stacks of unrelated slices, or a smaller train.patch_size depth")
