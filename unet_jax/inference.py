"""Sliding-window inference: evenly spread windows, vmapped slices, batched under jit, blended."""

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.errors import InputError
from unet_jax.model import UNet

BLENDS = ("constant", "gaussian")


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
  axes = [np.exp(-0.5 * ((np.arange(w) - (w - 1) / 2) / (sigma * w)) ** 2) for w in window]
  weights = functools.reduce(np.multiply.outer, axes).astype(np.float32)
  return np.maximum(weights / weights.max(), 1e-4)  # borders keep a little weight


def window_grid(shape: tuple[int, ...], window: tuple[int, ...], overlap: float) -> np.ndarray:
  """All window origins i32[N, ndim] covering an array of `shape`."""
  starts = [window_starts(s, w, overlap) for s, w in zip(shape, window)]
  return np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(shape))


@functools.partial(jax.jit, static_argnames=("predict", "window", "batch_size"))
def _blend_windows(predict: Callable[[Any, jax.Array], jax.Array], variables: Any, image: jax.Array,
                   origins: jax.Array,
                   valid: jax.Array, weights: jax.Array, window: tuple[int, ...],
                   batch_size: int) -> jax.Array:
  """Weighted average of `predict` over windows at `origins` (rows grouped in batches)."""
  def run_batch(acc, batch):
    starts, keep = batch
    patches = jax.vmap(lambda s: jax.lax.dynamic_slice(image, tuple(s), window))(starts)
    probs = predict(variables, patches[..., None])[..., 0] * weights * keep.reshape((-1,) + (1,) * len(window))
    def add(i, acc):
      total, norm = acc
      s = tuple(starts[i])
      total = jax.lax.dynamic_update_slice(total, jax.lax.dynamic_slice(total, s, window) + probs[i], s)
      norm = jax.lax.dynamic_update_slice(
          norm, jax.lax.dynamic_slice(norm, s, window) + weights * keep[i], s)
      return total, norm
    return jax.lax.fori_loop(0, batch_size, add, acc), None
  zeros = jnp.zeros(image.shape, jnp.float32)
  batched = (origins.reshape(-1, batch_size, origins.shape[-1]), valid.reshape(-1, batch_size))
  (total, norm), _ = jax.lax.scan(run_batch, (zeros, zeros), batched)
  return total / norm


def sliding_window_predict(predict: Callable[[Any, jax.Array], jax.Array], variables: Any,
                           image: np.ndarray | jax.Array,
                           window: tuple[int, ...], overlap: float = 0.5, blend: str = "gaussian",
                           batch_size: int = 8, sigma: float = 0.125) -> jax.Array:
  """Probabilities f32[*image.shape] for `image` f32[H, W] or f32[D, H, W].

  `predict(variables, patches)` maps f32[B, *window, 1] to probabilities f32[B, *window, 1]; it is
  a static argument (keep one function object), `variables` a traced one, so new weights do not
  recompile.
  Images smaller than the window are reflect-padded and cropped back.
  """
  if len(window) != image.ndim:
    raise InputError(f"window {window} and image shape {image.shape} differ in dimensions")
  if not 0.0 <= overlap < 1.0:
    raise InputError(f"overlap must be in [0, 1), got {overlap}")
  shape = tuple(image.shape)
  pad = [(0, max(0, w - s)) for s, w in zip(shape, window)]
  padded = jnp.pad(jnp.asarray(image, jnp.float32), pad, mode="reflect" if any(p for _, p in pad) else "constant")
  origins = window_grid(padded.shape, window, overlap)
  n = len(origins)
  n_padded = -(-n // batch_size) * batch_size
  origins = np.concatenate([origins, np.repeat(origins[-1:], n_padded - n, 0)])
  valid = (np.arange(n_padded) < n).astype(np.float32)
  probs = _blend_windows(predict, variables, padded, jnp.asarray(origins), jnp.asarray(valid),
                         jnp.asarray(blend_weights(window, blend, sigma)), tuple(window), batch_size)
  return probs[tuple(slice(0, s) for s in shape)]


@functools.lru_cache(maxsize=None)
def predictor(model: UNet):
  """A fixed function (variables, f32[B, *window, 1]) -> probabilities, for inference."""
  def predict(variables: Any, patches: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(model.apply(variables, patches, train=False))
  return predict


def predict_stack(model: UNet, variables: Any, image: np.ndarray, eval_config: Any) -> np.ndarray:
  """Probabilities f32[Z, H, W] for a stack: slice by slice (2D model) or whole (3D model)."""
  window = tuple(eval_config.window) if isinstance(eval_config.window, (tuple, list)) \
      else (eval_config.window,) * model.ndim
  run = functools.partial(sliding_window_predict, predictor(model), variables,
                          window=window, overlap=eval_config.overlap, blend=eval_config.blend,
                          batch_size=eval_config.batch_size)
  if model.ndim == 3:
    return np.asarray(run(image))
  return np.stack([np.asarray(run(image[z])) for z in range(image.shape[0])])
