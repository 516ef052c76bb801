"""The per-level kernel/pooling plan from the voxel size, and the U-Net that follows it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import unet2d, unet3d
from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.network import anisotropy, volumes
from unet_jax.network.model import abstract_variables, build_model, init_variables, max_pool2, UNet

VNC_3D = anisotropy.Plan(kernel_sizes=((1, 3, 3), (1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)),
                         pool_factors=((1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)))


@pytest.mark.parametrize("voxel, ndim", [((5.0, 5.0, 5.0), 3), ((5.0, 5.0, 5.0), 2), ((50.0, 4.6, 4.6), 2),
                                         ((1.0, 1.3, 1.0), 3)])
def test_isotropic_voxels_give_the_classic_unet(voxel, ndim):
  plan = anisotropy.derive_plan(voxel, ndim, depth=4)
  assert plan == anisotropy.isotropic_plan(ndim, 4)
  assert plan.size_factors == (16,) * ndim


def test_vnc_in_plane_until_roughly_isotropic():
  """50 / 4.6 nm: spacing ratio 10.9, 5.4, 2.7 (coarse) at levels 0-2, then 1.36 (pool all)."""
  plan = anisotropy.derive_plan((50.0, 4.6, 4.6), 3, depth=4)
  assert plan == VNC_3D
  assert plan.size_factors == (2, 16, 16)
  assert anisotropy.derive_plan((50.0, 4.6, 4.6), 3, depth=2) == anisotropy.Plan(((1, 3, 3),) * 3, ((1, 2, 2),) * 2)


@pytest.mark.parametrize("voxel, kernels, pools", [
    # exactly 2x: not pooled at level 0 (it would stay 2x forever), isotropic from level 1
    ((10.0, 5.0, 5.0), ((1, 3, 3), (3, 3, 3), (3, 3, 3)), ((1, 2, 2), (2, 2, 2))),
    # 1.8x counts as roughly isotropic
    ((9.0, 5.0, 5.0), ((3, 3, 3),) * 3, ((2, 2, 2),) * 2),
    # z finer than the plane: z alone is convolved and pooled first
    ((2.0, 5.0, 5.0), ((3, 1, 1), (3, 3, 3), (3, 3, 3)), ((2, 1, 1), (2, 2, 2))),
    # three different spacings: x joins one level after y
    ((40.0, 5.0, 12.0), ((1, 3, 1), (1, 3, 3), (1, 3, 3)), ((1, 2, 1), (1, 2, 2))),
])
def test_odd_voxel_sizes(voxel, kernels, pools):
  assert anisotropy.derive_plan(voxel, 3, depth=2) == anisotropy.Plan(kernels, pools)


def test_the_plan_uses_the_last_ndim_sizes_and_rejects_bad_ones():
  assert anisotropy.derive_plan((50.0, 4.6, 9.2), 2, 1) == anisotropy.Plan(((3, 1), (3, 3)), ((2, 1),))
  with pytest.raises(InputError, match="voxel_size_nm"):
    anisotropy.derive_plan((0.0, 5.0, 5.0), 3, 2)


def test_config_derives_from_the_voxel_size_and_follows_overrides():
  c = unet3d.get_config("vnc")  # the stem (2x2 in-plane) makes the sections' 9.2 nm pixels fine a level earlier
  assert anisotropy.model_plan(c.model) == anisotropy.Plan(
      ((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)), ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)), (1, 2, 2))
  c.model.space_to_depth = 1
  assert anisotropy.model_plan(c.model) == VNC_3D
  c.data.voxel_size_nm = (5.0, 5.0, 5.0)  # model.voxel_size_nm follows data.voxel_size_nm
  assert anisotropy.model_plan(c.model) == anisotropy.isotropic_plan(3, 4)
  c.model.pool_factors = ((1, 2, 2),) * 4
  c.model.kernel_sizes = ((1, 3, 3),) * 5
  assert anisotropy.model_plan(c.model) == anisotropy.Plan(((1, 3, 3),) * 5, ((1, 2, 2),) * 4)
  c.model.kernel_sizes = ((1, 2, 2),) * 5
  with pytest.raises(InputError, match="model.kernel_sizes.*odd"):
    anisotropy.model_plan(c.model)
  c.model.kernel_sizes = ()
  c.model.pool_factors = ((1, 2, 2),) * 3
  with pytest.raises(InputError, match="model.pool_factors.*4 tuples of 3"):
    anisotropy.model_plan(c.model)


def test_describe_prints_each_level():
  text = anisotropy.describe(VNC_3D, (50.0, 4.6, 4.6))
  assert "inputs divisible by 2x16x16" in text
  assert "level 0: kernel 1x3x3, pool 1x2x2, voxel 50x4.6x4.6 nm" in text
  assert "level 3: kernel 3x3x3, pool 2x2x2, voxel 50x36.8x36.8 nm" in text
  assert "bottleneck: kernel 3x3x3, voxel 100x73.6x73.6 nm" in text


@pytest.mark.parametrize("variant", ["lucchi", "vnc", "synthetic", "tiny"])
def test_2d_models_keep_their_parameters(variant):
  """Every 2D config builds the same parameter names and shapes as the U-Net before plans existed."""
  c = unet2d.get_config(variant)
  plain = UNet(depth=c.model.depth, base_features=c.model.base_features, stem=build_model(c.model).stem)
  shapes = lambda m: jax.tree.map(lambda a: a.shape, jax.eval_shape(lambda: init_variables(m, jax.random.PRNGKey(0))))
  assert shapes(build_model(c.model)) == shapes(plain)


@pytest.mark.slow
def test_anisotropic_unet_shapes_and_kernels():
  model = UNet(ndim=3, depth=4, base_features=2, kernel_sizes=VNC_3D.kernel_sizes, pool_factors=VNC_3D.pool_factors)
  x = jnp.zeros((1, 4, 32, 48, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert model.apply(variables, x).shape == (1, 4, 32, 48, 1)
  params = variables["params"]
  assert params["enc0"]["conv0"]["kernel"].shape == (3, 3, 1, 2)  # in-plane: a 2D kernel over every section
  assert params["dec2"]["conv1"]["kernel"].shape[:2] == (3, 3) and params["dec2"]["conv1"]["kernel"].ndim == 4
  assert params["enc3"]["conv0"]["kernel"].shape == (3, 3, 3 * 8, 16)  # 3 sections stacked as channels
  assert params["bottleneck"]["conv0"]["kernel"].shape == (3, 3, 3 * 16, 32)
  _, state = model.apply(variables, x, mutable=["intermediates"])
  assert state["intermediates"]["bottleneck"]["features"][0].shape == (1, 2, 2, 3, 32)
  with pytest.raises(InputError, match=r"2x16x16 per axis"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 32, 32, 1)))


@pytest.mark.slow
@pytest.mark.parametrize("kernel", [(1, 3, 3), (3, 3, 3), (5, 3, 1)])
def test_convolution_by_sections_equals_the_3d_convolution(kernel):
  """Sections stacked with their neighbours as channels, then a 2D convolution: flax's 3D convolution."""
  model = UNet(ndim=3, depth=1, base_features=3, norm="none", kernel_sizes=(kernel,) * 2, pool_factors=((1, 2, 2),))
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 8, 8, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  _, state = model.apply(variables, x, mutable=["intermediates"])
  y = x
  for i in range(2):
    p = variables["params"]["enc0"][f"conv{i}"]
    k, c = kernel[0], y.shape[-1]
    kernel3d = jnp.transpose(p["kernel"].reshape(*kernel[1:], k, c, -1), (2, 0, 1, 3, 4))  # [dz, y, x, c, f]
    y = nn.relu(nn.Conv(3, kernel).apply({"params": {"kernel": kernel3d, "bias": p["bias"]}}, y))
  np.testing.assert_allclose(state["intermediates"]["enc0"]["features"][0], y, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_anisotropic_upsampling_restores_each_axis(upsample):
  model = UNet(ndim=3, depth=2, base_features=2, upsample=upsample, kernel_sizes=((1, 3, 3),) * 3,
               pool_factors=((1, 2, 2), (1, 2, 2)))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8, 12, 1))  # z = 3: never pooled
  assert model.apply(model.init(jax.random.PRNGKey(0), x), x).shape == x.shape


