"""Loss values and pixel metrics on hand-made cases."""

import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.errors import InputError
from unet_jax.scores import metrics
from unet_jax.training import losses

BIG = 50.0  # a logit whose sigmoid is 1 to float32 precision


def _logits(mask):
  return jnp.where(mask > 0, BIG, -BIG)


def _mask():
  m = np.zeros((2, 8, 8, 1), np.float32)
  m[0, 2:5, 2:5] = 1
  m[1, 0:2, :] = 1
  return jnp.asarray(m)


def test_perfect_prediction_gives_zero_log_dice():
  mask = _mask()
  assert float(losses.loss_value("log_dice", _logits(mask), mask)) == pytest.approx(0.0, abs=1e-6)
  assert float(losses.loss_value("dice", _logits(mask), mask)) == pytest.approx(0.0, abs=1e-6)


def test_disjoint_prediction_gives_large_log_dice():
  mask = _mask()
  loss = float(losses.loss_value("log_dice", _logits(1 - mask), mask, smooth=1e-3))
  assert loss > 5.0  # -ln(1e-3 / (total + 1e-3)) is about 11
  assert float(losses.loss_value("log_dice", _logits(1 - mask), mask)) > float(losses.loss_value("log_dice", _logits(mask), mask))


def test_soft_dice_hand_value():
  mask = jnp.zeros((1, 2, 2, 1)).at[0, 0, 0, 0].set(1.0)
  logits = jnp.zeros((1, 2, 2, 1))  # p = 0.5 everywhere: 2*0.5 / (2 + 1) with smooth 0
  assert float(losses.soft_dice(losses.batch_sums(logits, mask), smooth=0.0)) == pytest.approx(1.0 / 3.0, rel=1e-6)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_empty_masks_are_finite(name):
  empty = jnp.zeros((2, 8, 8, 1))
  for logits in (_logits(empty), jnp.zeros_like(empty), _logits(1 - empty)):
    value = losses.loss_value(name, logits, empty)
    assert np.isfinite(float(value))
  assert float(losses.loss_value("log_dice", _logits(empty), empty)) == pytest.approx(0.0, abs=1e-6)


def test_log_one_minus_dice_decreases_with_quality():
  mask = _mask()
  good = float(losses.loss_value("log_one_minus_dice", _logits(mask), mask))
  bad = float(losses.loss_value("log_one_minus_dice", _logits(1 - mask), mask))
  assert good < bad and np.isfinite(good)


def test_bce_hand_value():
  mask = jnp.zeros((1, 2, 2, 1)).at[0, 0, 0, 0].set(1.0)
  assert float(losses.loss_value("bce", jnp.zeros_like(mask), mask)) == pytest.approx(float(np.log(2.0)), rel=1e-6)


def test_dice_is_over_the_whole_batch():
  mask = _mask()  # example 0 has 9 pixels, example 1 has 16: batch Dice weights them by size
  logits = _logits(mask).at[0].set(-BIG)  # miss example 0 entirely
  expected = (2 * 16 + 1.0) / (16 + 25 + 1.0)
  assert float(losses.soft_dice(losses.batch_sums(logits, mask))) == pytest.approx(expected, rel=1e-5)


def test_unknown_loss():
  with pytest.raises(InputError, match="train.loss"):
    losses.get_loss("focal")


def test_pixel_scores_hand_computed():
  truth = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
  pred = np.array([1, 1, 1, 0, 1, 0, 0, 0], bool)  # tp 3, fp 1, fn 1, tn 3
  s = metrics.pixel_scores(pred, truth)
  assert s["dice"] == pytest.approx(6 / 8)
  assert s["iou"] == pytest.approx(3 / 5)
  assert s["precision"] == pytest.approx(3 / 4)
  assert s["recall"] == pytest.approx(3 / 4)
  assert s["accuracy"] == pytest.approx(6 / 8)


def test_pixel_scores_empty_cases():
  empty = np.zeros(4, bool)
  assert metrics.pixel_scores(empty, empty)["dice"] == 1.0
  s = metrics.pixel_scores(empty, np.array([1, 0, 0, 0], bool))
  assert s["dice"] == 0.0 and s["recall"] == 0.0 and s["precision"] == 0.0
