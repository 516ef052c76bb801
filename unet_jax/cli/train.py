"""Trains a U-Net: python train.py --config=configs/unet2d.py:synthetic --workdir=runs/syn"""

from absl import flags
from ml_collections import config_flags

from unet_jax.cli import common as cli
from unet_jax.config import check as config_check

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/unet2d.py", "Config file (file.py:variant).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs (resumed if present).")
flags.mark_flags_as_required(["workdir"])


def train(config, workdir: str) -> None:
  cli.prepare(config, config_check.SECTIONS, forward_only=False)
  from unet_jax.training import distributed, trainer  # pylint: disable=g-import-not-at-top  (after the device flags)
  distributed.initialize(config)
  print(trainer.train_and_evaluate(config, workdir))


def main(argv: list[str]) -> None:
  del argv
  cli.run(lambda: train(FLAGS.config, FLAGS.workdir), "rerun the same command to resume from the last checkpoint")

