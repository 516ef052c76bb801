"""Accuracy per CPU-minute, ours against the plain PyTorch script, at several budgets in one sitting (issue 14).

  python benchmarks/budget_table.py --minutes=10,20,40 --out=runs/budget_table
  pip install -r benchmarks/requirements.txt   # the peer needs torch and monai

For each budget M, in turn on the same machine:
- ours: `train.py --config=configs/unet2d.py:vnc --config.train.budget_minutes=M` (the default recipe; the
  run's length is fitted to M), then `evaluate.py --split=val,test` (best-val checkpoint, threshold chosen on
  val) for the score at the budget, and benchmarks/time_to_accuracy.py over every checkpoint (each at its
  own val-chosen threshold) for the testing Dice along the way;
- the peer: benchmarks/torch_train.py --minutes=M (its cosine schedule fitted to M; test scores at 10 % steps).
Prints (and writes to OUT/table.md) testing Dice, precision and recall at each budget, and the minutes our
run took to reach the peer's final testing Dice. Minutes are training wall minutes: ours include the
validations, the peer's exclude its test scoring. A finished part (its output file present) is not rerun,
so the command resumes; --rerun runs everything again. Extra `--config.x=v` flags go to train.py, evaluate.py
and time_to_accuracy.py; give such a variant its own --name, e.g. the final fit on all ten slices:

  python benchmarks/budget_table.py --minutes=10 --parts=ours --name=final_fit --config.data.final_fit=True \
      --config.eval.select_threshold=False --config.eval.checkpoint=latest --config.eval.threshold=0.35 \
      --config.eval.select_min_size=False --config.eval.min_size=500
"""

import json
import os
import sys

from absl import app, flags

import common
from unet_jax.reports import report

flags.DEFINE_string("minutes", "10,20,40", "Budgets, comma-separated.")
flags.DEFINE_string("out", "runs/budget_table", "Folder of the runs, their logs and the table.")
flags.DEFINE_string("config", "configs/unet2d.py:vnc", "Config of our runs (file.py:variant), given to train.py, "
                    "evaluate.py and time_to_accuracy.py.")
flags.DEFINE_string("parts", "ours,peer", "Which sides to run: ours, peer or both.")
flags.DEFINE_bool("rerun", False, "Run parts whose output exists again.")
flags.DEFINE_string("name", "ours", "Our runs' name: OUT/NAME_M (a variant with --config.x=v).")
FLAGS = flags.FLAGS


def run(command: list[str], log: str) -> None:
  """Prints `command`, then runs it (common.run_logged); stops the table on failure."""
  print("$", " ".join(command), flush=True)
  try:
    common.run_logged(command, log)
  except RuntimeError as e:
    sys.exit(str(e))


def ours(args: flags.FlagValues, extra: list[str], minutes: float) -> None:
  """Trains, evaluates and scores every checkpoint of our run at `minutes`."""
  workdir = os.path.join(args.out, f"{args.name}_{minutes:g}")
  config = [f"--config={args.config}", f"--workdir={workdir}", *extra]
  log = os.path.join(args.out, f"{args.name}_{minutes:g}.log")
  if args.rerun or not os.path.isfile(os.path.join(workdir, "report", "report.json")):
    run([sys.executable, "train.py", *config, f"--config.train.budget_minutes={minutes:g}",
         "--config.train.checkpoint_every=100", "--config.train.keep_checkpoints=1000"], log)
    run([sys.executable, "evaluate.py", *config, "--split=val,test"], log)
  curve = os.path.join(args.out, f"{args.name}_{minutes:g}_curve.jsonl")
  if args.rerun or not os.path.isfile(curve):
    run([sys.executable, "benchmarks/time_to_accuracy.py", *config, f"--json_out={curve}"], log)


def peer(args: flags.FlagValues, minutes: float) -> None:
  """Trains the PyTorch script for `minutes`; its JSON lines go to OUT/peer_M.jsonl."""
  path = os.path.join(args.out, f"peer_{minutes:g}.jsonl")
  if args.rerun or not os.path.isfile(path):
    log = os.path.join(args.out, f"peer_{minutes:g}.log")
    run([sys.executable, "benchmarks/torch_train.py", f"--minutes={minutes:g}"], log)
    with open(log) as f, open(path, "w") as out:
      out.writelines(line for line in f if line.startswith("{"))


def lines(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def table(args: flags.FlagValues, budgets: list[float]) -> str:
  """The Markdown table of whatever parts have finished."""
  rows = [f"| budget (min) | {args.name}: Dice / precision / recall (steps) | PyTorch script: Dice / precision / "
          f"recall (steps) | {args.name}: minutes to the script's Dice |", "|---|---|---|---|"]
  for m in budgets:
    report_dir, curve = (os.path.join(args.out, f"{args.name}_{m:g}", "report"),
                         os.path.join(args.out, f"{args.name}_{m:g}_curve.jsonl"))
    peer_path = os.path.join(args.out, f"peer_{m:g}.jsonl")
    ours_cell = peer_cell = reach = "not run"
    if os.path.isfile(os.path.join(report_dir, "report.json")):
      test = next(r for r in report.load(report_dir)["runs"] if r["split"] == "test")
      p = test["pixel"]
      ours_cell = (f"{p['dice']:.4f} / {p['precision']:.3f} / {p['recall']:.3f} (step {test['step']}, "
                   f"threshold {test['threshold']['value']:.2f})")
    if os.path.isfile(peer_path):
      last = lines(peer_path)[-1]
      peer_cell = f"{last['test_dice']:.4f} / {last['precision']:.3f} / {last['recall']:.3f} ({last['step']})"
      if os.path.isfile(curve):
        hit = next((r for r in lines(curve) if r["dice"] >= last["test_dice"]), None)
        reach = f"{hit['minutes']:.1f} (step {hit['step']})" if hit else "not reached"
    rows.append(f"| {m:g} | {ours_cell} | {peer_cell} | {reach} |")
  return "\n".join(rows)


def main(argv: list[str]) -> None:
  args, extra = FLAGS, argv[1:]
  budgets = [float(m) for m in args.minutes.split(",")]
  parts = args.parts.split(",")
  if set(parts) - {"ours", "peer"} or any(not e.startswith("--config.") for e in extra):
    sys.exit("--parts takes ours and/or peer; other flags must be --config.x=v overrides for our runs")
  if extra and args.name == "ours":
    sys.exit("--config.x=v overrides make a variant of the default: give it its own --name")
  os.makedirs(args.out, exist_ok=True)
  for m in budgets:
    if "ours" in parts:
      ours(args, extra, m)
    if "peer" in parts:
      peer(args, m)
    print(table(args, budgets), flush=True)
  with open(os.path.join(args.out, "table.md" if args.name == "ours" else f"table_{args.name}.md"), "w") as f:
    f.write(table(args, budgets) + "\n")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_known_flags)
