"""XLA CPU flags and convolution layouts for the train step, A/B against the current default.

  .venv/bin/python benchmarks/xla_layouts.py [--variants=default,vector512,...] [--rounds=7] [--steps=2]

Each variant (VARIANTS: XLA flags and config overrides) runs in its own worker subprocess, since XLA
flags are read once per process. A worker builds `trainer.make_parallel_train_step` for
configs/unet2d.py:vnc (batch 8 of 256², 2 host devices, augmentation off so only the network is
timed), compiles it and waits. The parent then asks the workers in turn, the order rotating round by
round, for --steps timed steps each, so background load hits all variants alike. Printed per
variant: the median step time, the median over rounds of (variant / default) step time within the
round (the ratio that counts on a shared machine; < 1 is faster), and from an XLA trace of
--profile_steps steps (`train_profile.traced_op_ms`) the share of traced op time spent in layout
copies (transposes). The first variant is the baseline of the ratios.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from absl import app, flags

import common  # pylint: disable=wrong-import-position  (benchmarks/common.py: the repository on sys.path)
# pylint: disable=g-import-not-at-top,wrong-import-position
from unet_jax import parallel

# name -> (XLA flags added to the defaults, config overrides as "field=value")
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "vector512": (("--xla_cpu_prefer_vector_width=512",), ()),
    "ynn+eltwise": (("--xla_cpu_experimental_ynn_fusion_type=+LIBRARY_FUSION_TYPE_ELTWISE",), ()),
    "ynn+reduce": (("--xla_cpu_experimental_ynn_fusion_type=+LIBRARY_FUSION_TYPE_REDUCE",), ()),
    "ynn+dot": (("--xla_cpu_experimental_ynn_fusion_type=+LIBRARY_FUSION_TYPE_DOT",), ()),
    "xnn_greedy": (("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",), ()),
    "xnn_greedy_slinky": (("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY_SLINKY",), ()),
    "no_xnnpack": (("--xla_cpu_use_xnnpack=false",), ()),
    "no_concurrency_scheduler": (("--xla_cpu_enable_concurrency_optimized_scheduler=false",), ()),
    "onednn_custom_call": (("--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_custom_call=true"), ()),
    "no_fusion_emitters": (("--xla_cpu_use_fusion_emitters=false",), ()),
}
MARK = "@@"  # prefix of the worker's answer lines on stdout

FLAGS = flags.FLAGS
flags.DEFINE_string("variants", ",".join(VARIANTS), "Comma-separated VARIANTS names; the first is the baseline.")
flags.DEFINE_integer("rounds", 7, "Rounds; each times every variant once, in rotating order.")
flags.DEFINE_integer("steps", 2, "Timed steps per variant and round.")
flags.DEFINE_integer("profile_steps", 2, "Traced steps per variant for the transpose share (0: no trace).")
flags.DEFINE_string("worker", "", "Internal: run as the worker of this variant.")


def variant_config(overrides: tuple[str, ...]) -> Any:
  """configs/unet2d.py:vnc without augmentation, with `overrides` ('model.field=value') applied."""
  from configs import unet2d
  from unet_jax import augment
  config = unet2d.get_config("vnc")
  config.augment.flips = False
  for name in augment.PROB_FIELDS:
    config.augment[name] = 0.0
  for override in overrides:
    field, value = override.split("=", 1)
    section, name = field.split(".")
    config[section][name] = type(config[section][name])(value)
  return config


def answer(payload: dict[str, Any]) -> None:
  """Sends one answer line to the parent."""
  print(MARK + json.dumps(payload), flush=True)


def worker(name: str) -> None:
  """Compiles the variant's train step, then answers 'time N' and 'profile N' lines from stdin."""
  xla_flags, overrides = VARIANTS[name]
  config = variant_config(overrides)
  parallel.add_xla_flags(*xla_flags)
  parallel.use_host_devices(config.host_devices)
  import jax
  import numpy as np
  import train_profile
  from unet_jax import data, synthetic, trainer
  from unet_jax.model import build_model
  mesh = parallel.make_mesh()
  patch = trainer.patch_shape(config)
  split = data.make_split(*synthetic.make_stack(0, config.train.batch_size, patch))
  batch = parallel.shard_batch(mesh, {"image": split.image[..., None],
                                      "mask": split.mask[..., None].astype(np.float32)})
  holder = {"state": parallel.replicate(mesh, trainer.create_train_state(
      config, build_model(config.model, parallel.AXIS), jax.random.PRNGKey(0)))}
  key = jax.random.PRNGKey(1)
  compiled = trainer.make_parallel_train_step(mesh, config).lower(holder["state"], batch, key).compile()

  def step() -> None:
    holder["state"], metrics = compiled(holder["state"], batch, key)
    jax.block_until_ready(metrics)
  step()
  answer({"ready": name, "devices": mesh.size, "xla_flags": os.environ.get("XLA_FLAGS", "")})
  for line in sys.stdin:
    command, count = line.split()
    if command == "time":
      seconds = []
      for _ in range(int(count)):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
      answer({"seconds": seconds})
    else:
      instructions, opcodes = train_profile.parse_hlo(compiled.as_text())
      per_op = train_profile.traced_op_ms(instructions, step, int(count))
      answer({"categories": dict(train_profile.category_ms(per_op, instructions, opcodes))})


