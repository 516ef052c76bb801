"""2D vs 2.5D vs 3D on one data set at the same training budget, over seeds: the "does 3D help?" tables.

  python benchmarks/compare_dims.py --data=vnc --minutes=10 --seeds=0,1,2 --out=runs/dims_vnc \
      --doc=docs/results/dimensions.md --readme=README.md
  python benchmarks/compare_dims.py --data=iso --minutes=4 --seeds=0,1,2 --out=runs/dims_iso \
      --doc=docs/results/dimensions.md --readme=README.md
  python benchmarks/compare_dims.py --data=tiny_iso --minutes=0.3 --seeds=0,1 --out=/tmp/dims   # a smoke test

Each mode is configs/unet3d.py:DATA,mode=MODE: the 3D U-Net and its 2D and 2.5D twins on the same data, val
sections and evaluation (the 3D window's in-plane size and overlap, XLA). `iso` is a generated isotropic volume
whose mitochondria are branching tubes crossing sections at every angle (unet_jax/io/synthetic.py), where a
per-section model has to join profiles it sees apart; `vnc` is 50 nm ssTEM. Steps:
1. once per mode (cached in OUT/speed.jsonl), `benchmarks/train_3d.py` times the train step (median of 6 after
   compiling) and the segmentation of the test volume (compile excluded);
2. for each seed (--config.seed) and mode, in the order of benchmarks/seed_runs.py (seed by seed, the modes
   rotated one place at each seed), `train.py` trains for the budget: train.budget_minutes fits the run and its
   cosine schedule into it (the trainer times its first steps and a validation pass), train.max_minutes caps
   it; the budget includes compiling, as a user would wait for it. Warm-up and validation intervals are sized
   from step 1's step time (10 % and 20 % of the steps it predicts);
3. `evaluate.py --split=val,test` scores the best-validation checkpoint at the threshold chosen on the val split
   (eval.select_threshold), never on test; its report holds pixel scores and instance scores with 2D
   (per-section) and 3D (6-connected, unet_jax/scores/instances.py) components.
A rerun of the same command skips every finished stage (an interrupted training resumes from its checkpoint),
so it also just rebuilds the tables; with --rescore it scores every trained run again (after a change to the
config's test volume or evaluation), keeping each previous report as OUT/NAME/report.N. With --quiet_speed
(step 1's JSON lines from a quiet machine, e.g. by --speed_only) the budget becomes a fixed amount of work
instead: steps = 0.9 * (minutes * 60 - compile_s) / step_s (10 % kept for validation passes), trained with
train.steps and no clock, so a machine loaded by other jobs takes longer but every mode does what the budget
buys on the quiet machine:

  python benchmarks/compare_dims.py --data=vnc --out=runs/dims_vnc --speed_only > quiet_speed.log  # quiet machine
  python benchmarks/compare_dims.py --data=vnc --minutes=10 --out=runs/dims_vnc --quiet_speed=quiet_speed.log

Prints one JSON line per run (also OUT/results.jsonl) and writes OUT/table.md: per mode the mean over seeds,
with its 95 % t interval, of test Dice and 3D instance F1 at IoU 0.5 (2D instance F1 beside it), the minimum
object size each seed's run chose on val (eval.select_min_size in configs/unet3d.py), steps, training
minutes, seconds per train step (median of the run's logged intervals, validations excluded) and per test
volume; then each mode's paired difference from 2D. --doc writes that table into the Markdown file's
`<!-- compare_dims DATA MINUTESmin begin/end -->` block (e.g. `compare_dims vnc 10min`: one block per data set and
budget); OUT/readme_rows.md (also printed) holds the README's table of this data set and budget, which
--readme=README.md writes into its `<!-- compare_dims DATA MINUTESmin rows begin/end -->` block.
Arguments after `--` go to every timing, train and evaluate run. Logs: OUT/NAME.log; run records: OUT/NAME.json.
A table longer than a sitting (iso at 30 minutes: 9 runs of 32-40 minutes) is completed over several with
--records=benchmarks/records/NAME, a committed folder: each finished run's stage record, training log and
report.json (no checkpoint) and the timings are copied there, and a later call on a machine whose OUT is gone
restores them and trains only the runs still missing (benchmarks/seed_runs.py keep/restore).

Cost: each run is --minutes of training (compiling included) plus about half a minute of process start, data
loading and the last validation, and the evaluation (val and test inference, 2 x 4 x 1024^2 on VNC at 4.6-6.9 s a
volume on the quiet 2-core machine, its compile, threshold search, instances and report: about 1-1.5 minutes);
step 1 adds two processes per mode (compile, 7 steps; compile, 2 test-volume passes: about 2-2.5 minutes on VNC).
On VNC at 10 minutes, 3 modes x 3 seeds: about 7 + 9 x 12 = 115 minutes there; `iso` at 4 minutes about
3 + 9 x 5.5 = 53 minutes. These are estimates from those parts; the VNC table at 10 minutes with the stem took
98 minutes in all (2026-12-05). The script prints the minutes its runs took, and each run's OUT/NAME.json keeps
its stages'.
"""

