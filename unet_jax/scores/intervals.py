"""Confidence intervals for scores: Wilson intervals for proportions, seeded bootstrap for the rest, and
Student t intervals for means of repeated runs.

Per-mitochondrion precision and recall are proportions of counted objects (found / predicted,
found / true), binomial counts, so they get the Wilson score interval (Wilson 1927; the interval
diagnostic-test practice recommends over the normal approximation, and it stays inside [0, 1] at
0 and n successes).

Scores that are ratios of summed counts over units (pixel Dice and IoU over slices, instance F1 and
PQ over the units of a matching) get a percentile bootstrap: the units are resampled with
replacement `resamples` times, all at once (weights w[R, N] = how often each unit was drawn, so a
resample's summed counts are one matrix product w @ counts), from a numpy Generator seeded
explicitly, so the same seed gives the same interval. The unit is what varies independently
between repeats of the experiment: slices for 2D pixel scores (pixels of one slice are not
independent), objects for instance scores. Each interval carries the number of units it rests
on; below MIN_UNITS units a percentile bootstrap is known to undercover, and the report says so.

A score repeated over training seeds (a benchmark's runs) is one value per run, and runs are
independent: the mean gets the t interval, which is exact for normal scores and, unlike a
bootstrap, honest with 3-5 runs (wide, as it should be).
"""

from typing import Any, Callable

import numpy as np
from scipy import stats

from unet_jax.errors import InputError

MIN_UNITS = 10  # fewer units: the report flags the interval as resting on too few


def _z(confidence: float) -> float:
  """Two-sided standard-normal quantile of `confidence` in (0, 1)."""
  if not 0.0 < confidence < 1.0:
    raise InputError(f"confidence level must be in (0, 1), got {confidence}; e.g. eval.confidence_level=0.95")
  return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: Any, trials: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
  """Wilson score interval (low, high) of successes / trials, elementwise; (0, 1) when trials = 0."""
  k, n = np.asarray(successes, np.float64), np.asarray(trials, np.float64)
  if np.any(k < 0) or np.any(k > n):
    raise InputError(f"Wilson interval needs 0 <= successes <= trials, got {successes} of {trials}")
  z = _z(confidence)
  safe = np.maximum(n, 1.0)
  p = k / safe
  centre = (p + z * z / (2 * safe)) / (1 + z * z / safe)
  half = z / (1 + z * z / safe) * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe))
  empty = n == 0
  return np.where(empty, 0.0, np.clip(centre - half, 0, 1)), np.where(empty, 1.0, np.clip(centre + half, 0, 1))


def proportion(successes: int, trials: int, confidence: float = 0.95) -> dict[str, Any]:
  """{'estimate', 'low', 'high', 'n', 'method'} of a binomial proportion with its Wilson interval."""
  low, high = wilson_interval(successes, trials, confidence)
  return {"estimate": successes / trials if trials else None, "low": float(low), "high": float(high),
          "n": int(trials), "method": "wilson"}


def mean_interval(values: Any, confidence: float = 0.95) -> dict[str, Any]:
  """{'estimate', 'low', 'high', 'n', 'sd', 'method'}: the mean of repeats (runs over seeds, paired
  differences) with its Student t interval; low/high are None below two values."""
  v = np.asarray(values, np.float64).ravel()
  _z(confidence)
  n = v.size
  out = {"estimate": float(v.mean()) if n else None, "low": None, "high": None, "n": int(n), "sd": None,
         "method": "t"}
  if n >= 2:
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / np.sqrt(n)
    out.update(low=out["estimate"] - half, high=out["estimate"] + half, sd=sd)
  return out


def resample_weights(n_units: int, resamples: int, seed: int) -> np.ndarray:
  """i32[R, N]: how often each of N units is drawn in each of R resamples with replacement (rows sum to N)."""
  if n_units < 1 or resamples < 1:
    raise InputError(f"bootstrap needs at least one unit and one resample, got {n_units} and {resamples}")
  draws = np.random.default_rng(seed).integers(0, n_units, (resamples, n_units))
  flat = (draws + n_units * np.arange(resamples)[:, None]).ravel()
  return np.bincount(flat, minlength=resamples * n_units).reshape(resamples, n_units).astype(np.int32)


