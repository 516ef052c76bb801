"""EM section artefacts and 3D augmentation: binary, aligned masks, exact identity when off, in-plane geometry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.io import synthetic
from unet_jax.training import augment, losses, sections

from test_augment import off_config  # pylint: disable=wrong-import-position  (tests/ is on the import path)

SECTION_ON = {"misalign_prob": 1.0, "section_intensity_prob": 1.0, "missing_section_prob": 1.0}


def run(config, images, masks, seed=0):
  """augment_batch under jit with per-example keys split from `seed`; numpy outputs."""
  keys = jax.random.split(jax.random.PRNGKey(seed), images.shape[0])
  out = jax.jit(lambda k, x, m: augment.augment_batch(k, x, m, config))(keys, images, masks)
  return tuple(np.asarray(a) for a in out)


@pytest.fixture(scope="module")
def volume_batch():
  """Masks f32[4, 8, 32, 32, 1] of a synthetic volume (4 crops) and a textured image alike."""
  mask = synthetic.make_stack(0, 8, (64, 64), ndim=3)[1] / 255.0
  masks = np.stack([mask[:, :32, :32], mask[:, 32:, :32], mask[:, :32, 32:], mask[:, 32:, 32:]])[..., None]
  texture = np.random.default_rng(0).uniform(0.3, 0.7, masks.shape)
  return jnp.asarray(texture, jnp.float32), jnp.asarray(masks, jnp.float32)


def mirrored_shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """NumPy reference: x[D, H, W, C] shifted by (dy, dx), reflected about the edge pixels."""
  fold = lambda i, n: (n - 1) - np.abs(np.mod(i, 2 * (n - 1)) - (n - 1))
  rows, cols = fold(np.arange(x.shape[1]) - dy, x.shape[1]), fold(np.arange(x.shape[2]) - dx, x.shape[2])
  return x[:, rows][:, :, cols]


def test_shift_plane_matches_numpy_reference():
  x = np.random.default_rng(1).uniform(size=(3, 7, 9, 2)).astype(np.float32)
  for dy, dx in [(0, 0), (3, -2), (-6, 8), (10, -11)]:
    np.testing.assert_array_equal(sections.shift_plane(jnp.asarray(x), dy, dx), mirrored_shift(x, dy, dx))


def test_off_is_identity_bit_for_bit(volume_batch):
  images, masks = volume_batch
  out_image, out_mask = run(off_config(misalign_pixels=4), images, masks)
  assert np.array_equal(out_image, images) and np.array_equal(out_mask, masks)
  image, mask = images[0], masks[0]
  out = sections.augment_sections(jax.random.PRNGKey(0), image, mask, off_config())
  assert out[0] is image and out[1] is mask  # nothing traced at probability 0


def test_misalignment_moves_image_and_mask_together(volume_batch):
  """Channel 1 = 0.2 + 0.6 mask stays so; channel 0 (texture): moved sections are mirrored shifts."""
  texture, masks = volume_batch
  images = jnp.concatenate([texture, 0.2 + 0.6 * masks], axis=-1)
  config = off_config(misalign_prob=1.0, misalign_pixels=6)
  out_image, out_mask = run(config, images, masks, seed=3)
  np.testing.assert_array_equal(out_image[..., 1:], 0.2 + 0.6 * out_mask)
  assert set(np.unique(out_mask)) <= {0.0, 1.0}
  kinds = set()
  for original, moved in zip(np.asarray(texture), out_image[..., :1]):
    changed = [z for z in range(8) if not np.array_equal(original[z], moved[z])]
    assert changed and 0 not in changed  # the first section never moves
    assert changed == list(range(changed[0], 8)) or len(changed) == 1  # translation or slip
    kinds.add("slip" if len(changed) == 1 and changed[0] != 7 else "translation")
    z = changed[0]
    matches = [(dy, dx) for dy in range(-6, 7) for dx in range(-6, 7)
               if np.array_equal(mirrored_shift(original[z:], dy, dx)[0], moved[z])]
    assert matches, "a moved section is a mirrored in-plane shift of itself"
  assert kinds == {"slip", "translation"} or len(masks) < 4


def test_per_section_intensity_is_affine_per_section(volume_batch):
  images, masks = volume_batch
  config = off_config(section_intensity_prob=1.0, section_brightness=0.1, section_contrast=(0.7, 1.3))
  out_image, out_mask = run(config, images, masks, seed=4)
  assert np.array_equal(out_mask, masks)
  slopes = []
  for x, y in zip(np.asarray(images)[0], out_image[0]):
    slope, _ = np.polyfit(x.ravel(), y.ravel(), 1)
    residual = y.ravel() - np.polyval(np.polyfit(x.ravel(), y.ravel(), 1), x.ravel())
    assert np.abs(residual).max() < 1e-5 and 0.7 - 1e-4 <= slope <= 1.3 + 1e-4
    slopes.append(slope)
  assert np.ptp(slopes) > 0.05  # every section its own contrast


def run_weighted(config, images, masks, seed=0):
  """augment_batch_with_weights under jit: numpy (images, masks, loss weights)."""
  keys = jax.random.split(jax.random.PRNGKey(seed), images.shape[0])
  out = jax.jit(lambda k, x, m: augment.augment_batch_with_weights(k, x, m, config))(keys, images, masks)
  return tuple(np.asarray(a) for a in out)


@pytest.mark.slow
def test_missing_section_blanks_or_duplicates_one_section_and_labels_follow(volume_batch):
  """A duplicated section takes its neighbour's mask; a blanked one keeps its mask at loss weight 0."""
  images, masks = volume_batch
  seen = set()
  for seed in range(4):
    out_image, out_mask, weight = run_weighted(off_config(missing_section_prob=1.0), images, masks, seed=seed)
    assert weight.shape == out_mask.shape and set(np.unique(weight)) <= {0.0, 1.0}
    for x, y, m, out_m, w in zip(np.asarray(images), out_image, np.asarray(masks), out_mask, weight):
      changed = [z for z in range(8) if not np.array_equal(x[z], y[z])]
      assert len(changed) == 1
      z = changed[0]
      neighbour = z - 1 if z > 0 else z + 1
      others = [i for i in range(8) if i != z]
      assert np.array_equal(out_m[others], m[others]) and np.all(w[others] == 1.0)
      if np.all(y[z] == 0.0):
        seen.add("blank")
        assert np.all(w[z] == 0.0) and np.array_equal(out_m[z], m[z])  # out of the loss
      else:
        assert np.array_equal(y[z], x[neighbour]) and np.array_equal(out_m[z], m[neighbour])
        assert np.all(w[z] == 1.0)
        seen.add("duplicate")
  assert seen == {"blank", "duplicate"}


