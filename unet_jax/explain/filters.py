"""Which filters did it: channel importance for an object and for validation Dice, and what top filters see.

A "filter" is one output channel of a block (enc0..bottleneck..dec0; `probe.block_names`).
- Exact importance: the drop in the object score (or in Dice over validation tiles) when that
  channel is zeroed. The channel masks of a block form a batch, each element zeroing another
  channel (`batch_size` masks per network call, so memory stays bounded).
- First-order estimate (gradient x activation): zeroing channel c changes the score by about
  -sum_(h, w) dF/dA_c * A_c (a Taylor step from A to A with A_c = 0), so the estimated drop is
  sum_(h, w) G_c A_c, for every channel of every block from one backward pass.
- What a filter sees: first-layer kernels as images; the validation patches where a channel
  fires most (its receptive field around the maximum); an activation-maximisation image, found
  by gradient ascent on the input with random jitter, a little blur and clipping to [0, 1]
  (Olah et al. 2017's regularisers), for all pictured channels in one batch.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.explain import probe
from unet_jax.explain.attribution import gaussian_blur
from unet_jax.network.model import UNet


def _zeroing(layer: str, keep: jax.Array) -> dict[str, probe.Edit]:
  """Edits that multiply block `layer`'s output of batch element b by keep[b] f32[B, C]."""
  return {layer: lambda a: a * keep[:, None, None, :]}


@functools.partial(jax.jit, static_argnames=("model", "layer"))
def _scores_zeroed(model: UNet, variables: Any, image: jax.Array, weights: jax.Array, layer: str,
                   keep: jax.Array) -> jax.Array:
  images = jnp.broadcast_to(image, (keep.shape[0], *image.shape))
  return probe.object_scores(model, variables, images, weights, _zeroing(layer, keep))


def score_drop_per_channel(model: UNet, variables: Any, image: jax.Array, weights: jax.Array, layer: str,
                           batch_size: int = 16) -> np.ndarray:
  """F(image) - F(image with channel c of `layer` zeroed), f32[C], for the object score F.

  Row 0 of the channel masks keeps every channel (the unablated score); `batch_size` masks per call.
  """
  probe.check_block(model, layer)
  channels = probe.block_channels(model, layer)
  keep = np.concatenate([np.ones((1, channels)), 1.0 - np.eye(channels)]).astype(np.float32)
  scores = probe.map_chunks(lambda k: _scores_zeroed(model, variables, image, weights, layer, k), keep, batch_size)
  return scores[0] - scores[1:]