def bootstrap(units: Any, statistic: Callable[[np.ndarray], np.ndarray], resamples: int = 1000,
              confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
  """Percentile bootstrap interval of `statistic` over resampled units.

  `units` f64[N, K] holds each unit's additive counts; `statistic` maps summed counts f64[..., K]
  to scores f64[...] (NaN where undefined; such resamples are dropped and counted). Returns
  {'estimate' (on all units), 'low', 'high', 'n' (units), 'resamples', 'undefined', 'method'};
  low/high are None without units or when every resample is undefined.
  """
  units = np.asarray(units, np.float64)
  if units.ndim != 2:
    raise InputError(f"bootstrap units must be a table [N, K], got shape {units.shape}")
  _z(confidence)
  n = units.shape[0]
  out = {"estimate": None, "low": None, "high": None, "n": n, "resamples": int(resamples), "undefined": 0,
         "method": "percentile bootstrap"}
  if n == 0:
    return out
  estimate = float(statistic(units.sum(0)))
  values = statistic(resample_weights(n, resamples, seed) @ units)
  defined = values[np.isfinite(values)]
  out.update(estimate=None if np.isnan(estimate) else estimate, undefined=int(resamples - defined.size))
  if defined.size:
    low, high = np.quantile(defined, [(1 - confidence) / 2, (1 + confidence) / 2])
    out.update(low=float(low), high=float(high))
  return out


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(den > 0, num / np.where(den > 0, den, 1), empty)


PIXEL_STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # counts [..., 4] = (tp, fp, fn, tn), the columns of metrics.COUNTS; empty cases as in metrics.
    "dice": lambda c: _ratio(2 * c[..., 0], 2 * c[..., 0] + c[..., 1] + c[..., 2], 1.0),
    "iou": lambda c: _ratio(c[..., 0], c[..., 0] + c[..., 1] + c[..., 2], 1.0),
    "precision": lambda c: np.where(c[..., 0] + c[..., 1] > 0, _ratio(c[..., 0], c[..., 0] + c[..., 1], 0.0),
                                    np.where(c[..., 2] > 0, 0.0, 1.0)),
    "recall": lambda c: np.where(c[..., 0] + c[..., 2] > 0, _ratio(c[..., 0], c[..., 0] + c[..., 2], 0.0),
                                 np.where(c[..., 1] > 0, 0.0, 1.0)),
}

INSTANCE_STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # counts [..., 4] = (found, spurious, missed, sum of matched IoU); empty cases as in instances.
    "f1": lambda c: _ratio(2 * c[..., 0], 2 * c[..., 0] + c[..., 1] + c[..., 2], 1.0),
    "pq": lambda c: _ratio(c[..., 3], c[..., 0] + (c[..., 1] + c[..., 2]) / 2, 1.0),
}


def instance_units(n_true: int, n_pred: int, matched_iou: np.ndarray) -> np.ndarray:
  """f64[found + spurious + missed, 4]: one row per unit of a matching, (found, spurious, missed, IoU).

  A matched pair is (1, 0, 0, iou), a spurious prediction (0, 1, 0, 0), a missed truth (0, 0, 1, 0).
  """
  found = len(matched_iou)
  rows = [np.column_stack([np.ones(found), np.zeros(found), np.zeros(found), matched_iou]),
          np.tile([0.0, 1.0, 0.0, 0.0], (n_pred - found, 1)), np.tile([0.0, 0.0, 1.0, 0.0], (n_true - found, 1))]
  return np.concatenate(rows).reshape(-1, 4)


def pixel_intervals(slice_counts: np.ndarray, resamples: int, confidence: float, seed: int) -> dict[str, Any]:
  """Bootstrap intervals of pixel Dice, IoU, precision, recall over slices; `slice_counts` i64[Z, 4]."""
  return {name: bootstrap(slice_counts, fn, resamples, confidence, seed) for name, fn in PIXEL_STATISTICS.items()}


def instance_intervals(n_true: int, n_pred: int, matched_iou: np.ndarray, resamples: int, confidence: float,
                       seed: int) -> dict[str, Any]:
  """Wilson precision and recall, bootstrap (over objects) F1 and PQ of one matching."""
  found = len(matched_iou)
  units = instance_units(n_true, n_pred, matched_iou)
  return {"precision": proportion(found, n_pred, confidence), "recall": proportion(found, n_true, confidence),
          **{name: bootstrap(units, fn, resamples, confidence, seed) for name, fn in INSTANCE_STATISTICS.items()}}
