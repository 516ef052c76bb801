"""Fine-tuning on corrected slices against training on them from scratch, on VNC.

  python benchmarks/fine_tune.py --base_minutes=8 --tune_minutes=4 --out=runs/fine_tune [--config.x=v ...]

(from the repository root, like the other benchmarks: OUT and the data folder are relative to it.)

The situation the napari Review and Fine-tune widgets serve: a model trained on some slices segments
new ones, a person corrects those masks, and the model is trained on the corrected slices. Here the
"corrected" slices are real ground truth, the labelled slices of stack 1 the base model never trained
on, so the three runs can be compared on the same 4 test slices (stack 1, slices 10-13):

- base: `train.py --config=configs/unet2d.py:vnc` (or --config) for --base_minutes on the 8 training
  slices (0-7; slices 8-9 validate), scored by `evaluate.py --split=val,test` at its last checkpoint
  (the weights fine-tuning starts from) and the threshold chosen on val;
- fine-tuned: from the base's last checkpoint (`train.init_from`), --tune_minutes on the 2 slices the
  base held out (8-9), written to OUT/corrected as training.tif / training_groundtruth.tif beside
  links to the testing stacks; both slices train (`data.final_fit`), so validation there is in-sample
  and nothing is chosen on it: the last checkpoint is scored on test at the base's val threshold;
- tuned_lr: fine-tuned as above at --tune_lr_scale times the recipe's learning rate;
- tuned_all: fine-tuned at that learning rate on all 10 training slices (the base's 8 and the 2 corrected
  ones, `data.final_fit` on the original folder): corrections added to the labels the model had;
- scratch: the same --tune_minutes on the same 2 slices from fresh weights, scored the same way.

Each training and evaluation runs as a subprocess (`$ command` and its output go to OUT/NAME.log). A run
whose report.json exists is not rerun (so the command resumes); --rerun deletes the three workdirs and runs
everything again (train.py would otherwise resume a workdir it finds). Extra
`--config.x=v` flags go to every train.py and evaluate.py call. Prints (and writes to OUT/table.md) testing
Dice, precision, recall and per-object F1 (2D objects at the first IoU threshold), and the commands run.
"""

import os
import shutil
import sys

import numpy as np
from absl import app, flags

import common
from unet_jax.io import data, runlog, stacks
from unet_jax.io.download import STACK_FILES
from unet_jax.reports import report

flags.DEFINE_string("config", "configs/unet2d.py:vnc", "Config of every run (file.py:variant).")
flags.DEFINE_float("base_minutes", 8.0, "Training budget of the base model (train.budget_minutes).")
flags.DEFINE_float("tune_minutes", 4.0, "Training budget of the fine-tuned and of the from-scratch run.")
flags.DEFINE_float("tune_lr_scale", 0.1, "Learning rate of tuned_lr and tuned_all, as a multiple of the recipe's.")
flags.DEFINE_string("out", "runs/fine_tune", "Folder of the runs, their logs, the corrected data folder and the table.")
flags.DEFINE_bool("rerun", False, "Delete the runs and run them again.")
FLAGS = flags.FLAGS

SPLIT_FIELDS = {"data.root": str, "data.val_fraction": float, "data.val_slices": int}
RUNS = ("base", "tuned", "tuned_lr", "tuned_all", "scratch")
TRAINED_ON = {"base": "8 slices (0-7)", "tuned": "2 corrected slices (8-9), from base",
              "tuned_lr": "2 corrected slices (8-9), from base, lower learning rate",
              "tuned_all": "all 10 slices (0-9), from base, lower learning rate", "scratch": "2 corrected slices (8-9)"}


def run(command: list[str], log: str, commands: str) -> None:
  """Prints `command`, appends it to the file `commands`, runs it (common.run_logged); stops on failure."""
  line = "python " + " ".join(command[1:])
  print("$", line, flush=True)
  with open(commands, "a") as f:
    f.write(line + "\n")
  try:
    common.run_logged(command, log)
  except RuntimeError as e:
    sys.exit(str(e))


def write_corrected(root: str, out: str, val_fraction: float, val_slices: int) -> tuple[int, int]:
  """Writes the training slices the base run validates on (its val split, `data.carve_validation`) as the
  training stacks of the data folder `out`, with links to `root`'s testing stacks; returns their (first, end)."""
  image, mask = (stacks.read_stack(data.stack_path(root, f)) for f in STACK_FILES["train"])
  _, held_out = data.carve_validation(data.Split(image, mask), val_fraction, val_slices)
  n = held_out.image.shape[0]
  os.makedirs(out, exist_ok=True)
  for name, array in zip(STACK_FILES["train"], (held_out.image, held_out.mask)):
    stacks.write_stack(os.path.join(out, name), np.asarray(array))
  for name in STACK_FILES["test"]:
    link = os.path.join(out, name)
    if not os.path.lexists(link):
      os.symlink(os.path.abspath(data.stack_path(root, name)), link)
  return image.shape[0] - n, image.shape[0]


def test_scores(workdir: str) -> dict:
  """The test run of workdir/report/report.json: step, threshold, pixel scores, first 2D instance row."""
  test = next(r for r in report.load(os.path.join(workdir, "report"))["runs"] if r["split"] == "test")
  return {"step": test["step"], "threshold": test["threshold"]["value"], "decisions": test["threshold"],
          **test["pixel"],
          "dice_interval": test["pixel_intervals"]["dice"], "objects": test["instances"]["2d"][0]}


