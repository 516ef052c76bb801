"""Calibration of K-class probability maps: one temperature fitted on val, per-class and top-label reliability.

Softmax maps (model.output='softmax'): temperature scaling p -> softmax(log p / T) (Guo et al. 2017). The map is
the blend of window probabilities, so, as for binary maps (unet_jax.scores.calibration), T rescales the final
map's log-probabilities, which are the network's logits up to a per-pixel constant that the softmax removes. T is
fitted on the val split only by minimising the mean negative log-likelihood of the true class, by the binary
map's bounded 1-D search over log T, on at most FIT_PIXELS pixels (every n-th pixel, so the fit takes seconds
however large the split). Sigmoid maps (K independent sigmoids) get one T for every class, fitted exactly as the
binary map's on all (pixel, class) pairs against each class's one-vs-rest truth.

Both scalings are monotone and alike for every class, so the argmax label map, and every score of it, is the
same with or without T; what T changes is the probabilities themselves: their reliability, the doubt scores of
objects (unet_jax.reports.uncertainty), the maps a user takes away.

Reliability is measured per class, one-vs-rest (p_k against truth == k, with calibration.reliability_bins), and
top-label (the largest probability against whether its class is the true one: Guo et al.'s multi-class ECE).
"""

from typing import Any

import numpy as np
from scipy import optimize, special

from unet_jax.errors import InputError
from unet_jax.scores import calibration

FIT_PIXELS = 2**21  # pixels the softmax temperature is fitted on (every n-th of the val split)
CHUNK_PIXELS = 2**20  # pixels rescaled at a time
LOG_FLOOR = float(np.log(np.finfo(np.float32).tiny))  # log of a probability of 0 (float32's smallest normal)


