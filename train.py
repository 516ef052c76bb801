"""Trains a U-Net: python train.py --config=configs/unet2d.py:synthetic --workdir=runs/syn"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from unet_jax import config_check, parallel
from unet_jax.errors import InputError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/unet2d.py", "Config file (file.py:variant).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs (resumed if present).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    config_check.validate(FLAGS.config)
  except InputError as e:
    sys.exit(f"error: {e}")
  parallel.use_host_devices(FLAGS.config.host_devices)  # before JAX starts its backends
  from unet_jax import distributed, trainer  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(FLAGS.config)
    print(trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir))
  except InputError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
