"""Per-class scores of label maps (multi-class models): a confusion matrix, each class's Dice/IoU, per-object scores.

The confusion matrix counts pixels by (true class, predicted class); every per-class score is the binary
score of that class against all others (one-vs-rest), read off the matrix, with metrics.py's conventions for
empty cases (Dice and IoU 1 when a class is absent from truth and prediction alike). Means are unweighted
over the classes, so a rare class (a synapse) counts as much as a common one. Counting runs under jit one
slice at a time in int32 and is summed on the host in int64, as metrics.py does.

Object classes (mitochondria, synapses: `eval.object_classes`) are also scored per object (`object_scores`):
each class's mask is cut into connected components and matched one-to-one at IoU thresholds exactly as the
binary report's mitochondria are (unet_jax.scores.instances, with its intervals).

Intervals (`class_intervals`) resample slices, as the binary report's pixel intervals do
(unet_jax.scores.intervals): each slice's confusion matrix is one unit, so a resample's per-class scores are read
off the sum of its slices' matrices.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.errors import InputError
from unet_jax.scores import instances, intervals


@functools.partial(jax.jit, static_argnames="num_classes")
def _slice_confusion(pred: jax.Array, truth: jax.Array, num_classes: int) -> jax.Array:
  """i32[K, K] counts of one slice's (truth, pred) class pairs."""
  pairs = truth.ravel().astype(jnp.int32) * num_classes + pred.ravel().astype(jnp.int32)
  return jnp.bincount(pairs, length=num_classes * num_classes).reshape(num_classes, num_classes)


def slice_confusions(pred: Any, truth: Any, num_classes: int) -> np.ndarray:
  """Counts i64[Z, K, K] of each slice z (axis 0) of two label maps of one shape: (true class, predicted class)."""
  pred, truth = np.asarray(pred), np.asarray(truth)
  if pred.shape != truth.shape:
    raise InputError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
  for name, labels in (("prediction", pred), ("truth", truth)):
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise InputError(f"{name} holds class ids outside 0..{num_classes - 1} (found {labels.min()}..{labels.max()})")
  rows = pred.reshape(1, -1) if pred.ndim < 2 else pred
  truth_rows = truth.reshape(1, -1) if truth.ndim < 2 else truth
  counts = [np.asarray(_slice_confusion(p, t, num_classes), np.int64) for p, t in zip(rows, truth_rows)]
  return np.array(counts, np.int64).reshape(-1, num_classes, num_classes)


def confusion_matrix(pred: Any, truth: Any, num_classes: int) -> np.ndarray:
  """Counts i64[K, K] of pixels of true class i (row) predicted as class j (column), over label maps of one shape."""
  return slice_confusions(pred, truth, num_classes).sum(0)


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


def one_vs_rest_counts(matrix: np.ndarray) -> np.ndarray:
  """Counts i64[..., K, 4] of each class against the rest, columns metrics.COUNTS (tp, fp, fn, tn), of confusion
  matrices i64[..., K, K]."""
  matrix = np.asarray(matrix)
  tp = np.diagonal(matrix, axis1=-2, axis2=-1)
  fp, fn = matrix.sum(-2) - tp, matrix.sum(-1) - tp
  tn = matrix.sum((-2, -1))[..., None] - tp - fp - fn
  return np.stack([tp, fp, fn, tn], -1)


def _mean_over_classes(name: str, num_classes: int) -> Any:
  """Statistic for `intervals.bootstrap`: the unweighted class mean of pixel score `name` of summed flat matrices."""
  score = intervals.PIXEL_STATISTICS[name]
  return lambda flat: score(one_vs_rest_counts(flat.reshape(*flat.shape[:-1], num_classes, num_classes))).mean(-1)


def class_intervals(confusions: np.ndarray, resamples: int, confidence: float, seed: int) -> dict[str, Any]:
  """Bootstrap intervals over slices of per-class Dice, IoU, precision, recall and of the mean Dice and IoU.

  `confusions` i64[Z, K, K] (`slice_confusions`). Returns {'per_class': [{score: interval}] * K, 'mean_dice',
  'mean_iou'}; every estimate equals `scores_from_confusion` of the summed matrix.
  """
  confusions = np.asarray(confusions, np.int64)
  k = confusions.shape[-1]
  counts = one_vs_rest_counts(confusions)
  flat = confusions.reshape(len(confusions), k * k)
  return {"per_class": [intervals.pixel_intervals(counts[:, c], resamples, confidence, seed) for c in range(k)],
          **{f"mean_{name}": intervals.bootstrap(flat, _mean_over_classes(name, k), resamples, confidence, seed)
             for name in ("dice", "iou")}}


def object_scores(pred: np.ndarray, truth: np.ndarray, class_prob: np.ndarray, class_id: int, dims: int,
                  min_size: int, thresholds: Any, resampling: tuple[int, float, int], min_area: int = 0,
                  ) -> tuple[list[dict[str, Any]], instances.Overlaps, np.ndarray]:
  """Per-object scores of class `class_id` in label maps u8[Z, H, W]: instances.instance_scores rows (AP ranked by
  the mean `class_prob` f32[Z, H, W] inside each predicted object), each with its 'intervals'.

  Predicted volume components under `min_size` voxels are dropped, and for dims=2 profiles under `min_area`
  pixels (true ones never); `resampling` is (resamples, confidence, seed). Also returns the overlaps and the
  predicted instance labels i32[Z, H, W].
  """
  true_labels = instances.label_instances(np.asarray(truth) == class_id, dims)
  pred_labels = instances.label_instances(np.asarray(pred) == class_id, dims, min_size, min_area)
  ov = instances.overlaps(true_labels, pred_labels)
  rows = instances.instance_scores(ov, thresholds, instances.mean_inside(class_prob, pred_labels))
  for row in rows:
    iou = instances.match(ov, row["iou_threshold"])[2]
    row["intervals"] = intervals.instance_intervals(ov.n_true, ov.n_pred, iou, *resampling)
  return rows, ov, pred_labels
