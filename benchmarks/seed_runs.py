"""Benchmarks repeated over training seeds: the order of the runs, resuming, the per-arm summaries.

benchmarks/in_plane_3d.py and benchmarks/compare_dims.py train each arm (a network, a mode) once per seed
(`--config.seed`). Runs go seed by seed with the arms rotated one place at each seed (A, B / B, A / A, B;
three arms a Latin square), so a machine that drifts slower over hours of runs costs every arm alike and
a steady drift largely cancels from the paired differences. Each run keeps a record, OUT/NAME.json: its
commands and the wall seconds of every finished stage; a rerun of the same command skips the finished
stages (train.py resumes an interrupted training from its checkpoint) and refuses a record made with
other arguments instead of mixing the two. Scores are read back from each run's report, so a rerun
with every run done just prints the tables again.

Hours of runs outlive a sitting but not always its machine: `keep` copies a finished run's records (stage record,
training log, report.json: kilobytes, no checkpoint) into a folder that is committed, and `restore` puts them back
into an empty OUT on another machine, so a table is completed over several sittings and each run is trained once.
"""

import json
import os
import re
import shutil
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import common
from unet_jax.errors import InputError
from unet_jax.io import runlog
from unet_jax.reports import report as report_doc
from unet_jax.scores import intervals


def parse_seeds(text: Sequence[str]) -> list[int]:
  """--seeds=0,1,2 (absl's list) -> [0, 1, 2]; InputError for anything but distinct integers >= 0."""
  try:
    seeds = [int(s) for s in text]
  except ValueError:
    raise InputError(f"--seeds={','.join(text)}: give distinct integers >= 0, e.g. --seeds=0,1,2") from None
  if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
    raise InputError(f"--seeds={','.join(text)}: give distinct integers >= 0, e.g. --seeds=0,1,2")
  return seeds


def run_order(arms: Sequence[str], seeds: Sequence[int]) -> list[tuple[int, str]]:
  """(seed, arm) in running order: seed by seed, the arms rotated one place at each seed."""
  return [(seed, arms[(i + j) % len(arms)]) for i, seed in enumerate(seeds) for j in range(len(arms))]


def run_name(arm: str, seed: int) -> str:
  """The run's workdir and file stem under OUT."""
  return f"{arm}_s{seed}"


def run_stages(out: str, name: str, stages: dict[str, list[str]], redo: Sequence[str] = ()) -> dict[str, float]:
  """Runs `python ARGS` of each stage in order ({'train': [...], 'evaluate': [...]}), logged to OUT/NAME.log,
  except the stages OUT/NAME.json records as done and `redo` does not name (a rescoring); returns {stage: wall
  seconds} of them all."""
  path = os.path.join(out, name + ".json")
  record = {"stages": stages, "seconds": {}}
  if os.path.isfile(path):
    with open(path) as f:
      record = json.load(f)
    if record["stages"] != stages:
      raise InputError(f"{path} records run {name} with other arguments; use another --out, or delete "
                       f"{os.path.join(out, name)}* to run it again")
  for stage in redo:  # forgotten before it runs, so an interrupted redo is redone, never taken as done
    record["seconds"].pop(stage, None)
  for stage, args in stages.items():
    if stage in record["seconds"]:
      continue
    _write(path, record)
    start = time.perf_counter()
    common.run_logged([sys.executable, *args], os.path.join(out, name + ".log"))
    record["seconds"][stage] = round(time.perf_counter() - start, 1)
    record.setdefault("finished", {})[stage] = common.machine()
  _write(path, record)
  return record["seconds"]


def _write(path: str, record: dict) -> None:
  """Writes `record` as JSON atomically (a kill leaves the old or the new one)."""
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=1)
  os.replace(path + ".tmp", path)


def run_records(name: str) -> list[str]:
  """The files (relative to OUT) that hold a finished run's table values: its stage record, log and report."""
  return [name + ".json", os.path.join(name, runlog.FILE_NAME), os.path.join(name, "report", report_doc.FILE_NAME)]


def keep(out: str, name: str, records: str) -> None:
  """Copies finished run NAME's records from OUT into `records` (OUT's path in its arguments marked)."""
  _copy_records(name, out, records, lambda args: common.marked(args, out))


def restore(records: str, out: str, names: Sequence[str]) -> list[str]:
  """Copies into OUT the records of the runs in `names` that `records` keeps and OUT lacks (a run OUT has is
  left as it is); returns the names restored. A restored run has no checkpoint: it is never trained again, but
  cannot be rescored."""
  restored = []
  for name in names:
    if (not os.path.exists(os.path.join(out, name + ".json"))
        and all(os.path.isfile(os.path.join(records, rel)) for rel in run_records(name))):
      _copy_records(name, records, out, lambda args: common.unmarked(args, out))
      restored.append(name)
  return restored


