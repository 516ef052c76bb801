"""Trains a U-Net: python train.py --config=configs/unet2d.py:synthetic --workdir=runs/syn

Usage, flags and code: unet_jax/cli/train.py (`python train.py --help`); installed, the same is `unet-jax train`.
"""

from unet_jax.cli import main

if __name__ == "__main__":
  main.run_command("train")
