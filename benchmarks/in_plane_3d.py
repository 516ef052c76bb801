"""2D vs the in-plane-only 3D U-Net at equal minutes: is 3D's loss on VNC the kernels or the rest of the pipeline?

  python benchmarks/in_plane_3d.py --data=vnc --minutes=10 --seeds=0,1,2 --out=runs/in_plane_vnc \
      --doc=docs/results/dimensions.md
  python benchmarks/in_plane_3d.py --data=tiny --minutes=0.3 --seeds=0,1 --out=/tmp/in_plane   # a smoke test

The in-plane 3D network (configs/unet3d.py:DATA with model.in_plane=True: 1x3x3 kernels, 1x2x2 pooling at every
level, and the 2D variant's BatchNorm) computes exactly what the 2D network computes on each section
(tests/test_anisotropy.py); it differs from the 2D twin (configs/unet3d.py:DATA,mode=2d) only by the 3D pipeline:
4-section patches in batches of 2, the section artefacts, 3D windows (the same 256^2 in-plane windows at overlap
0.5). If it matches 2D's Dice, 3D's deficit (docs/results/dimensions.md) comes from the cross-section kernels; if
it falls short, from the pipeline.

For each seed (--config.seed) and network, in the order of benchmarks/seed_runs.py (seed by seed, the two
alternating which goes first): `train.py` with train.budget_minutes = train.max_minutes = --minutes (compiling
included), then `evaluate.py --split=test` of the best-validation checkpoint at the threshold chosen on the val
split. A rerun of the same command skips every finished stage (an interrupted training resumes from its
checkpoint), so it also just reprints the table. Prints one JSON line per run (also OUT/results.jsonl) and a
Markdown table: per network the mean test Dice over the seeds with its 95 % t interval, foreground IoU, steps,
training minutes, seconds per train step (median over the run's logged intervals, validations excluded); then
the paired difference 3d_in_plane - 2d with its interval. --doc writes the table into that Markdown file's
`<!-- in_plane_3d DATA begin/end -->` block. Arguments after `--` go to every train and evaluate run. Logs:
OUT/NAME.log; run records: OUT/NAME.json.

Cost: each run is --minutes of training (compiling included) plus about half a minute of process start, data
loading and the last validation, and the evaluation (val and test inference, 2 x 4 x 1024^2 at 4.6-6.9 s a volume
on the quiet 2-core machine, its compile, threshold search and report: about 1-1.5 minutes). On VNC at 10 minutes,
2 networks x 3 seeds: about 6 x 12 = 72 minutes there. This is an estimate from those parts, not a timed run of
the whole table; the script prints the minutes its runs took, and each run's OUT/NAME.json keeps its stages'.
"""

import datetime
import json
import os
import sys

from absl import app, flags

import common
import seed_runs
from unet_jax.errors import InputError
from unet_jax.reports import report as report_doc

FLAGS = flags.FLAGS
flags.DEFINE_enum("data", "vnc", ["vnc", "tiny"], "configs/unet3d.py variant (tiny: a smoke test).")
flags.DEFINE_float("minutes", 10.0, "Training budget per run, wall minutes (compiling included).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds (--config.seed), one run of each network per seed.")
flags.DEFINE_string("out", None, "Parent folder of the runs (one workdir per network and seed).")
flags.DEFINE_string("doc", None, "Markdown file whose `<!-- in_plane_3d DATA begin/end -->` block gets the table.")
flags.mark_flags_as_required(["out"])

EVAL_OVERRIDES = ["--config.eval.select_threshold=True", "--config.eval.uncertainty=none"]
NETWORKS = ("2d", "3d_in_plane")


def network_config(network: str, data: str) -> list[str]:
  """The network's config flags; a warm-up shorter than the budget's timed steps (tiny's 2) is raised to them."""
  spec = f"configs/unet3d.py:{data}" + (",mode=2d" if network == "2d" else "")
  args = [f"--config={spec}"] + (["--config.model.in_plane=True", "--config.model.norm=batch"] if network != "2d"
                                  else [])
  config = common.load_config(spec)
  if config.optim.warmup_steps < config.train.budget_measure_steps:
    args.append(f"--config.optim.warmup_steps={config.train.budget_measure_steps}")
  return args


def train_and_score(network: str, seed: int, extra: list[str]) -> dict:
  """Trains the network at `seed` for --minutes and scores its test split (unless done); the run's values."""
  name = seed_runs.run_name(network, seed)
  workdir = os.path.join(FLAGS.out, name)
  config = [*network_config(network, FLAGS.data), f"--config.seed={seed}", f"--workdir={workdir}"]
  minutes = [f"--config.train.budget_minutes={FLAGS.minutes}", f"--config.train.max_minutes={FLAGS.minutes}"]
  seconds = seed_runs.run_stages(FLAGS.out, name, {
      "train": ["train.py", *config, *minutes, *extra],
      "evaluate": ["evaluate.py", *config, "--split=test", "--save_predictions=false", *EVAL_OVERRIDES, *extra]})
  test = next(r for r in report_doc.load(os.path.join(workdir, "report"))["runs"] if r["split"] == "test")
  return {"network": network, "seed": seed, "test_dice": test["pixel"]["dice"], "test_iou": test["pixel"]["iou"],
          "threshold": test["threshold"]["value"], **seed_runs.training_time(workdir),
          "train_s": seconds["train"], "evaluate_s": seconds["evaluate"]}


def table(rows: list[dict]) -> str:
  """The Markdown summary: one line per network (means over seeds), then the paired difference."""
  by = {n: {r["seed"]: r for r in rows if r["network"] == n} for n in NETWORKS}
  lines = ["| network | seeds | test Dice [95 % CI over seeds] | per seed | test fg IoU | steps | train min | "
           "s / step |", "|---|---|---|---|---|---|---|---|"]
  for n in NETWORKS:
    dice = seed_runs.summary({s: r["test_dice"] for s, r in by[n].items()})
    per_seed = ", ".join(f"{r['test_dice']:.4f}" for _, r in sorted(by[n].items()))
    means = [seed_runs.mean_text(by[n], key, digits) for key, digits in (("test_iou", 4), ("steps", 0),
                                                                          ("minutes", 1), ("s_per_step", 2))]
    lines.append(f"| {n} | {len(by[n])} | {seed_runs.with_interval(dice)} | {per_seed} | {' | '.join(means)} |")
  diff = seed_runs.paired_difference(*({s: r["test_dice"] for s, r in by[n].items()} for n in NETWORKS))
  lines += ["", f"Paired test Dice difference 3d_in_plane - 2d over {diff['n']} seed(s): "
                f"{seed_runs.with_interval(diff, signed=True)} (95 % t interval)."]
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  extra = argv[1:]
  try:
    seeds = seed_runs.parse_seeds(FLAGS.seeds)
    key = f"in_plane_3d {FLAGS.data}"
    if FLAGS.doc:
      seed_runs.check_block(FLAGS.doc, key)
    os.makedirs(FLAGS.out, exist_ok=True)
    FLAGS.out = os.path.abspath(FLAGS.out)
    rows = []
    for seed, network in seed_runs.run_order(NETWORKS, seeds):
      rows.append(train_and_score(network, seed, extra))
      print(json.dumps(rows[-1]), flush=True)
    text = (f"{table(rows)}\n\n`python benchmarks/in_plane_3d.py {' '.join(sys.argv[1:])}`, "
            f"{datetime.date.today().isoformat()}: {FLAGS.minutes:g} minutes of training per run.")
    print(text)
    seed_runs.finish(FLAGS.out, rows, text, FLAGS.doc, key)
  except (InputError, RuntimeError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