def _copy_records(name: str, source: str, dest: str, relocate: Callable[[list[str]], list[str]]) -> None:
  """Copies run NAME's records from `source` to `dest`, its stage arguments through `relocate`."""
  for rel in run_records(name):
    target = os.path.join(dest, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if rel != name + ".json":
      shutil.copyfile(os.path.join(source, rel), target)
      continue
    with open(os.path.join(source, rel)) as f:
      record = json.load(f)
    record["stages"] = {stage: relocate(args) for stage, args in record["stages"].items()}
    _write(target, record)


def training_time(workdir: str) -> dict[str, float]:
  """{'steps', 'minutes' (training wall, validations included), 's_per_step'} from the run's log.jsonl.

  s/step is the median over the logged intervals that end at a loss record and start at a record of the same
  process (not at a start, whose interval holds the compile): training steps only, no validation pass.
  """
  records = [r for r in runlog.records(runlog.log_path(workdir)) if "step" in r and "minutes" in r]
  rates = [60.0 * (b["minutes"] - a["minutes"]) / (b["step"] - a["step"]) for a, b in zip(records, records[1:])
           if "loss" in b and "event" not in b and a.get("event") != "start" and b["step"] > a["step"]]
  trained = [r for r in records if "event" not in r]
  return {"steps": max(r["step"] for r in trained), "minutes": max(r["minutes"] for r in trained),
          "s_per_step": statistics.median(rates) if rates else None}


def summary(values: dict[int, float | None]) -> dict[str, Any]:
  """seed -> value: their mean with its 95 % t interval over the seeds (unet_jax.scores.intervals); None values
  (a run too short to time) are left out."""
  return intervals.mean_interval([values[s] for s in sorted(values) if values[s] is not None])


def mean_text(runs: dict[int, dict], key: str, digits: int) -> str:
  """The mean of runs[seed][key] over the seeds, with `digits` decimals ('-' without a value)."""
  mean = summary({s: r[key] for s, r in runs.items()})["estimate"]
  return "-" if mean is None else f"{mean:.{digits}f}"


def paired_difference(first: dict[int, float], second: dict[int, float]) -> dict[str, Any]:
  """second - first, seed by seed over the seeds both have: the mean difference with its 95 % t interval."""
  return summary({s: second[s] - first[s] for s in first.keys() & second.keys()})


def with_interval(s: dict[str, Any], digits: int = 4, signed: bool = False) -> str:
  """'0.9153 [0.9088, 0.9210]' (one value: no interval)."""
  f = f"{{:{'+' if signed else ''}.{digits}f}}"
  if s["estimate"] is None:
    return "-"
  if s["low"] is None:
    return f.format(s["estimate"])
  return f"{f.format(s['estimate'])} [{f.format(s['low'])}, {f.format(s['high'])}]"


def check_block(path: str, key: str) -> tuple[str, re.Pattern]:
  """The Markdown file's text and the pattern of its block `<!-- KEY begin -->` ... `<!-- KEY end -->`; an
  InputError naming the lines to add if it has none (checked before hours of runs, not after)."""
  try:
    with open(path) as f:
      doc = f.read()
  except OSError as e:
    raise InputError(f"cannot read {path} ({e.strerror}): give an existing Markdown file") from e
  begin, end = f"<!-- {key} begin -->", f"<!-- {key} end -->"
  pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.S)
  if not pattern.search(doc):
    raise InputError(f"{path} has no block '{begin}' ... '{end}' to write the table into; add those two lines "
                     "where the table goes")
  return doc, pattern


def replace_block(path: str, key: str, text: str) -> None:
  """Replaces what lies between the lines `<!-- KEY begin -->` and `<!-- KEY end -->` of a Markdown file."""
  doc, pattern = check_block(path, key)
  with open(path, "w") as f:
    f.write(pattern.sub(lambda _: f"<!-- {key} begin -->\n{text.rstrip()}\n<!-- {key} end -->", doc))


def finish(out: str, rows: list[dict[str, Any]], text: str, doc: str | None, key: str) -> None:
  """Keeps the runs' records (OUT/results.jsonl), prints what their processes took and writes the table `text`
  into `doc`'s block `key` (if a doc is given)."""
  with open(os.path.join(out, "results.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  total = sum(r["train_s"] + r["evaluate_s"] for r in rows) / 60
  print(f"{len(rows)} runs: {total:.1f} minutes of train.py and evaluate.py processes (this call and earlier ones)")
  if doc:
    replace_block(doc, key, text)
