"""Voxel-size-aware inference (unet_jax/inference/magnification.py, Predictor.on_input): resampling round trips
and blocks, the voxel size read from OME-Zarr, TIFF and ImageJ metadata (a flag overriding them), outputs on the
input's grid that agree with the native result better than the naive path, the chunked path equal to the
in-memory one, one-line errors for nonsense sizes, the recorded training voxel size, the zoom preset."""

import dataclasses
import json
import zipfile

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from configs import unet2d
from unet_jax.errors import InputError
from unet_jax.export import bioimage
from unet_jax.inference import chunked, magnification, tiling
from unet_jax.inference.predictor import PACKAGE_SETTINGS, PACKAGE_VARIABLES, Predictor
from unet_jax.io import ngff, runlog, stacks
from unet_jax.network.model import abstract_variables, build_model

from test_augment import off_config, run  # pylint: disable=wrong-import-position  (tests/ is on the import path)
from test_ngff import IDENTITY, VOXEL, eval_config, unet  # pylint: disable=wrong-import-position

FINE, COARSE = (50.0, 4.6, 4.6), (9.2, 9.2)  # the model's voxel size; an input at twice its pixel size


def smooth(shape, seed=0, sigma=3.0):
  """f32 values in [0, 1] that vary over a few voxels: what linear interpolation reproduces closely."""
  field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
  return ((field - field.min()) / (field.max() - field.min())).astype(np.float32)


def disks(shape, radius, count, seed=0):
  """f32 0/1 image of `count` disks of `radius` pixels: objects of one size, like mitochondria at one magnification."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  image = np.zeros(shape, np.float32)
  for y, x in rng.uniform(radius, np.array(shape) - radius, (count, 2)):
    image[(yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2] = 1.0
  return image


def identity_predictor(monkeypatch, model_voxel=FINE, window=16):
  monkeypatch.setattr(tiling, "volume_predictor", lambda *a: IDENTITY)
  predictor = Predictor.create(unet(2)[0], None, eval_config(window, (2, 12, 12)))
  return dataclasses.replace(predictor, voxel_size_nm=model_voxel)


@pytest.mark.parametrize("target", [(2, 100, 140), (2, 25, 35), (2, 61, 47)])
def test_resampling_round_trip_keeps_shape_and_values(target):
  image = smooth((2, 50, 70))
  there = magnification.resample(image, target)
  back = magnification.resample(there, image.shape)
  assert there.shape == target and back.shape == image.shape and back.dtype == np.float32
  error = np.abs(back - image)
  upsampled = target[1] > image.shape[1]  # up and back loses little (the anti-aliasing blur); down loses detail
  assert error.max() < (0.03 if upsampled else 0.1) and error.mean() < (0.005 if upsampled else 0.02)


@pytest.mark.parametrize("source,target,order", [
    ((3, 40, 30), (3, 80, 60), 3), ((3, 40, 30), (3, 17, 13), 3), ((5, 40, 30), (9, 23, 50), 3),
    ((1, 200, 160), (1, 301, 211), 3), ((1, 200, 160), (1, 93, 71), 3), ((3, 40, 30), (3, 80, 60), 1),
    ((5, 40, 30), (9, 23, 50), 1), ((3, 40, 30), (3, 17, 61), 0)])
def test_blocks_resampled_apart_equal_the_whole(source, target, order):
  """Small boxes of a large source: the cubic spline's global prefilter is cut SPLINE_MARGIN voxels out, within 1e-5."""
  array = smooth(source, seed=1) if order else (smooth(source, seed=1) > 0.5).astype(np.uint8)
  whole = magnification.resample(array, target, order)
  rng = np.random.default_rng(0)
  for _ in range(20):
    lo = [int(rng.integers(0, m)) for m in target]
    box = tuple(slice(a, min(m, a + int(rng.integers(1, 40)))) for a, m in zip(lo, target))
    part = magnification.resample_box(lambda b: array[b], source, target, box, order)
    np.testing.assert_allclose(part, whole[box], atol=1e-5 if order == 3 else 1e-6)
    assert part.dtype == whole.dtype


def test_cubic_resampling_keeps_detail_that_linear_blurs():
  """Up x2 and back: the cubic spline returns fine texture closer than linear interpolation (why images are cubic)."""
  image = smooth((1, 64, 64), seed=3, sigma=1.0)
  error = {order: np.abs(magnification.resample(magnification.resample(image, (1, 128, 128), order), image.shape,
                                                order) - image).mean() for order in (1, 3)}
  assert error[3] < error[1] / 3, error
  with pytest.raises(InputError, match="order 2"):
    magnification.resample(image, (1, 32, 32), 2)


