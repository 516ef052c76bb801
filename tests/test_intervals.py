"""Wilson intervals against published values; the t interval of repeats by hand; the seeded bootstrap's coverage,
determinism and units."""

import numpy as np
import pytest

from unet_jax.errors import InputError
from unet_jax.scores import intervals


@pytest.mark.parametrize("k,n,low,high", [  # Newcombe (1998), Stat. Med. 17:857, Table II, method 3
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_textbook_values(k, n, low, high):
  lo, hi = intervals.wilson_interval(k, n, 0.95)
  assert (float(lo), float(hi)) == pytest.approx((low, high), abs=5e-5)


def test_wilson_vectorised_edges_and_level():
  lo, hi = intervals.wilson_interval([0, 10, 0], [10, 10, 0])
  assert lo[0] == 0.0 and hi[1] == pytest.approx(1.0) and (lo[2], hi[2]) == (0.0, 1.0)  # n = 0: no information
  narrow = intervals.wilson_interval(81, 263, 0.90)
  assert narrow[0] > 0.2553 and narrow[1] < 0.3662
  p = intervals.proportion(81, 263)
  assert p["estimate"] == pytest.approx(81 / 263) and p["n"] == 263 and p["method"] == "wilson"
  with pytest.raises(InputError, match="successes"):
    intervals.wilson_interval(5, 3)
  with pytest.raises(InputError, match="confidence"):
    intervals.wilson_interval(1, 3, 1.5)


def test_mean_interval_is_the_t_interval_of_repeats():
  m = intervals.mean_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.302653: half-width 4.302653 / sqrt(3)
  assert (m["estimate"], m["sd"], m["n"], m["method"]) == (2.0, 1.0, 3, "t")
  assert (m["low"], m["high"]) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
  one = intervals.mean_interval([0.9])
  assert one["estimate"] == 0.9 and one["low"] is None and one["high"] is None  # one run: no spread to measure
  assert intervals.mean_interval([])["estimate"] is None
  with pytest.raises(InputError, match="confidence"):
    intervals.mean_interval([1.0, 2.0], 0.0)


def test_resample_weights_are_seeded_multinomial_draws():
  w = intervals.resample_weights(7, 500, seed=3)
  assert w.shape == (500, 7) and np.all(w.sum(1) == 7)
  assert np.array_equal(w, intervals.resample_weights(7, 500, seed=3))
  assert not np.array_equal(w, intervals.resample_weights(7, 500, seed=4))
  assert w.mean() == pytest.approx(1.0, abs=0.05)  # each unit drawn once per resample on average


def test_bootstrap_covers_the_true_mean_at_the_nominal_rate():
  # 300 seeded draws of 60 exponential values (mean 2); the 95 % percentile interval of the mean
  # should contain 2 about 95 % of the time (the percentile bootstrap undercovers a little at n=60).
  rng = np.random.default_rng(0)
  mean = lambda sums: sums[..., 0] / sums[..., 1]
  covered = []
  for draw in range(300):
    x = rng.exponential(2.0, 60)
    ci = intervals.bootstrap(np.column_stack([x, np.ones_like(x)]), mean, 1000, 0.95, seed=draw)
    covered.append(ci["low"] <= 2.0 <= ci["high"])
  rate = np.mean(covered)
  assert 0.90 <= rate <= 0.97, rate  # binomial sd at 300 draws is 1.3 %; a 90 % or 99 % interval fails


def test_bootstrap_interval_width_matches_the_standard_error():
  x = np.random.default_rng(1).normal(0.0, 1.0, 400)
  ci = intervals.bootstrap(np.column_stack([x, np.ones_like(x)]), lambda s: s[..., 0] / s[..., 1], 2000, 0.95, 0)
  assert ci["high"] - ci["low"] == pytest.approx(2 * 1.96 * x.std() / 20, rel=0.1)
  assert ci["estimate"] == pytest.approx(x.mean()) and ci["n"] == 400 and ci["resamples"] == 2000


def test_pixel_intervals_resample_slices():
  counts = np.array([[90, 10, 10, 890], [80, 20, 20, 880], [70, 30, 30, 870], [95, 5, 5, 895]])
  ci = intervals.pixel_intervals(counts, 1000, 0.95, seed=0)
  tp, fp, fn = counts[:, 0].sum(), counts[:, 1].sum(), counts[:, 2].sum()
  assert ci["dice"]["estimate"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
  assert ci["iou"]["estimate"] == pytest.approx(tp / (tp + fp + fn))
  assert ci["dice"]["n"] == 4
  slice_dice = 2 * counts[:, 0] / (2 * counts[:, 0] + counts[:, 1] + counts[:, 2])
  assert slice_dice.min() <= ci["dice"]["low"] < ci["dice"]["estimate"] < ci["dice"]["high"] <= slice_dice.max()
  same = np.tile(counts[:1], (4, 1))  # identical slices: no spread
  assert intervals.pixel_intervals(same, 1000, 0.95, 0)["dice"]["low"] == pytest.approx(0.9)


def test_instance_units_and_intervals_by_hand():
  units = intervals.instance_units(n_true=4, n_pred=3, matched_iou=np.array([0.8, 0.6]))
  assert units.tolist() == [[1, 0, 0, 0.8], [1, 0, 0, 0.6], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
  ci = intervals.instance_intervals(4, 3, np.array([0.8, 0.6]), 1000, 0.95, 0)
  assert ci["f1"]["estimate"] == pytest.approx(4 / 7) and ci["f1"]["n"] == 5
  assert ci["pq"]["estimate"] == pytest.approx(1.4 / (2 + 0.5 + 1))  # sum IoU / (TP + FP/2 + FN/2)
  assert ci["precision"]["estimate"] == pytest.approx(2 / 3) and ci["recall"]["n"] == 4
  assert ci["precision"]["low"] == pytest.approx(float(intervals.wilson_interval(2, 3)[0]))
  empty = intervals.instance_intervals(0, 0, np.zeros(0), 1000, 0.95, 0)
  assert empty["f1"]["n"] == 0 and empty["f1"]["low"] is None and empty["precision"]["estimate"] is None
