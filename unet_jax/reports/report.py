"""The evaluation report: one JSON document and its Markdown rendering (tables and picture links).

Every headline score is shown as `estimate [low, high]` at the configured confidence level, with the
number of units (slices, objects) its interval rests on; intervals from fewer than
intervals.MIN_UNITS units are marked with a dagger.
"""

import datetime
import json
import os
from typing import Any

from unet_jax.errors import InputError
from unet_jax.scores import intervals

FILE_NAME = "report.json"

DEFINITIONS = {
    "dice": "Dice coefficient = F1 of foreground pixels = 2 TP / (2 TP + FP + FN)",
    "iou": "foreground IoU (Jaccard index) = TP / (TP + FP + FN)",
    "mean_iou": "two-class mean IoU = (foreground IoU + background IoU) / 2, background IoU = TN / (TN + FP + FN)",
    "precision": "TP / (TP + FP)",
    "recall": "TP / (TP + FN)",
    "accuracy": "(TP + TN) / all pixels",
    "empty cases": "Dice and IoU are 1 when truth and prediction are both empty; precision (recall) is 1 "
                   "when nothing is predicted (true) and nothing was missed (spurious), else 0",
    "pixel scores": "computed on the thresholded probabilities as they are (no size filter)",
    "instances": "connected components (4-connected in a slice for 2d, 6-connected in the volume for 3d); "
                 "predicted voxels of volume components (6-connected) smaller than the minimum object size "
                 "(eval.min_size, or with eval.select_min_size the candidate of best instance F1 on val) are dropped "
                 "first, for 2d and 3d alike, then for 2d the profiles under eval.min_area pixels in their slice "
                 "(fragments of a kept object reaching into the next slice); true ones never",
    "matching": "one-to-one, optimal: the most (true, predicted) pairs with IoU >= threshold, then the "
                "largest total IoU (linear_sum_assignment)",
    "found / missed / spurious": "matched pairs (TP) / unmatched true (FN) / unmatched predicted (FP) instances",
    "instance precision, recall, f1": "TP / (TP + FP), TP / (TP + FN), 2 TP / (2 TP + FP + FN) over instances",
    "mean_matched_iou": "mean IoU of the matched pairs (null when none)",
    "pq": "panoptic quality = sum of matched IoU / (TP + FP / 2 + FN / 2) = mean matched IoU x F1",
    "ap": "COCO-style average precision at the IoU threshold (at 0.75: MitoEM's AP-75): predicted instances "
          "ranked by their mean probability, greedily matched to the free true instance of highest IoU, "
          "interpolated precision averaged at 101 recall levels; null when there is no true instance",
    "volume_nm3": "voxels x voxel volume; a 2D instance is one section thick",
    "cube_side_px": "side of the cube of equal volume, in in-plane (x) pixels",
    "max_area_nm2": "largest cross-section of the instance in one slice",
    "intervals": "estimate [low, high] at eval.confidence_level (95 %). Per-mitochondrion precision and recall: "
                 "Wilson score interval of found / predicted and found / true (binomial counts). Pixel Dice, IoU, "
                 "precision, recall: percentile bootstrap resampling slices (eval.bootstrap_resamples, seeded by "
                 "eval.bootstrap_seed). Instance F1 and PQ: the same bootstrap resampling the units of the matching "
                 "(matched pairs, missed and spurious objects). n = units the interval rests on; a dagger marks "
                 f"fewer than {intervals.MIN_UNITS}, too few for the interval to be trusted",
    "ECE": "expected calibration error: over eval.calibration_bins equal probability bins, the pixel-weighted mean "
           "of |observed fraction of mitochondrion - mean probability|; 0 = calibrated",
    "temperature": "T fitted on the val split only (mean log-loss over its pixels): p -> sigmoid(logit(p) / T); "
                   "T > 1 softens an over-confident map. Stored in <workdir>/calibration.json per checkpoint step; "
                   "applied to the map before thresholding only with eval.calibrate=True. It never reorders pixels",
    "uncertainty": "per-pixel standard deviation of the probabilities of the 8 dihedral test-time transforms "
                   "(TTA disagreement) or of several checkpoints (ensemble disagreement); 0 to 0.5",
    "object confidence": "per predicted mitochondrion: mean_prob (mean probability inside), mean_uncertainty, "
                         "certainty = 1 - 2 x mean_uncertainty, boundary_sharpness (mean gradient magnitude of the "
                         "probability on its inner boundary, per pixel), confidence = mean_prob x certainty",
    "review list": "the eval.review_top_k predicted mitochondria of lowest confidence, to check by hand; caught = "
                   "spurious ones (unmatched at the first IoU threshold) in the list; random = expected catch of as "
                   "many objects drawn at random. Missed mitochondria have no predicted object and are not in it",
    "AUROC": "probability that a matched (correct) prediction has a higher score than a spurious one, ties 1/2; "
             "0.5 = no separation; interval: percentile bootstrap over predicted objects",
}


