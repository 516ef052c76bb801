"""Cross-validated accuracy of ours and the PyTorch script at equal minutes, paired fold by fold.

  python benchmarks/cv_table.py --folds=7 --val_slices=2 --seeds=0,1 --minutes=10,20,40 --out=runs/cv_table
  python benchmarks/cv_table.py ... --dry_run     # the commands and the estimated minutes, nothing run
  pip install -r benchmarks/requirements.txt      # the script needs torch and monai

One 4-slice test stack gives a 95 % interval of about +-0.015 Dice, wider than the differences between
recipes (0.002-0.01). Here every labelled VNC slice tests once: the 14 slices of stack 1 (training.tif then
testing.tif, slices 0-13) are cut into --folds contiguous test folds (`assign_folds`); each fold validates
on the --val_slices slices right after its test slices (right before them at the end of the stack) and
trains on the rest. Each fold's stacks are written once to OUT/folds/fold_K/ (training.tif = train slices
then val slices, so `data.val_slices` carves exactly the val ones; testing.tif = the test slices;
val_test.tif = val then test images, for prediction).

For every seed, fold and budget M, in that nesting, the two sides run alternately (ours, script, ours,
...), so drift of the machine during the sitting falls on both:
- ours: train.py --config=OURS_CONFIG (--ours_config, default configs/unet2d.py:vnc) on the fold,
  `train.budget_minutes=M`, then evaluate.py --input=val_test.tif (its eval.checkpoint, TTA as configured)
  for the probabilities;
- the script: benchmarks/torch_train.py --minutes=M on the same training slices (--val_slices holds the
  val ones out), its final weights' probabilities of the same slices.
Each run keeps its probabilities (OUT/runs/NAME/predicted/probabilities.tif), so decision rules are
compared without retraining (RULES): the candidate threshold of best val Dice (what our recipe does), a
fixed 0.5 (what the script does), and the val threshold shrunk halfway to 0.5. Per run and rule: test Dice
(pixels of the test slices) and per-object F1 at IoU 0.5 (2D components, predicted ones under eval.min_size
and eval.min_area dropped; unet_jax/scores/instances.py). Candidates, min_size and min_area are
--ours_config's (its file, not the --config.x=v overrides). Thresholds are chosen on val only; test decides
nothing. The folds join slices that are not neighbours, so --ours_config must be 2D without
model.context_slices.

--variant=NAME:FLAGS (repeatable) adds a recipe of ours, a lever to measure: FLAGS (--config.x=v overrides) are
added to ours' in its train.py and evaluate.py. It runs on every fold beside ours and the script (ours, the
variants, the script in turn; its own warm-up in OUT/warm_up_NAME), and the table adds NAME - script and NAME -
ours, paired as ours - script is. A variant that trains on its val slices (data.final_fit) has only the `0.5`
rule fixed in advance: its `val` and `halfway` rows choose on slices it trained on.

The table (OUT/table.md, printed after every run) gives each side's mean over folds and seeds, and the
difference ours - script at each budget (and ours at the smallest budget against the script at the largest,
and at each --script_minutes budget, which the script alone runs; --noscript_at_minutes leaves out the script
at --minutes) with a paired 95 % t-interval: seeds are averaged within a fold, the folds are the units (n = --folds).
The folds share training slices, so the interval is somewhat too narrow (Bengio & Grandvalet 2004).

Before the first run of ours, a 2-step run of ours on fold 0 and its prediction (OUT/warm_up; --nowarm_up to skip)
fill the XLA compilation cache, so that no fold's budget pays for compiling. A run whose scores.json exists is not
rerun (ours resumes training from its checkpoints when it has no probabilities yet); each finished run prints one
JSON line. A table longer than one sitting is split by fold (--run_folds=0,1,2 now, --run_folds=3,4,5,6 later):
each fold's runs stay within one sitting, so its paired difference shares the machine's speed. With
--records=benchmarks/records/NAME (a committed folder) each finished run's scores.json and commands are kept there
and count as done on a machine whose --out is gone, so the sittings need not share a machine. Extra
`--config.x=v` flags go to train.py and evaluate.py; --script_flags go to torch_train.py. Smoke run (seconds per
run):

  python benchmarks/cv_table.py --data=synthetic --folds=2 --val_slices=1 --minutes=0.05 \
      --ours_config=configs/unet2d.py:tiny --config.train.budget_measure_steps=2 \
      --script_flags="--patch=32 --window=32 --batch=2 --measure_steps=2" --out=/tmp/cv_smoke
"""

