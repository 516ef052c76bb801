"""The U-Net as a pure function of an image with its blocks' outputs edited: the seam of every explanation.

Explanations need three things the plain `model.apply` does not give: the output of each block
(enc0..bottleneck..dec0, which the model sows as 'intermediates'), the gradient with respect to
that output, and the network's answer when some of its channels are zeroed. `logits_edited` gets
all three without changing the model: a flax method interceptor (`nn.intercept_methods`) passes
the output of each named `ConvBlock` through an edit function (add a zero perturbation whose
gradient is the block's gradient; multiply by a channel mask), while the sown intermediates give
the unedited outputs. Everything here is traceable: jit, grad and vmap apply to it as to the model.

An object's score is the sum of its pixels' logits (weights f32[H, W], 1 inside the object), the
quantity every attribution method explains. For a K-class model it is the sum of one class's probability
over the object (weights f32[H, W, K], the object in that class's channel: `class_weights`): softmax logits
are defined only up to a shift per pixel, so one class's logit alone is no evidence for that class.
"""

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.errors import InputError
from unet_jax.network.model import ConvBlock, UNet

Edit = Callable[[jax.Array], jax.Array]  # f32[B, h, w, C] -> f32[B, h, w, C]


def block_names(model: UNet) -> tuple[str, ...]:
  """The blocks in forward order: enc0 .. enc{depth-1}, bottleneck, dec{depth-1} .. dec0."""
  return (*(f"enc{i}" for i in range(model.depth)), "bottleneck",
          *(f"dec{i}" for i in reversed(range(model.depth))))


def block_level(model: UNet, name: str) -> int:
  """Poolings before block `name`: its output is 2**level times smaller than the input."""
  check_block(model, name)
  return model.depth if name == "bottleneck" else int(name[3:])


def block_channels(model: UNet, name: str) -> int:
  """Number of output channels of block `name`."""
  return model.base_features * 2 ** block_level(model, name)


def check_block(model: UNet, name: str) -> None:
  """Raises InputError unless `name` is one of the model's blocks."""
  if name not in block_names(model):
    raise InputError(f"unknown layer {name!r}; valid layers of this depth-{model.depth} U-Net: "
                     f"{', '.join(block_names(model))}")


def logits_edited(model: UNet, variables: Any, images: jax.Array,
                  edits: Mapping[str, Edit] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(logits f32[B, H, W, K], block outputs {name: f32[B, h, w, C]}) of 2D images f32[B, H, W].

  The output of each block named in `edits` is replaced by `edits[name](output)` before the rest
  of the network sees it; the returned block outputs are the unedited ones. Any H, W work: images
  are reflect-padded to a multiple of the size factors (2**depth, times a space-to-depth stem) and the
  logits cropped back (block outputs stay on the padded grid).
  """
  edits = edits or {}
  for name in edits:
    check_block(model, name)
  fy, fx = model.plan().size_factors
  _, h, w = images.shape
  padded = jnp.pad(images, ((0, 0), (0, -h % fy), (0, -w % fx)), mode="reflect")

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if isinstance(module, ConvBlock) and context.method_name == "__call__" and module.name in edits:
      out = edits[module.name](out)
    return out

  with nn.intercept_methods(interceptor):
    logits, state = model.apply(variables, padded[..., None], train=False, mutable=["intermediates"])
  features = {name: value["features"][0] for name, value in state.get("intermediates", {}).items()}
  return logits[:, :h, :w], features


def class_weights(pixels: np.ndarray, num_classes: int, class_index: int = 0) -> np.ndarray:
  """An object's weights: its pixels f32[H, W] for a binary model; for a K-class model f32[H, W, K], the pixels in
  channel `class_index` (the class whose probability the score sums)."""
  if num_classes == 1:
    return pixels
  weights = np.zeros((*pixels.shape, num_classes), np.float32)
  weights[..., class_index] = pixels
  return weights


def weighted_outputs(model: UNet, logits: jax.Array, weights: jax.Array) -> jax.Array:
  """f32[B]: the object scores of logits f32[B, H, W, K]: a binary model's logits weighted by `weights` f32[H, W]
  and summed, a K-class model's class probabilities weighted by `weights` f32[H, W, K] (`class_weights`)."""
  if logits.shape[-1] == 1:
    return jnp.einsum("bhw,hw->b", logits[..., 0], weights)
  if weights.ndim != 3:
    raise InputError(f"a {logits.shape[-1]}-class model's object weights need a class axis, got shape "
                     f"{weights.shape}; build them with probe.class_weights(pixels, num_classes, class_index)")
  return jnp.einsum("bhwk,hwk->b", model.probabilities(logits), weights)


def object_scores(model: UNet, variables: Any, images: jax.Array, weights: jax.Array,
                  edits: Mapping[str, Edit] | None = None) -> jax.Array:
  """f32[B]: each image's object score (`weighted_outputs`; weights 1 on the object's pixels)."""
  return weighted_outputs(model, logits_edited(model, variables, images, edits)[0], weights)


def feature_shapes(model: UNet, variables: Any, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
  """Shapes (B, h, w, C) of every block's output for inputs of `shape` (B, H, W); nothing is computed."""
  out = jax.eval_shape(lambda v: logits_edited(model, v, jnp.zeros(shape))[1], variables)
  return {name: tuple(s.shape) for name, s in out.items()}


def map_chunks(fn: Callable[[np.ndarray], Any], xs: np.ndarray, size: int) -> np.ndarray:
  """`fn` applied to `xs` [N, ...] `size` rows at a time, results [N, ...] concatenated on the host.

  The last chunk is padded by repeating its last row (so one compiled shape serves every chunk)
  and the padding's results dropped. Explanations loop over chunks in Python rather than under
  lax.map or lax.scan: on XLA:CPU a loop around the network's convolutions ran about 8x slower
  than the same calls made one by one.
  """
  xs = np.asarray(xs)
  n = len(xs)
  size = max(1, min(size, n))
  padded = np.concatenate([xs, np.repeat(xs[-1:], -n % size, axis=0)])
  return np.concatenate([np.asarray(fn(padded[i:i + size])) for i in range(0, len(padded), size)])[:n]
