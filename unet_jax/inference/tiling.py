"""Block-wise whole-volume inference on the global sliding-window grid, in memory bounded by a block.

A volume f32[Z, Y, X] is cut into blocks (`eval.chunk` voxels each). A block is predicted from exactly
the windows of the whole volume's grid (`windows.window_starts`) that touch it, run on the region
they cover (the halo) and cropped back, so every voxel gets the windows and weights that
`windows.sliding_window_predict` gives it on the whole volume: the blocks equal the in-memory
result up to float rounding, whatever the block size. Regions all have one shape and one padded
window count, so the network compiles once.

One path for every model: a 3D model runs its windows; a 2D model runs (1, h, w) windows, i.e. each
slice alone (a Gaussian of one voxel's depth weighs 1); a 2.5D model (`model.context_slices` = k)
the same windows with each slice's 2k + 1 neighbours as channels, mirrored at the volume's ends
exactly as `context.neighbour_slices`. TIFF streaming (unet_jax/inference/segment.py) and OME-Zarr volumes
(unet_jax/inference/chunked.py) both use it.
"""

import dataclasses
import functools
import itertools
from typing import Any, Callable

import numpy as np

from unet_jax.inference import context, windows
from unet_jax.network.model import UNet

Box = tuple[slice, slice, slice]
Read = Callable[[Box], np.ndarray]  # a box of the volume -> its voxels f32[dz, dy, dx], normalised


@dataclasses.dataclass(frozen=True)
class Block:
  """One block: the voxels it outputs (`box`), the voxels its windows read (`region`), their origins."""
  index: tuple[int, int, int]
  box: Box
  region: Box
  starts: tuple[tuple[int, ...], ...]  # per axis, window origins relative to region's start


@dataclasses.dataclass(frozen=True)
class Tiling:
  """The blocks of a volume in C order, the (3D) window, the padded window count and the 2.5D k; `block`:
  the blocks' (largest) size per axis."""
  shape: tuple[int, int, int]
  blocks: tuple[Block, ...]
  window: tuple[int, int, int]
  capacity: int
  context_slices: int
  block: tuple[int, int, int]


@functools.lru_cache(maxsize=None)
def on_slices(predict: windows.Predict) -> windows.Predict:
  """A 2D `predict` (f32[B, h, w, C]) as one on (1, h, w) windows, f32[B, 1, h, w, C] -> f32[B, 1, h, w, 1]."""
  return lambda variables, patches: predict(variables, patches[:, 0])[:, None]


def on_volume(predict: windows.Predict, ndim: int) -> windows.Predict:
  """A `predict` of an `ndim`-D model on 3D windows f32[B, *window, C] (2D models: (1, h, w) windows)."""
  return predict if ndim == 3 else on_slices(predict)


def volume_predictor(model: UNet, tta: str = "none", engine: str = "xla") -> windows.Predict:
  """`windows.predictor` on 3D windows f32[B, *window, C] (C = 2k + 1 for 2.5D, else 1)."""
  return on_volume(windows.predictor(model, tta, engine), model.ndim)


def regular_boxes(size: int, block: int) -> list[tuple[int, int]]:
  """(start, end) of the blocks of `block` voxels along an axis of `size` (the last one smaller)."""
  return [(lo, min(lo + block, size)) for lo in range(0, size, block)]


def _axis_blocks(size: int, window: int, overlap: float,
                 boxes: list[tuple[int, int]]) -> list[tuple[slice, slice, tuple[int, ...]]]:
  """Per box along one axis: (box, region, origins of the windows touching the box, relative to the region).

  Regions all have the length of the longest span of touching windows, shifted to stay inside the
  axis (reflect-padded to the window when the axis is shorter), so every region has one shape.
  """
  padded = max(size, window)
  starts = windows.window_starts(padded, window, overlap)
  touching = [starts[(starts < hi) & (starts + window > lo)] for lo, hi in boxes]
  length = min(max(int(t[-1]) + window - int(t[0]) for t in touching), padded)
  blocks = []
  for (lo, hi), t in zip(boxes, touching):
    origin = min(int(t[0]), padded - length)
    blocks.append((slice(lo, hi), slice(origin, min(origin + length, size)), tuple(int(s) - origin for s in t)))
  return blocks


def plan(shape: tuple[int, int, int], window: tuple[int, int, int], overlap: float, block: tuple[int, int, int],
         context_slices: int = 0) -> Tiling:
  """The blocks of `block` voxels covering a volume of `shape` (the last ones smaller), C order."""
  boxes = [regular_boxes(s, max(1, min(b, s))) for s, b in zip(shape, block)]
  return plan_boxes(shape, window, overlap, boxes, context_slices)


def plan_boxes(shape: tuple[int, int, int], window: tuple[int, int, int], overlap: float,
               boxes: list[list[tuple[int, int]]], context_slices: int = 0) -> Tiling:
  """The blocks whose boxes are the products of per-axis (start, end) `boxes` (they may overlap), C order,
  on the volume's global window grid: what a block outputs depends only on its box."""
  axes = [_axis_blocks(s, w, overlap, b) for s, w, b in zip(shape, window, boxes)]
  capacity = int(np.prod([max(len(starts) for _, _, starts in axis) for axis in axes]))
  blocks = []
  for index in itertools.product(*(range(len(axis)) for axis in axes)):
    box, region, starts = zip(*(axis[i] for axis, i in zip(axes, index)))
    blocks.append(Block(tuple(index), box, region, starts))
  size = tuple(max(hi - lo for lo, hi in b) for b in boxes)
  return Tiling(tuple(shape), tuple(blocks), tuple(window), capacity, context_slices, size)


def _inputs(read: Read, region: Box, depth: int, k: int) -> np.ndarray:
  """The region's network input f32[dz, dy, dx, C]: C = 1, or the 2k + 1 mirrored neighbours of each slice."""
  if not k:
    return np.asarray(read(region), np.float32)[..., None]
  neighbours = np.stack([context.neighbour_slices(z, depth, k) for z in range(region[0].start, region[0].stop)])
  lo, hi = int(neighbours.min()), int(neighbours.max()) + 1
  slab = np.asarray(read((slice(lo, hi), *region[1:])), np.float32)
  return np.moveaxis(slab[neighbours - lo], 1, -1)


def block_probabilities(predict: windows.Predict, variables: Any, read: Read, tiling: Tiling, block: Block,
                        blend: str = "gaussian", batch_size: int = 8, sigma: float = 0.125) -> np.ndarray:
  """Probabilities f32[*box shape] of one block (f32[*box shape, K] for K > 1 classes); `predict` takes
  f32[B, *tiling.window, C] (`volume_predictor`)."""
  image = _inputs(read, block.region, tiling.shape[0], tiling.context_slices)
  total, norm = windows.region_sums(predict, variables, image, block.starts, tiling.window, blend, batch_size,
                                      sigma, tiling.capacity)
  crop = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(block.box, block.region))
  norm = norm[crop] if total.ndim == norm.ndim else norm[crop][..., None]  # K classes: f32[*box shape, K]
  return np.asarray(total[crop] / norm)
