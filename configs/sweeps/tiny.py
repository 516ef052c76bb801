"""A tiny search space for tests (seconds per trial):

  python sweep.py --config=configs/unet2d.py:tiny --space=configs/sweeps/tiny.py --workdir=/tmp/sweep --trials=2
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Learning rate, width and augmentation preset of the tiny config."""
  return ml_collections.ConfigDict({
      "optim": {"learning_rate": ("log_float", 1e-5, 1e-2)},
      "model": {"base_features": ("categorical", (4, 8))},
      "augment": {"preset": ("categorical", ("none", "flips"))},
  })
