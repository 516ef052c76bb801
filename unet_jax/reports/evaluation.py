"""Evaluation of trained checkpoints on labelled stacks: scores, morphometry, pictures, a report.

For each workdir (a trained model, its `config.eval.checkpoint`) and each split:
- probabilities from the workdir's predictor (unet_jax.inference.predictor, on the accelerator);
- a threshold: the predictor's policy (`eval.threshold`, or with `eval.select_threshold` the candidate
  of best Dice on the val split, the last training slices; stored in workdir/threshold.json, where
  every other tool reads it), and a minimum object size the same way (`eval.min_size`, or with
  `eval.select_min_size` the candidate of best instance F1 on val). Selection sees only the val split,
  never the test split;
- pixel scores over the stack and per slice (unet_jax.scores.metrics, counted under jit on the device);
- instance scores for 2D and 3D components and morphometry of true and predicted mitochondria
  (unet_jax.scores.instances, unet_jax.scores.morphometry, on the host: see instances' docstring for why);
- pictures (unet_jax.reports.figures) and CSV tables; then report.json and report.md (unet_jax.reports.report).

Pixel scores use the thresholded prediction as is; instance scores and predicted morphometry drop
predicted volume components smaller than the minimum object size first (true instances are never filtered).

Error that can be cited: every headline score gets an interval at `eval.confidence_level`
(unet_jax.scores.intervals: Wilson for per-mitochondrion precision and recall, a seeded bootstrap over
slices for pixel scores and over objects for F1 and PQ), with the number of units it rests on.
A temperature is fitted on the val split's probabilities (never test), stored in
workdir/calibration.json for the checkpoint's step, and with `eval.calibrate` applied to every
split's map before thresholding; the expected calibration error before and after, and reliability
diagrams, are reported for each split (unet_jax.scores.calibration). With `eval.uncertainty='tta'` the
map comes with a per-pixel disagreement map over the 8 dihedral transforms, and with several
workdirs with the checkpoints' disagreement; each predicted mitochondrion gets confidence
columns, and the `eval.review_top_k` least confident form a review list whose catch of spurious
detections, and the AUROC of each score, are reported (unet_jax.reports.uncertainty).
"""

import os
from typing import Any, Sequence

import numpy as np

from unet_jax.errors import InputError
from unet_jax.inference.predictor import choose_threshold, Predictor
from unet_jax.io import data, outputs, stacks
from unet_jax.reports import figures, report, uncertainty
from unet_jax.scores import calibration, instances, intervals, metrics, morphometry

SPLITS = ("train", "val", "test")