@functools.partial(jax.jit, static_argnames=("model",))
def gradient_x_activation(model: UNet, variables: Any, image: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
  """{block: f32[C]}: the first-order estimate sum_(h, w) dF/dA * A of each channel's score drop."""
  shapes = probe.feature_shapes(model, variables, (1, *image.shape))

  def score(deltas):
    edits = {name: (lambda d: lambda a: a + d)(deltas[name]) for name in shapes}
    logits, features = probe.logits_edited(model, variables, image[None], edits)
    return probe.weighted_outputs(model, logits, weights)[0], features

  grads, features = jax.grad(score, has_aux=True)({n: jnp.zeros(s) for n, s in shapes.items()})
  return {name: jnp.sum(grads[name] * features[name], axis=(0, 1, 2)) for name in shapes}


@functools.partial(jax.jit, static_argnames=("model", "layer", "class_index"))
def _dice_zeroed(model: UNet, variables: Any, tiles: jax.Array, truth: jax.Array, layer: str, threshold: float,
                 keep: jax.Array, class_index: int = 0) -> jax.Array:
  n = tiles.shape[0]
  images = jnp.tile(tiles, (keep.shape[0], 1, 1))
  logits = probe.logits_edited(model, variables, images, _zeroing(layer, jnp.repeat(keep, n, axis=0)))[0]
  if logits.shape[-1] == 1:
    pred = jax.nn.sigmoid(logits[..., 0]) >= threshold
  else:  # the label map's pixels of the class (argmax of logits = argmax of probabilities)
    pred = jnp.argmax(logits, axis=-1) == class_index
  pred = pred.reshape(keep.shape[0], -1)
  truth = truth.reshape(1, -1)
  total = pred.sum(1) + truth.sum()
  return jnp.where(total > 0, 2.0 * (pred & truth).sum(1) / jnp.maximum(total, 1), 1.0)


def dice_per_channel_zeroed(model: UNet, variables: Any, tiles: np.ndarray, masks: np.ndarray, layer: str,
                            threshold: float = 0.5, batch_size: int = 2, class_index: int = 0,
                            ) -> tuple[float, np.ndarray]:
  """(Dice, Dice f32[C] with channel c of `layer` zeroed) over tiles f32[N, H, W] and masks [N, H, W].

  Dice pools every tile's pixels (2 |P & T| / (|P| + |T|), 1 when both are empty); each call runs
  `batch_size` channel masks times N tiles. For a K-class model, masks are label maps and the Dice is that of
  class `class_index` in the argmax label map.
  """
  probe.check_block(model, layer)
  channels = probe.block_channels(model, layer)
  keep = np.concatenate([np.ones((1, channels)), 1.0 - np.eye(channels)]).astype(np.float32)
  truth = np.asarray(masks) == class_index if model.num_classes > 1 else np.asarray(masks).astype(bool)
  tiles, truth = jnp.asarray(tiles, jnp.float32), jnp.asarray(truth)
  dice = probe.map_chunks(lambda k: _dice_zeroed(model, variables, tiles, truth, layer, threshold, k, class_index),
                          keep, batch_size)
  return float(dice[0]), dice[1:]


def first_layer_kernels(variables: Any) -> np.ndarray:
  """The first convolution's kernels f32[C, k, k] (enc0/conv0, first input channel)."""
  kernel = np.asarray(variables["params"]["enc0"]["conv0"]["kernel"])
  return np.moveaxis(kernel[..., 0, :], -1, 0)


@functools.partial(jax.jit, static_argnames=("model", "layer"))
def block_activations(model: UNet, variables: Any, tiles: jax.Array, layer: str) -> jax.Array:
  """Outputs f32[N, h, w, C] of block `layer` for tiles f32[N, H, W] (on the padded grid)."""
  return probe.logits_edited(model, variables, tiles)[1][layer]


def top_activating_patches(model: UNet, variables: Any, tiles: np.ndarray, layer: str, channels: np.ndarray,
                           count: int = 6, patch: int = 48) -> tuple[np.ndarray, np.ndarray]:
  """(patches f32[K, count, patch, patch], activations f32[K, count]) where each channel fires most.

  For each of the K `channels` of `layer`, the `count` largest activations over tiles f32[N, H, W],
  at most one per (patch x patch) cell so that the patches differ; each patch is centred on its
  maximum (edge-padded at tile borders).
  """
  acts = np.asarray(block_activations(model, variables, jnp.asarray(tiles), layer))
  scale = 2 ** probe.block_level(model, layer)
  cell = max(1, patch // scale)
  n, h, w, _ = acts.shape
  hc, wc = -(-h // cell), -(-w // cell)
  padded = np.full((n, hc * cell, wc * cell, acts.shape[-1]), -np.inf, np.float32)
  padded[:, :h, :w] = acts
  cells = padded.reshape(n, hc, cell, wc, cell, -1).transpose(0, 1, 3, 5, 2, 4).reshape(n, hc, wc, -1, cell * cell)
  half = patch // 2
  framed = np.pad(tiles, ((0, 0), (half, half), (half, half)), mode="edge")
  patches, values = [], []
  for c in channels:
    best = cells[..., c, :]
    flat = best.max(-1).ravel()
    top = np.argsort(-flat, kind="stable")[:count]
    picked = []
    for index in top:
      t, i, j = np.unravel_index(index, (n, hc, wc))
      k = int(np.argmax(best[t, i, j]))
      y = min(tiles.shape[1] - 1, int(((i * cell + k // cell) + 0.5) * scale))
      x = min(tiles.shape[2] - 1, int(((j * cell + k % cell) + 0.5) * scale))
      picked.append(framed[t, y:y + 2 * half, x:x + 2 * half])
    patches.append(np.stack(picked))
    values.append(flat[top])
  return np.stack(patches), np.stack(values)


@functools.partial(jax.jit, static_argnames=("model", "layer", "jitter", "blur_sigma"))
def _ascent_step(model: UNet, variables: Any, layer: str, channels: jax.Array, images: jax.Array, key: jax.Array,
                 step_size: float, jitter: int, blur_sigma: float) -> jax.Array:
  def objective(x):
    features = probe.logits_edited(model, variables, x)[1][layer]
    centre = features[:, features.shape[1] // 2, features.shape[2] // 2, :]
    return jnp.take_along_axis(centre, channels[:, None], axis=1).sum()

  shift = jax.random.randint(key, (2,), -jitter, jitter + 1)
  g = jnp.roll(jax.grad(objective)(jnp.roll(images, shift, (1, 2))), -shift, (1, 2))
  images = images + step_size * g / (jnp.std(g, axis=(1, 2), keepdims=True) + 1e-8)
  return jnp.clip(jax.vmap(lambda x: gaussian_blur(x, blur_sigma))(images), 0.0, 1.0)


def maximize_activation(model: UNet, variables: Any, layer: str, channels: np.ndarray, key: jax.Array,
                        size: int = 96, steps: int = 128, step_size: float = 0.05, jitter: int = 4,
                        blur_sigma: float = 0.5) -> np.ndarray:
  """Images f32[K, size, size] in [0, 1] that maximise channels i32[K] of `layer` at the centre unit.

  Gradient ascent from grey plus faint noise, all K at once; each step rolls the images by a
  random shift of at most `jitter` pixels, takes a gradient step normalised per image, blurs by
  `blur_sigma` and clips.
  """
  probe.check_block(model, layer)
  channels = jnp.asarray(channels, jnp.int32)
  start_key, steps_key = jax.random.split(key)
  images = 0.5 + 0.01 * jax.random.normal(start_key, (channels.shape[0], size, size))
  for step_key in jax.random.split(steps_key, steps):
    images = _ascent_step(model, variables, layer, channels, images, step_key, step_size, jitter, blur_sigma)
  return np.asarray(images)
