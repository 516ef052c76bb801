"""Cost of each part of the evaluation report on one stack (no model: a fixed stand-in prediction):

  python benchmarks/evaluation_cost.py [--slices=4] [--size=1024] [--repeats=3] [--workdir=runs/vnc]

Uses the real VNC test stack when ../shared/data/vnc holds it (4 x 1024 x 1024), else a synthetic
stack of --slices x --size x --size. The stand-in probabilities are the blurred truth plus seeded
smooth noise, so that mitochondria are split, merged, missed and spurious as in a real prediction. Prints
the median seconds of: pixel counts per slice (jit), a 19-threshold sweep (jit histogram, and the
NumPy loop it replaces), instance labelling + matching + scores in 2D and 3D, morphometry, and the
pictures, so the host-side (scipy / scikit-image) parts can be weighed against inference. Then the
cost of the error-bar additions: intervals (bootstrap, Wilson), calibration (temperature fit, ECE),
per-object confidence with the review list and AUROC intervals, and their pictures; with --workdir
(a trained model of the same config), inference without and with the TTA uncertainty map.
"""

import os
import statistics
import tempfile
import time

import numpy as np
from absl import app, flags
from scipy import ndimage

import common
from unet_jax.inference.predictor import Predictor
from unet_jax.io import checkpoint, data, synthetic
from unet_jax.network.model import abstract_variables, build_model
from unet_jax.reports import evaluation, figures, uncertainty
from unet_jax.scores import calibration, instances, intervals, metrics, morphometry
from unet_jax.training import parallel

FLAGS = flags.FLAGS
flags.DEFINE_integer("slices", 4, "Slices of the synthetic stack (when the VNC data is absent).")
flags.DEFINE_integer("size", 1024, "Height and width of the synthetic stack.")
flags.DEFINE_integer("repeats", 3, "Timed runs per part (the median is printed).")
flags.DEFINE_string("workdir", None, "Also time inference with and without TTA uncertainty with this model.")

VNC = common.VNC


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
  parallel.use_inference_kernels()  # before JAX starts, as in evaluate.py
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
  config = common.load_config("configs/unet2d.py:vnc").eval
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
    pred_labels = instances.label_instances(pred, dims, config.min_size, config.min_area)
    ov = instances.overlaps(true_labels, pred_labels)
    return instances.instance_scores(ov, config.iou_thresholds, instances.mean_inside(probs, pred_labels))

  labels_3d = instances.label_instances(split.mask, 3)
  scores, tables = evaluation.stack_scores(probs, split.mask, 0.5, config.min_size, config, (50.0, 4.6, 4.6),
                                           min_area=config.min_area)
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
            lambda: evaluation.stack_scores(probs, split.mask, 0.5, config.min_size, config, (50.0, 4.6, 4.6),
                                           min_area=config.min_area),
        "pictures + CSVs (write_stack_files)":
            lambda: evaluation.write_stack_files(out, "s", split, pred, scores, tables, config),
    }
    for name, fn in parts.items():
      print(f"{_median_seconds(fn, FLAGS.repeats):8.3f} s  {name}")
  additions(split, probs, config)
  at = {r["iou_threshold"]: r for r in scores["instances"]["2d"]}
  print(f"2D instances: {at[0.5]['n_true']} true, {at[0.5]['n_pred']} predicted; F1@0.5 {at[0.5]['f1']:.3f}, "
        f"AP-75 {at[0.75]['ap']:.3f}")


def additions(split: data.Split, probs: np.ndarray, config) -> None:
  """Prints the median seconds of each error-bar addition to the report on this stack."""
  rng = np.random.default_rng(1)
  unc = np.abs(ndimage.gaussian_filter(rng.standard_normal(probs.shape).astype(np.float32), (0, 6, 6)))
  unc = (0.5 * unc / unc.max()).astype(np.float32)
  pred = probs >= 0.5
  resampling = (config.bootstrap_resamples, config.confidence_level, config.bootstrap_seed)
  counts = metrics.slice_counts(pred, split.mask)
  labels = {d: (instances.label_instances(split.mask, d),
                instances.label_instances(pred, d, config.min_size, config.min_area))
            for d in instances.DIMS}
  overlaps = {d: instances.overlaps(*labels[d]) for d in instances.DIMS}

  def instance_intervals():
    return [intervals.instance_intervals(ov.n_true, ov.n_pred, instances.match(ov, t)[2], *resampling)
            for ov in overlaps.values() for t in config.iou_thresholds]

  def confidence_and_review():
    for d, ov in overlaps.items():
      table = uncertainty.object_confidence(probs, labels[d][1], unc)
      matched = np.zeros(ov.n_pred, bool)
      matched[instances.match(ov, config.iou_thresholds[0])[1]] = True
      uncertainty.review(table, matched, config.review_top_k, *resampling)

  temperature = calibration.fit_temperature(probs, split.mask)
  summary = calibration.calibration_summary(probs, split.mask, temperature, config.calibration_bins)
  with tempfile.TemporaryDirectory() as out:
    parts = {
        f"pixel intervals: bootstrap over slices, {config.bootstrap_resamples} resamples":
            lambda: intervals.pixel_intervals(counts, *resampling),
        "instance intervals: Wilson + bootstrap over objects, 2D and 3D, each IoU threshold": instance_intervals,
        "temperature fit (log-loss over all pixels)": lambda: calibration.fit_temperature(probs, split.mask),
        "ECE and log-loss before/after temperature": lambda: calibration.calibration_summary(
            probs, split.mask, temperature, config.calibration_bins),
        "per-object confidence + review list + AUROC intervals, 2D and 3D": confidence_and_review,
        "reliability diagram PNG": lambda: figures.save_reliability_diagram(
            os.path.join(out, "r.png"), {"before": summary["reliability_before"], "after": summary["reliability_after"]}),
        "uncertainty panel PNG, one slice": lambda: figures.save_uncertainty_panels(
            os.path.join(out, "u.png"), figures.downscale(figures.overlay(split.image[0], pred[0], split.mask[0]),
                                                          config.figure_px), [("TTA", unc[0])], config.figure_px),
    }
    for name, fn in parts.items():
      print(f"{_median_seconds(fn, FLAGS.repeats):8.3f} s  {name}")
  if FLAGS.workdir:
    model_config = common.load_config("configs/unet2d.py:vnc").model
    model = build_model(model_config)
    variables, step = checkpoint.restore_variables(FLAGS.workdir, abstract_variables(model), "best")
    image = split.image
    config.tta = "none"
    predictor = Predictor.create(model, variables, config, step)
    timed = {"inference, eval.tta=none (the report without uncertainty)":
                 lambda: predictor.raw_probabilities(image),
             "inference + TTA uncertainty map (8 dihedral transforms)":
                 lambda: uncertainty.tta_probabilities(predictor, image)}
    for name, fn in timed.items():
      print(f"{_median_seconds(fn, 1):8.3f} s  {name} (step {step}, {image.shape[0]} slices)")


if __name__ == "__main__":
  app.run(main)