def test_identity_model_returns_its_input_on_the_input_grid(monkeypatch):
  predictor = identity_predictor(monkeypatch).on_input(COARSE, "test")
  assert predictor.resampling.factors == (1.0, 2.0, 2.0)
  assert predictor.resampling.note == "input 9.2 nm, model 4.6 nm: resampled x2.00 in y,x"
  image = smooth((2, 30, 40))
  out = predictor.raw_probabilities(image)
  assert out.shape == image.shape
  assert np.abs(out - image).max() < 0.02
  assert predictor.summary()["voxel_size"]["factors"] == [1.0, 2.0, 2.0]


def test_voxel_size_is_read_from_each_kind_of_metadata(tmp_path):
  ngff.write_image(str(tmp_path / "v.ome.zarr"), np.zeros((2, 8, 8), np.uint8), (40.0, 9.2, 9.2))
  assert ngff.ZarrStack(str(tmp_path / "v.ome.zarr")).voxel_size_nm == (40.0, 9.2, 9.2)
  page = np.zeros((2, 8, 8), np.uint8)
  written = {
      "cm.tif": dict(resolution=(1e7 / 9.2, 1e7 / 9.2), resolutionunit="CENTIMETER"),
      "imagej.tif": dict(imagej=True, resolution=(1 / 0.0092, 1 / 0.0046), metadata={"spacing": 0.05, "unit": "um",
                                                                                      "axes": "ZYX"}),
      "imagej_nm.tif": dict(imagej=True, resolution=(1 / 9.2, 1 / 9.2), metadata={"unit": "nm", "axes": "ZYX"}),
      "plain.tif": {},
      "dpi.tif": dict(resolution=(72, 72), resolutionunit="INCH")}
  for name, kwargs in written.items():
    tifffile.imwrite(str(tmp_path / name), page, **kwargs)
  read = {name: stacks.StackReader(str(tmp_path / name)) for name in written}
  np.testing.assert_allclose(read["cm.tif"].voxel_size_nm, (9.2, 9.2))
  np.testing.assert_allclose(read["imagej.tif"].voxel_size_nm, (50.0, 4.6, 9.2))  # ImageJ: (y, x) = (1/yres, 1/xres)
  assert read["imagej.tif"].voxel_source == "ImageJ spacing and TIFF resolution"
  np.testing.assert_allclose(read["imagej_nm.tif"].voxel_size_nm, (9.2, 9.2))
  assert read["plain.tif"].voxel_size_nm is None and read["dpi.tif"].voxel_size_nm is None
  assert "print resolution" in read["dpi.tif"].voxel_source
  found = read["cm.tif"]
  assert magnification.input_voxel_size(None, found.voxel_size_nm, found.voxel_source)[1].startswith("TIFF")
  assert magnification.input_voxel_size(["4.6", "4.6"], found.voxel_size_nm, found.voxel_source) == (
      (4.6, 4.6), "--voxel_size_nm")  # the flag overrides the file
  for reader in read.values():
    reader.close()


def test_ome_tiff_physical_sizes_are_read_with_their_units(tmp_path):
  page = np.zeros((2, 8, 8), np.uint8)
  written = {  # tifffile writes the OME-XML (PhysicalSize*, units) into the first page's ImageDescription
      "um.ome.tif": dict(PhysicalSizeX=0.0046, PhysicalSizeY=0.0046, PhysicalSizeZ=0.05),  # OME's default unit: um
      "units.ome.tif": dict(PhysicalSizeX=46.0, PhysicalSizeXUnit="\u00c5", PhysicalSizeY=4.6, PhysicalSizeYUnit="nm",
                            PhysicalSizeZ=5e-5, PhysicalSizeZUnit="mm"),
      "no_z.ome.tif": dict(PhysicalSizeX=9.2, PhysicalSizeXUnit="nm", PhysicalSizeY=9.2, PhysicalSizeYUnit="nm"),
      "pixel_unit.ome.tif": dict(PhysicalSizeX=1.0, PhysicalSizeXUnit="pixel", PhysicalSizeY=1.0,
                                 PhysicalSizeYUnit="pixel"),
      "none.ome.tif": {}}
  for name, sizes in written.items():
    tifffile.imwrite(str(tmp_path / name), page, ome=True, metadata={"axes": "ZYX", **sizes})
  # OME-XML beside TIFF resolution tags that say otherwise: the OME sizes, with their explicit units, win
  tifffile.imwrite(str(tmp_path / "both.ome.tif"), page, ome=True, resolution=(1e7 / 20.0, 1e7 / 20.0),
                   resolutionunit="CENTIMETER", metadata={"axes": "ZYX", "PhysicalSizeX": 9.2, "PhysicalSizeXUnit": "nm",
                                                          "PhysicalSizeY": 9.2, "PhysicalSizeYUnit": "nm"})
  read = {}
  for name in (*written, "both.ome.tif"):
    with stacks.StackReader(str(tmp_path / name)) as reader:
      read[name] = (reader.voxel_size_nm, reader.voxel_source)
  np.testing.assert_allclose(read["um.ome.tif"][0], (50.0, 4.6, 4.6))
  assert read["um.ome.tif"][1] == "OME-XML PhysicalSize"
  np.testing.assert_allclose(read["units.ome.tif"][0], (50.0, 4.6, 4.6))
  np.testing.assert_allclose(read["no_z.ome.tif"][0], (9.2, 9.2))
  np.testing.assert_allclose(read["both.ome.tif"][0], (9.2, 9.2))
  assert read["pixel_unit.ome.tif"][0] is None and read["none.ome.tif"][0] is None  # no length: unknown


