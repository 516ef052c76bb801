"""Mitochondria as instances: connected components, one-to-one matching by IoU, instance scores.

Instances are the connected components of a binary mask (face connectivity: 4-connected within a
slice, 6-connected in a volume), either per slice (`dims=2`, natural for anisotropic serial
sections such as VNC, 50 nm apart) or over the volume (`dims=3`, natural for isotropic FIB-SEM
such as Lucchi). A minimum size (`min_size`) drops the predicted voxels of volume components
smaller than it first, for both: specks are small in the volume, while the profile of a thin
object in one section may be smaller than any speck, so a per-section size cannot tell them apart.
Per slice, a kept volume component can still leave fragments of a few pixels in a section (its edge
reaching into the next section); a minimum area (`min_area`, pixels) drops such profiles from the 2D
instances, which would otherwise count each one as an object.

Matching at an IoU threshold t is one-to-one and optimal: among the (true, predicted) pairs with
IoU >= t it takes the largest set of disjoint pairs and, among those, the one of largest total IoU
(scipy.optimize.linear_sum_assignment, as in StarDist's matching). For t >= 0.5 a pair above t is
unique on both sides, so this reduces to a plain threshold.

Counts at each threshold: found (true positives) are matched pairs, missed (false negatives) are
unmatched true instances, spurious (false positives) are unmatched predicted instances. Precision,
recall and F1 use unet_jax.scores.metrics' formulas and empty-case conventions. The mean matched IoU
averages the IoU of the matched pairs (None without any). Panoptic quality
PQ = (sum of matched IoU) / (found + spurious / 2 + missed / 2) (Kirillov et al. 2019), which is
mean matched IoU x F1, and 1 when there are no instances at all. AP: see `average_precision`.

Everything here runs on the host (scipy, scikit-image): component labels and overlap tables have
data-dependent sizes, which XLA cannot compile ahead of time, and they cost a few passes over the
voxels once per stack, little next to the network's inference.
"""

import dataclasses
from typing import Any, Sequence

import numpy as np
from scipy import ndimage, optimize, sparse
from scipy.sparse import csgraph

from unet_jax.errors import InputError
from unet_jax.scores import metrics

DIMS = (2, 3)


def label_instances(mask: Any, dims: int, min_size: int = 0, min_area: int = 0) -> np.ndarray:
  """Instance labels i32[Z, H, W] (0 background, 1..n) of a binary mask bool[Z, H, W].

  dims=2 labels each slice on its own (labels stay unique across the stack); dims=3 labels the
  volume. Volume components (6-connected) of fewer than `min_size` voxels are removed before numbering,
  and for dims=2 then the slice components of fewer than `min_area` pixels (module docstring).
  """
  mask = np.asarray(mask).astype(bool)
  if mask.ndim != 3:
    raise InputError(f"instance labelling needs a stack [Z, H, W], got shape {mask.shape}")
  if min_size > 1:
    volume, sizes = _volume_sizes(mask)
    mask = sizes[volume] >= min_size
  if dims == 3:
    labels = ndimage.label(mask)[0]
  elif dims == 2:
    labels = np.zeros(mask.shape, np.int32)
    offset = 0
    for z in range(mask.shape[0]):
      slice_labels, n = ndimage.label(mask[z])
      if min_area > 1 and n:
        kept = np.bincount(slice_labels.ravel()) >= min_area
        kept[0] = False
        renumber = np.zeros(n + 1, np.int32)
        renumber[kept] = np.arange(1, int(kept.sum()) + 1)
        slice_labels, n = renumber[slice_labels], int(kept.sum())
      labels[z] = np.where(slice_labels > 0, slice_labels + offset, 0)
      offset += n
  else:
    raise InputError(f"instance dims must be one of {DIMS}, got {dims!r}")
  return labels.astype(np.int32)


