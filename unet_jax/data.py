"""TIFF stacks: reading, validation, intensity normalisation, and train/val/test splits.

Normalisation (the same for every dtype, so a model sees [0, 1] inputs whatever the microscope
wrote): unsigned integers are divided by their dtype's maximum (uint8 / 255, uint16 / 65535);
floats already inside [0, 1] are kept, other floats are min-max scaled over the whole stack.
Masks may hold {0, 1} or {0, 255}; anything else is an error naming the values found.
"""

import dataclasses
import os
from typing import Any

import numpy as np
import tifffile

from unet_jax.errors import InputError

STACK_FILES = {"train": ("training.tif", "training_groundtruth.tif"),
               "test": ("testing.tif", "testing_groundtruth.tif")}  # Lucchi's names; any folder may use them
DATASETS = ("lucchi", "folder", "synthetic")


@dataclasses.dataclass(frozen=True)
class Split:
  """One labelled stack: image f32[Z, H, W] in [0, 1], mask u8[Z, H, W] in {0, 1}."""
  image: np.ndarray
  mask: np.ndarray


def read_stack(path: str) -> np.ndarray:
  """Reads a 2D image or multi-frame TIFF as an array [Z, H, W] (a 2D image gets Z = 1)."""
  if not os.path.isfile(path):
    raise InputError(f"file not found: {path}; check the path or the data root in the config")
  try:
    array = tifffile.imread(path)
  except Exception as e:  # tifffile raises many types for corrupt files
    raise InputError(f"cannot read TIFF {path} ({type(e).__name__}: {e}); is it a valid TIFF?") from e
  array = np.asarray(array)
  if array.ndim == 2:
    array = array[None]
  if array.ndim != 3:
    raise InputError(f"{path}: expected a 2D image or a 3D stack (Z, Y, X), got shape {array.shape}; "
                     "multi-channel images are not supported, save one channel")
  if array.size == 0:
    raise InputError(f"{path}: the stack is empty (shape {array.shape})")
  return array


def write_stack(path: str, array: np.ndarray, compression: str | None = "zlib") -> None:
  """Writes `array` [Z, H, W] as a multi-frame TIFF, atomically (temp file + rename)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  tifffile.imwrite(tmp, np.asarray(array), compression=compression, photometric="minisblack",
                   metadata={"axes": "ZYX"})
  os.replace(tmp, path)


def normalize_image(image: np.ndarray, name: str = "image") -> np.ndarray:
  """Maps any supported dtype to float32 in [0, 1] (see the module docstring)."""
  if np.issubdtype(image.dtype, np.unsignedinteger):
    return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
  if np.issubdtype(image.dtype, np.signedinteger) or np.issubdtype(image.dtype, np.floating):
    image = image.astype(np.float32)
    if not np.all(np.isfinite(image)):
      raise InputError(f"{name} contains NaN or infinite values; clean the stack before training")
    lo, hi = float(image.min()), float(image.max())
    if lo >= 0.0 and hi <= 1.0:
      return image
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
  raise InputError(f"{name} has unsupported dtype {image.dtype}; use uint8, uint16 or float")


def binarize_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
  """Maps a {0, 1} or {0, 255} mask to uint8 {0, 1}; other values are an error."""
  if np.issubdtype(mask.dtype, np.floating) and not np.all(np.isfinite(mask)):
    raise InputError(f"{name} contains NaN or infinite values; masks must be 0/1 or 0/255")
  values = np.unique(mask)
  if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
    shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
    raise InputError(f"{name} is not binary: found values {{{shown}}}; masks must hold only 0/1 or 0/255")
  return (mask > 0).astype(np.uint8)


def make_split(image: np.ndarray, mask: np.ndarray, name: str = "stack") -> Split:
  """Validates an (image, mask) pair and returns it normalised."""
  if image.shape != mask.shape:
    raise InputError(f"{name}: image shape {image.shape} != mask shape {mask.shape}; "
                     "they must match voxel for voxel")
  return Split(normalize_image(image, f"{name} image"), binarize_mask(mask, f"{name} mask"))


def load_pair(image_path: str, mask_path: str) -> Split:
  """Reads and validates an image TIFF and its mask TIFF."""
  return make_split(read_stack(image_path), read_stack(mask_path), os.path.basename(image_path))


def carve_validation(split: Split, fraction: float) -> tuple[Split, Split]:
  """Splits the last ceil(fraction * Z) slices off `split` as validation; returns (train, val)."""
  z = split.image.shape[0]
  n_val = int(np.ceil(fraction * z))
  if not 0 < n_val < z:
    raise InputError(f"data.val_fraction={fraction} leaves no training or no validation slices "
                     f"from a stack of {z}; choose 0 < val_fraction < 1 with at least 2 slices")
  return (Split(split.image[:-n_val], split.mask[:-n_val]),
          Split(split.image[-n_val:], split.mask[-n_val:]))


def load_folder(root: str) -> dict[str, Split]:
  """Loads training and testing stacks from `root` (the Lucchi/VNC file names)."""
  missing = [f for pair in STACK_FILES.values() for f in pair if not os.path.isfile(os.path.join(root, f))]
  if missing:
    raise InputError(f"data folder {root!r} lacks {', '.join(missing)}; set --config.data.root "
                     f"to a folder holding {', '.join(f for p in STACK_FILES.values() for f in p)}")
  return {k: load_pair(os.path.join(root, a), os.path.join(root, b)) for k, (a, b) in STACK_FILES.items()}


def load_splits(data_config: Any) -> dict[str, Split]:
  """Returns {'train', 'val', 'test'} splits for `config.data` (one of DATASETS)."""
  name = data_config.name
  if name == "synthetic":
    from unet_jax import synthetic  # pylint: disable=g-import-not-at-top
    stacks = synthetic.make_dataset(data_config.synthetic)
  elif name == "lucchi":
    from unet_jax import download  # pylint: disable=g-import-not-at-top
    download.ensure_lucchi(data_config.root, data_config.url or download.LUCCHI_URL)
    stacks = load_folder(data_config.root)
  elif name == "folder":
    stacks = load_folder(data_config.root)
  else:
    raise InputError(f"data.name must be one of {DATASETS}, got {name!r}")
  train, val = carve_validation(stacks["train"], data_config.val_fraction)
  return {"train": train, "val": val, "test": stacks["test"]}
