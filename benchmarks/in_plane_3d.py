"""2D vs the in-plane-only 3D U-Net at equal minutes: is 3D's loss on VNC the kernels or the rest of the pipeline?

  python benchmarks/in_plane_3d.py --data=vnc --minutes=10 --out=runs/in_plane_vnc
  python benchmarks/in_plane_3d.py --data=tiny --minutes=0.3 --out=/tmp/in_plane -- --config.optim.warmup_steps=10

The in-plane 3D network (configs/unet3d.py:DATA with model.in_plane=True: 1x3x3 kernels, 1x2x2 pooling at every
level, and the 2D variant's BatchNorm) computes exactly what the 2D network computes on each section
(tests/test_anisotropy.py); it differs from the 2D twin (configs/unet3d.py:DATA,mode=2d) only by the 3D pipeline:
4-section patches in batches of 2, the section artefacts, the 3D windows. If it matches 2D's Dice, 3D's deficit
(docs/results/dimensions.md) comes from the cross-section kernels; if it falls short, from the pipeline.

For each: `train.py` with train.budget_minutes = train.max_minutes = --minutes (compiling included), then
`evaluate.py --split=test` of the best-validation checkpoint at the threshold chosen on the val split. Prints one
JSON line per run and a Markdown table of test Dice, foreground IoU, steps and minutes. Arguments after `--` go to
every train and evaluate run. Logs: OUT/NAME.log.
"""

import json
import os
import sys

from absl import app, flags

import common
from unet_jax.io import runlog
from unet_jax.reports import report as report_doc

FLAGS = flags.FLAGS
flags.DEFINE_enum("data", "vnc", ["vnc", "tiny"], "configs/unet3d.py variant (tiny: a smoke test).")
flags.DEFINE_float("minutes", 10.0, "Training budget per network, wall minutes (compiling included).")
flags.DEFINE_string("out", None, "Parent folder of the runs (one workdir per network).")
flags.mark_flags_as_required(["out"])

EVAL_OVERRIDES = ["--config.eval.select_threshold=True", "--config.eval.uncertainty=none"]


def runs(data: str) -> dict[str, list[str]]:
  """Network name -> its config flags."""
  return {"2d": [f"--config=configs/unet3d.py:{data},mode=2d"],
          "3d_in_plane": [f"--config=configs/unet3d.py:{data}", "--config.model.in_plane=True",
                          "--config.model.norm=batch"]}


def train_and_score(name: str, config: list[str], extra: list[str]) -> dict:
  """Trains `config` for --minutes and scores its test split; returns the row's values."""
  workdir = os.path.join(FLAGS.out, name)
  log = os.path.join(FLAGS.out, f"{name}.log")
  minutes = [f"--config.train.budget_minutes={FLAGS.minutes}", f"--config.train.max_minutes={FLAGS.minutes}"]
  common.run_logged([sys.executable, "train.py", *config, f"--workdir={workdir}", *minutes, *extra], log)
  common.run_logged([sys.executable, "evaluate.py", *config, f"--workdir={workdir}", "--split=test",
                     *EVAL_OVERRIDES, *extra], log)
  report = report_doc.load(os.path.join(workdir, "report"))
  test = next(r for r in report["runs"] if r["split"] == "test")
  minutes_by_step = runlog.minutes_by_step(runlog.log_path(workdir))
  return {"network": name, "test_dice": test["pixel"]["dice"], "test_iou": test["pixel"]["iou"],
          "threshold": test["threshold"]["value"], "steps": max(minutes_by_step),
          "minutes": max(minutes_by_step.values())}


def main(argv: list[str]) -> None:
  extra = argv[1:]
  os.makedirs(FLAGS.out, exist_ok=True)
  FLAGS.out = os.path.abspath(FLAGS.out)
  rows = []
  for name, config in runs(FLAGS.data).items():
    rows.append(train_and_score(name, config, extra))
    print(json.dumps(rows[-1]), flush=True)
  print("| network | test Dice | test fg IoU | threshold (val) | steps | train min |\n|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['network']} | {r['test_dice']:.4f} | {r['test_iou']:.4f} | {r['threshold']:g} | {r['steps']} | "
          f"{r['minutes']:.1f} |")


if __name__ == "__main__":
  app.run(main)
