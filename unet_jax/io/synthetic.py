"""A seeded generator of EM-like images with mitochondria masks, in 2D and 3D.

Textured cytoplasm, dark cell membranes (Voronoi boundaries), dark vesicles that are not labelled,
and mitochondria: darker than cytoplasm, a dark double membrane and striped inner cristae. Then blur
and Gaussian noise. Everything derives from one seed.

Two kinds of mitochondria (`objects`): 'ellipsoids' of varied size, elongation and orientation, whose
every section is one convex profile, so a 2D model loses nothing by seeing one section; and 'tubes',
curved and branching tubes running in random 3D directions, so they cross sections at every angle
and one mitochondrion can cut a section into several profiles that only the volume joins: the
isotropic data on which 3D context should pay (configs/unet3d.py:iso).
"""

from typing import Any

import numpy as np
from scipy import ndimage, spatial

from unet_jax.errors import InputError

OBJECTS = ("ellipsoids", "tubes")
GAP = 3.0  # voxels of cytoplasm at least between two tubes


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
             noise: float = 0.06, mito_spacing: float = 90.0,
             objects: str = "ellipsoids") -> tuple[np.ndarray, np.ndarray]:
  """One synthetic EM image u8[*shape] and its mitochondria mask u8[*shape] in {0, 255}.

  Without `n_mito`, about one mitochondrion per `mito_spacing`**ndim pixels (voxels); `objects` is
  one of OBJECTS (see the module docstring).
  """
  if objects not in OBJECTS:
    raise InputError(f"data.synthetic.objects={objects!r} is invalid: it must be one of {OBJECTS}")
  ndim = len(shape)
  area = float(np.prod(shape))
  image = 0.62 + 0.05 * _smooth_noise(rng, shape, 1.0) + 0.04 * _smooth_noise(rng, shape, 6.0)
  image -= 0.28 * _membranes(rng, shape, cell_size=110.0)
  coords = np.indices(shape, dtype=np.float32)
  # Vesicles: small dark blobs that a model must learn not to call mitochondria.
  for _ in range(rng.poisson(area / (40.0 ** ndim))):
    center, size = rng.uniform(0, shape), rng.uniform(3, 6)
    box = (slice(None),) + tuple(slice(max(0, int(c - 1.3 * size) - 1), int(c + 1.3 * size) + 2) for c in center)
    radius, _ = _ellipsoid(coords[box], center, np.full(ndim, size), np.eye(ndim))  # the only voxels it darkens
    image[box[1:]] -= 0.18 * (radius < 1.0) + 0.1 * ((radius >= 1.0) & (radius < 1.3))
  n_mito = rng.poisson(area / (mito_spacing ** ndim)) + 1 if n_mito is None else n_mito
  if objects == "tubes":
    image, mask = _draw_tubes(rng, image, n_mito)
  else:
    image, mask = _draw_ellipsoids(rng, image, coords, n_mito)
  image = ndimage.gaussian_filter(image, 0.8) + noise * rng.standard_normal(shape)
  image = np.clip(image, 0.0, 1.0)
  return (image * 255).round().astype(np.uint8), mask.astype(np.uint8) * 255


def _draw_ellipsoids(rng: np.random.Generator, image: np.ndarray, coords: np.ndarray,
                     n_mito: int) -> tuple[np.ndarray, np.ndarray]:
  """`image` with `n_mito` randomly rotated ellipsoidal mitochondria drawn in, and their mask bool[*shape]."""
  shape, ndim = image.shape, image.ndim
  mask = np.zeros(shape, bool)
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
  return image, mask


def _unit(rng: np.random.Generator, ndim: int) -> np.ndarray:
  """A direction uniform on the sphere (a normalised Gaussian vector)."""
  v = rng.standard_normal(ndim)
  return v / np.linalg.norm(v)


def _walk(rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, steps: int,
          bend: float = 0.12) -> np.ndarray:
  """f64[steps, ndim]: a centreline of unit steps from `start`, its direction turning a little at each step."""
  points, d = np.empty((steps, start.size)), direction
  for i, turn in enumerate(bend * rng.standard_normal((steps, start.size))):
    d = d + turn
    d /= np.linalg.norm(d)
    points[i] = (points[i - 1] if i else start) + d
  return points


