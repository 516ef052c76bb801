"""Labelled data: image/mask pairs, validation, and train/val/test splits.

Images are read and normalised to [0, 1] by unet_jax/io/stacks.py (TIFF) or unet_jax/io/ngff.py (OME-Zarr),
the readers inference uses. A data folder holds each stack of STACK_FILES as that TIFF or as an
OME-Zarr image of the same stem (training.ome.zarr for training.tif). Masks may hold {0, 1} or
{0, 255}; anything else is an error naming the values found. Unlabelled stacks for semi-supervised
training (`load_unlabeled`, unet_jax/training/consistency.py) are read the same way, without masks.

Multi-class models (model.num_classes = K > 1) learn integer label maps instead: the images as above,
the labels from `data.labels_root` (LABEL_FILES, class ids 0..K-1 per pixel, kept as they are: a
value outside that range is an error, never clipped or remapped).
"""

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
from absl import logging

from unet_jax.errors import InputError
from unet_jax.io import download, stacks, synthetic
from unet_jax.io.download import STACK_FILES

DATASETS = ("lucchi", "folder", "synthetic")
LABEL_FILES = {"train": "training_labels.tif", "test": "testing_labels.tif"}  # in data.labels_root


@dataclasses.dataclass(frozen=True)
class Split:
  """One labelled stack: image f32[Z, H, W] in [0, 1], mask u8[Z, H, W] in {0, 1} (or class ids 0..K-1)."""
  image: np.ndarray
  mask: np.ndarray


def binarize_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
  """Maps a {0, 1} or {0, 255} mask to uint8 {0, 1}; other values are an error."""
  if np.issubdtype(mask.dtype, np.floating) and not np.all(np.isfinite(mask)):
    raise InputError(f"{name} contains NaN or infinite values; masks must be 0/1 or 0/255")
  values = np.unique(mask)
  if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
    shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
    raise InputError(f"{name} is not binary: found values {{{shown}}}; masks must hold only 0/1 or 0/255")
  return (mask > 0).astype(np.uint8)


def check_labels(labels: np.ndarray, num_classes: int, name: str = "labels") -> np.ndarray:
  """Integer class ids 0..num_classes-1 as uint8 (int32 beyond 256 classes); other values are an error."""
  if not np.issubdtype(labels.dtype, np.integer) and not (np.all(np.isfinite(labels)) and
                                                         np.array_equal(labels, np.round(labels))):
    raise InputError(f"{name} holds non-integer values (dtype {labels.dtype}); labels must be class ids "
                     f"0..{num_classes - 1}")
  values = np.unique(labels)
  bad = values[(values < 0) | (values >= num_classes)]
  if len(bad):
    shown = ", ".join(str(v) for v in bad[:8]) + (" ..." if len(bad) > 8 else "")
    raise InputError(f"{name} holds class ids {{{shown}}} outside 0..{num_classes - 1} (model.num_classes="
                     f"{num_classes}); set --config.model.num_classes={int(values.max()) + 1} or remap the labels")
  return labels.astype(np.uint8 if num_classes <= 256 else np.int32)


def make_label_split(image: np.ndarray, labels: np.ndarray, num_classes: int, name: str = "stack") -> Split:
  """Validates an (image, label map) pair of a `num_classes`-class model and returns it normalised."""
  if image.shape != labels.shape:
    raise InputError(f"{name}: image shape {image.shape} != label shape {labels.shape}; "
                     "they must match voxel for voxel")
  return Split(stacks.normalize_image(image, f"{name} image"), check_labels(labels, num_classes, f"{name} labels"))


def load_labelled_folder(root: str, labels_root: str, num_classes: int) -> dict[str, Split]:
  """Training and testing stacks: images from `root` (STACK_FILES), label maps from `labels_root` (LABEL_FILES)."""
  images = {k: stack_path(root, a) for k, (a, _) in STACK_FILES.items()}
  labels = {k: stack_path(labels_root, f) for k, f in LABEL_FILES.items()}
  missing = [os.path.join(root, STACK_FILES[k][0]) for k, p in images.items() if p is None]
  missing += [os.path.join(labels_root, LABEL_FILES[k]) for k, p in labels.items() if p is None]
  if missing:
    raise InputError(f"missing {', '.join(missing)}; set --config.data.root to the images' folder and "
                     "--config.data.labels_root to the label maps' folder")
  return {k: make_label_split(_read(images[k], True), _read(labels[k], False), num_classes,
                              os.path.basename(labels[k])) for k in STACK_FILES}


def make_split(image: np.ndarray, mask: np.ndarray, name: str = "stack") -> Split:
  """Validates an (image, mask) pair and returns it normalised."""
  if image.shape != mask.shape:
    raise InputError(f"{name}: image shape {image.shape} != mask shape {mask.shape}; "
                     "they must match voxel for voxel")
  return Split(stacks.normalize_image(image, f"{name} image"), binarize_mask(mask, f"{name} mask"))


def stack_path(root: str, name: str) -> str | None:
  """The stack `name` (a TIFF name of STACK_FILES) in `root`: that TIFF, else its OME-Zarr twin, else None."""
  stem = os.path.join(root, os.path.splitext(name)[0])
  return next((p for p in (os.path.join(root, name), stem + ".ome.zarr", stem + ".zarr") if os.path.exists(p)), None)


