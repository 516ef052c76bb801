"""Class maps of K-class models through every segmentation output: the streamed TIFF, chunked OME-Zarr (with
its Dask tasks) and evaluate.py --input, each equal to `Predictor.label_map` of the whole volume in memory."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr

from configs import unet2d
from unet_jax.inference import chunked, segment
from unet_jax.inference.predictor import Predictor
from unet_jax.io import ngff
from unet_jax.io.stacks import StackReader
from unet_jax.network.model import UNet
from unet_jax.scores import classes

from test_inference import save_random_checkpoint  # pylint: disable=wrong-import-position  (tests/ on the path)
from test_ngff import eval_config, VOXEL  # pylint: disable=wrong-import-position
from test_onnx_engine import spread_variables  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 3


@pytest.fixture(scope="module")
def class_predictor():
  model = UNet(depth=2, base_features=4, num_classes=K, output="softmax")
  return Predictor.create(model, spread_variables(model), eval_config(16, (2, 16, 20)))


def volume(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


@pytest.mark.slow
def test_streamed_tiff_writes_the_class_map_and_k_channel_probabilities(class_predictor, tmp_path):
  image = volume((3, 21, 26))
  tifffile.imwrite(tmp_path / "in.tif", image, photometric="minisblack")
  expected_probs = class_predictor.probabilities(image / np.float32(255))
  expected = class_predictor.label_map(expected_probs)
  assert len(np.unique(expected)) == K, "every class should appear for the comparison to mean anything"
  truth = np.roll(expected, 1, axis=2)
  tifffile.imwrite(tmp_path / "truth.tif", truth, photometric="minisblack")
  with StackReader(str(tmp_path / "in.tif")) as reader, ngff.open_volume(str(tmp_path / "truth.tif")) as mask:
    summary = segment.segment_stack(class_predictor, reader, str(tmp_path / "out"), mask, "float32", progress=False)
  labels = tifffile.imread(tmp_path / "out" / "segmentation.tif")
  probs = tifffile.imread(tmp_path / "out" / "probabilities.tif")
  assert labels.dtype == np.uint8 and probs.shape == (3, K, 21, 26)
  np.testing.assert_array_equal(labels, expected)
  np.testing.assert_allclose(np.moveaxis(probs, 1, -1), expected_probs, atol=2e-5)
  assert summary["num_classes"] == K
  assert summary["classes"]["confusion"] == classes.class_scores(expected, truth, K)["confusion"]


@pytest.mark.slow
@pytest.mark.parametrize("shape,chunk", [((4, 32, 40), (2, 16, 20)), ((30, 40), (1, 16, 24))])
def test_chunked_ome_zarr_class_map_equals_the_label_map_in_memory(class_predictor, tmp_path, shape, chunk):
  """A 3D volume and a 2D image, blocks smaller than the windows' reach, a label-map mask scored per class."""
  image = volume(shape, 1)
  voxel = VOXEL if len(shape) == 3 else VOXEL[1:]
  ngff.write_image(str(tmp_path / "v.ome.zarr"), image, voxel, chunks=(2, 16, 16)[-len(shape):])
  stack3d = image if len(shape) == 3 else image[None]
  expected_probs = class_predictor.probabilities(stack3d / np.float32(255))
  expected = class_predictor.label_map(expected_probs)
  truth = np.flip(expected, -1)
  ngff.write_image(str(tmp_path / "truth.ome.zarr"), truth if len(shape) == 3 else truth[0], voxel)
  with ngff.ZarrStack(str(tmp_path / "v.ome.zarr")) as stack, \
       ngff.open_volume(str(tmp_path / "truth.ome.zarr")) as mask:
    summary = chunked.segment_volume(class_predictor, stack, str(tmp_path / "out"), chunk, mask,
                                     probability_dtype="float32", progress=False)
  out = tmp_path / "out" / chunked.OUTPUT
  labels, axes, voxel_back = ngff.read_image(str(out / "labels" / "classes"))
  assert labels.dtype == np.uint8 and axes == ("z", "y", "x")[-len(shape):] and voxel_back == pytest.approx(voxel)
  np.testing.assert_array_equal(labels if len(shape) == 3 else labels[None], expected)
  probs = zarr.open_array(str(out / ngff.DATASET), mode="r")[...]
  assert probs.shape == (K, *shape)
  np.testing.assert_allclose(np.moveaxis(probs if len(shape) == 3 else probs[:, None], 0, -1), expected_probs,
                             atol=2e-5)
  meta = zarr.open_group(str(out), mode="r").attrs["multiscales"][0]
  assert [a["name"] for a in meta["axes"]] == ["c", *"zyx"[-len(shape):]]
  assert summary["labels"] == [f"{out}/labels/classes"] and summary["instances"] is None
  assert summary["classes"]["confusion"] == classes.class_scores(expected, truth, K)["confusion"]
  assert not os.path.exists(str(out / "labels" / "mask"))


@pytest.mark.slow
def test_cli_input_writes_a_class_map(tmp_path):
  """evaluate.py --input=stack.tif for a 3-class model (before: refused)."""
  config = unet2d.get_config("tiny")
  flags = ["--config.data.name=folder", "--config.data.labels_root=labels", f"--config.model.num_classes={K}",
           "--config.model.output=softmax"]
  config.data.name, config.data.labels_root, config.model.num_classes, config.model.output = "folder", "labels", K, \
      "softmax"
  save_random_checkpoint(config, str(tmp_path / "run"))
  image = volume((2, 40, 50), 4)
  tifffile.imwrite(tmp_path / "in.tif", image, photometric="minisblack")
  result = subprocess.run(
      [sys.executable, "evaluate.py", "--config=configs/unet2d.py:tiny", *flags, f"--workdir={tmp_path / 'run'}",
       f"--input={tmp_path / 'in.tif'}", f"--output_dir={tmp_path / 'out'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  predictor = Predictor.restore(config, str(tmp_path / "run"))
  expected = predictor.label_map(predictor.probabilities(image / np.float32(255)))
  np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "segmentation.tif"), expected)
  assert json.load(open(tmp_path / "out" / "summary.json"))["num_classes"] == K
