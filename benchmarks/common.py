"""What the benchmark scripts share: the config flag, a config file read by path, the inference flags, seeded
random U-Net weights, the timing of a training loop, running the entry points with a log, the machine a record
was made on.

A script run as `python benchmarks/NAME.py` has benchmarks/ on its import path (so `import common`); the library
comes from the installed package (`pip install -e .`).
"""

import datetime
import importlib.util
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VNC = os.path.join(ROOT, "..", "shared", "data", "vnc")
DATA = os.path.join(VNC, "unlabeled.tif")


def define_config(default: str) -> flags.FlagValues:
  """Defines absl's --config (file.py:variant, default `default`); returns FLAGS."""
  config_flags.DEFINE_config_file("config", default, "Config file (file.py:variant).")
  return flags.FLAGS


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config `file.py[:argument]` (a path relative to the repository root), as --config reads it."""
  path, _, argument = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("benchmark_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


def define_inference_flags(slices: int) -> flags.FlagValues:
  """The flags every inference benchmark takes: --data, --slices, --batch, --workdir, --ynnpack; returns FLAGS."""
  flags.DEFINE_string("data", DATA, "TIFF stack to segment.")
  flags.DEFINE_integer("slices", slices, "Timed slices (per setting and engine).")
  flags.DEFINE_integer("batch", 8, "Windows per batch (MONAI sw_batch_size).")
  flags.DEFINE_string("workdir", None, "Use this training run's checkpoint (default: random weights).")
  flags.DEFINE_bool("ynnpack", False, "Keep XLA's default YNNPACK convolutions.")
  return flags.FLAGS


def parse_known_flags(argv: list[str]) -> list[str]:
  """absl's flag parser for app.run that leaves unknown flags (--config.x=v overrides for the entry points
  a script runs) in the argv that main receives."""
  return flags.FLAGS(argv, known_only=True)


def random_variables(model: Any, seed: int = 0) -> dict:
  """Seeded random U-Net variables: kernels N(0, 1/fan-in) (flax's lecun default, untruncated),
  zero biases and means, unit scales and variances. (Filled with NumPy from `jax.eval_shape`:
  compiling flax's initialisers takes minutes on a busy CPU.)"""
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    return np.full(leaf.shape, 1.0 if "scale" in name or "var" in name else 0.0, np.float32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1,) + (2 ** model.depth,) * model.ndim + (1,),
                                                                       np.float32))
  return jax.tree_util.tree_map_with_path(fill, shapes)


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


OUT_MARK, PYTHON_MARK = "{OUT}", "{PYTHON}"  # what a kept record names a run folder and the interpreter


def marked(args: list[str], out: str) -> list[str]:
  """A command's arguments as a kept run record holds them: OUT and the interpreter, which another machine has
  elsewhere, marked."""
  return [PYTHON_MARK if a == sys.executable else a.replace(out, OUT_MARK) for a in args]


def unmarked(args: list[str], out: str) -> list[str]:
  """The inverse of `marked` on this machine: a kept record's arguments with OUT and the interpreter filled in."""
  return [sys.executable if a == PYTHON_MARK else a.replace(OUT_MARK, out) for a in args]


def machine() -> dict[str, Any]:
  """When and on what a measurement finished: UTC time, CPU model and cores (kept in run records, which may be
  read in a later sitting on another machine)."""
  cpu = None
  if os.path.isfile("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
  return {"utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "cpu": cpu or platform.processor(), "cores": os.cpu_count()}


def run_logged(command: list[str], log: str) -> None:
  """Runs `command` from the repository root, `$ command` then its output appended to `log`; RuntimeError
  naming the command and the log if it fails."""
  with open(log, "a") as f:
    f.write("$ " + " ".join(command) + "\n")
    f.flush()
    if subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False).returncode:
      raise RuntimeError(f"failed: {' '.join(command)} (see {log})")


def fixed_decisions(threshold: dict[str, Any]) -> list[str]:
  """Flags that fix a report's decisions (its run's "threshold" record: threshold and minimum object size) for
  a run that cannot choose them, e.g. a final fit trained on the val slices."""
  flags_ = ["--config.eval.select_threshold=False", f"--config.eval.threshold={threshold['value']:g}"]
  if "min_size" in threshold:  # recorded since the size could be chosen on val
    flags_ += ["--config.eval.select_min_size=False", f"--config.eval.min_size={threshold['min_size']}"]
  return flags_
