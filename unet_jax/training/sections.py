"""EM section artefacts as per-example augmentation of 3D patches, on device, keyed by PRNG.

Serial-section EM (ssTEM such as VNC, also FIB-SEM and serial block-face) is cut and imaged section
by section, and its typical defects are per section. Following Lee et al. 2017 ("Superhuman accuracy
on the SNEMI3D connectomics challenge") and PyTorch Connectomics (MisAlignment, MissingSection), a
3D patch image f32[D, H, W, C] with mask f32[D, H, W, 1] gets, each with its own probability:

1. misalignment: the sections from a random one on ("translation") or that one section alone
   ("slip", half of the draws) are shifted in the (H, W) plane by a nonzero integer (dy, dx) within
   +-`misalign_pixels`,
   image and mask together (an annotation follows the image it was drawn on). Borders are mirrored
   (`augment.mirror`), so nothing is constant-filled and the mask stays binary and aligned;
2. per-section intensity: every section its own contrast factor (uniform in `section_contrast`,
   about the section's mean) and brightness offset (uniform in +-`section_brightness`), then the
   image is clipped to [0, 1] like `augment.augment_intensity`;
3. missing section: one section of the image is blanked (0, as an unimaged section) or duplicated
   from its neighbour (half of the draws each). The labels follow what the network sees: a
   duplicated section takes its neighbour's mask with its image, and a blanked one gets loss weight
   0 (the third output, f32[D, H, W, 1]), since no label can be read off a blank section; its
   neighbours still train the network to bridge the gap.

`augment.augment_example` calls `augment_sections` for 3D patches after its own transforms, and
`augment_slab_sections` for 2.5D patches (unet_jax/inference/context.py: image f32[H, W, 2k + 1], the slices
as channels, the mask of the centre slice), whose 2k + 1 slices are sections like a 3D patch's; the
centre mask moves with the centre section and its weight is the centre section's. A probability of 0
is not traced; a draw that does not fire returns its input bit for bit (and weight 1).
"""

from typing import Any

import jax
import jax.numpy as jnp



def fold_indices(indices: jax.Array, size: int) -> jax.Array:
  """Integer indices folded into [0, size - 1] by mirroring about the edge pixels (as augment.mirror)."""
  if size == 1:
    return jnp.zeros_like(indices, jnp.int32)
  return ((size - 1) - jnp.abs(jnp.mod(indices, 2 * (size - 1)) - (size - 1))).astype(jnp.int32)


def shift_plane(x: jax.Array, dy: jax.Array, dx: jax.Array) -> jax.Array:
  """x[D, H, W, C] shifted by (dy, dx) integer pixels in the (H, W) plane, mirrored at the borders."""
  _, height, width, _ = x.shape
  rows = fold_indices(jnp.arange(height) - dy, height)
  cols = fold_indices(jnp.arange(width) - dx, width)
  return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)


def misalign(key: jax.Array, image: jax.Array, mask: jax.Array, prob: float,
             max_pixels: int) -> tuple[jax.Array, jax.Array]:
  """Shifts the sections from a random one on (or that one alone) in-plane, image and mask alike."""
  depth = image.shape[0]
  fire_key, start_key, shift_key = jax.random.split(key, 3)
  fired, slip = jax.random.uniform(fire_key, (2,)) < jnp.array([prob, 0.5])
  start = jax.random.randint(start_key, (), 1, max(depth, 2))  # the first moved section (never all of them)
  side = 2 * max_pixels + 1  # a shift uniform over the side^2 - 1 nonzero (dy, dx) in +-max_pixels
  index = jax.random.randint(shift_key, (), 0, side * side - 1)
  index = index + (index >= side * side // 2)
  dy, dx = index // side - max_pixels, index % side - max_pixels
  z = jnp.arange(depth)
  moved = fired & jnp.where(slip, z == start, z >= start)[:, None, None, None]
  return (jnp.where(moved, shift_plane(image, dy, dx), image),
          jnp.where(moved, shift_plane(mask, dy, dx), mask))


def section_intensity(key: jax.Array, image: jax.Array, prob: float, brightness: float,
                      contrast: tuple[float, float]) -> jax.Array:
  """Per-section contrast (about each section's mean) and brightness of image f32[D, H, W, C], clipped to [0, 1]."""
  depth = image.shape[0]
  fire_key, value_key = jax.random.split(key)
  u = jax.random.uniform(value_key, (2, depth, 1, 1, 1))
  factor = contrast[0] + (contrast[1] - contrast[0]) * u[0]
  offset = brightness * (2.0 * u[1] - 1.0)
  mean = jnp.mean(image, axis=(1, 2, 3), keepdims=True)
  changed = jnp.clip((image - mean) * factor + mean + offset, 0.0, 1.0)
  return jnp.where(jax.random.uniform(fire_key) < prob, changed, image)


def missing_section(key: jax.Array, image: jax.Array, mask: jax.Array,
                    prob: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One section of image f32[D, H, W, C] blanked to 0 or replaced by its neighbour; returns (image, mask, weight).

  A duplicated section takes its neighbour's mask too; a blanked one keeps its mask at loss weight 0
  (weight f32[D, H, W, 1], 1 elsewhere), so no label asks for structure the image does not show.
  """
  depth = image.shape[0]
  fire_key, which_key = jax.random.split(key)
  fired, duplicate = jax.random.uniform(fire_key, (2,)) < jnp.array([prob, 0.5])
  section = jax.random.randint(which_key, (), 0, depth)
  neighbour = jnp.where(section > 0, section - 1, jnp.minimum(section + 1, depth - 1))
  replacement = jnp.where(duplicate, image[neighbour], jnp.zeros_like(image[0]))
  hit = fired & (jnp.arange(depth) == section)[:, None, None, None]
  weight = jnp.where(hit & ~duplicate, 0.0, jnp.ones(mask.shape, jnp.float32))
  return (jnp.where(hit, replacement[None], image), jnp.where(hit & duplicate, mask[neighbour][None], mask),
          weight)


def augment_sections(key: jax.Array, image: jax.Array, mask: jax.Array,
                     config: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Section artefacts (module docstring) of one 3D example: image f32[D, H, W, C], mask f32[D, H, W, 1];
  returns (image, mask, loss weight f32[D, H, W, 1])."""
  misalign_key, intensity_key, missing_key = jax.random.split(key, 3)
  weight = jnp.ones(mask.shape, jnp.float32)
  if config.get("misalign_prob", 0.0) and config.misalign_pixels:
    image, mask = misalign(misalign_key, image, mask, config.misalign_prob, int(config.misalign_pixels))
  if config.get("section_intensity_prob", 0.0):
    image = section_intensity(intensity_key, image, config.section_intensity_prob, config.section_brightness,
                              tuple(config.section_contrast))
  if config.get("missing_section_prob", 0.0):
    image, mask, weight = missing_section(missing_key, image, mask, config.missing_section_prob)
  return image, mask, weight


def augment_slab_sections(key: jax.Array, image: jax.Array, mask: jax.Array,
                          config: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`augment_sections` of one 2.5D example: image f32[H, W, S] (S sections), mask and weight f32[H, W, 1] of the
  centre one."""
  sections = image.shape[-1]
  volume = jnp.moveaxis(image, -1, 0)[..., None]  # f32[S, H, W, 1]
  masks = jnp.broadcast_to(mask[None], (sections, *mask.shape))  # each section carries the centre mask
  volume, masks, weights = augment_sections(key, volume, masks, config)
  return jnp.moveaxis(volume[..., 0], 0, -1), masks[sections // 2], weights[sections // 2]
