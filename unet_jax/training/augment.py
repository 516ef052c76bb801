"""Per-example augmentation on device: pure functions of a PRNG key, vmapped over the batch.

`augment_batch` runs inside the jitted train step, one key per example, so nothing leaves the
device. For one example (image f32[*spatial, C], mask f32[*spatial, 1], spatial = (H, W) or (D, H, W);
C > 1 for 2.5D, the neighbouring slices, transformed alike):

1. Geometry, identical for image and mask: one of the 8 dihedral flips/rotations of the (H, W)
   plane; then ONE linear resampling (`jax.scipy.ndimage.map_coordinates`, order 1, boundaries
   reflected about the edge pixels, so no corner is constant-filled or clipped) through a rotation,
   zoom and shear of the (H, W) plane plus an elastic displacement on every axis (Gaussian values
   on a coarse grid, upsampled cubically; `elastic_z=False` keeps 3D sections unmixed). The mask is
   resampled with the image's coordinates and thresholded (>= 0.5 is foreground), so it stays
   binary and aligned with the image. An integer mask (a multi-class label map, i32) is sampled at
   the same coordinates by nearest neighbour instead, so every pixel keeps one of the original
   class ids (interpolating ids would invent classes between them); flips move it exactly.
2. Photometry, image only: gamma, contrast, brightness, Gaussian blur, Gaussian noise; then the
   image is clipped to [0, 1] (the input range). With `elastic_z=False` (sections imaged apart,
   e.g. 50 nm ssTEM) the blur stays in the (H, W) plane too, so no section borrows its neighbours.
3. Low resolution, image only (nnU-Net's SimulateLowResolutionTransform): the (H, W) plane shrunk by a
   factor uniform in `lowres_range` (anti-aliased, linear) and enlarged back to the patch (cubic, as
   unet_jax/inference/magnification.py enlarges a coarser input): the blur of an input imaged at a coarser
   pixel size and resampled onto the model's grid.
4. 3D patches only: EM section artefacts (misalignment, per-section intensity, missing section),
   unet_jax/training/sections.py; a blanked section gets loss weight 0 (`augment_batch_with_weights`).

Every transform fires with its own `*_prob` (see the `augment` block of configs/unet2d.py). A draw
that does not fire returns its input bit for bit; a transform with probability 0 (or `flips=False`)
is not even traced, so it costs nothing. Patches are not sampled larger before warping (the
sampler offers no margin), so zooming out and rotating fill the corners with the patch's own
content, mirrored.

Presets (`PRESETS`, chosen with `--config=configs/unet2d.py:VARIANT,aug=NAME`): 'full' (the
config's defaults), 'flips' (dihedral only: every *_prob set to 0), 'none' (also flips=False), 'zoom'
(flips and a zoom log-uniform in 0.5-2 on every patch: a model for inputs whose pixel size is not known
exactly, unet_jax/inference/magnification.py), 'scale' (flips, that zoom on half the patches, low
resolution up to x2 on half and blur on a fifth) and 'lowres' ('scale' without the zoom: a model for
inputs whose voxel size is recorded, resampled onto its grid, whose interpolation blur a flips-only
model does not tolerate; docs/results/magnification.md).
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

from unet_jax.errors import InputError
from unet_jax.training import sections

SECTION_PROB_FIELDS = ("misalign_prob", "section_intensity_prob", "missing_section_prob")  # 3D: unet_jax/training/sections.py
PROB_FIELDS = ("rotate_prob", "scale_prob", "shear_prob", "elastic_prob", "brightness_prob",
               "contrast_prob", "gamma_prob", "noise_prob", "blur_prob", "lowres_prob") + SECTION_PROB_FIELDS
PRESETS = {"full": {}, "flips": dict.fromkeys(PROB_FIELDS, 0.0),
           "none": {**dict.fromkeys(PROB_FIELDS, 0.0), "flips": False},
           "zoom": {**dict.fromkeys(PROB_FIELDS, 0.0), "scale_prob": 1.0, "scale_range": (0.5, 2.0)},
           "scale": {**dict.fromkeys(PROB_FIELDS, 0.0), "scale_prob": 0.5, "scale_range": (0.5, 2.0),
                     "lowres_prob": 0.5, "lowres_range": (1.0, 2.0), "blur_prob": 0.2},
           "lowres": {**dict.fromkeys(PROB_FIELDS, 0.0), "lowres_prob": 0.5, "lowres_range": (1.0, 2.0),
                      "blur_prob": 0.2}}


def apply_preset(config: Any, name: str) -> None:
  """Sets the fields of augmentation preset `name` (a key of PRESETS) in `config.augment`."""
  if name not in PRESETS:
    raise InputError(f"unknown augmentation preset {name!r}; use one of {tuple(PRESETS)}")
  config.augment.update(PRESETS[name])


def dihedral(x: jax.Array, index: jax.Array, spatial_axes: tuple[int, int]) -> jax.Array:
  """The `index`-th (0..7) of the 8 flips/90-degree rotations of `x` in the plane `spatial_axes`."""
  a, b = spatial_axes
  square = x.shape[a] == x.shape[b]
  def transform(i: int) -> Any:
    def f(y: jax.Array) -> jax.Array:
      if square and i % 4:
        y = jnp.rot90(y, i % 4, axes=(a, b))
      elif not square and i % 4 in (1, 3):
        y = jnp.flip(y, a)
      return jnp.flip(y, b) if i >= 4 else y
    return f
  return jax.lax.switch(index, [transform(i) for i in range(8)], x)


def _draw(uniforms: jax.Array, index: int, prob: float, low: float, high: float,
          off: float) -> tuple[jax.Array, jax.Array]:
  """(fired, value) from column `index` of `uniforms` f32[2, n].

  fired has probability `prob`; value is uniform in [low, high] if fired, else `off`. One block
  of uniforms per example, not a PRNG call per draw, keeps the compile time small.
  """
  fired = uniforms[0, index] < prob
  return fired, jnp.where(fired, low + (high - low) * uniforms[1, index], off)


def elastic_displacement(key: jax.Array, shape: tuple[int, ...], alpha: float, spacing: float) -> jax.Array:
  """A smooth random displacement f32[N, *shape] in pixels: N(0, alpha) on a grid `spacing` apart, cubic-upsampled."""
  coarse = tuple(max(2, math.ceil(s / spacing) + 1) for s in shape)
  grid = alpha * jax.random.normal(key, (len(shape), *coarse), jnp.float32)
  return jax.image.resize(grid, (len(shape), *shape), "cubic")


def source_coordinates(shape: tuple[int, ...], angle: jax.Array, scale: jax.Array, shear: jax.Array,
                       displacement: jax.Array | float = 0.0) -> jax.Array:
  """Where each output pixel samples the input: f32[N, *shape].

  Rotation by `angle`, zoom by `scale` (> 1 magnifies) and shear by `shear` (radians) act in the
  plane of the last two axes about the patch centre; `displacement` f32[N, *shape] is added on top.
  Written elementwise (no matmul) so identity parameters give exactly integer coordinates.
  """
  grid = [jnp.arange(s, dtype=jnp.float32).reshape([-1 if i == a else 1 for i in range(len(shape))])
          for a, s in enumerate(shape)]
  grid = [jnp.broadcast_to(g, shape) for g in grid]
  ch, cw = (shape[-2] - 1) / 2.0, (shape[-1] - 1) / 2.0
  h, w = grid[-2] - ch, grid[-1] - cw
  cos, sin, tan = jnp.cos(angle) / scale, jnp.sin(angle) / scale, jnp.tan(shear)
  # Output -> source map: rotation(angle) @ shear(tan) / scale.
  grid[-2] = ch + cos * h + (cos * tan - sin) * w
  grid[-1] = cw + sin * h + (sin * tan + cos) * w
  return jnp.stack(grid) + displacement


def mirror(coordinates: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Folds coordinates f32[N, *out] into [0, size - 1] per axis, reflecting about the edge pixels."""
  folded = [jnp.zeros_like(c) if size == 1 else (size - 1) - jnp.abs(jnp.mod(c, 2 * (size - 1)) - (size - 1))
            for c, size in zip(coordinates, shape)]
  return jnp.stack(folded)


