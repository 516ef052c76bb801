"""The PyTorch twin trained from a MONAI augmentation pipeline in a DataLoader: the end-to-end peer of issue 17.

  .venv/bin/python benchmarks/torch_pipeline.py [--aug=full|none] [--workers=0] [--threads=0] [--steps=20]
      [--warmup=3] [--config=configs/unet2d.py:vnc]
  pip install -r benchmarks/requirements.txt   # torch, monai; benchmarks/end_to_end.py runs this and ours

Everything comes from our config, so both sides train alike: the U-Net shape (benchmarks/torch_unet.py,
channels_last, --threads intra-op threads, default one per core), batch, patch, fg_fraction, the loss
(train.loss and train.smooth: torch_unet.LOSSES, equal to ours), AdamW and clipping, and the augmentation
(`config.augment` after preset --aug, as ours). Patches are drawn by our `sampling.PatchSampler` (example i of batch k from the seed (seed, k, i), half of them centred on a
foreground pixel) inside the Dataset, so the sampling costs both sides the same; the MONAI transforms
(`monai_transforms`) run in `--workers` DataLoader processes (0: in the training process). Prints one
JSON line: images per second over --steps steps after --warmup, and the share of that wall time
blocked in next(DataLoader iterator).

How MONAI 1.6 reproduces our `full` preset (unet_jax/training/augment.py):
- same transforms, probabilities and ranges, in the same order: dihedral (RandRotate90 p=0.75 k in
  1..3 then RandFlip p=0.5: each of the 8 with probability 1/8), rotation, zoom, shear, elastic,
  then gamma, contrast about the mean, brightness, blur, noise, clip to [0, 1]; elastic displacement
  N(0, elastic_alpha) pixels on control points elastic_sigma apart, upsampled bicubically (identical).
- geometry: ours is ONE resampling through rotation, zoom, shear and elastic field together; MONAI has
  one probability per transform only as separate transforms, so each fired one resamples again
  (RandRotate, RandZoom, RandAffine for the shear, Rand2DElastic: up to four bilinear passes). MONAI's
  lazy resampling (Compose(lazy=True)), which would fuse the affine ones, fails in MONAI 1.6.1 as soon
  as only some of the random transforms fire ("mat1 and mat2 shapes cannot be multiplied (3x3 and
  4x4)"), so it is not used; metadata tracking is off (plain tensors), the faster setting.
- borders: ours reflects about the edge pixels (scipy 'mirror'); MONAI's grid_sample 'reflection'
  (align_corners=False) and RandZoom's 'reflect' pad are the same up to half a pixel.
- the mask: ours is resampled bilinearly and thresholded at 0.5; the same here (bilinear, then AsDiscrete).
- zoom: ours log-uniform in scale_range, MONAI uniform; shear: ours tan(angle) with the angle uniform in
  +-shear_degrees, MONAI the factor uniform in +-tan(shear_degrees) (the same to 1 %).
- gamma: ours image ** g with g log-uniform; MONAI uniform g applied to the patch rescaled to its
  own min..max (then scaled back).
- blur: ours one sigma for both axes and reflecting borders; MONAI draws sigma_x and sigma_y
  independently and pads with zeros.
"""

import math
import os
import sys
from typing import Any, Callable, Iterator

import numpy as np
from absl import app, flags

import common

FLAGS = common.define_config("configs/unet2d.py:vnc")
flags.adopt_module_key_flags(common)  # --help lists common's flags too
flags.DEFINE_enum("aug", "full", ["full", "flips", "none"], "Augmentation preset (unet_jax/training/augment.py PRESETS).")
flags.DEFINE_integer("workers", 0, "DataLoader worker processes (0: augment in the training process).")
flags.DEFINE_integer("threads", 0, "Intra-op threads of the training process (0: one per core).")
flags.DEFINE_integer("steps", 20, "Timed training steps.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first.")


