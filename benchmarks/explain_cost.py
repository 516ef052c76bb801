"""Seconds per object for each explanation method, and for ranking every filter on the validation split.

  python benchmarks/explain_cost.py --config=configs/unet2d.py:vnc --workdir=runs/vnc

Explains the largest predicted mitochondrion of test slice 0 on its crop (config.explain.crop, 0:
eval.window) twice with `explanation.explain_object` and prints the second (warm, compiled) run's
seconds per method next to the first's (compilation included); then ranks every filter of the
network by its validation Dice drop (config.explain.dice_tiles tiles) once and prints its seconds.
"""

import os
import time

from absl import app, flags, logging

import common

FLAGS = common.define_config("configs/unet2d.py:vnc")
flags.adopt_module_key_flags(common)  # --help lists common's flags too
flags.DEFINE_string("workdir", "runs/vnc", "Training directory holding the checkpoint.")


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  from unet_jax.training import parallel  # pylint: disable=g-import-not-at-top
  parallel.use_host_devices(FLAGS.config.host_devices)
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from unet_jax.explain import explanation, probe
  from unet_jax.inference import windows
  from unet_jax.inference.predictor import Predictor
  from unet_jax.io import checkpoint, data
  from unet_jax.network.model import abstract_variables, build_model

  config = FLAGS.config
  model = build_model(config.model)
  variables, step = checkpoint.restore_variables(FLAGS.workdir, abstract_variables(model), config.eval.checkpoint)
  splits = data.load_splits(config.data)
  image, truth = splits["test"].image[0], splits["test"].mask[0].astype(bool)
  probs = Predictor.create(model, variables, config.eval, step).raw_probabilities(image)
  objects = explanation.slice_objects(probs >= config.eval.threshold, truth, config.eval.min_size,
                                      config.eval.iou_thresholds[0], config.eval.min_area)
  crop = config.explain.crop or windows.window_settings(config.eval, 2)["window"][0]
  sizes = np.bincount(objects.pred_labels.ravel())
  [target] = explanation.parse_objects(str(int(np.argmax(sizes[1:]) + 1)), objects, crop)
  y0, x0, y1, x1 = target.box
  args = (model, variables, image[y0:y1, x0:x1], target.pixels[y0:y1, x0:x1].astype(np.float32), config.explain,
          jax.random.PRNGKey(0))
  first = explanation.explain_object(*args)["seconds"]
  result = explanation.explain_object(*args)
  warm = result["seconds"]
  channels = sum(probe.block_channels(model, b) for b in probe.block_names(model))
  print(f"model step {step}, {jax.devices()[0].platform} x{jax.device_count()}, {os.cpu_count()} cores; "
        f"object {target.name} ({int(target.pixels.sum())} px) on a {y1 - y0}x{x1 - x0} crop; "
        f"IG steps used (black, blurred) {result['ig_black']['steps']}, {result['ig_blurred']['steps']}; "
        f"sanity_steps {config.explain.sanity_steps}; {channels} filters")
  print("| method | seconds per object (warm) | first call, compile included |")
  print("|---|---|---|")
  for name in warm:
    print(f"| {name} | {warm[name]:.1f} | {first[name]:.1f} |")
  print(f"| total | {sum(warm.values()):.1f} | {sum(first.values()):.1f} |")
  tiles, masks = explanation.validation_tiles(splits["val"].image, splits["val"].mask, crop, config.explain.dice_tiles)
  seconds: dict[str, float] = {}
  start = time.perf_counter()
  explanation.rank_filters_on_validation(model, variables, tiles, masks, config.eval.threshold, config.explain, seconds)
  print(f"ranking all {channels} filters by validation Dice on {len(tiles)} tiles of {tiles.shape[1]} px: "
        f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  app.run(main)