def warp(channels: jax.Array, coordinates: jax.Array) -> jax.Array:
  """Samples every channel of f32[*spatial, C] at `coordinates` f32[N, *spatial], linearly.

  Points outside are reflected about the edge pixels (scipy's 'mirror' mode); the coordinates are
  folded first so that map_coordinates only clips ('nearest'), which is about 2.5x faster on CPU
  than its own 'mirror' index arithmetic inside every gather.
  """
  folded = list(mirror(coordinates, channels.shape[:-1]))
  sample = lambda x: jax.scipy.ndimage.map_coordinates(x, folded, order=1, mode="nearest")
  return jax.vmap(sample, in_axes=-1, out_axes=-1)(channels)


def warp_nearest(labels: jax.Array, coordinates: jax.Array) -> jax.Array:
  """Samples an integer label map [*spatial, 1] at `coordinates` f32[N, *spatial] by nearest neighbour, mirrored
  at the borders like `warp`; the result holds only values of `labels`, in its dtype."""
  folded = list(mirror(coordinates, labels.shape[:-1]))
  sampled = jax.scipy.ndimage.map_coordinates(labels[..., 0].astype(jnp.float32), folded, order=0, mode="nearest")
  return jnp.round(sampled).astype(labels.dtype)[..., None]


def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int, axes: tuple[int, ...] | None = None) -> jax.Array:
  """Separable Gaussian blur of f32[*spatial, C] over `axes` (None: every spatial axis); reflecting borders."""
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 1e-3)) ** 2)
  weights = weights / jnp.sum(weights)
  for axis in range(image.ndim - 1) if axes is None else axes:
    size = image.shape[axis]
    pad = [(radius, radius) if a == axis else (0, 0) for a in range(image.ndim)]
    padded = jnp.pad(image, pad, mode="symmetric")
    image = sum(weights[k] * jax.lax.slice_in_dim(padded, k, k + size, axis=axis) for k in range(2 * radius + 1))
  return image


