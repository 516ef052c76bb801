"""Host-side patch sampling from stacks, with a foreground-centred fraction or class-centred patches, and
prefetching.

A patch's centre is drawn first, then jittered by up to a quarter patch: with `train.fg_fraction` a fraction of
patches are centred on a foreground voxel (any class but 0 of a label map), the rest placed uniformly; with
`train.class_sampling` (label maps) every patch is centred on a voxel of a class drawn with those weights, so a
rare class (a synapse) can be seen as often as wanted. Classes absent from the training split get no patches and
the other weights are renormalised.
"""

import dataclasses
import queue
import threading
from typing import Iterator, Sequence

import numpy as np

from unet_jax.errors import InputError
from unet_jax.inference import context
from unet_jax.io.data import Split


@dataclasses.dataclass(frozen=True)
class PatchSampler:
  """Draws (image, mask) patches of `patch_shape` (2D: (h, w), 3D: (d, h, w)) from a stack.

  2.5D (`context_slices` = k > 0, 2D patches): the image holds the 2k + 1 slices z - k ... z + k as
  channels (mirrored at the stack ends: `context.neighbour_slices`), the mask is slice z's.
  """
  split: Split
  patch_shape: tuple[int, ...]
  fg_fraction: float
  foreground: np.ndarray  # flat indices of foreground voxels (empty with class sampling)
  context_slices: int = 0
  class_probs: np.ndarray | None = None  # f64[K]: probability of centring on each class (train.class_sampling)
  class_voxels: np.ndarray | None = None  # flat voxel indices sorted by class
  class_starts: np.ndarray | None = None  # i64[K + 1]: class c's voxels are class_voxels[starts[c]:starts[c + 1]]

  @classmethod
  def create(cls, split: Split, patch_shape: tuple[int, ...], fg_fraction: float,
             context_slices: int = 0, class_sampling: Sequence[float] = ()) -> "PatchSampler":
    """Validates sizes and indexes the foreground (or, with `class_sampling`, each class's voxels) once."""
    full = (1,) * (3 - len(patch_shape)) + tuple(patch_shape)
    if len(patch_shape) not in (2, 3) or any(p > s for p, s in zip(full, split.image.shape)):
      raise InputError(f"patch {tuple(patch_shape)} does not fit in the stack {split.image.shape}; "
                       "use a smaller train.patch_size")
    if not 0.0 <= fg_fraction <= 1.0:
      raise InputError(f"train.fg_fraction must be in [0, 1], got {fg_fraction}")
    if context_slices and len(patch_shape) != 2:
      raise InputError(f"model.context_slices={context_slices} (2.5D) is for 2D models; a 3D model sees "
                       "its neighbouring slices already, set it to 0")
    if class_sampling:
      return cls(split, tuple(patch_shape), fg_fraction, np.empty(0, np.int64), context_slices,
                 *_class_index(split.mask, class_sampling))
    return cls(split, tuple(patch_shape), fg_fraction, np.flatnonzero(split.mask).astype(np.int64),
               context_slices)

  def draw_centre(self, rng: np.random.Generator) -> np.ndarray | None:
    """The voxel (z, y, x) a patch is centred on, or None for a uniformly placed patch."""
    if self.class_probs is not None:
      c = rng.choice(len(self.class_probs), p=self.class_probs)
      index = self.class_voxels[rng.integers(self.class_starts[c], self.class_starts[c + 1])]
    elif self.foreground.size and rng.uniform() < self.fg_fraction:
      index = rng.choice(self.foreground)
    else:
      return None
    return np.array(np.unravel_index(index, self.split.image.shape))

  def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    """A batch {'image': f32[B, *patch, 2 * context_slices + 1], 'mask': f32[B, *patch, 1]}."""
    stack = self.split.image.shape
    full = np.array((1,) * (3 - len(self.patch_shape)) + self.patch_shape)
    high = np.array(stack) - full
    images, masks = [], []
    for _ in range(batch_size):
      center = self.draw_centre(rng)
      if center is not None:
        origin = np.clip(center - full // 2 + rng.integers(-(full // 4), full // 4 + 1), 0, high)
      else:
        origin = rng.integers(0, high + 1)
      window = tuple(slice(o, o + p) for o, p in zip(origin, full))
      masks.append(self.split.mask[window].reshape(self.patch_shape))
      if self.context_slices:
        slices = context.neighbour_slices(origin[0], stack[0], self.context_slices)
        images.append(np.moveaxis(self.split.image[(slices, *window[1:])], 0, -1))
      else:
        images.append(self.split.image[window].reshape(self.patch_shape)[..., None])
    return {"image": np.stack(images).astype(np.float32),
            "mask": np.stack(masks)[..., None].astype(np.float32)}


def _class_index(labels: np.ndarray, class_sampling: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(centre probabilities f64[K], voxel indices sorted by class, class starts i64[K + 1]) of a label map."""
  flat = np.asarray(labels).ravel()
  k = len(class_sampling)
  counts = np.bincount(flat, minlength=k)
  if len(counts) > k:
    raise InputError(f"train.class_sampling has {k} weights but the training labels hold class ids up to "
                     f"{len(counts) - 1}; give one weight per class (model.num_classes)")
  weights = np.asarray(class_sampling, np.float64) * (counts > 0)
  if not weights.sum() > 0:
    raise InputError(f"train.class_sampling={tuple(class_sampling)!r} weighs only classes absent from the training "
                     f"split (voxels per class: {counts.tolist()}); give weight to a class it holds")
  return weights / weights.sum(), np.argsort(flat, kind="stable"), np.concatenate([[0], np.cumsum(counts)])


def batches(sampler: PatchSampler, batch_size: int, seed: int, start_step: int, process_index: int = 0,
            process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """This process's part of the global batches for steps start_step, start_step + 1, ...

  Example i of global batch k depends only on (seed, k, i), and process p gets examples
  [p * batch_size / process_count, (p + 1) * batch_size / process_count), so the global batch is
  the same whatever the number of processes (and a resumed run sees the batches it would have).
  """
  if batch_size % process_count:
    raise InputError(f"train.batch_size={batch_size} must be a multiple of the {process_count} processes")
  local = batch_size // process_count
  examples = range(process_index * local, (process_index + 1) * local)
  step = start_step
  while True:
    parts = [sampler.sample(np.random.default_rng([seed, step, i]), 1) for i in examples]
    yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    step += 1


def prefetch(iterator: Iterator, size: int) -> Iterator:
  """Runs `iterator` in a background thread, keeping up to `size` items ready.

  An exception raised in the thread is raised again in the consumer, with its traceback, at the
  item where it happened, so a failing sampler stops the run instead of hanging it.
  """
  if size <= 0:
    yield from iterator
    return
  items: queue.Queue = queue.Queue(maxsize=size)
  failed, finished = object(), object()

  def produce() -> None:
    try:
      for item in iterator:
        items.put((None, item))
      items.put((finished, None))
    except BaseException as e:  # pylint: disable=broad-except  (handed to the consumer)
      items.put((failed, e))

  threading.Thread(target=produce, daemon=True).start()
  while True:
    status, item = items.get()
    if status is finished:
      return
    if status is failed:
      raise item
    yield item
