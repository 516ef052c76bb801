"""TIFF stacks in and out: the one reader (`StackReader`), intensity normalisation, atomic writing.

Reading: a 2D image or a (Z, Y, X) stack; TIFF axes are read from the file (tifffile's series axes:
ImageJ hyperstacks, OME, photometric). Colour samples (RGB, RGBA: axis 'S') are converted to grey
(luminance 0.299 R + 0.587 G + 0.114 B, alpha ignored) with a note; several channels (axis 'C')
or two stacked axes (e.g. time and Z) are refused with one line saying what to save instead.

Normalisation to float32 in [0, 1], the same for training and inference:
- unsigned integers are divided by 2^b - 1, b the bit depth the data uses: the TIFF's BitsPerSample
  when it is below the dtype's, else the smallest of 8, 10, 12, 14, 16 (or 32) bits that holds the
  stack's maximum. uint8 is always / 255; 12-bit data stored as uint16 is / 4095, like its 8-bit copy;
- floats and signed integers already inside [0, 1] are kept, others min-max scaled over the stack;
- NaN or infinite values are an error.

Voxel size (`tiff_voxel_size`): an OME-TIFF's PhysicalSizeX/Y (and Z) of its first image, each in its
PhysicalSize*Unit (OME's default: micrometres), when its OME-XML states them; otherwise in-plane from the
XResolution/YResolution tags (pixels per unit), the unit being ImageJ's (its description's `unit`: nm,
um/micron, ...) or else the ResolutionUnit tag's (centimetre, inch, ...), and z from ImageJ's `spacing`. A unit of 'none' or 'pixel' leaves it unknown (None),
which is what most writers put by default, and so do pixels above `LARGEST_PIXEL_NM` (print resolutions
such as 72 dpi).
"""

import os
from typing import Any
from xml.etree import ElementTree

import numpy as np
import tifffile

from unet_jax.errors import InputError
from unet_jax.io import outputs

BIT_DEPTHS = (8, 10, 12, 14, 16, 32)
UNIT_NM = {"nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "um": 1e3, "micron": 1e3, "\u00b5m": 1e3, "\u03bcm": 1e3,
           "\\u00b5m": 1e3, "micrometer": 1e3, "micrometre": 1e3, "mm": 1e6, "millimeter": 1e6, "cm": 1e7,
           "centimeter": 1e7, "m": 1e9, "meter": 1e9, "a": 0.1, "angstrom": 0.1, "\u00e5": 0.1, "pm": 1e-3,
           "inch": 2.54e7, "in": 2.54e7}
RESOLUTION_UNIT_NM = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}  # TIFF ResolutionUnit: inch, cm (+ tifffile's mm, um)
LARGEST_PIXEL_NM = 1e4  # a larger "pixel size" is a print resolution (72 dpi: 0.35 mm), not a microscope's
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def is_zarr(path: str) -> bool:
  """Whether `path` names a zarr store (a folder holding .zgroup, .zarray or zarr.json, or a *.zarr name)."""
  markers = (".zgroup", ".zarray", "zarr.json")
  return path.rstrip("/").endswith(".zarr") or (
      os.path.isdir(path) and any(os.path.isfile(os.path.join(path, m)) for m in markers))


def unsigned_bits(max_value: int, dtype_bits: int, stored_bits: int | None = None) -> int:
  """The bit depth b of unsigned data whose maximum is `max_value` (see the module docstring)."""
  if stored_bits and stored_bits < dtype_bits:
    return stored_bits
  return next(b for b in BIT_DEPTHS if b >= min(dtype_bits, 8) and max_value <= 2 ** b - 1)


def scaling(dtype: np.dtype, lo: float, hi: float, stored_bits: int | None = None) -> tuple[float, float]:
  """(offset, scale) with normalised = (raw - offset) / scale for data of `dtype` spanning [lo, hi]."""
  if np.issubdtype(dtype, np.unsignedinteger):
    return 0.0, float(2 ** unsigned_bits(int(hi), np.dtype(dtype).itemsize * 8, stored_bits) - 1)
  if lo >= 0.0 and hi <= 1.0:
    return 0.0, 1.0
  return lo, (hi - lo) if hi > lo else 1.0


def check_dtype(dtype: np.dtype, name: str) -> None:
  """Raises InputError for dtypes that are not integer or float image data."""
  if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)) or dtype == np.bool_:
    raise InputError(f"{name} has unsupported dtype {dtype}; use uint8, uint16 or float")


def value_range(array: np.ndarray, name: str) -> tuple[float, float]:
  """(min, max) of an array; raises InputError for NaN or infinite values."""
  if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
    raise InputError(f"{name} contains NaN or infinite values; clean the stack first")
  return float(array.min()), float(array.max())


def normalize_image(image: np.ndarray, name: str = "image", stored_bits: int | None = None) -> np.ndarray:
  """An array of any supported dtype as float32 in [0, 1] (see the module docstring)."""
  check_dtype(image.dtype, name)
  offset, scale = scaling(image.dtype, *value_range(image, name), stored_bits)
  image = image.astype(np.float32)
  return image if (offset, scale) == (0.0, 1.0) else (image - np.float32(offset)) / np.float32(scale)


