"""The PyTorch twin of `unet_jax.network.model.UNet`, for like-for-like benchmarks against PyTorch tools.

Same layers in the same order: two (conv 3^N, norm, ReLU) per block, max-pool 2, and either a
transposed conv 2^N / stride 2 or a 1x1 conv followed by (bi/tri)linear x2 upsampling, skip
concatenation [up, skip], and a 1x1 head. Input f32[B, 1, *spatial] (channels first), output logits
f32[B, 1, *spatial]. `copy_flax_variables` loads flax weights so both compute the same function;
`make_train_step` is our training step (the config's loss, AdamW, clipping) for it; `LOSSES` are our
losses (unet_jax/training/losses.py) in PyTorch, equal to them on the same batch.

  from torch_unet import TorchUNet, copy_flax_variables  # benchmarks/ on the import path
  net = TorchUNet(depth=4, base_features=16, norm="batch", upsample="resize").eval()
  copy_flax_variables(net, variables)  # variables = {'params', 'batch_stats'} of the flax UNet
"""

from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def _layers(ndim: int) -> tuple[type, type, type, type]:
  """(Conv, ConvTranspose, BatchNorm, MaxPool) classes for `ndim` spatial dimensions."""
  if ndim == 2:
    return nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.MaxPool2d
  return nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d, nn.MaxPool3d


def _norm(kind: str, features: int, ndim: int) -> nn.Module:
  """BatchNorm (flax defaults: eps 1e-5), GroupNorm(8) (flax eps 1e-6) or identity."""
  if kind == "batch":
    return _layers(ndim)[2](features, eps=1e-5, momentum=0.1)
  if kind == "group":
    return nn.GroupNorm(8, features, eps=1e-6)
  return nn.Identity()


class ConvBlock(nn.Sequential):
  """Two (conv 3^N, norm, ReLU) layers; convs have a bias only without normalisation."""

  def __init__(self, in_features: int, features: int, ndim: int, norm: str):
    conv = _layers(ndim)[0]
    layers = []
    for i in range(2):
      layers += [conv(in_features if i == 0 else features, features, 3, padding=1, bias=norm == "none"),
                 _norm(norm, features, ndim), nn.ReLU(inplace=True)]
    super().__init__(*layers)


