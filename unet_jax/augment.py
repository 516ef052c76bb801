"""Per-example augmentation on device: pure functions of a PRNG key, vmapped over the batch."""

from typing import Any

import jax
import jax.numpy as jnp


def dihedral(x: jax.Array, index: jax.Array, spatial_axes: tuple[int, int]) -> jax.Array:
  """The `index`-th (0..7) of the 8 flips/90-degree rotations of `x` in the plane `spatial_axes`."""
  a, b = spatial_axes
  square = x.shape[a] == x.shape[b]
  def transform(i: int) -> Any:
    def f(y: jax.Array) -> jax.Array:
      if square and i % 4:
        y = jnp.rot90(y, i % 4, axes=(a, b))
      elif not square and i % 4 in (1, 3):
        y = jnp.flip(y, a)
      return jnp.flip(y, b) if i >= 4 else y
    return f
  return jax.lax.switch(index, [transform(i) for i in range(8)], x)


def augment_example(key: jax.Array, image: jax.Array, mask: jax.Array,
                    config: Any) -> tuple[jax.Array, jax.Array]:
  """Augments one example image/mask f32[*spatial, 1] identically in geometry."""
  if config.flips:
    spatial = (image.ndim - 3, image.ndim - 2)
    index = jax.random.randint(key, (), 0, 8)
    image, mask = dihedral(image, index, spatial), dihedral(mask, index, spatial)
  return image, mask


def augment_batch(keys: jax.Array, images: jax.Array, masks: jax.Array,
                  config: Any) -> tuple[jax.Array, jax.Array]:
  """`augment_example` vmapped with one key per example."""
  return jax.vmap(lambda k, x, m: augment_example(k, x, m, config))(keys, images, masks)
