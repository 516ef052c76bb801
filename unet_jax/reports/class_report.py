"""evaluate.py's report for multi-class models: per-class scores with intervals, per-object scores of the object
classes, calibration, pictures in class colours and review lists.

For every workdir's `eval.checkpoint` (model.num_classes = K > 1) and every split:
- class probabilities f32[Z, H, W, K] through the predictor's sliding windows; a temperature fitted on the val
  split's (never test), stored in workdir/calibration.json for the checkpoint's step (`Predictor.decide`) and
  with `eval.calibrate` applied to every split's map. The argmax label map (`Predictor.label_map`) and its
  scores are the same either way (unet_jax.scores.class_calibration);
- per-class Dice, IoU, precision and recall from the confusion matrix, with bootstrap intervals over slices, and
  the mean Dice and IoU with theirs (unet_jax.scores.classes);
- for each class of `eval.object_classes`, its 2D and 3D components scored per object at `eval.iou_thresholds`
  with intervals, and for each predicted object a doubt score; the `eval.review_top_k` most doubtful form the
  class's review list (unet_jax.reports.uncertainty);
- top-label and per-class reliability before and after the temperature;
- pictures of `eval.report_slices` evenly spaced slices in class colours (truth, prediction, each class's TP, FP
  and FN), reliability diagrams; per-slice scores, object tables and review lists as CSV; with
  `save_predictions` the label map as labels.tif (u8 class ids).
Writes class_report.json and class_report.md (unet_jax.reports.class_markdown) in the report folder.
"""

import datetime
import os
from typing import Any, Sequence

import numpy as np

from unet_jax.errors import InputError
from unet_jax.inference.predictor import Predictor
from unet_jax.io import data, outputs, stacks
from unet_jax.reports import class_markdown, evaluation, figures, uncertainty
from unet_jax.scores import class_calibration, classes, instances, intervals, morphometry

REVIEW_COLUMNS = ("label", "centroid_z_px", "centroid_y_px", "centroid_x_px", "voxels", "doubt", "confidence",
                  "mean_prob", "boundary_sharpness", "matched", "matched_iou")


def class_names(config: Any) -> list[str]:
  """One name per class: `data.class_names`, or the class ids as text."""
  names = list(config.data.get("class_names", ()))
  return names or [str(c) for c in range(config.model.num_classes)]


def _value(value: Any) -> Any:
  """A numpy scalar as a JSON value: int, float, or None for NaN."""
  value = value.item()
  return None if isinstance(value, float) and np.isnan(value) else value


