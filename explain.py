"""Shows how a trained U-Net arrived at each mitochondrion, and which filters did it.

Usage, flags and code: unet_jax/cli/explain.py (`python explain.py --help`); installed, the same is `unet-jax explain`.
"""

from unet_jax.cli import main

if __name__ == "__main__":
  main.run_command("explain")