def build(config: Any, runs: list[dict[str, Any]], command: str | None = None,
          ensembles: list[dict[str, Any]] | None = None) -> dict[str, Any]:
  """The report document: what was evaluated (data, model, settings), the runs, ensembles, the definitions."""
  return {"created": datetime.datetime.now().isoformat(timespec="seconds"), "command": command,
          "data": {"name": config.data.name, "root": config.data.root,
                   "voxel_size_nm_zyx": list(config.data.voxel_size_nm)},
          "model": config.model.to_dict(), "eval": config.eval.to_dict(),
          "definitions": DEFINITIONS, "runs": runs, "ensembles": ensembles or []}


def _f(value: Any, digits: int = 4) -> str:
  """A number for a table: fixed digits, scientific for large values, 'n/a' for None."""
  if value is None:
    return "n/a"
  if isinstance(value, int):
    return str(value)
  return f"{value:.3g}" if abs(value) >= 1e4 else f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
  """Markdown lines of a table; numbers are formatted as `_f` does, strings kept."""
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
         ["| " + " | ".join(v if isinstance(v, str) else _f(v) for v in row) + " |" for row in rows]


def interval_text(interval: dict[str, Any], digits: int = 4) -> str:
  """'estimate [low, high]' of an interval dict, with a dagger when it rests on too few units."""
  if interval["estimate"] is None:
    return "n/a"
  bounds = "" if interval["low"] is None else f" [{interval['low']:.{digits - 1}f}, {interval['high']:.{digits - 1}f}]"
  return f"{interval['estimate']:.{digits}f}{bounds}" + ("†" if interval["n"] < intervals.MIN_UNITS else "")


def _threshold_note(threshold: dict[str, Any], split: str | None = None) -> str:
  """The threshold, where it came from, and a warning when it was chosen on `split` itself."""
  note = f"{threshold['value']:g} ({threshold['source']}"
  if "val_dice" in threshold:
    note += f"; val Dice {threshold['val_dice']:.4f}"
    if split == "val":
      note += "; **chosen on this split: optimistic**"
  return note + ")"


def _min_size_note(threshold: dict[str, Any]) -> str:
  """The minimum object size and where it came from (reports made before it was recorded: unknown)."""
  if "min_size" not in threshold:
    return "not recorded"
  return f"{threshold['min_size']} voxels ({threshold['min_size_source']})"


