"""Morphometry: volumes of shapes of known size, areas, centroids, boxes, summaries, CSV."""

import csv

import numpy as np
import pytest
from skimage import draw

from configs import unet2d
from unet_jax.errors import InputError
from unet_jax.io import data
from unet_jax.scores import instances, morphometry


def test_ellipsoid_volume():
  a, b, c = 6, 10, 14  # semi-axes in voxels (z, y, x)
  labels = instances.label_instances(draw.ellipsoid(a, b, c), 3)
  voxel = (2.0, 3.0, 4.0)
  t = morphometry.measure(labels, voxel)
  assert t["voxels"][0] == pytest.approx(4 / 3 * np.pi * a * b * c, rel=0.02)  # discretised ellipsoid
  assert t["volume_nm3"][0] == t["voxels"][0] * 24.0
  assert t["cube_side_nm"][0] == pytest.approx(np.cbrt(t["voxels"][0] * 24.0))
  assert t["cube_side_px"][0] == pytest.approx(t["cube_side_nm"][0] / 4.0)
  assert t["slices"][0] == 2 * a + 1  # z = -a ... a, tips included
  assert t["max_area_px"][0] == pytest.approx(np.pi * b * c, rel=0.02)  # the equator
  np.testing.assert_allclose([t["centroid_z_px"][0], t["centroid_y_px"][0], t["centroid_x_px"][0]],
                             [a + 1, b + 1, c + 1])  # draw.ellipsoid pads by one voxel


def test_seed_cube_of_13_million_nm3_is_48_px():
  labels = np.zeros((50, 50, 50), np.int32)
  labels[1:49, 1:49, 1:49] = 1
  t = morphometry.measure(labels, (4.9, 4.9, 4.9))
  assert t["volume_nm3"][0] == pytest.approx(48 ** 3 * 4.9 ** 3)  # 13.0 million nm^3
  assert t["volume_nm3"][0] == pytest.approx(13.0e6, rel=0.01)
  assert t["cube_side_px"][0] == pytest.approx(48.0)


def test_anisotropic_slab_area_box_and_centroid():
  labels = np.zeros((3, 20, 30), np.int32)
  labels[1, 2:12, 5:25] = 1  # one slice, 10 x 20 px
  labels[0, 15:17, 0:3] = labels[2, 15:17, 0:3] = 2  # two slices of 6 px
  t = morphometry.measure(labels, (50.0, 4.6, 4.6))
  assert t["voxels"].tolist() == [200, 12]
  assert t["volume_nm3"][0] == pytest.approx(200 * 50 * 4.6 * 4.6)
  assert t["max_area_nm2"][0] == pytest.approx(200 * 4.6 * 4.6)
  assert t["slices"].tolist() == [1, 2]
  assert t["mean_area_px"].tolist() == [200, 6]
  assert [t[f"bbox_{k}"][0] for k in ("z0", "z1", "y0", "y1", "x0", "x1")] == [1, 2, 2, 12, 5, 25]
  assert (t["centroid_z_px"][0], t["centroid_y_px"][0], t["centroid_x_px"][0]) == (1.0, 6.5, 14.5)


def test_summary_and_empty_summary():
  t = {"volume_nm3": np.array([1.0, 2.0, 3.0, 10.0]), "cube_side_px": np.zeros(4), "max_area_nm2": np.ones(4)}
  s = morphometry.summarize(t)["volume_nm3"]
  assert s == {"count": 4, "mean": 4.0, "std": pytest.approx(np.std([1, 2, 3, 10])), "min": 1.0,
               "q25": 1.75, "median": 2.5, "q75": 4.75, "max": 10.0}
  empty = morphometry.summarize(morphometry.measure(np.zeros((2, 4, 4), np.int32), (1, 1, 1)))
  assert empty["volume_nm3"]["count"] == 0 and empty["volume_nm3"]["median"] is None


def test_write_csv(tmp_path):
  labels = np.zeros((1, 4, 4), np.int32)
  labels[0, :2, :2] = 1
  path = str(tmp_path / "sub" / "m.csv")
  morphometry.write_csv(path, morphometry.measure(labels, (50.0, 4.6, 4.6)))
  with open(path) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 1 and rows[0]["label"] == "1" and rows[0]["voxels"] == "4"
  assert float(rows[0]["volume_nm3"]) == pytest.approx(4 * 50 * 4.6 * 4.6, rel=1e-5)


def test_bad_voxel_size():
  with pytest.raises(InputError, match="voxel_size_nm"):
    morphometry.measure(np.zeros((1, 2, 2), np.int32), (4.6, 4.6))
  with pytest.raises(InputError, match="voxel_size_nm"):
    morphometry.measure(np.zeros((1, 2, 2), np.int32), (0.0, 1.0, 1.0))


def test_vnc_truth_sizes(vnc_root):
  """The real VNC masks: mitochondria of ~10 million nm^3, none smaller than eval.min_size."""
  config = unet2d.get_config("vnc")
  mask = data.load_pair(f"{vnc_root}/testing.tif", f"{vnc_root}/testing_groundtruth.tif").mask
  sizes_2d = morphometry.measure(instances.label_instances(mask, 2), config.data.voxel_size_nm)["voxels"]
  volumes = morphometry.measure(instances.label_instances(mask, 3), config.data.voxel_size_nm)["volume_nm3"]
  assert sizes_2d.min() >= config.eval.min_size
  assert 3e6 < np.median(volumes) < 3e7


def test_labels_with_gaps_keep_their_ids():
  labels = np.zeros((2, 6, 6), np.int32)
  labels[0, :2, :2] = 1  # 4 px in slice 0
  labels[:, 3:, 3:] = 3  # 9 px in each of 2 slices; label 2 absent
  table = morphometry.measure(labels, (10.0, 2.0, 2.0))
  np.testing.assert_array_equal(table["label"], [1, 3])
  np.testing.assert_array_equal(table["voxels"], [4, 18])
  np.testing.assert_array_equal(table["slices"], [1, 2])
  np.testing.assert_array_equal(table["max_area_px"], [4, 9])
  np.testing.assert_allclose(table["max_area_nm2"], [16.0, 36.0])
  with pytest.raises(InputError, match="labels must be >= 0"):
    morphometry.measure(-labels, (10.0, 2.0, 2.0))
