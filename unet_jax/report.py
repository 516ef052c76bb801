"""The evaluation report: one JSON document and its Markdown rendering (tables and picture links)."""

import datetime
import json
import os
from typing import Any

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
                 "predicted components smaller than eval.min_size voxels are dropped, true ones never",
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
}


def build(config: Any, runs: list[dict[str, Any]], command: str | None = None) -> dict[str, Any]:
  """The report document: what was evaluated (data, model, settings), the runs, the definitions."""
  return {"created": datetime.datetime.now().isoformat(timespec="seconds"), "command": command,
          "data": {"name": config.data.name, "root": config.data.root,
                   "voxel_size_nm_zyx": list(config.data.voxel_size_nm)},
          "model": config.model.to_dict(), "eval": config.eval.to_dict(),
          "definitions": DEFINITIONS, "runs": runs}


def _f(value: Any, digits: int = 4) -> str:
  """A number for a table: fixed digits, scientific for large values, 'n/a' for None."""
  if value is None:
    return "n/a"
  if isinstance(value, int):
    return str(value)
  return f"{value:.3g}" if abs(value) >= 1e4 else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
         ["| " + " | ".join(v if isinstance(v, str) else _f(v) for v in row) + " |" for row in rows]


def _threshold_note(threshold: dict[str, Any], split: str | None = None) -> str:
  """The threshold, where it came from, and a warning when it was chosen on `split` itself."""
  note = f"{threshold['value']:g} ({threshold['source']}"
  if "val_dice" in threshold:
    note += f"; val Dice {threshold['val_dice']:.4f}"
    if split == "val":
      note += "; **chosen on this split: optimistic**"
  return note + ")"


def _split_section(r: dict[str, Any], max_slice_rows: int) -> list[str]:
  """Markdown of one run on one split: pictures, per-slice table, file links."""
  f = r["files"]
  lines = [f"### {r['run']} / {r['split']}: stack {tuple(r['shape'])}", "",
           "Overlays: true positive green, false positive red, false negative blue. "
           f"Worst slices by Dice ({', '.join(map(str, f['worst_slice_indices']))}):", "",
           f"![worst slices]({f['worst_slices']})", ""]
  lines += [f"![{os.path.basename(p)}]({p})" for p in f["overlays"]]
  lines += ["", f"![intensity histogram]({f['intensity_histogram']})", ""]
  slices = list(enumerate(r["slices"]))
  if len(slices) > max_slice_rows:
    lines += [f"The {max_slice_rows} worst of {len(slices)} slices (all in slices.csv):", ""]
    slices = sorted(slices, key=lambda s: s[1]["dice"])[:max_slice_rows]
  lines += _table(["slice", "Dice", "foreground IoU", "precision", "recall", "true px", "predicted px"],
                  [[str(i), s["dice"], s["iou"], s["precision"], s["recall"], s["tp"] + s["fn"],
                    s["tp"] + s["fp"]] for i, s in slices])
  files = [f"[{os.path.basename(p)}]({p})" for k, p in f.items() if k.endswith(("_csv", "_tif"))]
  return lines + ["", "Files: " + ", ".join(files), ""]


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
  lines += ["", "## Pixel scores (whole stack)", ""]
  lines += _table(["run", "split", "checkpoint (step)", "threshold", "Dice (= F1)", "foreground IoU",
                   "mean IoU (2 classes)", "precision", "recall", "accuracy"],
                  [[r["run"], r["split"], f"{r['checkpoint']} ({r['step']})", _threshold_note(r["threshold"], r["split"])]
                   + [r["pixel"][k] for k in ("dice", "iou", "mean_iou", "precision", "recall", "accuracy")]
                   for r in runs])
  for dims, title in (("2d", "2D components, per slice"), ("3d", "3D components, over the volume")):
    lines += ["", f"## Instance scores: {title}", ""]
    lines += _table(["run", "split", "IoU >=", "true", "predicted", "found", "missed", "spurious", "precision",
                     "recall", "F1", "mean matched IoU", "PQ", "AP"],
                    [[r["run"], r["split"], f"{s['iou_threshold']:g}"]
                     + [s[k] for k in ("n_true", "n_pred", "found", "missed", "spurious", "precision", "recall",
                                       "f1", "mean_matched_iou", "pq", "ap")]
                     for r in runs for s in r["instances"][dims]])
  lines += ["", "## Morphometry (one row per mitochondrion in the CSV files below)", ""]
  g = lambda v, fmt=".3g": "n/a" if v is None else format(v, fmt)
  lines += _table(["run", "split", "instances", "count", "median volume nm^3", "mean volume nm^3",
                   "volume quartiles nm^3", "median cube side px", "median max area nm^2"],
                  [[r["run"], r["split"], key.replace("_", " "), m["volume_nm3"]["count"],
                    g(m["volume_nm3"]["median"]), g(m["volume_nm3"]["mean"]),
                    f"{g(m['volume_nm3']['q25'])} - {g(m['volume_nm3']['q75'])}",
                    g(m["cube_side_px"]["median"], ".1f"), g(m["max_area_nm2"]["median"])]
                   for r in runs for key, m in r["morphometry"].items()])
  for name in dict.fromkeys(r["run"] for r in runs):
    first = next(r for r in runs if r["run"] == name)
    lines += ["", f"## {name}", "", f"Workdir `{first['workdir']}`, checkpoint {first['checkpoint']} "
              f"(step {first['step']}), threshold {_threshold_note(first['threshold'])}.", ""]
    if first["training_curves"]:
      lines += [f"![training curves]({first['training_curves']})", ""]
    t = first["threshold"]
    if "candidates" in t:
      lines += ["Threshold candidates (val Dice): " + ", ".join(
          f"{c:g} ({v:.4f})" for c, v in zip(t["candidates"], t["candidate_val_dice"])), ""]
    for r in (r for r in runs if r["run"] == name):
      lines += _split_section(r, max_slice_rows)
  lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in report["definitions"].items()]
  return "\n".join(lines) + "\n"


def write(report_dir: str, report: dict[str, Any]) -> None:
  """Writes report.json and report.md into `report_dir`."""
  os.makedirs(report_dir, exist_ok=True)
  with open(os.path.join(report_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(report_dir, "report.md"), "w") as f:
    f.write(markdown(report))