def stack_scores(probs: np.ndarray, mask: np.ndarray, threshold: float, min_size: int, eval_config: Any,
                 voxel_size_nm: Sequence[float], uncertainty_map: np.ndarray | None = None, *, min_area: int = 0,
                 ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
  """Scores of probabilities f32[Z, H, W] against a mask u8[Z, H, W] at `threshold`, and morphometry tables
  (predicted objects: components of `min_size` voxels or more, 2D ones of `min_area` pixels or more: the
  predictor's `min_size` and `min_area`).

  Returns ({'pixel', 'pixel_intervals', 'slices', 'instances': {'2d', '3d'} (rows with 'intervals'),
  'morphometry': {'true_2d', ...}, 'review': {'2d', '3d'}}, {'true_2d': table, 'pred_2d': ..., 'true_3d': ...,
  'pred_3d': ...}); predicted tables carry the confidence columns of `uncertainty.object_confidence`
  (with `uncertainty_map` f32[Z, H, W] when given) and whether each object is matched.
  """
  e = eval_config
  resampling = (e.bootstrap_resamples, e.confidence_level, e.bootstrap_seed)
  pred = probs >= threshold
  slices = metrics.slice_scores(pred, mask)
  counts = {k: sum(s[k] for s in slices) for k in metrics.COUNTS}
  slice_counts = np.array([[s[k] for k in metrics.COUNTS] for s in slices], np.int64)
  scores = {"pixel": {**counts, **metrics.scores_from_counts(counts)},
            "pixel_intervals": intervals.pixel_intervals(slice_counts, *resampling), "slices": slices,
            "instances": {}, "morphometry": {}, "review": {}}
  tables = {}
  for dims in instances.DIMS:
    true_labels = instances.label_instances(mask, dims)
    pred_labels = instances.label_instances(pred, dims, min_size, min_area)
    overlaps = instances.overlaps(true_labels, pred_labels)
    confidence = uncertainty.object_confidence(probs, pred_labels, uncertainty_map)
    rows = instances.instance_scores(overlaps, e.iou_thresholds, confidence["mean_prob"])
    for row in rows:
      iou = instances.match(overlaps, row["iou_threshold"])[2]
      row["intervals"] = intervals.instance_intervals(overlaps.n_true, overlaps.n_pred, iou, *resampling)
    scores["instances"][f"{dims}d"] = rows
    for who, labels in (("true", true_labels), ("pred", pred_labels)):
      tables[f"{who}_{dims}d"] = morphometry.measure(labels, voxel_size_nm)
      scores["morphometry"][f"{who}_{dims}d"] = morphometry.summarize(tables[f"{who}_{dims}d"])
    _, pred_index, iou = instances.match(overlaps, e.iou_thresholds[0])
    matched_iou = np.zeros(overlaps.n_pred)
    matched_iou[pred_index] = iou
    table = tables[f"pred_{dims}d"]
    table.update(confidence, matched=(matched_iou > 0).astype(np.int64), matched_iou=matched_iou)
    summary = uncertainty.review(table, matched_iou > 0, e.review_top_k, *resampling)
    columns = ("label", "centroid_z_px", "centroid_y_px", "centroid_x_px", "voxels", *uncertainty.SCORES,
               "mean_uncertainty", "matched", "matched_iou")
    summary["list"] = [{c: _plain(table[c][i]) for c in columns} for i in summary.pop("order")]
    scores["review"][f"{dims}d"] = {"iou_threshold": float(e.iou_thresholds[0]), **summary}
  return scores, tables


def _plain(value: Any) -> Any:
  """A numpy scalar as a JSON value: int, float, or None for NaN."""
  value = value.item()
  return None if isinstance(value, float) and np.isnan(value) else value


def write_stack_files(report_dir: str, folder: str, split: data.Split, pred: np.ndarray,
                      scores: dict[str, Any], tables: dict[str, dict[str, np.ndarray]], eval_config: Any,
                      save_predictions: bool = False, uncertainty_map: np.ndarray | None = None,
                      calibration_summary: dict[str, Any] | None = None) -> dict[str, Any]:
  """Writes one stack's pictures and tables into report_dir/folder; returns their relative paths.

  Pictures: overlays of `eval.report_slices` evenly spaced slices (each also next to its
  `uncertainty_map` f32[Z, H, W] when given), a montage of as many worst-Dice slices, the intensity
  histograms, the reliability diagram of `calibration_summary` when given. Tables: slices.csv,
  mitochondria_{true,pred}_{2d,3d}.csv, review_{2d,3d}.csv (the review lists).
  """
  path = lambda name: os.path.join(folder, name)
  out = lambda name: os.path.join(report_dir, folder, name)
  os.makedirs(os.path.join(report_dir, folder), exist_ok=True)
  slices = scores["slices"]
  z = split.image.shape[0]
  count = max(1, min(eval_config.report_slices, z))
  picture = lambda i, px: figures.downscale(figures.overlay(split.image[i], pred[i], split.mask[i]), px)
  files: dict[str, Any] = {"overlays": [], "uncertainty_maps": []}
  for i in np.unique(np.linspace(0, z - 1, count).round().astype(int)):
    files["overlays"].append(path(f"overlay_z{i:04d}.png"))
    figures.save_image(out(f"overlay_z{i:04d}.png"), picture(i, eval_config.figure_px))
    if uncertainty_map is not None:
      files["uncertainty_maps"].append(path(f"uncertainty_z{i:04d}.png"))
      figures.save_uncertainty_panels(out(f"uncertainty_z{i:04d}.png"), picture(i, eval_config.figure_px),
                                      [("TTA disagreement (std of 8 transforms)", uncertainty_map[i])],
                                      eval_config.figure_px)
  if calibration_summary is not None:
    c = calibration_summary
    files["reliability_diagram"] = path("reliability.png")
    figures.save_reliability_diagram(out("reliability.png"), {
        f"as predicted (ECE {c['ece_before']:.4f})": c["reliability_before"],
        f"temperature {c['temperature']:.3f} (ECE {c['ece_after']:.4f})": c["reliability_after"]},
        f"{folder}: {sum(c['reliability_before']['count']):,} pixels")
  worst = np.argsort([s["dice"] for s in slices], kind="stable")[:count]
  files["worst_slices"] = path("worst_slices.png")
  files["worst_slice_indices"] = worst.tolist()
  figures.save_montage(out("worst_slices.png"), [picture(i, eval_config.figure_px // 2) for i in worst],
                       [f"slice {i}: Dice {slices[i]['dice']:.3f}" for i in worst])
  files["intensity_histogram"] = path("intensity_histogram.png")
  figures.save_intensity_histogram(out("intensity_histogram.png"), split.image, split.mask)
  files["slices_csv"] = path("slices.csv")
  morphometry.write_csv(out("slices.csv"), {"slice": np.arange(z), **{
      k: np.array([s[k] for s in slices]) for k in slices[0]}})
  for key, table in tables.items():
    files[f"mitochondria_{key}_csv"] = path(f"mitochondria_{key}.csv")
    morphometry.write_csv(out(f"mitochondria_{key}.csv"), table)
  for dims, review in scores["review"].items():
    files[f"review_{dims}_csv"] = path(f"review_{dims}.csv")
    columns = list(review["list"][0]) if review["list"] else ["label"]
    morphometry.write_csv(out(f"review_{dims}.csv"), {"rank": np.arange(1, len(review["list"]) + 1), **{
        c: np.array([np.nan if r[c] is None else r[c] for r in review["list"]]) for c in columns}})
  if save_predictions:
    files["prediction_tif"] = path("prediction.tif")
    stacks.write_stack(out("prediction.tif"), pred.astype(np.uint8) * 255)
  return files


def uncertainty_summary(uncertainty_map: np.ndarray | None, pred: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
  """Mean per-pixel uncertainty over the stack, on wrong pixels (FP or FN) and on right ones."""
  if uncertainty_map is None:
    return {"source": None}
  wrong = pred != mask.astype(bool)
  mean = lambda where: float(uncertainty_map[where].mean()) if where.any() else None
  return {"source": "tta", "measure": "std of the probabilities over the 8 dihedral transforms",
          "mean": float(uncertainty_map.mean()), "mean_on_errors": mean(wrong), "mean_on_correct": mean(~wrong)}


def write_ensemble(report_dir: str, split: data.Split, split_name: str, probs: Sequence[np.ndarray],
                   eval_config: Any, threshold: dict[str, Any]) -> dict[str, Any]:
  """Disagreement of several checkpoints on one split: summary and pictures under report_dir/ensemble/<split>.

  The ensemble's prediction is the mean of the checkpoints' (calibrated) maps at `threshold`, the
  `choose_threshold` policy applied to the ensemble's val map.
  """
  mean, spread = uncertainty.ensemble(probs)
  pred = mean >= threshold["value"]
  folder = os.path.join("ensemble", split_name)
  os.makedirs(os.path.join(report_dir, folder), exist_ok=True)
  z = split.image.shape[0]
  maps = []
  for i in np.unique(np.linspace(0, z - 1, max(1, min(eval_config.report_slices, z))).round().astype(int)):
    maps.append(os.path.join(folder, f"uncertainty_z{i:04d}.png"))
    figures.save_uncertainty_panels(
        os.path.join(report_dir, maps[-1]),
        figures.downscale(figures.overlay(split.image[i], pred[i], split.mask[i]), eval_config.figure_px),
        [(f"disagreement of {len(probs)} checkpoints (std)", spread[i])], eval_config.figure_px)
  return {"split": split_name, "checkpoints": len(probs), "threshold": threshold,
          "pixel": metrics.pixel_scores(pred, split.mask), "uncertainty": {
              **uncertainty_summary(spread, pred, split.mask), "source": "ensemble",
              "measure": f"std of the probabilities of {len(probs)} checkpoints"}, "uncertainty_maps": maps}


def run_names(workdirs: Sequence[str]) -> list[str]:
  """Short unique names for workdirs: their base names, numbered when two are equal."""
  names = [os.path.basename(os.path.normpath(w)) or "run" for w in workdirs]
  return [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def evaluate(config: Any, workdirs: Sequence[str], report_dir: str, split_names: Sequence[str] = ("test",),
             save_predictions: bool = False, command: str | None = None) -> dict[str, Any]:
  """Evaluates each workdir's checkpoint on each split; writes the report into `report_dir`.

  report_dir gets report.json, report.md and per run <run>/training_curves.png and
  <run>/<split>/{pictures, slices.csv, mitochondria_*.csv, review_*.csv} (and prediction.tif, u8 0/255,
  when `save_predictions`), and with several workdirs and `eval.uncertainty` ensemble/<split>/ maps.
  Each workdir gets the temperature fitted on its val split in calibration.json. `command` is quoted
  in the report. Returns the report document.
  """
  if not workdirs:
    raise InputError("give at least one --workdir")
  unknown = sorted(set(split_names) - set(SPLITS))
  if unknown or not split_names:
    raise InputError(f"splits must be some of {SPLITS}, got {list(split_names)}")
  voxel_size = tuple(config.data.voxel_size_nm)
  outputs.check_writable(report_dir, "report folder")
  splits = data.load_splits(config.data)
  if config.eval.uncertainty not in uncertainty.SOURCES:
    raise InputError(f"eval.uncertainty={config.eval.uncertainty!r} must be one of {uncertainty.SOURCES}")
  runs, ensemble_inputs, ensemble_val = [], {}, []
  tta_map = config.eval.uncertainty == "tta"
  for name, workdir in zip(run_names(workdirs), workdirs):
    predictor = Predictor.restore(config, workdir)
    raw_and_map = lambda image, with_map, p=predictor: (uncertainty.tta_probabilities(p, image) if with_map
                                                        else (p.raw_probabilities(image), None))
    val = splits["val"]
    val_raw, val_uncertainty = raw_and_map(val.image, tta_map and "val" in split_names)
    predictor = predictor.decide(config, workdir, val_raw, val.mask)
    threshold = predictor.threshold
    curves = None
    if os.path.isfile(os.path.join(workdir, "log.jsonl")):
      curves = os.path.join(name, "training_curves.png")
      os.makedirs(os.path.join(report_dir, name), exist_ok=True)
      figures.save_training_curves(os.path.join(report_dir, curves), os.path.join(workdir, "log.jsonl"))
    for split_name in split_names:
      split = splits[split_name]
      if split_name == "val":
        raw, unc = val_raw, val_uncertainty
      else:
        raw, unc = raw_and_map(split.image, tta_map)
      probs = predictor.calibrate(raw)
      calib = calibration.calibration_summary(raw, split.mask, predictor.fitted_temperature,
                                              config.eval.calibration_bins)
      calib.update(applied=bool(config.eval.calibrate), fitted_on="val", in_sample=split_name == "val")
      scores, tables = stack_scores(probs, split.mask, threshold["value"], predictor.min_size, config.eval,
                                    voxel_size, unc, min_area=predictor.min_area)
      files = write_stack_files(report_dir, os.path.join(name, split_name), split, predictor.segment(probs),
                                scores, tables, config.eval, save_predictions, unc, calib)
      runs.append({"run": name, "workdir": workdir, "checkpoint": config.eval.checkpoint,
                   "step": predictor.step, "split": split_name, "shape": list(split.image.shape),
                   "threshold": threshold, "training_curves": curves, "files": files, "calibration": calib,
                   "uncertainty": uncertainty_summary(unc, predictor.segment(probs), split.mask), **scores})
      if tta_map and len(workdirs) > 1:
        ensemble_inputs.setdefault(split_name, []).append(probs)
    ensemble_val.append(predictor.calibrate(val_raw))
  ensembles = []
  if ensemble_inputs:
    threshold = choose_threshold(config.eval, np.mean(ensemble_val, 0), splits["val"].mask)
    ensembles = [write_ensemble(report_dir, splits[n], n, probs, config.eval, threshold)
                 for n, probs in ensemble_inputs.items()]
  result = report.build(config, runs, command, ensembles)
  report.write(report_dir, result)
  return result
