"""Loss values and pixel metrics on hand-made cases."""

import jax.numpy as jnp
import numpy as np
import pytest

from train_steps import batch_2d, train_states
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



def test_boundary_weights_mark_a_band_on_both_sides_of_each_edge():
  mask = np.zeros((1, 9, 9, 1), np.float32)
  mask[0, 3:6, 3:6] = 1.0  # a 3x3 square
  mask[0, 0:2, 7:9] = 1.0  # an object in the corner: the patch's border is not an edge
  w = np.asarray(losses.boundary_weights(jnp.asarray(mask), 1, 4.0))[0, ..., 0]
  band = np.zeros((9, 9), bool)
  band[2:7, 2:7] = True  # within 1 px of the square's edge, outside and inside it
  band[4, 4] = False  # its centre is 1 px from no edge
  band[0:3, 6:9] = True  # the corner object's band, but for its pixel at the patch's corner
  band[0, 8] = False
  np.testing.assert_array_equal(w, np.where(band, 5.0, 1.0))
  volume = np.zeros((1, 3, 9, 9, 1), np.float32)
  volume[0, 1] = mask[0]  # one section: the band is per section, never across z
  w3 = np.asarray(losses.boundary_weights(jnp.asarray(volume), 1, 4.0))[0, ..., 0]
  np.testing.assert_array_equal(w3[1], w)
  np.testing.assert_array_equal(w3[[0, 2]], 1.0)


def test_a_boundary_weight_changes_the_loss(tiny_config):
  batch = batch_2d()
  loss = lambda config: float(next(train_states(config, batch, 1))[1]["loss"])
  plain = loss(tiny_config)
  tiny_config.train.boundary_weight = 5.0
  assert loss(tiny_config) != pytest.approx(plain, rel=1e-3)
