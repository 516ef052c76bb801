"""Scores trained U-Nets on labelled stacks and writes a report, or segments a TIFF / OME-Zarr stack.

Usage, flags and code: unet_jax/cli/evaluate.py (`python evaluate.py --help`); installed, the same is `unet-jax evaluate`.
"""

from unet_jax.cli import main

if __name__ == "__main__":
  main.run_command("evaluate")