def _read(path: str, normalized: bool) -> np.ndarray:
  """A TIFF or OME-Zarr stack (Z, H, W): as stored, or normalised to f32 in [0, 1]."""
  if not stacks.is_zarr(path):
    return stacks.read_normalized(path) if normalized else stacks.read_stack(path)
  from unet_jax.io import ngff  # pylint: disable=g-import-not-at-top  (zarr only when used)
  with ngff.ZarrStack(path) as stack:
    return stack.read((slice(None),) * 3) if normalized else stack.read_raw()


def load_pair(image_path: str, mask_path: str) -> Split:
  """Reads and validates an image and its mask (TIFF or OME-Zarr)."""
  return make_split(_read(image_path, True), _read(mask_path, False), os.path.basename(image_path))


def carve_validation(split: Split, fraction: float, count: int = 0) -> tuple[Split, Split]:
  """Splits the last `count` slices (0: ceil(fraction * Z)) off `split` as validation; returns (train, val).

  Both parts stay contiguous runs of real sections, so a 3D model validates on a volume that exists.
  """
  z = split.image.shape[0]
  n_val = count or int(np.ceil(fraction * z))
  if not 0 < n_val < z:
    field = f"data.val_slices={count}" if count else f"data.val_fraction={fraction}"
    raise InputError(f"{field} leaves no training or no validation slices from a stack of {z}; choose "
                     f"0 < val_fraction < 1 (or 0 < val_slices < {z}) with at least 2 slices")
  return (Split(split.image[:-n_val], split.mask[:-n_val]),
          Split(split.image[-n_val:], split.mask[-n_val:]))


def load_folder(root: str) -> dict[str, Split]:
  """Loads training and testing stacks from `root` (the Lucchi/VNC file names, TIFF or OME-Zarr)."""
  missing = [f for pair in STACK_FILES.values() for f in pair if stack_path(root, f) is None]
  if missing:
    raise InputError(f"data folder {root!r} lacks {', '.join(missing)}; set --config.data.root "
                     f"to a folder holding {', '.join(f for p in STACK_FILES.values() for f in p)} "
                     "(or OME-Zarr images named like them, e.g. training.ome.zarr)")
  return {k: load_pair(stack_path(root, a), stack_path(root, b)) for k, (a, b) in STACK_FILES.items()}


def load_unlabeled(paths: Sequence[str], data_config: Any) -> list[np.ndarray]:
  """The unlabelled stacks of `train.unlabeled` (TIFF or OME-Zarr), each f32[Z, H, W] in [0, 1]. The data
  folder's own stacks are refused: the training stack holds the val slices and the test stack is never seen."""
  own = [] if data_config.name == "synthetic" else [stack_path(data_config.root, a) for a, _ in STACK_FILES.values()]
  own = {os.path.realpath(p) for p in own if p is not None}
  stacks = []
  for path in paths:
    if not os.path.exists(path):
      raise InputError(f"train.unlabeled: {path!r} does not exist; give TIFF or OME-Zarr stacks of unlabelled images")
    if os.path.realpath(path) in own:
      raise InputError(f"train.unlabeled: {path!r} is a stack of data.root (its val or test slices would train); "
                       "give stacks of other images, e.g. ../shared/data/vnc/unlabeled.tif")
    stacks.append(_read(path, True))
  return stacks


def warn_if_empty(splits: dict[str, Split]) -> None:
  """Warns (absl logging) about splits whose masks hold no foreground: training or scoring them says little."""
  for name, split in splits.items():
    if not split.mask.any():
      logging.warning("the %s split's mask has no foreground: %s", name,
                      "the network learns only background" if name == "train" else
                      "its Dice is 1 only for an empty prediction, and val-based choices see no mitochondria")


def load_splits(data_config: Any, num_classes: int = 1) -> dict[str, Split]:
  """Returns {'train', 'val', 'test'} splits for `config.data` (one of DATASETS); with `num_classes` > 1
  (model.num_classes) the masks are the label maps of `data.labels_root`."""
  name = data_config.name
  if num_classes > 1:
    if name == "synthetic" or not data_config.get("labels_root", ""):
      raise InputError(f"model.num_classes={num_classes} needs label maps: set --config.data.labels_root")
    if name == "lucchi":
      download.ensure_lucchi(data_config.root, data_config.url or download.LUCCHI_URL)
    stacks = load_labelled_folder(data_config.root, data_config.labels_root, num_classes)
  elif name == "synthetic":
    stacks = {k: make_split(*pair, name=f"synthetic {k}") for k, pair in synthetic.make_dataset(data_config.synthetic).items()}
  elif name == "lucchi":
    download.ensure_lucchi(data_config.root, data_config.url or download.LUCCHI_URL)
    stacks = load_folder(data_config.root)
  elif name == "folder":
    stacks = load_folder(data_config.root)
  else:
    raise InputError(f"data.name must be one of {DATASETS}, got {name!r}")
  train, val = carve_validation(stacks["train"], data_config.val_fraction, data_config.get("val_slices", 0))
  if data_config.final_fit:  # the val slices train too; they stay the (in-sample) val split
    train = stacks["train"]
  return {"train": train, "val": val, "test": stacks["test"]}