def _layout(path: str, axes: str, shape: tuple[int, ...]) -> tuple[int, int, list[str]]:
  """(index of the Z axis or -1, index of the colour-sample axis or -1, notes) for a series' axes."""
  notes = []
  sizes = dict(zip(axes, shape))
  if sizes.get("C", 1) > 1:
    raise InputError(f"{path} has {sizes['C']} channels (axes {axes}, shape {shape}); save the EM channel "
                     "alone as a greyscale stack")
  sample = axes.find("S")
  if sample >= 0 and shape[sample] not in (1, 3, 4):
    raise InputError(f"{path} has {shape[sample]} samples per pixel (axes {axes}); save one greyscale channel")
  if sample >= 0 and shape[sample] > 1:
    notes.append(f"{path}: colour ({'RGBA' if shape[sample] == 4 else 'RGB'}) converted to grey")
  if "Y" not in axes or "X" not in axes or axes.index("X") != axes.index("Y") + 1:
    raise InputError(f"{path}: axes {axes} lack adjacent Y, X image axes; save a (Z, Y, X) greyscale stack")
  stacked = [i for i, a in enumerate(axes) if a not in "YXSC" and shape[i] > 1]
  if len(stacked) > 1:
    raise InputError(f"{path} stacks images along several axes (axes {axes}, shape {shape}); save one "
                     "(Z, Y, X) stack")
  return (stacked[0] if stacked else -1), sample, notes


def ome_voxel_size(tif: tifffile.TiffFile) -> tuple[float, ...] | None:
  """The voxel size in nm of an OME-TIFF's first image: (z, y, x) when its OME-XML states PhysicalSizeZ, else
  (y, x); None when it states no positive in-plane size in a length unit."""
  try:
    pixels = ElementTree.fromstring(tif.ome_metadata).find("./{*}Image/{*}Pixels") if tif.ome_metadata else None
  except ElementTree.ParseError:
    return None
  if pixels is None:
    return None
  sizes = []
  for axis in "ZYX":
    try:
      value = float(pixels.get(f"PhysicalSize{axis}", "nan"))
    except ValueError:
      value = float("nan")
    nm = UNIT_NM.get(pixels.get(f"PhysicalSize{axis}Unit", "\u00b5m").strip().lower())
    sizes.append(value * nm if nm and np.isfinite(value) and value > 0 else None)
  if sizes[1] is None or sizes[2] is None:
    return None
  return tuple(sizes) if sizes[0] is not None else tuple(sizes[1:])


def tiff_voxel_size(tif: tifffile.TiffFile) -> tuple[tuple[float, ...] | None, str]:
  """(voxel size in nm, (z, y, x) with a z size (OME PhysicalSizeZ, ImageJ's spacing) else (y, x), or None when
  unknown; where it came from)."""
  ome = ome_voxel_size(tif)
  if ome:
    return ome, "OME-XML PhysicalSize"
  page = tif.pages[0]
  imagej = tif.imagej_metadata or {}
  unit = str(imagej.get("unit", "")).strip().lower()
  tag = page.tags.get("ResolutionUnit")
  nm = UNIT_NM.get(unit) if unit else RESOLUTION_UNIT_NM.get(int(tag.value) if tag is not None else 2)
  resolution = [page.tags.get(name) for name in ("YResolution", "XResolution")]
  if nm is None or any(r is None for r in resolution):
    return None, "TIFF without a resolution unit"
  try:
    yx = tuple(nm * float(r.value[1]) / float(r.value[0]) for r in resolution)  # pixels per unit -> nm per pixel
  except (TypeError, ValueError, ZeroDivisionError, IndexError):
    return None, "TIFF with an unreadable resolution"
  if max(yx) > LARGEST_PIXEL_NM:
    return None, f"TIFF resolution of {max(yx):.3g} nm pixels, a print resolution"
  spacing = imagej.get("spacing")
  if unit and isinstance(spacing, (int, float)) and spacing > 0:
    return (nm * float(spacing), *yx), "ImageJ spacing and TIFF resolution"
  return yx, f"TIFF resolution ({'ImageJ unit ' + unit if unit else 'ResolutionUnit tag'})"