def difference_of_boxes(variables, patches):
  """A fixed 'network' tuned to one object size: the 7-pixel mean minus the 21-pixel mean, through a sigmoid."""
  del variables
  mean = lambda x, k: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, k, k, 1), (1, 1, 1, 1), "SAME") / k ** 2
  return jax.nn.sigmoid(40.0 * (mean(patches, 7) - mean(patches, 21)))


def test_a_coarser_input_agrees_with_the_native_result_better_than_the_naive_path(monkeypatch):
  predict = tiling.on_slices(difference_of_boxes)
  monkeypatch.setattr(tiling, "volume_predictor", lambda *a: predict)
  predictor = dataclasses.replace(Predictor.create(unet(2)[0], None, eval_config(64, (1, 64, 64))),
                                  voxel_size_nm=FINE)
  native_image = disks((128, 128), 6, 25)[None]
  native = predictor.raw_probabilities(native_image)
  coarse_image = magnification.resample(native_image, (1, 64, 64))
  expected = magnification.resample(native, (1, 64, 64)) >= 0.5
  naive = predictor.on_input(None).raw_probabilities(coarse_image)
  aware = predictor.on_input(COARSE).raw_probabilities(coarse_image)
  assert naive.shape == aware.shape == coarse_image.shape
  wrong = lambda p: int(np.sum((p >= 0.5) != expected))
  assert wrong(aware) < wrong(naive) / 2, (wrong(aware), wrong(naive))


def test_chunked_blocks_equal_the_whole_volume_resampled_at_once(tmp_path, monkeypatch):
  """With a 'network' that sees 21 pixels around each (so windows and margins matter), blocks of 12 x 12 input
  pixels equal the in-memory path and the whole volume resampled, predicted and resampled back at once."""
  predict = tiling.on_slices(difference_of_boxes)
  monkeypatch.setattr(tiling, "volume_predictor", lambda *a: predict)
  volume = smooth((2, 30, 28), seed=2)
  ngff.write_image(str(tmp_path / "v.ome.zarr"), volume, (50.0, 9.2, 9.2), chunks=(1, 16, 16))
  base = dataclasses.replace(Predictor.create(unet(2)[0], None, eval_config(16, (2, 12, 12))), voxel_size_nm=FINE)
  with ngff.ZarrStack(str(tmp_path / "v.ome.zarr")) as stack:
    predictor = base.on_input(stack.voxel_size_nm, "OME-Zarr scale")
    summary = chunked.segment_volume(predictor, stack, str(tmp_path / "out"), (2, 12, 12), probability_dtype="float32",
                                     progress=False)
  assert summary["voxel_size"]["note"] == "input 9.2 nm, model 4.6 nm: resampled x2.00 in y,x"
  blockwise = ngff.read_image(str(tmp_path / "out" / chunked.OUTPUT))[0]
  in_memory = predictor.raw_probabilities(volume)
  on_model_grid = base.raw_probabilities(magnification.resample(volume, (2, 60, 56)))
  at_once = magnification.resample(on_model_grid, volume.shape, order=magnification.PROBABILITY_ORDER)
  assert blockwise.shape == volume.shape
  np.testing.assert_allclose(blockwise, in_memory, atol=2e-5)
  np.testing.assert_allclose(blockwise, at_once, atol=2e-5)


@pytest.mark.parametrize("values,message", [
    ((0.0, 4.6), "positive"), ((-4.6, 4.6), "positive"), ((float("nan"), 4.6), "positive"),
    ((4.6,), "give 2 (y, x) or 3 (z, y, x)"), ((1, 2, 3, 4), "has 4 value(s)"), (("a", "4.6"), "not a number")])
def test_nonsense_voxel_sizes_are_one_line_errors(values, message):
  with pytest.raises(InputError) as error:
    magnification.check_voxel_size(values, "--voxel_size_nm")
  assert message in str(error.value) and "\n" not in str(error.value) and "--voxel_size_nm" in str(error.value)
  with pytest.raises(InputError, match="--voxel_size_nm"):
    magnification.compare(FINE, values, 2, "--voxel_size_nm")


