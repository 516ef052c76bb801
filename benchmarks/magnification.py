"""Accuracy at other pixel sizes than training's: naive, voxel-size-aware, and a model trained with zoom augmentation.

  python benchmarks/magnification.py --workdir=runs/vnc [--zoom_workdir=runs/vnc_zoom] [--factors=0.5,0.75,1,1.5,2]

The VNC test stack (../shared/data/vnc/testing.tif, 4.6 nm pixels) is resampled to each --factors multiple of
its pixel size (unet_jax/inference/magnification.py: cubic, anti-aliased when shrinking; the mask by
nearest), then segmented three ways at each checkpoint's own threshold (`Predictor.load`, the
configs/unet2d.py:vnc policy: chosen on val):
  (a) naive: --workdir's model run on the resampled pixels as they are;
  (b) aware: the same model told the input's voxel size (`Predictor.on_input`), so it resamples to its own;
  (c) zoom: --zoom_workdir's model (trained with --config=configs/unet2d.py:vnc,aug=zoom or aug=scale), naive.
Results: docs/results/magnification.md.
Prints pixel Dice and per-object F1 (2D components matched at IoU >= 0.5, predicted components under
eval.min_size scaled to the pixel size removed) as a Markdown table. A workdir trained before the voxel size was
recorded is taken to be at data.voxel_size_nm (noted).
"""

import dataclasses
import os

import numpy as np
from absl import app, flags

import common

FLAGS = common.define_config("configs/unet2d.py:vnc")
flags.DEFINE_string("workdir", None, "The VNC training run of (a) and (b).")
flags.DEFINE_string("zoom_workdir", None, "A VNC run trained with aug=zoom, for (c); omitted: (c) is not run.")
flags.DEFINE_list("factors", ["0.5", "0.75", "1", "1.5", "2"], "Pixel sizes as multiples of the data's.")
flags.DEFINE_integer("slices", 4, "Test slices used (of 4).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
  del argv
  from unet_jax.cli import common as cli  # pylint: disable=g-import-not-at-top  (device flags first)
  from unet_jax.config import check as config_check
  config = FLAGS.config
  config.data.root = config.data.root if os.path.isdir(config.data.root) else common.VNC
  if not os.path.isdir(config.data.root):
    print(f"skipped: {config.data.root} is absent")
    return
  cli.prepare(config, config_check.INFERENCE_SECTIONS, forward_only=True)
  from unet_jax.inference import magnification  # pylint: disable=g-import-not-at-top
  from unet_jax.inference.predictor import Predictor
  from unet_jax.io import data
  from unet_jax.scores import instances, metrics

  data_voxel = tuple(float(v) for v in config.data.voxel_size_nm)
  def load(workdir: str) -> Predictor:
    predictor = Predictor.load(config, workdir)
    if predictor.voxel_size_nm is None:
      print(f"note: {workdir} recorded no voxel size; taken to be data.voxel_size_nm {data_voxel}")
      predictor = dataclasses.replace(predictor, voxel_size_nm=data_voxel)
    return predictor

  models = {"naive": load(FLAGS.workdir)}
  models["aware"] = models["naive"]
  if FLAGS.zoom_workdir:
    models["zoom"] = load(FLAGS.zoom_workdir)
  test = data.load_splits(config.data)["test"]
  image, mask = test.image[:FLAGS.slices], test.mask[:FLAGS.slices].astype(np.uint8)

  def scores(predictor: Predictor, pixels: np.ndarray, truth: np.ndarray, factor: float) -> tuple[float, float]:
    pred = predictor.segment(predictor.probabilities(pixels))
    dice = metrics.pixel_scores(pred, truth)["dice"]
    min_size, min_area = (int(round(config.eval[k] / factor ** 2)) for k in ("min_size", "min_area"))
    overlaps = instances.overlaps(instances.label_instances(truth, 2),
                                  instances.label_instances(pred, 2, min_size, min_area))
    f1 = instances.instance_scores(overlaps, [0.5], np.zeros(overlaps.n_pred))[0]["f1"]
    return dice, f1

  print(f"{FLAGS.workdir} (step {models['naive'].step}), zoom: {FLAGS.zoom_workdir or '-'}; test slices "
        f"{image.shape}; load average {os.getloadavg()[0]:.2f}", flush=True)
  rows = []
  for factor in (float(f) for f in FLAGS.factors):
    shape = (image.shape[0], *(max(1, round(n / factor)) for n in image.shape[1:]))
    pixels, truth = magnification.resample(image, shape), magnification.resample(mask, shape, order=0)
    voxel = (data_voxel[1] * factor, data_voxel[2] * factor)
    row = [factor, voxel[0]]
    for name, predictor in models.items():
      ready = predictor.on_input(voxel, "resampled") if name == "aware" else predictor
      row += scores(ready, pixels, truth, factor)
      if name == "aware":
        print(f"x{factor:g}: {ready.resampling.note}", flush=True)
    rows.append(row)
  header = "| pixel size | nm | naive Dice | naive F1 | aware Dice | aware F1 |" + (
      " zoom-trained Dice | zoom-trained F1 |" if FLAGS.zoom_workdir else "")
  print("\n" + header)
  print("|" + "---|" * (header.count("|") - 1))
  for factor, nm, *values in rows:
    print(f"| x{factor:g} | {nm:.2f} | " + " | ".join(f"{v:.4f}" for v in values) + " |")


if __name__ == "__main__":
  app.run(main)
