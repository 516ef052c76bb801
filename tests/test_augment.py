"""On-device augmentation: alignment, determinism, exact identity when off, ranges, borders, 3D."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import unet2d
from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.io import synthetic
from unet_jax.training import augment

CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "unet2d.py")
GEOMETRIC = ("rotate_prob", "scale_prob", "shear_prob", "elastic_prob")
PHOTOMETRIC = ("brightness_prob", "contrast_prob", "gamma_prob", "noise_prob", "blur_prob")


def off_config(**overrides):
  """The default augment config with every transform off, then `overrides`."""
  config = unet2d.get_config("synthetic").augment
  config.flips = False
  for name in augment.PROB_FIELDS:
    config[name] = 0.0
  config.update(overrides)
  return config


def augmenter(config):
  """augment_batch under jit, as f(seed, images, masks) with per-example keys split from `seed`."""
  jitted = jax.jit(lambda k, x, m: augment.augment_batch(k, x, m, config))
  def f(seed, images, masks):
    keys = jax.random.split(jax.random.PRNGKey(seed), images.shape[0])
    return tuple(np.asarray(a) for a in jitted(keys, images, masks))
  return f


def run(config, images, masks, seed=0):
  """One call of `augmenter(config)`."""
  return augmenter(config)(seed, images, masks)


def dihedral_variants(x: np.ndarray) -> list[np.ndarray]:
  """The 8 flips/90-degree rotations of x[H, W, C], by numpy."""
  return [np.rot90(y, k, axes=(0, 1)) for y in (x, np.flip(x, 1)) for k in range(4)]


ALL_ON = dict(flips=True, brightness=0.5, noise_std=0.3, blur_sigma=2.0, elastic_alpha=6.0,
              **{p: 1.0 for p in augment.PROB_FIELDS})


@pytest.fixture(scope="module")
def all_on():
  """`augmenter` with every transform firing, compiled once for the module."""
  return augmenter(off_config(**ALL_ON))


@pytest.fixture(scope="module")
def em_batch():
  """Synthetic EM patches: images f32[3, 64, 64, 1] in [0, 1] and masks in {0, 1}."""
  image, mask = synthetic.make_stack(3, 3, (64, 64))
  return (jnp.asarray(image[..., None] / 255.0, jnp.float32), jnp.asarray(mask[..., None] / 255.0, jnp.float32))


def preset_config(name: str):
  """The synthetic config with augmentation preset `name`, parsed through absl config flags as a user types it."""
  argv = ["test", f"--config={CONFIG_FILE}:synthetic,aug={name}"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  return values.config.augment


def test_documented_presets_turn_off_every_transform(em_batch):
  images, masks = em_batch
  config = unet2d.get_config("synthetic").augment
  assert {k for k in config if k.endswith("_prob")} == set(augment.PROB_FIELDS)
  none, flips_only = preset_config("none"), preset_config("flips")
  assert not none.flips and flips_only.flips
  assert all(none[p] == 0 and flips_only[p] == 0 for p in augment.PROB_FIELDS)
  out_image, out_mask = run(none, images, masks)
  assert np.array_equal(out_image, images) and np.array_equal(out_mask, masks)  # bit for bit
  out_image, out_mask = run(flips_only, images, masks)
  for i in range(images.shape[0]):
    assert any(np.array_equal(out_image[i], x) and np.array_equal(out_mask[i], m)
               for x, m in zip(dihedral_variants(np.asarray(images[i])), dihedral_variants(np.asarray(masks[i]))))


@pytest.mark.parametrize("enabled", [{"rotate_prob": 1.0}, {"scale_prob": 1.0},
                                     {"shear_prob": 1.0, "shear_degrees": 30.0},
                                     {"elastic_prob": 1.0, "elastic_alpha": 4.0, "elastic_sigma": 16.0},
                                     {"flips": True, **{p: 1.0 for p in GEOMETRIC}}])
def test_geometry_moves_image_and_mask_together(em_batch, enabled):
  """Image = mask: the thresholded augmented image equals the augmented mask at every pixel.

  Both are resampled with the same coordinates (one linear interpolation), so no pixel may differ,
  not even at boundaries.
  """
  _, masks = em_batch
  out_image, out_mask = run(off_config(**enabled), masks, masks, seed=1)
  assert np.array_equal(out_image >= 0.5, out_mask == 1.0)
  assert set(np.unique(out_mask)) <= {0.0, 1.0}
  assert not np.array_equal(out_mask, masks)  # the transform did act


@pytest.mark.slow
def test_same_key_same_result_different_keys_differ(em_batch, all_on):
  images, masks = em_batch
  first, again, other = all_on(5, images, masks), all_on(5, images, masks), all_on(6, images, masks)
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert not np.array_equal(first[0], other[0])


@pytest.mark.slow
def test_every_transform_on_stays_finite_in_range_and_binary(em_batch, all_on):
  images, masks = em_batch
  out_image, out_mask = all_on(2, images, masks)
  assert out_image.shape == images.shape and out_image.dtype == np.float32
  assert out_mask.shape == masks.shape and out_mask.dtype == np.float32
  assert np.all(np.isfinite(out_image)) and out_image.min() >= 0.0 and out_image.max() <= 1.0
  assert set(np.unique(out_mask)) == {0.0, 1.0}


def test_rotation_convention_matches_rot90():
  """Rotating by 90 degrees about the centre is jnp.rot90 (up to float error in cos(pi/2))."""
  x = jnp.arange(30.0).reshape(5, 6, 1)[:, :5]  # 5 x 5, distinct values
  coordinates = augment.source_coordinates((5, 5), jnp.float32(math.pi / 2), jnp.float32(1.0), jnp.float32(0.0))
  rotated = augment.warp(x, coordinates)
  assert np.allclose(rotated, np.rot90(np.asarray(x), -1, axes=(0, 1)), atol=1e-4)


def test_warp_reflects_like_scipy_mirror_mode():
  """Folding coordinates then clipping equals scipy's 'mirror' boundary, even far outside."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  assert np.allclose(augment.mirror(jnp.array([[-1.0, 4.0, 5.5, 7.0]]), (4,)), [[1.0, 2.0, 0.5, 1.0]])
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 1, (9, 7, 1)).astype(np.float32)
  coordinates = rng.uniform(-20, 30, (2, 5, 6)).astype(np.float32)
  expected = ndimage.map_coordinates(image[..., 0], coordinates, order=1, mode="mirror")
  assert np.allclose(augment.warp(jnp.asarray(image), jnp.asarray(coordinates))[..., 0], expected, atol=1e-4)


