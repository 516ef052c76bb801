"""Scores a trained U-Net on the test stack:

  python evaluate.py --config=configs/unet2d.py:vnc --workdir=runs/vnc

Writes <workdir>/eval_test/scores.json (Dice, foreground IoU, precision, recall) and prediction.tif.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from unet_jax import parallel
from unet_jax.errors import InputError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/unet2d.py", "Config file (file.py:variant).")
flags.DEFINE_string("workdir", None, "Training directory holding the checkpoints.")
flags.DEFINE_string("split", "test", "Which split to score: test or val.")
flags.DEFINE_string("output_dir", None, "Where to write results (default <workdir>/eval_<split>).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  parallel.use_host_devices(FLAGS.config.host_devices)
  from unet_jax import evaluation  # pylint: disable=g-import-not-at-top
  try:
    print(json.dumps(evaluation.evaluate(FLAGS.config, FLAGS.workdir, FLAGS.split, FLAGS.output_dir), indent=2))
  except InputError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
