"""Minutes of training until a run's checkpoints reach a Dice target on a split (default VNC testing).

  python train.py --config=configs/unet2d.py:vnc --workdir=runs/tta_after \
      --config.train.checkpoint_every=50 --config.train.keep_checkpoints=100 --config.train.max_minutes=20
  python benchmarks/time_to_accuracy.py --config=configs/unet2d.py:vnc --workdir=runs/tta_after [--target=0.85]

Every kept checkpoint of each workdir is scored (Dice at eval.threshold, pixel level) on --split; its
training minutes are those train.py logged at that step in log.jsonl (wall minutes since the start,
validation included). Prints one row per checkpoint and, per run, the first checkpoint at or above
--target. This only measures: nothing is selected on the test split.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
# pylint: disable=g-import-not-at-top,wrong-import-position
from unet_jax import parallel

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/unet2d.py:vnc", "Config file (file.py:variant).")
flags.DEFINE_list("workdir", None, "Training runs to score (comma-separated).")
flags.DEFINE_string("split", "test", "Split to score: test, val or train.")
flags.DEFINE_float("target", 0.85, "Dice to reach.")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
  del argv
  parallel.use_host_devices(FLAGS.config.host_devices)
  parallel.use_inference_kernels()  # scoring only runs the network forward, as in evaluate.py
  from unet_jax import checkpoint, data, runlog, trainer  # pylint: disable=g-import-not-at-top
  from unet_jax.model import abstract_variables, build_model  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  split = data.load_splits(config.data)[FLAGS.split]
  model = build_model(config.model)
  target = abstract_variables(model)  # shapes to restore into
  print(f"{FLAGS.split} split {split.image.shape}; Dice at threshold {config.eval.threshold}; target {FLAGS.target}")
  for workdir in FLAGS.workdir:
    minutes, reached = runlog.minutes_by_step(runlog.log_path(workdir)), None
    for step in checkpoint.saved_steps(workdir):
      variables, _ = checkpoint.restore_variables(workdir, target, step=step)
      dice = trainer.evaluate_split(model, variables, split, config.eval)["dice"]
      at = minutes.get(step, float("nan"))
      print(f"{workdir} step {step:5d} {at:6.2f} min  {FLAGS.split} Dice {dice:.4f}", flush=True)
      if reached is None and dice >= FLAGS.target:
        reached = (step, at, dice)
    if reached:
      print(f"{workdir}: Dice {reached[2]:.4f} >= {FLAGS.target} first at step {reached[0]}, {reached[1]:.2f} min")
    else:
      print(f"{workdir}: Dice {FLAGS.target} not reached by its last checkpoint ({max(minutes.values()):.2f} min)")


if __name__ == "__main__":
  app.run(main)
