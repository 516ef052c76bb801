"""Pixel metrics from confusion counts; work on NumPy or JAX arrays alike.

Names: "dice" is the Dice coefficient (= F1 of foreground pixels); "iou" is the foreground IoU
(Jaccard index, tp / (tp + fp + fn)); "mean_iou" is the two-class mean IoU, the average of the
foreground and background IoU (what semantic-segmentation papers call mIoU); "accuracy" counts
both classes.

Conventions for empty cases: Dice and IoU are 1 when truth and prediction are both empty;
precision (recall) is 1 when there are no predicted (true) positives and nothing was missed
(spurious), else 0.

Counting runs under jit (on the accelerator when there is one), one slice at a time in int32
(a slice has fewer than 2**31 pixels), and the slices are summed on the host in int64.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

COUNTS = ("tp", "fp", "fn", "tn")


@jax.jit
def _counts(pred: jax.Array, truth: jax.Array) -> jax.Array:
  """i32[4] (tp, fp, fn, tn) of two boolean arrays."""
  tp = jnp.sum(pred & truth, dtype=jnp.int32)
  fp = jnp.sum(pred & ~truth, dtype=jnp.int32)
  fn = jnp.sum(~pred & truth, dtype=jnp.int32)
  return jnp.stack([tp, fp, fn, pred.size - tp - fp - fn])


def _slices(array: Any) -> Any:
  """The array as [Z, ...] rows: its first axis, or one row for a 0-D/1-D array."""
  return array.reshape(1, -1) if array.ndim < 2 else array


def slice_counts(pred: Any, truth: Any) -> np.ndarray:
  """Counts i64[Z, 4] (columns COUNTS) for each slice along axis 0 of bool[Z, ...] arrays."""
  pred, truth = _slices(np.asarray(pred).astype(bool)), _slices(np.asarray(truth).astype(bool))
  if pred.shape != truth.shape:
    raise ValueError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
  return np.array([np.asarray(_counts(p, t)) for p, t in zip(pred, truth)], np.int64).reshape(-1, 4)


def confusion_counts(pred: Any, truth: Any) -> dict[str, int]:
  """True/false positive/negative counts of two binary arrays of equal shape."""
  return dict(zip(COUNTS, (int(v) for v in slice_counts(pred, truth).sum(0))))


def _ratio(num: int, den: int, empty: float) -> float:
  return float(num) / den if den else empty


def scores_from_counts(c: dict[str, int]) -> dict[str, float]:
  """Dice (= F1), foreground IoU, two-class mean IoU, precision, recall, accuracy from counts."""
  tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
  iou = _ratio(tp, tp + fp + fn, 1.0)
  return {
      "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
      "iou": iou,
      "mean_iou": (iou + _ratio(tn, tn + fp + fn, 1.0)) / 2,
      "precision": _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0),
      "recall": _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0),
      "accuracy": _ratio(tp + tn, tp + fp + fn + tn, 1.0),
  }


def pixel_scores(pred: Any, truth: Any) -> dict[str, float]:
  """Pixel scores of binary `pred` against binary `truth` over the whole array."""
  return scores_from_counts(confusion_counts(pred, truth))


def slice_scores(pred: Any, truth: Any) -> list[dict[str, float]]:
  """Pixel scores of each slice along axis 0, with the slice's counts."""
  rows = [dict(zip(COUNTS, map(int, row))) for row in slice_counts(pred, truth)]
  return [{**c, **scores_from_counts(c)} for c in rows]


@jax.jit
def _threshold_counts(probs: jax.Array, truth: jax.Array, thresholds: jax.Array) -> jax.Array:
  """i32[T, 4] counts of `probs >= t` for sorted thresholds t, in one pass (a histogram)."""
  n = thresholds.shape[0]
  # p >= t[j] iff bins > j; compare_all suits few thresholds (27x faster than the default scan on CPU).
  bins = jnp.searchsorted(thresholds, probs.ravel(), side="right", method="compare_all")
  above = lambda weights: jnp.cumsum(jnp.bincount(bins, weights, length=n + 1)[::-1])[::-1][1:]
  positives = above(None)
  tp = above(truth.ravel().astype(jnp.int32))
  fp = positives - tp
  fn = jnp.sum(truth, dtype=jnp.int32) - tp
  return jnp.stack([tp, fp, fn, probs.size - tp - fp - fn], -1)


def threshold_counts(probs: Any, truth: Any, thresholds: Sequence[float]) -> np.ndarray:
  """Counts i64[T, 4] of `probs >= t` against `truth` for each t in `thresholds` (any order)."""
  thresholds = np.asarray(thresholds, np.float32)
  order = np.argsort(thresholds)
  probs, truth = _slices(np.asarray(probs, np.float32)), _slices(np.asarray(truth).astype(bool))
  total = sum(np.asarray(_threshold_counts(p, t, thresholds[order]), np.int64) for p, t in zip(probs, truth))
  return total[np.argsort(order)]


def dice_from_counts(counts: np.ndarray) -> np.ndarray:
  """Dice of i64[..., 4] counts (columns COUNTS), as scores_from_counts: 1 where prediction and truth are empty."""
  tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
  den = 2 * tp + fp + fn
  return np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)


def best_dice_threshold(probs: Any, truth: Any, thresholds: Sequence[float]) -> tuple[float, list[float]]:
  """The threshold of highest Dice (the first of equals in the given order) and each one's Dice."""
  dice = dice_from_counts(threshold_counts(probs, truth, thresholds)).tolist()
  return float(thresholds[int(np.argmax(dice))]), dice
