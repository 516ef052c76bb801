"""Data loading, validation, normalisation, splits, synthetic generator, patch sampling."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from configs import unet3d
from unet_jax.errors import InputError
from unet_jax.io import data, stacks, synthetic
from unet_jax.training import sampling


def _write_pair(tmp_path, name, image, mask):
  stacks.write_stack(str(tmp_path / f"{name}.tif"), image)
  stacks.write_stack(str(tmp_path / f"{name}_groundtruth.tif"), mask)


def _folder(tmp_path, image, mask):
  _write_pair(tmp_path, "training", image, mask)
  _write_pair(tmp_path, "testing", image, mask)
  return str(tmp_path)


def test_tiff_round_trip(tmp_path):
  stack = np.random.default_rng(0).integers(0, 255, (3, 16, 20), dtype=np.uint8)
  stacks.write_stack(str(tmp_path / "s.tif"), stack)
  np.testing.assert_array_equal(stacks.read_stack(str(tmp_path / "s.tif")), stack)


def test_2d_tiff_becomes_one_slice(tmp_path):
  stacks.write_stack(str(tmp_path / "s.tif"), np.zeros((16, 20), np.uint8))
  assert stacks.read_stack(str(tmp_path / "s.tif")).shape == (1, 16, 20)


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_integer_normalisation(dtype, scale):
  image = np.array([[0, 1, int(scale)]], dtype)
  np.testing.assert_allclose(stacks.normalize_image(image), [[0.0, 1.0 / scale, 1.0]], rtol=1e-6)


def test_float_normalisation():
  np.testing.assert_allclose(stacks.normalize_image(np.array([0.2, 0.5], np.float32)), [0.2, 0.5])
  np.testing.assert_allclose(stacks.normalize_image(np.array([-1.0, 0.0, 3.0])), [0.0, 0.25, 1.0])


def test_nan_image_is_an_error():
  with pytest.raises(InputError, match="NaN"):
    stacks.normalize_image(np.array([0.0, np.nan]))


@pytest.mark.parametrize("mask", [np.array([0, 1]), np.array([0, 255])])
def test_binary_masks(mask):
  np.testing.assert_array_equal(data.binarize_mask(mask), [0, 1])


def test_non_binary_mask_names_values():
  with pytest.raises(InputError, match=r"found values \{0, 1, 2\}"):
    data.binarize_mask(np.array([0, 1, 2]))


def test_shape_mismatch_is_an_error():
  with pytest.raises(InputError, match="image shape .* != mask shape"):
    data.make_split(np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 9), np.uint8))


def test_missing_file_is_an_error(tmp_path):
  with pytest.raises(InputError, match="file not found"):
    stacks.read_stack(str(tmp_path / "nope.tif"))


def test_corrupt_file_is_an_error(tmp_path):
  (tmp_path / "bad.tif").write_bytes(b"not a tiff")
  with pytest.raises(InputError, match="cannot read TIFF"):
    stacks.read_stack(str(tmp_path / "bad.tif"))


def test_empty_stack_is_an_error(tmp_path):
  tifffile.imwrite(tmp_path / "e.tif", np.zeros((0, 8), np.uint8))
  with pytest.raises(InputError, match="empty"):
    stacks.read_stack(str(tmp_path / "e.tif"))


def test_folder_with_missing_files(tmp_path):
  with pytest.raises(InputError, match="lacks training.tif"):
    data.load_folder(str(tmp_path))


def test_load_folder_and_validation_carve(tmp_path, tiny_config):
  image = np.random.default_rng(0).integers(0, 255, (5, 16, 16), dtype=np.uint8)
  mask = (image > 128).astype(np.uint8) * 255
  tiny_config.data.name = "folder"
  tiny_config.data.root = _folder(tmp_path, image, mask)
  tiny_config.data.val_fraction = 0.2
  splits = data.load_splits(tiny_config.data)
  assert splits["train"].image.shape == (4, 16, 16) and splits["val"].image.shape == (1, 16, 16)
  np.testing.assert_array_equal(splits["val"].mask[0], mask[4] > 0)
  assert splits["test"].image.dtype == np.float32 and splits["test"].mask.max() == 1
  tiny_config.data.final_fit = True  # the val slice goes back into training and stays the (in-sample) val
  final = data.load_splits(tiny_config.data)
  np.testing.assert_array_equal(final["train"].image, np.concatenate([splits["train"].image, splits["val"].image]))
  np.testing.assert_array_equal(final["val"].mask, splits["val"].mask)


@pytest.mark.slow
def test_tiff_folder_loads_without_the_zarr_stack(tmp_path):
  """A TIFF folder needs neither zarr nor dask (machines without them train on TIFFs)."""
  image = np.random.default_rng(0).integers(0, 255, (2, 16, 16), dtype=np.uint8)
  root = _folder(tmp_path, image, (image > 128).astype(np.uint8) * 255)
  code = ("import sys; from unet_jax.io import data; data.load_folder(sys.argv[1]); "
          "print(sorted(m for m in ('zarr', 'dask', 'ome_zarr') if m in sys.modules))")
  done = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, check=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_bad_val_fraction(tmp_path, tiny_config):
  with pytest.raises(InputError, match="val_fraction"):
    data.carve_validation(data.Split(np.zeros((3, 4, 4)), np.zeros((3, 4, 4))), 1.0)


def test_unknown_dataset(tiny_config):
  tiny_config.data.name = "mnist"
  with pytest.raises(InputError, match="data.name"):
    data.load_splits(tiny_config.data)


def test_synthetic_is_seeded_and_em_like():
  a = synthetic.make_stack(3, 2, (96, 96))
  b = synthetic.make_stack(3, 2, (96, 96))
  c = synthetic.make_stack(4, 2, (96, 96))
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])
  image, mask = a
  assert image.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
  assert 0.01 < (mask > 0).mean() < 0.6
  assert image[mask > 0].mean() < image[mask == 0].mean() - 20  # mitochondria are darker


def test_synthetic_3d_volume():
  image, mask = synthetic.make_stack(0, 24, (48, 48), ndim=3)
  assert image.shape == mask.shape == (24, 48, 48) and (mask > 0).any()


def test_synthetic_tubes_are_3d_objects_crossing_sections_at_angles():
  """objects='tubes' (configs/unet3d.py:iso): seeded; each tube runs through many sections, so the volume holds far
  fewer objects than the profiles summed over its sections; curves and branches cut some sections into several
  profiles of one object (only the volume joins them); long axes point neither only along z nor only in-plane."""
  small = synthetic.make_stack(1, 12, (32, 32), ndim=3, mito_spacing=35.0, objects="tubes")
  np.testing.assert_array_equal(small[0], synthetic.make_stack(1, 12, (32, 32), 3, 35.0, "tubes")[0])
  assert not np.array_equal(small[0], synthetic.make_stack(2, 12, (32, 32), 3, 35.0, "tubes")[0])
  image, mask = synthetic.make_stack(0, 32, (64, 64), ndim=3, mito_spacing=35.0, objects="tubes")
  assert image.shape == mask.shape == (32, 64, 64) and set(np.unique(mask)) <= {0, 255}
  fg = mask > 0
  assert 0.02 < fg.mean() < 0.3 and image[fg].mean() < image[~fg].mean() - 20  # darker, as the ellipsoids
  labels, n_3d = ndimage.label(fg)  # face connectivity, as unet_jax.scores.instances with dims=3
  assert n_3d >= 3 and sum(ndimage.label(section)[1] for section in fg) > 10 * n_3d
  assert any(ndimage.label(fg[z] & (labels[z] == k))[1] > 1 for z in range(32) for k in range(1, n_3d + 1))
  angles = []  # of each object's principal axis to z, degrees
  for k in range(1, n_3d + 1):
    points = np.argwhere(labels == k).astype(float)
    angles.append(np.degrees(np.arccos(abs(np.linalg.svd(points - points.mean(0), full_matrices=False)[2][0][0]))))
  assert any(30 < angle < 60 for angle in angles) and max(angles) - min(angles) > 30


def test_synthetic_objects_are_checked_and_read_from_the_config():
  with pytest.raises(InputError, match=r"data.synthetic.objects='cubes' is invalid: .*\('ellipsoids', 'tubes'\)"):
    synthetic.make_stack(0, 2, (32, 32), objects="cubes")
  config = unet3d.get_config("tiny_iso").data.synthetic
  assert config.objects == "tubes"
  train, _ = synthetic.make_dataset(config)["train"]
  np.testing.assert_array_equal(train, synthetic.make_stack(config.seed, config.train_slices, tuple(config.shape), 3,
                                                            config.mito_spacing, "tubes")[0])


def test_the_test_volume_takes_its_own_shape_and_the_training_volume_stays():
  """`iso` scores on a test volume 4x its training one (more tubes for the 3D instance F1); the training volume,
  and so every trained run, does not change with it."""
  config = unet3d.get_config("tiny_iso").data.synthetic
  train, test = (synthetic.make_dataset(config)[k][0] for k in ("train", "test"))
  assert test.shape == (config.test_slices, *config.shape)  # () = the training shape
  config.test_shape, config.test_slices = (48, 40), 3
  bigger = synthetic.make_dataset(config)
  assert bigger["test"][0].shape == bigger["test"][1].shape == (3, 48, 40)
  np.testing.assert_array_equal(bigger["train"][0], train)
  iso = unet3d.get_config("iso").data.synthetic
  assert iso.test_slices * np.prod(iso.test_shape) == 4 * iso.train_slices * np.prod(iso.shape)


def test_sampler_shapes_and_foreground_fraction():
  rng = np.random.default_rng(0)
  mask = np.zeros((3, 64, 64), np.uint8)
  mask[1, 40:44, 10:14] = 1
  split = data.Split(rng.random((3, 64, 64), dtype=np.float32), mask)
  sampler = sampling.PatchSampler.create(split, (16, 16), fg_fraction=1.0)
  batch = sampler.sample(rng, 8)
  assert batch["image"].shape == batch["mask"].shape == (8, 16, 16, 1)
  assert all(batch["mask"][i].any() for i in range(8))
  batch3d = sampling.PatchSampler.create(split, (2, 16, 16), 0.5).sample(rng, 2)
  assert batch3d["image"].shape == (2, 2, 16, 16, 1)


def test_batches_depend_only_on_seed_and_step():
  split = data.Split(np.random.default_rng(0).random((2, 32, 32), dtype=np.float32), np.zeros((2, 32, 32), np.uint8))
  sampler = sampling.PatchSampler.create(split, (16, 16), 0.0)
  from_zero = sampling.batches(sampler, 2, 7, 0)
  next(from_zero)
  np.testing.assert_array_equal(next(from_zero)["image"], next(sampling.batches(sampler, 2, 7, 1))["image"])


def test_patch_too_large():
  split = data.Split(np.zeros((1, 8, 8), np.float32), np.zeros((1, 8, 8), np.uint8))
  with pytest.raises(InputError, match="does not fit"):
    sampling.PatchSampler.create(split, (16, 16), 0.5)


def test_prefetch_hands_a_sampler_failure_to_the_consumer():
  def failing():
    yield 1
    yield 2
    raise RuntimeError("disk gone while sampling")
  got = []
  with pytest.raises(RuntimeError, match="disk gone while sampling"):
    for item in sampling.prefetch(failing(), 2):
      got.append(item)
  assert got == [1, 2]
  assert list(sampling.prefetch(iter(range(5)), 2)) == [0, 1, 2, 3, 4]  # a finite iterator ends