def test_a_rescale_beyond_sixteen_times_is_refused_and_unknown_sizes_are_noted():
  with pytest.raises(InputError, match="beyond the x16"):
    magnification.compare(FINE, (100.0, 100.0), 2, "--voxel_size_nm")
  assert "model's 4.6 nm is assumed" in magnification.compare(FINE, None, 2, "TIFF without a resolution unit").note
  old = magnification.compare(None, COARSE, 2, "test")
  assert old.identity and "no recorded voxel size" in old.note
  assert magnification.compare(FINE, (4.7, 4.5), 2).identity  # within the tolerance
  three = magnification.compare(FINE, (25.0, 9.2, 9.2), 3)
  assert three.factors == (0.5, 2.0, 2.0) and three.model_shape((10, 8, 8)) == (5, 16, 16)


def test_the_training_voxel_size_is_recorded_and_travels_with_packages(tmp_path):
  assert runlog.recorded_voxel_size(str(tmp_path)) is None  # an old run: assumed equal, with a note
  with open(runlog.log_path(str(tmp_path)), "w") as f:
    f.write(json.dumps({"event": "start", "step": 0}) + "\n")
    f.write(json.dumps({"event": "start", "step": 0, "voxel_size_nm": [50, 4.6, 4.6]}) + "\n")
  assert runlog.recorded_voxel_size(str(tmp_path)) == FINE
  config = unet2d.get_config("tiny")
  model = build_model(config.model)
  variables = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_variables(model))
  predictor = dataclasses.replace(Predictor.create(model, variables, config.eval), voxel_size_nm=FINE)
  for voxel in (FINE, None):
    record = dataclasses.replace(predictor, voxel_size_nm=voxel).package_record(config)
    with zipfile.ZipFile(tmp_path / "p.zip", "w") as package:
      package.writestr(PACKAGE_SETTINGS, json.dumps(record))
      package.writestr(PACKAGE_VARIABLES, flax.serialization.msgpack_serialize(variables))
    assert Predictor.from_package(str(tmp_path / "p.zip")).voxel_size_nm == voxel
  config.data.voxel_size_nm = FINE
  assert bioimage.with_training_voxel_size(dataclasses.replace(predictor, voxel_size_nm=None), config,
                                           "old").voxel_size_nm == FINE  # an old run: the package states the config's
  config.data.voxel_size_nm = (5.0, 5.0, 5.0)
  with pytest.raises(InputError, match=r"trained at voxel size \(50,4.6,4.6\) nm"):
    bioimage.with_training_voxel_size(predictor, config, "runs/vnc")


@pytest.mark.slow  # compiles the augmentation (~5 s)
def test_zoom_preset_moves_image_and_mask_together():
  config = unet2d.get_config("synthetic,aug=zoom").augment
  assert config.scale_prob == 1.0 and tuple(config.scale_range) == (0.5, 2.0) and config.rotate_prob == 0.0
  masks = jnp.asarray(disks((64, 64), 5, 8)[None, ..., None].repeat(8, 0))
  out_image, out_mask = run(off_config(scale_prob=1.0, scale_range=(0.5, 2.0)), masks, masks, seed=3)
  assert np.array_equal(out_image >= 0.5, out_mask == 1.0) and set(np.unique(out_mask)) <= {0.0, 1.0}
  sizes = [np.median(np.bincount(ndimage.label(m[..., 0])[0].ravel())[1:]) for m in out_mask]
  assert max(sizes) / min(sizes) > 2.0  # objects zoomed to visibly different sizes


def test_class_probabilities_map_back_per_class_and_still_sum_to_one(monkeypatch):
  """A K-class model at another voxel size: each class channel goes back to the input grid linearly, so the
  probabilities keep the input's shape, stay in [0, 1] and sum to 1; its label map is on the input grid too."""
  monkeypatch.setattr(tiling, "volume_predictor",
                      lambda *a: tiling.on_slices(lambda v, p: jnp.concatenate([p, 1.0 - p], axis=-1)))
  predictor = Predictor.create(unet(2)[0], None, eval_config(16, (2, 12, 12)))
  predictor = dataclasses.replace(predictor, model=predictor.model.clone(num_classes=2), voxel_size_nm=FINE)
  image = smooth((2, 30, 40))
  out = predictor.on_input(COARSE, "test").raw_probabilities(image)
  assert out.shape == (*image.shape, 2)
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
  assert np.abs(out[..., 0] - image).max() < 0.02
  assert predictor.on_input(COARSE, "test").label_map(out).shape == image.shape