def _check(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
  """probs f32[..., K], labels i64[...] of the same leading shape with ids in 0..K-1."""
  p, t = np.asarray(probs, np.float32), np.asarray(labels)
  if p.ndim < 1 or p.shape[:-1] != t.shape:
    raise InputError(f"class calibration needs probabilities [..., K] and labels [...] of one shape, got "
                     f"{p.shape} and {t.shape}")
  if t.size and (t.min() < 0 or t.max() >= p.shape[-1]):
    raise InputError(f"labels hold class ids outside 0..{p.shape[-1] - 1}")
  return p, t.astype(np.int64)


def _check_output(output: str) -> None:
  if output not in ("softmax", "sigmoid"):
    raise InputError(f"model.output must be 'softmax' or 'sigmoid', got {output!r}")


def _scaled_softmax(log_p: np.ndarray, temperature: float) -> np.ndarray:
  return special.softmax(log_p / np.float32(temperature), axis=-1).astype(np.float32)


def apply_temperature(probs: Any, temperature: float, output: str) -> np.ndarray:
  """Class probabilities f32[..., K] at temperature T (softmax(log p / T), or each sigmoid's logit / T); T = 1
  returns them unchanged."""
  _check_output(output)
  if output == "sigmoid":
    return calibration.apply_temperature(probs, temperature)
  if not temperature > 0:
    raise InputError(f"temperature must be positive, got {temperature}; refit it with evaluate.py")
  p = np.asarray(probs, np.float32)
  if temperature == 1.0:
    return p
  flat = p.reshape(-1, p.shape[-1])
  out = np.empty_like(flat)
  for start in range(0, len(flat), CHUNK_PIXELS):  # bounded temporaries, however large the stack
    with np.errstate(divide="ignore"):
      log_p = np.maximum(np.log(flat[start:start + CHUNK_PIXELS]), LOG_FLOOR)
    out[start:start + CHUNK_PIXELS] = _scaled_softmax(log_p, temperature)
  return out.reshape(p.shape)


def _nll(log_p: np.ndarray, labels: np.ndarray, temperature: float) -> float:
  """Mean -log softmax(log p / T)[true class] of log-probabilities f32[N, K] and labels i64[N]."""
  z = log_p / temperature
  true = np.take_along_axis(z, labels[:, None], 1)[:, 0]
  return float(np.mean(special.logsumexp(z, axis=1).astype(np.float64) - true))


def _fit_rows(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Log-probabilities f32[N, K] and labels i64[N] of at most FIT_PIXELS evenly spaced pixels."""
  k = probs.shape[-1]
  flat_p, flat_t = probs.reshape(-1, k), labels.ravel()
  step = max(1, -(-len(flat_t) // FIT_PIXELS))
  with np.errstate(divide="ignore"):
    return np.maximum(np.log(flat_p[::step]), LOG_FLOOR), flat_t[::step]


def log_loss(probs: Any, labels: Any, output: str, temperature: float = 1.0) -> float:
  """Mean negative log-likelihood per pixel (softmax: of the true class; sigmoid: mean binary cross-entropy over
  the (pixel, class) pairs) of the probabilities at temperature T."""
  _check_output(output)
  p, t = _check(probs, labels)
  if output == "sigmoid":
    return calibration.log_loss(p, _one_hot(t, p.shape[-1]), temperature)
  with np.errstate(divide="ignore"):
    log_p = np.maximum(np.log(p.reshape(-1, p.shape[-1])), LOG_FLOOR)
  return _nll(log_p, t.ravel(), temperature)


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
  return labels[..., None] == np.arange(k)


def fit_temperature(probs: Any, labels: Any, output: str) -> float:
  """The temperature in calibration.TEMPERATURE_RANGE minimising the mean negative log-likelihood of the val
  split's probabilities f32[..., K] against its label map."""
  _check_output(output)
  p, t = _check(probs, labels)
  if not t.size:
    raise InputError("temperature fitting needs at least one pixel of the val split")
  if output == "sigmoid":
    return calibration.fit_temperature(p, _one_hot(t, p.shape[-1]))
  log_p, rows = _fit_rows(p, t)
  lo, hi = np.log(calibration.TEMPERATURE_RANGE)
  result = optimize.minimize_scalar(lambda log_t: _nll(log_p, rows, float(np.exp(log_t))), bounds=(lo, hi),
                                    method="bounded", options={"xatol": 1e-5})
  return float(np.exp(result.x))


def _listed(bins: dict[str, np.ndarray]) -> dict[str, list]:
  """Reliability bins as JSON lists (empty bins None)."""
  return {k: [None if np.isnan(v) else float(v) for v in bins[k]] for k in ("mean_prob", "fraction")} | {
      "count": bins["count"].tolist()}


def reliability(probs: Any, labels: Any, bins: int = 15) -> dict[str, Any]:
  """Top-label and per-class reliability of probabilities f32[..., K] against a label map: {'top_label': {'ece',
  'reliability'}, 'per_class': [{'ece', 'reliability'}] * K} (ECE as calibration.expected_calibration_error)."""
  p, t = _check(probs, labels)
  entry = lambda b: {"ece": calibration.expected_calibration_error(b), "reliability": _listed(b)}
  top = entry(calibration.reliability_bins(p.max(-1), np.argmax(p, -1) == t, bins))
  return {"top_label": top, "per_class": [entry(calibration.reliability_bins(p[..., c], t == c, bins))
                                          for c in range(p.shape[-1])]}


def calibration_summary(probs: Any, labels: Any, temperature: float, output: str, bins: int = 15) -> dict[str, Any]:
  """Reliability and log-loss of raw probabilities f32[..., K] before and after temperature T: {'temperature',
  'bins', 'log_loss_before', 'log_loss_after', 'before': `reliability`, 'after': `reliability`}."""
  p, t = _check(probs, labels)
  return {"temperature": float(temperature), "bins": bins, "output": output,
          "log_loss_before": log_loss(p, t, output), "log_loss_after": log_loss(p, t, output, temperature),
          "before": reliability(p, t, bins), "after": reliability(apply_temperature(p, temperature, output), t, bins)}