def test_a_zero_weight_leaves_its_pixels_out_of_every_loss_sum():
  """batch_sums with weight 0 on a section = batch_sums of the other sections; weight 1 = no weight."""
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(2, 4, 8, 8, 1)), jnp.float32)
  mask = jnp.asarray(rng.uniform(size=(2, 4, 8, 8, 1)) > 0.5, jnp.float32)
  weight = jnp.ones_like(mask).at[:, 1].set(0.0)
  keep = np.array([0, 2, 3])
  weighted, kept = losses.batch_sums(logits, mask, weight), losses.batch_sums(logits[:, keep], mask[:, keep])
  unweighted, ones = losses.batch_sums(logits, mask), losses.batch_sums(logits, mask, jnp.ones_like(mask))
  for name in kept:
    np.testing.assert_allclose(weighted[name], kept[name], rtol=1e-6)
    np.testing.assert_allclose(ones[name], unweighted[name], rtol=1e-6)


def test_blur_stays_in_the_plane_when_sections_are_kept_apart():
  """Sections of constant value z / 10 keep their values under blur with elastic_z=False; not with True."""
  volume = jnp.broadcast_to(jnp.arange(6, dtype=jnp.float32)[:, None, None, None] / 10, (2, 6, 16, 16, 1))
  out_image, _ = run(off_config(blur_prob=1.0, blur_sigma=2.0, elastic_z=False), volume, volume, seed=1)
  for z in range(6):
    np.testing.assert_allclose(out_image[:, z], z / 10, atol=1e-6)
  out_image, _ = run(off_config(blur_prob=1.0, blur_sigma=2.0, elastic_z=True), volume, volume, seed=1)
  assert np.abs(out_image - np.asarray(volume)).max() > 0.01