def test_zoom_and_shear_coordinates_by_hand():
  zero, one = jnp.float32(0.0), jnp.float32(1.0)
  zoom = augment.source_coordinates((5, 5), zero, jnp.float32(2.0), zero)  # centre (2, 2)
  assert np.allclose(zoom[0, :, 0], [1.0, 1.5, 2.0, 2.5, 3.0]) and np.allclose(zoom[1, 0], [1.0, 1.5, 2.0, 2.5, 3.0])
  shear = augment.source_coordinates((5, 5), zero, one, jnp.float32(math.pi / 4))  # tan = 1
  assert np.allclose(shear[0, 2], [0.0, 1.0, 2.0, 3.0, 4.0])  # row 2: h + (w - 2)
  assert np.allclose(shear[1], np.arange(5.0)[None, :].repeat(5, 0))  # columns unchanged
  identity = augment.source_coordinates((4, 6), zero, one, zero)
  assert np.array_equal(identity, np.indices((4, 6), np.float32))  # exactly integer


def test_rotation_corners_hold_reflected_texture_not_constant():
  """A 45-degree rotation (zoomed out) fills the corners with reflected texture like the interior."""
  texture = np.random.default_rng(0).uniform(0.2, 0.8, (64, 64, 1)).astype(np.float32)  # mean 0.5, std 0.17
  coordinates = augment.source_coordinates((64, 64), jnp.float32(math.pi / 4), jnp.float32(0.8), jnp.float32(0.0))
  rotated = np.asarray(augment.warp(jnp.asarray(texture), coordinates))[..., 0]
  interior = rotated[20:44, 20:44]
  for corner in (rotated[:12, :12], rotated[:12, -12:], rotated[-12:, :12], rotated[-12:, -12:]):
    assert corner.min() >= 0.2 and corner.max() <= 0.8  # no zero or constant fill
    assert abs(corner.std() - interior.std()) < 0.3 * interior.std()
    assert abs(corner.mean() - interior.mean()) < 0.03


@pytest.mark.slow
def test_examples_in_a_batch_get_different_transforms(em_batch, all_on):
  images, masks = em_batch
  same = jnp.repeat(images[:1], 3, axis=0), jnp.repeat(masks[:1], 3, axis=0)
  out_image, _ = all_on(3, *same)
  for i in range(3):
    for j in range(i):
      assert not np.allclose(out_image[i], out_image[j])


@pytest.mark.parametrize("name, check", [
    ("brightness_prob", lambda x, y: np.ptp(y - x) < 1e-6 and 0 < abs((y - x).mean()) <= 0.1),
    ("contrast_prob", lambda x, y: 0.8 - 1e-5 <= np.polyfit(x.ravel(), y.ravel(), 1)[0] <= 1.2 + 1e-5),
    ("gamma_prob", lambda x, y: np.ptp(np.log(y) / np.log(x)) < 1e-3 and 0.8 - 1e-5 <= (np.log(y) / np.log(x)).mean() <= 1.25 + 1e-5),
    ("noise_prob", lambda x, y: 0 < (y - x).std() <= 0.031 and abs((y - x).mean()) < 0.01),
    ("blur_prob", lambda x, y: (y - x).std() > 0 and y.std() <= x.std() and abs(y.mean() - x.mean()) < 0.01),
])
def test_photometric_transforms_by_hand(em_batch, name, check):
  """Each intensity transform at p=1 does what its config says and leaves the mask alone."""
  _, masks = em_batch
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(0.3, 0.7, masks.shape), jnp.float32)  # room for +-0.1 without clipping
  out_image, out_mask = run(off_config(**{name: 1.0}), images, masks, 7)
  assert np.array_equal(out_mask, masks)
  for x, y in zip(np.asarray(images), out_image):
    assert check(x, y), name


