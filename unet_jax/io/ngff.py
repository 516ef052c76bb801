"""OME-Zarr (OME-NGFF) images in and out, with their axes and voxel size, through `ome-zarr` and `zarr`.

OME-Zarr is how large EM volumes are kept and shared (napari, Fiji/MoBIE, webKnossos, neuroglancer).
An image is a zarr group whose `multiscales` metadata names its axes and gives each resolution level's
`coordinateTransformations`; the full-resolution level (the first dataset) is what is read. Accepted
axes are (z, y, x) or (y, x), spatial; time or channel axes of size 1 are dropped with a note, larger
ones refused like several TIFF channels. The voxel size is the first level's `scale`, converted to nm
from the axes' units (values without a unit are taken as nm).

`ZarrStack` reads any box of the volume lazily (chunk by chunk) and normalises it as `stacks.StackReader`
does its pages (the range pass is chunked too), so training, TIFF and OME-Zarr inputs read alike.
Images are written as NGFF 0.4 (zarr v2), which Fiji/MoBIE, BigDataViewer and napari all read; labels
(segmentations) follow the NGFF labels spec, under the image's `labels/` group.
"""

import contextlib
import logging
import os
import shutil
from typing import Any, Iterator, Sequence

import dask
import dask.array
import numpy as np
import zarr
from ome_zarr import format as ngff_format
from ome_zarr import io as ngff_io
from ome_zarr import writer

from unet_jax.errors import InputError
from unet_jax.io import outputs, stacks, stores

FORMAT = ngff_format.FormatV04()
UNIT_NM = {"angstrom": 0.1, "nanometer": 1.0, "micrometer": 1e3, "millimeter": 1e6, "centimeter": 1e7,
           "meter": 1e9, "picometer": 1e-3}
SPATIAL_AXES = {3: ("z", "y", "x"), 2: ("y", "x")}
DATASET = "s0"  # the full-resolution level's path, as ome-zarr's writer names it

logging.getLogger("ome_zarr").setLevel(logging.ERROR)  # it warns of every version other than its newest


def _axes_metadata(axes: Sequence[str]) -> list[dict[str, str]]:
  return [{"name": a, "type": "space", "unit": "nanometer"} for a in axes]


def _multiscale(path: str) -> tuple[dict[str, Any], ngff_io.ZarrLocation]:
  """The first `multiscales` entry of the OME-Zarr image at `path`, and its location; InputError otherwise."""
  if stores.is_remote(path):  # s3://, gs://, ...: read through fsspec
    location = stores.ZarrLocation(path)
  elif not os.path.isdir(path):
    raise InputError(f"OME-Zarr image not found: {path}; check the path")
  else:
    location = ngff_io.parse_url(path, mode="r")
  multiscales = (location.root_attrs.get("multiscales") if location is not None else None) or []
  if not multiscales or not multiscales[0].get("datasets"):
    raise InputError(f"{path} has no OME-NGFF 'multiscales' metadata (a plain zarr array or group?); write it "
                     "as OME-Zarr, e.g. with ome_zarr.writer.write_image or unet_jax.io.ngff.write_image")
  return multiscales[0], location


def _scale_values(path: str, scale: Any, names: tuple[str, ...]) -> list[float]:
  """The numbers of a `scale` transform, one per axis; InputError naming the store and the field otherwise."""
  field = "'scale' of multiscales[0] (coordinateTransformations)"
  if not isinstance(scale, (list, tuple)) or len(scale) != len(names):
    count = f"{len(scale)} value(s)" if isinstance(scale, (list, tuple)) else repr(scale)
    raise InputError(f"{path}: the {field} has {count} for {len(names)} axes {names}; the NGFF metadata needs "
                     "one number per axis (rewrite it, e.g. with unet_jax.io.ngff.write_image)")
  try:
    return [float(v) for v in scale]
  except (TypeError, ValueError):
    raise InputError(f"{path}: the {field} {scale!r} holds a value that is not a number; the NGFF metadata "
                     "needs one number per axis (rewrite it, e.g. with unet_jax.io.ngff.write_image)") from None


