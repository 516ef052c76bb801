"""Per-level convolution kernels and pooling factors of a U-Net, derived from the voxel size.

Serial-section EM is anisotropic: VNC's sections are 50 nm thick, its pixels 4.6 nm. A 3x3x3
kernel at full resolution would then span 150 nm across sections but 14 nm in the plane, and
pooling all axes alike would keep the 11:1 ratio at every level. nnU-Net's planner (Isensee et al.
2021, `get_pool_and_conv_props`) and PyTorch Connectomics' MitoEM models instead treat an axis as
"coarse" while its current spacing is at least `MAX_RATIO` times the finest one: a coarse axis
gets kernel 1 (no convolution across it) and pooling factor 1 (it is not pooled); every other axis
gets kernel 3 and pooling 2. Pooling the fine axes doubles their spacing, so the ratio halves per
level until it drops below 2; from then on all axes are convolved and pooled together, so the ratio
stays in [1, 2) and deeper levels see voxels as isotropic as a factor-2 grid allows. Why 2: pooling
an axis whose spacing is already twice the finest would leave it 4x coarser than the others, while
any ratio below 2 would not shrink further by skipping a pooling (it would flip to the other side).

VNC (50, 4.6, 4.6) nm with depth 4 gives kernels (1,3,3) and pooling (1,2,2) at levels 0-2 (spacing
(50, 36.8, 36.8) nm at level 3), then (3,3,3) and (2,2,2); an isotropic voxel gives 3 and 2 on
every axis, which is the U-Net's default (the same parameters as before this module existed).
A config may give `model.kernel_sizes` / `model.pool_factors` explicitly instead (empty: derive), or
`model.in_plane=True` (3D only): 1x3x3 kernels and 1x2x2 pooling at every level, nothing across
sections. That network is the 2D U-Net run section by section (with the 2D weights,
`volumes.in_plane_variables`), a diagnostic that tells what the 3D pipeline costs apart from 3D kernels.
"""

import math
from typing import Any, NamedTuple, Sequence

from unet_jax.errors import InputError

MAX_RATIO = 2.0  # an axis is convolved and pooled once its spacing is below 2x the finest spacing


class Plan(NamedTuple):
  """kernel_sizes: depth + 1 per-axis kernels (encoder levels, then the bottleneck; the decoder
  mirrors the encoder); pool_factors: depth per-axis pooling (and upsampling) factors; stem: the
  per-axis factor of the space-to-depth input and depth-to-space output (None: 1, no stem)."""
  kernel_sizes: tuple[tuple[int, ...], ...]
  pool_factors: tuple[tuple[int, ...], ...]
  stem: tuple[int, ...] | None = None

  @property
  def size_factors(self) -> tuple[int, ...]:
    """Per axis, the product of the stem's and the pooling factors: input sizes must be divisible by it."""
    ndim = len(self.kernel_sizes[0])
    stem = self.stem or (1,) * ndim
    return tuple(stem[a] * math.prod(p[a] for p in self.pool_factors) for a in range(ndim))


def stem_factors(ndim: int, space_to_depth: int) -> tuple[int, ...] | None:
  """The stem of `model.space_to_depth` = s: s on the in-plane axes (y, x), 1 across sections; None for s = 1."""
  if not isinstance(space_to_depth, int) or isinstance(space_to_depth, bool) or not 1 <= space_to_depth <= 8:
    raise InputError(f"model.space_to_depth={space_to_depth} must be 1 (off) or an integer factor in [2, 8]")
  return None if space_to_depth == 1 else (1,) * (ndim - 2) + (space_to_depth,) * 2


def isotropic_plan(ndim: int, depth: int) -> Plan:
  """3 on every axis at every level, pooling 2: the classic U-Net."""
  return Plan(((3,) * ndim,) * (depth + 1), ((2,) * ndim,) * depth)


def in_plane_plan(depth: int) -> Plan:
  """1x3x3 kernels and 1x2x2 pooling at every level: a 3D network that never mixes sections."""
  return Plan(((1, 3, 3),) * (depth + 1), ((1, 2, 2),) * depth)