@pytest.mark.slow
def test_3d_patches_keep_shapes_and_alignment():
  mask = np.asarray(synthetic.make_stack(0, 8, (32, 32), ndim=3)[1] / 255.0, np.float32)
  masks = jnp.asarray(np.stack([mask, mask])[..., None])  # f32[2, 8, 32, 32, 1]
  config = off_config(flips=True, elastic_alpha=2.0, elastic_sigma=8.0, **{p: 1.0 for p in GEOMETRIC})
  out_image, out_mask = run(config, masks, masks, 8)
  assert out_image.shape == masks.shape and out_mask.shape == masks.shape
  assert np.array_equal(out_image >= 0.5, out_mask == 1.0) and not np.array_equal(out_mask, masks)
  config = off_config(**{p: 1.0 for p in PHOTOMETRIC})
  out_image, out_mask = run(config, masks * 0.5 + 0.25, masks, 9)
  assert out_image.shape == masks.shape and not np.allclose(out_image, masks * 0.5 + 0.25)
  np.testing.assert_array_equal(out_mask, masks)  # photometry leaves the mask alone


@pytest.mark.parametrize("overrides, message", [
    ({"rotate_prob": 1.5}, "rotate_prob"), ({"scale_range": (0.0, 1.2)}, "scale_range"),
    ({"gamma": (1.25, 0.8)}, "gamma"), ({"elastic_sigma": 0.0}, "elastic_sigma"),
    ({"noise_std": -0.1}, "noise_std"), ({"shear_degrees": 90.0}, "shear_degrees")])
def test_bad_config_raises_input_error(overrides, message):
  """Bad augment values are refused by the config check, before any step is traced."""
  config = unet2d.get_config("synthetic")
  config.augment.update(overrides)
  with pytest.raises(InputError, match=f"augment.{message}="):
    config_check.validate(config)


def test_mismatched_shapes_raise_input_error(em_batch):
  images, masks = em_batch
  with pytest.raises(InputError, match="of one shape"):
    run(off_config(), images, masks[:, :32])


@pytest.mark.slow
def test_low_resolution_off_is_bit_for_bit_and_on_matches_a_resize_reference(em_batch):
  """lowres_prob 0 returns the input bit for bit; factor 2 equals jax.image.resize down (linear, anti-aliased) and up
  (cubic) away from the far edges, where the patch's edge is repeated instead of renormalising the cubic kernel."""
  images, masks = em_batch
  off = run(off_config(lowres_range=(2.0, 2.0)), images, masks)
  assert np.array_equal(off[0], images) and np.array_equal(off[1], masks)
  out_image, out_mask = run(off_config(lowres_prob=1.0, lowres_range=(2.0, 2.0)), images, masks, seed=1)
  small = jax.image.resize(images, (3, 32, 32, 1), "linear", antialias=True)
  reference = np.clip(np.asarray(jax.image.resize(small, images.shape, "cubic")), 0.0, 1.0)
  np.testing.assert_allclose(out_image[:, :-3, :-3], reference[:, :-3, :-3], atol=1e-5)
  np.testing.assert_allclose(out_image, reference, atol=0.05)
  assert not np.array_equal(out_image, images) and np.array_equal(out_mask, masks)  # the mask is untouched


@pytest.mark.slow
def test_low_resolution_is_deterministic_per_key_and_leaves_other_draws_alone(em_batch):
  images, masks = em_batch
  lowres = augmenter(off_config(flips=True, lowres_prob=0.5, lowres_range=(1.0, 2.0)))
  first, again, other = lowres(4, images, masks), lowres(4, images, masks), lowres(5, images, masks)
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert not np.array_equal(first[0], other[0])
  flips_only = run(off_config(flips=True), images, masks, seed=4)
  assert np.array_equal(first[1], flips_only[1])  # same flips: low resolution draws from a key of its own
  assert np.all((first[0] >= 0.0) & (first[0] <= 1.0))


def test_scale_and_lowres_presets():
  config = preset_config("scale")
  assert config.flips and config.scale_prob == 0.5 and tuple(config.scale_range) == (0.5, 2.0)
  assert config.lowres_prob == 0.5 and tuple(config.lowres_range) == (1.0, 2.0) and config.blur_prob == 0.2
  assert all(config[p] == 0 for p in augment.PROB_FIELDS if p not in ("scale_prob", "lowres_prob", "blur_prob"))
  assert unet2d.get_config("synthetic").augment.lowres_prob == 0.0
  lowres = preset_config("lowres")
  assert lowres.flips and lowres.lowres_prob == 0.5 and tuple(lowres.lowres_range) == (1.0, 2.0)
  assert lowres.blur_prob == 0.2
  assert all(lowres[p] == 0 for p in augment.PROB_FIELDS if p not in ("lowres_prob", "blur_prob"))
