"""OME-Zarr in and out: round trips, chunked segmentation equal to in-memory, resume, instances, training input."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr import writer
from scipy import ndimage

from unet_jax.errors import InputError
from references import sliding_window_stack
from unet_jax.inference import chunked, segment, tiling, windows
from unet_jax.inference.predictor import Predictor
from unet_jax.io import data, ngff
from unet_jax.network.model import UNet

from test_inference import random_like, save_random_checkpoint  # pylint: disable=wrong-import-position  (tests/ is on the import path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOXEL = (50.0, 4.6, 4.6)


def unet(ndim=2, in_channels=1):
  model = UNet(ndim=ndim, depth=2, base_features=4, norm="batch", upsample="resize", in_channels=in_channels)
  shape = (1,) + (8,) * ndim + (in_channels,)
  return model, random_like(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(shape)), seed=ndim)


def eval_config(window, chunk, **overrides):
  c = ml_collections.ConfigDict({"window": window, "overlap": 0.5, "blend": "gaussian", "sigma": 0.125,
                                 "batch_size": 3, "threshold": 0.5, "tta": "none", "engine": "xla", "chunk": chunk})
  c.update(overrides)
  return c


def blobs(shape, seed=0, fraction=0.3):
  """uint8 0/255 smooth random blobs: many objects, several crossing any block face."""
  field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 1.5)
  return ((field > np.quantile(field, 1 - fraction)) * 255).astype(np.uint8)


def labels_match(a, b):
  """Same objects, numbered differently: a bijection between the non-zero labels."""
  assert np.array_equal(a > 0, b > 0)
  pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
  return pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


@pytest.mark.parametrize("shape,voxel", [((6, 20, 30), VOXEL), ((20, 30), (4.6, 5.0))])
def test_round_trip(tmp_path, shape, voxel):
  array = np.random.default_rng(0).integers(0, 4096, shape).astype(np.uint16)
  ngff.write_image(str(tmp_path / "a.ome.zarr"), array, voxel, chunks=(4,) * len(shape))
  back, axes, voxel_back = ngff.read_image(str(tmp_path / "a.ome.zarr"))
  np.testing.assert_array_equal(back, array)
  assert axes == ("z", "y", "x")[-len(shape):] and voxel_back == pytest.approx(voxel)
  assert zarr.open_array(str(tmp_path / "a.ome.zarr" / ngff.DATASET)).chunks == (4,) * len(shape)
  axes_meta = zarr.open_group(str(tmp_path / "a.ome.zarr"), mode="r").attrs["multiscales"][0]["axes"]
  assert [a["unit"] for a in axes_meta] == ["nanometer"] * len(shape)


def test_reads_ngff_05_in_micrometres_with_singleton_channel(tmp_path):
  """ome-zarr's default (NGFF 0.5, zarr v3), units in micrometres, a (c, z, y, x) image with one channel."""
  array = np.random.default_rng(1).random((1, 4, 10, 12)).astype(np.float32)
  writer.write_image(array, str(tmp_path / "v5.ome.zarr"), axes="czyx", scale_factors=(),
                     axes_units=dict.fromkeys("zyx", "micrometer"),
                     scale={"c": 1.0, "z": 0.05, "y": 0.0046, "x": 0.0046})
  stack = ngff.ZarrStack(str(tmp_path / "v5.ome.zarr"))
  assert stack.shape == (4, 10, 12) and stack.axes == ("z", "y", "x") and "dropped" in stack.notes[0]
  assert stack.voxel_size_nm == pytest.approx(VOXEL)
  np.testing.assert_allclose(stack.read((slice(None),) * 3), array[0])


@pytest.mark.slow
@pytest.mark.parametrize("ndim,k,window,chunk", [(2, 0, 16, (3, 16, 20)), (2, 1, 16, (2, 24, 16)),
                                                 (3, 0, (8, 16, 16), (5, 16, 24))])
def test_chunked_equals_in_memory(tmp_path, ndim, k, window, chunk):
  """2D, 2.5D and 3D models: blocks smaller than the windows' reach, uneven last blocks."""
  model, variables = unet(ndim, 2 * k + 1)
  volume = np.random.default_rng(2).integers(0, 256, (7, 37, 45)).astype(np.uint8)
  ngff.write_image(str(tmp_path / "v.ome.zarr"), volume, VOXEL, chunks=(2, 16, 16))
  config = eval_config(window, chunk)
  with ngff.ZarrStack(str(tmp_path / "v.ome.zarr")) as stack:
    summary = chunked.segment_volume(Predictor.create(model, variables, config), stack, str(tmp_path / "out"),
                                     config.chunk, probability_dtype="float32", progress=False)
  expected = sliding_window_stack(model, variables, volume / np.float32(255), config)
  out = tmp_path / "out" / chunked.OUTPUT
  probs, axes, voxel = ngff.read_image(str(out))
  np.testing.assert_allclose(probs, expected, atol=2e-5)
  assert axes == ("z", "y", "x") and voxel == pytest.approx(VOXEL) and summary["chunks"] > 8
  mask = ngff.read_image(str(out / "labels" / "mask"))[0]
  np.testing.assert_array_equal(mask, (probs >= 0.5).astype(np.uint8))
  assert labels_match(ngff.read_image(str(out / "labels" / "instances"))[0], ndimage.label(mask)[0])
  assert not os.path.exists(str(out) + ".partial")