import datetime
import json
import os
import shutil
import subprocess
import sys

from absl import app, flags

import common
import seed_runs
from unet_jax.errors import InputError
from unet_jax.reports import report as report_doc

FLAGS = flags.FLAGS
flags.DEFINE_enum("data", "iso", ["synthetic", "iso", "vnc", "lucchi", "tiny", "tiny_iso"],
                  "configs/unet3d.py variant (tiny, tiny_iso: smoke tests).")
flags.DEFINE_float("minutes", 5.0, "Training budget per run, wall minutes (compiling included).")
flags.DEFINE_string("out", None, "Parent folder of the runs (one workdir per mode and seed).")
flags.DEFINE_list("modes", ["2d", "2.5d", "3d"], "Modes to compare (the first is the reference of the differences).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds (--config.seed), one run of each mode per seed.")
flags.DEFINE_string("quiet_speed", None, "JSON lines of --speed_only from a quiet machine: train fixed step counts.")
flags.DEFINE_bool("speed_only", False, "Only time each mode's train step and test-volume inference; print JSON lines.")
flags.DEFINE_string("doc", None, "Markdown file whose `<!-- compare_dims DATA MINUTESmin begin/end -->` block gets "
                    "the table.")
flags.DEFINE_string("readme", None, "Markdown file whose `<!-- compare_dims DATA MINUTESmin rows begin/end -->` block "
                    "gets the README's table (OUT/readme_rows.md).")
flags.DEFINE_bool("rescore", False, "Score every finished run again and time each mode's test-volume inference "
                  "again (the config's evaluation or test volume changed); each run's previous report is kept as "
                  "report.N. An interrupted rescoring is rerun with the same flag.")
flags.DEFINE_string("records", None, "Folder (committed) that keeps each finished run's records and the modes' "
                    "timings: runs it holds that OUT lacks are restored into OUT, not trained again, so a table "
                    "can be completed over sittings on machines that do not keep OUT.")
flags.mark_flags_as_required(["out"])

EVAL_OVERRIDES = ["--config.eval.select_threshold=True", "--config.eval.uncertainty=none"]
SPEED_FILE = "speed.jsonl"
LABELS = {"2d": "2D", "2.5d": "2.5D (k = 1)", "3d": "3D"}
DATA_NAMES = {"vnc": "VNC", "iso": "Isotropic synthetic (tubes)", "synthetic": "Synthetic volume", "lucchi": "Lucchi",
              "tiny": "tiny", "tiny_iso": "tiny iso"}


def run(args: list[str]) -> str:
  """Runs `python args...` from the repository root; returns stdout (RuntimeError with its output's end)."""
  print("$ python " + " ".join(args), flush=True)
  done = subprocess.run([sys.executable, *args], cwd=common.ROOT, capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f"failed ({done.returncode}): python {' '.join(args)}\n{done.stdout[-2000:]}\n"
                       f"{done.stderr[-4000:]}")
  return done.stdout


