"""evaluate.py's report for multi-class models: per-class Dice and IoU, their means and the confusion matrix.

A K-class model (model.num_classes > 1) is scored on its argmax label map (`Predictor.label_map`), predicted
through the same sliding windows as binary models; the binary report's thresholds, calibration, instances
and intervals do not apply. Writes class_report.json and class_report.md in the report folder.
"""

import os
from typing import Any, Sequence

from unet_jax.inference.predictor import Predictor
from unet_jax.io import data, outputs
from unet_jax.scores import classes


def evaluate_classes(config: Any, workdirs: Sequence[str], report_dir: str, splits: Sequence[str]) -> dict[str, Any]:
  """Per-class scores of every workdir's `eval.checkpoint` on every split; the report as a dict."""
  k = config.model.num_classes
  stacks = data.load_splits(config.data, k)
  runs = []
  for workdir in workdirs:
    predictor = Predictor.restore(config, workdir)
    for split in splits:
      labels = predictor.label_map(predictor.raw_probabilities(stacks[split].image))
      runs.append({"run": workdir, "split": split, "step": predictor.step, "shape": list(labels.shape),
                   **classes.class_scores(labels, stacks[split].mask, k)})
  report = {"num_classes": k, "output": config.model.output, "runs": runs}
  os.makedirs(report_dir, exist_ok=True)
  outputs.write_json(os.path.join(report_dir, "class_report.json"), report)
  lines = ["# Per-class scores", "", "| run | split | step | class | Dice | IoU | true pixels |", "|---|---|---|---|---|---|---|"]
  for r in runs:
    for c in range(k):
      lines.append(f"| {r['run']} | {r['split']} | {r['step']} | {c} | {r['dice'][c]:.4f} | {r['iou'][c]:.4f} | "
                   f"{r['support'][c]} |")
    lines.append(f"| {r['run']} | {r['split']} | {r['step']} | mean | {r['mean_dice']:.4f} | {r['mean_iou']:.4f} | |")
  with outputs.atomic_path(os.path.join(report_dir, "class_report.md")) as tmp, open(tmp, "w") as f:
    f.write("\n".join(lines) + "\n")
  return report