def _split_section(r: dict[str, Any], max_slice_rows: int) -> list[str]:
  """Markdown of one run on one split: pictures, per-slice table, file links."""
  f = r["files"]
  lines = [f"### {r['run']} / {r['split']}: stack {tuple(r['shape'])}", "",
           "Overlays: true positive green, false positive red, false negative blue. "
           f"Worst slices by Dice ({', '.join(map(str, f['worst_slice_indices']))}):", "",
           f"![worst slices]({f['worst_slices']})", ""]
  lines += [f"![{os.path.basename(p)}]({p})" for p in f["overlays"]]
  if f.get("uncertainty_maps"):
    lines += ["", "Uncertainty (TTA disagreement) next to the errors:", ""]
    lines += [f"![{os.path.basename(p)}]({p})" for p in f["uncertainty_maps"]]
  if f.get("reliability_diagram"):
    lines += ["", f"![reliability diagram]({f['reliability_diagram']})"]
  lines += ["", f"![intensity histogram]({f['intensity_histogram']})", ""]
  for dims, review in r.get("review", {}).items():
    shown = review["list"][:10]
    if shown:
      lines += [f"Review list, {dims.upper()} objects: the {len(shown)} least confident of {review['n_objects']} "
                f"(all {review['top_k']} in {os.path.basename(f[f'review_{dims}_csv'])}); matched = correct at "
                f"IoU >= {review['iou_threshold']:g}:", ""]
      lines += markdown_table(["rank", "label", "z", "y", "x", "voxels", "confidence", "mean prob", "mean uncertainty",
                               "boundary sharpness", "matched"],
                              [[str(i + 1), str(o["label"]), f"{o['centroid_z_px']:.0f}", f"{o['centroid_y_px']:.0f}",
                                f"{o['centroid_x_px']:.0f}", str(o["voxels"]), o["confidence"], o["mean_prob"],
                                o["mean_uncertainty"], o["boundary_sharpness"], "yes" if o["matched"] else "**no**"]
                               for i, o in enumerate(shown)]) + [""]
  slices = list(enumerate(r["slices"]))
  if len(slices) > max_slice_rows:
    lines += [f"The {max_slice_rows} worst of {len(slices)} slices (all in slices.csv):", ""]
    slices = sorted(slices, key=lambda s: s[1]["dice"])[:max_slice_rows]
  lines += markdown_table(["slice", "Dice", "foreground IoU", "precision", "recall", "true px", "predicted px"],
                          [[str(i), s["dice"], s["iou"], s["precision"], s["recall"], s["tp"] + s["fn"],
                            s["tp"] + s["fp"]] for i, s in slices])
  files = [f"[{os.path.basename(p)}]({p})" for k, p in f.items() if k.endswith(("_csv", "_tif"))]
  return lines + ["", "Files: " + ", ".join(files), ""]


def _calibration_section(runs: list[dict[str, Any]]) -> list[str]:
  """Markdown: ECE and log-loss before and after the val-fitted temperature, per run and split."""
  rows = [r for r in runs if r.get("calibration")]
  if not rows:
    return []
  lines = ["", "## Calibration of the probability map", "",
           "Temperature T fitted on the val split only (never test); ECE over all pixels of the split. The val "
           "rows after scaling are in-sample (optimistic); test shows whether T transfers. "
           + ("The report's scores use the scaled map (eval.calibrate=True)." if rows[0]["calibration"]["applied"]
              else "The report's scores use the map as predicted (eval.calibrate=False; scaling never changes "
                   "which pixels are above 0.5)."), ""]
  return lines + markdown_table(
      ["run", "split", "T", "ECE as predicted", "ECE after T", "log-loss as predicted", "log-loss after T", "pixels"],
      [[r["run"], r["split"] + (" (in-sample)" if r["calibration"]["in_sample"] else ""),
        r["calibration"]["temperature"], r["calibration"]["ece_before"], r["calibration"]["ece_after"],
        r["calibration"]["log_loss_before"], r["calibration"]["log_loss_after"],
        f"{sum(r['calibration']['reliability_before']['count']):,}"] for r in rows])


def _review_section(runs: list[dict[str, Any]]) -> list[str]:
  """Markdown: how well each confidence score separates correct from spurious detections; the review lists' catch."""
  rows = [(r, dims, v) for r in runs for dims, v in r.get("review", {}).items()]
  if not rows:
    return []
  score = lambda v, name: interval_text(v["auroc"][name], 3)
  lines = ["", "## Per-mitochondrion confidence and review list", "",
           "AUROC of each score for correct (matched) vs spurious predicted mitochondria, with bootstrap intervals "
           "over objects (n = predicted objects); caught = spurious objects among the review list's "
           "least confident k.", ""]
  lines += markdown_table(["run", "split", "objects", "IoU >=", "predicted", "spurious", "k", "caught", "random k",
                           "AUROC confidence", "AUROC mean prob", "AUROC certainty", "AUROC boundary sharpness"],
                          [[r["run"], r["split"], dims.upper(), f"{v['iou_threshold']:g}", v["n_objects"], v["n_wrong"],
                            v["top_k"], v["caught"], f"{v['random_expected']:.1f}", score(v, "confidence"),
                            score(v, "mean_prob"), score(v, "certainty") if r["uncertainty"]["source"] else "no map",
                            score(v, "boundary_sharpness")]
                           for r, dims, v in rows])
  lines += [""] + [f"- {r['run']} / {r['split']} ({dims.upper()}): checking the {v['top_k']} least confident of "
                   f"{v['n_objects']} predicted mitochondria by hand would catch {v['caught']} of the {v['n_wrong']} "
                   f"spurious ones ({v['top_k'] * 100 // max(v['n_objects'], 1)} % of the objects checked; "
                   f"{v['random_expected']:.1f} expected from a random pick); all {v['n_wrong']} are among the "
                   f"{v['k_all']} least confident." for r, dims, v in rows]
  return lines


