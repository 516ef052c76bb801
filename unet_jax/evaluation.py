"""Evaluation of trained checkpoints on labelled stacks: scores, morphometry, pictures, a report.

For each workdir (a trained model, its `config.eval.checkpoint`) and each split:
- probabilities by sliding-window inference (unet_jax.inference, on the accelerator);
- a threshold: `eval.threshold`, or with `eval.select_threshold` the candidate of best Dice on the
  val split (the last training slices). Selection sees only the val split, never the test split;
- pixel scores over the stack and per slice (unet_jax.metrics, counted under jit on the device);
- instance scores for 2D and 3D components and morphometry of true and predicted mitochondria
  (unet_jax.instances, unet_jax.morphometry, on the host: see instances' docstring for why);
- pictures (unet_jax.figures) and CSV tables; then report.json and report.md (unet_jax.report).

Pixel scores use the thresholded prediction as is; instance scores and predicted morphometry drop
predicted components smaller than `eval.min_size` voxels first (true instances are never filtered).
"""

import json
import os
from typing import Any, Sequence

import numpy as np

from unet_jax import checkpoint, data, figures, inference, instances, metrics, morphometry, report
from unet_jax.errors import InputError
from unet_jax.model import abstract_variables, build_model

SPLITS = ("train", "val", "test")


def check_eval_config(eval_config: Any) -> None:
  """Raises InputError for report settings that cannot work."""
  e = eval_config
  problems = [
      (not 0.0 < e.threshold < 1.0, f"eval.threshold={e.threshold} must be in (0, 1)"),
      (not e.threshold_candidates or not all(0.0 < t < 1.0 for t in e.threshold_candidates),
       f"eval.threshold_candidates={e.threshold_candidates!r} must be numbers in (0, 1)"),
      (not e.iou_thresholds or not all(0.0 < t <= 1.0 for t in e.iou_thresholds),
       f"eval.iou_thresholds={e.iou_thresholds!r} must be numbers in (0, 1]"),
      (e.min_size < 0, f"eval.min_size={e.min_size} must be >= 0 voxels"),
      (e.report_slices < 1, f"eval.report_slices={e.report_slices} must be >= 1"),
      (e.figure_px < 32, f"eval.figure_px={e.figure_px} must be >= 32 pixels")]
  for bad, message in problems:
    if bad:
      raise InputError(message)


def choose_threshold(eval_config: Any, val_probs: np.ndarray | None = None,
                     val_mask: np.ndarray | None = None) -> dict[str, Any]:
  """{'value', 'source', ...}: `eval.threshold`, or the best-Dice candidate on the val split.

  With eval.select_threshold, `val_probs` f32[Z, H, W] and `val_mask` must be the val split's;
  the result then lists every candidate with its val Dice.
  """
  if not eval_config.select_threshold:
    return {"value": float(eval_config.threshold), "source": "config eval.threshold"}
  if val_probs is None or val_mask is None:
    raise InputError("eval.select_threshold needs the val split's probabilities and mask")
  candidates = [float(t) for t in eval_config.threshold_candidates]
  best, dice = metrics.best_dice_threshold(val_probs, val_mask, candidates)
  return {"value": best, "source": f"best Dice on the val split over {len(candidates)} candidates",
          "val_dice": float(max(dice)), "candidates": candidates, "candidate_val_dice": dice}


def stack_scores(probs: np.ndarray, mask: np.ndarray, threshold: float, eval_config: Any,
                 voxel_size_nm: Sequence[float]) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
  """Scores of probabilities f32[Z, H, W] against a mask u8[Z, H, W], and morphometry tables.

  Returns ({'pixel', 'slices', 'instances': {'2d', '3d'}, 'morphometry': {'true_2d', ...}},
  {'true_2d': table, 'pred_2d': ..., 'true_3d': ..., 'pred_3d': ...}).
  """
  pred = probs >= threshold
  slices = metrics.slice_scores(pred, mask)
  counts = {k: sum(s[k] for s in slices) for k in metrics.COUNTS}
  scores = {"pixel": {**counts, **metrics.scores_from_counts(counts)}, "slices": slices,
            "instances": {}, "morphometry": {}}
  tables = {}
  for dims in instances.DIMS:
    true_labels = instances.label_instances(mask, dims)
    pred_labels = instances.label_instances(pred, dims, eval_config.min_size)
    overlaps = instances.overlaps(true_labels, pred_labels)
    scores["instances"][f"{dims}d"] = instances.instance_scores(
        overlaps, eval_config.iou_thresholds, instances.mean_inside(probs, pred_labels))
    for who, labels in (("true", true_labels), ("pred", pred_labels)):
      tables[f"{who}_{dims}d"] = morphometry.measure(labels, voxel_size_nm)
      scores["morphometry"][f"{who}_{dims}d"] = morphometry.summarize(tables[f"{who}_{dims}d"])
  return scores, tables


