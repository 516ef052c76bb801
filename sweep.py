"""Sweeps hyperparameters with Optuna: python sweep.py --config=configs/unet2d.py:tiny

Usage, flags and code: unet_jax/cli/sweep.py (`python sweep.py --help`); installed, the same is `unet-jax sweep`.
"""

from unet_jax.cli import main

if __name__ == "__main__":
  main.run_command("sweep")
