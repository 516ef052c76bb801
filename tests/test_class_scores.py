"""Multi-class scoring and reporting: per-class intervals, per-object scores of object classes, class calibration,
object doubt and review lists, class pictures, class-centred patch sampling, their config checks."""

import json

import matplotlib.image
import numpy as np
import pytest

from configs import unet2d
from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.inference.predictor import Predictor
from unet_jax.io.data import Split
from unet_jax.network.model import build_model
from unet_jax.reports import figures, uncertainty
from unet_jax.scores import calibration, class_calibration, classes, intervals
from unet_jax.training import sampling


def class_config(num_classes: int = 3):
  c = unet2d.get_config("tiny")
  c.data.name, c.data.labels_root = "folder", "labels"
  c.model.num_classes, c.model.output = num_classes, "softmax"
  return c


def one_vs_rest(pred: np.ndarray, truth: np.ndarray, c: int) -> tuple[int, int, int]:
  return int(np.sum((pred == c) & (truth == c))), int(np.sum((pred == c) & (truth != c))), int(
      np.sum((pred != c) & (truth == c)))


def test_class_intervals_rest_on_slices_and_their_estimates_equal_numpy():
  rng = np.random.default_rng(0)
  truth = rng.integers(0, 3, (12, 8, 8))
  pred = np.where(rng.uniform(size=truth.shape) < 0.6, truth, rng.integers(0, 3, truth.shape))
  confusions = classes.slice_confusions(pred, truth, 3)
  assert confusions.shape == (12, 3, 3) and confusions[5, 2, 1] == np.sum((truth[5] == 2) & (pred[5] == 1))
  got = classes.class_intervals(confusions, 1000, 0.9, 7)
  dice = []
  for c in range(3):
    tp, fp, fn = one_vs_rest(pred, truth, c)
    dice.append(2 * tp / (2 * tp + fp + fn))
    ci = got["per_class"][c]
    assert ci["dice"]["estimate"] == pytest.approx(dice[-1]) and ci["iou"]["estimate"] == pytest.approx(
        tp / (tp + fp + fn))
    assert ci["precision"]["estimate"] == pytest.approx(tp / (tp + fp))
    assert ci["recall"]["estimate"] == pytest.approx(tp / (tp + fn))
    assert ci["dice"]["low"] < dice[-1] < ci["dice"]["high"] and ci["dice"]["n"] == 12
  assert got["mean_dice"]["estimate"] == pytest.approx(np.mean(dice))
  # A resample's mean Dice is the mean over classes of the Dice of its summed slices: check one by hand.
  weights = intervals.resample_weights(12, 1000, 7)
  summed = np.tensordot(weights[0], confusions, 1)
  assert classes.scores_from_confusion(summed)["mean_dice"] == pytest.approx(
      classes._mean_over_classes("dice", 3)(summed.reshape(9)))  # pylint: disable=protected-access
  assert classes.class_intervals(confusions, 1000, 0.9, 7) == got  # seeded


def squares(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]], value: int,
            base: np.ndarray | None = None) -> np.ndarray:
  """A label map of `shape` (or `base`) with rectangles (y0, x0, y1, x1) set to `value`."""
  out = np.zeros(shape, np.uint8) if base is None else base.copy()
  for y0, x0, y1, x1 in boxes:
    out[y0:y1, x0:x1] = value
  return out


def test_object_scores_of_one_class_equal_hand_counts():
  # Class 3: three true objects; the prediction finds A exactly, B shifted (IoU 12/20 = 0.6), misses C and adds
  # a spurious D and a 2-pixel speck (dropped by min_size). Class 1 pixels elsewhere must not count.
  truth = squares((32, 32), [(2, 2, 6, 6), (10, 10, 14, 14), (20, 20, 24, 24)], 3)
  truth = squares((32, 32), [(26, 2, 30, 6)], 1, truth)[None]
  pred = squares((32, 32), [(2, 2, 6, 6), (10, 11, 14, 15), (2, 20, 6, 24), (30, 30, 31, 32)], 3)
  pred = squares((32, 32), [(26, 2, 30, 6)], 1, pred)[None]
  prob = np.full(pred.shape, 0.8, np.float32)
  rows, ov, labels = classes.object_scores(pred, truth, prob, 3, 2, 3, (0.5, 0.75), (1000, 0.95, 0))
  assert (ov.n_true, ov.n_pred, labels.max()) == (3, 3, 3)
  at_half, at_75 = rows
  assert (at_half["found"], at_half["missed"], at_half["spurious"]) == (2, 1, 1)
  assert (at_75["found"], at_75["missed"], at_75["spurious"]) == (1, 2, 2)
  for row, found in ((at_half, 2), (at_75, 1)):
    assert row["precision"] == pytest.approx(found / 3) and row["recall"] == pytest.approx(found / 3)
    assert row["f1"] == pytest.approx(2 * found / (2 * found + (3 - found) + (3 - found)))
    assert row["intervals"]["precision"] == intervals.proportion(found, 3)
  assert at_half["mean_matched_iou"] == pytest.approx((1 + 0.6) / 2)
  assert at_half["pq"] == pytest.approx((1 + 0.6) / (2 + 1))