def _layout(path: str, meta: dict[str, Any], shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[float, ...], list[str]]:
  """(indices of the spatial axes, voxel size in nm per spatial axis, notes) of an image's metadata."""
  axes = meta.get("axes") or [{"name": n} for n in "tczyx"[-len(shape):]]  # NGFF < 0.3: implicit tczyx
  axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
  names = tuple(str(a.get("name", "")).lower() for a in axes)
  if len(names) != len(shape):
    raise InputError(f"{path}: {len(names)} axes {names} for an array of shape {shape}; the metadata is broken")
  notes = []
  for i, (a, n) in enumerate(zip(axes, names)):
    if n in ("z", "y", "x") and a.get("type", "space") == "space":
      continue
    if shape[i] > 1:
      raise InputError(f"{path} has a {a.get('type') or n!r} axis {n!r} of size {shape[i]} (axes {names}, shape "
                       f"{shape}); save one greyscale (z, y, x) or (y, x) image, e.g. the EM channel alone")
    notes.append(f"{path}: axis {n!r} of size 1 dropped")
  spatial = tuple(i for i, n in enumerate(names) if n in ("z", "y", "x"))
  if tuple(names[i] for i in spatial) not in SPATIAL_AXES.values():
    raise InputError(f"{path}: axes {names} are not (z, y, x) or (y, x) in that order; transpose the image")
  scale = [1.0] * len(names)
  for transform in meta["datasets"][0].get("coordinateTransformations") or meta.get("coordinateTransformations") or []:
    if transform.get("type") == "scale" and "scale" in transform:
      scale = _scale_values(path, transform["scale"], names)
  units = [axes[i].get("unit") for i in spatial]
  unknown = [u for u in units if u and u not in UNIT_NM]
  if unknown:
    raise InputError(f"{path}: unsupported axis unit {unknown[0]!r}; use one of {tuple(UNIT_NM)}")
  voxel = tuple(scale[i] * UNIT_NM.get(u or "nanometer") for i, u in zip(spatial, units))
  if any(not np.isfinite(v) or v <= 0 for v in voxel):
    raise InputError(f"{path}: voxel size {voxel} must be positive")
  return spatial, voxel, notes


class ZarrStack:
  """A (z, y, x) or (y, x) OME-Zarr image as a stack: boxes f32 in [0, 1], read lazily chunk by chunk.

  `shape` is (Z, H, W) (a 2D image has Z = 1), `axes` the image's spatial axes, `voxel_size_nm` one
  size per axis of `axes`; `notes` lists what was dropped. Mirrors `stacks.StackReader`.
  """

  def __init__(self, path: str):
    meta, location = _multiscale(path)
    self.path = path
    dataset = meta["datasets"][0].get("path") if isinstance(meta["datasets"][0], dict) else None
    if not isinstance(dataset, str) or not dataset:
      raise InputError(f"{path}: multiscales[0].datasets[0] has no 'path' (the array of the full-resolution level, "
                       "e.g. 's0' or '0'); the NGFF metadata must name each level's array")
    try:
      array = location.load(dataset)
    except Exception as e:  # zarr raises many types for missing or corrupt arrays
      raise InputError(f"cannot read dataset {dataset!r} of {path} ({type(e).__name__}: {e})") from e
    spatial, voxel, self.notes = _layout(path, meta, tuple(array.shape))
    if 0 in array.shape:
      raise InputError(f"{path} holds no voxels (shape {tuple(array.shape)}); save a non-empty image")
    self.dtype = np.dtype(array.dtype)
    stacks.check_dtype(self.dtype, path)
    array = array[tuple(slice(None) if i in spatial else 0 for i in range(array.ndim))]
    self.axes = SPATIAL_AXES[len(spatial)]
    self.voxel_size_nm = voxel
    self._array = array if len(spatial) == 3 else array[None]
    self.shape = tuple(int(s) for s in self._array.shape)
    lo_hi = (0.0, 255.0) if self.dtype == np.uint8 else self._value_range()
    self._offset, self._scale = (np.float32(v) for v in stacks.scaling(self.dtype, *lo_hi))

  def _value_range(self) -> tuple[float, float]:
    """(min, max) over the volume, chunk by chunk; InputError for NaN or infinity."""
    array = self._array
    try:
      if np.issubdtype(self.dtype, np.floating) and not bool(dask.array.isfinite(array).all().compute()):
        raise InputError(f"{self.path} contains NaN or infinite values; clean the volume first")
      lo, hi = dask.compute(array.min(), array.max())
    except InputError:
      raise
    except Exception as e:  # a missing or corrupt chunk
      raise InputError(f"cannot read the voxels of {self.path} ({type(e).__name__}: {e}); a chunk may be "
                       "missing or corrupt") from e
    return float(lo), float(hi)

  def __len__(self) -> int:
    return self.shape[0]

  def raw(self, box: tuple[slice, ...] | int) -> np.ndarray:
    """The voxels of `box` (or slice z) as stored."""
    try:
      return np.asarray(self._array[box].compute())
    except Exception as e:
      raise InputError(f"cannot read {box} of {self.path} ({type(e).__name__}: {e}); a chunk may be "
                       "missing or corrupt") from e

  def read(self, box: tuple[slice, ...]) -> np.ndarray:
    """The voxels of `box` normalised to f32 in [0, 1] (the rules of unet_jax/io/stacks.py)."""
    return (self.raw(box).astype(np.float32) - self._offset) / self._scale

  def unique_values(self) -> np.ndarray:
    """The distinct stored values, found chunk by chunk: a mask is checked before any work."""
    return np.asarray(dask.array.unique(self._array).compute())

  def read_raw(self) -> np.ndarray:
    """The whole volume as stored, (Z, H, W)."""
    return self.raw((slice(None),) * 3)

  def __getitem__(self, z: int) -> np.ndarray:
    """Slice `z` normalised to f32[H, W]."""
    return self.read((slice(z, z + 1), slice(None), slice(None)))[0]

  def close(self) -> None:
    pass

  def __enter__(self) -> "ZarrStack":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