def write_stack_files(report_dir: str, folder: str, split: data.Split, pred: np.ndarray,
                      scores: dict[str, Any], tables: dict[str, dict[str, np.ndarray]], eval_config: Any,
                      save_predictions: bool = False) -> dict[str, Any]:
  """Writes one stack's pictures and tables into report_dir/folder; returns their relative paths.

  Pictures: overlays of `eval.report_slices` evenly spaced slices, a montage of as many worst-Dice
  slices, the intensity histograms. Tables: slices.csv, mitochondria_{true,pred}_{2d,3d}.csv.
  """
  path = lambda name: os.path.join(folder, name)
  out = lambda name: os.path.join(report_dir, folder, name)
  os.makedirs(os.path.join(report_dir, folder), exist_ok=True)
  slices = scores["slices"]
  z = split.image.shape[0]
  count = max(1, min(eval_config.report_slices, z))
  picture = lambda i, px: figures.downscale(figures.overlay(split.image[i], pred[i], split.mask[i]), px)
  files: dict[str, Any] = {"overlays": []}
  for i in np.unique(np.linspace(0, z - 1, count).round().astype(int)):
    files["overlays"].append(path(f"overlay_z{i:04d}.png"))
    figures.save_image(out(f"overlay_z{i:04d}.png"), picture(i, eval_config.figure_px))
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
  if save_predictions:
    files["prediction_tif"] = path("prediction.tif")
    data.write_stack(out("prediction.tif"), pred.astype(np.uint8) * 255)
  return files


def run_names(workdirs: Sequence[str]) -> list[str]:
  """Short unique names for workdirs: their base names, numbered when two are equal."""
  names = [os.path.basename(os.path.normpath(w)) or "run" for w in workdirs]
  return [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def evaluate(config: Any, workdirs: Sequence[str], report_dir: str, split_names: Sequence[str] = ("test",),
             save_predictions: bool = False, command: str | None = None) -> dict[str, Any]:
  """Evaluates each workdir's checkpoint on each split; writes the report into `report_dir`.

  report_dir gets report.json, report.md and per run <run>/training_curves.png and
  <run>/<split>/{pictures, slices.csv, mitochondria_*.csv} (and prediction.tif, u8 0/255, when
  `save_predictions`). `command` is quoted in the report. Returns the report document.
  """
  if not workdirs:
    raise InputError("give at least one --workdir")
  unknown = sorted(set(split_names) - set(SPLITS))
  if unknown or not split_names:
    raise InputError(f"splits must be some of {SPLITS}, got {list(split_names)}")
  check_eval_config(config.eval)
  voxel_size = morphometry.check_voxel_size(config.data.voxel_size_nm)
  splits = data.load_splits(config.data)
  model = build_model(config.model)
  runs = []
  for name, workdir in zip(run_names(workdirs), workdirs):
    variables, step = checkpoint.restore_variables(workdir, abstract_variables(model), config.eval.checkpoint)
    val_probs = None
    if config.eval.select_threshold:
      val_probs = inference.predict_stack(model, variables, splits["val"].image, config.eval)
    threshold = choose_threshold(config.eval, val_probs, splits["val"].mask)
    curves = None
    if os.path.isfile(os.path.join(workdir, "log.jsonl")):
      curves = os.path.join(name, "training_curves.png")
      os.makedirs(os.path.join(report_dir, name), exist_ok=True)
      figures.save_training_curves(os.path.join(report_dir, curves), os.path.join(workdir, "log.jsonl"))
    for split_name in split_names:
      split = splits[split_name]
      if split_name == "val" and val_probs is not None:
        probs = val_probs
      else:
        probs = inference.predict_stack(model, variables, split.image, config.eval)
      scores, tables = stack_scores(probs, split.mask, threshold["value"], config.eval, voxel_size)
      files = write_stack_files(report_dir, os.path.join(name, split_name), split, probs >= threshold["value"],
                                scores, tables, config.eval, save_predictions)
      runs.append({"run": name, "workdir": workdir, "checkpoint": config.eval.checkpoint,
                   "step": int(step), "split": split_name, "shape": list(split.image.shape),
                   "threshold": threshold, "training_curves": curves, "files": files, **scores})
  result = report.build(config, runs, command)
  report.write(report_dir, result)
  return result