import dataclasses
import json
import os
import re
import shlex
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
from absl import app, flags
from scipy import stats

import common
from unet_jax.errors import InputError
from unet_jax.io import stacks, synthetic
from unet_jax.scores import instances, metrics

SIDES = ("ours", "script")
RULES: dict[str, Callable[[float], float]] = {  # name -> test threshold from the val-chosen threshold
    "val": lambda t: t,
    "0.5": lambda t: 0.5,
    "halfway": lambda t: (t + 0.5) / 2,
}
SYNTHETIC = (8, (64, 64))  # --data=synthetic: slices and their shape (seed 0)
OURS_OVERRUN = 1.07  # ours trained 21.6 min for a 20-min budget, 42.9 for 40 (docs/results/default-recipe.md)

flags.DEFINE_string("data", common.VNC, "Folder of the VNC stacks (training.tif, testing.tif and their "
                    "_groundtruth masks), or 'synthetic' for a smoke run.")
flags.DEFINE_integer("folds", 7, "Contiguous test folds over the labelled slices.")
flags.DEFINE_integer("val_slices", 2, "Validation slices per fold, next to its test slices.")
flags.DEFINE_string("seeds", "0", "Seeds of both sides, comma-separated.")
flags.DEFINE_string("minutes", "10,20,40", "Budgets, comma-separated.")
flags.DEFINE_string("script_minutes", "", "Budgets the script alone runs, comma-separated (e.g. 40), each compared "
                    "with ours at the smallest --minutes: does ours at 10 minutes match the script at 40?")
flags.DEFINE_bool("script_at_minutes", True, "The script runs at each --minutes budget too; --noscript_at_minutes "
                  "leaves those out (e.g. when the equal-minute table exists and only --script_minutes is wanted): "
                  "the table then pairs over the folds that have both sides.")
flags.DEFINE_string("run_folds", "", "Folds this sitting runs, comma-separated indices (empty: all). The table "
                    "covers every finished run in --out, so a long table can be split over sittings, each fold's "
                    "runs within one.")
flags.DEFINE_string("ours_config", "configs/unet2d.py:vnc",
                    "Config of our runs (file.py:variant); named apart from the benchmarks' --config.")
flags.DEFINE_multi_string("variant", [], "NAME:FLAGS, repeatable: another recipe of ours, FLAGS being --config.x=v "
                          "overrides (space-separated) added to ours' for train.py and evaluate.py. It runs beside ours "
                          "and the script on every fold, and the table adds NAME - ours and NAME - script.")
flags.DEFINE_string("script_flags", "", "Extra flags of benchmarks/torch_train.py, space-separated.")
flags.DEFINE_string("out", "runs/cv_table", "Folder of the folds, the runs, their logs and table.md.")
flags.DEFINE_string("records", None, "Folder (committed) that keeps each finished run's scores with its commands: "
                    "runs it holds that --out lacks count as done, so a table is completed over sittings on machines "
                    "that do not keep --out (their probabilities are not kept: a new rule needs the runs again).")
flags.DEFINE_bool("dry_run", False, "Print the commands and the estimated minutes; run nothing.")
flags.DEFINE_bool("warm_up", True, "Before the first run of ours, fill the XLA compilation cache with a 2-step run "
                  "of ours on fold 0 and its prediction (OUT/warm_up), so that no fold's budget pays for compiling.")
flags.DEFINE_float("ours_overhead", 3.0, "Minutes of one run of ours beyond OURS_OVERRUN x its budget (start, "
                   "compile, prediction), for the estimate.")
flags.DEFINE_float("script_overhead", 1.0, "Minutes of one script run beyond its budget, for the estimate.")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Fold:
  """Slice indices of one fold: tested, validated (threshold, checkpoint), trained on."""
  index: int
  test: tuple[int, ...]
  val: tuple[int, ...]
  train: tuple[int, ...]


