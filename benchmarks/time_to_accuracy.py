"""Minutes of training until a run's checkpoints reach a Dice target on a split (default VNC testing).

  python train.py --config=configs/unet2d.py:vnc --workdir=runs/tta_after \
      --config.train.checkpoint_every=50 --config.train.keep_checkpoints=100 --config.train.max_minutes=20
  python benchmarks/time_to_accuracy.py --config=configs/unet2d.py:vnc --workdir=runs/tta_after [--target=0.85]

Every kept checkpoint of each workdir is scored (pixel Dice, precision, recall) on --split at
`eval.threshold`, or with `eval.select_threshold` at the threshold that is best for that checkpoint on
the val split; its training minutes are those train.py logged at that step in log.jsonl (wall minutes
since the start, validation included). Prints one row per checkpoint and, per run, the first checkpoint
at or above --target; --json_out also writes the rows as JSON lines. This only measures: nothing is
selected on the scored split.
"""

import json

from absl import app, flags

import common
from unet_jax.training import parallel

FLAGS = common.define_config("configs/unet2d.py:vnc")
flags.adopt_module_key_flags(common)  # --help lists common's flags too
flags.DEFINE_list("workdir", None, "Training runs to score (comma-separated).")
flags.DEFINE_string("split", "test", "Split to score: test or train (val chooses thresholds).")
flags.DEFINE_float("target", 0.85, "Dice to reach.")
flags.DEFINE_string("json_out", "", "Also write one JSON line per checkpoint here.")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
  del argv
  parallel.use_host_devices(FLAGS.config.host_devices)
  parallel.use_inference_kernels()  # scoring only runs the network forward, as in evaluate.py
  # pylint: disable=g-import-not-at-top
  from unet_jax.inference.predictor import Predictor
  from unet_jax.io import checkpoint, data, runlog
  from unet_jax.network.model import abstract_variables, build_model
  from unet_jax.scores import metrics
  from unet_jax.training import trainer
  config = FLAGS.config
  splits = data.load_splits(config.data)
  split = splits[FLAGS.split]
  model = build_model(config.model)
  target = abstract_variables(model)  # shapes to restore into
  chosen = "chosen on val per checkpoint" if config.eval.select_threshold else str(config.eval.threshold)
  print(f"{FLAGS.split} split {split.image.shape}; threshold {chosen}; target Dice {FLAGS.target}")
  rows = []
  for workdir in FLAGS.workdir:
    minutes, reached = runlog.minutes_by_step(runlog.log_path(workdir)), None
    for step in checkpoint.saved_steps(workdir):
      variables, _ = checkpoint.restore_variables(workdir, target, step=step)
      threshold = config.eval.threshold
      if config.eval.select_threshold:
        threshold = trainer.score_split(model, variables, splits["val"], config.eval)[0]["threshold"]
      probs = Predictor.create(model, variables, config.eval, step).raw_probabilities(split.image)
      scores = metrics.pixel_scores(probs >= threshold, split.mask)
      row = {"workdir": workdir, "step": step, "minutes": minutes.get(step, float("nan")), "threshold": threshold,
             **{k: scores[k] for k in ("dice", "precision", "recall")}}
      rows.append(row)
      print(f"{workdir} step {step:5d} {row['minutes']:6.2f} min  threshold {threshold:.2f}  {FLAGS.split} Dice "
            f"{row['dice']:.4f} (precision {row['precision']:.4f}, recall {row['recall']:.4f})", flush=True)
      if reached is None and row["dice"] >= FLAGS.target:
        reached = row
    if reached:
      print(f"{workdir}: Dice {reached['dice']:.4f} >= {FLAGS.target} first at step {reached['step']}, "
            f"{reached['minutes']:.2f} min")
    else:
      print(f"{workdir}: Dice {FLAGS.target} not reached by its last checkpoint ({max(minutes.values()):.2f} min)")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
  app.run(main)
