"""The search for a better default recipe at a fixed budget (issue 14), e.g. 20 minutes a trial on VNC:

  python sweep.py --config=configs/unet2d.py:vnc --space=configs/sweeps/recipe.py --workdir=runs/sweep_recipe \
      --trials=24 --config.train.budget_minutes=20 --config.eval.engine=xla --config.eval.tta=none

Validations run on XLA (GroupNorm trials have no ONNX export) without test-time augmentation
(cheaper; `eval.tta` is an inference choice, made afterwards on val). Each trial trains for the
budget (its step count measured and logged, unet_jax/training/trainer.py) and is scored by its best
validation Dice, each validation at the decision threshold that is best on the val split
(`eval.select_threshold`, set in the `vnc` variant): the threshold is chosen on validation in every
trial, as evaluate.py then chooses it, rather than sampled. Batch sizes are multiples of the 2
devices of this machine; patch sizes of 2**model.depth = 16; warm-ups at least
train.budget_measure_steps (10).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Loss, foreground-centred patches, learning rate and warm-up, batch and patch size, augmentation
  strength, width, normalisation and weight EMA (the decision threshold: chosen on val in each trial)."""
  return ml_collections.ConfigDict({
      "train": {
          "loss": ("categorical", ("log_dice", "bce_dice", "bce")),
          "fg_fraction": ("float", 0.2, 0.9),  # fraction of patches centred on a mitochondrion pixel
          "batch_size": ("categorical", (4, 8, 16)),
          "patch_size": ("categorical", (128, 192, 256, 320)),
          "ema_decay": ("categorical", (0.0, 0.99, 0.999)),  # 0: no weight average
      },
      "optim": {
          "learning_rate": ("log_float", 3e-4, 5e-3),
          "warmup_steps": ("int", 10, 200, 10),
      },
      "augment": {"preset": ("categorical", ("flips", "full"))},  # augment.PRESETS: dihedral only, or all
      "model": {
          "base_features": ("categorical", (16, 24, 32)),
          "norm": ("categorical", ("batch", "group", "none")),
      },
  })
