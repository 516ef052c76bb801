"""Calibration of the probability map: reliability bins, expected calibration error, temperature scaling.

A map is calibrated when, among the pixels given probability p, a fraction p is mitochondrion.
Reliability bins split [0, 1] into `bins` equal bins and hold, per bin, the pixel count, the mean
probability and the observed fraction of foreground; the expected calibration error (ECE) is the
count-weighted mean of |fraction - mean probability| over bins (Guo et al. 2017), 0 for a
calibrated map.

Temperature scaling (Guo et al. 2017) rescales the map's logits by one scalar T > 0:
p -> sigmoid(logit(p) / T). It is monotone, so it never reorders pixels (Dice at a matching
threshold is unchanged); T > 1 softens an over-confident map. T is fitted on the val split only
(never test) by minimising the mean log-loss over its pixels. The map is the blend of window (and
test-time augmentation) probabilities, so T rescales that final map's logit, not the network's.
To fit in milliseconds over millions of pixels, the logits of each class are first grouped into
LOGIT_BINS fine bins, each represented by its mean logit (the loss is smooth in the logit, so the
error is second order in the bin width, 0.01); the fit is a bounded 1-D search over log T.

The fitted T is stored with the checkpoint: `workdir/calibration.json`, one record per
checkpoint step (`save_temperature`, `stored_record`), applied at inference when
`eval.calibrate` is set.
"""

import json
import os
from typing import Any

import numpy as np
from scipy import optimize, special

from unet_jax.errors import InputError

FILE = "calibration.json"
LOGIT_BINS = 4000
LOGIT_RANGE = 20.0  # float32 probabilities saturate near |logit| = 17
TEMPERATURE_RANGE = (0.05, 20.0)


