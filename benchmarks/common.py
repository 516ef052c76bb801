"""What the benchmark scripts share: the repository on sys.path, the config flag, the inference arguments,
the timing of a training loop, running the entry points with a log."""

import argparse
import os
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from anywhere: `python benchmarks/NAME.py`
DATA = os.path.join(ROOT, "..", "shared", "data", "vnc", "unlabeled.tif")


def define_config(default: str) -> flags.FlagValues:
  """Defines absl's --config (file.py:variant, default `default`); returns FLAGS."""
  config_flags.DEFINE_config_file("config", default, "Config file (file.py:variant).")
  return flags.FLAGS


def inference_parser(doc: str, slices: int) -> argparse.ArgumentParser:
  """The arguments every inference benchmark takes: --data, --slices, --batch, --workdir, --ynnpack."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--data", default=DATA, help="TIFF stack to segment")
  parser.add_argument("--slices", type=int, default=slices, help="timed slices (per setting and engine)")
  parser.add_argument("--batch", type=int, default=8, help="windows per batch (MONAI sw_batch_size)")
  parser.add_argument("--workdir", default=None, help="use this training run's checkpoint (default: random weights)")
  parser.add_argument("--ynnpack", action="store_true", help="keep XLA's default YNNPACK convolutions")
  return parser


def time_steps(batches: Iterator[Any], step: Callable[[Any], None], finish: Callable[[], None], warmup: int,
               steps: int, batch_size: int) -> dict[str, float]:
  """`warmup` untimed then `steps` timed calls of step(next(batches)), `finish()` (wait for the device)
  closing each phase: images per wall second, and the share of it spent blocked in next(batches)."""
  for _ in range(warmup):
    step(next(batches))
  finish()
  waited, start = 0.0, time.perf_counter()
  for _ in range(steps):
    t0 = time.perf_counter()
    batch = next(batches)
    waited += time.perf_counter() - t0
    step(batch)
  finish()
  seconds = time.perf_counter() - start
  return {"img_per_s": steps * batch_size / seconds, "data_wait": waited / seconds, "seconds": seconds, "steps": steps}


def run_logged(command: list[str], log: str) -> None:
  """Runs `command` from the repository root, `$ command` then its output appended to `log`; RuntimeError
  naming the command and the log if it fails."""
  with open(log, "a") as f:
    f.write("$ " + " ".join(command) + "\n")
    f.flush()
    if subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False).returncode:
      raise RuntimeError(f"failed: {' '.join(command)} (see {log})")
