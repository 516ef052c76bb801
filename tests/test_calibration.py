"""Reliability bins and ECE by hand, calibrated vs distorted predictors, temperature recovery, storage."""

import json

import numpy as np
import pytest
from scipy import special

from unet_jax.errors import InputError
from unet_jax.scores import calibration


def _draw(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(calibrated probabilities, labels drawn from them, the map distorted by 1 / temperature)."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(0.0, 3.0, n)
  probs = special.expit(logits).astype(np.float32)
  truth = rng.uniform(size=n) < probs
  return probs, truth, special.expit(logits * temperature).astype(np.float32)


def test_reliability_bins_and_ece_by_hand():
  probs = np.array([0.05, 0.05, 0.15, 0.95, 0.95, 0.95, 0.95], np.float32)
  truth = np.array([0, 1, 0, 1, 1, 1, 0])
  bins = calibration.reliability_bins(probs, truth, bins=10)
  assert bins["count"].tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 4]
  assert bins["fraction"][0] == 0.5 and bins["fraction"][9] == 0.75 and np.isnan(bins["fraction"][5])
  ece = (2 * abs(0.5 - 0.05) + 1 * abs(0.0 - 0.15) + 4 * abs(0.75 - 0.95)) / 7
  assert calibration.expected_calibration_error(bins) == pytest.approx(ece, abs=1e-6)
  assert calibration.reliability_bins(np.array([1.0]), np.array([1]), 10)["count"][9] == 1  # p = 1: last bin


def test_ece_near_zero_when_calibrated_and_not_when_distorted():
  probs, truth, overconfident = _draw(400_000, temperature=2.5)
  assert calibration.expected_calibration_error(calibration.reliability_bins(probs, truth)) < 0.005
  assert calibration.expected_calibration_error(calibration.reliability_bins(overconfident, truth)) > 0.05
  underconfident = special.expit(special.logit(probs) / 2.5)
  assert calibration.expected_calibration_error(calibration.reliability_bins(underconfident, truth)) > 0.05


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(temperature):
  _, truth, distorted = _draw(400_000, temperature, seed=1)
  fitted = calibration.fit_temperature(distorted, truth)
  assert fitted == pytest.approx(temperature, rel=0.03)
  summary = calibration.calibration_summary(distorted, truth, fitted, bins=15)
  assert summary["log_loss_after"] <= summary["log_loss_before"] + 1e-9
  if temperature != 1.0:
    assert summary["ece_after"] < 0.01 < summary["ece_before"]


def test_binned_log_loss_equals_direct_log_loss():
  probs, truth, _ = _draw(50_000, 1.0, seed=2)
  p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
  direct = -np.mean(np.where(truth, np.log(p), np.log1p(-p)))
  assert calibration.log_loss(probs, truth) == pytest.approx(direct, rel=1e-3)
  scaled = special.expit(special.logit(p) / 1.7)
  direct_scaled = -np.mean(np.where(truth, np.log(scaled), np.log1p(-scaled)))
  assert calibration.log_loss(probs, truth, 1.7) == pytest.approx(direct_scaled, rel=1e-3)


def test_apply_temperature():
  p = np.array([0.1, 0.5, 0.9], np.float32)
  assert np.array_equal(calibration.apply_temperature(p, 1.0), p)
  out = calibration.apply_temperature(p, 2.0)
  assert out.dtype == np.float32 and out[1] == 0.5
  assert out[2] == pytest.approx(special.expit(special.logit(0.9) / 2))
  with pytest.raises(InputError, match="positive"):
    calibration.apply_temperature(p, 0.0)


def test_store_and_load_temperature_by_step(tmp_path):
  assert calibration.stored_record(str(tmp_path), 5) is None
  calibration.save_temperature(str(tmp_path), {"step": 5, "temperature": 1.3, "fitted_on": "val"})
  calibration.save_temperature(str(tmp_path), {"step": 9, "temperature": 0.8, "fitted_on": "val"})
  assert calibration.stored_record(str(tmp_path), 5)["temperature"] == 1.3
  assert calibration.stored_record(str(tmp_path), 9)["temperature"] == 0.8
  assert calibration.stored_record(str(tmp_path), 7) is None
  with open(tmp_path / calibration.FILE) as f:
    assert json.load(f)["5"]["fitted_on"] == "val"
  with pytest.raises(InputError, match="cannot store"):
    calibration.save_temperature(str(tmp_path / "absent"), {"step": 1, "temperature": 1.0})
  (tmp_path / calibration.FILE).write_text("{not json")
  with pytest.raises(InputError, match="cannot read"):
    calibration.stored_record(str(tmp_path), 5)


def test_bad_calibration_input():
  with pytest.raises(InputError, match="one shape"):
    calibration.reliability_bins(np.zeros(3), np.zeros(4))
  with pytest.raises(InputError, match=r"\[0, 1\]"):
    calibration.fit_temperature(np.array([0.5, 1.5]), np.array([0, 1]))