def _tube(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  """One branching tube through a random voxel: centreline points f64[P, ndim] and the radius f64[P] at each.

  The trunk runs both ways from the voxel in a uniformly random direction; half the tubes grow one or two
  thinner branches leaving the trunk at 35-70 degrees.
  """
  ndim = len(shape)
  start, direction = rng.uniform(0, shape), _unit(rng, ndim)
  half = int(rng.uniform(20, 55))
  trunk = np.concatenate([_walk(rng, start, -direction, half)[::-1], [start], _walk(rng, start, direction, half)])
  radius = rng.uniform(3.5, 7.0)
  along = np.arange(len(trunk))
  radii = radius * (1 + 0.2 * np.sin(2 * np.pi * along / rng.uniform(15, 40) + rng.uniform(0, 2 * np.pi)))
  points, widths = [trunk], [radii]
  for _ in range(rng.integers(1, 3) if rng.uniform() < 0.5 else 0):
    at = int(rng.integers(len(trunk) // 4, 3 * len(trunk) // 4))
    parent = trunk[min(at + 1, len(trunk) - 1)] - trunk[max(at - 1, 0)]
    parent /= np.linalg.norm(parent)
    side = _unit(rng, ndim)
    side -= parent * (side @ parent)  # perpendicular to the trunk
    side /= np.linalg.norm(side) + 1e-12
    angle = np.deg2rad(rng.uniform(35, 70))
    steps = int(rng.uniform(0.3, 0.6) * len(trunk))
    branch = _walk(rng, trunk[at], np.cos(angle) * parent + np.sin(angle) * side, steps)
    points.append(branch)
    widths.append(np.full(len(branch), 0.7 * radii[at]))
  return np.concatenate(points), np.concatenate(widths)


def _draw_tubes(rng: np.random.Generator, image: np.ndarray, n_tubes: int) -> tuple[np.ndarray, np.ndarray]:
  """`image` with up to `n_tubes` branching tubular mitochondria drawn in, and their mask bool[*shape].

  Tubes are apart (a tube that would come within GAP voxels of another is drawn again, up to 4 * n_tubes
  draws in all), so each is one object. Each voxel takes the nearest centreline point inside the image
  (one Euclidean distance transform for all tubes): inside where its distance is below that point's
  radius; cristae stripe across the tube.
  """
  shape = image.shape
  tubes = []
  for _ in range(4 * n_tubes):
    points, radii = _tube(rng, shape)
    if tubes:
      others = np.concatenate([t[0] for t in tubes])
      reach = max(t[1].max() for t in tubes)
      if np.any(spatial.cKDTree(others).query(points)[0] < radii + reach + GAP):
        continue
    tubes.append((points, radii))
    if len(tubes) == n_tubes:
      break
  points = np.concatenate([t[0] for t in tubes])
  radii = np.concatenate([t[1] for t in tubes])
  along = np.concatenate([np.arange(len(t[0])) for t in tubes]).astype(np.float64)
  period = np.concatenate([np.full(len(t[0]), rng.uniform(4.0, 7.0)) for t in tubes])
  phase = np.concatenate([np.full(len(t[0]), rng.uniform(0, 2 * np.pi)) for t in tubes])
  grid = np.round(points).astype(np.int64)
  inside_image = np.all((grid >= 0) & (grid < np.array(shape)), axis=1)
  nearest_point = np.full(shape, -1, np.int64)
  nearest_point[tuple(grid[inside_image].T)] = np.flatnonzero(inside_image)
  distance, nearest = ndimage.distance_transform_edt(nearest_point < 0, return_indices=True)
  index = nearest_point[tuple(nearest)]
  radius = distance / radii[index] + 0.1 * _smooth_noise(rng, shape, 4.0)
  inside = radius < 1.0
  cristae = np.sin(2 * np.pi * along[index] / period[index] + phase[index])
  image = np.where(inside, 0.40 + 0.07 * cristae, image)
  image -= 0.2 * ((radius >= 0.85) & (radius < 1.1))  # dark double membrane
  return image, inside


def make_stack(seed: int, n_slices: int, shape: tuple[int, int], ndim: int = 2,
               mito_spacing: float = 90.0, objects: str = "ellipsoids") -> tuple[np.ndarray, np.ndarray]:
  """A stack u8[Z, H, W]: independent 2D slices (ndim=2) or one coherent volume (ndim=3)."""
  rng = np.random.default_rng(seed)
  if ndim == 3:
    return generate(rng, (n_slices, *shape), mito_spacing=mito_spacing, objects=objects)
  pairs = [generate(rng, tuple(shape), objects=objects) for _ in range(n_slices)]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def make_dataset(config: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{'train', 'test'}: (image u8[Z, H, W], mask u8[Z, H, W]) stacks from `config.data.synthetic` (seed, shape,
  slices, ndim; the test slices' own shape, mito_spacing in 3D and objects where a config sets them)."""
  shape = tuple(config.shape)
  test_shape = tuple(config.get("test_shape", ())) or shape  # a larger test volume counts more whole objects
  spacing, objects = config.get("mito_spacing", 90.0), config.get("objects", "ellipsoids")
  train = make_stack(config.seed, config.train_slices, shape, config.ndim, spacing, objects)
  test = make_stack(config.seed + 1, config.test_slices, test_shape, config.ndim, spacing, objects)
  return {"train": train, "test": test}