@pytest.mark.slow
@pytest.mark.parametrize("k", [0, 1])
def test_tiff_stream_equals_in_memory_2d_and_25d(tmp_path, k):
  """The TIFF path streams 2.5D models too, through the same blocks."""
  model, variables = unet(2, 2 * k + 1)
  volume = np.random.default_rng(3).random((5, 21, 26)).astype(np.float32)
  config = eval_config(16, (2, 64, 64))
  predictor = Predictor.create(model, variables, config)
  streamed = np.stack(list(predictor.stream(volume.__getitem__, volume.shape, block_depth=2)))
  expected = sliding_window_stack(model, variables, volume, config)
  np.testing.assert_allclose(streamed, expected, atol=2e-5)
  np.testing.assert_allclose(predictor.raw_probabilities(volume), expected, atol=2e-5)


IDENTITY = tiling.on_slices(lambda v, p: p)


def identity_volume(monkeypatch, tmp_path, volume, chunk):
  """Chunked segmentation where the network returns its input: instances are those of (volume >= 0.5)."""
  monkeypatch.setattr(tiling, "volume_predictor", lambda *a: IDENTITY)  # one function: compiled once per region shape
  if not os.path.exists(tmp_path / "v.ome.zarr"):  # rewriting it would be another input (its fingerprint)
    ngff.write_image(str(tmp_path / "v.ome.zarr"), volume, VOXEL[1:] if volume.ndim == 2 else VOXEL)
  model, _ = unet(2)
  with ngff.ZarrStack(str(tmp_path / "v.ome.zarr")) as stack:
    config = eval_config(8, chunk)
    return chunked.segment_volume(Predictor.create(model, None, config), stack, str(tmp_path / "out"), config.chunk,
                                  probability_dtype="uint8", progress=False)


@pytest.mark.parametrize("shape,chunk", [((9, 40, 50), (4, 12, 16)), ((40, 50), (1, 9, 11))])
def test_instances_equal_ndimage_label_across_chunks(monkeypatch, tmp_path, shape, chunk):
  volume = blobs(shape, seed=len(shape))
  summary = identity_volume(monkeypatch, tmp_path, volume, chunk)
  out = tmp_path / "out" / chunked.OUTPUT
  instances, axes, _ = ngff.read_image(str(out / "labels" / "instances"))
  expected, n = ndimage.label(volume > 0)
  assert instances.shape == shape and axes == ("z", "y", "x")[-len(shape):]
  assert labels_match(instances, expected) and summary["instances"] == n == instances.max()
  assert n > 10  # many objects, most cut by some block face
  labels = json.load(open(out / "labels" / ".zattrs"))["labels"]
  assert labels == list(chunked.LABELS)
  assert json.load(open(out / "labels" / "instances" / ".zattrs"))["image-label"]["source"]["image"] == "../../"


def test_resume_skips_finished_chunks(monkeypatch, tmp_path):
  volume = blobs((6, 30, 30), seed=4)
  calls = []
  compute = tiling.block_probabilities
  def counted(*args, **kwargs):
    calls.append(args[4].index)
    if len(calls) == 5 and not os.path.exists(tmp_path / "interrupted"):
      (tmp_path / "interrupted").touch()
      raise KeyboardInterrupt
    return compute(*args, **kwargs)
  monkeypatch.setattr(tiling, "block_probabilities", counted)
  with pytest.raises(KeyboardInterrupt):
    identity_volume(monkeypatch, tmp_path, volume, (2, 15, 15))  # 3 x 2 x 2 = 12 chunks
  assert os.path.isdir(tmp_path / "out" / (chunked.OUTPUT + ".partial"))
  assert not os.path.exists(tmp_path / "out" / chunked.OUTPUT)
  first = list(calls)
  calls.clear()
  summary = identity_volume(monkeypatch, tmp_path, volume, (2, 15, 15))
  assert len(first) == 5 and len(calls) == 12 - 4 and not set(first[:4]) & set(calls)
  instances = ngff.read_image(str(tmp_path / "out" / chunked.OUTPUT / "labels" / "instances"))[0]
  assert labels_match(instances, ndimage.label(volume > 0)[0]) and summary["chunks"] == 12
  calls.clear()
  identity_volume(monkeypatch, tmp_path, volume, (3, 15, 15))  # other settings: a fresh run, all chunks
  assert len(calls) == 2 * 2 * 2


@pytest.mark.slow
def test_zarr_data_folder_loads_like_tiffs(tmp_path):
  rng = np.random.default_rng(5)
  tiffs, zarrs = tmp_path / "tif", tmp_path / "zarr"
  tiffs.mkdir(), zarrs.mkdir()
  for image_name, mask_name in data.STACK_FILES.values():
    image, mask = rng.integers(0, 256, (5, 24, 20)).astype(np.uint8), blobs((5, 24, 20), seed=6)
    for name, array in ((image_name, image), (mask_name, mask)):
      tifffile.imwrite(tiffs / name, array)
      ngff.write_image(str(zarrs / name.replace(".tif", ".ome.zarr")), array, VOXEL)
  for key, split in data.load_folder(str(zarrs)).items():
    reference = data.load_folder(str(tiffs))[key]
    np.testing.assert_array_equal(split.image, reference.image)
    np.testing.assert_array_equal(split.mask, reference.mask)


