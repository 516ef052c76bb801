"""Inputs at another voxel size than the model's training data: resampled onto the model's grid and back.

A network learns mitochondria at one magnification: at twice the pixel size they look half as large and
its filters no longer fit them. So the input's voxel size (OME-Zarr scale, TIFF resolution or ImageJ
spacing, or --voxel_size_nm) is compared with the one recorded at training (`compare`); when they differ
by more than `TOLERANCE`, the input is resampled to the model's voxel size (y, x; z too for 3D models),
predicted there, and the probabilities resampled back onto the input grid (linearly, then thresholded),
so every output matches the input voxel for voxel (unet_jax/inference/predictor.py).

Resampling is pointwise: voxel i of an axis of m target voxels lies at source coordinate
(i + 1/2) n / m - 1/2 (n source voxels, centres aligned, the ends meeting); values are interpolated by cubic
splines (`scipy.ndimage.affine_transform`, order 3 with its prefilter; labels take the source voxel holding the
centre, order 0), after a Gaussian of sigma (n / m - 1) / 2 source voxels along axes that shrink (anti-aliasing,
as skimage.transform.rescale does). Cubic, not linear: a model trained without zoom augmentation loses much more
Dice to linear interpolation's blur (VNC, one slice resampled x2 and back: Dice 0.84 native, 0.57 linear, 0.83
cubic). A box of the target depends only on the source voxels `source_box` names, so blocks resampled apart
equal the whole volume resampled at once: chunked segmentation shows no seams. The spline prefilter is global
but decays as 0.268^d over d voxels, so `SPLINE_MARGIN` extra voxels per side (where the source has them) make
blocks equal the whole within 1e-5 of the value range.
"""

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

from unet_jax.errors import InputError

TOLERANCE = 0.05  # relative difference taken as equal: within training's default zoom augmentation (0.8-1.2), where
# interpolation blur costs more than the rescale gains
MAX_FACTOR = 16.0  # a larger rescale means metadata that is not the pixel size (e.g. a 72 dpi TIFF)
TRUNCATE = 4.0  # Gaussian radius in sigmas (scipy's default)
SPLINE_MARGIN = 16  # extra source voxels per side for the spline prefilter of orders > 1: 0.268^16 < 1e-9
PROBABILITY_ORDER = 1  # probabilities go back linearly: cubic splines overshoot [0, 1]; a linear mix of K-class
# probabilities still sums to 1
AXES = ("z", "y", "x")

Box = tuple[slice, ...]
Read = Callable[[Box], np.ndarray]  # a box of the source -> its voxels


def check_voxel_size(values: Sequence[Any], name: str) -> tuple[float, ...]:
  """`values` as a voxel size in nm, (y, x) or (z, y, x); InputError naming `name` otherwise."""
  values = tuple(values)
  given = ",".join(str(v) for v in values)
  if len(values) not in (2, 3):
    raise InputError(f"{name} {given} has {len(values)} value(s); give 2 (y, x) or 3 (z, y, x) sizes in nm")
  try:
    sizes = tuple(float(v) for v in values)
  except (TypeError, ValueError):
    raise InputError(f"{name} {given} holds a value that is not a number; give sizes in nm, e.g. 4.6,4.6") from None
  if not all(math.isfinite(v) and v > 0 for v in sizes):
    raise InputError(f"{name} {given}: every voxel size must be a positive number of nm")
  return sizes


def input_voxel_size(given: Sequence[Any] | None, found: Sequence[float] | None,
                     source: str) -> tuple[tuple[float, ...] | None, str]:
  """(voxel size, where from) of an input: `given` on the command line overrides the file's `found`."""
  return (check_voxel_size(given, "--voxel_size_nm"), "--voxel_size_nm") if given else (found, source)


def _sizes(values: Sequence[float]) -> str:
  """'9.2 nm' when all equal, else '(50, 4.6, 4.6) nm'."""
  return f"{values[0]:g} nm" if len(set(values)) == 1 else f"({', '.join(f'{v:g}' for v in values)}) nm"


@dataclasses.dataclass(frozen=True)
class Resampling:
  """How an input's voxel grid maps onto the model's: per axis (z, y, x), input voxel size / model voxel size
  (> 1: the input is coarser and upsampled; 1: left alone), and what was decided, as one line and as JSON."""
  factors: tuple[float, float, float]
  note: str
  record: dict[str, Any]

  @property
  def identity(self) -> bool:
    return all(f == 1.0 for f in self.factors)

  def model_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
    """The shape of an input of `shape` (Z, Y, X) on the model's grid."""
    return tuple(n if f == 1.0 else max(1, round(n * f)) for n, f in zip(shape, self.factors))


