"""Cost of each part of the evaluation report on one stack (no model: a fixed stand-in prediction):

  python benchmarks/evaluation_cost.py [--slices=4] [--size=1024] [--repeats=3]

Uses the real VNC test stack when ../shared/data/vnc holds it (4 x 1024 x 1024), else a synthetic
stack of --slices x --size x --size. The stand-in probabilities are the blurred truth plus seeded
smooth noise, so that mitochondria are split, merged, missed and spurious as in a real prediction. Prints
the median seconds of: pixel counts per slice (jit), a 19-threshold sweep (jit histogram, and the
NumPy loop it replaces), instance labelling + matching + scores in 2D and 3D, morphometry, and the
pictures, so the host-side (scipy / scikit-image) parts can be weighed against inference.
"""

import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
from scipy import ndimage

from configs import unet2d
from unet_jax import data, evaluation, instances, metrics, morphometry, synthetic

FLAGS = flags.FLAGS
flags.DEFINE_integer("slices", 4, "Slices of the synthetic stack (when the VNC data is absent).")
flags.DEFINE_integer("size", 1024, "Height and width of the synthetic stack.")
flags.DEFINE_integer("repeats", 3, "Timed runs per part (the median is printed).")

VNC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "vnc")


def _median_seconds(fn, repeats: int) -> float:
  fn()  # compile / warm up, not timed
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv: list[str]) -> None:
  del argv
  if os.path.isfile(os.path.join(VNC, "testing.tif")):
    split = data.load_pair(os.path.join(VNC, "testing.tif"), os.path.join(VNC, "testing_groundtruth.tif"))
    source = "VNC test stack"
  else:
    split = data.make_split(*synthetic.make_stack(0, FLAGS.slices, (FLAGS.size, FLAGS.size)))
    source = "synthetic stack"
  rng = np.random.default_rng(0)
  blurred = ndimage.gaussian_filter(split.mask.astype(np.float32), (0, 4, 4))
  blobs = ndimage.gaussian_filter(rng.standard_normal(split.mask.shape).astype(np.float32), (0, 12, 12))
  probs = np.clip(blurred + 0.25 * blobs / blobs.std(), 0, 1)
  config = unet2d.get_config("vnc").eval
  candidates = [float(t) for t in config.threshold_candidates]
  pred = probs >= 0.5
  print(f"{source} {split.mask.shape}; stand-in pixel Dice {metrics.pixel_scores(pred, split.mask)['dice']:.3f}")

  def numpy_sweep():
    return [metrics.scores_from_counts({"tp": int(np.count_nonzero((probs >= t) & (split.mask > 0))),
                                        "fp": int(np.count_nonzero((probs >= t) & (split.mask == 0))),
                                        "fn": int(np.count_nonzero((probs < t) & (split.mask > 0))), "tn": 0})
            for t in candidates]

  def instance_part(dims):
    true_labels = instances.label_instances(split.mask, dims)
    pred_labels = instances.label_instances(pred, dims, config.min_size)
    ov = instances.overlaps(true_labels, pred_labels)
    return instances.instance_scores(ov, config.iou_thresholds, instances.mean_inside(probs, pred_labels))

  labels_3d = instances.label_instances(split.mask, 3)
  scores, tables = evaluation.stack_scores(probs, split.mask, 0.5, config, (50.0, 4.6, 4.6))
  with tempfile.TemporaryDirectory() as out:
    parts = {
        "pixel counts per slice (jit)": lambda: metrics.slice_scores(pred, split.mask),
        f"threshold sweep, {len(candidates)} thresholds (jit histogram)":
            lambda: metrics.threshold_counts(probs, split.mask, candidates),
        f"threshold sweep, {len(candidates)} thresholds (NumPy loop)": numpy_sweep,
        "instances 2D: label + match + scores": lambda: instance_part(2),
        "instances 3D: label + match + scores": lambda: instance_part(3),
        "morphometry 3D (regionprops)": lambda: morphometry.measure(labels_3d, (50.0, 4.6, 4.6)),
        "stack_scores (all of the above but the sweep)":
            lambda: evaluation.stack_scores(probs, split.mask, 0.5, config, (50.0, 4.6, 4.6)),
        "pictures + CSVs (write_stack_files)":
            lambda: evaluation.write_stack_files(out, "s", split, pred, scores, tables, config),
    }
    for name, fn in parts.items():
      print(f"{_median_seconds(fn, FLAGS.repeats):8.3f} s  {name}")
  at = {r["iou_threshold"]: r for r in scores["instances"]["2d"]}
  print(f"2D instances: {at[0.5]['n_true']} true, {at[0.5]['n_pred']} predicted; F1@0.5 {at[0.5]['f1']:.3f}, "
        f"AP-75 {at[0.75]['ap']:.3f}")


if __name__ == "__main__":
  app.run(main)