def _volume_sizes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(6-connected component labels of mask bool[Z, H, W], voxels per label with 0 for the background)."""
  volume = ndimage.label(mask)[0]
  sizes = np.bincount(volume.ravel())
  sizes[0] = 0
  return volume, sizes


@dataclasses.dataclass(frozen=True)
class Overlaps:
  """IoU of every overlapping (true, predicted) pair: a sparse n_true x n_pred matrix.

  Indices are 0-based (label - 1): true_index, pred_index i64[E]; iou f64[E] in (0, 1].
  """
  n_true: int
  n_pred: int
  true_index: np.ndarray
  pred_index: np.ndarray
  iou: np.ndarray


def _sizes(labels: np.ndarray, name: str) -> np.ndarray:
  """Voxel counts i64[n + 1] of labels 0..n; raises if some label in 1..n is absent."""
  sizes = np.bincount(labels, minlength=1)
  if not np.all(sizes[1:]):
    raise InputError(f"{name} labels must be numbered 1..n without gaps; use label_instances")
  return sizes


def overlaps(true_labels: Any, pred_labels: Any) -> Overlaps:
  """The overlap table of two label images i32[...] of equal shape, each labelled 1..n."""
  t, p = np.asarray(true_labels).ravel(), np.asarray(pred_labels).ravel()
  if t.shape != p.shape:
    raise InputError(f"true labels ({np.shape(true_labels)}) and predicted labels "
                     f"({np.shape(pred_labels)}) differ in shape")
  true_sizes, pred_sizes = _sizes(t, "true"), _sizes(p, "predicted")
  both = (t > 0) & (p > 0)
  stride = len(pred_sizes)
  pairs, inter = np.unique(t[both].astype(np.int64) * stride + p[both], return_counts=True)
  ti, pi = np.divmod(pairs, stride)
  iou = inter / (true_sizes[ti] + pred_sizes[pi] - inter)
  return Overlaps(len(true_sizes) - 1, len(pred_sizes) - 1, ti - 1, pi - 1, iou)


def match(ov: Overlaps, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Optimal one-to-one pairs (true_index i64[M], pred_index i64[M], iou f64[M]) with IoU >= threshold.

  Groups of pairs that share no instance are solved apart (connected components of the
  bipartite graph), so no dense n_true x n_pred matrix is ever built.
  """
  keep = ov.iou >= threshold
  ti, pi, iou = ov.true_index[keep], ov.pred_index[keep], ov.iou[keep]
  if not len(iou):
    return ti, pi, iou
  n = ov.n_true + ov.n_pred
  graph = sparse.coo_matrix((np.ones(len(ti)), (ti, ov.n_true + pi)), shape=(n, n))
  group = csgraph.connected_components(graph, directed=False)[1][ti]
  edges_per_group = np.bincount(group, minlength=1)
  single = edges_per_group[group] == 1
  out = [(ti[single], pi[single], iou[single])]
  for g in np.flatnonzero(edges_per_group > 1):
    sel = group == g
    rows, r = np.unique(ti[sel], return_inverse=True)
    cols, c = np.unique(pi[sel], return_inverse=True)
    block = np.zeros((len(rows), len(cols)))
    block[r, c] = iou[sel]
    # Weight 1 per pair (most pairs first) plus IoU / (2 k) < 1/2 in total (largest IoU next).
    weight = np.where(block > 0, 1.0 + block / (2 * min(block.shape)), 0.0)
    a, b = optimize.linear_sum_assignment(weight, maximize=True)
    ok = weight[a, b] > 0
    out.append((rows[a[ok]], cols[b[ok]], block[a[ok], b[ok]]))
  return tuple(np.concatenate(parts) for parts in zip(*out))


def f1_by_min_size(mask: Any, pred: Any, dims: int, min_sizes: Sequence[int], threshold: float,
                   min_area: int = 0) -> np.ndarray:
  """Instance F1 f64[len(min_sizes)] of the prediction bool[Z, H, W] against the mask at IoU `threshold`, as
  `label_instances(pred, dims, min_size, min_area)` scores for each of `min_sizes`: the components are
  labelled and overlapped once, and each size keeps the pairs of the components whose volume component it keeps."""
  pred = np.asarray(pred).astype(bool)
  volume, volume_sizes = _volume_sizes(pred)
  pred_labels = volume if dims == 3 else label_instances(pred, dims, min_area=min_area)
  ov = overlaps(label_instances(mask, dims), pred_labels)
  sizes = np.zeros(ov.n_pred + 1, np.int64)
  sizes[pred_labels.ravel()] = volume_sizes[volume.ravel()]  # each component: its volume component's size
  sizes = sizes[1:]
  f1 = []
  for min_size in min_sizes:
    kept = sizes >= min_size
    pairs = kept[ov.pred_index]
    found = len(match(dataclasses.replace(ov, true_index=ov.true_index[pairs], pred_index=ov.pred_index[pairs],
                                          iou=ov.iou[pairs]), threshold)[2])
    n_pred = int(kept.sum())
    f1.append(metrics.scores_from_counts({"tp": found, "fp": n_pred - found, "fn": ov.n_true - found, "tn": 0})["dice"])
  return np.asarray(f1, np.float64)