class TiffBoxes:
  """A TIFF stack (`stacks.StackReader`) read by boxes as `ZarrStack` is: a TIFF mask of an OME-Zarr image."""

  def __init__(self, path: str):
    self._reader = stacks.StackReader(path)
    self.path, self.shape, self.notes = path, self._reader.shape, self._reader.notes

  def raw(self, box: tuple[slice, ...] | int) -> np.ndarray:
    """The voxels of `box` (or slice z) as stored, page by page."""
    if isinstance(box, int):
      return self._reader.raw(box)
    return np.stack([self._reader.raw(z)[tuple(box[1:])] for z in range(*box[0].indices(self.shape[0]))])

  def unique_values(self) -> np.ndarray:
    """The distinct stored values, found page by page."""
    return np.unique(np.concatenate([np.unique(self._reader.raw(z)) for z in range(self.shape[0])]))

  def close(self) -> None:
    self._reader.close()

  def __enter__(self) -> "TiffBoxes":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def open_volume(path: str) -> "ZarrStack | TiffBoxes":
  """An OME-Zarr image or a TIFF stack, each read by boxes: a mask may be of either kind, whatever its image's."""
  return ZarrStack(path) if stacks.is_zarr(path) else TiffBoxes(path)


def read_image(path: str) -> tuple[np.ndarray, tuple[str, ...], tuple[float, ...]]:
  """(data as stored, axes, voxel size in nm per axis) of a small OME-Zarr image."""
  stack = ZarrStack(path)
  data = stack.read_raw()
  return (data if stack.axes == SPATIAL_AXES[3] else data[0]), stack.axes, stack.voxel_size_nm


@contextlib.contextmanager
def atomic_folder(path: str) -> Iterator[str]:
  """A temporary folder beside `path` that replaces `path` when the block succeeds, removed when it fails."""
  outputs.remove_stale_temps(os.path.dirname(os.path.abspath(path)))  # a killed run's folders
  tmp = f"{path}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    yield tmp
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _scale(voxel_size_nm: Sequence[float], axes: Sequence[str]) -> dict[str, float]:
  if len(voxel_size_nm) != len(axes) or tuple(axes) not in SPATIAL_AXES.values():
    raise InputError(f"axes {tuple(axes)} must be (z, y, x) or (y, x), with one voxel size each ({voxel_size_nm})")
  return {a: float(v) for a, v in zip(axes, voxel_size_nm)}


def write_image(path: str, array: np.ndarray, voxel_size_nm: Sequence[float], chunks: Sequence[int] | None = None) -> None:
  """Writes a (z, y, x) or (y, x) array as a one-level OME-Zarr image, atomically."""
  axes = SPATIAL_AXES[array.ndim]
  with atomic_folder(path) as tmp:
    group = zarr.open_group(tmp, mode="w", zarr_format=FORMAT.zarr_format)
    writer.write_image(array, group, scale_factors=(), fmt=FORMAT, axes=list(axes),
                       axes_units=dict.fromkeys(axes, "nanometer"), scale=_scale(voxel_size_nm, axes),
                       storage_options={"chunks": tuple(chunks or array.shape)})


def create_image(group: zarr.Group, shape: Sequence[int], dtype: Any, chunks: Sequence[int],
                 voxel_size_nm: Sequence[float], axes: Sequence[str], fill_value: Any = 0,
                 channels: int = 0) -> zarr.Array:
  """An empty one-level image (dataset `DATASET`) in `group`, its multiscales metadata written; filled by the caller.

  With `channels` > 0 the array is (c, *shape), a channel axis first (NGFF's order), one chunk over the channels:
  e.g. a K-class model's probabilities, channel k = class k.
  """
  scale = _scale(voxel_size_nm, axes)
  scales, metadata = [scale[a] for a in axes], _axes_metadata(axes)
  if channels:
    shape, chunks = (channels, *shape), (channels, *chunks)
    scales, metadata = [1.0, *scales], [{"name": "c", "type": "channel"}, *metadata]
  array = group.create_array(DATASET, shape=tuple(shape), dtype=dtype, chunks=tuple(chunks), fill_value=fill_value)
  writer.write_multiscales_metadata(group, [{"path": DATASET, "coordinateTransformations": [
      {"type": "scale", "scale": scales}]}], fmt=FORMAT, axes=metadata)
  return array


def create_labels(image: zarr.Group, name: str, shape: Sequence[int], dtype: Any, chunks: Sequence[int],
                  voxel_size_nm: Sequence[float], axes: Sequence[str]) -> zarr.Array:
  """An empty NGFF label image `labels/<name>` of `image` (background 0), its metadata written."""
  labels = image.require_group("labels")
  array = create_image(labels.create_group(name), shape, dtype, chunks, voxel_size_nm, axes)
  writer.write_label_metadata(labels, name, fmt=FORMAT, source={"image": "../../"})
  return array


def open_array(path: str, mode: str = "r+") -> zarr.Array:
  """The full-resolution array of an image written here, for filling or reading."""
  return zarr.open_array(os.path.join(path, DATASET), mode=mode)
