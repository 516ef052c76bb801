"""2D vs 2.5D vs 3D on one data set at the same training budget: the README's "does 3D help?" table.

  python benchmarks/compare_dims.py --data=synthetic --minutes=5 --out=runs/dims_synthetic
  python benchmarks/compare_dims.py --data=vnc --minutes=6 --out=runs/dims_vnc

For each mode (configs/unet3d.py:DATA,mode=MODE), one at a time, each in its own process:
1. `benchmarks/train_3d.py` times the train step (median of 3 after compiling) and the segmentation of
   one test volume (evaluate.py's inference, compile excluded);
2. `train.py` trains for the budget: train.budget_minutes fits the run and its cosine schedule into
   it (the trainer times its first steps and a validation pass), train.max_minutes caps it; the
   budget includes compiling, as a user would wait for it. Warm-up and validation intervals are
   sized from step 1's step time (10 % and 20 % of the steps it predicts);
3. `evaluate.py --split=val,test` scores the best-validation checkpoint, the threshold chosen on the
   val split (eval.select_threshold) and never on test.
With --quiet_speed (the JSON lines of step 1 run earlier on a quiet machine, e.g. by --speed_only),
the budget becomes a fixed amount of work instead: steps = 0.9 * (minutes * 60 - compile_s) / step_s
(10 % kept for validation passes), trained with train.steps and no clock, so a machine loaded by
other jobs takes longer but every mode does what the budget buys on the quiet machine.

  python benchmarks/compare_dims.py --data=vnc --out=runs/dims_vnc --speed_only > runs/dims_vnc/quiet_speed.log
  python benchmarks/compare_dims.py --data=vnc --minutes=10 --out=runs/dims_vnc --quiet_speed=runs/dims_vnc/quiet_speed.log

Then prints one Markdown table: test Dice, foreground IoU, 3D instance F1 at IoU 0.5, minutes of
training (wall, validation included), steps, step minutes (compile + steps x s/step: the work done,
as the timed machine would take it), seconds per test volume. Extra arguments after `--` go to every train and evaluate.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

import common
from unet_jax.io import runlog
from unet_jax.reports import report as report_doc

FLAGS = flags.FLAGS
flags.DEFINE_enum("data", "synthetic", ["synthetic", "vnc", "lucchi", "tiny"], "configs/unet3d.py variant (tiny: a smoke test).")
flags.DEFINE_float("minutes", 5.0, "Training budget per mode, wall minutes.")
flags.DEFINE_string("out", None, "Parent folder of the runs (one workdir per mode).")
flags.DEFINE_list("modes", ["2d", "2.5d", "3d"], "Modes to compare.")
flags.DEFINE_string("quiet_speed", None, "JSON lines of --speed_only from a quiet machine: train fixed step counts.")
flags.DEFINE_bool("speed_only", False, "Only time each mode's train step and test-volume inference; print JSON lines.")
flags.mark_flags_as_required(["out"])

EVAL_OVERRIDES = ["--config.eval.select_threshold=True", "--config.eval.uncertainty=none"]


def run(args: list[str]) -> str:
  """Runs `python args...` from the repository root; returns stdout (raises on failure)."""
  print("$ python " + " ".join(args), flush=True)
  done = subprocess.run([sys.executable, *args], cwd=common.ROOT, capture_output=True, text=True, check=False)
  if done.returncode:
    sys.exit(f"failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
  return done.stdout


def json_line(stdout: str) -> dict:
  return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def mode_of(measure: dict) -> str:
  """The mode a train_3d.py JSON line measured."""
  return "3d" if measure["ndim"] == 3 else ("2.5d" if measure["context_slices"] else "2d")


def quiet_speeds(path: str) -> dict[str, tuple[dict, dict]]:
  """mode -> (train line, predict line) from a --speed_only log."""
  lines = [json.loads(line) for line in open(path) if line.startswith("{")]
  return {mode_of(t): (t, p) for t, p in zip(lines[::2], lines[1::2])}


def main(argv: list[str]) -> None:
  extra = argv[1:]
  quiet = quiet_speeds(FLAGS.quiet_speed) if FLAGS.quiet_speed else {}
  rows = []
  for mode in FLAGS.modes:
    config = f"--config=configs/unet3d.py:{FLAGS.data},mode={mode}"
    workdir = os.path.join(FLAGS.out, mode)
    if mode in quiet:
      speed, predict = quiet[mode]
    else:
      speed = json_line(run(["benchmarks/train_3d.py", config, "--steps=6", *extra]))
      predict = json_line(run(["benchmarks/train_3d.py", config, "--mode=predict", *extra]))
    if FLAGS.speed_only:
      print(json.dumps(speed), json.dumps(predict), sep="\n", flush=True)
      continue
    if mode in quiet:
      steps = max(20, int(0.9 * (FLAGS.minutes * 60 - speed["compile_s"]) / speed["step_s"]))
      length = [f"--config.train.steps={steps}", "--config.train.budget_minutes=0", "--config.train.max_minutes=0"]
    else:
      steps = max(20, int(0.8 * (FLAGS.minutes * 60 - speed["compile_s"]) / speed["step_s"]))  # an estimate
      length = [f"--config.train.budget_minutes={FLAGS.minutes}", f"--config.train.max_minutes={FLAGS.minutes}"]
    run(["train.py", config, f"--workdir={workdir}", *length, f"--config.train.eval_every={max(5, steps // 5)}",
         f"--config.train.checkpoint_every={max(5, steps // 5)}",
         f"--config.optim.warmup_steps={max(11, steps // 10)}", *extra])
    run(["evaluate.py", config, f"--workdir={workdir}", "--split=val,test", *EVAL_OVERRIDES, *extra])
    report = report_doc.load(os.path.join(common.ROOT, workdir, "report"))
    test = next(r for r in report["runs"] if r["split"] == "test")
    f1 = next(s["f1"] for s in test["instances"]["3d"] if abs(s["iou_threshold"] - 0.5) < 1e-9)
    minutes_by_step = runlog.minutes_by_step(runlog.log_path(os.path.join(common.ROOT, workdir)))
    minutes, trained = max(minutes_by_step.values()), max(minutes_by_step)
    rows.append([mode, f"{test['pixel']['dice']:.4f}", f"{test['pixel']['iou']:.4f}", f"{f1:.3f}",
                 f"{test['threshold']['value']:g}", f"{minutes:.1f}", f"{trained}",
                 f"{(speed['compile_s'] + trained * speed['step_s']) / 60:.1f}",
                 f"{speed['step_s']:.2f}", f"{predict['predict_s_per_volume']:.1f}"])
    print(json.dumps({"mode": mode, "row": rows[-1], "speed": speed, "predict": predict}), flush=True)
  if FLAGS.speed_only:
    return
  header = ["mode", "test Dice", "test fg IoU", "3D instance F1 @0.5", "threshold (val)", "train min", "steps",
            "step min", "s/step", "s per test volume"]
  print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
  app.run(main)
