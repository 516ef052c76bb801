"""Recipe arms at a fixed step count over several seeds, several runs at once on one machine (issue 14).

  python benchmarks/recipe_seeds.py --arms=default,lr1e3 --seeds=0,1,2 --steps=1332 --final_fit --jobs=6 \
      --out=runs/recipe_seeds [--config.x=v ...]

One run of each recipe cannot rank recipes whose test Dice differs by less than the seed-to-seed spread.
For every arm and seed this trains `train.py --config=configs/unet2d.py:vnc` (or --config) for exactly
--steps steps (no time budget: step-matched runs cost the same CPU time whatever machine runs them) on the
8 training slices, then scores its last checkpoint with `evaluate.py --split=val,test` at the threshold
chosen on val. With
--final_fit the arm also trains on all ten slices (data.final_fit) and its last checkpoint is scored on test
at the threshold its 8-slice twin chose on val: a rule fixed in advance, since val is in-sample there.
A finished run (its report.json present) is not rerun. Writes OUT/results.jsonl, one line per scored run,
and prints each arm's mean, standard deviation and range of testing Dice over the seeds.
"""

import concurrent.futures
import json
import os
import statistics
import sys

from absl import app, flags

import common
from unet_jax.reports import report

ARMS = {  # name -> train.py/evaluate.py overrides on top of the `vnc` default recipe
    "default": [],
    "lr1e3": ["--config.optim.learning_rate=0.001"],
    "lr1e3_uniform": ["--config.optim.learning_rate=0.001", "--config.train.fg_fraction=0.0"],
}


flags.DEFINE_string("config", "configs/unet2d.py:vnc", "Base config (file.py:variant).")
flags.DEFINE_string("arms", "default,lr1e3", f"Comma-separated, from {sorted(ARMS)}.")
flags.DEFINE_string("seeds", "0,1,2", "config.seed values, comma-separated.")
flags.DEFINE_integer("steps", 1332, "Training steps of every run.")
flags.DEFINE_bool("final_fit", False, "Also train each arm on all ten slices.")
flags.DEFINE_integer("jobs", 2, "Arm-seed chains run at once.")
flags.DEFINE_string("out", "runs/recipe_seeds", "Folder of the runs, their logs and results.jsonl.")
FLAGS = flags.FLAGS


def scores(workdir: str) -> dict[str, dict]:
  """split -> {step, threshold, decisions (the threshold record), dice, precision, recall} from
  workdir/report/report.json."""
  runs = report.load(os.path.join(workdir, "report"))["runs"]
  return {r["split"]: {"step": r["step"], "threshold": r["threshold"]["value"], "decisions": r["threshold"],
                       **{k: r["pixel"][k] for k in ("dice", "precision", "recall")}} for r in runs}


def train_and_score(workdir: str, config: list[str], steps: int, splits: str, log: str) -> dict[str, dict]:
  """Trains `steps` steps into `workdir` (unless already scored) and scores its last checkpoint."""
  if not os.path.isfile(os.path.join(workdir, "report", "report.json")):
    shared = [*config, f"--workdir={workdir}", "--config.eval.checkpoint=latest"]
    common.run_logged([sys.executable, "train.py", *shared, "--config.train.budget_minutes=0",
                       f"--config.train.steps={steps}"], log)
    common.run_logged([sys.executable, "evaluate.py", *shared, f"--split={splits}", "--save_predictions=false"], log)
  return scores(workdir)


def chain(args: flags.FlagValues, extra: list[str], arm: str, seed: int) -> list[dict]:
  """The arm's 8-slice run at `seed` and, with --final_fit, its ten-slice twin; their result lines."""
  config = [f"--config={args.config}", *extra, *ARMS[arm], f"--config.seed={seed}"]
  name = f"{arm}_s{seed}"
  tuned = train_and_score(os.path.join(args.out, name), config, args.steps, "val,test",
                          os.path.join(args.out, name + ".log"))
  rows = [{"arm": arm, "seed": seed, "final_fit": False, "val_dice": tuned["val"]["dice"], **tuned["test"]}]
  if args.final_fit:
    fitted = train_and_score(os.path.join(args.out, name + "_ff"),
                             [*config, "--config.data.final_fit=True",
                              *common.fixed_decisions(tuned["val"]["decisions"])],
                             args.steps, "test", os.path.join(args.out, name + "_ff.log"))
    rows.append({"arm": arm, "seed": seed, "final_fit": True, "val_dice": None, **fitted["test"]})
  return rows


def summary(rows: list[dict]) -> str:
  """Per arm (and final fit or not): n, mean, standard deviation and range of testing Dice."""
  lines = ["| arm | final fit | seeds | test Dice mean | sd | min | max | val Dice mean |", "|---|---|---|---|---|---|---|---|"]
  for key in sorted({(r["arm"], r["final_fit"]) for r in rows}):
    group = [r for r in rows if (r["arm"], r["final_fit"]) == key]
    dice = [r["dice"] for r in group]
    val = [r["val_dice"] for r in group if r["val_dice"] is not None]
    sd = statistics.stdev(dice) if len(dice) > 1 else float("nan")
    val_mean = f"{statistics.mean(val):.4f}" if val else "-"
    lines.append(f"| {key[0]} | {key[1]} | {len(dice)} | {statistics.mean(dice):.4f} | {sd:.4f} | "
                 f"{min(dice):.4f} | {max(dice):.4f} | {val_mean} |")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  args, extra = FLAGS, argv[1:]
  arms, seeds = args.arms.split(","), [int(s) for s in args.seeds.split(",")]
  if set(arms) - set(ARMS) or any(not e.startswith("--config.") for e in extra):
    sys.exit(f"--arms takes names from {sorted(ARMS)}; other flags must be --config.x=v overrides")
  os.makedirs(args.out, exist_ok=True)
  rows, failed = [], 0
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    futures = [pool.submit(chain, args, extra, a, s) for s in seeds for a in arms]
    for future in concurrent.futures.as_completed(futures):
      try:
        new = future.result()
      except RuntimeError as e:
        failed += 1
        print(e, flush=True)
        continue
      rows += new
      with open(os.path.join(args.out, "results.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
      print(*(json.dumps(r) for r in new), sep="\n", flush=True)
  print(summary(rows), flush=True)
  sys.exit(f"{failed} arm-seed chains failed" if failed else 0)


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_known_flags)
