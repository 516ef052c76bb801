"""The U-Net's fast max pooling equals flax's, in values and gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.network.model import max_pool2


@pytest.mark.parametrize("shape", [(2, 4, 6, 3), (1, 2, 4, 6, 2)])
def test_max_pool2_matches_flax_values_and_gradient(shape):
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)  # no ties
  window = (2,) * (len(shape) - 2)
  reference = lambda x: nn.max_pool(x, window, strides=window)
  np.testing.assert_array_equal(max_pool2(x), reference(x))
  weights = jnp.asarray(np.random.default_rng(1).standard_normal(reference(x).shape), jnp.float32)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * weights))(x)
  np.testing.assert_array_equal(grad(max_pool2), grad(reference))


def test_max_pool2_by_hand():
  x = jnp.array([[1., 5., 2., 0.], [3., 4., 8., 7.]]).reshape(1, 2, 4, 1)
  np.testing.assert_array_equal(max_pool2(x)[0, :, :, 0], [[5., 8.]])
