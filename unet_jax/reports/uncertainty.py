"""Where to doubt the model: per-pixel uncertainty maps, per-mitochondrion confidence, a review list.

Per-pixel uncertainty is disagreement: the standard deviation, per pixel, of the probabilities
that the 8 dihedral test-time transforms of the (H, W) plane give (`tta_probabilities`; 4 flips
when windows are not square), or that several checkpoints give (`ensemble`). It is 0 where all
agree and at most 0.5. The same transforms also give the prediction itself (the mean over the
`eval.tta` subset), so the map costs the extra transforms only.

Per predicted mitochondrion (`object_confidence`): the mean probability inside it, the mean
uncertainty inside it, the boundary sharpness (mean in-plane gradient magnitude of the
probability, per pixel, on its inner boundary: a crisp edge is near 0.5, a hesitant one near 0),
and one ranking score, confidence = mean probability x (1 - 2 x mean uncertainty) (the mean
probability alone without an uncertainty map).

Per predicted object of a class map (a K-class model's object classes, `class_object_doubt`): the doubt, the
mean over its pixels of the entropy of the pixel's class probabilities divided by log K (0 where one class holds
all the probability, 1 where the classes are equally likely; sigmoid outputs are normalised to sum 1 first),
its confidence 1 - doubt, the mean probability of its class and its boundary sharpness on that probability.

The review list is the `k` predicted objects of lowest confidence: the ones a person should check
first. How well a score separates correct detections (matched to a true mitochondrion at the
first `eval.iou_thresholds`) from spurious ones is its AUROC, the probability that a random
correct detection scores above a random spurious one (ties count one half), with a percentile
bootstrap interval over predicted objects (`auroc_interval`, vectorised like unet_jax.scores.intervals).
"""

from typing import Any, Sequence

import numpy as np
from scipy import ndimage, sparse, special

from unet_jax.errors import InputError
from unet_jax.inference import windows
from unet_jax.inference.predictor import Predictor
from unet_jax.scores import intervals

SOURCES = ("none", "tta")  # eval.uncertainty
SCORES = ("confidence", "mean_prob", "certainty", "boundary_sharpness")  # higher = more likely correct
CLASS_SCORES = ("confidence", "mean_prob", "boundary_sharpness")  # of class objects (`class_object_doubt`)


def tta_group(window: Sequence[int]) -> str:
  """'dihedral' for square (H, W) windows, else 'flips' (rotations need square windows)."""
  return "flips" if window[-1] != window[-2] else "dihedral"


def tta_probabilities(predictor: Predictor, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(raw probabilities, uncertainty), both f32[Z, H, W], of a stack `image` f32[Z, H, W].

  Probabilities are the mean over the predictor's TTA transforms (its `raw_probabilities` up to
  float rounding); uncertainty is the standard deviation over all transforms of `tta_group`.
  """
  if predictor.model.in_channels != 1:
    raise InputError("eval.uncertainty='tta' needs a single-slice model (model.context_slices=0); "
                     "set --config.eval.uncertainty=none")
  group = tta_group(predictor.settings["window"])
  transforms = predictor.transform_probabilities(image, group)
  return transforms[windows.transform_subset(group, predictor.tta)].mean(0), transforms.std(0)


def ensemble(probs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(mean, standard deviation) over checkpoints of probabilities f32[M, Z, H, W], each f32[Z, H, W]."""
  if len(probs) < 2 or len({p.shape for p in probs}) != 1:
    raise InputError("ensemble disagreement needs at least two probability maps of one shape; give several --workdir")
  stack = np.stack(probs)
  return stack.mean(0), stack.std(0)


def inner_boundary(labels: np.ndarray) -> np.ndarray:
  """bool[Z, H, W]: labelled pixels with an in-plane 4-neighbour (or the image edge) of another label."""
  padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)), mode="constant", constant_values=-1)
  centre = padded[:, 1:-1, 1:-1]
  differs = ((padded[:, :-2, 1:-1] != centre) | (padded[:, 2:, 1:-1] != centre)
             | (padded[:, 1:-1, :-2] != centre) | (padded[:, 1:-1, 2:] != centre))
  return differs & (labels > 0)