def compare(model_nm: Sequence[float] | None, input_nm: Sequence[float] | None, ndim: int,
            source: str = "") -> Resampling:
  """The resampling of an input of voxel size `input_nm` ((y, x) or (z, y, x); None: unknown, read from
  `source`) for a `ndim`-D model trained at `model_nm` (z, y, x; None: not recorded). z is resampled for
  3D models only; sizes within `TOLERANCE` count as equal."""
  record = {"input_voxel_size_nm": list(input_nm) if input_nm else None, "source": source or None,
            "model_voxel_size_nm": list(model_nm) if model_nm else None}
  same = lambda note: Resampling((1.0, 1.0, 1.0), note, {**record, "factors": [1.0] * 3, "note": note})
  if model_nm is None:
    return same("the model has no recorded voxel size (trained before it was recorded): the input is taken to be "
                "at its voxel size, not resampled")
  model_nm = check_voxel_size(model_nm, "the model's voxel size")
  if len(model_nm) != 3:
    raise InputError(f"the model's voxel size {model_nm} must be (z, y, x)")
  if input_nm is None:
    return same(f"the input's voxel size is unknown{f' ({source})' if source else ''}: the model's "
                f"{_sizes(model_nm[1:])} is assumed; give --voxel_size_nm if it differs")
  input_nm = check_voxel_size(input_nm, f"input voxel size ({source})" if source else "input voxel size")
  axes = [a for a in AXES[3 - len(input_nm):] if a != "z" or ndim == 3]
  given = dict(zip(AXES[3 - len(input_nm):], input_nm))
  model = dict(zip(AXES, model_nm))
  factors = {a: given[a] / model[a] for a in axes}
  for a, f in factors.items():
    if not 1.0 / MAX_FACTOR <= f <= MAX_FACTOR:
      raise InputError(f"input voxel size {given[a]:g} nm along {a}{f' ({source})' if source else ''} is {f:.3g} "
                       f"times the model's {model[a]:g} nm, beyond the x{MAX_FACTOR:g} this rescales: if the metadata "
                       "is not the pixel size, give --voxel_size_nm")
  factors = {a: 1.0 if abs(f - 1.0) <= TOLERANCE else f for a, f in factors.items()}
  resampled = [a for a in axes if factors[a] != 1.0]
  sizes = f"input {_sizes([given[a] for a in axes])}, model {_sizes([model[a] for a in axes])}"
  if not resampled:
    note = f"{sizes}: equal within {TOLERANCE:.0%}, not resampled"
  else:
    values = sorted({factors[a] for a in resampled})
    scale = f"x{values[0]:.2f}" if len(values) == 1 else f"x({', '.join(f'{factors[a]:.2f}' for a in resampled)})"
    note = f"{sizes}: resampled {scale} in {','.join(resampled)}"
  if ndim == 3 and "z" not in given:
    note += f"; z: the model's {model['z']:g} nm assumed"
  full = tuple(factors.get(a, 1.0) for a in AXES)
  return Resampling(full, note, {**record, "factors": list(full), "note": note})


def _axis_source(lo: int, hi: int, n: int, m: int, order: int) -> tuple[int, int, float]:
  """(first, end) of the source voxels (of n) that target voxels lo..hi-1 (of m) read, and the Gaussian sigma."""
  scale = n / m
  sigma = (scale - 1.0) / 2.0 if order and scale > 1.0 else 0.0
  radius = int(TRUNCATE * sigma + 0.5) + (order // 2 + SPLINE_MARGIN if order > 1 else 0)  # Gaussian and spline
  first = math.floor((lo + 0.5) * scale - 0.5) - 1 - radius  # one voxel spare each side for float rounding
  last = math.floor((hi - 0.5) * scale - 0.5) + 2 + radius
  return max(0, first), min(n, last + 1), sigma


def source_box(box: Box, source_shape: Sequence[int], target_shape: Sequence[int], order: int = 3) -> Box:
  """The box of the source voxels that the target voxels in `box` depend on."""
  return tuple(slice(*_axis_source(b.start, b.stop, n, m, order)[:2])
               for b, n, m in zip(box, source_shape, target_shape))


def resample_box(read: Read, source_shape: Sequence[int], target_shape: Sequence[int], box: Box,
                 order: int = 3) -> np.ndarray:
  """Voxels `box` of the source (of `source_shape`, read through `read`) resampled to `target_shape`:
  order 3 cubic spline or 1 linear (anti-aliased where it shrinks), order 0 nearest (labels)."""
  if order not in (0, 1, 3):
    raise InputError(f"resampling order {order} is not one of 0 (nearest), 1 (linear), 3 (cubic)")
  axes = [_axis_source(b.start, b.stop, n, m, order) for b, n, m in zip(box, source_shape, target_shape)]
  region = np.asarray(read(tuple(slice(first, end) for first, end, _ in axes)))
  if order == 0:  # the source voxel holding each target centre, in integers: no rounding ties between blocks
    index = [np.minimum((2 * np.arange(b.start, b.stop) + 1) * n // (2 * m), n - 1) - first
             for b, n, m, (first, _, _) in zip(box, source_shape, target_shape, axes)]
    return region[np.ix_(*index)]
  region = region.astype(np.float32, copy=False)
  sigmas = [sigma for _, _, sigma in axes]
  if any(sigmas):
    region = ndimage.gaussian_filter(region, sigmas, mode="nearest", truncate=TRUNCATE)
  scales = np.array([n / m for n, m in zip(source_shape, target_shape)])
  offset = np.array([(b.start + 0.5) * s - 0.5 - first for b, s, (first, _, _) in zip(box, scales, axes)])
  shape = tuple(b.stop - b.start for b in box)
  if np.all(scales == 1.0):
    return region[tuple(slice(int(o), int(o) + d) for o, d in zip(offset, shape))]
  return ndimage.affine_transform(region, scales, offset, shape, order=order, mode="nearest", prefilter=order > 1)


def resample(array: np.ndarray, target_shape: Sequence[int], order: int = 3) -> np.ndarray:
  """A whole array resampled to `target_shape` (see `resample_box`)."""
  return resample_box(lambda box: array[box], array.shape, target_shape,
                      tuple(slice(0, m) for m in target_shape), order)