def read_answer(process: subprocess.Popen) -> dict[str, Any]:
  """The worker's next answer line (other output passes through to stderr)."""
  for line in process.stdout:
    if line.startswith(MARK):
      return json.loads(line[len(MARK):])
    sys.stderr.write(line)
  raise RuntimeError(f"a worker exited early (exit status {process.wait()})")


def ask(process: subprocess.Popen, command: str) -> dict[str, Any]:
  """Sends `command` to a worker and returns its answer."""
  process.stdin.write(command + "\n")
  process.stdin.flush()
  return read_answer(process)


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.worker:
    worker(FLAGS.worker)
    return
  names = FLAGS.variants.split(",")
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    sys.exit(f"error: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
  workers = {n: subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--worker={n}"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for n in names}
  print(f"load average {os.getloadavg()[0]:.2f}; compiling {len(names)} variants", flush=True)
  for name, process in workers.items():
    ready = read_answer(process)
    print(f"  {name}: {ready['devices']} devices, XLA_FLAGS={ready['xla_flags']!r}", flush=True)
  seconds = {n: [] for n in names}
  ratios = {n: [] for n in names}
  for r in range(FLAGS.rounds):
    this_round = {}
    for name in names[r % len(names):] + names[:r % len(names)]:
      this_round[name] = statistics.median(ask(workers[name], f"time {FLAGS.steps}")["seconds"])
      seconds[name].append(this_round[name])
    for name in names:
      ratios[name].append(this_round[name] / this_round[names[0]])
    print(f"  round {r + 1}: " + ", ".join(f"{n} {s:.3f}" for n, s in this_round.items()), flush=True)
  shares = {}
  for name in names:
    if FLAGS.profile_steps:
      categories = ask(workers[name], f"profile {FLAGS.profile_steps}")["categories"]
      shares[name] = categories.get("layout copies (transpose)", 0.0) / sum(categories.values())
    workers[name].stdin.close()
    workers[name].wait()
  print(f"load average after: {os.getloadavg()[0]:.2f}")
  print(f"| variant | XLA flags / config | step s (median) | step time vs {names[0]} (median of rounds) | "
        "transposes, share of traced op time |")
  print("|---|---|---|---|---|")
  for name in names:
    xla_flags, overrides = VARIANTS[name]
    share = f"{shares[name]:.1%}" if name in shares else "-"
    print(f"| {name} | {' '.join((*xla_flags, *overrides)) or '(defaults)'} | {statistics.median(seconds[name]):.3f} | "
          f"{statistics.median(ratios[name]):.3f} | {share} |")


if __name__ == "__main__":
  app.run(main)