@pytest.mark.slow
def test_everything_on_keeps_masks_binary_aligned_and_images_in_range(volume_batch):
  """Geometry (incl. elastic) + photometry + all section artefacts: image = mask stays aligned."""
  _, masks = volume_batch
  geometric = {p: 1.0 for p in ("rotate_prob", "scale_prob", "shear_prob", "elastic_prob")}
  config = off_config(flips=True, elastic_alpha=2.0, elastic_sigma=8.0, misalign_pixels=5, misalign_prob=1.0,
                      **geometric)
  out_image, out_mask = run(config, masks, masks, seed=5)
  assert np.array_equal(out_image >= 0.5, out_mask == 1.0) and set(np.unique(out_mask)) == {0.0, 1.0}
  config = off_config(flips=True, elastic_alpha=2.0, elastic_sigma=8.0, misalign_pixels=5,
                      **geometric, **{p: 1.0 for p in augment.PROB_FIELDS if p not in geometric})
  images = 0.25 + 0.5 * masks
  first, again = run(config, images, masks, seed=6), run(config, images, masks, seed=6)
  assert all(np.array_equal(a, b) for a, b in zip(first, again))  # keyed by PRNG
  out_image, out_mask = first
  assert np.all(np.isfinite(out_image)) and out_image.min() >= 0.0 and out_image.max() <= 1.0
  assert set(np.unique(out_mask)) == {0.0, 1.0} and out_mask.shape == masks.shape


@pytest.mark.slow
def test_3d_geometry_stays_in_the_plane_with_elastic_z_off():
  """Each section of constant value z / 10 keeps exactly its value: nothing mixes sections."""
  depth = 6
  volume = jnp.broadcast_to(jnp.arange(depth, dtype=jnp.float32)[:, None, None, None] / 10, (2, depth, 24, 24, 1))
  config = off_config(flips=True, elastic_z=False, elastic_alpha=4.0, elastic_sigma=8.0, misalign_prob=1.0,
                      **{p: 1.0 for p in ("rotate_prob", "scale_prob", "shear_prob", "elastic_prob")})
  out_image, out_mask = run(config, volume, volume, seed=7)
  for z in range(depth):
    np.testing.assert_allclose(out_image[:, z], z / 10, atol=1e-6)
  config.elastic_z = True  # the isotropic default does displace along z
  out_image, _ = run(config, volume, volume, seed=7)
  assert np.abs(out_image - np.asarray(volume)).max() > 0.01


def slab_batch(volume_batch, k: int = 2):
  """2.5D examples from the volume batch: images f32[4, 32, 32, 2k + 1] (sections as channels) and
  masks f32[4, 32, 32, 1] of the centre section, whose image is 0.2 + 0.6 mask (the others: texture)."""
  texture, masks = volume_batch
  images = jnp.moveaxis(texture[:, :2 * k + 1, ..., 0], 1, -1)
  centre = masks[:, k]
  return images.at[..., k].set(0.2 + 0.6 * centre[..., 0]), centre


def test_2_5d_off_is_identity_and_2d_single_channel_is_untouched(volume_batch):
  images, masks = slab_batch(volume_batch)
  out = run(off_config(misalign_pixels=4), images, masks)
  assert np.array_equal(out[0], images) and np.array_equal(out[1], masks)
  one = images[..., 2:3]  # a plain 2D image: one section, nothing to misalign
  out = run(off_config(**SECTION_ON, misalign_pixels=4), one, masks)
  assert np.array_equal(out[0], one) and np.array_equal(out[1], masks)


@pytest.mark.slow
def test_2_5d_artefacts_act_on_the_channel_sections_and_keep_the_centre_mask_aligned(volume_batch):
  """Misalignment moves the centre mask iff it moves the centre section; missing sections keep the centre mask,
  a blanked centre at loss weight 0."""
  images, masks = slab_batch(volume_batch)
  moved_centre = moved_other = 0
  for seed in range(8):
    out_image, out_mask = run(off_config(misalign_prob=1.0, misalign_pixels=6), images, masks, seed=seed)
    assert set(np.unique(out_mask)) <= {0.0, 1.0} and out_mask.shape == masks.shape
    np.testing.assert_array_equal(out_image[..., 2:3], 0.2 + 0.6 * out_mask)  # centre image = its mask
    for x, y in zip(np.asarray(images), out_image):
      changed = [c for c in range(5) if not np.array_equal(x[..., c], y[..., c])]
      assert changed and 0 not in changed  # the first section never moves
      moved_centre += 2 in changed
      moved_other += bool(set(changed) - {2})
  assert moved_centre and moved_other
  for seed in range(4):
    out_image, out_mask, weight = run_weighted(off_config(missing_section_prob=1.0), images, masks, seed=seed)
    assert np.array_equal(out_mask, masks)
    changed = [[c for c in range(5) if not np.array_equal(x[..., c], y[..., c])]
               for x, y in zip(np.asarray(images), out_image)]
    assert all(len(c) == 1 for c in changed)
    for c, y, w in zip(changed, out_image, weight):  # only a blanked centre leaves the loss
      assert np.all(w == (0.0 if c == [2] and np.all(y[..., 2] == 0.0) else 1.0))
