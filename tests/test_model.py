"""U-Net shapes, sizes, variants and intermediate activations."""

import jax
import jax.numpy as jnp
import pytest

from unet_jax.errors import InputError
from unet_jax.network.model import UNet


@pytest.mark.slow
@pytest.mark.parametrize("size,depth", [(32, 2), (48, 3), (64, 4), (40, 3)])
def test_output_shape_2d(size, depth):
  model = UNet(depth=depth, base_features=4)
  x = jnp.zeros((2, size, size, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert model.apply(variables, x).shape == (2, size, size, 1)


@pytest.mark.slow
def test_non_square_and_3d():
  model = UNet(depth=2, base_features=4)
  x = jnp.zeros((1, 16, 24, 1))
  assert model.apply(model.init(jax.random.PRNGKey(0), x), x).shape == (1, 16, 24, 1)
  model3 = UNet(ndim=3, depth=2, base_features=2)
  x3 = jnp.zeros((1, 8, 16, 12, 1))
  assert model3.apply(model3.init(jax.random.PRNGKey(0), x3), x3).shape == (1, 8, 16, 12, 1)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_variants(norm, upsample):
  model = UNet(depth=2, base_features=8, norm=norm, upsample=upsample)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert out.shape == (2, 16, 16, 1) and bool(jnp.all(jnp.isfinite(out)))
  assert ("batch_stats" in updates) == (norm == "batch")
  # Every parameter takes part: a layer left out of the graph (e.g. a dropped skip) has zero gradient.
  loss = lambda p: jnp.sum(model.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])[0] ** 2)
  grads = jax.grad(loss)(variables["params"])
  dead = [jax.tree_util.keystr(k) for k, g in jax.tree_util.tree_leaves_with_path(grads) if not jnp.any(g != 0)]
  assert not dead


def test_widths_double_per_level():
  model = UNet(depth=3, base_features=4)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))["params"]
  assert [params[f"enc{i}"]["conv0"]["kernel"].shape[-1] for i in range(3)] == [4, 8, 16]
  assert params["bottleneck"]["conv0"]["kernel"].shape[-1] == 32


def test_indivisible_size_says_what_to_do():
  model = UNet(depth=3, base_features=4)
  with pytest.raises(InputError, match="not divisible by 2\\*\\*depth=8"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 16, 1)))


def test_intermediates_are_sown():
  model = UNet(depth=2, base_features=4)
  x = jnp.zeros((1, 16, 16, 1))
  _, state = model.apply(model.init(jax.random.PRNGKey(0), x), x, mutable=["intermediates"])
  names = set(state["intermediates"])
  assert {"enc0", "enc1", "bottleneck", "dec0", "dec1"} <= names
  assert state["intermediates"]["bottleneck"]["features"][0].shape == (1, 4, 4, 16)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_output():
  model = UNet(depth=2, base_features=4, dtype=jnp.bfloat16)
  x = jnp.ones((1, 16, 16, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert variables["params"]["enc0"]["conv0"]["kernel"].dtype == jnp.float32
  assert model.apply(variables, x).dtype == jnp.float32