@pytest.mark.slow
def test_max_pool_per_axis_equals_flax():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 8, 3))
  for factors in [(2, 2, 2), (1, 2, 2), (2, 1, 2), (1, 3, 2)]:
    np.testing.assert_array_equal(max_pool2(x, factors), nn.max_pool(x, factors, strides=factors))
  np.testing.assert_array_equal(max_pool2(x[:, 0]), nn.max_pool(x[:, 0], (2, 2), strides=(2, 2)))


def test_patch_divisibility_uses_the_plan():
  c = unet3d.get_config("vnc")
  config_check.validate(c)  # (4, 256, 256): z divisible by 4 (two 2x2x2 pools), not by 16
  c.train.patch_size = (2, 256, 256)
  with pytest.raises(InputError, match=r"train.patch_size=\(2, 256, 256\).*4x32x32"):
    config_check.validate(c)
  c.model.space_to_depth = 1  # without the stem one 2x2x2 pool: z divisible by 2
  c.train.patch_size = (3, 256, 256)
  with pytest.raises(InputError, match=r"train.patch_size=\(3, 256, 256\).*2x16x16"):
    config_check.validate(c)


@pytest.mark.slow
@pytest.mark.parametrize("norm, upsample, stem", [("batch", "resize", 1), ("none", "transpose", 1),
                                                 ("batch", "resize", 2)])