def assign_folds(n_slices: int, k: int, val_slices: int) -> list[Fold]:
  """k contiguous test folds of slices 0..n-1 (sizes differ by at most one, larger first); each validates on
  the `val_slices` slices right after its test slices, or right before them when fewer follow."""
  if not 2 <= k <= n_slices:
    raise InputError(f"--folds={k}: choose 2 to {n_slices} folds of the {n_slices} labelled slices")
  sizes = [n_slices // k + (i < n_slices % k) for i in range(k)]
  if val_slices < 1 or n_slices - max(sizes) - val_slices < 1:
    raise InputError(f"--val_slices={val_slices}: choose 1 to {n_slices - max(sizes) - 1} (test folds of up to "
                     f"{max(sizes)} slices, at least one training slice)")
  folds, start = [], 0
  for i, size in enumerate(sizes):
    test = range(start, start + size)
    if test.stop + val_slices <= n_slices:
      val = range(test.stop, test.stop + val_slices)
    elif test.start >= val_slices:
      val = range(test.start - val_slices, test.start)
    else:
      raise InputError(f"--val_slices={val_slices}: test fold {i} (slices {test.start}-{test.stop - 1}) has fewer "
                       "slices on either side; choose fewer")
    train = tuple(z for z in range(n_slices) if z not in test and z not in val)
    folds.append(Fold(i, tuple(test), tuple(val), train))
    start += size
  return folds


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: a side on a fold at a seed and a budget."""
  side: str
  fold: Fold
  seed: int
  minutes: float

  @property
  def name(self) -> str:
    return f"{self.side}_f{self.fold.index}_s{self.seed}_{self.minutes:g}min"


def plan(folds: Sequence[Fold], seeds: Sequence[int], budgets: Sequence[float],
         script_budgets: Sequence[float] = (), variants: Sequence[str] = (),
         script_at_budgets: bool = True) -> list[Run]:
  """Every run in the order of the sitting: seed, fold, budget, then ours, its variants and the script in turn
  (the script alone at `script_budgets`; at `budgets` too unless `script_at_budgets` is False)."""
  return [Run(side, fold, seed, m) for seed in seeds for fold in folds for m in sorted({*budgets, *script_budgets})
          for side in sides_at(m, budgets, script_budgets, variants, script_at_budgets)]


def script_runs_at(budgets: Sequence[float], script_budgets: Sequence[float], script_at_budgets: bool) -> set[float]:
  """The budgets the script runs at: its own, and ours unless `script_at_budgets` is False."""
  return {*script_budgets, *(budgets if script_at_budgets else ())}


def sides_at(m: float, budgets: Sequence[float], script_budgets: Sequence[float], variants: Sequence[str],
             script_at_budgets: bool = True) -> tuple[str, ...]:
  """The sides that run at budget `m`, in the sitting's order: ours, its variants, the script."""
  script = m in script_runs_at(budgets, script_budgets, script_at_budgets)
  return (*(("ours", *variants) if m in budgets else ()), *(("script",) if script else ()))


def parse_variants(specs: Sequence[str]) -> dict[str, list[str]]:
  """['NAME:--config.x=v --config.y=w', ...] -> {NAME: [flags]}; names are new lowercase identifiers."""
  variants = {}
  for spec in specs:
    name, _, text = spec.partition(":")
    flags_of = shlex.split(text)
    if (not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in SIDES or name in variants or not flags_of
        or any(not f.startswith("--config.") for f in flags_of)):
      raise InputError(f"--variant={spec!r}: write NAME:--config.x=v ..., NAME a new lowercase identifier (not "
                       f"{' or '.join(SIDES)}) and at least one --config override")
    variants[name] = flags_of
  return variants


def labelled_stack(data: str) -> tuple[np.ndarray, np.ndarray]:
  """(image, mask) u8[Z, H, W] of every labelled slice in order: VNC's training then testing stack, or synthetic."""
  if data == "synthetic":
    return synthetic.make_stack(0, *SYNTHETIC)
  names = ("training.tif", "training_groundtruth.tif", "testing.tif", "testing_groundtruth.tif")
  missing = [n for n in names if not os.path.isfile(os.path.join(data, n))]
  if missing:
    raise InputError(f"--data={data} lacks {', '.join(missing)} (the VNC data lives in ../shared/data/vnc)")
  image, mask, test_image, test_mask = (stacks.read_stack(os.path.join(data, n)) for n in names)
  return np.concatenate([image, test_image]), np.concatenate([mask, test_mask])


def write_fold(folder: str, image: np.ndarray, mask: np.ndarray, fold: Fold) -> None:
  """The fold's stacks in `folder` (module docstring), unless its fold.json (written last) already matches."""
  record, indices = os.path.join(folder, "fold.json"), json.loads(json.dumps(dataclasses.asdict(fold)))
  if os.path.isfile(record) and json.load(open(record)) == indices:
    return
  trained = list(fold.train + fold.val)  # data.val_slices carves the last ones
  for name, slices in (("training", trained), ("testing", list(fold.test))):
    stacks.write_stack(os.path.join(folder, f"{name}.tif"), image[slices])
    stacks.write_stack(os.path.join(folder, f"{name}_groundtruth.tif"), mask[slices])
  stacks.write_stack(os.path.join(folder, "val_test.tif"), image[list(fold.val + fold.test)])
  with open(record, "w") as f:
    json.dump(indices, f)


def ours_commands(workdir: str, folder: str, n_val: int, seed: int, length: Sequence[str], config: str,
                  extra: Sequence[str]) -> list[list[str]]:
  """train.py (its run length given by the `length` flags) and evaluate.py --input=val_test.tif of ours on a fold."""
  shared = [f"--config={config}", f"--workdir={workdir}", "--config.data.name=folder", f"--config.data.root={folder}",
            f"--config.data.val_slices={n_val}", f"--config.seed={seed}", *extra]
  return [[sys.executable, "train.py", *shared, *length],
          [sys.executable, "evaluate.py", *shared, f"--input={os.path.join(folder, 'val_test.tif')}",
           f"--output_dir={os.path.join(workdir, 'predicted')}", "--config.eval.select_threshold=False"]]


def commands(run: Run, out: str, config: str, extra: Sequence[str], script_flags: Sequence[str],
             variants: dict[str, list[str]] | None = None) -> list[list[str]]:
  """The commands of `run`: train.py and evaluate.py --input for ours (a variant adds its flags to `extra`),
  torch_train.py for the script."""
  folder, workdir = os.path.join(out, "folds", f"fold_{run.fold.index}"), os.path.join(out, "runs", run.name)
  if run.side == "script":
    probabilities = os.path.join(workdir, "predicted", "probabilities.tif")
    return [[sys.executable, "benchmarks/torch_train.py", f"--data={folder}", f"--val_slices={len(run.fold.val)}",
             f"--seed={run.seed}", f"--minutes={run.minutes:g}", "--checkpoints=1", f"--probabilities={probabilities}",
             *script_flags]]
  return ours_commands(workdir, folder, len(run.fold.val), run.seed, [f"--config.train.budget_minutes={run.minutes:g}"],
                       config, [*extra, *(variants or {}).get(run.side, [])])


def warm_up_commands(out: str, fold: Fold, config: str, extra: Sequence[str], name: str = "warm_up") -> list[list[str]]:
  """Ours for 2 steps on `fold`, then its prediction, in OUT/NAME: the programs every run of ours compiles.

  A run's budget counts from its start, compiling included; on an H200 the first run with an empty compilation
  cache spent its whole half-minute budget compiling (10 steps) while the later ones made 1065-1501
  (docs/results/cross-validation.md). The warm-up puts that one-off cost before the sitting."""
  return ours_commands(os.path.join(out, name), os.path.join(out, "folds", f"fold_{fold.index}"), len(fold.val),
                       0, ["--config.train.budget_minutes=0", "--config.train.steps=2"], config, extra)


def score(probs: np.ndarray, mask: np.ndarray, n_val: int, candidates: Sequence[float], min_size: int,
          min_area: int) -> dict:
  """Per rule of RULES: threshold, test Dice, precision, recall and per-object F1 at IoU 0.5, from the
  probabilities f32[V + T, H, W] of the val then test slices and their mask u8[V + T, H, W]."""
  val_threshold = metrics.best_dice_threshold(probs[:n_val], mask[:n_val] > 0, candidates)[0]
  test_probs, truth = probs[n_val:], mask[n_val:] > 0
  true_labels = instances.label_instances(truth, 2)
  rules = {}
  for rule, threshold_of in RULES.items():
    threshold = threshold_of(val_threshold)
    pred = test_probs >= threshold
    pixel = metrics.scores_from_counts(metrics.confusion_counts(pred, truth))
    overlaps = instances.overlaps(true_labels, instances.label_instances(pred, 2, min_size, min_area))
    found = len(instances.match(overlaps, 0.5)[2])
    objects = {"tp": found, "fp": overlaps.n_pred - found, "fn": overlaps.n_true - found, "tn": 0}
    rules[rule] = {"threshold": threshold, "dice": pixel["dice"], "precision": pixel["precision"],
                   "recall": pixel["recall"], "f1": metrics.scores_from_counts(objects)["dice"]}
  return rules


def trained(run: Run, workdir: str, log: str) -> dict:
  """{'steps', 'train_minutes'} of a finished run: our training log, or the script's last JSON line."""
  if run.side != "script":
    from unet_jax.io import runlog  # pylint: disable=g-import-not-at-top
    last = runlog.read(runlog.log_path(workdir))[0][-1]
  else:
    last = [json.loads(line) for line in open(log) if line.startswith("{")][-1]
  return {"steps": last["step"], "train_minutes": last["minutes"]}


def execute(run: Run, out: str, commands_of_run: list[list[str]], stack: tuple[np.ndarray, np.ndarray],
            eval_config: Any) -> None:
  """Runs `run` unless its probabilities exist, and scores them into its scores.json."""
  workdir = os.path.join(out, "runs", run.name)
  log, probabilities = workdir + ".log", os.path.join(workdir, "predicted", "probabilities.tif")
  start = time.time()
  if not os.path.isfile(probabilities):
    os.makedirs(os.path.dirname(probabilities), exist_ok=True)
    for command in commands_of_run:
      print("$", " ".join(command), flush=True)
      common.run_logged(command, log)
  wall = (time.time() - start) / 60
  slices = list(run.fold.val + run.fold.test)
  rules = score(stacks.read_stack(probabilities).astype(np.float32), stack[1][slices], len(run.fold.val),
                [float(t) for t in eval_config.threshold_candidates], eval_config.min_size, eval_config.min_area)
  record = {"side": run.side, "fold": run.fold.index, "seed": run.seed, "minutes": run.minutes,
            "test_slices": list(run.fold.test), "val_slices": list(run.fold.val), "wall_minutes": wall,
            **trained(run, workdir, log), "rules": rules, "finished": common.machine()}
  with open(os.path.join(workdir, "scores.json"), "w") as f:
    json.dump(record, f)


def keep(run: Run, out: str, records: str, commands_of_run: list[list[str]]) -> None:
  """Copies the finished run's scores.json into `records` as NAME.json, with its (marked) commands."""
  with open(os.path.join(out, "runs", run.name, "scores.json")) as f:
    record = {**json.load(f), "commands": [common.marked(c, out) for c in commands_of_run]}
  os.makedirs(records, exist_ok=True)
  with open(os.path.join(records, run.name + ".json"), "w") as f:
    json.dump(record, f, indent=1)


def restore(run: Run, out: str, records: str, commands_of_run: list[list[str]]) -> bool:
  """Puts the run's kept scores into OUT when OUT lacks them; InputError when they were made with other
  commands. True when restored."""
  path, scores = os.path.join(records, run.name + ".json"), os.path.join(out, "runs", run.name, "scores.json")
  if os.path.isfile(scores) or not os.path.isfile(path):
    return False
  with open(path) as f:
    record = json.load(f)
  if record.pop("commands") != [common.marked(c, out) for c in commands_of_run]:
    raise InputError(f"{path} keeps run {run.name} made with other commands; use another --records (or delete it "
                     "to run it again)")
  os.makedirs(os.path.dirname(scores), exist_ok=True)
  with open(scores, "w") as f:
    json.dump(record, f)
  return True


def paired_interval(differences: dict[int, list[float]], confidence: float = 0.95) -> dict:
  """Mean of fold -> [ours - script per seed] with its t-interval over folds (seeds averaged within a fold)."""
  per_fold = [statistics.mean(d) for d in differences.values() if d]
  n = len(per_fold)
  mean = statistics.mean(per_fold) if n else None
  if n < 2:
    return {"mean": mean, "low": None, "high": None, "n": n}
  half = stats.t.ppf((1 + confidence) / 2, n - 1) * statistics.stdev(per_fold) / n ** 0.5
  return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def comparisons(budgets: Sequence[float], script_budgets: Sequence[float] = (),
                script_at_budgets: bool = True) -> list[tuple[float, float]]:
  """(our budget, the script's budget) pairs where the script runs: equal budgets, then our smallest against the
  script's largest and against each script-only budget."""
  runs = script_runs_at(budgets, script_budgets, script_at_budgets)
  pairs = [(m, m) for m in budgets if m in runs]
  return pairs + [(min(budgets), m) for m in sorted({max(budgets), *script_budgets}) if m != min(budgets) and m in runs]


def differences(budgets: Sequence[float], script_budgets: Sequence[float] = (), variants: Sequence[str] = (),
                script_at_budgets: bool = True) -> list[tuple[str, float, str, float]]:
  """(side, budget, other side, budget) of the table's paired differences: ours and each variant against the
  script (`comparisons`), then each variant against ours at equal budgets."""
  return ([(side, a, "script", b) for side in ("ours", *variants)
           for a, b in comparisons(budgets, script_budgets, script_at_budgets)]
          + [(variant, m, "ours", m) for variant in variants for m in budgets])


def table(records: Sequence[dict], budgets: Sequence[float], script_budgets: Sequence[float] = (),
          variants: Sequence[str] = (), script_at_budgets: bool = True) -> str:
  """The Markdown tables of the finished runs: means per side and budget (those planned, a side with no finished
  run shown with 0 runs), paired differences."""
  rules = list(RULES)
  lines = ["| budget (min) | side | runs | " + " | ".join(f"{r}: Dice / F1" for r in rules)
           + " | val threshold | steps | wall min |", "|---|---|---|" + "---|" * (len(rules) + 3)]
  for m in sorted({*budgets, *script_budgets}):
    for side in sides_at(m, budgets, script_budgets, variants, script_at_budgets):
      group = [r for r in records if r["side"] == side and r["minutes"] == m]
      if not group:
        lines.append(f"| {m:g} | {side} | 0 |" + " |" * (len(rules) + 3))
        continue
      mean = lambda f: statistics.mean(f(r) for r in group)
      cells = [f"{mean(lambda r: r['rules'][k]['dice']):.4f} / {mean(lambda r: r['rules'][k]['f1']):.3f}" for k in rules]
      lines.append(f"| {m:g} | {side} | {len(group)} | " + " | ".join(cells) + f" | "
                   f"{mean(lambda r: r['rules']['val']['threshold']):.2f} | {mean(lambda r: r['steps']):.0f} | "
                   f"{mean(lambda r: r['wall_minutes']):.1f} |")
  lines += ["", "| difference | rule | folds | Dice difference [95 % interval] | F1 difference [95 % interval] |",
            "|---|---|---|---|---|"]
  by_key = {(r["side"], r["fold"], r["seed"], r["minutes"]): r for r in records}
  for side, side_m, other_side, other_m in differences(budgets, script_budgets, variants, script_at_budgets):
    for rule in rules:
      cells = []
      for metric in ("dice", "f1"):
        per_fold: dict[int, list[float]] = {}
        for (s, fold, seed, m), r in by_key.items():
          other = by_key.get((other_side, fold, seed, other_m))
          if s == side and m == side_m and other:
            per_fold.setdefault(fold, []).append(r["rules"][rule][metric] - other["rules"][rule][metric])
        d = paired_interval(per_fold)
        cells.append("-" if d["mean"] is None else f"{d['mean']:+.4f}" + (
            f" [{d['low']:+.4f}, {d['high']:+.4f}]" if d["low"] is not None else ""))
        n = d["n"]
      lines.append(f"| {side}@{side_m:g} - {other_side}@{other_m:g} | {rule} | {n} | {cells[0]} | {cells[1]} |")
  return "\n".join(lines)


def estimate(run: Run, ours_overhead: float, script_overhead: float) -> float:
  """Expected wall minutes of `run`: its budget (ours overruns by OURS_OVERRUN) plus the side's overhead."""
  return run.minutes * OURS_OVERRUN + ours_overhead if run.side != "script" else run.minutes + script_overhead


def main(argv: list[str]) -> None:
  args, extra = FLAGS, argv[1:]
  if any(not e.startswith("--config.") for e in extra):
    sys.exit("error: flags other than cv_table.py's must be --config.x=v overrides of our runs")
  try:
    budgets = [float(m) for m in args.minutes.split(",")]
    script_budgets = [float(m) for m in args.script_minutes.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",")]
    run_folds = {int(k) for k in args.run_folds.split(",") if k}
    variants = parse_variants(args.variant)
  except InputError as e:
    sys.exit(f"error: {e}")
  except ValueError as e:
    sys.exit(f"error: --minutes, --script_minutes, --seeds and --run_folds take comma-separated numbers ({e})")
  if run_folds - set(range(args.folds)):
    sys.exit(f"error: --run_folds={args.run_folds}: fold indices run from 0 to {args.folds - 1}")
  config = common.load_config(args.ours_config)
  if config.model.ndim != 2 or config.model.context_slices:
    sys.exit("error: a fold's training stack joins slices that are not neighbours: use a 2D config without "
             "model.context_slices")
  try:
    stack = labelled_stack(args.data)
    folds = assign_folds(stack[0].shape[0], args.folds, args.val_slices)
  except InputError as e:
    sys.exit(f"error: {e}")
  runs = plan(folds, seeds, budgets, script_budgets, list(variants), args.script_at_minutes)
  script_flags = shlex.split(args.script_flags)
  commands_of = lambda run: commands(run, args.out, args.ours_config, extra, script_flags, variants)
  if args.records:
    try:
      restored = [run.name for run in runs if restore(run, args.out, args.records, commands_of(run))]
    except InputError as e:
      sys.exit(f"error: {e}")
    if restored:
      print(f"restored from {args.records}: {', '.join(restored)}", flush=True)
  done = lambda run: os.path.isfile(os.path.join(args.out, "runs", run.name, "scores.json"))
  now = lambda run: not run_folds or run.fold.index in run_folds  # this sitting's folds
  warm_ups = [  # (folder name, commands) per side of ours with runs to do: a variant may compile other programs
      (name, warm_up_commands(args.out, folds[0], args.ours_config, [*extra, *variants.get(side, [])], name))
      for side, name in [("ours", "warm_up"), *((v, f"warm_up_{v}") for v in variants)]
      if args.warm_up and any(r.side == side and not done(r) and now(r) for r in runs)]
  warmed = lambda name: os.path.isfile(os.path.join(args.out, name, "predicted", "probabilities.tif"))
  if args.dry_run:
    for name, warm_up in warm_ups:
      for command in warm_up:
        print(("# done: " if warmed(name) else "") + shlex.join(command))
    for run in filter(now, runs):
      for command in commands_of(run):
        print(("# done: " if done(run) else "") + shlex.join(command))
    left = sum(estimate(r, args.ours_overhead, args.script_overhead) for r in runs if not done(r) and now(r))
    print(f"{len(runs)} runs ({sum(map(done, runs))} done); estimated {left:.0f} minutes ({left / 60:.1f} h) "
          f"for the rest (ours {OURS_OVERRUN:g} x budget + {args.ours_overhead:g} min, the script budget + "
          f"{args.script_overhead:g} min per run)")
    return
  for fold in folds:
    write_fold(os.path.join(args.out, "folds", f"fold_{fold.index}"), *stack, fold)
  for name, warm_up in warm_ups:
    if warmed(name):
      continue
    for command in warm_up:
      print("$", " ".join(command), flush=True)
      try:
        common.run_logged(command, os.path.join(args.out, f"{name}.log"))
      except RuntimeError as e:
        sys.exit(str(e))
  records = []
  for run in runs:
    path = os.path.join(args.out, "runs", run.name, "scores.json")
    if not done(run) and not now(run):
      continue
    if not done(run):
      try:
        execute(run, args.out, commands_of(run), stack, config.eval)
      except RuntimeError as e:
        sys.exit(str(e))
    if args.records:
      keep(run, args.out, args.records, commands_of(run))
    records.append(json.load(open(path)))
    print(json.dumps(records[-1]), flush=True)
    with open(os.path.join(args.out, "table.md"), "w") as f:
      f.write(table(records, budgets, script_budgets, list(variants), args.script_at_minutes) + "\n")
  print(table(records, budgets, script_budgets, list(variants), args.script_at_minutes), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_known_flags)