def _check(probs: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
  p, t = np.asarray(probs, np.float32).ravel(), np.asarray(truth).astype(bool).ravel()
  if p.shape != t.shape:
    raise InputError(f"calibration needs probabilities and truth of one shape, got {np.shape(probs)} and "
                     f"{np.shape(truth)}")
  if p.size and not (np.all(np.isfinite(p)) and p.min() >= 0 and p.max() <= 1):
    raise InputError("calibration needs probabilities in [0, 1] without NaN")
  return p, t


def reliability_bins(probs: Any, truth: Any, bins: int = 15) -> dict[str, np.ndarray]:
  """Per equal-width bin of [0, 1]: 'count' i64[B], 'mean_prob' f64[B], 'fraction' f64[B] (NaN if empty).

  probs f32[...] in [0, 1] against a binary truth of the same shape; also returns 'edges' f64[B + 1].
  """
  if bins < 2:
    raise InputError(f"reliability diagram needs at least 2 bins, got {bins}; e.g. eval.calibration_bins=15")
  p, t = _check(probs, truth)
  index = np.minimum((p * bins).astype(np.int64), bins - 1)
  count = np.bincount(index, minlength=bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_prob = np.bincount(index, p.astype(np.float64), bins) / count
    fraction = np.bincount(index, t.astype(np.float64), bins) / count
  return {"edges": np.linspace(0.0, 1.0, bins + 1), "count": count, "mean_prob": mean_prob, "fraction": fraction}


def expected_calibration_error(bins: dict[str, np.ndarray]) -> float:
  """ECE of reliability bins: sum over bins of count / total x |fraction - mean probability|."""
  count = bins["count"]
  full = count > 0
  if not full.any():
    raise InputError("calibration error needs at least one pixel")
  return float(np.sum(count[full] * np.abs(bins["fraction"][full] - bins["mean_prob"][full])) / count.sum())


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
  """sigmoid(logit(p) / T) of probabilities f32[...], same shape, float32; T = 1 returns them unchanged."""
  if not temperature > 0:
    raise InputError(f"temperature must be positive, got {temperature}; refit it with evaluate.py")
  p = np.asarray(probs, np.float32)
  if temperature == 1.0:
    return p
  return special.expit(special.logit(p) / np.float32(temperature)).astype(np.float32)


def logit_histogram(probs: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
  """(mean logit f64[2, LOGIT_BINS], count f64[2, LOGIT_BINS]) per (background, foreground) and logit bin."""
  p, t = _check(probs, truth)
  z = np.clip(special.logit(p.astype(np.float64)), -LOGIT_RANGE, LOGIT_RANGE)
  index = np.minimum(((z + LOGIT_RANGE) / (2 * LOGIT_RANGE) * LOGIT_BINS).astype(np.int64), LOGIT_BINS - 1)
  index = index + LOGIT_BINS * t
  count = np.bincount(index, minlength=2 * LOGIT_BINS).astype(np.float64)
  total = np.bincount(index, z, 2 * LOGIT_BINS)
  mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
  return mean.reshape(2, LOGIT_BINS), count.reshape(2, LOGIT_BINS)


def log_loss(probs: Any, truth: Any, temperature: float = 1.0) -> float:
  """Mean binary cross-entropy (nats per pixel) of sigmoid(logit(p) / T) against the truth."""
  mean, count = logit_histogram(probs, truth)
  return _binned_log_loss(mean, count, temperature)


def _binned_log_loss(mean: np.ndarray, count: np.ndarray, temperature: float) -> float:
  """Mean log-loss from a logit histogram: -log sigmoid(-z/T) for background, -log sigmoid(z/T) for foreground."""
  loss = count[0] * np.logaddexp(0.0, mean[0] / temperature) + count[1] * np.logaddexp(0.0, -mean[1] / temperature)
  return float(loss.sum() / count.sum())


def fit_temperature(probs: Any, truth: Any) -> float:
  """The temperature T in TEMPERATURE_RANGE minimising the mean log-loss of sigmoid(logit(p) / T)."""
  mean, count = logit_histogram(probs, truth)
  if not count.sum():
    raise InputError("temperature fitting needs at least one pixel of the val split")
  lo, hi = np.log(TEMPERATURE_RANGE)
  result = optimize.minimize_scalar(lambda log_t: _binned_log_loss(mean, count, float(np.exp(log_t))),
                                    bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
  return float(np.exp(result.x))


def calibration_summary(probs: Any, truth: Any, temperature: float, bins: int = 15) -> dict[str, Any]:
  """ECE and log-loss before and after temperature `temperature`, with both sets of reliability bins."""
  scaled = apply_temperature(probs, temperature)
  before, after = reliability_bins(probs, truth, bins), reliability_bins(scaled, truth, bins)
  histogram = logit_histogram(probs, truth)
  listed = lambda b: {k: [None if np.isnan(v) else float(v) for v in b[k]] for k in ("mean_prob", "fraction")} | {
      "count": b["count"].tolist()}
  return {"temperature": float(temperature), "bins": bins,
          "ece_before": expected_calibration_error(before), "ece_after": expected_calibration_error(after),
          "log_loss_before": _binned_log_loss(*histogram, 1.0), "log_loss_after": _binned_log_loss(*histogram, temperature),
          "reliability_before": listed(before), "reliability_after": listed(after)}


def save_temperature(workdir: str, record: dict[str, Any]) -> str:
  """Stores `record` ({'step', 'temperature', 'fitted_on', ...}) in workdir/calibration.json under its step."""
  path = os.path.join(workdir, FILE)
  records = _read(path) if os.path.isfile(path) else {}
  records[str(int(record["step"]))] = record
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      json.dump(records, f, indent=1)
    os.replace(tmp, path)
  except OSError as e:
    raise InputError(f"cannot store the temperature in {path} ({e.strerror}); make the workdir writable "
                     "or evaluate a copy of it") from e
  return path


def _read(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      records = json.load(f)
  except (OSError, ValueError) as e:
    raise InputError(f"cannot read {path} ({e}); delete it and rerun evaluate.py to refit the temperature") from e
  if not isinstance(records, dict):
    raise InputError(f"{path} is not a calibration file; delete it and rerun evaluate.py")
  return records


def stored_record(workdir: str, step: int) -> dict[str, Any] | None:
  """The record stored for checkpoint `step` in workdir/calibration.json, or None; InputError when damaged."""
  path = os.path.join(workdir, FILE)
  record = _read(path).get(str(int(step))) if os.path.isfile(path) else None
  if record is None:
    return None
  temperature = record.get("temperature")
  if not isinstance(temperature, (int, float)) or not temperature > 0:
    raise InputError(f"{path} step {step}: temperature {temperature!r} is not a positive number; delete the file "
                     "and rerun (it is fitted again on the val split)")
  return record
