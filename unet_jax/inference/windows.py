"""Sliding-window inference over 2D images and 3D volumes, with optional test-time augmentation.

Windows all have one static shape; their origins are spread evenly along each axis so that the
first starts at 0 and the last ends at the border (`window_starts`). Under one jit, a `lax.scan`
over fixed-size batches cuts the windows out with vmapped dynamic slices, runs the network, and
adds each window's probabilities times its blending weights (constant, or a Gaussian with sigma a
fraction of the window) into a running sum; the sum of the weights is computed once per shape on
the host. Images smaller than the window are reflect-padded and cropped back; windows whose size
does not divide by 2**depth are reflect-padded inside `predictor`, so any image and any window work.

Test-time augmentation (`tta`): 'none', 'flips' (the 4 flips of the (H, W) plane) or 'dihedral'
(the 8 flips and 90-degree rotations; square (H, W) windows), averaged after inverting each.
"""

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.errors import InputError
from unet_jax.inference import engines
from unet_jax.network.model import UNet

BLENDS = ("constant", "gaussian")
TTAS = ("none", "flips", "dihedral")

Predict = Callable[[Any, jax.Array], jax.Array]  # (variables, f32[B, *window, 1]) -> probabilities alike


def window_starts(size: int, window: int, overlap: float) -> np.ndarray:
  """Origins along one axis: evenly spread, the first at 0 and the last ending at `size`."""
  if size <= window:
    return np.zeros(1, np.int32)
  stride = max(1, int(window * (1.0 - overlap)))
  count = math.ceil((size - window) / stride) + 1
  return np.round(np.linspace(0, size - window, count)).astype(np.int32)


def blend_weights(window: tuple[int, ...], blend: str, sigma: float = 0.125) -> np.ndarray:
  """Per-pixel window weights f32[*window]: ones, or a Gaussian with sigma = `sigma` * window."""
  if blend not in BLENDS:
    raise InputError(f"blend must be one of {BLENDS}, got {blend!r}")
  if blend == "constant":
    return np.ones(window, np.float32)
  if sigma <= 0:
    raise InputError(f"the Gaussian blending sigma (a fraction of the window) must be positive, got {sigma}")
  axes = [np.exp(-0.5 * ((np.arange(w) - (w - 1) / 2) / (sigma * w)) ** 2) for w in window]
  weights = functools.reduce(np.multiply.outer, axes).astype(np.float32)
  return np.maximum(weights / weights.max(), 1e-4)  # borders keep a little weight


def window_grid(shape: tuple[int, ...], window: tuple[int, ...], overlap: float) -> np.ndarray:
  """All window origins i32[N, ndim] covering an array of `shape`, in C order."""
  starts = [window_starts(s, w, overlap) for s, w in zip(shape, window)]
  return np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(shape))