def _uncertainty_section(report: dict[str, Any]) -> list[str]:
  """Markdown: mean per-pixel uncertainty on wrong and right pixels (TTA per run, and checkpoint ensembles)."""
  rows = [[r["run"], r["split"], r["uncertainty"]] for r in report["runs"] if r.get("uncertainty", {}).get("source")]
  rows += [[f"ensemble of {e['checkpoints']}", e["split"], e["uncertainty"]] for e in report.get("ensembles", [])]
  if not rows:
    return []
  lines = ["", "## Uncertainty maps", "",
           "Mean per-pixel disagreement (standard deviation of probabilities, 0 to 0.5) on the pixels the "
           "thresholded map gets wrong (FP or FN) and right; maps per slice are in the sections below.", ""]
  lines += markdown_table(["run", "split", "source", "mean", "mean on wrong pixels", "mean on right pixels"],
                          [[run, split, u["source"], u["mean"], u["mean_on_errors"], u["mean_on_correct"]]
                           for run, split, u in rows])
  for e in report.get("ensembles", []):
    lines += ["", f"Ensemble of {e['checkpoints']} checkpoints on {e['split']} (mean map at threshold "
              f"{_threshold_note(e['threshold'])}: Dice {e['pixel']['dice']:.4f}):", ""]
    lines += [f"![{os.path.basename(p)}]({p})" for p in e["uncertainty_maps"]]
  return lines


