"""OME-Zarr metadata that is broken inside, and masks of the other kind than their image (TIFF or OME-Zarr)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr

from unet_jax.errors import InputError
from unet_jax.inference import chunked
from unet_jax.io import ngff

from test_inference import save_random_checkpoint  # pylint: disable=wrong-import-position  (tests/ is on the import path)
from test_ngff import VOXEL, blobs  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BROKEN = {  # what is done to the first dataset's metadata, and what the one line says
    "short_scale": (lambda d: d["coordinateTransformations"][0].update(scale=[4.6, 4.6]),
                    r"the 'scale' of multiscales\[0\] \(coordinateTransformations\) has 2 value\(s\) for 3 axes"),
    "text_scale": (lambda d: d["coordinateTransformations"][0].update(scale=[50, "4.6nm", 4.6]),
                   r"the 'scale' of multiscales\[0\] \(coordinateTransformations\) \[50, '4.6nm', 4.6\] holds a value "
                   "that is not a number"),
    "no_path": (lambda d: d.pop("path"), r"multiscales\[0\].datasets\[0\] has no 'path'"),
}


def _broken(tmp_path, kind):
  path = str(tmp_path / f"{kind}.ome.zarr")
  ngff.write_image(path, np.zeros((3, 8, 8), np.uint8), VOXEL)
  attrs = zarr.open_group(path, mode="r+").attrs
  multiscales = attrs["multiscales"]
  BROKEN[kind][0](multiscales[0]["datasets"][0])
  attrs["multiscales"] = multiscales
  return path


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_metadata_is_one_line_naming_the_store_and_the_field(tmp_path, kind):
  path = _broken(tmp_path, kind)
  with pytest.raises(InputError, match=f"^{path}: {BROKEN[kind][1]}"):
    ngff.ZarrStack(path)


@pytest.mark.slow
def test_evaluate_py_on_broken_metadata_says_one_line(tmp_path):
  for kind in sorted(BROKEN):
    out = tmp_path / f"out_{kind}"
    result = subprocess.run([sys.executable, "evaluate.py", "--config=configs/unet2d.py:tiny",
                             f"--workdir={tmp_path / 'run'}", f"--input={_broken(tmp_path, kind)}", f"--output_dir={out}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr and not out.exists()


@pytest.fixture
def volume(tmp_path, tiny_config):
  """A random checkpoint, a (3, 40, 50) image and its blob mask, each as a TIFF and as an OME-Zarr image."""
  save_random_checkpoint(tiny_config, str(tmp_path / "run"))
  image, truth = np.random.default_rng(7).integers(0, 256, (3, 40, 50)).astype(np.uint8), blobs((3, 40, 50))
  for name, array in (("image", image), ("mask", truth)):
    tifffile.imwrite(tmp_path / f"{name}.tif", array, photometric="minisblack")
    ngff.write_image(str(tmp_path / f"{name}.ome.zarr"), array, VOXEL)
  return tmp_path


def test_a_mask_reads_alike_as_tiff_and_as_ome_zarr(tmp_path):
  truth = blobs((3, 40, 50))
  tifffile.imwrite(tmp_path / "mask.tif", truth, photometric="minisblack")
  ngff.write_image(str(tmp_path / "mask.ome.zarr"), truth, VOXEL)
  tiff, zarr_ = (ngff.open_volume(str(tmp_path / name)) for name in ("mask.tif", "mask.ome.zarr"))
  assert isinstance(tiff, ngff.TiffBoxes) and isinstance(zarr_, ngff.ZarrStack) and tiff.shape == zarr_.shape
  box = (slice(1, 3), slice(5, 29), slice(20, 50))
  np.testing.assert_array_equal(tiff.raw(box), truth[box])
  np.testing.assert_array_equal(tiff.raw(2), zarr_.raw(2))
  np.testing.assert_array_equal(tiff.unique_values(), zarr_.unique_values())


@pytest.mark.slow
@pytest.mark.parametrize("image_kind, mask_kind", [(".ome.zarr", ".tif"), (".tif", ".ome.zarr")])
def test_evaluate_py_scores_with_a_mask_of_the_other_kind(tmp_path, tiny_config, image_kind, mask_kind):
  save_random_checkpoint(tiny_config, str(tmp_path / "run"))
  image, truth = np.random.default_rng(7).integers(0, 256, (3, 40, 50)).astype(np.uint8), blobs((3, 40, 50))
  for name, array in (("image", image), ("mask", truth)):
    tifffile.imwrite(tmp_path / f"{name}.tif", array, photometric="minisblack")
    ngff.write_image(str(tmp_path / f"{name}.ome.zarr"), array, VOXEL)
  result = subprocess.run([sys.executable, "evaluate.py", "--config=configs/unet2d.py:tiny",
                           f"--workdir={tmp_path / 'run'}", f"--input={tmp_path / f'image{image_kind}'}",
                           f"--mask={tmp_path / f'mask{mask_kind}'}", f"--output_dir={tmp_path / 'out'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.load(open(tmp_path / "out" / (chunked.SUMMARY if image_kind == ".ome.zarr" else "summary.json")))
  assert summary["pixel"]["tp"] + summary["pixel"]["fn"] == int((truth > 0).sum())  # the whole truth was read