def _evaluate(tmp_path, *args):
  result = subprocess.run([sys.executable, "evaluate.py", "--config=configs/unet2d.py:tiny",
                           f"--workdir={tmp_path / 'run'}", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
  lines = result.stderr.strip().splitlines()
  return result.returncode, lines[-1] if lines else ""


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors_before_any_output(tmp_path):
  zarr.save(str(tmp_path / "plain.zarr"), np.zeros((4, 8, 8), np.uint8))
  channels = np.zeros((2, 3, 8, 8), np.uint8)
  writer.write_image(channels, str(tmp_path / "channels.ome.zarr"), axes="czyx", scale_factors=())
  ngff.write_image(str(tmp_path / "v.ome.zarr"), np.zeros((3, 8, 8), np.uint8), VOXEL)
  ngff.write_image(str(tmp_path / "grey.ome.zarr"), np.full((3, 8, 8), 7, np.uint8), VOXEL)
  cases = [(["--input", str(tmp_path / "plain.zarr")], "no OME-NGFF 'multiscales' metadata"),
           (["--input", str(tmp_path / "channels.ome.zarr")], "'channel' axis 'c' of size 2"),
           (["--input", str(tmp_path / "v.ome.zarr"), "--mask", str(tmp_path / "grey.ome.zarr")], "is not binary"),
           (["--input", str(tmp_path / "v.ome.zarr"), f"--output_dir={tmp_path / 'v.ome.zarr'}"], "inside the input"),
           (["--input", str(tmp_path / "missing.ome.zarr")], "not found")]
  for args, message in cases:
    output = [] if any(a.startswith("--output_dir") for a in args) else [f"--output_dir={tmp_path / 'out'}"]
    code, line = _evaluate(tmp_path, *args, *output)
    assert code != 0 and line.startswith("error: ") and message in line, (args, line)
  assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "v.ome.zarr" / chunked.OUTPUT)
  attrs = zarr.open_group(str(tmp_path / "v.ome.zarr"), mode="r+").attrs
  multiscales = attrs["multiscales"]
  multiscales[0]["axes"] = multiscales[0]["axes"][::-1]  # (x, y, z)
  attrs["multiscales"] = multiscales
  with pytest.raises(InputError, match=r"not \(z, y, x\) or \(y, x\)"):
    ngff.ZarrStack(str(tmp_path / "v.ome.zarr"))


@pytest.mark.slow
def test_cli_segments_an_ome_zarr_volume(tiny_config, tmp_path):
  """evaluate.py --input=vol.ome.zarr --mask=truth.ome.zarr: outputs match in-memory inference, voxel size kept."""
  from unet_jax.network.model import build_model  # pylint: disable=g-import-not-at-top
  from unet_jax.scores import metrics  # pylint: disable=g-import-not-at-top
  variables = save_random_checkpoint(tiny_config, str(tmp_path / "run"))
  image, truth = np.random.default_rng(7).integers(0, 256, (3, 40, 50)).astype(np.uint8), blobs((3, 40, 50))
  ngff.write_image(str(tmp_path / "vol.ome.zarr"), image, VOXEL, chunks=(1, 32, 32))
  ngff.write_image(str(tmp_path / "truth.ome.zarr"), truth, VOXEL)
  result = subprocess.run(
      [sys.executable, "evaluate.py", "--config=configs/unet2d.py:tiny", f"--workdir={tmp_path / 'run'}",
       f"--input={tmp_path / 'vol.ome.zarr'}", f"--mask={tmp_path / 'truth.ome.zarr'}",
       f"--output_dir={tmp_path / 'out'}", "--config.eval.chunk=(2,24,32)", "--scheduler=synchronous"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  summary = json.load(open(tmp_path / "out" / chunked.SUMMARY))
  assert summary["step"] == 3 and summary["chunks"] == 2 * 2 * 2 and summary["voxel_size_nm"] == list(VOXEL)
  expected = sliding_window_stack(build_model(tiny_config.model), variables, image / np.float32(255),
                                  tiny_config.eval)
  probs, axes, voxel = ngff.read_image(str(tmp_path / "out" / chunked.OUTPUT))
  assert probs.dtype == np.float16 and axes == ("z", "y", "x") and voxel == pytest.approx(VOXEL)
  np.testing.assert_allclose(probs.astype(np.float32), expected, atol=1e-3)
  pred = ngff.read_image(str(tmp_path / "out" / chunked.OUTPUT / "labels" / "mask"))[0]
  np.testing.assert_array_equal(pred, (probs.astype(np.float32) >= 0.5).astype(np.uint8))
  assert summary["pixel"]["dice"] == pytest.approx(metrics.pixel_scores(pred > 0, truth > 0)["dice"])
