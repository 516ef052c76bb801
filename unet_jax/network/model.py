"""An N-dimensional U-Net in flax.linen with one output logit per class and pixel (voxel).

One class (the default) is the binary mitochondria model: one logit, a sigmoid. With `num_classes` = K > 1
the head has K logits, read either as K independent sigmoids (`output='sigmoid'`, overlapping classes
possible) or as one softmax over the K classes (`output='softmax'`, exactly one class per pixel); the
head keeps its name and its shapes for K = 1, so binary checkpoints load unchanged.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unet_jax.errors import InputError
from unet_jax.network.anisotropy import isotropic_plan, model_plan, Plan

NORMS = ("batch", "group", "none")
GROUPS = 8  # GroupNorm's groups: every level's width (base_features * 2**level) must divide by it
UPSAMPLES = ("transpose", "resize")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
OUTPUTS = ("sigmoid", "softmax")  # how logits become class probabilities


def _norm(kind: str, train: bool, axis_name: str | None, name: str) -> nn.Module | None:
  """Returns the normalisation layer `kind` ('batch', 'group' or 'none')."""
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                        axis_name=axis_name if train else None, name=name)
  if kind == "group":
    return nn.GroupNorm(num_groups=GROUPS, name=name)
  return None


def _blocks(x: jax.Array, factors: Sequence[int]) -> jax.Array:
  """x[B, *spatial, C] -> [B, s0 / f0, f0, s1 / f1, f1, ..., C]: every axis split into blocks of its factor."""
  b, *spatial, c = x.shape
  return x.reshape(b, *(d for s, f in zip(spatial, factors) for d in (s // f, f)), c)


def max_pool2(x: jax.Array, factors: Sequence[int] | None = None) -> jax.Array:
  """Max pooling of x[B, *spatial, C] by `factors` per axis (default 2 each; sizes divisible), stride = window.

  nn.max_pool's values, as a reshape and a max, so the gradient is elementwise rather than XLA's
  select-and-scatter, which is slow on CPU. (Exact ties share the gradient instead of the first
  element taking it.) A factor of 1 leaves its axis alone (anisotropic pooling, e.g. (1, 2, 2)).
  """
  spatial = x.shape[1:-1]
  factors = tuple(factors) if factors is not None else (2,) * len(spatial)
  return _blocks(x, factors).max(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


def space_to_depth(x: jax.Array, factors: Sequence[int]) -> jax.Array:
  """x[B, *spatial, C] -> [B, *(spatial / factors), prod(factors) * C]: each block of factors becomes channels.

  Lossless (a reshape and a transpose), so a network behind it sees every pixel at 1/factor the
  resolution: its convolutions cost prod(factors)x less, and XLA's CPU kernels run the wider, smaller
  tensors at a higher FLOP rate than full-resolution layers with few channels.
  """
  b, *spatial, _ = x.shape
  n = len(spatial)
  x = _blocks(x, factors).transpose(0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
  return x.reshape(b, *(s // f for s, f in zip(spatial, factors)), -1)


def depth_to_space(x: jax.Array, factors: Sequence[int]) -> jax.Array:
  """The inverse of `space_to_depth`: x[B, *spatial, prod(factors) * C] -> [B, *(spatial * factors), C]."""
  b, *spatial, _ = x.shape
  n = len(spatial)
  x = x.reshape(b, *spatial, *factors, -1)
  x = x.transpose(0, *(a for i in range(n) for a in (1 + i, 1 + n + i)), 1 + 2 * n)
  return x.reshape(b, *(s * f for s, f in zip(spatial, factors)), -1)


def conv_by_sections(conv: nn.Conv, x: jax.Array, depth_kernel: int) -> jax.Array:
  """The 3D convolution ('SAME', zero padding) of x[B, D, H, W, C] by a depth_kernel x k x k kernel, as a 2D one.

  Every section is stacked with its depth_kernel - 1 neighbours as channels (zeros beyond the ends)
  and `conv`, a k x k convolution with kernel f32[k, k, depth_kernel * C, C_out], runs on the B * D
  sections at once. The same sums as the 3D operation (kernel[dz, y, x, c] = this one's [y, x,
  dz * C + c]), but XLA's CPU 2D kernels are much faster: gradient 3.3x, forward 2.2x for 3 x 3 x 3
  (and 3.3x, 5x for 1 x 3 x 3, where nothing is stacked), measured on this project's CPU.
  """
  b, d = x.shape[:2]
  r = depth_kernel // 2
  padded = jnp.pad(x, ((0, 0), (r, r), (0, 0), (0, 0), (0, 0))) if r else x
  stacked = jnp.concatenate([padded[:, dz:dz + d] for dz in range(depth_kernel)], axis=-1)
  y = conv(stacked.reshape(b * d, *stacked.shape[2:]))
  return y.reshape(b, d, *y.shape[1:])


class ConvBlock(nn.Module):
  """Two (conv 3^N, norm, ReLU) layers; `kernel_size` per axis overrides 3^N (e.g. (1, 3, 3): in-plane)."""
  features: int
  ndim: int
  norm: str
  axis_name: str | None
  dtype: Any
  kernel_size: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kernel = self.kernel_size or (3,) * self.ndim
    for i in range(2):
      conv = nn.Conv(self.features, kernel[-2:], use_bias=self.norm == "none", dtype=self.dtype, name=f"conv{i}")
      x = conv_by_sections(conv, x, kernel[0]) if self.ndim == 3 else conv(x)
      norm = _norm(self.norm, train, self.axis_name, f"norm{i}")
      if norm is not None:
        x = norm(x)
      x = nn.relu(x)
    self.sow("intermediates", "features", x)
    return x


class UNet(nn.Module):
  """U-Net: `depth` poolings, widths base_features * 2**level, skip connections.

  Input f32[B, *spatial, in_channels]; output logits f32[B, *spatial, num_classes] (`probabilities` turns
  them into probabilities as `output` says). Each level's kernel and
  pooling factor per axis are `kernel_sizes` / `pool_factors` (None: 3 and 2 on every axis; see
  unet_jax/network/anisotropy.py); every spatial size must be divisible by the product of its axis's pooling
  factors, 2**depth by default (an `InputError` says so otherwise; sliding-window inference pads).
  A `stem` (model.space_to_depth) folds each in-plane block of s x s pixels into channels before level 0
  and unfolds the head's s * s logits per pixel back to full resolution: the same inputs and outputs at
  about 1/s**2 the cost, with the network's finest level at s times the pixel size.
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
  kernel_sizes: tuple[tuple[int, ...], ...] | None = None  # depth + 1 (encoder levels, bottleneck); None: 3s
  pool_factors: tuple[tuple[int, ...], ...] | None = None  # depth per-axis factors; None: 2s
  stem: tuple[int, ...] | None = None  # per-axis space-to-depth factors before level 0 (None: no stem)
  in_channels: int = 1  # input channels: 1, or 2k + 1 slices for 2.5D (unet_jax/inference/context.py)
  num_classes: int = 1  # output logits per pixel: 1 = binary (sigmoid), K > 1 = K classes
  output: str = "sigmoid"  # sigmoid (per class) | softmax (over classes); used by `probabilities`, not __call__

  def probabilities(self, logits: jax.Array) -> jax.Array:
    """Class probabilities f32[..., num_classes] of this network's logits."""
    return class_probabilities(logits, self.output)

  def plan(self) -> Plan:
    """The per-level kernels and pooling factors (explicit, or the isotropic default)."""
    default = isotropic_plan(self.ndim, self.depth)
    return Plan(self.kernel_sizes or default.kernel_sizes, self.pool_factors or default.pool_factors, self.stem)

  def check_input(self, shape: Sequence[int]) -> None:
    """Raises InputError unless `shape` = (B, *spatial, C) fits this network."""
    if len(shape) != self.ndim + 2:
      raise InputError(f"UNet{self.ndim}D expects input [B, {'D, ' if self.ndim == 3 else ''}H, W, C], "
                       f"got shape {tuple(shape)}")
    factors = self.plan().size_factors
    if any(s % f for s, f in zip(shape[1:-1], factors)):
      stem = f" times the space-to-depth stem {'x'.join(map(str, self.stem))}" if self.stem else ""
      raise InputError(f"input spatial size {tuple(shape[1:-1])} is not divisible by 2**depth={2 ** self.depth} on "
                       f"the pooled axes{stem} ({'x'.join(map(str, factors))} per axis); crop or pad the patch "
                       "(sliding-window inference pads automatically)")
    if shape[-1] != self.in_channels:
      raise InputError(f"the model takes {self.in_channels} input channel(s) (model.context_slices), got shape "
                       f"{tuple(shape)}")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.norm not in NORMS or self.upsample not in UPSAMPLES:
      raise InputError(f"model.norm must be one of {NORMS} and model.upsample one of {UPSAMPLES}, "
                       f"got {self.norm!r}, {self.upsample!r}")
    self.check_input(x.shape)
    plan = self.plan()
    block = lambda f, level, name: ConvBlock(f, self.ndim, self.norm, self.axis_name, self.dtype,
                                             plan.kernel_sizes[level], name=name)
    x = x.astype(self.dtype)
    if plan.stem:
      x = space_to_depth(x, plan.stem)
    skips = []
    for level in range(self.depth):
      x = block(self.base_features * 2 ** level, level, f"enc{level}")(x, train)
      skips.append(x)
      x = max_pool2(x, plan.pool_factors[level])
    x = block(self.base_features * 2 ** self.depth, self.depth, "bottleneck")(x, train)
    for level in reversed(range(self.depth)):
      features = self.base_features * 2 ** level
      window = plan.pool_factors[level]
      if self.upsample == "transpose":
        x = nn.ConvTranspose(features, window, strides=window, dtype=self.dtype, name=f"up{level}")(x)
      else:  # 1x1 conv at low resolution, then linear resize (the two commute)
        x = nn.Conv(features, (1,) * self.ndim, dtype=self.dtype, name=f"up{level}")(x)
        x = jax.image.resize(x, (x.shape[0], *(f * s for f, s in zip(window, x.shape[1:-1])), features), "linear",
                             antialias=False)  # same values when upsampling; exportable to ONNX
      x = jnp.concatenate([x, skips[level]], axis=-1)
      x = block(features, level, f"dec{level}")(x, train)
    outputs = self.num_classes * math.prod(plan.stem or (1,))
    logits = nn.Conv(outputs, (1,) * self.ndim, dtype=jnp.float32, name="head")(x).astype(jnp.float32)
    return depth_to_space(logits, plan.stem) if plan.stem else logits