def object_class_scores(probs: np.ndarray, labels: np.ndarray, truth: np.ndarray, class_id: int, eval_config: Any,
                        voxel_size_nm: Sequence[float]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """Per-object scores and review lists of one object class, 2D and 3D components.

  `probs` f32[Z, H, W, K] (as the report uses them), `labels` the predicted label map, `truth` the true one.
  Returns ({'2d': instance score rows, '3d': ...}, {'2d': review, '3d': ...}, {'2d': table of the predicted
  objects (morphometry, doubt, matched), '3d': ...}).
  """
  e = eval_config
  resampling = (e.bootstrap_resamples, e.confidence_level, e.bootstrap_seed)
  scores, reviews, tables = {}, {}, {}
  for dims in instances.DIMS:
    rows, ov, pred_labels = classes.object_scores(labels, truth, probs[..., class_id], class_id, dims, e.min_size,
                                                  e.iou_thresholds, resampling, e.get("min_area", 0))
    _, pred_index, iou = instances.match(ov, e.iou_thresholds[0])
    matched_iou = np.zeros(ov.n_pred)
    matched_iou[pred_index] = iou
    table = morphometry.measure(pred_labels, voxel_size_nm)
    table.update(uncertainty.class_object_doubt(probs, pred_labels, class_id),
                 matched=(matched_iou > 0).astype(np.int64), matched_iou=matched_iou)
    review = uncertainty.review(table, matched_iou > 0, e.review_top_k, *resampling, scores=uncertainty.CLASS_SCORES)
    review["list"] = [{c: _value(table[c][i]) for c in REVIEW_COLUMNS} for i in review.pop("order")]
    key = f"{dims}d"
    scores[key], reviews[key], tables[key] = rows, {"iou_threshold": float(e.iou_thresholds[0]), **review}, table
  return scores, reviews, tables


def stack_class_scores(probs: np.ndarray, labels: np.ndarray, truth: np.ndarray, eval_config: Any,
                       voxel_size_nm: Sequence[float]) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
  """Scores of a label map u8[Z, H, W] (from `probs` f32[Z, H, W, K]) against the true one.

  Returns ({pixel scores of classes.scores_from_confusion, 'confusion', 'intervals', 'slices' (per-slice Dice
  per class), 'objects': {class id: {'2d', '3d'}}, 'review': {class id: {'2d', '3d'}}}, {'c<id>_<dims>d':
  predicted object table}).
  """
  e = eval_config
  k = probs.shape[-1]
  confusions = classes.slice_confusions(labels, truth, k)
  matrix = confusions.sum(0)
  slice_dice = intervals.PIXEL_STATISTICS["dice"](classes.one_vs_rest_counts(confusions))  # [Z, K]
  scores = {**classes.scores_from_confusion(matrix), "confusion": matrix.tolist(),
            "intervals": classes.class_intervals(confusions, e.bootstrap_resamples, e.confidence_level,
                                                 e.bootstrap_seed),
            "slices": [{"dice": d.tolist(), "mean_dice": float(d.mean())} for d in slice_dice],
            "objects": {}, "review": {}}
  tables = {}
  for c in e.get("object_classes", ()):
    objects, review, found = object_class_scores(probs, labels, truth, c, e, voxel_size_nm)
    scores["objects"][str(c)], scores["review"][str(c)] = objects, review
    tables.update({f"c{c}_{dims}": table for dims, table in found.items()})
  return scores, tables


def write_class_files(report_dir: str, folder: str, split: data.Split, labels: np.ndarray, scores: dict[str, Any],
                      tables: dict[str, dict[str, np.ndarray]], calibration: dict[str, Any], names: Sequence[str],
                      eval_config: Any, save_predictions: bool = False) -> dict[str, Any]:
  """Writes one stack's pictures and tables into report_dir/folder; returns their paths relative to report_dir.

  Pictures: classes_z<z>.png for `eval.report_slices` evenly spaced slices (`figures.save_class_panels`),
  reliability.png (top label, before and after T), reliability_classes.png (each class, as the report uses the
  map). Tables: slices.csv (Dice per class per slice), objects_c<id>_<dims>.csv (every predicted object of an
  object class), review_c<id>_<dims>.csv (its review list). With `save_predictions`: labels.tif.
  """
  path = lambda name: os.path.join(folder, name)
  out = lambda name: os.path.join(report_dir, folder, name)
  os.makedirs(os.path.join(report_dir, folder), exist_ok=True)
  z = split.image.shape[0]
  files: dict[str, Any] = {"class_maps": []}
  for i in np.unique(np.linspace(0, z - 1, max(1, min(eval_config.report_slices, z))).round().astype(int)):
    files["class_maps"].append(path(f"classes_z{i:04d}.png"))
    figures.save_class_panels(out(f"classes_z{i:04d}.png"), split.image[i], split.mask[i], labels[i], names,
                              eval_config.figure_px, f"{folder}, slice {i}")
  c = calibration
  files["reliability_diagram"] = path("reliability.png")
  figures.save_reliability_diagram(out("reliability.png"), {
      f"as predicted (top-label ECE {c['before']['top_label']['ece']:.4f})": c["before"]["top_label"]["reliability"],
      f"temperature {c['temperature']:.3f} (ECE {c['after']['top_label']['ece']:.4f})":
          c["after"]["top_label"]["reliability"]},
      f"{folder}: largest class probability", "observed fraction correct")
  used = c["after" if c["applied"] else "before"]
  files["class_reliability_diagram"] = path("reliability_classes.png")
  figures.save_reliability_diagram(out("reliability_classes.png"), {
      f"{name} (ECE {entry['ece']:.4f})": entry["reliability"] for name, entry in zip(names, used["per_class"])},
      f"{folder}: each class one-vs-rest, " + ("after T" if c["applied"] else "as predicted"),
      "observed fraction of the class")
  files["slices_csv"] = path("slices.csv")
  dice = np.array([s["dice"] for s in scores["slices"]]).reshape(z, len(names))
  morphometry.write_csv(out("slices.csv"), {"slice": np.arange(z), "mean_dice": dice.mean(1),
                                            **{f"dice_{c}": dice[:, c] for c in range(len(names))}})
  for key, table in tables.items():
    files[f"objects_{key}_csv"] = path(f"objects_{key}.csv")
    morphometry.write_csv(out(f"objects_{key}.csv"), table)
  for class_id, by_dims in scores["review"].items():
    for dims, review in by_dims.items():
      key = f"c{class_id}_{dims}"
      files[f"review_{key}_csv"] = path(f"review_{key}.csv")
      morphometry.write_csv(out(f"review_{key}.csv"), {"rank": np.arange(1, len(review["list"]) + 1), **{
          col: np.array([np.nan if r[col] is None else r[col] for r in review["list"]]) for col in REVIEW_COLUMNS}})
  if save_predictions:
    files["labels_tif"] = path("labels.tif")
    stacks.write_stack(out("labels.tif"), labels.astype(np.uint8))
  return files


def evaluate_classes(config: Any, workdirs: Sequence[str], report_dir: str, splits: Sequence[str],
                     save_predictions: bool = False, command: str | None = None) -> dict[str, Any]:
  """Scores every workdir's `eval.checkpoint` on every split; writes class_report.json, class_report.md and each
  run's <run>/<split>/ pictures and tables into `report_dir`; returns the report document."""
  if not workdirs:
    raise InputError("give at least one --workdir")
  unknown = sorted(set(splits) - set(evaluation.SPLITS))
  if unknown or not splits:
    raise InputError(f"splits must be some of {evaluation.SPLITS}, got {list(splits)}")
  outputs.check_writable(report_dir, "report folder")
  k, e = config.model.num_classes, config.eval
  names = class_names(config)
  stacks_by_split = data.load_splits(config.data, k)
  voxel_size = tuple(config.data.voxel_size_nm)
  runs = []
  for name, workdir in zip(evaluation.run_names(workdirs), workdirs):
    predictor = Predictor.restore(config, workdir)
    val = stacks_by_split["val"]
    val_raw = predictor.raw_probabilities(val.image)
    predictor = predictor.decide(config, workdir, val_raw, val.mask)
    for split_name in splits:
      split = stacks_by_split[split_name]
      raw = val_raw if split_name == "val" else predictor.raw_probabilities(split.image)
      probs = predictor.calibrate(raw)
      labels = predictor.label_map(probs)
      calibration = class_calibration.calibration_summary(raw, split.mask, predictor.fitted_temperature,
                                                          config.model.output, e.calibration_bins)
      calibration.update(applied=bool(e.calibrate), fitted_on="val", in_sample=split_name == "val")
      scores, tables = stack_class_scores(probs, labels, split.mask, e, voxel_size)
      files = write_class_files(report_dir, os.path.join(name, split_name), split, labels, scores, tables,
                                calibration, names, e, save_predictions)
      runs.append({"run": name, "workdir": workdir, "checkpoint": e.checkpoint, "step": predictor.step,
                   "split": split_name, "shape": list(labels.shape), **scores, "calibration": calibration,
                   "files": files})
  report = {"created": datetime.datetime.now().isoformat(timespec="seconds"), "command": command,
            "data": {"name": config.data.name, "root": config.data.root, "labels_root": config.data.labels_root},
            "num_classes": k, "output": config.model.output, "class_names": names,
            "object_classes": [int(c) for c in e.get("object_classes", ())], "model": config.model.to_dict(),
            "eval": e.to_dict(), "definitions": class_markdown.DEFINITIONS, "runs": runs}
  outputs.write_json(os.path.join(report_dir, "class_report.json"), report)
  with outputs.atomic_path(os.path.join(report_dir, "class_report.md")) as tmp, open(tmp, "w") as f:
    f.write(class_markdown.markdown(report))
  return report