def derive_plan(voxel_size_nm: Sequence[float], ndim: int, depth: int) -> Plan:
  """The nnU-Net-style plan (module docstring) for the last `ndim` entries of `voxel_size_nm` (z, y, x)."""
  if len(voxel_size_nm) < ndim or any(not s > 0 for s in voxel_size_nm):
    raise InputError(f"data.voxel_size_nm={tuple(voxel_size_nm)} must hold {ndim} or more positive sizes "
                     f"for a {ndim}D model")
  spacing = [float(s) for s in voxel_size_nm[len(voxel_size_nm) - ndim:]]
  kernels, pools = [], []
  for level in range(depth + 1):
    fine = [s < MAX_RATIO * min(spacing) for s in spacing]
    kernels.append(tuple(3 if f else 1 for f in fine))
    if level < depth:
      pools.append(tuple(2 if f else 1 for f in fine))
      spacing = [s * p for s, p in zip(spacing, pools[-1])]
  return Plan(tuple(kernels), tuple(pools))


def _per_level(value: Any, count: int, ndim: int, name: str, allowed: str, ok: Any) -> tuple[tuple[int, ...], ...]:
  """`value` as `count` tuples of `ndim` ints accepted by `ok`; InputError naming `name` otherwise."""
  try:
    levels = tuple(tuple(int(v) for v in level) for level in value)
    valid = len(levels) == count and all(len(l) == ndim and all(ok(v) for v in l) for l in levels)
  except (TypeError, ValueError):
    valid = False
  if not valid:
    raise InputError(f"model.{name}={value!r} must be empty (derived from data.voxel_size_nm) or {count} "
                     f"tuples of {ndim} {allowed}")
  return levels


def model_plan(model_config: Any) -> Plan:
  """The plan of `config.model`: in-plane only (`in_plane`), explicit `kernel_sizes` / `pool_factors`, else derived
  from voxel_size_nm; the stem from `space_to_depth`.

  The derived plan starts from the spacing the first level sees: a stem of s makes the in-plane voxels s times
  coarser, so the axes become fine (convolved and pooled) levels earlier on anisotropic data.
  """
  ndim, depth = model_config.ndim, model_config.depth
  stem = stem_factors(ndim, model_config.get("space_to_depth", 1))
  if model_config.get("in_plane", False):
    if ndim != 3 or model_config.get("kernel_sizes", ()) or model_config.get("pool_factors", ()):
      raise InputError(f"model.in_plane=True is for 3D models (model.ndim=3, got {ndim}) without explicit "
                       "model.kernel_sizes / model.pool_factors; set those to () or model.in_plane=False")
    return in_plane_plan(depth)._replace(stem=stem)
  voxel_size = model_config.get("voxel_size_nm") or (1.0,) * ndim
  if stem:
    head, tail = tuple(voxel_size[:len(voxel_size) - ndim]), voxel_size[len(voxel_size) - ndim:]
    voxel_size = (*head, *(v * f for v, f in zip(tail, stem)))
  derived = derive_plan(voxel_size, ndim, depth)
  kernels, pools = model_config.get("kernel_sizes", ()), model_config.get("pool_factors", ())
  return Plan(
      _per_level(kernels, depth + 1, ndim, "kernel_sizes", "odd kernel sizes >= 1", lambda k: k >= 1 and k % 2)
      if kernels else derived.kernel_sizes,
      _per_level(pools, depth, ndim, "pool_factors", "pooling factors >= 1", lambda p: p >= 1)
      if pools else derived.pool_factors,
      stem)


def describe(plan: Plan, voxel_size_nm: Sequence[float] | None = None) -> str:
  """One line per level: kernel, pooling and (given the voxel size) the spacing it sees."""
  x = lambda t: "x".join(f"{v:g}" for v in t)
  ndim = len(plan.kernel_sizes[0])
  spacing = None if voxel_size_nm is None else [float(s) for s in voxel_size_nm[len(voxel_size_nm) - ndim:]]
  lines = [f"U-Net plan ({ndim}D): inputs divisible by {x(plan.size_factors)}"]
  if plan.stem:
    lines.append(f"  stem: space-to-depth {x(plan.stem)} (and depth-to-space of the logits)")
    if spacing is not None:
      spacing = [s * f for s, f in zip(spacing, plan.stem)]
  for level, kernel in enumerate(plan.kernel_sizes):
    name = "bottleneck" if level == len(plan.pool_factors) else f"level {level}"
    line = f"  {name}: kernel {x(kernel)}"
    if level < len(plan.pool_factors):
      line += f", pool {x(plan.pool_factors[level])}"
    if spacing is not None:
      line += f", voxel {x(round(s, 1) for s in spacing)} nm"
      if level < len(plan.pool_factors):
        spacing = [s * p for s, p in zip(spacing, plan.pool_factors[level])]
    lines.append(line)
  return "\n".join(lines)

