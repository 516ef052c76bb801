"""Pixel attribution for one object's score: integrated gradients, SmoothGrad, Seg-Grad-CAM, deletion curves.

The score explained is `probe.object_scores`: the sum of the object's logits (of one class's probability, for
a K-class model) over a crop f32[H, W]. Each method is a pure function of (model, variables, image, object
weights) built on jitted network calls (batched along the path, the noise samples or the deletion steps):

- Integrated gradients (Sundararajan et al. 2017): (x - b) times the mean gradient on the straight
  path from a baseline b to x, by the midpoint rule with `steps` points, `batch_size` points per
  network call. Completeness says the attributions sum to F(x) - F(b); `completeness_error`
  measures how far the quadrature is from it. Baselines: black (zeros) or the image blurred by a
  Gaussian (`blurred`), which removes edges and texture but keeps the mean intensity.
- SmoothGrad (Smilkov et al. 2017): the gradient averaged over copies with Gaussian noise.
- Seg-Grad-CAM (Vinogradova et al. 2020): at block `layer`, channel weights = the spatial mean of
  the score's gradient w.r.t. the block output A; map = ReLU(sum_c weight_c A_c), linearly
  resized to the input.
- Deletion curve (Petsiuk et al. 2018): the score as ever more pixels, most attributed first, are
  replaced by the baseline; compared with a random order it shows whether the map ranks pixels
  by what the network uses.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.errors import InputError
from unet_jax.explain import probe
from unet_jax.network.model import UNet

BASELINES = ("black", "blurred")


def gaussian_blur(image: jax.Array, sigma: float) -> jax.Array:
  """f32[H, W] blurred by a separable Gaussian of `sigma` pixels (reflected borders)."""
  if sigma <= 0:
    return image
  radius = int(min(3 * sigma, min(image.shape) - 1))
  taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / sigma) ** 2)
  taps = taps / taps.sum()
  padded = jnp.pad(image, radius, mode="reflect")
  rows = jax.vmap(lambda r: jnp.convolve(r, taps, mode="valid"))(padded)
  return jax.vmap(lambda c: jnp.convolve(c, taps, mode="valid"), in_axes=1, out_axes=1)(rows)


def baseline(image: jax.Array, kind: str, blur_sigma: float) -> jax.Array:
  """The IG baseline f32[H, W] of `kind`: 'black' (zeros) or 'blurred' (Gaussian, `blur_sigma` px)."""
  if kind not in BASELINES:
    raise InputError(f"unknown baseline {kind!r}; valid baselines: {', '.join(BASELINES)}")
  return jnp.zeros_like(image) if kind == "black" else gaussian_blur(image, blur_sigma)


@functools.partial(jax.jit, static_argnames=("model",))
def input_gradients(model: UNet, variables: Any, images: jax.Array, weights: jax.Array) -> jax.Array:
  """dF/dx f32[B, H, W] of the object score F (weights f32[H, W]) at each of images f32[B, H, W]."""
  return jax.grad(lambda x: probe.object_scores(model, variables, x, weights).sum())(images)


@functools.partial(jax.jit, static_argnames=("model",))
def scores(model: UNet, variables: Any, images: jax.Array, weights: jax.Array) -> jax.Array:
  """Object scores f32[B] of images f32[B, H, W]."""
  return probe.object_scores(model, variables, images, weights)


@functools.partial(jax.jit, static_argnames=("model",))
def _path_gradients(model: UNet, variables: Any, image: jax.Array, base: jax.Array, weights: jax.Array,
                    alphas: jax.Array) -> jax.Array:
  return input_gradients(model, variables, base + alphas[:, None, None] * (image - base), weights)


def integrated_gradients(model: UNet, variables: Any, image: jax.Array, weights: jax.Array, base: jax.Array,
                         steps: int = 64, batch_size: int = 8) -> tuple[np.ndarray, float, float]:
  """(attributions f32[H, W], F(image), F(base)) for the object score F with `weights` f32[H, W].

  The path integral by the midpoint rule at `steps` points, `batch_size` points per network call.
  """
  alphas = (np.arange(steps, dtype=np.float32) + 0.5) / steps
  grads = probe.map_chunks(lambda a: _path_gradients(model, variables, image, base, weights, a), alphas, batch_size)
  score, base_score = np.asarray(scores(model, variables, jnp.stack([image, base]), weights))
  return np.asarray(image - base) * grads.mean(0), float(score), float(base_score)


def integrated_gradients_to_tolerance(model: UNet, variables: Any, image: jax.Array, weights: jax.Array,
                                      base: jax.Array, steps: int = 64, max_steps: int = 512,
                                      tolerance: float = 0.01, batch_size: int = 8
                                      ) -> tuple[np.ndarray, float, float, int]:
  """`integrated_gradients` with steps doubled until the completeness error is below `tolerance`.

  Stops at `max_steps` whatever the error; returns (attributions f32[H, W], F(image), F(base), steps).
  A ReLU network's gradient jumps along the path, so the quadrature error falls only like 1/steps
  and an object with many kinks on its path needs more points than another.
  """
  while True:
    attr, score, base_score = integrated_gradients(model, variables, image, weights, base, steps, batch_size)
    if completeness_error(attr, score, base_score) < tolerance or 2 * steps > max_steps:
      return attr, score, base_score, steps
    steps *= 2


def completeness_error(attributions: np.ndarray, score: float, base_score: float) -> float:
  """|sum(attributions) - (F(x) - F(b))| / |F(x) - F(b)|: 0 for exact integrated gradients."""
  delta = score - base_score
  return float(abs(np.sum(attributions, dtype=np.float64) - delta) / max(abs(delta), 1e-12))


def smoothgrad(model: UNet, variables: Any, image: jax.Array, weights: jax.Array, key: jax.Array,
               samples: int = 16, noise: float = 0.1, batch_size: int = 8) -> np.ndarray:
  """Mean gradient f32[H, W] over `samples` copies of `image` plus N(0, (noise * range)^2)."""
  sigma = noise * (jnp.max(image) - jnp.min(image))
  noisy = np.asarray(image + sigma * jax.random.normal(key, (samples, *image.shape)))
  return probe.map_chunks(lambda x: input_gradients(model, variables, x, weights), noisy, batch_size).mean(0)


@functools.partial(jax.jit, static_argnames=("model", "layer"))
def seg_grad_cam(model: UNet, variables: Any, image: jax.Array, weights: jax.Array, layer: str) -> jax.Array:
  """Seg-Grad-CAM map f32[H, W] >= 0 at block `layer` for the object score, resized to the image."""
  probe.check_block(model, layer)
  shape = probe.feature_shapes(model, variables, (1, *image.shape))[layer]

  def score(delta):
    logits, features = probe.logits_edited(model, variables, image[None], {layer: lambda a: a + delta})
    return probe.weighted_outputs(model, logits, weights)[0], features[layer][0]

  grad, activation = jax.grad(score, has_aux=True)(jnp.zeros(shape))
  cam = jax.nn.relu(jnp.einsum("hwc,c->hw", activation, grad[0].mean((0, 1))))
  padded = tuple(s + (-s % f) for s, f in zip(image.shape, model.plan().size_factors))
  return jax.image.resize(cam, padded, "linear")[:image.shape[0], :image.shape[1]]


@functools.partial(jax.jit, static_argnames=("model",))
def _deleted_scores(model: UNet, variables: Any, image: jax.Array, weights: jax.Array, base: jax.Array,
                    rank: jax.Array, counts: jax.Array) -> jax.Array:
  images = jnp.where(rank[None] < counts[:, None, None], base[None], image[None])
  return probe.object_scores(model, variables, images, weights)


def deletion_curve(model: UNet, variables: Any, image: jax.Array, weights: jax.Array, base: jax.Array,
                   order: np.ndarray, points: int = 21, batch_size: int = 8) -> np.ndarray:
  """Object scores f32[points] after replacing the first k of `order` i32[H*W] pixels by `base`.

  k runs over `points` evenly spaced fractions 0, ..., 1 of the pixels.
  """
  order = np.asarray(order)
  rank = np.empty(order.size, np.int32)
  rank[order] = np.arange(order.size, dtype=np.int32)
  rank = jnp.asarray(rank.reshape(np.shape(image)))
  counts = np.round(np.linspace(0.0, 1.0, points) * order.size).astype(np.int32)
  return probe.map_chunks(lambda n: _deleted_scores(model, variables, image, weights, base, rank, n),
                          counts, batch_size)


def curve_area(curve: np.ndarray) -> float:
  """Area under a deletion curve sampled at evenly spaced fractions of [0, 1] (trapezoidal rule)."""
  curve = np.asarray(curve, np.float64)
  return float(np.trapezoid(curve, np.linspace(0.0, 1.0, len(curve))))


def most_attributed_first(attributions: np.ndarray) -> np.ndarray:
  """Pixel order i32[H*W] of decreasing attribution (the deletion order of a map f32[H, W])."""
  return np.argsort(-np.asarray(attributions).ravel(), kind="stable").astype(np.int32)
