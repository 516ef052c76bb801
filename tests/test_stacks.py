"""unet_jax/io/stacks.py: one reader for training and inference, colour, bit depths, truncated files."""

import numpy as np
import pytest
import tifffile

from unet_jax.errors import InputError
from unet_jax.io import data, stacks


def _pages(reader):
  return np.stack([reader[z] for z in range(len(reader))])


@pytest.mark.parametrize("samples", [3, 4])
def test_colour_is_converted_to_grey_with_a_note(tmp_path, samples):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (3, 8, 9, samples), dtype=np.uint8)  # (Z, Y, X, S)
  path = str(tmp_path / "colour.tif")
  tifffile.imwrite(path, rgb, photometric="rgb", extrasamples=["unassalpha"] if samples == 4 else None)
  with stacks.StackReader(path) as reader:
    assert reader.shape == (3, 8, 9)  # not 3 slices of 8 x (9 x samples)
    assert reader.notes and ("RGBA" if samples == 4 else "RGB") in reader.notes[0]
    grey = np.round(rgb[..., :3].astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))  # alpha ignored
    np.testing.assert_allclose(_pages(reader), grey / 255.0, atol=1e-6)


def test_single_rgb_image(tmp_path):
  rgb = np.zeros((8, 9, 3), np.uint8)
  rgb[..., 1] = 200  # pure green
  tifffile.imwrite(tmp_path / "one.tif", rgb, photometric="rgb")
  with stacks.StackReader(str(tmp_path / "one.tif")) as reader:
    assert reader.shape == (1, 8, 9)
    np.testing.assert_allclose(reader[0], np.round(0.587 * 200) / 255.0, atol=1e-6)


def test_twelve_bit_in_uint16_reads_like_its_eight_bit_copy(tmp_path):
  rng = np.random.default_rng(1)
  eight = rng.integers(0, 256, (2, 16, 16)).astype(np.uint8)
  twelve = (eight.astype(np.uint32) * 4095 // 255).astype(np.uint16)  # same image, 12-bit range
  tifffile.imwrite(tmp_path / "8.tif", eight, photometric="minisblack")
  tifffile.imwrite(tmp_path / "12.tif", twelve, photometric="minisblack")
  a = stacks.read_normalized(str(tmp_path / "8.tif"))
  b = stacks.read_normalized(str(tmp_path / "12.tif"))
  np.testing.assert_allclose(a, b, atol=0.5 / 255)
  assert b.max() == pytest.approx(twelve.max() / 4095.0)  # / (2^12 - 1), not / 65535
  np.testing.assert_allclose(stacks.normalize_image(twelve), b)  # in memory: the same rule


@pytest.mark.parametrize("max_value,bits", [(255, 8), (256, 10), (1023, 10), (4095, 12), (4096, 14), (65535, 16)])
def test_unsigned_bit_depth(max_value, bits):
  assert stacks.unsigned_bits(max_value, 16) == bits
  assert stacks.unsigned_bits(max_value if max_value < 4096 else 0, 16, stored_bits=12) == 12  # the TIFF's word
  assert stacks.unsigned_bits(200, 8) == 8


def test_training_and_inference_read_alike(tmp_path):
  rng = np.random.default_rng(2)
  image = rng.integers(0, 3000, (3, 16, 16)).astype(np.uint16)
  mask = (rng.random((3, 16, 16)) > 0.5).astype(np.uint8) * 255
  tifffile.imwrite(tmp_path / "i.tif", image, photometric="minisblack")
  tifffile.imwrite(tmp_path / "m.tif", mask, photometric="minisblack")
  split = data.load_pair(str(tmp_path / "i.tif"), str(tmp_path / "m.tif"))
  with stacks.StackReader(str(tmp_path / "i.tif")) as reader:
    np.testing.assert_array_equal(split.image, _pages(reader))
  np.testing.assert_allclose(split.image, image / 4095.0, rtol=1e-6)


def test_bad_stacks_are_one_line_errors(tmp_path):
  tifffile.imwrite(tmp_path / "tz.tif", np.zeros((2, 3, 8, 8), np.uint8), imagej=True, metadata={"axes": "TZYX"})
  with pytest.raises(InputError, match="several axes"):
    stacks.StackReader(str(tmp_path / "tz.tif"))
  for photometric in ("minisblack", "rgb"):  # one page per slice; read whole
    tifffile.imwrite(tmp_path / "b.tif", np.ones((4, 8, 8, 3), np.uint8)[..., : 3 if photometric == "rgb" else 1]
                     .squeeze(), photometric=photometric)
    raw = (tmp_path / "b.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cut.tif.*truncated"):
      with stacks.StackReader(str(tmp_path / "cut.tif")) as reader:
        reader.read_raw()
  with pytest.raises(InputError, match="NaN"):
    tifffile.imwrite(tmp_path / "nan.tif", np.full((2, 4, 4), np.nan, np.float32))
    stacks.StackReader(str(tmp_path / "nan.tif"))
