"""The second, local search for the default recipe (issue 14): around the incumbent, on the knobs that
keep its step time. On this 2-core CPU the broad search (configs/sweeps/recipe.py, README "Default
recipe") showed that width 24/32, GroupNorm, batch 16 and 320^2 patches cost 2-10x the step time and
stall within a short budget; they stay at the incumbent's values here:

  python sweep.py --config=configs/unet2d.py:vnc --space=configs/sweeps/recipe_local.py \
      --workdir=runs/sweep_local5 --trials=8 --config.train.budget_minutes=5 --config.train.eval_every=100 \
      --config.eval.engine=xla --config.eval.tta=none

Scored as recipe.py's trials: best validation Dice, each validation at its val-chosen threshold.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Loss, foreground-centred patches, learning rate and warm-up, patch size, augmentation, weight EMA."""
  return ml_collections.ConfigDict({
      "train": {
          "loss": ("categorical", ("log_dice", "bce_dice")),
          "fg_fraction": ("float", 0.3, 0.8),
          "patch_size": ("categorical", (192, 256)),
          "ema_decay": ("categorical", (0.0, 0.99)),
      },
      "optim": {
          "learning_rate": ("log_float", 5e-4, 4e-3),
          "warmup_steps": ("int", 10, 100, 10),
      },
      "augment": {"preset": ("categorical", ("flips", "full"))},
  })