def json_line(stdout: str) -> dict:
  """The last JSON line of a process's output."""
  return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def mode_of(measure: dict) -> str:
  """The mode a train_3d.py JSON line measured."""
  return "3d" if measure["ndim"] == 3 else ("2.5d" if measure["context_slices"] else "2d")


def read_speeds(path: str) -> dict[str, tuple[dict, dict]]:
  """mode -> (train line, predict line) from a --speed_only log or OUT/speed.jsonl (the last pair of a mode wins)."""
  with open(path) as f:
    lines = [json.loads(line) for line in f if line.startswith("{")]
  return {mode_of(t): (t, p) for t, p in zip(lines[::2], lines[1::2])}


def measure_speed(mode: str, extra: list[str]) -> tuple[dict, dict]:
  """(train step, test-volume inference) timings of one mode, each from its own train_3d.py process."""
  return measure(mode, "--steps=6", extra), measure(mode, "--mode=predict", extra)


def measure(mode: str, what: str, extra: list[str]) -> dict:
  """One train_3d.py timing of a mode: its train step (--steps=N) or its test-volume inference (--mode=predict)."""
  config = f"--config=configs/unet3d.py:{FLAGS.data},mode={mode}"
  return json_line(run(["benchmarks/train_3d.py", config, what, *extra]))


def speeds(extra: list[str]) -> dict[str, tuple[dict, dict]]:
  """Every mode's timings: --quiet_speed's, else OUT/speed.jsonl's, measured (and appended there) when missing."""
  if FLAGS.quiet_speed:
    found = read_speeds(FLAGS.quiet_speed)
    if set(FLAGS.modes) - set(found):
      raise InputError(f"--quiet_speed={FLAGS.quiet_speed} lacks mode(s) {sorted(set(FLAGS.modes) - set(found))}; "
                       "time them with --speed_only")
    return found
  cache = os.path.join(FLAGS.out, SPEED_FILE)
  found = read_speeds(cache) if os.path.isfile(cache) else {}
  for mode in FLAGS.modes:
    if mode not in found:
      found[mode] = measure_speed(mode, extra)
    elif FLAGS.rescore:  # the train step's timing stays: it sized the runs
      found[mode] = (found[mode][0], measure(mode, "--mode=predict", extra))
    else:
      continue
    with open(cache, "a") as f:  # the last pair of a mode wins
      f.writelines(json.dumps(line) + "\n" for line in found[mode])
  return found


