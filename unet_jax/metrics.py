"""Pixel metrics from confusion counts; work on NumPy or JAX arrays alike.

Conventions for empty cases: Dice and IoU are 1 when truth and prediction are both empty;
precision (recall) is 1 when there are no predicted (true) positives and nothing was missed
(spurious), else 0.
"""

from typing import Any

import numpy as np


def confusion_counts(pred: Any, truth: Any) -> dict[str, int]:
  """True/false positive/negative counts of two binary arrays of equal shape."""
  pred = np.asarray(pred).astype(bool)
  truth = np.asarray(truth).astype(bool)
  tp = int(np.count_nonzero(pred & truth))
  fp = int(np.count_nonzero(pred & ~truth))
  fn = int(np.count_nonzero(~pred & truth))
  return {"tp": tp, "fp": fp, "fn": fn, "tn": int(pred.size) - tp - fp - fn}


def _ratio(num: int, den: int, empty: float) -> float:
  return float(num) / den if den else empty


def scores_from_counts(c: dict[str, int]) -> dict[str, float]:
  """Dice (= F1), foreground IoU (Jaccard), precision, recall, accuracy from counts."""
  tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
  return {
      "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
      "iou": _ratio(tp, tp + fp + fn, 1.0),
      "precision": _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0),
      "recall": _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0),
      "accuracy": _ratio(tp + tn, tp + fp + fn + tn, 1.0),
  }


def pixel_scores(pred: Any, truth: Any) -> dict[str, float]:
  """Pixel scores of binary `pred` against binary `truth` over the whole array."""
  return scores_from_counts(confusion_counts(pred, truth))