def class_probabilities(logits: jax.Array, output: str = "sigmoid") -> jax.Array:
  """Probabilities f32[..., K] of logits f32[..., K]: a sigmoid per class, or a softmax over the last axis."""
  if output not in OUTPUTS:
    raise InputError(f"model.output must be one of {OUTPUTS}, got {output!r}")
  return jax.nn.softmax(logits, axis=-1) if output == "softmax" else jax.nn.sigmoid(logits)


def init_variables(model: UNet, key: jax.Array, in_channels: int | None = None) -> dict[str, Any]:
  """Fresh variables {'params', 'batch_stats'} of `model`, traced on the smallest valid input."""
  dummy = jnp.zeros((1, *model.plan().size_factors, in_channels or model.in_channels), jnp.float32)
  return jax.jit(model.init, static_argnames="train")(key, dummy, train=False)


def abstract_variables(model: UNet, in_channels: int | None = None) -> dict[str, Any]:
  """Shapes and dtypes (jax.ShapeDtypeStruct) of `model`'s variables, computed without allocating them."""
  return jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), in_channels))


def build_model(model_config: Any, axis_name: str | None = None) -> UNet:
  """Builds the UNet described by `config.model` (checked by `config_check.validate`).

  Kernels and pooling per level come from `anisotropy.model_plan` (model.kernel_sizes /
  model.pool_factors, else derived from model.voxel_size_nm); 2k + 1 input channels for 2.5D
  (model.context_slices = k); model.num_classes logits read by model.output (default 1, sigmoid).
  """
  plan = model_plan(model_config)
  return UNet(ndim=model_config.ndim, depth=model_config.depth,
              base_features=model_config.base_features, norm=model_config.norm,
              upsample=model_config.upsample, axis_name=axis_name,
              dtype=DTYPES[model_config.dtype], kernel_sizes=plan.kernel_sizes,
              pool_factors=plan.pool_factors, stem=plan.stem, in_channels=2 * model_config.get("context_slices", 0) + 1,
              num_classes=model_config.get("num_classes", 1), output=model_config.get("output", "sigmoid"))