def augment_geometry(key: jax.Array, image: jax.Array, mask: jax.Array,
                     config: Any) -> tuple[jax.Array, jax.Array]:
  """Dihedral flip, then one warp (rotation, zoom, shear, elastic) of image and mask alike."""
  spatial = image.shape[:-1]
  uniform_key, elastic_key = jax.random.split(key)
  u = jax.random.uniform(uniform_key, (2, 5))  # columns: flip, rotate, scale, shear, elastic
  if config.flips:
    axes = (len(spatial) - 2, len(spatial) - 1)
    index = jnp.minimum(jnp.floor(8 * u[1, 0]).astype(jnp.int32), 7)
    image, mask = dihedral(image, index, axes), dihedral(mask, index, axes)
  if not any(config[p] for p in ("rotate_prob", "scale_prob", "shear_prob", "elastic_prob")):
    return image, mask
  degrees, shear_degrees = config.rotate_degrees, config.shear_degrees
  rotated, angle = _draw(u, 1, config.rotate_prob, math.radians(-degrees), math.radians(degrees), 0.0)
  scaled, log_scale = _draw(u, 2, config.scale_prob, *(math.log(s) for s in config.scale_range), 0.0)
  sheared, shear = _draw(u, 3, config.shear_prob, math.radians(-shear_degrees), math.radians(shear_degrees), 0.0)
  warped = rotated | scaled | sheared
  displacement = 0.0
  if config.elastic_prob:
    elastic = u[0, 4] < config.elastic_prob
    field = elastic_displacement(elastic_key, spatial, config.elastic_alpha, config.elastic_sigma)
    if len(spatial) == 3 and not config.get("elastic_z", True):  # anisotropic: keep sections unmixed
      field = field.at[0].set(0.0)
    displacement = jnp.where(elastic, field, 0.0)
    warped = warped | elastic
  coordinates = source_coordinates(spatial, angle, jnp.exp(log_scale), shear, displacement)
  if jnp.issubdtype(mask.dtype, jnp.integer):  # a label map: nearest class id, never an interpolated one
    new_image, new_mask = warp(image, coordinates), warp_nearest(mask, coordinates)
    return jnp.where(warped, new_image, image), jnp.where(warped, new_mask, mask)
  both = warp(jnp.concatenate([image, mask], axis=-1), coordinates)
  channels = image.shape[-1]
  new_image, new_mask = both[..., :channels], (both[..., channels:] >= 0.5).astype(mask.dtype)
  # An example that drew no warp keeps its input bit for bit (interpolation could round).
  return jnp.where(warped, new_image, image), jnp.where(warped, new_mask, mask)


def augment_intensity(key: jax.Array, image: jax.Array, config: Any) -> jax.Array:
  """Gamma, contrast, brightness, blur and noise of an image in [0, 1]; the result is clipped to [0, 1]."""
  if not any(config[p] for p in ("gamma_prob", "contrast_prob", "brightness_prob", "blur_prob", "noise_prob")):
    return image
  uniform_key, noise_key = jax.random.split(key)
  u = jax.random.uniform(uniform_key, (2, 5))  # columns: gamma, contrast, brightness, blur, noise
  if config.gamma_prob:
    fired, log_gamma = _draw(u, 0, config.gamma_prob, *(math.log(g) for g in config.gamma), 0.0)
    image = jnp.where(fired, image ** jnp.exp(log_gamma), image)
  if config.contrast_prob:
    fired, factor = _draw(u, 1, config.contrast_prob, *config.contrast, 1.0)
    mean = jnp.mean(image)
    image = jnp.where(fired, (image - mean) * factor + mean, image)
  if config.brightness_prob:
    fired, offset = _draw(u, 2, config.brightness_prob, -config.brightness, config.brightness, 0.0)
    image = jnp.where(fired, image + offset, image)
  if config.blur_prob:
    fired, sigma = _draw(u, 3, config.blur_prob, 0.0, config.blur_sigma, 0.0)
    in_plane = image.ndim == 4 and not config.get("elastic_z", True)  # sections kept apart: no blur across z
    axes = (1, 2) if in_plane else None
    image = jnp.where(fired, gaussian_blur(image, sigma, math.ceil(3 * config.blur_sigma), axes), image)
  if config.noise_prob:
    fired, std = _draw(u, 4, config.noise_prob, 0.0, config.noise_std, 0.0)
    image = jnp.where(fired, image + std * jax.random.normal(noise_key, image.shape, image.dtype), image)
  return jnp.clip(image, 0.0, 1.0)