def monai_transforms(a: Any) -> Any:
  """Our augmentation block `a` (config.augment) as a MONAI Compose on {'image', 'mask'} f32[1, H, W]; None if off."""
  import monai.transforms as mt  # pylint: disable=g-import-not-at-top
  keys, bilinear = ("image", "mask"), ("bilinear", "bilinear")
  geometry, intensity = [], []
  if a.flips:
    geometry += [mt.RandRotate90d(keys, prob=0.75, max_k=3), mt.RandFlipd(keys, prob=0.5, spatial_axis=0)]
  if a.rotate_prob:
    geometry.append(mt.RandRotated(keys, range_x=math.radians(a.rotate_degrees), prob=a.rotate_prob,
                                   keep_size=True, mode=bilinear, padding_mode="reflection"))
  if a.scale_prob:
    geometry.append(mt.RandZoomd(keys, prob=a.scale_prob, min_zoom=a.scale_range[0], max_zoom=a.scale_range[1],
                                 mode=bilinear, padding_mode="reflect", keep_size=True))
  if a.shear_prob:
    geometry.append(mt.RandAffined(keys, prob=a.shear_prob, shear_range=(math.tan(math.radians(a.shear_degrees)), 0.0),
                                   mode=bilinear, padding_mode="reflection"))
  if a.elastic_prob:
    geometry.append(mt.Rand2DElasticd(keys, spacing=(a.elastic_sigma,) * 2, magnitude_range=(a.elastic_alpha,) * 2,
                                      prob=a.elastic_prob, mode=bilinear, padding_mode="reflection"))
  if any(a[p] for p in ("rotate_prob", "scale_prob", "shear_prob", "elastic_prob")):
    geometry.append(mt.AsDiscreted("mask", threshold=0.5))
  if a.gamma_prob:
    intensity.append(mt.RandAdjustContrastd("image", prob=a.gamma_prob, gamma=tuple(a.gamma)))
  if a.contrast_prob:
    intensity.append(mt.RandScaleIntensityFixedMeand("image", prob=a.contrast_prob,
                                                     factors=(a.contrast[0] - 1.0, a.contrast[1] - 1.0)))
  if a.brightness_prob:
    intensity.append(mt.RandShiftIntensityd("image", prob=a.brightness_prob, offsets=a.brightness))
  if a.blur_prob:
    sigma = (0.0, a.blur_sigma)
    intensity.append(mt.RandGaussianSmoothd("image", sigma_x=sigma, sigma_y=sigma, prob=a.blur_prob))
  if a.noise_prob:
    intensity.append(mt.RandGaussianNoised("image", prob=a.noise_prob, mean=0.0, std=a.noise_std))
  if intensity:
    intensity.append(mt.ScaleIntensityRanged("image", a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True))
  if not geometry + intensity:
    return None
  return mt.Compose([mt.EnsureTyped(keys, track_meta=False), *geometry, *intensity])


class PatchDataset:
  """Item k * batch_size + i: our sampler's patch i of batch k, channels first, through `transform`."""

  def __init__(self, sampler: Any, batch_size: int, seed: int, steps: int, transform: Any):
    self.sampler, self.batch_size, self.seed, self.steps, self.transform = sampler, batch_size, seed, steps, transform

  def __len__(self) -> int:
    return self.steps * self.batch_size

  def __getitem__(self, index: int) -> dict[str, Any]:
    step, example = divmod(index, self.batch_size)
    patch = self.sampler.sample(np.random.default_rng([self.seed, step, example]), 1)
    item = {k: np.ascontiguousarray(np.moveaxis(v[0], -1, 0)) for k, v in patch.items()}
    if self.transform is None:
      return item
    return self.transform(item)


def make_loader(config: Any, workers: int, steps: int) -> Iterator[dict[str, Any]]:
  """An iterator over `steps` batches {'image', 'mask'} f32[B, C, H, W] from the config's training split."""
  import monai.data  # pylint: disable=g-import-not-at-top
  from unet_jax.io import data  # pylint: disable=g-import-not-at-top
  from unet_jax.training import sampling, trainer
  monai.data.set_track_meta(False)  # plain tensors: no metadata bookkeeping, faster
  split = data.load_splits(config.data)["train"]
  sampler = sampling.PatchSampler.create(split, trainer.patch_shape(config), config.train.fg_fraction,
                                         config.model.context_slices)
  dataset = PatchDataset(sampler, config.train.batch_size, config.seed, steps,
                         monai_transforms(config.augment))
  loader = monai.data.DataLoader(dataset, batch_size=config.train.batch_size, shuffle=False, num_workers=workers)
  return iter(loader)


def make_step(config: Any) -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
  """(step(batch), finish()): the twin's training step on a loader batch, channels_last; PyTorch is synchronous."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch_unet import make_train_step, twin  # pylint: disable=g-import-not-at-top
  from unet_jax.network.model import build_model  # pylint: disable=g-import-not-at-top
  net = twin(build_model(config.model)).to(memory_format=torch.channels_last).train()
  train_step = make_train_step(net, config)

  def step(batch: dict[str, Any]) -> None:
    image, mask = (batch[k].contiguous(memory_format=torch.channels_last) for k in ("image", "mask"))
    train_step(image, mask)
  return step, lambda: None


def main(argv: list[str]) -> None:
  del argv
  import json  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from torch_unet import LOSSES  # pylint: disable=g-import-not-at-top
  from unet_jax.training import augment  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  if config.model.ndim != 2 or config.train.loss not in LOSSES:
    sys.exit(f"error: the peer is 2D with train.loss in {sorted(LOSSES)}; got model.ndim={config.model.ndim}, "
             f"train.loss={config.train.loss!r}")
  augment.apply_preset(config, FLAGS.aug)
  torch.manual_seed(config.seed)
  torch.set_num_threads(FLAGS.threads or os.cpu_count() or 1)
  batches = make_loader(config, FLAGS.workers, FLAGS.warmup + FLAGS.steps)
  step, finish = make_step(config)
  result = common.time_steps(batches, step, finish, FLAGS.warmup, FLAGS.steps, config.train.batch_size)
  print(json.dumps({"side": "peer", "aug": FLAGS.aug, "workers": FLAGS.workers,
                    "threads": torch.get_num_threads(), "batch": config.train.batch_size,
                    "patch": config.train.patch_size, **result}))


if __name__ == "__main__":
  app.run(main)
