"""class_report.md: the multi-class report document (unet_jax.reports.class_report) as Markdown tables and pictures.

Scores are shown as `estimate [low, high]` at the configured confidence level, a dagger marking intervals that
rest on fewer than intervals.MIN_UNITS units, as in the binary report (unet_jax.reports.report).
"""

import os
from typing import Any

from unet_jax.reports.report import interval_text, markdown_table
from unet_jax.scores import intervals

DEFINITIONS = {
    "per-class scores": "each class against all others (one-vs-rest) from the confusion matrix of the argmax label "
                        "map: Dice = 2 TP / (2 TP + FP + FN), IoU = TP / (TP + FP + FN), precision, recall; Dice and "
                        "IoU are 1 for a class absent from truth and prediction alike",
    "mean Dice, mean IoU": "unweighted means over the classes: a rare class counts as much as a common one",
    "confusion matrix": "pixels of true class i (row) predicted as class j (column)",
    "pixel intervals": "percentile bootstrap resampling slices (eval.bootstrap_resamples, seeded by "
                       "eval.bootstrap_seed): each resample's scores are read off the sum of its slices' confusion "
                       f"matrices; n = slices; a dagger marks fewer than {intervals.MIN_UNITS}",
    "objects": "for each class of eval.object_classes, the connected components of its mask (4-connected in a slice "
               "for 2d, 6-connected in the volume for 3d); predicted volume components smaller than eval.min_size voxels "
               "are dropped (and 2d profiles under eval.min_area pixels), true ones never; matched one-to-one at "
               "IoU >= threshold as the binary report's mitochondria (most pairs, then largest total IoU)",
    "object intervals": "precision and recall: Wilson score intervals of found / predicted and found / true; F1 and "
                        "PQ: percentile bootstrap over the units of the matching (found, missed, spurious)",
    "ap": "COCO-style average precision at the IoU threshold, predicted objects ranked by the mean probability of "
          "their class",
    "temperature": "T fitted on the val split only, minimising the mean negative log-likelihood of the true class: "
                   "softmax maps p -> softmax(log p / T), sigmoid maps each logit / T. Stored in "
                   "<workdir>/calibration.json per checkpoint step; applied only with eval.calibrate=True. It never "
                   "changes the argmax label map, so it never changes a pixel or object score",
    "top-label ECE": "over eval.calibration_bins equal bins of the largest class probability, the pixel-weighted "
                     "mean of |fraction of pixels whose most probable class is the true one - mean probability|",
    "class ECE": "the binary ECE of one class's probability against its one-vs-rest truth",
    "doubt": "per predicted object: the mean over its pixels of the entropy of the class probabilities divided by "
             "log K (0: all probability on one class, 1: all classes equally likely); confidence = 1 - doubt",
    "review list": "the eval.review_top_k predicted objects of an object class with the highest doubt, to check by "
                   "hand; caught = spurious ones (unmatched at the first IoU threshold) in the list; random = "
                   "expected catch of as many objects drawn at random",
    "AUROC": "probability that a matched (correct) object has a higher score than a spurious one, ties 1/2; "
             "interval: percentile bootstrap over predicted objects",
}


def _name(report: dict[str, Any], class_id: Any) -> str:
  return f"{class_id} {report['class_names'][int(class_id)]}"


def _pixel_section(report: dict[str, Any]) -> list[str]:
  """Per-class Dice, IoU, precision, recall with intervals, and the means, per run and split."""
  rows = []
  for r in report["runs"]:
    for c, ci in enumerate(r["intervals"]["per_class"]):
      rows.append([r["run"], r["split"], _name(report, c)] + [interval_text(ci[k]) for k in
                                                               ("dice", "iou", "precision", "recall")]
                  + [f"{r['support'][c]:,}", ci["dice"]["n"]])
    rows.append([r["run"], r["split"], "**mean**", interval_text(r["intervals"]["mean_dice"]),
                 interval_text(r["intervals"]["mean_iou"]), "", "", f"accuracy {r['accuracy']:.4f}",
                 r["intervals"]["mean_dice"]["n"]])
  return markdown_table(["run", "split", "class", "Dice", "IoU", "precision", "recall", "true pixels", "n slices"],
                        rows)


def _confusion_section(report: dict[str, Any]) -> list[str]:
  """Each run and split's confusion matrix, with each row's share on the diagonal (recall)."""
  lines = []
  names = [_name(report, c) for c in range(report["num_classes"])]
  for r in report["runs"]:
    lines += ["", f"{r['run']} / {r['split']} (rows: true class, columns: predicted class):", ""]
    lines += markdown_table(["true \\ predicted"] + names,
                            [[names[i]] + [f"{v:,}" for v in row] for i, row in enumerate(r["confusion"])])
  return lines


def _object_section(report: dict[str, Any]) -> list[str]:
  """Per-object scores of each object class, 2D and 3D components."""
  lines = []
  for class_id in report["object_classes"]:
    for dims, title in (("2d", "2D components, per slice"), ("3d", "3D components, over the volume")):
      lines += ["", f"### {_name(report, class_id)}: {title}", ""]
      lines += markdown_table(
          ["run", "split", "IoU >=", "true", "predicted", "found", "missed", "spurious", "precision", "recall", "F1",
           "mean matched IoU", "PQ", "AP", "n units"],
          [[r["run"], r["split"], f"{s['iou_threshold']:g}"]
           + [s[k] for k in ("n_true", "n_pred", "found", "missed", "spurious")]
           + [interval_text(s["intervals"][k]) for k in ("precision", "recall", "f1")]
           + [s["mean_matched_iou"], interval_text(s["intervals"]["pq"]), s["ap"], s["intervals"]["f1"]["n"]]
           for r in report["runs"] for s in r["objects"][str(class_id)][dims]])
  return lines