def low_resolution(image: jax.Array, factor: jax.Array) -> jax.Array:
  """f32[*spatial, C] with its (H, W) plane shrunk by `factor` >= 1 (anti-aliased, linear) and enlarged back
  (cubic). Shapes stay static: the shrunk plane fills the first H / factor rows and columns, the rest repeat
  its last valid row and column so the enlarging sees the patch's edge, not zeros."""
  axes = (image.ndim - 3, image.ndim - 2)
  scale = jnp.stack([1.0 / factor, 1.0 / factor]).astype(jnp.float32)
  zero = jnp.zeros(2, jnp.float32)
  small = jax.image.scale_and_translate(image, image.shape, axes, scale, zero, "linear", antialias=True)
  for axis in axes:
    size = image.shape[axis]
    valid = jnp.floor(size / factor - 0.5).astype(jnp.int32) + 1  # shrunk pixels whose centre lies in the patch
    small = jnp.take(small, jnp.minimum(jnp.arange(size), valid - 1), axis=axis)
  return jax.image.scale_and_translate(small, image.shape, axes, 1.0 / scale, zero, "cubic", antialias=False)


def augment_low_resolution(key: jax.Array, image: jax.Array, config: Any) -> jax.Array:
  """`low_resolution` with probability `lowres_prob`, factor uniform in `lowres_range`; clipped to [0, 1]."""
  fired, factor = _draw(jax.random.uniform(key, (2, 1)), 0, config.lowres_prob, *config.lowres_range, 1.0)
  return jnp.where(fired, jnp.clip(low_resolution(image, factor), 0.0, 1.0), image)


def augment_example(key: jax.Array, image: jax.Array, mask: jax.Array,
                    config: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Augments one example image f32[*spatial, C] / mask f32[*spatial, 1]: geometry on both, intensity and
  low resolution on the image, then for 3D and 2.5D patches (2D with C > 1: the C channels are sections) the EM section
  artefacts (unet_jax/training/sections.py). Returns (image, mask, loss weight f32[*spatial, 1]): 0 on a
  blanked section, 1 elsewhere."""
  geometry_key, intensity_key = jax.random.split(key)
  image, mask = augment_geometry(geometry_key, image, mask, config)
  image = augment_intensity(intensity_key, image, config)
  if config.get("lowres_prob", 0.0):  # a key of its own: the other draws, and so older runs, stay as they were
    image = augment_low_resolution(jax.random.fold_in(key, 3), image, config)
  weight = jnp.ones(mask.shape, jnp.float32)
  slab = image.ndim == 3 and image.shape[-1] > 1  # 2.5D: the channels are neighbouring sections
  if (image.ndim == 4 or slab) and any(config.get(p, 0.0) for p in SECTION_PROB_FIELDS):
    artefacts = sections.augment_slab_sections if slab else sections.augment_sections
    image, mask, weight = artefacts(jax.random.fold_in(key, 2), image, mask, config)
  return image, mask, weight


def augment_batch_with_weights(keys: jax.Array, images: jax.Array, masks: jax.Array,
                               config: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`augment_example` vmapped with one key per example; images f32[B, *spatial, C], masks and the returned
  loss weights f32[B, *spatial, 1]."""
  if images.shape[:-1] != masks.shape[:-1] or images.ndim not in (4, 5) or masks.shape[-1] != 1:
    raise InputError(f"augment expects images f32[B, *spatial, C] and masks f32[B, *spatial, 1] of one shape, "
                     f"spatial = (H, W) or (D, H, W), got {images.shape} and {masks.shape}")
  return jax.vmap(lambda k, x, m: augment_example(k, x, m, config))(keys, images, masks)


def augment_batch(keys: jax.Array, images: jax.Array, masks: jax.Array,
                  config: Any) -> tuple[jax.Array, jax.Array]:
  """(images, masks) of `augment_batch_with_weights`, for callers that need no loss weights."""
  images, masks, _ = augment_batch_with_weights(keys, images, masks, config)
  return images, masks
