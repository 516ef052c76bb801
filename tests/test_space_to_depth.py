"""The space-to-depth stem (model.space_to_depth): lossless folding, full-resolution outputs, plans and checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import unet2d, unet3d
from test_onnx_engine import spread_variables, textured
from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.explain import attribution, explanation, probe
from unet_jax.inference import engines, windows
from unet_jax.network import anisotropy
from unet_jax.network.model import build_model, depth_to_space, init_variables, space_to_depth, UNet


def test_space_to_depth_puts_each_block_in_the_channels_and_depth_to_space_undoes_it():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 12, 3))
  y = space_to_depth(x, (2, 2))
  assert y.shape == (2, 4, 6, 12)
  # Output pixel (1, 2) holds the 2x2 block at rows 2-3, columns 4-5: (dy, dx, channel) in that order.
  np.testing.assert_array_equal(np.asarray(y[0, 1, 2]).reshape(2, 2, 3), np.asarray(x[0, 2:4, 4:6]))
  np.testing.assert_array_equal(np.asarray(depth_to_space(y, (2, 2))), np.asarray(x))
  x3 = jax.random.normal(jax.random.PRNGKey(1), (1, 3, 8, 4, 2))
  y3 = space_to_depth(x3, (1, 2, 2))
  assert y3.shape == (1, 3, 4, 2, 8)  # sections stay apart
  np.testing.assert_array_equal(np.asarray(depth_to_space(y3, (1, 2, 2))), np.asarray(x3))


def test_the_stem_returns_full_resolution_logits_from_a_half_resolution_network():
  model = UNet(depth=2, base_features=4, stem=(2, 2))
  variables = init_variables(model, jax.random.PRNGKey(0))
  assert variables["params"]["head"]["kernel"].shape == (1, 1, 4, 4)  # 2x2 logits per network pixel
  assert variables["params"]["enc0"]["conv0"]["kernel"].shape == (3, 3, 4, 4)  # 2x2 pixels per input channel
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 24, 1))
  out, mutated = model.apply(variables, x, mutable=["intermediates"])
  assert out.shape == (2, 32, 24, 1)
  assert mutated["intermediates"]["enc0"]["features"][0].shape == (2, 16, 12, 4)
  # Each output pixel is its own logit: the head's 4 outputs land on the 4 pixels of their block.
  head = {**variables, "params": {**variables["params"], "head": {
      "kernel": jnp.zeros((1, 1, 4, 4)), "bias": jnp.arange(4.0)}}}
  np.testing.assert_array_equal(np.asarray(model.apply(head, x)[0, :2, :2, 0]), [[0.0, 1.0], [2.0, 3.0]])


def test_a_3d_network_with_the_stem_returns_full_resolution_logits_on_every_section():
  # VNC's derived plan with the stem: in-plane kernels at level 0, 3x3x3 kernels and 2x2x2 pooling below.
  model = UNet(ndim=3, depth=2, base_features=4, stem=(1, 2, 2), kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
               pool_factors=((1, 2, 2), (2, 2, 2)))
  assert model.plan().size_factors == (2, 8, 8)
  variables = init_variables(model, jax.random.PRNGKey(0))
  assert variables["params"]["head"]["kernel"].shape == (1, 1, 1, 4, 4)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 16, 24, 1))
  out, mutated = model.apply(variables, x, mutable=["intermediates"])
  assert out.shape == (1, 4, 16, 24, 1) and float(jnp.std(out)) > 1e-4
  assert mutated["intermediates"]["enc0"]["features"][0].shape == (1, 4, 8, 12, 4)  # sections are not folded
  head = {**variables, "params": {**variables["params"], "head": {
      "kernel": jnp.zeros((1, 1, 1, 4, 4)), "bias": jnp.arange(4.0)}}}
  np.testing.assert_array_equal(np.asarray(model.apply(head, x)[0, :, :2, :2, 0]),
                                np.tile([[0.0, 1.0], [2.0, 3.0]], (4, 1, 1)))


def test_sizes_must_divide_by_the_stem_times_the_pooling():
  model = UNet(depth=2, base_features=4, stem=(2, 2))
  assert model.plan().size_factors == (8, 8)
  with pytest.raises(InputError, match=r"space-to-depth stem 2x2 \(8x8 per axis\)"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 16, 1)))
  c = unet2d.get_config("vnc")
  assert c.model.space_to_depth == 2
  config_check.validate(c)  # 256 divides by 2 * 2**4
  c.train.patch_size = 48
  with pytest.raises(InputError, match=r"train.patch_size=48 .*space_to_depth in-plane \(32x32 per axis\)"):
    config_check.validate(c)


@pytest.mark.parametrize("value", [0, 9, True])
def test_bad_factors_are_refused_in_one_line(value):
  c = unet2d.get_config("tiny")
  c.model.space_to_depth = value
  with pytest.raises(InputError, match="model.space_to_depth=.* must be 1 \\(off\\) or an integer factor in \\[2, 8\\]"):
    config_check.validate(c)


def test_the_config_builds_the_stem_and_derives_the_plan_from_the_coarser_pixels():
  c = unet2d.get_config("vnc")  # its recipe has the stem
  assert build_model(c.model).stem == (2, 2)
  c.model.space_to_depth = 1
  assert build_model(c.model).stem is None and build_model(unet2d.get_config("lucchi").model).stem is None
  c.model.space_to_depth = 2
  text = anisotropy.describe(build_model(c.model).plan(), c.data.voxel_size_nm)
  assert "stem: space-to-depth 2x2" in text and "level 0: kernel 3x3, pool 2x2, voxel 9.2x9.2 nm" in text
  # 3D VNC: in-plane 9.2 nm against 50 nm sections reaches a ratio below 2 one level earlier.
  c3 = unet3d.get_config("vnc")  # every VNC mode has the stem
  plan = anisotropy.model_plan(c3.model)
  assert plan.stem == (1, 2, 2)
  assert plan.kernel_sizes == ((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
  assert plan.pool_factors == ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
  assert plan.size_factors == (4, 32, 32)


@pytest.mark.slow
def test_onnx_runs_the_stem_as_xla_does_through_the_sliding_window():
  model = UNet(depth=2, base_features=4, stem=(2, 2))
  variables = spread_variables(model)
  image = textured((45, 70), 2)  # odd sizes: windows are padded to the size factor 8 and cropped back
  run = {engine: np.asarray(windows.sliding_window_predict(windows.predictor(model, "flips", engine), variables,
                                                             image, (36, 36), 0.5, "gaussian", 3))
         for engine in engines.ENGINES}
  assert run["xla"].shape == (45, 70) and run["xla"].std() > 0.05
  np.testing.assert_allclose(run["onnx"], run["xla"], atol=1e-4)


@pytest.mark.slow
def test_explanations_pad_to_the_stem_and_return_maps_of_the_image():
  model = UNet(depth=2, base_features=4, stem=(2, 2))
  variables = init_variables(model, jax.random.PRNGKey(0))
  image = jax.random.uniform(jax.random.PRNGKey(1), (36, 44))  # divisible by 4 (2**depth), not by 8
  logits, features = probe.logits_edited(model, variables, image[None])
  assert logits.shape == (1, 36, 44, 1) and features["enc0"].shape == (1, 20, 24, 4)  # (40, 48) / 2
  weights = jnp.zeros(image.shape).at[10:20, 10:20].set(1.0)
  assert attribution.seg_grad_cam(model, variables, image, weights, "dec0").shape == (36, 44)
  c = unet2d.get_config("tiny")
  c.model.space_to_depth = 2
  c.explain.actmax_px = 36
  with pytest.raises(InputError, match="explain.actmax_px=36 must be a positive multiple of"):
    explanation.check_explain_config(build_model(c.model), c.explain)