def test_in_plane_3d_network_with_the_2d_weights_is_the_2d_network_section_by_section(norm, upsample, stem):
  """model.in_plane=True: 1x3x3 kernels and 1x2x2 pools everywhere; with the 2D weights mapped in
  (volumes.in_plane_variables), its output on a volume equals the 2D U-Net's on each section, with a
  space-to-depth stem too (it folds in-plane blocks only, so sections stay apart)."""
  c2 = unet2d.get_config("tiny")
  c2.model.update(norm=norm, upsample=upsample, space_to_depth=stem)
  c3 = unet3d.get_config("tiny")
  c3.model.update(norm=norm, upsample=upsample, base_features=c2.model.base_features, in_plane=True,
                  space_to_depth=stem)
  model2, model3 = build_model(c2.model), build_model(c3.model)
  assert model3.plan() == anisotropy.in_plane_plan(c3.model.depth)._replace(stem=model3.stem)
  variables2 = init_variables(model2, jax.random.PRNGKey(3))
  leaves, tree = jax.tree.flatten(variables2)  # random values everywhere (biases, scales, running statistics)
  keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
  variables2 = jax.tree.unflatten(tree, [v + 0.3 * jnp.abs(jax.random.normal(k, v.shape))
                                         for k, v in zip(keys, leaves)])
  variables3 = volumes.in_plane_variables(variables2, abstract_variables(model3))
  volume = jax.random.uniform(jax.random.PRNGKey(5), (2, 3, 16, 32, 1))  # any depth: z is never pooled
  out3 = jax.jit(model3.apply)(variables3, volume)
  out2 = jax.jit(model2.apply)(variables2, volume.reshape(6, 16, 32, 1)).reshape(out3.shape)
  np.testing.assert_allclose(out3, out2, rtol=1e-5, atol=1e-5)
  assert float(jnp.std(out2)) > 1e-3  # not a constant output


def test_in_plane_is_refused_for_2d_models_and_with_explicit_kernels():
  c = unet2d.get_config("tiny")
  c.model.in_plane = True
  with pytest.raises(InputError, match="model.in_plane=True is for 3D models"):
    anisotropy.model_plan(c.model)
  c = unet3d.get_config("tiny")
  c.model.update(in_plane=True, kernel_sizes=((1, 3, 3),) * 3)
  with pytest.raises(InputError, match="model.in_plane=True is for 3D models.*without explicit"):
    anisotropy.model_plan(c.model)
  bad = unet2d.get_config("tiny")
  with pytest.raises(InputError, match="do not fit the in-plane 3D network"):
    volumes.in_plane_variables(init_variables(build_model(bad.model), jax.random.PRNGKey(0)),
                               abstract_variables(build_model(unet3d.get_config("tiny").model)))
