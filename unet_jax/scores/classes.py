"""Per-class pixel scores of label maps (multi-class models): a confusion matrix and each class's Dice/IoU.

The confusion matrix counts pixels by (true class, predicted class); every per-class score is the binary
score of that class against all others (one-vs-rest), read off the matrix, with metrics.py's conventions for
empty cases (Dice and IoU 1 when a class is absent from truth and prediction alike). Means are unweighted
over the classes, so a rare class (a synapse) counts as much as a common one. Counting runs under jit one
slice at a time in int32 and is summed on the host in int64, as metrics.py does.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.errors import InputError


@functools.partial(jax.jit, static_argnames="num_classes")
def _slice_confusion(pred: jax.Array, truth: jax.Array, num_classes: int) -> jax.Array:
  """i32[K, K] counts of one slice's (truth, pred) class pairs."""
  pairs = truth.ravel().astype(jnp.int32) * num_classes + pred.ravel().astype(jnp.int32)
  return jnp.bincount(pairs, length=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_matrix(pred: Any, truth: Any, num_classes: int) -> np.ndarray:
  """Counts i64[K, K] of pixels of true class i (row) predicted as class j (column), over label maps of one shape."""
  pred, truth = np.asarray(pred), np.asarray(truth)
  if pred.shape != truth.shape:
    raise InputError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
  for name, labels in (("prediction", pred), ("truth", truth)):
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise InputError(f"{name} holds class ids outside 0..{num_classes - 1} (found {labels.min()}..{labels.max()})")
  rows = pred.reshape(1, -1) if pred.ndim < 2 else pred
  truth_rows = truth.reshape(1, -1) if truth.ndim < 2 else truth
  total = np.zeros((num_classes, num_classes), np.int64)
  for p, t in zip(rows, truth_rows):
    total += np.asarray(_slice_confusion(p, t, num_classes), np.int64)
  return total


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  return np.where(den > 0, num / np.maximum(den, 1), 1.0)


def scores_from_confusion(matrix: np.ndarray) -> dict[str, Any]:
  """Per-class lists (dice, iou, precision, recall, support = true pixels) and their unweighted means, plus the
  pixel accuracy, of a confusion matrix i64[K, K] (rows truth, columns prediction)."""
  matrix = np.asarray(matrix, np.int64)
  tp = np.diag(matrix)
  truth, predicted = matrix.sum(1), matrix.sum(0)
  fp, fn = predicted - tp, truth - tp
  dice, iou = _ratio(2 * tp, 2 * tp + fp + fn), _ratio(tp, tp + fp + fn)
  precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), np.where(fn == 0, 1.0, 0.0))
  recall = np.where(truth > 0, tp / np.maximum(truth, 1), np.where(fp == 0, 1.0, 0.0))
  total = matrix.sum()
  return {"dice": dice.tolist(), "iou": iou.tolist(), "precision": precision.tolist(), "recall": recall.tolist(),
          "support": truth.tolist(), "mean_dice": float(dice.mean()), "mean_iou": float(iou.mean()),
          "accuracy": float(tp.sum() / total) if total else 1.0}


def class_scores(pred: Any, truth: Any, num_classes: int) -> dict[str, Any]:
  """`scores_from_confusion` of two label maps, with the matrix itself as 'confusion' (nested lists)."""
  matrix = confusion_matrix(pred, truth, num_classes)
  return {**scores_from_confusion(matrix), "confusion": matrix.tolist()}


def flat_scores(scores: dict[str, Any]) -> dict[str, float]:
  """Scalar scores for logs: 'dice' = mean Dice (what checkpoints are chosen by), 'iou' = mean IoU,
  'accuracy', and 'dice_k' / 'iou_k' per class k."""
  flat = {"dice": scores["mean_dice"], "iou": scores["mean_iou"], "accuracy": scores["accuracy"]}
  for k, (d, i) in enumerate(zip(scores["dice"], scores["iou"])):
    flat.update({f"dice_{k}": float(d), f"iou_{k}": float(i)})
  return flat
