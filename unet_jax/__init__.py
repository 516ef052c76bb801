"""unet-jax: U-Net segmentation of mitochondria in volume electron microscopy, in JAX/Flax."""
