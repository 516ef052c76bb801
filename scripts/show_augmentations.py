"""Writes a PNG grid of training patches and augmented versions, with the mask outlined in red:

  python scripts/show_augmentations.py --config=configs/unet2d.py:synthetic --out=docs/augmentations.png
  python scripts/show_augmentations.py --config=configs/unet2d.py:vnc --out=/tmp/vnc_aug.png  # real data

Each row is one patch drawn by the training sampler: the original first, then `--columns`
augmentations by `unet_jax.training.augment.augment_batch` with the config's `augment` settings (override
them as for training, e.g. --config.augment.elastic_prob=1). It imports the installed `unet_jax`
(`pip install -e .`; or run it from the repository root as `python -m scripts.show_augmentations ...`).
"""

import io
import os
import sys
from typing import Any

import jax
import matplotlib
import numpy as np
from absl import app, flags, logging
from matplotlib import pyplot as plt
from ml_collections import config_flags
from PIL import Image

from unet_jax.errors import InputError
from unet_jax.io import data
from unet_jax.training import augment, sampling, trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/unet2d.py:synthetic", "Config file (file.py:variant).")
flags.DEFINE_string("out", "docs/augmentations.png", "PNG file to write.")
flags.DEFINE_integer("rows", 4, "Number of patches (rows).")
flags.DEFINE_integer("columns", 5, "Augmented versions per patch.")
flags.DEFINE_integer("seed", 0, "Seed of the patch sampler and the augmentation keys.")
flags.DEFINE_integer("dpi", 60, "Resolution of the PNG.")


def augmentation_grid(config: Any, rows: int, columns: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(images, masks) f32[rows, 1 + columns, H, W]: sampled 2D patches, then augmented copies."""
  if config.model.ndim != 2:
    raise InputError(f"show_augmentations draws 2D patches; got model.ndim={config.model.ndim}")
  splits = data.load_splits(config.data)
  sampler = sampling.PatchSampler.create(splits["train"], trainer.patch_shape(config), config.train.fg_fraction)
  batch = sampler.sample(np.random.default_rng(seed), rows)
  repeated = {k: np.repeat(v, columns, axis=0) for k, v in batch.items()}
  keys = jax.random.split(jax.random.PRNGKey(seed), rows * columns)
  run = jax.jit(lambda k, x, m: augment.augment_batch(k, x, m, config.augment))
  images, masks = (np.asarray(a).reshape(rows, columns, *a.shape[1:-1])
                   for a in run(keys, repeated["image"], repeated["mask"]))
  join = lambda original, augmented: np.concatenate([original[:, None, ..., 0], augmented], axis=1)
  return join(batch["image"], images), join(batch["mask"], masks)


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  matplotlib.use("Agg")
  try:
    images, masks = augmentation_grid(FLAGS.config, FLAGS.rows, FLAGS.columns, FLAGS.seed)
  except InputError as e:
    sys.exit(f"error: {e}")
  rows, columns = images.shape[:2]
  fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2 * rows + 0.3), squeeze=False)
  for r in range(rows):
    for c in range(columns):
      ax = axes[r, c]
      ax.imshow(images[r, c], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
      if masks[r, c].any():
        ax.contour(masks[r, c], levels=[0.5], colors="red", linewidths=0.8)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title("original" if c == 0 else f"augmented {c}", fontsize=9)
  fig.tight_layout(pad=0.3)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=FLAGS.dpi)
  # 64 colours (greys and the red outline) keep the file small; noisy EM texture does not compress.
  Image.open(buffer).convert("RGB").quantize(64).save(FLAGS.out, optimize=True)
  print(f"wrote {FLAGS.out} ({os.path.getsize(FLAGS.out) // 1024} KB)")


if __name__ == "__main__":
  app.run(main)