def train_and_score(mode: str, seed: int, speed: dict, extra: list[str]) -> dict:
  """Trains one mode at `seed` for the budget and scores val and test (unless done); the run's values."""
  name = seed_runs.run_name(mode, seed)
  workdir = os.path.join(FLAGS.out, name)
  config = [f"--config=configs/unet3d.py:{FLAGS.data},mode={mode}", f"--config.seed={seed}", f"--workdir={workdir}"]
  if FLAGS.quiet_speed:
    steps = max(20, int(0.9 * (FLAGS.minutes * 60 - speed["compile_s"]) / speed["step_s"]))
    length = [f"--config.train.steps={steps}", "--config.train.budget_minutes=0", "--config.train.max_minutes=0"]
  else:
    steps = max(20, int(0.8 * (FLAGS.minutes * 60 - speed["compile_s"]) / speed["step_s"]))  # an estimate
    length = [f"--config.train.budget_minutes={FLAGS.minutes}", f"--config.train.max_minutes={FLAGS.minutes}"]
  every = max(5, steps // 5)
  schedule = [f"--config.train.eval_every={every}", f"--config.train.checkpoint_every={every}",
              f"--config.optim.warmup_steps={max(11, steps // 10)}"]
  report = os.path.join(workdir, "report")
  if FLAGS.rescore and os.path.isdir(report):
    os.rename(report, next(f"{report}.{n}" for n in range(1, 10000) if not os.path.exists(f"{report}.{n}")))
  seconds = seed_runs.run_stages(FLAGS.out, name, {
      "train": ["train.py", *config, *length, *schedule, *extra],
      "evaluate": ["evaluate.py", *config, "--split=val,test", "--save_predictions=false", *EVAL_OVERRIDES, *extra]},
      redo=("evaluate",) if FLAGS.rescore else ())
  test = next(r for r in report_doc.load(report)["runs"] if r["split"] == "test")
  f1 = {dims: next(s["f1"] for s in test["instances"][dims] if abs(s["iou_threshold"] - 0.5) < 1e-9)
        for dims in ("2d", "3d")}
  return {"mode": mode, "seed": seed, "test_dice": test["pixel"]["dice"], "test_iou": test["pixel"]["iou"],
          "f1_3d": f1["3d"], "f1_2d": f1["2d"], "threshold": test["threshold"]["value"],
          "min_size": test["threshold"].get("min_size"),  # absent from reports made before it was recorded
          **seed_runs.training_time(workdir), "train_s": seconds["train"], "evaluate_s": seconds["evaluate"]}


def restore_records(names: list[str]) -> None:
  """Puts the runs and timings --records keeps into OUT where OUT lacks them; refuses a rescoring of a restored
  run (it has no checkpoint)."""
  os.makedirs(FLAGS.records, exist_ok=True)
  speed = os.path.join(FLAGS.records, SPEED_FILE)
  if os.path.isfile(speed) and not os.path.isfile(os.path.join(FLAGS.out, SPEED_FILE)):
    shutil.copyfile(speed, os.path.join(FLAGS.out, SPEED_FILE))
  restored = seed_runs.restore(FLAGS.records, FLAGS.out, names)
  if restored and FLAGS.rescore:
    raise InputError(f"runs {', '.join(restored)} come from --records={FLAGS.records} without checkpoints and "
                     "cannot be scored again; rescore on the machine that trained them, or drop --rescore")
  if restored:
    print(f"restored from {FLAGS.records}: {', '.join(restored)}", flush=True)


def describe(mode: str, speed: dict) -> str:
  """'3D (2 x 4 x 256²)': the mode and its training batch."""
  return f"{LABELS[mode]} ({speed['batch']} x {' x '.join(str(p) for p in speed['patch'])})"


def table(rows: list[dict], timings: dict[str, tuple[dict, dict]]) -> str:
  """The Markdown summary: one line per mode (means over seeds, 95 % t intervals), then (given two modes or more)
  each one's difference from the first."""
  by = {m: {r["seed"]: r for r in rows if r["mode"] == m} for m in FLAGS.modes}

  def of(mode: str, key: str) -> dict:
    return seed_runs.summary({s: r[key] for s, r in by[mode].items()})

  lines = ["| mode (batch x patch) | seeds | test Dice [95 % CI over seeds] | 3D instance F1 @ IoU 0.5 [95 % CI] | "
           "2D instance F1 | min object size, voxels (per seed) | steps | train min | s / step | s per test volume |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for m in FLAGS.modes:
    means = [seed_runs.mean_text(by[m], key, digits) for key, digits in (("f1_2d", 3), ("steps", 0), ("minutes", 1),
                                                                          ("s_per_step", 2))]
    sizes = [by[m][s].get("min_size") for s in sorted(by[m])]
    means.insert(1, " / ".join("-" if v is None else str(v) for v in sizes) or "-")
    lines.append(f"| {describe(m, timings[m][0])} | {len(by[m])} | {seed_runs.with_interval(of(m, 'test_dice'))} | "
                 f"{seed_runs.with_interval(of(m, 'f1_3d'), 3)} | {' | '.join(means)} | "
                 f"{timings[m][1]['predict_s_per_volume']:.1f} |")
  if len(FLAGS.modes) < 2:
    return "\n".join(lines)
  reference = FLAGS.modes[0]
  lines += ["", f"| paired difference from {LABELS[reference]} | seeds | test Dice [95 % CI] | "
                "3D instance F1 [95 % CI] |", "|---|---|---|---|"]
  for m in FLAGS.modes[1:]:
    dice, f1 = (seed_runs.paired_difference({s: r[k] for s, r in by[reference].items()},
                                            {s: r[k] for s, r in by[m].items()}) for k in ("test_dice", "f1_3d"))
    lines.append(f"| {LABELS[m]} - {LABELS[reference]} | {dice['n']} | {seed_runs.with_interval(dice, signed=True)} | "
                 f"{seed_runs.with_interval(f1, 3, signed=True)} |")
  return "\n".join(lines)


def readme_rows(rows: list[dict], command: str) -> str:
  """The README's table for this data set: each mode's test Dice over the seeds, its 3D instance F1, the command."""
  lines = [f"| {DATA_NAMES[FLAGS.data]}, {FLAGS.minutes:g} minutes of training | test Dice [95 % CI over seeds] | "
           "3D instance F1 | command |", "|---|---|---|---|"]
  for i, m in enumerate(FLAGS.modes):
    runs = {r["seed"]: r for r in rows if r["mode"] == m}
    dice, f1 = (seed_runs.summary({s: r[k] for s, r in runs.items()}) for k in ("test_dice", "f1_3d"))
    seeds = f"{len(runs)} seed{'s' * (len(runs) != 1)}"
    lines.append(f"| {LABELS[m]} ({seeds}) | {seed_runs.with_interval(dice)} | {f1['estimate']:.3f} | "
                 f"{f'`{command}`' if i == 0 else '(same)'} |")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  extra = argv[1:]
  try:
    seeds = seed_runs.parse_seeds(FLAGS.seeds)
    if set(FLAGS.modes) - set(LABELS) or len(set(FLAGS.modes)) != len(FLAGS.modes):
      raise InputError(f"--modes={','.join(FLAGS.modes)}: give distinct modes from {tuple(LABELS)}")
    key = f"compare_dims {FLAGS.data} {FLAGS.minutes:g}min"  # one table per data set and budget
    for path, block in ((FLAGS.doc, key), (FLAGS.readme, f"{key} rows")):
      if path and not FLAGS.speed_only:
        seed_runs.check_block(path, block)
    os.makedirs(FLAGS.out, exist_ok=True)
    FLAGS.out = os.path.abspath(FLAGS.out)
    if FLAGS.speed_only:
      for mode in FLAGS.modes:
        print(*(json.dumps(line) for line in measure_speed(mode, extra)), sep="\n", flush=True)
      return
    order = seed_runs.run_order(FLAGS.modes, seeds)
    if FLAGS.records:
      restore_records([seed_runs.run_name(mode, seed) for seed, mode in order])
    timings = speeds(extra)
    if FLAGS.records and os.path.isfile(os.path.join(FLAGS.out, SPEED_FILE)):
      shutil.copyfile(os.path.join(FLAGS.out, SPEED_FILE), os.path.join(FLAGS.records, SPEED_FILE))
    rows = []
    for seed, mode in order:
      rows.append(train_and_score(mode, seed, timings[mode][0], extra))
      if FLAGS.records:
        seed_runs.keep(FLAGS.out, seed_runs.run_name(mode, seed), FLAGS.records)
      print(json.dumps(rows[-1]), flush=True)
    command = f"python benchmarks/compare_dims.py {' '.join(sys.argv[1:])}"
    budget = "fixed steps from --quiet_speed" if FLAGS.quiet_speed else "wall minutes, compiling included"
    test_shape = " x ".join(str(n) for n in timings[FLAGS.modes[0]][1]["test_shape"])
    text = (f"{table(rows, timings)}\n\n`{command}`, {datetime.date.today().isoformat()}: {FLAGS.minutes:g} "
            f"minutes of training per run ({budget}); test volume {test_shape}.")
    rows_md = readme_rows(rows, command)
    for name, content in (("table.md", text), ("readme_rows.md", rows_md)):
      with open(os.path.join(FLAGS.out, name), "w") as f:
        f.write(content + "\n")
    print(text, "", "README rows:", rows_md, sep="\n")
    seed_runs.finish(FLAGS.out, rows, text, FLAGS.doc, key)
    if FLAGS.readme:
      seed_runs.replace_block(FLAGS.readme, f"{key} rows", rows_md)
  except (InputError, RuntimeError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