def object_confidence(probs: np.ndarray, labels: np.ndarray, uncertainty: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Columns f64[n] for the instances 1..n of `labels` i32[Z, H, W] over probabilities f32[Z, H, W].

  mean_prob, mean_uncertainty (NaN without a map), certainty (1 - 2 x mean uncertainty; 1 without),
  boundary_sharpness, confidence (see the module docstring).
  """
  n = int(labels.max(initial=0))
  index = np.arange(1, n + 1)
  mean = lambda values, where: np.asarray(ndimage.mean(values, where, index), np.float64).reshape(n)
  gy, gx = np.gradient(np.asarray(probs, np.float32), axis=(1, 2))
  boundary = np.where(inner_boundary(labels), labels, 0)
  mean_prob = mean(probs, labels)
  mean_unc = mean(uncertainty, labels) if uncertainty is not None else np.full(n, np.nan)
  certainty = 1.0 - 2.0 * mean_unc if uncertainty is not None else np.ones(n)
  return {"mean_prob": mean_prob, "mean_uncertainty": mean_unc, "certainty": certainty,
          "boundary_sharpness": mean(np.hypot(gy, gx), boundary), "confidence": mean_prob * certainty}


def class_object_doubt(probs: np.ndarray, labels: np.ndarray, class_id: int) -> dict[str, np.ndarray]:
  """Columns f64[n] for the objects 1..n of `labels` i32[Z, H, W], predicted as class `class_id` from class
  probabilities f32[Z, H, W, K]: doubt, confidence (1 - doubt), mean_prob, boundary_sharpness (module docstring)."""
  probs = np.asarray(probs, np.float32)
  n, k = int(labels.max(initial=0)), probs.shape[-1]
  inside = labels > 0
  q = probs[inside].astype(np.float64)
  q /= np.maximum(q.sum(-1, keepdims=True), np.finfo(np.float64).tiny)
  entropy = special.entr(q).sum(-1) / np.log(k)
  owner = labels[inside]
  with np.errstate(invalid="ignore", divide="ignore"):
    doubt = np.bincount(owner, entropy, n + 1)[1:] / np.bincount(owner, minlength=n + 1)[1:]
  own = object_confidence(probs[..., class_id], labels)
  return {"doubt": doubt, "confidence": 1.0 - doubt, "mean_prob": own["mean_prob"],
          "boundary_sharpness": own["boundary_sharpness"]}


def _auroc(weights: np.ndarray, scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
  """AUROC f64[R] of `scores` f[N] for labels bool[N] under unit weights f[R, N] (NaN if a class is absent)."""
  groups, group = np.unique(scores, return_inverse=True)
  onehot = sparse.csr_matrix((np.ones(len(scores)), (np.arange(len(scores)), group)), shape=(len(scores), len(groups)))
  neg = np.asarray((onehot.T @ (weights * ~positive).T).T)  # negative weight per score group [R, G]
  below = np.cumsum(neg, axis=1) - neg
  pos_weights = weights * positive
  wins = np.sum(pos_weights * (below[:, group] + 0.5 * neg[:, group]), axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return wins / (pos_weights.sum(1) * neg.sum(1))


def auroc(scores: Any, positive: Any) -> float | None:
  """Probability that a random positive scores above a random negative (ties 1/2); None without both."""
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  if scores.shape != positive.shape or scores.ndim != 1:
    raise InputError(f"AUROC needs one score per label, got shapes {scores.shape} and {positive.shape}")
  if not scores.size:
    return None
  value = float(_auroc(np.ones((1, scores.size)), scores, positive)[0])
  return None if np.isnan(value) else value


def auroc_interval(scores: Any, positive: Any, resamples: int = 1000, confidence: float = 0.95,
                   seed: int = 0) -> dict[str, Any]:
  """AUROC with a percentile bootstrap interval over objects: {'estimate', 'low', 'high', 'n', 'n_positive', ...}."""
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  out = {"estimate": auroc(scores, positive), "low": None, "high": None, "n": int(scores.size),
         "n_positive": int(positive.sum()), "resamples": int(resamples), "undefined": 0,
         "method": "percentile bootstrap"}
  if out["estimate"] is None:
    return out
  values = _auroc(intervals.resample_weights(scores.size, resamples, seed), scores, positive)
  defined = values[np.isfinite(values)]
  low, high = np.quantile(defined, [(1 - confidence) / 2, (1 + confidence) / 2])
  return {**out, "low": float(low), "high": float(high), "undefined": int(resamples - defined.size)}


def review(table: dict[str, np.ndarray], matched: np.ndarray, top_k: int, resamples: int = 1000,
           confidence: float = 0.95, seed: int = 0, scores: Sequence[str] = SCORES) -> dict[str, Any]:
  """The review list of the `top_k` least confident predicted objects, and how well each score separates.

  `table` holds one row per predicted object (the `scores` columns, 'confidence' among them, and 'label');
  `matched` bool[n] says which objects are correct. Returns {'order' (row indices of the list), 'top_k',
  'n_objects', 'n_wrong', 'caught' (wrong objects in the list), 'random_expected' (caught by k
  random objects, on average), 'k_all' (the shortest list holding every wrong object),
  'auroc': {score: interval}}.
  """
  matched = np.asarray(matched, bool)
  n = len(matched)
  k = min(int(top_k), n)
  ranked = np.lexsort((np.arange(n), table["confidence"]))  # lowest confidence first, ties by label
  order = ranked[:k]
  wrong = int(np.sum(~matched))
  return {"order": order.tolist(), "top_k": k, "n_objects": n, "n_wrong": wrong,
          "caught": int(np.sum(~matched[order])), "random_expected": k * wrong / n if n else 0.0,
          "k_all": int(np.flatnonzero(~matched[ranked]).max(initial=-1) + 1),
          "auroc": {s: auroc_interval(table[s], matched, resamples, confidence, seed)
                    for s in scores}}