class StackReader:
  """Pages f32[H, W] in [0, 1] of a TIFF image or stack, read one at a time (or whole).

  `shape` is (Z, H, W) (a 2D image has Z = 1); `notes` lists conversions made (colour to grey);
  `voxel_size_nm` and `voxel_source` are `tiff_voxel_size`'s.
  Normalisation needs the stack's range, which one streaming pass finds first (not for uint8).
  """

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise InputError(f"file not found: {path}; check the path")
    try:
      self._tif = tifffile.TiffFile(path)
      all_series = self._tif.series
      series = all_series[0]
      axes, shape, pages = series.axes, tuple(series.shape), series.pages
      if len(all_series) > 1 and len(shape) == 2 and all(
          tuple(s.shape) == shape and s.dtype == series.dtype for s in all_series):
        axes, shape = "Z" + axes, (len(all_series), *shape)  # pages written one by one: one 2D series each
        pages = [s.pages[0] for s in all_series]
      self.dtype = np.dtype(series.dtype)
      self.stored_bits = int(pages[0].bitspersample) if pages and pages[0] is not None else None
      self.voxel_size_nm, self.voxel_source = tiff_voxel_size(self._tif)
    except InputError:
      raise
    except Exception as e:  # tifffile raises many types for corrupt files
      raise InputError(f"cannot read TIFF {path} ({type(e).__name__}: {e}); is it a valid TIFF?") from e
    self.path = path
    try:
      if 0 in shape:
        raise InputError(f"{path} holds no pixels (shape {shape}); save a non-empty image or stack")
      check_dtype(self.dtype, path)
      z_axis, sample, self.notes = _layout(path, axes, shape)
      depth = shape[z_axis] if z_axis >= 0 else 1
      self.shape = (depth, shape[axes.index("Y")], shape[axes.index("X")])
      one_page_each = (sample < 0 and len(pages) == depth
                       and all(p is not None and tuple(p.shape) == self.shape[1:] for p in pages))
      if one_page_each:
        self._raw = lambda z: pages[z].asarray()
      else:  # colour, or the whole stack in one page: read once, as (Z, Y, X[, S])
        whole = self._canonical(series.asarray(), axes, z_axis, sample)
        self._raw = lambda z: whole[z]
      lo_hi = (0.0, 255.0) if self.dtype == np.uint8 else self._value_range()
      self._offset, self._scale = (np.float32(v) for v in scaling(self.dtype, *lo_hi, self.stored_bits))
    except InputError:
      self._tif.close()
      raise
    except Exception as e:  # pixel data missing or corrupt
      self._tif.close()
      raise InputError(f"cannot read the pixels of {path} ({type(e).__name__}: {e}); the file may be "
                       "truncated") from e

  @staticmethod
  def _canonical(array: np.ndarray, axes: str, z_axis: int, sample: int) -> np.ndarray:
    """The array as (Z, Y, X), colour converted to grey in the stored dtype's range."""
    order = [i for i in (z_axis, axes.index("Y"), axes.index("X"), sample) if i >= 0]
    rest = [i for i in range(array.ndim) if i not in order]
    array = np.transpose(array, rest + order).reshape([array.shape[i] for i in order])
    if sample >= 0:
      rgb = array[..., :3].astype(np.float32)
      grey = rgb @ GREY_WEIGHTS if rgb.shape[-1] == 3 else rgb[..., 0]
      array = np.round(grey).astype(array.dtype) if np.issubdtype(array.dtype, np.integer) else grey
    return array.reshape((-1, *array.shape[-2:])) if z_axis >= 0 else array[None]

  def _value_range(self) -> tuple[float, float]:
    """(min, max) over the stack, one page at a time."""
    lo, hi = np.inf, -np.inf
    for z in range(self.shape[0]):
      page_lo, page_hi = value_range(self.raw(z), self.path)
      lo, hi = min(lo, page_lo), max(hi, page_hi)
    return lo, hi

  def __len__(self) -> int:
    return self.shape[0]

  def raw(self, z: int) -> np.ndarray:
    """Page `z` as stored (grey), shape (H, W)."""
    try:
      return np.asarray(self._raw(z)).reshape(self.shape[1:])
    except InputError:
      raise
    except Exception as e:  # a truncated or corrupt page
      raise InputError(f"cannot read page {z} of {self.path} ({type(e).__name__}: {e}); "
                       "the file may be truncated") from e

  def read_raw(self) -> np.ndarray:
    """The whole stack as stored, (Z, H, W)."""
    return np.stack([self.raw(z) for z in range(len(self))])

  def __getitem__(self, z: int) -> np.ndarray:
    """Page `z` normalised to f32[H, W] in [0, 1]."""
    return (self.raw(z).astype(np.float32) - self._offset) / self._scale

  def close(self) -> None:
    self._tif.close()

  def __enter__(self) -> "StackReader":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def _read_all(path: str, normalized: bool) -> np.ndarray:
  with StackReader(path) as reader:
    for note in reader.notes:
      print(f"note: {note}")
    return np.stack([reader[z] for z in range(len(reader))]) if normalized else reader.read_raw()


def read_stack(path: str) -> np.ndarray:
  """A 2D image or a stack as stored (grey), (Z, H, W)."""
  return _read_all(path, normalized=False)


def read_normalized(path: str) -> np.ndarray:
  """A 2D image or a stack normalised to f32[Z, H, W] in [0, 1], exactly as `StackReader` pages are."""
  return _read_all(path, normalized=True)


def write_stack(path: str, array: np.ndarray, compression: str | None = "zlib") -> None:
  """Writes `array` [Z, H, W] as a multi-frame TIFF, atomically (temp file + rename)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with outputs.atomic_path(path) as tmp:
    tifffile.imwrite(tmp, np.asarray(array), compression=compression, photometric="minisblack",
                     metadata={"axes": "ZYX"})