def _calibration_section(report: dict[str, Any]) -> list[str]:
  """Top-label and per-class ECE and the log-loss before and after the val-fitted temperature."""
  runs = report["runs"]
  applied = runs[0]["calibration"]["applied"]
  lines = ["", "## Calibration of the class probabilities", "",
           "Temperature T fitted on the val split only (never test); val rows after T are in-sample (optimistic). "
           + ("The report's probabilities (object ranking, doubt) are the scaled ones (eval.calibrate=True)."
              if applied else "The report uses the probabilities as predicted (eval.calibrate=False)."), ""]
  names = report["class_names"]
  lines += markdown_table(
      ["run", "split", "T", "top-label ECE as predicted", "after T", "log-loss as predicted", "after T"]
      + [f"ECE {n} (as predicted -> after T)" for n in names],
      [[r["run"], r["split"] + (" (in-sample)" if r["calibration"]["in_sample"] else ""), c["temperature"],
        c["before"]["top_label"]["ece"], c["after"]["top_label"]["ece"], c["log_loss_before"], c["log_loss_after"]]
       + [f"{b['ece']:.4f} -> {a['ece']:.4f}" for b, a in zip(c["before"]["per_class"], c["after"]["per_class"])]
       for r in runs for c in [r["calibration"]]])
  return lines


def _review_section(report: dict[str, Any]) -> list[str]:
  """Each object class's review list: the most doubtful objects, the catch, the AUROC of each score."""
  rows = [(r, c, dims, v) for r in report["runs"] for c, by_dims in r["review"].items() for dims, v in by_dims.items()]
  if not rows:
    return []
  score = lambda v, name: interval_text(v["auroc"][name], 3)
  lines = ["", "## Review lists: the most doubtful objects", "",
           "Caught = spurious objects among the k most doubtful; AUROC of each score for correct (matched) vs "
           "spurious objects, bootstrap intervals over objects.", ""]
  lines += markdown_table(["run", "split", "class", "objects", "IoU >=", "predicted", "spurious", "k", "caught",
                           "random k", "AUROC confidence", "AUROC mean prob", "AUROC boundary sharpness"],
                          [[r["run"], r["split"], _name(report, c), dims.upper(), f"{v['iou_threshold']:g}",
                            v["n_objects"], v["n_wrong"], v["top_k"], v["caught"], f"{v['random_expected']:.1f}",
                            score(v, "confidence"), score(v, "mean_prob"), score(v, "boundary_sharpness")]
                           for r, c, dims, v in rows])
  for r, c, dims, v in rows:
    shown = v["list"][:10]
    if shown:
      lines += ["", f"{r['run']} / {r['split']}, {_name(report, c)} ({dims.upper()}): the {len(shown)} most doubtful "
                f"of {v['n_objects']} (all {v['top_k']} in {os.path.basename(r['files'][f'review_c{c}_{dims}_csv'])}):",
                ""]
      lines += markdown_table(["rank", "label", "z", "y", "x", "voxels", "doubt", "mean prob", "matched"],
                              [[str(i + 1), str(o["label"]), f"{o['centroid_z_px']:.0f}", f"{o['centroid_y_px']:.0f}",
                                f"{o['centroid_x_px']:.0f}", str(o["voxels"]), o["doubt"], o["mean_prob"],
                                "yes" if o["matched"] else "**no**"] for i, o in enumerate(shown)])
  return lines


def _pictures_section(report: dict[str, Any]) -> list[str]:
  """Each run and split's class maps, reliability diagrams and files."""
  lines = []
  for r in report["runs"]:
    f = r["files"]
    lines += ["", f"### {r['run']} / {r['split']}: stack {tuple(r['shape'])}, checkpoint {r['checkpoint']} "
              f"(step {r['step']})", "",
              "Truth and prediction in class colours (class 0 untinted), then each class's true positives green, "
              "false positives red, false negatives blue:", ""]
    lines += [f"![{os.path.basename(p)}]({p})" for p in f["class_maps"]]
    lines += ["", f"![reliability]({f['reliability_diagram']}) ![class reliability]({f['class_reliability_diagram']})",
              "", "Files: " + ", ".join(f"[{os.path.basename(p)}]({p})" for k, p in f.items()
                                        if k.endswith(("_csv", "_tif")))]
  return lines


def markdown(report: dict[str, Any]) -> str:
  """class_report.md: per-class scores, confusion matrices, object scores, calibration, review lists, pictures."""
  level = f"{100 * report['eval']['confidence_level']:g} %"
  lines = ["# Per-class evaluation report", "",
           f"Data `{report['data']['name']}` (labels {report['data']['labels_root']}), {report['num_classes']} "
           f"classes ({report['output']}), created {report['created']}."]
  if report["command"]:
    lines += ["", f"Command: `{report['command']}`"]
  lines += ["", "## Per-class pixel scores", "",
            f"Estimate [{level} interval]; intervals by bootstrap over slices (n; \u2020: fewer than "
            f"{intervals.MIN_UNITS}, too few to trust the interval).", ""]
  lines += _pixel_section(report)
  lines += ["", "## Confusion matrices"] + _confusion_section(report)
  if report["object_classes"]:
    lines += ["", "## Per-object scores", "",
              f"Precision and recall with Wilson {level} intervals; F1 and PQ with bootstrap intervals over the units "
              "of the matching (n = found + missed + spurious)."]
    lines += _object_section(report)
  lines += _calibration_section(report) + _review_section(report)
  lines += ["", "## Pictures and files"] + _pictures_section(report)
  lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in report["definitions"].items()]
  return "\n".join(lines) + "\n"
