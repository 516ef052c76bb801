"""A seeded generator of EM-like images with mitochondria masks, in 2D and 3D.

Textured cytoplasm, dark cell membranes (Voronoi boundaries), dark vesicles that are not labelled,
and mitochondria of varied size, elongation and orientation: darker than cytoplasm, a dark double
membrane and striped inner cristae. Then blur and Gaussian noise. Everything derives from one seed.
"""

from typing import Any

import numpy as np
from scipy import ndimage



def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
  """Gaussian-filtered white noise scaled to unit standard deviation."""
  noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
  return noise / (noise.std() + 1e-8)


def _membranes(rng: np.random.Generator, shape: tuple[int, ...], cell_size: float) -> np.ndarray:
  """Boolean map of Voronoi cell boundaries with cells about `cell_size` pixels across."""
  n_cells = max(2, int(np.prod(shape) / cell_size ** len(shape)))
  seeds = np.ones(shape, bool)
  seeds[tuple(rng.integers(0, s, n_cells) for s in shape)] = False
  _, nearest = ndimage.distance_transform_edt(seeds, return_indices=True)
  labels = np.ravel_multi_index(tuple(nearest), shape)
  edge = np.zeros(shape, bool)
  for axis in range(len(shape)):
    edge |= np.diff(labels, axis=axis, append=np.take(labels, [-1], axis=axis)) != 0
  return ndimage.binary_dilation(edge)


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
  """A uniformly random rotation matrix (QR of a Gaussian matrix)."""
  q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
  return q * np.sign(np.diag(r))


def _ellipsoid(coords: np.ndarray, center: np.ndarray, axes: np.ndarray,
               rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Normalised radius map of an ellipsoid and the coordinates along its axes."""
  local = np.tensordot(rotation.T, coords - center.reshape((-1,) + (1,) * (coords.ndim - 1)), axes=1)
  radius = np.sqrt(sum((local[i] / axes[i]) ** 2 for i in range(len(axes))))
  return radius, local


def generate(rng: np.random.Generator, shape: tuple[int, ...], n_mito: int | None = None,
             noise: float = 0.06, mito_spacing: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
  """One synthetic EM image u8[*shape] and its mitochondria mask u8[*shape] in {0, 255}.

  Without `n_mito`, about one mitochondrion per `mito_spacing`**ndim pixels (voxels).
  """
  ndim = len(shape)
  area = float(np.prod(shape))
  image = 0.62 + 0.05 * _smooth_noise(rng, shape, 1.0) + 0.04 * _smooth_noise(rng, shape, 6.0)
  image -= 0.28 * _membranes(rng, shape, cell_size=110.0)
  coords = np.indices(shape, dtype=np.float32)
  # Vesicles: small dark blobs that a model must learn not to call mitochondria.
  for _ in range(rng.poisson(area / (40.0 ** ndim))):
    center = rng.uniform(0, shape)
    radius, _ = _ellipsoid(coords, center, np.full(ndim, rng.uniform(3, 6)), np.eye(ndim))
    image -= 0.18 * (radius < 1.0) + 0.1 * ((radius >= 1.0) & (radius < 1.3))
  mask = np.zeros(shape, bool)
  n_mito = rng.poisson(area / (mito_spacing ** ndim)) + 1 if n_mito is None else n_mito
  for _ in range(n_mito):
    length = rng.uniform(10, 38)
    axes = np.concatenate([[length], length * rng.uniform(0.35, 0.85, ndim - 1)])
    center = rng.uniform(0, shape)
    rotation = _random_rotation(rng, ndim)
    radius, local = _ellipsoid(coords, center, axes, rotation)
    radius = radius + 0.12 * _smooth_noise(rng, shape, 4.0) if rng.uniform() < 0.5 else radius
    inside = radius < 1.0
    if not inside.any():
      continue
    cristae = np.sin(2 * np.pi * local[0] / rng.uniform(4.0, 7.0) + rng.uniform(0, 2 * np.pi))
    image = np.where(inside, 0.40 + 0.07 * cristae, image)
    image -= 0.2 * ((radius >= 0.85) & (radius < 1.1))  # dark double membrane
    mask |= inside
  image = ndimage.gaussian_filter(image, 0.8) + noise * rng.standard_normal(shape)
  image = np.clip(image, 0.0, 1.0)
  return (image * 255).round().astype(np.uint8), mask.astype(np.uint8) * 255


def make_stack(seed: int, n_slices: int, shape: tuple[int, int], ndim: int = 2,
               mito_spacing: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
  """A stack u8[Z, H, W]: independent 2D slices (ndim=2) or one coherent volume (ndim=3)."""
  rng = np.random.default_rng(seed)
  if ndim == 3:
    return generate(rng, (n_slices, *shape), mito_spacing=mito_spacing)
  pairs = [generate(rng, tuple(shape)) for _ in range(n_slices)]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def make_dataset(config: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{'train', 'test'}: (image u8[Z, H, W], mask u8[Z, H, W]) stacks from `config.data.synthetic` (seed, shape, slices, ndim, mito_spacing in 3D)."""
  shape = tuple(config.shape)
  spacing = config.get("mito_spacing", 90.0)
  train = make_stack(config.seed, config.train_slices, shape, config.ndim, spacing)
  test = make_stack(config.seed + 1, config.test_slices, shape, config.ndim, spacing)
  return {"train": train, "test": test}
