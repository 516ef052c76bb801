"""Exports a trained U-Net as a bioimage.io model package (ONNX weights) for Fiji, ilastik, napari, ...

Usage, flags and code: unet_jax/cli/export.py (`python export.py --help`); installed, the same is `unet-jax export`.
"""

from unet_jax.cli import main

if __name__ == "__main__":
  main.run_command("export")