def average_precision(ov: Overlaps, scores: Any, threshold: float) -> float | None:
  """COCO-style average precision at one IoU threshold; at 0.75 this is MitoEM's AP-75.

  Predicted instances are ranked by `scores` f[n_pred] (evaluation uses the mean foreground
  probability inside each instance), highest first; each in turn takes the still-unmatched true
  instance of highest IoU >= threshold (COCO's greedy rule), giving precision and recall at every
  rank. Precision is made non-increasing in recall (running maximum from the right) and averaged
  at the 101 recall levels 0, 0.01, ..., 1, a level never reached counting 0 (COCO's
  interpolation). None when there is no true instance (recall is undefined).
  """
  scores = np.asarray(scores, np.float64)
  if scores.shape != (ov.n_pred,):
    raise InputError(f"need one score per predicted instance ({ov.n_pred}), got shape {scores.shape}")
  if ov.n_true == 0:
    return None
  if ov.n_pred == 0:
    return 0.0
  keep = ov.iou >= threshold
  candidates: dict[int, list[tuple[float, int]]] = {}
  for t, p, iou in zip(ov.true_index[keep], ov.pred_index[keep], ov.iou[keep]):
    candidates.setdefault(int(p), []).append((float(iou), int(t)))
  taken = np.zeros(ov.n_true, bool)
  hit = np.zeros(ov.n_pred, bool)
  for rank, p in enumerate(np.argsort(-scores, kind="stable")):
    free = [(iou, t) for iou, t in candidates.get(int(p), []) if not taken[t]]
    if free:
      taken[max(free)[1]] = hit[rank] = True
  tp = np.cumsum(hit)
  recall = tp / ov.n_true
  precision = np.maximum.accumulate((tp / np.arange(1, ov.n_pred + 1))[::-1])[::-1]
  at = np.searchsorted(recall, np.linspace(0.0, 1.0, 101), side="left")
  return float(np.where(at < ov.n_pred, precision[np.minimum(at, ov.n_pred - 1)], 0.0).mean())


def instance_scores(ov: Overlaps, thresholds: Sequence[float], scores: Any) -> list[dict[str, Any]]:
  """Per IoU threshold: found/missed/spurious, precision, recall, F1, mean matched IoU, PQ, AP."""
  rows = []
  for threshold in thresholds:
    _, _, iou = match(ov, threshold)
    found = len(iou)
    counts = {"tp": found, "fp": ov.n_pred - found, "fn": ov.n_true - found, "tn": 0}
    s = metrics.scores_from_counts(counts)
    denominator = found + (counts["fp"] + counts["fn"]) / 2
    rows.append({
        "iou_threshold": float(threshold), "n_true": ov.n_true, "n_pred": ov.n_pred,
        "found": found, "missed": counts["fn"], "spurious": counts["fp"],
        "precision": s["precision"], "recall": s["recall"], "f1": s["dice"],
        "mean_matched_iou": float(iou.mean()) if found else None,
        "pq": float(iou.sum() / denominator) if denominator else 1.0,
        "ap": average_precision(ov, scores, threshold)})
  return rows


def mean_inside(values: Any, labels: np.ndarray) -> np.ndarray:
  """Mean of `values` inside each instance 1..n of `labels`: f64[n] (e.g. a confidence score)."""
  n = int(labels.max(initial=0))
  return np.asarray(ndimage.mean(np.asarray(values), labels, np.arange(1, n + 1)), np.float64).reshape(n)
