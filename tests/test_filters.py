"""Filter attribution: exact channel ablation, gradient x activation, Dice drops, what filters see."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.errors import InputError
from unet_jax.explain import filters, probe
from unet_jax.network.model import init_variables, UNet

SIGNAL = 2  # the one live channel of enc0 in the constructed model


def _one_channel_model() -> tuple[UNet, dict]:
  """Positive weights (so the network is monotone on positive images) and enc0 = channel SIGNAL alone."""
  model = UNet(depth=1, base_features=4, norm="none")
  params = jax.tree.map(jnp.abs, init_variables(model, jax.random.PRNGKey(0))["params"])
  kernel = params["enc0"]["conv1"]["kernel"]
  params["enc0"]["conv1"]["kernel"] = kernel * (jnp.arange(kernel.shape[-1]) == SIGNAL)
  return model, {"params": params}


def _image_and_object():
  image = jax.random.uniform(jax.random.PRNGKey(1), (24, 24), minval=0.1, maxval=1.0)
  return image, jnp.zeros((24, 24)).at[8:16, 8:16].set(1.0)


@pytest.mark.slow
def test_the_channel_that_carries_the_signal_ranks_first_exact_and_estimate():
  model, variables = _one_channel_model()
  image, weights = _image_and_object()
  exact = filters.score_drop_per_channel(model, variables, image, weights, "enc0", batch_size=3)
  estimate = np.asarray(filters.gradient_x_activation(model, variables, image, weights)["enc0"])
  for drops in (exact, estimate):
    assert np.argmax(drops) == SIGNAL and drops[SIGNAL] > 0
    np.testing.assert_array_equal(np.delete(drops, SIGNAL), 0.0)
  # Zeroing the only live channel leaves the encoder's skip and bottleneck path with nothing.
  full = float(probe.object_scores(model, variables, image[None], weights)[0])
  silent = float(probe.object_scores(model, variables, image[None], weights,
                                     {"enc0": lambda a: jnp.zeros_like(a)})[0])
  assert exact[SIGNAL] == pytest.approx(full - silent, rel=1e-5)


@pytest.mark.slow
def test_estimate_is_exact_before_the_linear_head():
  model = UNet(depth=2, base_features=4)
  variables = init_variables(model, jax.random.PRNGKey(2))
  image = jax.random.uniform(jax.random.PRNGKey(3), (32, 28))
  weights = jnp.zeros((32, 28)).at[4:20, 6:18].set(1.0)
  exact = filters.score_drop_per_channel(model, variables, image, weights, "dec0")
  estimate = filters.gradient_x_activation(model, variables, image, weights)["dec0"]
  np.testing.assert_allclose(exact, estimate, rtol=1e-4, atol=1e-5)
  assert np.abs(exact).max() > 1e-3


@pytest.mark.slow
def test_dice_drop_per_channel():
  model, variables = _one_channel_model()
  tiles = np.asarray(jax.random.uniform(jax.random.PRNGKey(4), (3, 16, 16), minval=0.1, maxval=1.0))
  logits = np.asarray(probe.logits_edited(model, variables, jnp.asarray(tiles))[0])
  masks = (logits > np.median(logits)).astype(np.uint8)  # half the pixels are "true"
  pred = logits >= 0.0  # sigmoid >= 0.5
  expected = 2 * (pred & (masks > 0)).sum() / (pred.sum() + masks.sum())
  dice, zeroed = filters.dice_per_channel_zeroed(model, variables, tiles, masks, "enc0", 0.5, batch_size=2)
  assert dice == pytest.approx(expected, rel=1e-6)
  np.testing.assert_allclose(np.delete(zeroed, SIGNAL), dice)  # dead channels change nothing


@pytest.mark.slow
def test_pictures_of_filters():
  model, variables = _one_channel_model()
  kernels = filters.first_layer_kernels(variables)
  np.testing.assert_array_equal(kernels[1], np.asarray(variables["params"]["enc0"]["conv0"]["kernel"])[..., 0, 1])
  tiles = np.full((2, 32, 32), 0.1, np.float32)
  tiles[1, 20:24, 8:12] = 1.0  # one bright spot: where a monotone channel fires most
  patches, values = filters.top_activating_patches(model, variables, tiles, "enc0", np.array([SIGNAL]), 2, 8)
  assert patches.shape == (1, 2, 8, 8) and values[0, 0] >= values[0, 1]
  assert patches[0, 0].max() == 1.0  # the bright spot is in the best patch
  grey = jnp.full((1, 16, 16), 0.5)
  before = probe.logits_edited(model, variables, grey)[1]["enc0"][0, 8, 8, SIGNAL]
  image = filters.maximize_activation(model, variables, "enc0", np.array([SIGNAL]), jax.random.PRNGKey(0),
                                      size=16, steps=8)
  after = probe.logits_edited(model, variables, jnp.asarray(image))[1]["enc0"][0, 8, 8, SIGNAL]
  assert image.shape == (1, 16, 16) and 0.0 <= image.min() and image.max() <= 1.0 and after > before


@pytest.mark.slow
def test_bad_layer_is_one_line_listing_valid_layers():
  model, variables = _one_channel_model()
  image, weights = _image_and_object()
  with pytest.raises(InputError) as e:
    filters.score_drop_per_channel(model, variables, image, weights, "decoder")
  assert "\n" not in str(e.value) and str(e.value).endswith("enc0, bottleneck, dec0")