@functools.lru_cache(maxsize=4)
def _plan(shape: tuple[int, ...], starts: tuple[tuple[int, ...], ...], window: tuple[int, ...], blend: str,
          sigma: float, batch_size: int, capacity: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(origins i32[nb, b, ndim], keep f32[nb, b], weights f32[*window], weight sum f32[*shape]).

  The windows are the grid of per-axis `starts`; their number N is padded to `capacity` (at least N)
  and split into nb = ceil(capacity / batch_size) batches of b = ceil(capacity / nb), so padding
  slots are repeats of the last window with keep = 0. A fixed capacity keeps the compiled shapes of
  regions holding different numbers of windows equal (unet_jax/inference/tiling.py).
  """
  origins = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(shape))
  weights = blend_weights(window, blend, sigma)
  norm = np.zeros(shape, np.float32)
  for start in origins:
    norm[tuple(slice(s, s + w) for s, w in zip(start, window))] += weights
  n = max(len(origins), capacity)
  n_batches = -(-n // batch_size)
  per_batch = -(-n // n_batches)
  padded = np.concatenate([origins, np.repeat(origins[-1:], n_batches * per_batch - len(origins), 0)])
  keep = (np.arange(n_batches * per_batch) < len(origins)).astype(np.float32)
  return (jnp.asarray(padded.reshape(n_batches, per_batch, -1)), jnp.asarray(keep.reshape(n_batches, per_batch)),
          jnp.asarray(weights), jnp.asarray(norm))


@functools.partial(jax.jit, static_argnames=("predict", "window"))
def _weighted_sum(predict: Predict, variables: Any, image: jax.Array, origins: jax.Array, keep: jax.Array,
                  weights: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """Sum f32[*spatial] of weights * predict over windows at `origins` i32[nb, b, ndim] of `image` f32[*spatial, C];
  f32[*spatial, K] when `predict` gives K > 1 class probabilities."""
  channels = image.shape[-1]
  out = jax.eval_shape(predict, variables, jax.ShapeDtypeStruct((origins.shape[1], *window, channels), jnp.float32))
  classes = () if out.shape[-1] == 1 else (out.shape[-1],)
  def run_batch(total, batch):
    starts, keep = batch
    patches = jax.vmap(lambda s: jax.lax.dynamic_slice(image, (*s, 0), (*window, channels)))(starts)
    probs = predict(variables, patches)
    if classes:
      probs = probs * weights[..., None] * keep.reshape((-1,) + (1,) * (len(window) + 1))
    else:
      probs = probs[..., 0] * weights * keep.reshape((-1,) + (1,) * len(window))
    def add(i, total):
      s = (*starts[i], *(0 for _ in classes))
      return jax.lax.dynamic_update_slice(total, jax.lax.dynamic_slice(total, s, (*window, *classes)) + probs[i], s)
    return jax.lax.fori_loop(0, starts.shape[0], add, total), None
  total, _ = jax.lax.scan(run_batch, jnp.zeros((*image.shape[:-1], *classes), jnp.float32), (origins, keep))
  return total


def _check(image_shape: tuple[int, ...], window: tuple[int, ...], overlap: float, batch_size: int) -> None:
  """Raises InputError for a window, overlap or batch size that cannot cover `image_shape`."""
  if len(window) != len(image_shape) or len(window) not in (2, 3):
    raise InputError(f"window {tuple(window)} and image shape {tuple(image_shape)} must both be 2D or both 3D")
  if min(window) < 1 or batch_size < 1:
    raise InputError(f"window {tuple(window)} and batch size {batch_size} must be positive")
  if not 0.0 <= overlap < 1.0:
    raise InputError(f"overlap must be in [0, 1), got {overlap}")


def region_sums(predict: Predict, variables: Any, image: np.ndarray | jax.Array, starts: tuple[tuple[int, ...], ...],
                window: tuple[int, ...], blend: str = "gaussian", batch_size: int = 8, sigma: float = 0.125,
                capacity: int = 0) -> tuple[jax.Array, jax.Array]:
  """(sum of weighted window probabilities, sum of weights), both f32[*spatial], of `image` f32[*spatial, C]
  (the first f32[*spatial, K] for a K-class `predict`).

  The windows are the grid of per-axis `starts` (relative to the image); the image is reflect-padded
  to reach the last window's end and the sums cropped back. `predict` maps f32[B, *window, C] to
  f32[B, *window, 1]; `capacity` (see `_plan`) fixes the compiled batch count.
  """
  window = tuple(int(w) for w in window)
  shape = tuple(image.shape[:-1])
  padded_shape = tuple(max(s, max(a) + w) for s, a, w in zip(shape, starts, window))
  image = jnp.asarray(image, jnp.float32)
  if padded_shape != shape:
    image = jnp.pad(image, [(0, p - s) for s, p in zip(shape, padded_shape)] + [(0, 0)], mode="reflect")
  starts = tuple(tuple(int(s) for s in a) for a in starts)
  origins, keep, weights, norm = _plan(padded_shape, starts, window, blend, float(sigma), int(batch_size),
                                       int(capacity))
  total = _weighted_sum(predict, variables, image, origins, keep, weights, window)
  crop = tuple(slice(0, s) for s in shape)
  return total[crop], norm[crop]


def window_sums(predict: Predict, variables: Any, image: np.ndarray | jax.Array, window: tuple[int, ...],
                overlap: float = 0.5, blend: str = "gaussian", batch_size: int = 8,
                sigma: float = 0.125) -> tuple[jax.Array, jax.Array]:
  """(sum of weighted window probabilities, sum of weights), both f32[*image.shape].

  Their ratio is `sliding_window_predict`; streaming adds sums of overlapping blocks before dividing.
  """
  window = tuple(int(w) for w in window)
  _check(tuple(image.shape), window, overlap, batch_size)
  starts = tuple(tuple(window_starts(max(s, w), w, overlap)) for s, w in zip(image.shape, window))
  return region_sums(predict, variables, jnp.asarray(image)[..., None], starts, window, blend, batch_size, sigma)


def sliding_window_predict(predict: Predict, variables: Any, image: np.ndarray | jax.Array,
                           window: tuple[int, ...], overlap: float = 0.5, blend: str = "gaussian",
                           batch_size: int = 8, sigma: float = 0.125) -> jax.Array:
  """Probabilities f32[*image.shape] for `image` f32[H, W] or f32[D, H, W].

  `predict(variables, patches)` maps f32[B, *window, 1] to probabilities f32[B, *window, 1]; it is
  a static argument (keep one function object, e.g. from `predictor`), `variables` a traced one,
  so new weights do not recompile. `sigma` is the Gaussian's width as a fraction of the window.
  """
  total, norm = window_sums(predict, variables, image, window, overlap, blend, batch_size, sigma)
  return total / norm if total.ndim == norm.ndim else total / norm[..., None]


def tta_transforms(tta: str) -> tuple[tuple[int, bool], ...]:
  """(quarter turns, flip W) pairs of the TTA group; each maps x -> flip(rot90(x, k))."""
  if tta not in TTAS:
    raise InputError(f"eval.tta must be one of {TTAS}, got {tta!r}")
  turns = {"none": (0,), "flips": (0, 2), "dihedral": (0, 1, 2, 3)}[tta]
  return tuple((k, flip) for k in turns for flip in ((False,) if tta == "none" else (False, True)))


def _transformed(predict: Predict, k: int, flip: bool) -> Predict:
  """`predict` on windows turned by k quarter turns (then flipped along W), its output turned back."""
  def run(variables: Any, patches: jax.Array) -> jax.Array:
    plane = (patches.ndim - 3, patches.ndim - 2)
    x = jnp.rot90(patches, k, plane)
    y = predict(variables, jnp.flip(x, plane[1]) if flip else x)
    return jnp.rot90(jnp.flip(y, plane[1]) if flip else y, -k, plane)
  return run


def _check_square(tta: str, patches: jax.Array) -> None:
  if tta == "dihedral" and patches.shape[-3] != patches.shape[-2]:
    raise InputError(f"dihedral TTA needs square (H, W) windows, got {patches.shape[1:-1]}; "
                     "use eval.tta='flips' or a square window")


@functools.lru_cache(maxsize=None)
def test_time_augmented(predict: Predict, tta: str) -> Predict:
  """`predict` averaged over the `tta` transforms of the (H, W) plane, each inverted before averaging."""
  transforms = [_transformed(predict, k, flip) for k, flip in tta_transforms(tta)]
  if len(transforms) == 1:
    return predict
  def augmented(variables: Any, patches: jax.Array) -> jax.Array:
    _check_square(tta, patches)
    return sum(t(variables, patches) for t in transforms) / len(transforms)
  return augmented


@functools.lru_cache(maxsize=None)
def predictor(model: UNet, tta: str = "none", engine: str = "xla") -> Predict:
  """A fixed function (variables, f32[B, *window, 1]) -> sigmoid probabilities, with `tta`.

  Windows whose sides do not divide by 2**depth are reflect-padded up to a multiple and cropped back.
  `engine` runs the network's forward pass: 'xla' or 'onnx' (ONNX Runtime; unet_jax/inference/engines.py).
  """
  forward = engines.forward(model, engine)
  factors = model.plan().size_factors  # 2**depth per axis, less on axes an anisotropic plan pools less
  def predict(variables: Any, patches: jax.Array) -> jax.Array:
    spatial = patches.shape[1:-1]
    pad = [(0, 0)] + [(0, -s % f) for s, f in zip(spatial, factors)] + [(0, 0)]
    if any(p for _, p in pad):
      patches = jnp.pad(patches, pad, mode="reflect")
    return forward(variables, patches)[(slice(None), *(slice(0, s) for s in spatial))]
  return test_time_augmented(predict, tta)


def window_settings(eval_config: Any, ndim: int) -> dict[str, Any]:
  """The sliding-window keyword arguments {window, overlap, blend, batch_size, sigma} of `config.eval`.

  The one place where eval settings become inference arguments; `eval.window` (an int or one size
  per axis) becomes a tuple of `ndim` sizes.
  """
  window = eval_config.window
  window = tuple(window) if isinstance(window, (tuple, list)) else (window,) * ndim
  if len(window) != ndim:
    raise InputError(f"eval.window {window} must have {ndim} sizes for a {ndim}D model (or be one int)")
  return {"window": window, "overlap": eval_config.overlap, "blend": eval_config.blend,
          "batch_size": eval_config.batch_size, "sigma": eval_config.sigma}


@functools.lru_cache(maxsize=None)
def transform_predictor(model: UNet, tta: str, engine: str = "xla") -> Predict:
  """((variables, index i32[]), windows f32[B, *window, 1]) -> probabilities of the index-th `tta` transform.

  The transform (quarter turns, flip; `tta_transforms`) is applied to the windows and inverted on the
  output, chosen by a traced index (`lax.switch`), so every transform runs under one compilation.
  """
  branches = [_transformed(predictor(model, "none", engine), k, flip) for k, flip in tta_transforms(tta)]
  def predict(variables_and_index: tuple[Any, jax.Array], patches: jax.Array) -> jax.Array:
    variables, index = variables_and_index
    _check_square(tta, patches)
    return jax.lax.switch(index, branches, variables, patches)
  return predict


def transform_subset(group: str, tta: str) -> list[int]:
  """Indices, among the `group` TTA transforms, of the `tta` transforms (e.g. the 4 flips within dihedral)."""
  members = tta_transforms(group)
  missing = [t for t in tta_transforms(tta) if t not in members]
  if missing:
    raise InputError(f"eval.tta={tta!r} is not part of the {group!r} transforms; use eval.tta='{group}' or less")
  return [members.index(t) for t in tta_transforms(tta)]