def train_minutes(workdir: str) -> float | None:
  """Training minutes of the run's last logged step (validations and compilation included)."""
  minutes = runlog.minutes_by_step(runlog.log_path(workdir))
  return minutes[max(minutes)] if minutes else None


def table(args: flags.FlagValues) -> str:
  """The Markdown table of whatever runs have been scored."""
  rows = ["| run | trained on | budget (min) | minutes | steps | threshold | test Dice [95 % interval] | precision | recall | "
          "object F1 (2D) |", "|---|---|---|---|---|---|---|---|---|---|"]
  for name in RUNS:
    workdir = os.path.join(args.out, name)
    budget = args.base_minutes if name == "base" else args.tune_minutes
    if not os.path.isfile(os.path.join(workdir, "report", "report.json")):
      rows.append(f"| {name} | {TRAINED_ON[name]} | {budget:g} | not run | | | | | | |")
      continue
    s, minutes = test_scores(workdir), train_minutes(workdir)
    o, ci = s["objects"], s["dice_interval"]
    rows.append(f"| {name} | {TRAINED_ON[name]} | {budget:g} | {minutes:.1f} | {s['step']} | {s['threshold']:.2f} | "
                f"{s['dice']:.4f} [{ci['low']:.4f}, {ci['high']:.4f}] | {s['precision']:.3f} | {s['recall']:.3f} | {o['f1']:.3f} at IoU {o['iou_threshold']:g} "
                f"({o['found']} of {o['n_true']} found, {o['spurious']} spurious) |")
  return "\n".join(rows)


def main(argv: list[str]) -> None:
  args, extra = FLAGS, argv[1:]
  if any(not e.startswith("--config.") for e in extra):
    sys.exit("flags other than this script's must be --config.x=v overrides for train.py and evaluate.py")
  config = common.load_config(args.config)
  for e in extra:  # the overrides that decide which slices the base run holds out
    key, _, value = e[len("--config."):].partition("=")
    if key in SPLIT_FIELDS:
      config.data[key.split(".")[1]] = SPLIT_FIELDS[key](value)
  os.makedirs(args.out, exist_ok=True)
  commands = os.path.join(args.out, "commands.sh")
  if args.rerun:
    if os.path.isfile(commands):
      os.remove(commands)
    for name in RUNS:
      shutil.rmtree(os.path.join(args.out, name), ignore_errors=True)
  base, corrected = os.path.join(args.out, "base"), os.path.join(args.out, "corrected")
  flags_of = lambda workdir: [f"--config={args.config}", f"--workdir={workdir}", *extra]

  # base: 8 slices; its last checkpoint is what init_from reads (eval.checkpoint=latest), threshold chosen on val
  shared = [*flags_of(base), "--config.eval.checkpoint=latest"]
  if args.rerun or not os.path.isfile(os.path.join(base, "report", "report.json")):
    log = os.path.join(args.out, "base.log")
    run([sys.executable, "train.py", *shared, f"--config.train.budget_minutes={args.base_minutes:g}"], log, commands)
    run([sys.executable, "evaluate.py", *shared, "--split=val,test", "--save_predictions=false"], log, commands)
  decisions = test_scores(base)["decisions"]

  root = os.path.normpath(os.path.join(common.ROOT, config.data.root))  # relative to the repository root
  first, end = write_corrected(root, corrected, config.data.val_fraction, config.data.get("val_slices", 0))
  print(f"{corrected}: training slices {first}-{end - 1} of {root} (the base run's val split), its testing stacks",
        flush=True)

  # fine-tuned and scratch: both corrected slices train (tuned_all: with the base's 8); last checkpoint, the base's
  # val threshold
  on_corrected = [f"--config.data.root={corrected}", "--config.data.final_fit=True", "--config.eval.checkpoint=latest",
                  *common.fixed_decisions(decisions)]
  slow = [f"--config.train.init_from={base}",
          f"--config.optim.learning_rate={config.optim.learning_rate * args.tune_lr_scale:g}"]
  on_all = on_corrected[1:]  # the original folder: its 8 training slices and the 2 corrected ones
  runs = {"tuned": ([f"--config.train.init_from={base}"], on_corrected), "tuned_lr": (slow, on_corrected),
          "tuned_all": (slow, on_all), "scratch": ([], on_corrected)}
  for name, (init, data_flags) in runs.items():
    workdir = os.path.join(args.out, name)
    if args.rerun or not os.path.isfile(os.path.join(workdir, "report", "report.json")):
      log = os.path.join(args.out, name + ".log")
      shared = [*flags_of(workdir), *data_flags]
      run([sys.executable, "train.py", *shared, *init, f"--config.train.budget_minutes={args.tune_minutes:g}"], log,
          commands)
      run([sys.executable, "evaluate.py", *shared, "--split=test", "--save_predictions=false"], log, commands)

  text = table(args)
  if os.path.isfile(commands):
    with open(commands) as f:
      text += f"\n\nCommands run ({commands}):\n\n```bash\n{f.read()}```\n"
  print(text, flush=True)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(text)


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_known_flags)