def softmax(z: np.ndarray) -> np.ndarray:
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_softmax_temperature_recovers_overconfidence_and_keeps_the_label_map():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(2, 100, 100, 4)) * 1.5
  labels = (rng.uniform(size=z.shape[:-1])[..., None] > np.cumsum(softmax(z), -1)).sum(-1)  # drawn from softmax(z)
  probs = softmax(2.0 * z).astype(np.float32)  # twice too confident
  t = class_calibration.fit_temperature(probs, labels, "softmax")
  assert t == pytest.approx(2.0, rel=0.08)
  scaled = class_calibration.apply_temperature(probs, t, "softmax")
  np.testing.assert_allclose(scaled, softmax(2.0 * z / t), atol=1e-5)
  np.testing.assert_array_equal(scaled.argmax(-1), probs.argmax(-1))
  assert class_calibration.apply_temperature(probs, 1.0, "softmax") is probs
  flat_p, flat_t = probs.reshape(-1, 4).astype(np.float64), labels.ravel()
  nll = -np.mean(np.log(softmax(np.log(flat_p) / t)[np.arange(len(flat_t)), flat_t]))
  assert class_calibration.log_loss(probs, labels, "softmax", t) == pytest.approx(nll, rel=1e-5)
  summary = class_calibration.calibration_summary(probs, labels, t, "softmax", 10)
  assert summary["after"]["top_label"]["ece"] < summary["before"]["top_label"]["ece"]
  assert summary["log_loss_after"] < summary["log_loss_before"]


