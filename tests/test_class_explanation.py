"""Explanations of a K-class model's objects of one class: the score is that class's probability summed over the
object; a binary model's score stays the sum of its logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile

from configs import unet2d
from unet_jax.errors import InputError
from unet_jax.explain import attribution, explanation, filters, probe
from unet_jax.network.model import UNet

from test_inference import save_random_checkpoint  # pylint: disable=wrong-import-position  (tests/ on the path)
from test_onnx_engine import spread_variables  # pylint: disable=wrong-import-position

K = 3


def _image_and_object(shape=(32, 32)):
  image = jax.random.uniform(jax.random.PRNGKey(7), shape)
  pixels = np.zeros(shape, np.float32)
  pixels[10:20, 8:18] = 1.0
  return image, pixels


@pytest.mark.slow
def test_binary_score_is_still_the_sum_of_logits():
  model = UNet(depth=2, base_features=4)
  variables = spread_variables(model)
  image, pixels = _image_and_object()
  weights = probe.class_weights(pixels, 1)
  assert weights is pixels
  logits = model.apply(variables, image[None, ..., None], train=False)[0, ..., 0]
  score = float(probe.object_scores(model, variables, image[None], jnp.asarray(weights))[0])
  assert score == pytest.approx(float(jnp.sum(logits * pixels)), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_class_score_is_the_class_probability_over_the_object(output):
  model = UNet(depth=2, base_features=4, num_classes=K, output=output)
  variables = spread_variables(model)
  image, pixels = _image_and_object()
  probs = model.probabilities(model.apply(variables, image[None, ..., None], train=False))[0]
  for c in range(K):
    weights = jnp.asarray(probe.class_weights(pixels, K, c))
    assert weights.shape == (32, 32, K)
    score = float(probe.object_scores(model, variables, image[None], weights)[0])
    assert score == pytest.approx(float(jnp.sum(probs[..., c] * pixels)), rel=1e-5)
  with pytest.raises(InputError, match=r"3-class model's object weights need a class axis.*class_weights") as e:
    probe.object_scores(model, variables, image[None], jnp.asarray(pixels))
  assert "\n" not in str(e.value)


def test_class_index_is_checked_in_one_line():
  binary = unet2d.get_config("tiny")
  assert explanation.class_name(binary, None) is None and explanation.class_name(binary, 0) is None
  with pytest.raises(InputError, match=r"--class_index=2 needs a multi-class model"):
    explanation.class_name(binary, 2)
  c = unet2d.get_config("tiny")
  c.model.num_classes = K
  c.data.class_names = ("background", "disc", "square")
  assert explanation.class_name(c, 1) == "disc"
  for index in (None, 3):
    with pytest.raises(InputError, match=r"3-class model explains the objects of one class; give --class_index in "
                       r"0\.\.2 \(0 background, 1 disc, 2 square\)") as e:
      explanation.class_name(c, index)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_class_attributions_are_complete_and_filters_rank_the_class_dice():
  model = UNet(depth=2, base_features=4, num_classes=K, output="softmax")
  variables = spread_variables(model)
  image, pixels = _image_and_object()
  weights = jnp.asarray(probe.class_weights(pixels, K, 2))
  base = attribution.baseline(image, "blurred", 4.0)
  attr, score, base_score, _ = attribution.integrated_gradients_to_tolerance(model, variables, image, weights, base,
                                                                             32, 256, 0.02)
  assert attribution.completeness_error(attr, score, base_score) < 0.02
  assert np.asarray(attribution.seg_grad_cam(model, variables, image, weights, "dec1")).shape == (32, 32)
  labels = np.asarray(jnp.argmax(model.apply(variables, image[None, ..., None], train=False), -1))
  dice, zeroed = filters.dice_per_channel_zeroed(model, variables, np.asarray(image)[None], labels, "bottleneck",
                                                 class_index=2)
  assert dice == 1.0 and zeroed.shape == (16,)  # the label map against itself


@pytest.mark.slow
def test_explain_a_class_of_a_k_class_model_end_to_end(tmp_path):
  c = unet2d.get_config("tiny")
  c.data.name, c.data.labels_root, c.model.num_classes, c.model.output = "folder", "labels", K, "softmax"
  c.data.class_names = ("background", "disc", "square")
  c.explain.ig_steps, c.explain.ig_max_steps, c.explain.sanity_steps = 8, 8, 2
  c.explain.actmax_steps, c.explain.dice_tiles, c.explain.gallery_layers = 2, 2, ("bottleneck",)
  c.explain.gallery_filters, c.explain.actmax_px = 2, 16
  save_random_checkpoint(c, str(tmp_path / "run"))
  image = (np.random.default_rng(0).random((2, 40, 44)) * 255).astype(np.uint8)
  labels = np.random.default_rng(1).integers(0, K, (2, 40, 44)).astype(np.uint8)
  tifffile.imwrite(tmp_path / "stack.tif", image, photometric="minisblack")
  tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
  doc = explanation.explain(c, str(tmp_path / "run"), str(tmp_path / "out"), "4,4,20,24", z=1,
                            input_path=str(tmp_path / "stack.tif"), mask_path=str(tmp_path / "labels.tif"),
                            sanity_checks=False, class_index=1)
  assert doc["class"] == {"index": 1, "name": "disc"}
  [obj] = doc["objects"]
  assert obj["pixels"] == 16 * 20 and 0.0 < obj["score"] < 16 * 20  # a sum of probabilities over the box
  assert "dice" in doc["dataset"] and "probability of class 1" in (tmp_path / "out" / "explain.md").read_text()
