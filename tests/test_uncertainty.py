"""Per-transform TTA maps, ensemble disagreement, per-object confidence, AUROC and the review list."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from unet_jax.errors import InputError
from unet_jax.inference import windows
from unet_jax.inference.predictor import Predictor
from unet_jax.network.model import UNet
from unet_jax.reports import uncertainty
from tests.test_inference import random_like


def _eval_config(window: int = 16, tta: str = "none") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"window": window, "overlap": 0.5, "blend": "gaussian", "sigma": 0.125,
                                    "batch_size": 4, "tta": tta, "engine": "xla", "threshold": 0.5})


@pytest.fixture(scope="module")
def unet():
  model = UNet(ndim=2, depth=2, base_features=4, norm="batch", upsample="resize")
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  return model, random_like(shapes, seed=5)


@pytest.mark.slow
def test_transform_maps_average_to_the_tta_prediction(unet):
  model, variables = unet
  image = np.random.default_rng(0).random((2, 24, 24), np.float32)
  predictor = lambda **c: Predictor.create(model, variables, _eval_config(**c))
  probs, unc = uncertainty.tta_probabilities(predictor(tta="dihedral"), image)
  for z in range(2):
    expected = windows.sliding_window_predict(windows.predictor(model, "dihedral"), variables, image[z], (16, 16))
    np.testing.assert_allclose(probs[z], np.asarray(expected), atol=1e-5)
  plain, _ = uncertainty.tta_probabilities(predictor(tta="none"), image)
  np.testing.assert_allclose(plain, predictor().raw_probabilities(image), atol=1e-6)
  assert unc.shape == (2, 24, 24) and 0 < unc.mean() and unc.max() <= 0.5
  # Equivariance: the maps of a rotated image are the rotated maps (windows placed symmetrically).
  turned, turned_unc = uncertainty.tta_probabilities(predictor(tta="dihedral"), np.rot90(image, 1, (1, 2)).copy())
  np.testing.assert_allclose(turned, np.rot90(probs, 1, (1, 2)), atol=1e-5)
  np.testing.assert_allclose(turned_unc, np.rot90(unc, 1, (1, 2)), atol=1e-5)


def test_transform_subset_and_group():
  assert windows.transform_subset("dihedral", "none") == [0]
  assert windows.transform_subset("dihedral", "flips") == [0, 1, 4, 5]
  assert windows.transform_subset("flips", "flips") == [0, 1, 2, 3]
  with pytest.raises(InputError, match="not part of"):
    windows.transform_subset("flips", "dihedral")
  assert uncertainty.tta_group((16, 16)) == "dihedral"
  assert uncertainty.tta_group((16, 32)) == "flips"


def test_ensemble_disagreement():
  a, b = np.zeros((1, 2, 2), np.float32), np.ones((1, 2, 2), np.float32)
  b[0, 0, 0] = 0.0
  mean, std = uncertainty.ensemble([a, b])
  assert mean[0].tolist() == [[0.0, 0.5], [0.5, 0.5]] and std[0].tolist() == [[0.0, 0.5], [0.5, 0.5]]
  with pytest.raises(InputError, match="several --workdir"):
    uncertainty.ensemble([a])


def test_object_confidence_by_hand():
  labels = np.zeros((1, 6, 8), np.int32)
  labels[0, 1:5, 1:4] = 1  # 12 px, 10 on the boundary, 2 inside
  labels[0, 2:4, 6:8] = 2  # 4 px touching the right edge: all boundary
  probs = np.zeros((1, 6, 8), np.float32)
  probs[labels == 1] = 0.9
  probs[labels == 2] = 0.6
  unc = np.where(labels == 1, 0.05, 0.25).astype(np.float32)
  table = uncertainty.object_confidence(probs, labels, unc)
  assert table["mean_prob"] == pytest.approx([0.9, 0.6]) and table["mean_uncertainty"] == pytest.approx([0.05, 0.25])
  assert table["certainty"] == pytest.approx([0.9, 0.5]) and table["confidence"] == pytest.approx([0.81, 0.3])
  boundary = uncertainty.inner_boundary(labels)
  assert boundary[labels == 1].sum() == 10 and boundary[labels == 2].sum() == 4 and not boundary[labels == 0].any()
  assert table["boundary_sharpness"][0] > table["boundary_sharpness"][1] > 0
  plain = uncertainty.object_confidence(probs, labels)
  assert plain["confidence"] == pytest.approx([0.9, 0.6]) and np.isnan(plain["mean_uncertainty"]).all()


def test_auroc_on_a_constructed_case():
  # Correct detections score 0.9, 0.8, 0.6; spurious ones 0.7 and 0.6 (a tie with a correct one).
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.6])
  correct = np.array([1, 1, 0, 1, 0], bool)
  # Pairs (correct, spurious): 0.9 beats both, 0.8 beats both, 0.6 loses to 0.7 and ties 0.6: 4.5 of 6.
  assert uncertainty.auroc(scores, correct) == pytest.approx(4.5 / 6)
  assert uncertainty.auroc(scores, np.ones(5, bool)) is None and uncertainty.auroc([], []) is None
  rng = np.random.default_rng(0)
  s, y = rng.normal(size=300).round(1), rng.uniform(size=300) < 0.6
  s[y] += 0.8
  u = stats.mannwhitneyu(s[y], s[~y]).statistic
  assert uncertainty.auroc(s, y) == pytest.approx(u / (y.sum() * (~y).sum()))


def test_auroc_interval_covers_and_separates():
  rng = np.random.default_rng(1)
  y = rng.uniform(size=400) < 0.7
  s = rng.normal(size=400) + 1.5 * y  # true AUROC = Phi(1.5 / sqrt 2) = 0.856
  ci = uncertainty.auroc_interval(s, y, 1000, 0.95, seed=0)
  assert ci["low"] < 0.856 < ci["high"] and ci["high"] - ci["low"] < 0.1 and ci["n_positive"] == y.sum()
  assert ci == uncertainty.auroc_interval(s, y, 1000, 0.95, seed=0)  # seeded
  perfect = uncertainty.auroc_interval(np.arange(10.0), np.arange(10) >= 3, 1000, 0.95, seed=0)
  assert perfect["estimate"] == perfect["low"] == perfect["high"] == 1.0


def test_review_list_catches_the_least_confident_errors():
  confidence = np.array([0.95, 0.2, 0.9, 0.3, 0.85, 0.5, 0.1])
  matched = np.array([1, 0, 1, 1, 1, 0, 0], bool)  # objects 1, 5, 6 are spurious
  table = {s: confidence for s in uncertainty.SCORES}
  r = uncertainty.review(table, matched, top_k=3, resamples=1000)
  assert r["order"] == [6, 1, 3] and r["caught"] == 2 and r["n_wrong"] == 3 and r["k_all"] == 4  # 5 is 4th
  assert r["random_expected"] == pytest.approx(3 * 3 / 7)
  # Correct ones score 0.95, 0.9, 0.3, 0.85 against spurious 0.2, 0.5, 0.1: 0.3 loses to 0.5 only: 11 of 12.
  assert r["auroc"]["confidence"]["estimate"] == pytest.approx(11 / 12)
  assert uncertainty.review(table, matched, top_k=50)["top_k"] == 7
