"""An N-dimensional U-Net in flax.linen with one output logit per pixel (voxel)."""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unet_jax.errors import InputError

NORMS = ("batch", "group", "none")
UPSAMPLES = ("transpose", "resize")


def _norm(kind: str, train: bool, axis_name: str | None, name: str) -> nn.Module | None:
  """Returns the normalisation layer `kind` ('batch', 'group' or 'none')."""
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                        axis_name=axis_name if train else None, name=name)
  if kind == "group":
    return nn.GroupNorm(num_groups=8, name=name)
  return None


def max_pool2(x: jax.Array) -> jax.Array:
  """2^N max pooling with stride 2 of x[B, *spatial, C] (even sizes): nn.max_pool's values.

  A reshape and a max, so the gradient is elementwise rather than XLA's select-and-scatter, which
  is slow on CPU. (Exact ties share the gradient instead of the first element taking it.)
  """
  b, *spatial, c = x.shape
  x = x.reshape(b, *(d for s in spatial for d in (s // 2, 2)), c)
  return x.max(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


class ConvBlock(nn.Module):
  """Two (conv 3^N, norm, ReLU) layers."""
  features: int
  ndim: int
  norm: str
  axis_name: str | None
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(2):
      x = nn.Conv(self.features, (3,) * self.ndim, use_bias=self.norm == "none",
                  dtype=self.dtype, name=f"conv{i}")(x)
      norm = _norm(self.norm, train, self.axis_name, f"norm{i}")
      if norm is not None:
        x = norm(x)
      x = nn.relu(x)
    self.sow("intermediates", "features", x)
    return x


class UNet(nn.Module):
  """U-Net: `depth` poolings, widths base_features * 2**level, skip connections.

  Input f32[B, *spatial, C]; output logits f32[B, *spatial, 1]. Every spatial size must be
  divisible by 2**depth (an `InputError` says so otherwise; sliding-window inference pads for you).
  Each block's output is sown as 'intermediates' / {`enc{i}`, `bottleneck`, `dec{i}`} / 'features'
  for explainability: `model.apply(..., mutable=['intermediates'])`.
  """
  ndim: int = 2
  depth: int = 4
  base_features: int = 16
  norm: str = "batch"
  upsample: str = "resize"
  axis_name: str | None = None  # mesh axis for cross-device batch statistics when training
  dtype: Any = jnp.float32      # compute dtype (params stay float32)

  def check_input(self, shape: Sequence[int]) -> None:
    """Raises InputError unless `shape` = (B, *spatial, C) fits this network."""
    if len(shape) != self.ndim + 2:
      raise InputError(f"UNet{self.ndim}D expects input [B, {'D, ' if self.ndim == 3 else ''}H, W, C], "
                       f"got shape {tuple(shape)}")
    factor = 2 ** self.depth
    bad = [s for s in shape[1:-1] if s % factor]
    if bad:
      raise InputError(f"input spatial size {tuple(shape[1:-1])} is not divisible by 2**depth={factor}; "
                       f"crop or pad the patch (sliding-window inference pads automatically)")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.norm not in NORMS or self.upsample not in UPSAMPLES:
      raise InputError(f"model.norm must be one of {NORMS} and model.upsample one of {UPSAMPLES}, "
                       f"got {self.norm!r}, {self.upsample!r}")
    self.check_input(x.shape)
    block = lambda f, name: ConvBlock(f, self.ndim, self.norm, self.axis_name, self.dtype, name=name)
    window = (2,) * self.ndim
    x = x.astype(self.dtype)
    skips = []
    for level in range(self.depth):
      x = block(self.base_features * 2 ** level, f"enc{level}")(x, train)
      skips.append(x)
      x = max_pool2(x)
    x = block(self.base_features * 2 ** self.depth, "bottleneck")(x, train)
    for level in reversed(range(self.depth)):
      features = self.base_features * 2 ** level
      if self.upsample == "transpose":
        x = nn.ConvTranspose(features, window, strides=window, dtype=self.dtype, name=f"up{level}")(x)
      else:  # 1x1 conv at low resolution, then linear resize (the two commute)
        x = nn.Conv(features, (1,) * self.ndim, dtype=self.dtype, name=f"up{level}")(x)
        x = jax.image.resize(x, (x.shape[0], *(2 * s for s in x.shape[1:-1]), features), "linear",
                             antialias=False)  # same values when upsampling; exportable to ONNX
      x = jnp.concatenate([x, skips[level]], axis=-1)
      x = block(features, f"dec{level}")(x, train)
    return nn.Conv(1, (1,) * self.ndim, dtype=jnp.float32, name="head")(x).astype(jnp.float32)


def init_variables(model: UNet, key: jax.Array, in_channels: int = 1) -> dict[str, Any]:
  """Fresh variables {'params', 'batch_stats'} of `model`, traced on the smallest valid input."""
  dummy = jnp.zeros((1, *(2 ** model.depth,) * model.ndim, in_channels), jnp.float32)
  return jax.jit(model.init, static_argnames="train")(key, dummy, train=False)


def abstract_variables(model: UNet, in_channels: int = 1) -> dict[str, Any]:
  """Shapes and dtypes (jax.ShapeDtypeStruct) of `model`'s variables, computed without allocating them."""
  return jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), in_channels))


def build_model(model_config: Any, axis_name: str | None = None) -> UNet:
  """Builds the UNet described by `config.model`."""
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if model_config.dtype not in dtypes:
    raise InputError(f"model.dtype must be one of {sorted(dtypes)}, got {model_config.dtype!r}")
  return UNet(ndim=model_config.ndim, depth=model_config.depth,
              base_features=model_config.base_features, norm=model_config.norm,
              upsample=model_config.upsample, axis_name=axis_name,
              dtype=dtypes[model_config.dtype])