def test_sigmoid_classes_share_the_binary_temperature_of_their_one_vs_rest_pairs():
  rng = np.random.default_rng(2)
  probs = rng.uniform(0.01, 0.99, (3, 10, 10, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (3, 10, 10))
  onehot = labels[..., None] == np.arange(3)
  assert class_calibration.fit_temperature(probs, labels, "sigmoid") == calibration.fit_temperature(probs, onehot)
  np.testing.assert_array_equal(class_calibration.apply_temperature(probs, 1.7, "sigmoid"),
                                calibration.apply_temperature(probs, 1.7))


def reference_ece(p: np.ndarray, hit: np.ndarray, bins: int) -> float:
  index = np.minimum((p * bins).astype(int), bins - 1)
  return sum(abs(hit[index == b].mean() - p[index == b].mean()) * np.sum(index == b) for b in range(bins)
             if np.any(index == b)) / p.size


def test_class_reliability_equals_numpy_reference():
  rng = np.random.default_rng(3)
  probs = softmax(rng.normal(size=(2, 6, 6, 3)) * 2).astype(np.float32)
  labels = rng.integers(0, 3, (2, 6, 6))
  got = class_calibration.reliability(probs, labels, 5)
  assert got["top_label"]["ece"] == pytest.approx(reference_ece(probs.max(-1), probs.argmax(-1) == labels, 5))
  for c in range(3):
    assert got["per_class"][c]["ece"] == pytest.approx(reference_ece(probs[..., c], labels == c, 5))
  with pytest.raises(InputError, match="outside 0..2"):
    class_calibration.reliability(probs, labels + 1, 5)


def test_object_doubt_equals_numpy_and_the_review_list_puts_the_most_doubtful_first():
  probs = np.zeros((1, 4, 8, 3), np.float32)
  probs[..., 0] = 1.0
  objects = np.zeros((1, 4, 8), np.int32)
  objects[0, :, :2], objects[0, :, 4:6] = 1, 2
  probs[0, :, :2] = (0.1, 0.0, 0.9)  # object 1: confident
  probs[0, :2, 4:6] = (0.3, 0.2, 0.5)  # object 2: half its pixels doubtful
  probs[0, 2:, 4:6] = (0.0, 0.4, 0.6)
  got = uncertainty.class_object_doubt(probs, objects, 2)
  entropy = lambda q: -sum(v * np.log(v) for v in q if v > 0) / np.log(3)
  doubt = [entropy((0.1, 0.9)), (entropy((0.3, 0.2, 0.5)) + entropy((0.4, 0.6))) / 2]
  np.testing.assert_allclose(got["doubt"], doubt, rtol=1e-6)
  np.testing.assert_allclose(got["confidence"], 1 - np.array(doubt), rtol=1e-6)
  np.testing.assert_allclose(got["mean_prob"], [0.9, 0.55], rtol=1e-6)
  table = {"label": np.array([1, 2]), **got}
  review = uncertainty.review(table, np.array([True, False]), 1, scores=uncertainty.CLASS_SCORES)
  assert review["order"] == [1] and review["caught"] == 1 and set(review["auroc"]) == set(uncertainty.CLASS_SCORES)
  assert review["auroc"]["confidence"]["estimate"] == 1.0


def test_class_overlay_colours_and_panels(tmp_path):
  image = np.full((4, 4), 0.5, np.float32)
  labels = np.array([[0, 1, 2, 2]] * 4)
  colours = figures.class_colours(3)
  rgb = figures.label_overlay(image, labels, colours, alpha=1.0)
  np.testing.assert_array_equal(rgb[0, 0], [128, 128, 128])  # class 0 keeps the grey
  np.testing.assert_array_equal(rgb[0, 1], colours[1])
  np.testing.assert_array_equal(rgb[0, 3], colours[2])
  assert len({tuple(c) for c in figures.class_colours(12)}) == 12
  path = tmp_path / "classes.png"
  figures.save_class_panels(str(path), image, labels, np.roll(labels, 1, 1), ["rest", "a", "b"], 64, "slice 0")
  assert matplotlib.image.imread(path).ndim == 3


def test_class_sampling_centres_patches_on_classes_by_weight_deterministically():
  labels = np.zeros((2, 64, 64), np.uint8)
  labels[:, :8, :8] = 1  # 1.6 % of the voxels
  labels[:, 40:, 40:] = 2
  split = Split(np.random.default_rng(0).uniform(size=labels.shape).astype(np.float32), labels)
  sampler = sampling.PatchSampler.create(split, (16, 16), 0.5, class_sampling=(0.0, 3.0, 1.0))
  np.testing.assert_allclose(sampler.class_probs, [0.0, 0.75, 0.25])
  rng = np.random.default_rng(0)
  centres = [labels[tuple(sampler.draw_centre(rng))] for _ in range(2000)]
  assert np.mean(np.array(centres) == 1) == pytest.approx(0.75, abs=0.03) and 0 not in centres
  only_two = sampling.PatchSampler.create(split, (16, 16), 0.5, class_sampling=(0.0, 0.0, 1.0))
  assert all((b["mask"] == 2).any() for b in [only_two.sample(np.random.default_rng(i), 1) for i in range(50)])
  first = next(sampling.batches(sampler, 4, 7, 3))
  np.testing.assert_array_equal(first["image"], next(sampling.batches(sampler, 4, 7, 3))["image"])
  assert not np.array_equal(first["image"], next(sampling.batches(sampler, 4, 7, 4))["image"])
  absent = sampling.PatchSampler.create(split, (16, 16), 0.5, class_sampling=(1.0, 1.0, 1.0, 5.0))
  np.testing.assert_allclose(absent.class_probs, [1 / 3, 1 / 3, 1 / 3, 0.0])  # class 3 is absent: renormalised
  with pytest.raises(InputError, match="only classes absent"):
    sampling.PatchSampler.create(split, (16, 16), 0.5, class_sampling=(0.0, 0.0, 0.0, 1.0))
  with pytest.raises(InputError, match="one weight per class"):
    sampling.PatchSampler.create(split, (16, 16), 0.5, class_sampling=(1.0, 1.0))


def test_config_checks_of_the_class_report_fields():
  config_check.validate(unet2d.get_config("vnc_classes"))
  c = class_config(3)
  c.eval.calibrate, c.eval.object_classes, c.train.class_sampling = True, (1, 2), (1.0, 2.0, 4.0)
  c.data.class_names = ("rest", "a", "b")
  config_check.validate(c)
  for field, value, message in (("eval.object_classes", (1, 3), "below model.num_classes=3"),
                                ("eval.object_classes", (1, 1), "distinct"),
                                ("train.class_sampling", (1.0, 2.0), "3 weights"),
                                ("train.class_sampling", (0.0, 0.0, 0.0), "positive sum"),
                                ("data.class_names", ("a", "b"), "give 3")):
    bad = class_config(3)
    section, name = field.split(".")
    bad[section][name] = value
    with pytest.raises(InputError, match=message) as e:
      config_check.validate(bad)
    assert "\n" not in str(e.value)
  binary = unet2d.get_config("tiny")
  binary.train.class_sampling = (1.0,)
  with pytest.raises(InputError, match="train.class_sampling is for multi-class models"):
    config_check.validate(binary)


def test_predictor_fits_and_applies_the_class_temperature(tmp_path):
  c = class_config(3)
  c.eval.calibrate = True
  predictor = Predictor.create(build_model(c.model), None, c.eval, step=5)
  rng = np.random.default_rng(4)
  z = rng.normal(size=(2, 20, 20, 3))
  labels = (rng.uniform(size=z.shape[:-1])[..., None] > np.cumsum(softmax(z), -1)).sum(-1)
  raw = softmax(3.0 * z).astype(np.float32)
  decided = predictor.decide(c, str(tmp_path), raw, labels)
  assert decided.temperature == decided.fitted_temperature == class_calibration.fit_temperature(raw, labels, "softmax")
  assert decided.threshold["source"] == "config eval.threshold"
  stored = json.loads((tmp_path / "calibration.json").read_text())["5"]
  assert stored["temperature"] == decided.temperature
  np.testing.assert_array_equal(decided.calibrate(raw),
                                class_calibration.apply_temperature(raw, decided.temperature, "softmax"))