def markdown(report: dict[str, Any], max_slice_rows: int = 32) -> str:
  """report.md: summary tables, then per run and split its pictures, slices and files."""
  runs = report["runs"]
  d = report["data"]
  lines = ["# Segmentation evaluation report", "",
           f"Data `{d['name']}` ({d['root'] or 'generated'}), voxel size (z, y, x) = "
           f"{tuple(d['voxel_size_nm_zyx'])} nm; model {report['model']['ndim']}D U-Net, depth "
           f"{report['model']['depth']}, {report['model']['base_features']} base features; created {report['created']}."]
  if report["command"]:
    lines += ["", f"Command: `{report['command']}`"]
  level = f"{100 * report['eval']['confidence_level']:g} %"
  lines += ["", "## Pixel scores (whole stack)", "",
            f"Estimate [{level} interval]; intervals by bootstrap over slices (n = slices; \u2020: fewer than "
            f"{intervals.MIN_UNITS}, too few to trust the interval).", ""]
  lines += markdown_table(["run", "split", "checkpoint (step)", "threshold", "Dice (= F1)", "foreground IoU",
                           "mean IoU (2 classes)", "precision", "recall", "accuracy", "n slices"],
                          [[r["run"], r["split"], f"{r['checkpoint']} ({r['step']})",
                            _threshold_note(r["threshold"], r["split"])]
                           + [interval_text(r["pixel_intervals"][k]) for k in ("dice", "iou")]
                           + [r["pixel"]["mean_iou"]]
                           + [interval_text(r["pixel_intervals"][k]) for k in ("precision", "recall")]
                           + [r["pixel"]["accuracy"], len(r["slices"])]
                           for r in runs])
  for dims, title in (("2d", "2D components, per slice"), ("3d", "3D components, over the volume")):
    lines += ["", f"## Instance scores: {title}", "",
              f"Precision and recall with Wilson {level} intervals (n = predicted, true); F1 and PQ with bootstrap "
              "intervals over the units of the matching (n = found + missed + spurious).", ""]
    lines += markdown_table(["run", "split", "IoU >=", "true", "predicted", "found", "missed", "spurious", "precision",
                             "recall", "F1", "mean matched IoU", "PQ", "AP", "n units"],
                            [[r["run"], r["split"], f"{s['iou_threshold']:g}"]
                             + [s[k] for k in ("n_true", "n_pred", "found", "missed", "spurious")]
                             + [interval_text(s["intervals"][k]) for k in ("precision", "recall", "f1")]
                             + [s["mean_matched_iou"], interval_text(s["intervals"]["pq"]), s["ap"],
                                s["intervals"]["f1"]["n"]]
                             for r in runs for s in r["instances"][dims]])
  lines += _calibration_section(runs) + _review_section(runs) + _uncertainty_section(report)
  lines += ["", "## Morphometry (one row per mitochondrion in the CSV files below)", ""]
  g = lambda v, fmt=".3g": "n/a" if v is None else format(v, fmt)
  lines += markdown_table(["run", "split", "instances", "count", "median volume nm^3", "mean volume nm^3",
                           "volume quartiles nm^3", "median cube side px", "median max area nm^2"],
                          [[r["run"], r["split"], key.replace("_", " "), m["volume_nm3"]["count"],
                            g(m["volume_nm3"]["median"]), g(m["volume_nm3"]["mean"]),
                            f"{g(m['volume_nm3']['q25'])} - {g(m['volume_nm3']['q75'])}",
                            g(m["cube_side_px"]["median"], ".1f"), g(m["max_area_nm2"]["median"])]
                           for r in runs for key, m in r["morphometry"].items()])
  for name in dict.fromkeys(r["run"] for r in runs):
    first = next(r for r in runs if r["run"] == name)
    lines += ["", f"## {name}", "", f"Workdir `{first['workdir']}`, checkpoint {first['checkpoint']} "
              f"(step {first['step']}), threshold {_threshold_note(first['threshold'])}, minimum object size "
              f"{_min_size_note(first['threshold'])}.", ""]
    if first["training_curves"]:
      lines += [f"![training curves]({first['training_curves']})", ""]
    t = first["threshold"]
    if "candidates" in t:
      lines += ["Threshold candidates (val Dice): " + ", ".join(
          f"{c:g} ({v:.4f})" for c, v in zip(t["candidates"], t["candidate_val_dice"])), ""]
    if "min_size_candidates" in t:
      lines += ["Minimum object size candidates, voxels (val instance F1, mean of 2D and 3D): " + ", ".join(
          f"{c} ({v:.4f})" for c, v in zip(t["min_size_candidates"], t["candidate_val_f1"])), ""]
    for r in (r for r in runs if r["run"] == name):
      lines += _split_section(r, max_slice_rows)
  lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in report["definitions"].items()]
  return "\n".join(lines) + "\n"


def write(report_dir: str, report: dict[str, Any]) -> None:
  """Writes report.json and report.md into `report_dir`."""
  os.makedirs(report_dir, exist_ok=True)
  with open(os.path.join(report_dir, FILE_NAME), "w") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(report_dir, "report.md"), "w") as f:
    f.write(markdown(report))


def load(path_or_dir: str) -> dict[str, Any]:
  """The report document of a report.json, or of the report folder holding one; InputError when missing or
  unreadable."""
  path = os.path.join(path_or_dir, FILE_NAME) if os.path.isdir(path_or_dir) else path_or_dir
  try:
    with open(path) as f:
      document = json.load(f)
  except OSError as e:
    raise InputError(f"cannot read the report {path} ({e.strerror}); run evaluate.py to write it") from e
  except ValueError as e:
    raise InputError(f"{path} is not a readable report ({e}); run evaluate.py again to rewrite it") from e
  if not isinstance(document, dict) or not isinstance(document.get("runs"), list):
    raise InputError(f"{path} is not an evaluation report (no 'runs' list); run evaluate.py again to rewrite it")
  return document
