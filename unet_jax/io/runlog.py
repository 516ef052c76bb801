"""A run's `log.jsonl`: one JSON record per line, appended by the trainer, read by reports and benchmarks.

Records: {'event': 'start', 'step', 'voxel_size_nm', ...} at each (re)start (the training data's voxel
size, which inference compares inputs with; a fine-tuned run's first also names the weights it started
from, 'init_from'), {'step', 'loss', 'minutes'} at log steps,
{'step', 'minutes', 'val_dice', ...} after each validation. A line cut by kill -9 is skipped when
read; a resumed run may log a step again, and its last record wins.
"""

import json
import os
from typing import Any, Iterator

from unet_jax.errors import InputError

FILE_NAME = "log.jsonl"


def log_path(workdir: str) -> str:
  """The log file of a workdir."""
  return os.path.join(workdir, FILE_NAME)


def records(path: str) -> Iterator[dict[str, Any]]:
  """Every complete record of a log file, in order (a line cut by kill -9 is skipped)."""
  with open(path) as f:
    for line in f:
      try:
        yield json.loads(line)
      except json.JSONDecodeError:
        continue


def read(path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """(training records with 'loss', validation records with 'val_dice'), each sorted by step."""
  if not os.path.isfile(path):
    raise InputError(f"no training log at {path}; train with train.py to write one")
  train, val = {}, {}
  for record in records(path):
    if "loss" in record:
      train[record["step"]] = record
    elif "val_dice" in record:
      val[record["step"]] = record
  return [train[k] for k in sorted(train)], [val[k] for k in sorted(val)]


def recorded_voxel_size(workdir: str) -> tuple[float, float, float] | None:
  """The training data's voxel size (z, y, x) in nm that the latest start of training recorded; None for runs
  that did not record one (or without a log)."""
  path = log_path(workdir)
  if not os.path.isfile(path):
    return None
  starts = [r for r in records(path) if r.get("event") == "start" and r.get("voxel_size_nm")]
  return tuple(float(v) for v in starts[-1]["voxel_size_nm"]) if starts else None


def minutes_by_step(path: str) -> dict[int, float]:
  """step -> cumulative training minutes, from the records that carry both (start events excluded)."""
  minutes: dict[int, float] = {}
  for r in records(path):
    if "step" in r and "minutes" in r and "event" not in r:
      minutes[r["step"]] = max(minutes.get(r["step"], 0.0), r["minutes"])
  return minutes


class MetricLog:
  """Appends records to a workdir's log; remembers the cumulative training minutes logged so far."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path, self.enabled = log_path(workdir), enabled  # one writer per run
    self.minutes = max((r.get("minutes", 0.0) for r in records(self.path)), default=0.0) \
        if os.path.exists(self.path) else 0.0

  def write(self, record: dict[str, Any]) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