class TorchUNet(nn.Module):
  """U-Net: `depth` poolings, widths base_features * 2**level, skip connections (see module doc)."""

  def __init__(self, depth: int = 4, base_features: int = 32, norm: str = "batch",
               upsample: str = "transpose", ndim: int = 2, in_channels: int = 1, stem: int = 1):
    super().__init__()
    if stem > 1 and (ndim != 2 or in_channels != 1):
      raise ValueError("the twin's space-to-depth stem is 2D with one input channel (pixel (un)shuffle orders "
                       "channels as ours only then)")
    conv, conv_transpose, _, max_pool = _layers(ndim)
    width = lambda level: base_features * 2 ** level
    self.upsample, self.ndim = upsample, ndim
    # Our space_to_depth/depth_to_space with one channel in and one logit out: pixel (un)shuffle.
    self.unshuffle = nn.PixelUnshuffle(stem) if stem > 1 else nn.Identity()
    self.shuffle = nn.PixelShuffle(stem) if stem > 1 else nn.Identity()
    self.enc = nn.ModuleList(ConvBlock(in_channels * stem ** 2 if level == 0 else width(level - 1), width(level),
                                       ndim, norm) for level in range(depth))
    self.pool = max_pool(2)
    self.bottleneck = ConvBlock(width(depth - 1), width(depth), ndim, norm)
    self.up = nn.ModuleList(conv_transpose(width(level + 1), width(level), 2, stride=2) if upsample == "transpose"
                            else conv(width(level + 1), width(level), 1) for level in range(depth))
    self.dec = nn.ModuleList(ConvBlock(2 * width(level), width(level), ndim, norm) for level in range(depth))
    self.head = conv(width(0), stem ** 2, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.unshuffle(x)
    skips = []
    for block in self.enc:
      x = block(x)
      skips.append(x)
      x = self.pool(x)
    x = self.bottleneck(x)
    for level in reversed(range(len(self.dec))):
      x = self.up[level](x)
      if self.upsample == "resize":
        x = F.interpolate(x, scale_factor=2, mode="bilinear" if self.ndim == 2 else "trilinear",
                          align_corners=False)
      x = self.dec[level](torch.cat([x, skips[level]], 1))
    return self.shuffle(self.head(x))


def twin(model: Any) -> TorchUNet:
  """The TorchUNet of our flax `UNet` (e.g. `build_model(config.model)`): same depth, widths, norm, upsampling,
  input channels and stem."""
  return TorchUNet(depth=model.depth, base_features=model.base_features, norm=model.norm, upsample=model.upsample,
                   ndim=model.ndim, in_channels=model.in_channels, stem=model.stem[-1] if model.stem else 1)


def _copy_conv(conv: nn.Module, params: dict[str, Any], transpose: bool = False) -> None:
  """Flax kernel [*k, in, out] -> torch [out, in, *k] (conv) or [in, out, *k] (transposed, flipped)."""
  kernel = np.asarray(params["kernel"])
  ndim = kernel.ndim - 2
  if transpose:  # flax conv_transpose does not flip the kernel; torch's (the conv gradient) does
    kernel = np.flip(kernel, tuple(range(ndim))).transpose(ndim, ndim + 1, *range(ndim))
  else:
    kernel = kernel.transpose(ndim + 1, ndim, *range(ndim))
  conv.weight.copy_(torch.tensor(kernel.copy()))
  if "bias" in params:
    conv.bias.copy_(torch.tensor(np.asarray(params["bias"])))


def _copy_block(block: ConvBlock, params: dict[str, Any], stats: dict[str, Any]) -> None:
  """Loads one flax ConvBlock (conv0, norm0, conv1, norm1) into `block`."""
  for i in range(2):
    _copy_conv(block[3 * i], params[f"conv{i}"])
    norm = block[3 * i + 1]
    if f"norm{i}" in params:
      norm.weight.copy_(torch.tensor(np.asarray(params[f"norm{i}"]["scale"])))
      norm.bias.copy_(torch.tensor(np.asarray(params[f"norm{i}"]["bias"])))
    if f"norm{i}" in stats:
      norm.running_mean.copy_(torch.tensor(np.asarray(stats[f"norm{i}"]["mean"])))
      norm.running_var.copy_(torch.tensor(np.asarray(stats[f"norm{i}"]["var"])))


@torch.no_grad()
def copy_flax_variables(net: TorchUNet, variables: dict[str, Any]) -> TorchUNet:
  """Loads flax UNet `variables` {'params', 'batch_stats'?} into `net` (same configuration); returns it."""
  params, stats = variables["params"], variables.get("batch_stats", {})
  for level, block in enumerate(net.enc):
    _copy_block(block, params[f"enc{level}"], stats.get(f"enc{level}", {}))
  _copy_block(net.bottleneck, params["bottleneck"], stats.get("bottleneck", {}))
  for level, block in enumerate(net.dec):
    _copy_conv(net.up[level], params[f"up{level}"], transpose=net.upsample == "transpose")
    _copy_block(block, params[f"dec{level}"], stats.get(f"dec{level}", {}))
  _copy_conv(net.head, params["head"])
  return net


def soft_dice(logits: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
  """Soft Dice of the batch sums, (2 sum(p m) + smooth) / (sum p + sum m + smooth), as losses.soft_dice."""
  probs = torch.sigmoid(logits)
  return (2 * (probs * mask).sum() + smooth) / (probs.sum() + mask.sum() + smooth)


def log_dice_loss(logits: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
  """-ln(soft Dice), as unet_jax.training.losses.log_dice_loss."""
  return -torch.log(soft_dice(logits, mask, smooth))


def bce_dice_loss(logits: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
  """Mean binary cross-entropy per pixel plus (1 - soft Dice), as unet_jax.training.losses.bce_dice_loss."""
  return F.binary_cross_entropy_with_logits(logits, mask) + 1 - soft_dice(logits, mask, smooth)


LOSSES = {"log_dice": log_dice_loss, "bce_dice": bce_dice_loss}  # the train.loss values the peers train with


def make_train_step(net: TorchUNet, config: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """(image, mask) f32[B, 1, *spatial] -> loss: one step of our config's train.loss (one of LOSSES) and
  train.smooth, AdamW with `config.optim`'s learning rate, weight decay and global-norm clipping (constant
  learning rate)."""
  loss_fn = LOSSES[config.train.loss]
  optim = torch.optim.AdamW(net.parameters(), lr=config.optim.learning_rate,
                            weight_decay=config.optim.weight_decay, eps=1e-8)

  def step(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    optim.zero_grad(set_to_none=True)
    loss = loss_fn(net(image), mask, config.train.smooth)
    loss.backward()
    if config.optim.grad_clip:
      torch.nn.utils.clip_grad_norm_(net.parameters(), config.optim.grad_clip)
    optim.step()
    return loss.detach()
  return step
